"""The dry run: compile the real train step from abstract shapes only.

`dry_run(config)` builds the model and train state with `nnx.eval_shape` /
`jax.eval_shape` and the batch as `jax.ShapeDtypeStruct`s, all carrying the
shardings training uses, and compiles the same step program (losses,
accumulation, steps_per_call) for the local devices or, with
config.mesh.topology, for a TPU topology that libtpu describes (no TPU
needed: XLA:TPU compiles on the host). No data is read or generated and no
array is allocated; it reports XLA's per-device memory and cost analysis.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax import mesh as mesh_lib
from mmjax.data import store, store_write
from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.models import pretrained
from mmjax.models.model import DataShapes, build_model
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.step import (init_state, make_multi_step, make_train_step,
                              state_shardings)

# Per chip, from the public Cloud TPU spec sheets: HBM bytes, peak bf16
# FLOP/s, HBM bandwidth (bytes/s).
CHIPS = {
    "v4": dict(hbm=32 * 2**30, flops=275e12, bandwidth=1228e9),
    "v5e": dict(hbm=16 * 2**30, flops=197e12, bandwidth=819e9),
    "v5p": dict(hbm=95 * 2**30, flops=459e12, bandwidth=2765e9),
    "v6e": dict(hbm=32 * 2**30, flops=918e12, bandwidth=1640e9),
}
# jax's device_kind of each chip, for the local devices.
_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e",
          "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e",
          "TPU v6e": "v6e"}


def data_shapes(config) -> DataShapes:
  """The data shapes the model is built for, from the config and, for a
  prepared data dir, its meta.json and tokenizer only. The embedded
  (synthetic) catalog is never generated: its sizes are data.synthetic.*,
  its vocabulary the size its WordPiece is trained to (an upper bound)."""
  d = config.data
  if d.name == "synthetic" and not d.dir:
    shapes = dict(num_items=d.synthetic.num_items, num_users=d.synthetic.num_users,
                  image_size=d.synthetic.image_size,
                  vocab_size=store_write.SYNTHETIC_VOCAB,
                  label_kind="binary" if (config.loss.pointwise > 0
                                          or d.synthetic.impressions) else "")
  elif d.dir:
    meta = store.read_meta(d.dir)
    shapes = dict(num_items=meta["num_items"], num_users=meta["num_users"],
                  image_size=meta["image_size"], label_kind=meta.get("label_kind", ""),
                  vocab_size=TextTokenizer(store.tokenizer_path(d.dir),
                                           d.max_text_len).vocab_size)
  else:
    raise MmjaxError(f"the dry run reads no data: set config.data.dir to the "
                     f"ingested data dir of data.name={d.name!r}")
  if config.model.text.init_from:
    shapes["vocab_size"] = TextTokenizer(config.model.text.init_from,
                                         d.max_text_len).vocab_size
  return DataShapes(max_text_len=d.max_text_len, **shapes)


def batch_shapes(config, shapes: DataShapes) -> dict:
  """{name: (shape, dtype)} of one global train batch, as the pipeline
  (data.pipeline.BatchTransform) makes it. The history is data.history_len
  wide (the pipeline's is narrower when every user has fewer train items)."""
  b, length = config.train.batch_size, shapes.max_text_len
  image = ((b, shapes.image_size, shapes.image_size, 3), jnp.float32)
  predictions = min(config.data.mlm_max_predictions, length)
  out = dict(
      user_id=((b,), jnp.int32), item_id=((b,), jnp.int32),
      tokens=((b, length), jnp.int32), mask=((b, length), jnp.int32),
      image=image, mlm_tokens=((b, length), jnp.int32),
      mlm_positions=((b, predictions), jnp.int32),
      mlm_labels=((b, predictions), jnp.int32),
      history=((b, config.data.history_len), jnp.int32),
      log_q=((b,), jnp.float32))
  if config.loss.co_item > 0:
    out.update(co_item_id=((b,), jnp.int32), co_tokens=((b, length), jnp.int32),
               co_mask=((b, length), jnp.int32), co_image=image)
  if config.data.item_ssl_fraction > 0 or config.loss.pointwise > 0:
    out["is_interaction"] = ((b,), jnp.bool_)
  if config.loss.pointwise > 0:
    out.update(label=((b,), jnp.float32), is_labelled=((b,), jnp.bool_))
  return out


def topology_devices(name: str, slices: int = 1) -> list:
  """The devices of a TPU topology (e.g. "v5e:16x16"), from libtpu."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise MmjaxError("config.mesh.topology needs libtpu: pip install "
                     "'mmjax[tpu]'") from e
  # Compiling needs no TPU; without this a second jax process on the host
  # (which loads libtpu too) would hold libtpu's lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        num_slices=slices)
  except Exception as e:  # pylint: disable=broad-except
    raise MmjaxError(f"config.mesh.topology={name!r}: libtpu does not know it "
                     f"({str(e).splitlines()[0][:200]})") from e
  return list(desc.devices)


def abstract_state(config, shapes: DataShapes, mesh):
  """(graphdef, tx, state shardings, state as sharded ShapeDtypeStructs):
  `step.init_state` traced, never run."""
  build = lambda: build_model(config.model, shapes, seed=config.seed,
                      caption=config.loss.caption > 0)
  tx = make_optimizer(config.train)
  graphdef = nnx.split(nnx.eval_shape(build), nnx.Param, ...)[0]
  state = jax.eval_shape(lambda: init_state(build(), tx, config.seed)[1])
  shardings = state_shardings(state, mesh, config.mesh.rules)
  state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      state, shardings)
  return graphdef, tx, shardings, state


def _abstract_batch(config, shapes, mesh, steps: int) -> dict:
  spec = batch_shapes(config, shapes)
  if steps == 1:
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(s, t, sharding=sharding)
            for k, (s, t) in spec.items()}
  sharding = mesh_lib.stacked_batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((steps,) + s, t, sharding=sharding)
          for k, (s, t) in spec.items()}


def chip_of(topology: str, devices) -> str | None:
  """The CHIPS key of a topology name ("v5e:16x16") or of the devices."""
  if topology:
    name = topology.split(":")[0].lower()
    return name if name in CHIPS else None
  return _KINDS.get(getattr(devices[0], "device_kind", ""))


def dry_run(config, log=print, out_dir: str | None = None) -> dict:
  """Compiles the train step from abstract shapes; returns the report (also
  written to <out_dir>/dry_run.json when out_dir is given)."""
  pretrained.check_folders(config.model)
  m = config.mesh
  devices = (topology_devices(m.topology, m.dcn_data) if m.topology
             else jax.devices())
  mesh = mesh_lib.make_mesh(m, devices)
  mesh_lib.check_batch_size(config.train.batch_size, mesh)
  shapes = data_shapes(config)
  log(f"dry run: mesh {dict(mesh.shape)} over {len(devices)} "
      f"{m.topology or devices[0].platform} device(s); abstract shapes only")
  t0 = time.time()
  graphdef, tx, shardings, state = abstract_state(config, shapes, mesh)
  c = config
  args = (graphdef, tx, c.loss, mesh, shardings, learning_rate(c.train),
          c.train.accum_steps)
  k = c.train.steps_per_call
  step_fn = make_multi_step(*args) if k > 1 else make_train_step(*args)
  compiled = step_fn.lower(state, _abstract_batch(c, shapes, mesh, k)).compile()
  report = _report(config, compiled, mesh, devices, state["params"])
  report["compile_seconds"] = round(time.time() - t0, 1)
  log(format_report(report))
  if out_dir is not None:
    path = os.path.join(out_dir, "dry_run.json")
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    log(f"dry run: wrote {path}")
  return report


def _report(config, compiled, mesh, devices, params) -> dict:
  mem = compiled.memory_analysis()
  per_device = dict(arguments=int(mem.argument_size_in_bytes),
                    outputs=int(mem.output_size_in_bytes),
                    temp=int(mem.temp_size_in_bytes),
                    alias=int(mem.alias_size_in_bytes))
  # Donated state is both an argument and an output: counted once.
  per_device["total"] = (per_device["arguments"] + per_device["outputs"]
                         + per_device["temp"] - per_device["alias"])
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  # XLA's cost analysis is of one device's partitioned program; a loop's
  # body (steps_per_call, accumulation) counts once.
  flops = float(cost.get("flops", 0.0))
  accessed = float(cost.get("bytes accessed", 0.0))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  topology = config.mesh.topology
  report = dict(
      dry_run=True, topology=topology or f"local:{devices[0].platform}",
      devices=len(devices), slices=config.mesh.dcn_data, mesh=dict(mesh.shape),
      global_batch=config.train.batch_size, parameters=n_params,
      per_device_bytes=per_device,
      flops_per_step=flops * len(devices), flops_per_step_per_device=flops,
      bytes_accessed_per_device=accessed)
  chip = chip_of(topology, devices)
  if chip is not None:
    spec = CHIPS[chip]
    report.update(
        chip=chip, hbm_bytes_per_device=spec["hbm"],
        fits=per_device["total"] <= spec["hbm"],
        hbm_free_fraction=1.0 - per_device["total"] / spec["hbm"],
        roofline_step_seconds=max(flops / spec["flops"],
                                  accessed / spec["bandwidth"]))
  return report


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  p = r["per_device_bytes"]
  lines = [f"dry run: {r['topology']}, {r['devices']} devices, mesh {r['mesh']}, "
           f"global batch {r['global_batch']}, {r['parameters'] / 1e6:.1f}M parameters",
           f"  per device: total {gib(p['total'])} (arguments {gib(p['arguments'])}, "
           f"outputs {gib(p['outputs'])}, temp {gib(p['temp'])}, "
           f"aliased {gib(p['alias'])})",
           f"  {r['flops_per_step'] / 1e12:.2f} TFLOP per step "
           f"({r['flops_per_step_per_device'] / 1e9:.1f} GFLOP per device)"]
  if "fits" in r:
    lines.append(
        f"  {r['chip']}: HBM {gib(r['hbm_bytes_per_device'])}, "
        f"{'fits' if r['fits'] else 'does NOT fit'} "
        f"({100 * r['hbm_free_fraction']:.0f}% free), roofline "
        f"{1e3 * r['roofline_step_seconds']:.1f} ms per step")
  lines.append(f"  compiled in {r.get('compile_seconds', 0):.1f}s; nothing trained")
  return "\n".join(lines)
