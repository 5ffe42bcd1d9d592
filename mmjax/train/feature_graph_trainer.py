"""Trains feature-graph recommenders on MMRec-format data, MMRec's protocol.

Protocol (as enoche/MMRec's trainer): full ranking of all items with the
user's train positives masked; validation every `eval_every` epochs; early
stop once valid Recall@20 has not improved for more than `patience`
evaluations; the reported test metrics are those at the best valid epoch.
The ranking and its metrics are the evaluator's (`make_evaluator`, built by
the caller from the eval layer: `mmjax.eval.feature_graph.Evaluator`).

All seeds (`config.seeds`) and grid values (`config.grid`) train together as
one vmapped program; the summary gives the per-seed results, their mean and
standard deviation, and per grid value the same (the reported one is the
value with the best mean valid Recall@20).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.data import mmrec
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.errors import MmjaxError
from mmjax.models import graph as graph_lib
from mmjax.train import feature_graph_step as fs
from mmjax.train import reporting
from mmjax.train.outputs import open_workdir, write_outputs

SELECT = "recall@20"   # MMRec's default valid_metric.


def load_data(config) -> mmrec.MMRecData:
  d = config.data   # validate() saw dir and inter_file set.
  if not os.path.isdir(d.dir):
    raise MmjaxError(f"config.data.dir: data dir not found: {d.dir}")
  return mmrec.load(d.dir, d.inter_file, mmrec.feature_file_list(d.feature_files),
                    d.feature_dir)


def run_list(config) -> tuple[list[int], str, list, list[dict]]:
  """(seeds, grid key, grid values, one hyper-parameter dict per run).

  Runs are ordered value-major: run r has grid value r // S, seed r % S.
  """
  seeds = list(config.seeds) or [config.seed]
  key, values = config.grid.key, list(config.grid.points)   # Validated.
  base = fs.hparams(config)
  hps = []
  for value in values or [None]:
    hp = dict(base)
    if key:
      hp[fs.HPARAMS[key]] = float(value)
    hps += [hp] * len(seeds)
  return seeds, key, values, hps


def build_constants(data: mmrec.MMRecData, fcfg, mesh) -> fs.Constants:
  shards = mesh.shape["data"]
  train = data.pairs[TRAIN]
  ui = graph_lib.user_item_graph(train, data.num_users, data.num_items, shards)
  item_graph = None
  if fcfg.knn_k and data.features and fcfg.item_layers:
    item_graph = graph_lib.stack_edges(
        [graph_lib.knn_graph(f, fcfg.knn_k, shards) for f in data.features.values()])
  edge_sharding = mesh_lib.batch_sharding(mesh)
  # One CPU device: SciPy's CSR product beats XLA:CPU's gather + segment_sum.
  on_host = jax.default_backend() == "cpu" and mesh.size == 1
  put_edges = lambda e: None if e is None else dataclasses.replace(
      jax.tree.map(lambda a: jax.device_put(a, edge_sharding), e), on_host=on_host)
  rep = mesh_lib.replicated(mesh)
  return fs.Constants(
      features=tuple(jax.device_put(f, rep) for f in data.features.values()),
      ui_graph=put_edges(ui) if fcfg.layers else None,
      item_graph=put_edges(item_graph),
      train_pairs=jax.device_put(train, rep),
      eval_users=jax.device_put(data.eval_users().astype(np.int32), rep))


class EarlyStopping:
  """MMRec's rule per run: stop when the score has not beaten the best for
  more than `patience` evaluations; keep the test metrics of the best."""

  def __init__(self, runs: int, patience: int):
    self.patience = patience
    self.best = [-1.0] * runs
    self.best_epoch = [0] * runs
    self.bad = [0] * runs
    self.stopped = [False] * runs
    self.valid = [None] * runs
    self.test = [None] * runs

  def update(self, epoch: int, valid: list[dict], test: list[dict]) -> None:
    for r in range(len(self.best)):
      if self.stopped[r]:
        continue
      if valid[r][SELECT] > self.best[r]:
        self.best[r], self.best_epoch[r], self.bad[r] = valid[r][SELECT], epoch, 0
        self.valid[r], self.test[r] = valid[r], test[r]
      else:
        self.bad[r] += 1
        self.stopped[r] = self.bad[r] > self.patience

  @property
  def done(self) -> bool:
    return all(self.stopped)


def _mean_std(dicts: list[dict]) -> tuple[dict, dict]:
  keys = dicts[0].keys()
  return ({k: float(np.mean([d[k] for d in dicts])) for k in keys},
          {k: float(np.std([d[k] for d in dicts])) for k in keys})


def summarize(stop: EarlyStopping, seeds, key, values) -> dict:
  """The contract: test/valid (mean over seeds) at the best valid epoch."""
  s = len(seeds)
  groups = []
  for g in range(len(values) or 1):
    rs = range(g * s, (g + 1) * s)
    test, test_std = _mean_std([stop.test[r] for r in rs])
    valid, valid_std = _mean_std([stop.valid[r] for r in rs])
    groups.append(dict(
        test=test, test_std=test_std, valid=valid, valid_std=valid_std,
        best_epochs=[stop.best_epoch[r] for r in rs],
        seeds=[stop.test[r] for r in rs]))
  best = max(range(len(groups)), key=lambda g: groups[g]["valid"][SELECT])
  out = dict(groups[best])
  out["best_epoch"] = int(round(np.mean(out["best_epochs"])))
  if s == 1:
    del out["seeds"], out["test_std"], out["valid_std"]
  out["seed_list"] = list(seeds)
  if key:
    out["grid"] = dict(key=key, best=values[best], results=[
        dict(value=v, test=g["test"], valid=g["valid"], test_std=g["test_std"])
        for v, g in zip(values, groups)])
  return out


def train_and_evaluate_feature_graph(config, workdir: str, log=print, *,
                                     make_evaluator) -> dict:
  """Trains every run of the config, evaluating them as the protocol says;
  `make_evaluator(data, mesh)` returns the evaluator: (users, items) of all
  runs -> (valid, test) metrics, one dict per run."""
  config_lib.validate(config)
  data = load_data(config)
  # After the inputs: bad ones leave nothing. One run per workdir.
  with open_workdir(workdir, log) as workdir:
    return _train_and_evaluate(config, data, workdir, log, make_evaluator)


def _train_and_evaluate(config, data, workdir, log, make_evaluator) -> dict:
  fcfg = config.feature_graph
  log(f"data: {data.describe()} ({config.data.dir})")
  mesh = mesh_lib.make_mesh(config.mesh)
  evaluator = make_evaluator(data, mesh)
  seeds, key, values, hps = run_list(config)
  consts = build_constants(data, fcfg, mesh)
  shape = fs.Shape(
      num_users=data.num_users, num_items=data.num_items,
      num_train=len(data.pairs[TRAIN]), batch_size=config.train.batch_size,
      negatives=fcfg.negatives, layers=fcfg.layers,
      item_layers=fcfg.item_layers if consts.item_graph is not None else 0)
  feature_dims = [f.shape[1] for f in data.features.values()]
  try:
    programs = fs.Programs(fcfg, config.model.dim, shape, feature_dims, mesh)
  except ValueError as e:
    raise MmjaxError(f"config.feature_graph: {e}") from None
  hp_arrays = fs.stack_hparams(hps)
  keys = jax.vmap(jax.random.key)(jnp.asarray(
      [seed for _ in (values or [None]) for seed in seeds]))
  states = programs.init(keys)
  runs = len(hps)
  log(f"{runs} run(s) in one program: seeds {seeds}"
      + (f" x {key} in {values}" if key else "")
      + f"; {shape.num_batches} batches of {shape.batch_size} per epoch")

  writer = reporting.MetricsWriter(workdir)
  if writer.active:   # No resume here: a rerun's curve replaces the old one.
    reporting.truncate_after(writer.path, 0)
  stop = EarlyStopping(runs, fcfg.patience)
  # Wall and CPU (all threads) seconds: on a shared machine the CPU time
  # tells what the work costs, the wall time what this run got.
  epoch_times, eval_times, epoch_cpu, eval_cpu = [], [], [], []
  bar = tqdm(total=fcfg.epochs, desc="epochs", unit="epoch", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  epoch = 0
  for epoch in range(1, fcfg.epochs + 1):
    t0, c0 = time.time(), time.process_time()
    states, metrics = programs.epoch(consts, states, hp_arrays)
    metrics = jax.device_get(metrics)
    epoch_times.append(time.time() - t0)
    epoch_cpu.append(time.process_time() - c0)
    row = {k: float(np.mean(v)) for k, v in metrics.items()}
    if epoch % fcfg.eval_every == 0 or epoch == fcfg.epochs:
      t0, c0 = time.time(), time.process_time()
      valid, test = evaluator(*programs.embed(consts, states["params"], hp_arrays))
      eval_times.append(time.time() - t0)
      eval_cpu.append(time.process_time() - c0)
      stop.update(epoch, valid, test)
      for split, ms in (("valid", valid), ("test", test)):
        for k in ("recall@20", "ndcg@20"):
          row[f"{split}_{k}"] = float(np.mean([m[k] for m in ms]))
      if runs > 1:   # Per run, to compare seeds and grid points over time.
        row.update({f"valid_recall@20/run{r}": m[SELECT] for r, m in enumerate(valid)})
      row["best_valid_recall@20"] = float(np.mean(stop.best))
    row["seconds_per_epoch"] = epoch_times[-1]
    row["examples_per_sec"] = runs * shape.num_train / max(epoch_times[-1], 1e-9)
    writer.write(epoch, row)
    bar.set_postfix(loss=f"{row['loss']:.3f}",
                    valid_r20=f"{row.get('valid_recall@20', float('nan')):.4f}",
                    s_epoch=f"{epoch_times[-1]:.2f}")
    bar.update(1)
    if stop.done:
      break
  bar.close()
  writer.close()
  if stop.valid[0] is None:
    raise MmjaxError("no evaluation ran: set config.feature_graph.eval_every <= epochs")
  steady = lambda ts: float(np.median(ts[1:] if len(ts) > 1 else ts))
  summary = summarize(stop, seeds, key, values)
  summary.update(
      seconds_per_epoch=steady(epoch_times), seconds_per_eval=steady(eval_times),
      cpu_seconds_per_epoch=steady(epoch_cpu), cpu_seconds_per_eval=steady(eval_cpu),
      runs=runs, epochs_run=epoch, compile_and_first_epoch_seconds=epoch_times[0],
      data=dict(dir=config.data.dir, num_users=data.num_users,
                num_items=data.num_items,
                **{f"num_{n}": len(data.pairs[s]) for n, s in
                   (("train", TRAIN), ("valid", VALID), ("test", TEST))},
                features={k: list(v.shape) for k, v in data.features.items()}),
      config=config.to_dict())
  write_outputs(workdir, summary, writer.path, format_summary, log)
  return summary


def format_summary(s: dict) -> str:
  std = s.get("test_std", {})
  pm = lambda k: f"{s['test'][k]:.4f}" + (f" ± {std[k]:.4f}" if std else "")
  lines = ["", f"results (test at the best valid epoch, mean over seeds "
           f"{s['seed_list']}, train items masked):"]
  for k in ("recall", "ndcg", "precision", "map"):
    lines.append("  " + "  ".join(f"{k}@{c}: {pm(f'{k}@{c}')}" for c in (10, 20, 50)))
  lines.append(f"  best epoch {s['best_epoch']} (per run {s['best_epochs']}), "
               f"{s['epochs_run']} epochs run")
  if "grid" in s:
    g = s["grid"]
    lines.append(f"  grid {g['key']}: " + ", ".join(
        f"{r['value']}: valid {r['valid'][SELECT]:.4f} test {r['test'][SELECT]:.4f}"
        for r in g["results"]) + f" -> best {g['best']}")
  lines.append(f"  {s['seconds_per_epoch']:.3f} s/epoch, {s['seconds_per_eval']:.3f} "
               f"s/eval for {s['runs']} run(s)")
  return "\n".join(lines)
