"""train_and_evaluate: the whole run, from config to summary.json."""

import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from mmjax import config as config_lib
from mmjax.data import raw, store
from mmjax.data.pipeline import text_tokenizer, train_dataset
from mmjax.data.synthetic import SyntheticSpec
from mmjax.errors import MmjaxError
from mmjax.eval import item_id_table, user_refit
from mmjax.eval.evaluate import (Encoder, all_item_vectors, baselines, evaluate,
                                 evaluate_item_id_tables, evaluate_user_refits)
from mmjax.kernels.flops import step_flops
from mmjax.models.model import DataShapes, build_model
from mmjax.train import guard
from mmjax.train import mesh as mesh_lib
from mmjax.train import preemption
from mmjax.train import reporting
from mmjax.train import resume
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.step import (compiler_options, init_state, make_multi_step,
                              make_train_step, state_shardings, with_item_memory)


def prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise MmjaxError(f"workdir is not writable: {workdir} ({e.strerror})") from None
  return workdir


def resolve_data_dir(data_cfg, log=print) -> str:
  """The configured data dir, the ingested raw folder or the embedded catalog
  (both made once, cached)."""
  if data_cfg.name == "raw":
    return raw.ensure_ingested(data_cfg, log)
  if data_cfg.dir:
    if not os.path.isdir(data_cfg.dir):
      raise MmjaxError(f"data dir not found: {data_cfg.dir}")
    return data_cfg.dir
  spec = SyntheticSpec(**data_cfg.synthetic.to_dict())
  return store.ensure_synthetic(spec, data_cfg.cache_dir or None)


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


def warm_item_memory(encoder, graphdef, state, shardings, catalog, tokenizer):
  """Fills the user tower's item-memory bank with the initial item vectors.

  A zero bank makes every user vector normalize(~0) at the first steps: a
  gradient norm of ~6e5 on the history MLP, which clipping then spreads over
  the whole update. No-op for `history="embedding"`.
  """
  if "item_memory" not in state["rest"].get("rec", {}):
    return state
  items = all_item_vectors(encoder, state["params"], state["rest"], catalog,
                           tokenizer)["item"]
  rest = with_item_memory(graphdef, state["params"], state["rest"], items)
  return jax.device_put({**state, "rest": rest}, shardings)


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


def _dry_run(step_fn, state, config, data_dir, catalog, mesh, log) -> dict:
  """Lowers and compiles the step for the configured mesh; trains nothing."""
  local = next(iter(train_dataset(
      data_dir, catalog, config.data, batch_size=config.train.batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(),
      tokenizer=text_tokenizer(data_dir, config), co_items=config.loss.co_item > 0)))
  t0 = time.time()
  compiled = step_fn.lower(state, mesh_lib.global_batch(local, mesh)).compile()
  flops = _report_compiled(compiled, log)
  mem = compiled.memory_analysis()
  names = ("argument", "output", "temp", "alias", "generated_code")
  memory = ({n: int(getattr(mem, f"{n}_size_in_bytes")) for n in names}
            if mem is not None else {})
  log(f"dry run: compiled in {time.time() - t0:.1f}s; nothing trained")
  return dict(dry_run=True, flops_per_step=flops, mesh=dict(mesh.shape),
              memory_bytes_per_device=memory)


