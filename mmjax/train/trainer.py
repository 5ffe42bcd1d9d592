"""The training loop: from config to a trained, checkpointed state.

`setup` builds what training needs (data, mesh, model state), `train` runs
the steps (resuming from the newest checkpoint, saving on schedule and on
SIGTERM or Ctrl-C). Evaluating the trained state is the caller's part
(`mmjax.run`); the dry run is `mmjax.train.aot`.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from mmjax import mesh as mesh_lib
from mmjax.data import store
from mmjax.data.pipeline import text_tokenizer, train_dataset
from mmjax.data.resolve import resolve_data_dir
from mmjax.models import pretrained
from mmjax.models.model import DataShapes, build_model
from mmjax.train import guard
from mmjax.train import preemption
from mmjax.train import reporting
from mmjax.train import resume
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.cost import step_flops
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.step import (init_state, make_multi_step, make_train_step,
                              state_shardings, with_item_memory)


@dataclasses.dataclass
class Setup:
  """What training needs, built from the config."""
  config: Any
  workdir: str
  data_dir: str
  catalog: Any          # data.catalog.Catalog
  tokenizer: Any        # data.features.TextTokenizer
  mesh: Any
  graphdef: Any
  tx: Any               # The optax optimizer.
  state: dict | None    # {params, buffers, opt_state, step, skipped, rng}
                        # until `train` takes it.
  shardings: dict
  started: float        # time.time() when setup began.


@dataclasses.dataclass
class Trained:
  """The outcome of `train`: the state it ended with and its statistics."""
  state: dict
  stats: dict           # steps, resumed_from, seconds, examples_per_sec, flops_per_step
  metrics_path: str
  preempted_at: int | None = None
  preempted_by: str | None = None   # "SIGTERM" or "SIGINT" (Ctrl-C).


def setup(config, workdir: str, log=print, *,
          check_catalog: Callable | None = None) -> Setup:
  """Loads the data, makes the mesh, builds the model and its sharded state.

  Creates no workdir: the caller opens it (`outputs.open_workdir`, which
  also takes its lock) once this has succeeded, so a bad input leaves none
  behind. `check_catalog(catalog)` may reject the catalog.
  """
  started = time.time()
  pretrained.check_folders(config.model)   # Before any data work.
  data_dir = resolve_data_dir(config.data, log)
  catalog = store.load_catalog(data_dir)
  if check_catalog is not None:
    check_catalog(catalog)
  tokenizer = text_tokenizer(data_dir, config)   # A pretrained tower's own.
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch_size(config.train.batch_size, mesh)
  workdir = os.path.abspath(workdir)
  log(f"data: {catalog.num_items} items, {catalog.num_users} users, "
      f"{len(catalog.interactions)} interactions ({data_dir})")
  log(f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
      f"device(s), {jax.process_count()} process(es)")

  shapes = DataShapes.of(catalog, tokenizer, config.data.max_text_len)
  model = build_model(config.model, shapes, seed=config.seed)
  tx = make_optimizer(config.train)
  graphdef, state = init_state(model, tx, config.seed)
  del model
  shardings = state_shardings(state, mesh, config.mesh.rules)
  state = jax.device_put(state, shardings)
  return Setup(config=config, workdir=workdir, data_dir=data_dir, catalog=catalog,
               tokenizer=tokenizer, mesh=mesh, graphdef=graphdef, tx=tx,
               state=state, shardings=shardings, started=started)


def warm_item_memory(s: Setup, item_vectors: Callable) -> dict:
  """The state with the user tower's item-memory bank filled with the
  initial item vectors, `item_vectors(params, buffers)` (N, dim).

  A zero bank makes every user vector normalize(~0) at the first steps: a
  huge gradient on the history MLP, which clipping then spreads over the
  whole update. The state unchanged for `history="embedding"`.
  """
  state = s.state
  if "item_memory" not in state["buffers"].get("rec", {}):
    return state
  items = item_vectors(state["params"], state["buffers"])
  buffers = with_item_memory(s.graphdef, state["params"], state["buffers"], items)
  return jax.device_put({**state, "buffers": buffers}, s.shardings)


def _step_programs(s: Setup):
  """(one-step program, k-step program or None), both jitted."""
  c = s.config
  args = (s.graphdef, s.tx, c.loss, s.mesh, s.shardings, learning_rate(c.train),
          c.train.accum_steps)
  multi_fn = make_multi_step(*args) if c.train.steps_per_call > 1 else None
  return make_train_step(*args), multi_fn


def _dataset(s: Setup):
  c = s.config
  return train_dataset(
      s.data_dir, s.catalog, c.data, batch_size=c.train.batch_size, seed=c.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      tokenizer=s.tokenizer, co_items=c.loss.co_item > 0)


def _report_compiled(compiled, log) -> float:
  """Prints per-device memory and FLOPs of the compiled step; returns FLOPs."""
  flops = step_flops(compiled)
  mem = compiled.memory_analysis()
  if mem is not None:
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    log(f"compiled train step: {total / 2**20:.1f} MiB per device "
        f"(args {mem.argument_size_in_bytes / 2**20:.1f}, temp "
        f"{mem.temp_size_in_bytes / 2**20:.1f}), {flops / 1e9:.2f} GFLOPs/step")
  return flops


def _call_length(step: int, total: int, per_call: int, checkpoint_every: int) -> int:
  """Steps in the call that starts after `step`: train.steps_per_call, cut
  so that every call ends at or before the next checkpoint and the end."""
  return min(per_call, total - step, checkpoint_every - step % checkpoint_every)


def _program(step_fn, multi_fn, k: int):
  """The one-step program, or the k-step one (its batches stacked)."""
  return step_fn if k == 1 else multi_fn


def _global(locals_: list, mesh) -> dict:
  if len(locals_) == 1:
    return mesh_lib.global_batch(locals_[0], mesh)
  return mesh_lib.global_batches(locals_, mesh)


def _per_step(metrics: dict, k: int) -> list[dict]:
  """Host metrics of one call -> one dict per step (k-step calls stack them)."""
  if k == 1:
    return [metrics]
  return [{name: value[j] for name, value in metrics.items()} for j in range(k)]


def _mean_metrics(pending: list) -> dict:
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train(s: Setup, log=print, *, item_vectors: Callable | None = None) -> Trained:
  """Trains from the newest good checkpoint (or from scratch) to
  config.train.steps. `item_vectors(params, buffers)`: the catalog's item
  vectors, to warm-start the item memory (`warm_item_memory`)."""
  config, workdir, mesh = s.config, s.workdir, s.mesh
  if item_vectors is not None:
    s.state = warm_item_memory(s, item_vectors)
  # The step donates the state: the setup lets go of it, so that a restored
  # checkpoint does not live next to the initial state.
  state, s.state = s.state, None
  step_fn, multi_fn = _step_programs(s)
  data_iter = iter(_dataset(s))
  ckpt = Checkpointer(workdir, every=config.train.checkpoint_every,
                      keep=config.train.keep_checkpoints)
  identity = resume.run_identity(config, s.catalog, s.data_dir)
  state = resume.restore_newest_good(ckpt, state, data_iter, config, workdir, log,
                                     identity=identity)
  if jax.process_index() == 0:
    resume.save_config(workdir, config)
    resume.save_identity(workdir, identity)
  start = int(state["step"])
  nan_policy = guard.NanPolicy.from_config(config.train, int(state["skipped"]))
  id_log = (reporting.ExampleIdLog(workdir, start)
            if config.train.log_example_ids else None)
  writer = reporting.MetricsWriter(workdir)
  if writer.active:
    # Rows past the checkpoint, and a line torn by a killed run.
    reporting.truncate_after(writer.path, start, log)

  total, per_call = config.train.steps, config.train.steps_per_call
  # A finished run (start == total) only re-evaluates: one batch to compile for.
  first = max(1, _call_length(start, total, per_call, config.train.checkpoint_every))
  locals_ = [next(data_iter) for _ in range(first)]
  batch = _global(locals_, mesh)
  t0 = time.time()
  compiled = _program(step_fn, multi_fn, first).lower(state, batch).compile()
  # XLA's cost analysis counts a loop's body once: a k-step program's FLOPs
  # are one step's.
  flops = _report_compiled(compiled, log)
  log(f"setup {t0 - s.started:.1f}s, compile {time.time() - t0:.1f}s")

  pending, seconds, examples, bar = [], 0.0, 0, None
  # Host time blocked on the input pipeline: the device idles meanwhile,
  # since each call's metrics are fetched before the next batch is.
  waited = waited_since_log = 0.0
  if start < total:
    bar = tqdm(total=total, initial=start, desc="train", unit="step",
               dynamic_ncols=True, disable=jax.process_index() != 0)
  t_loop = t_log = time.time()
  preempted_at = None
  step = start
  with preemption.StopFlag() as stop:
    while step < total:
      stop.unsaved = ("the steps since the newest complete checkpoint were not "
                      f"saved; a rerun resumes from it ({ckpt.directory})")
      k = _call_length(step, total, per_call, config.train.checkpoint_every)
      if step > start:
        t_wait = time.time()
        locals_ = [next(data_iter) for _ in range(k)]
        batch = _global(locals_, mesh)
        waited_since_log += time.time() - t_wait
      program = compiled if k == first else _program(step_fn, multi_fn, k)
      state, metrics = program(state, batch)
      # One host sync per call; the NaN policy still sees every step.
      rows = _per_step(jax.device_get(metrics), k)
      for local, row in zip(locals_, rows):
        step += 1
        if id_log is not None:
          id_log.write(step, local)
        pending.append(row)
        note = nan_policy.observe(step, int(row["skipped"]))
        if note:
          log(note)
        if step % config.train.log_every == 0 or step == total or nan_policy.failed:
          row = _mean_metrics(pending)
          pending = []
          seconds = time.time() - t_loop
          examples = (step - start) * config.train.batch_size
          row["examples_per_sec"] = examples / max(seconds, 1e-9)
          row["skipped"] = nan_policy.skipped   # The running count, not its mean.
          now = time.time()
          row["data_wait_share"] = waited_since_log / max(now - t_log, 1e-9)
          waited, waited_since_log, t_log = waited + waited_since_log, 0.0, now
          writer.write(step, row)
          bar.set_postfix(loss=f"{row['loss']:.3f}",
                          ex_s=f"{row['examples_per_sec']:.0f}",
                          data_wait=f"{row['data_wait_share']:.0%}")
        bar.update(1)
        if nan_policy.failed:
          break
      failed_at, step = step, int(state["step"])
      if nan_policy.failed:   # The guard kept the last good parameters.
        ckpt.save(step, state, data_iter, force=True)
        ckpt.wait()
        raise nan_policy.error(failed_at, saved_at=step)
      saved = ckpt.save(step, state, data_iter, force=step == total)
      if stop.requested:   # The save waits for one still in flight.
        if not saved:
          ckpt.save(step, state, data_iter, force=True)
        stop.unsaved = (f"the checkpoint of step {step} was not finished; a rerun "
                        f"resumes from the newest complete one ({ckpt.directory})")
        ckpt.wait()
        preempted_at = step
        break
  if bar is not None:
    bar.close()
  ckpt.wait()
  seconds = time.time() - t_loop
  ckpt.close()
  writer.close()
  if preempted_at is not None:
    how = ("interrupted (Ctrl-C)" if stop.requested == "SIGINT"
           else "preempted (SIGTERM)")
    log(f"{how}: saved checkpoint at step {preempted_at} in "
        f"{ckpt.directory}; rerun the same command to resume")
  stats = dict(steps=total, resumed_from=start, seconds=seconds,
               examples_per_sec=examples / max(seconds, 1e-9) if examples else 0.0,
               flops_per_step=flops,
               data_wait_share=(waited + waited_since_log) / max(seconds, 1e-9))
  return Trained(state=state, stats=stats, metrics_path=writer.path,
                 preempted_at=preempted_at, preempted_by=stop.requested)