def train_and_evaluate(config, workdir: str, log=print, dry_run: bool = False) -> dict:
  """Trains and evaluates; `dry_run` only compiles the step and reports its
  per-device memory and FLOPs (no workdir, no training)."""
  config_lib.validate(config)
  if config.data.name == "mmrec":   # Frozen features, MMRec's protocol.
    from mmjax.train.frozen_trainer import train_and_evaluate_frozen
    return train_and_evaluate_frozen(config, workdir, log)
  t_setup = time.time()
  data_dir = resolve_data_dir(config.data, log)
  catalog = store.load_catalog(data_dir)
  too_many = [k for k in config.model.rec.item_id_clusters if k > catalog.num_items]
  if too_many:
    raise MmjaxError(f"config.model.rec.item_id_clusters={tuple(too_many)}: more "
                     f"clusters than the {catalog.num_items} items")
  tokenizer = text_tokenizer(data_dir, config)   # A pretrained tower's own.
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch_size(config.train.batch_size, mesh)
  # Only once the inputs are known good: a bad input leaves no workdir behind.
  if not dry_run:
    workdir = prepare_workdir(workdir)
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
  encoder = Encoder(graphdef, mesh, config.train.eval_batch_size)
  state = warm_item_memory(encoder, graphdef, state, shardings, catalog, tokenizer)
  step_args = (graphdef, tx, config.loss, mesh, shardings, learning_rate(config.train),
               config.train.accum_steps, compiler_options(config.train))
  step_fn = make_train_step(*step_args)
  multi_fn = make_multi_step(*step_args) if config.train.steps_per_call > 1 else None
  if dry_run:
    return _dry_run(step_fn, state, config, data_dir, catalog, mesh, log)

  data_iter = iter(train_dataset(
      data_dir, catalog, config.data, batch_size=config.train.batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), tokenizer=tokenizer,
      co_items=config.loss.co_item > 0))
  ckpt = Checkpointer(workdir, every=config.train.checkpoint_every,
                      keep=config.train.keep_checkpoints)
  state = resume.restore_newest_good(ckpt, state, data_iter, config, workdir, log)
  if jax.process_index() == 0:
    resume.save_config(workdir, config)
  start = int(state["step"])
  nan_policy = guard.NanPolicy.from_config(config.train, int(state["skipped"]))
  id_log = (reporting.ExampleIdLog(workdir, start)
            if config.train.log_example_ids else None)
  writer = reporting.MetricsWriter(workdir)
  if writer.active:
    reporting.truncate_after(writer.path, start)   # Rows past the checkpoint.

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
  log(f"setup {t0 - t_setup:.1f}s, compile {time.time() - t0:.1f}s")

  pending, seconds, examples, bar = [], 0.0, 0, None
  if start < total:
    bar = tqdm(total=total, initial=start, desc="train", unit="step",
               dynamic_ncols=True, disable=jax.process_index() != 0)
  t_loop = time.time()
  preempted_at = None
  step = start
  with preemption.SigtermFlag() as sigterm:
    while step < total:
      k = _call_length(step, total, per_call, config.train.checkpoint_every)
      if step > start:
        locals_ = [next(data_iter) for _ in range(k)]
        batch = _global(locals_, mesh)
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
          writer.write(step, row)
          bar.set_postfix(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_sec']:.0f}")
        bar.update(1)
        if nan_policy.failed:
          break
      failed_at, step = step, int(state["step"])
      if nan_policy.failed:   # The guard kept the last good parameters.
        ckpt.save(step, state, data_iter, force=True)
        ckpt.wait()
        raise nan_policy.error(failed_at, saved_at=step)
      saved = ckpt.save(step, state, data_iter, force=step == total)
      if sigterm.requested:
        if not saved:
          ckpt.save(step, state, data_iter, force=True)
        preempted_at = step
        break
  if bar is not None:
    bar.close()
  ckpt.wait()
  seconds = time.time() - t_loop
  if preempted_at is not None:
    ckpt.close()
    writer.close()
    log(f"preempted (SIGTERM): saved checkpoint at step {preempted_at} in "
        f"{ckpt.directory}; rerun the same command to resume")
    return dict(preempted_at_step=preempted_at)

  log("evaluating ...")
  t_eval = time.time()
  eval_kw = dict(history_len=config_lib.eval_history_len(config.data),
                 batch_size=config.train.eval_batch_size, encoder=encoder)
  id_table = None
  rec = config.model.rec
  if rec.item_id_scales or rec.item_id_clusters:
    chosen, result, tried = evaluate_item_id_tables(
        graphdef, state["params"], state["rest"], catalog, tokenizer, mesh,
        item_id_table.candidates(rec.item_id_scales, rec.item_id_clusters), **eval_kw)
    id_table = dict(chosen=chosen.to_dict(), label=chosen.label, recall_at_20=tried)
  else:
    result = evaluate(graphdef, state["params"], state["rest"], catalog, tokenizer,
                      mesh, **eval_kw)
  refit = _choose_user_refit(workdir, result.pop("scoring_vectors"), catalog, rec,
                             tower={k: result[k] for k in ("valid", "test")})
  if refit is not None:
    result.update(refit.pop("metrics"))
  result.update(baselines(catalog))
  result["retrieval"]["chance_r@1"] = 1.0 / catalog.num_items
  result["ratios"] = {
      f"test_recall@20_vs_{b}": result["test"]["recall@20"] / result[b]["recall@20"]
      for b in ("oracle", "popularity") if result.get(b, {}).get("recall@20")}
  summary = dict(
      data=dict(num_items=catalog.num_items, num_users=catalog.num_users,
                num_interactions=int(len(catalog.interactions)), dir=data_dir),
      **result,
      train=dict(steps=total, resumed_from=start, seconds=seconds,
                 examples_per_sec=examples / max(seconds, 1e-9) if examples else 0.0,
                 flops_per_step=flops, eval_seconds=time.time() - t_eval),
      config=config.to_dict())
  if id_table is not None:
    summary["item_id_table"] = id_table
  if refit is not None:
    summary["user_refit"] = refit
  ckpt.close()
  writer.close()
  write_outputs(workdir, summary, writer.path, format_summary, log)
  return summary


def _choose_user_refit(workdir: str, scoring_vectors, catalog, rec,
                       tower: dict | None = None) -> dict | None:
  """config.model.rec.refit_penalties: the tower or a refit of the user
  vectors (eval/user_refit.py), chosen on valid; the chosen refit's vectors
  go to <workdir>/user_refit.npz for `mmjax.load`. None without penalties."""
  path = os.path.join(workdir, user_refit.FILE)
  if jax.process_index() == 0 and os.path.exists(path):
    os.remove(path)   # A previous evaluation's; never pair it with this one.
  if not rec.refit_penalties:
    return None
  penalty, metrics, tried, vectors = evaluate_user_refits(
      scoring_vectors, catalog, rec.refit_penalties, steps=rec.refit_steps, tower=tower)
  if penalty is not None and jax.process_index() == 0:
    user_refit.save(workdir, *vectors, penalty)
  return dict(chosen=penalty, label=user_refit.label(penalty), recall_at_20=tried,
              steps=rec.refit_steps, metrics=metrics)


def _jsonable(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x)}")


def write_outputs(workdir: str, summary: dict, metrics_path: str, formatter,
                  log) -> None:
  """summary.json, curves.png and the printed table (process 0 only)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=_jsonable)
    reporting.plot_curves(metrics_path, os.path.join(workdir, "curves.png"))
    log(formatter(summary))


def format_summary(s: dict) -> str:
  """A short human-readable table of the run's results."""
  lines = ["", "results (test split, train items masked):",
           f"  {'':12s} {'recall@20':>10s} {'ndcg@20':>10s} {'recall@50':>10s}"]
  for name in ("test", "oracle", "popularity"):
    if name in s:
      m = s[name]
      lines.append(f"  {name:12s} {m['recall@20']:10.4f} {m['ndcg@20']:10.4f} "
                   f"{m['recall@50']:10.4f}")
  lines.append("  " + ", ".join(f"{k} = {v:.2f}" for k, v in s.get("ratios", {}).items()))
  r = s["retrieval"]
  lines.append(f"  text->image R@1 {r['t2i_r@1']:.3f}  R@10 {r['t2i_r@10']:.3f}  "
               f"image->text R@1 {r['i2t_r@1']:.3f}  (chance {r['chance_r@1']:.4f})")
  if "item_id_table" in s:
    lines.append("  " + item_id_table.describe(s["item_id_table"]))
  if "user_refit" in s:
    lines.append("  " + user_refit.describe(s["user_refit"]))
  t = s["train"]
  lines.append(f"  train: {t['steps']} steps, {t['examples_per_sec']:.0f} ex/s, "
               f"{t['seconds']:.0f}s")
  return "\n".join(lines)
