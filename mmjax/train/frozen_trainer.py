"""Trains frozen-feature recommenders on MMRec-format data, MMRec's protocol.

Protocol (as enoche/MMRec's trainer): full ranking of all items with the
user's train positives masked; validation every `eval_every` epochs; early
stop once valid Recall@20 has not improved for more than `patience`
evaluations; the reported test metrics are those at the best valid epoch.

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
from mmjax.data import mmrec
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.errors import MmjaxError
from mmjax.eval import ranking
from mmjax.eval.metrics import metrics_from_ranks, pad_lists
from mmjax.models import graph as graph_lib
from mmjax.train import mesh as mesh_lib
from mmjax.train import reporting
from mmjax.train import frozen_step as fs

KS = (5, 10, 20, 50)
SELECT = "recall@20"   # MMRec's default valid_metric.


def load_data(config) -> mmrec.MMRecData:
  d = config.data
  if not d.dir:
    raise MmjaxError("config.data.dir is required for data.name='mmrec'")
  if not os.path.isdir(d.dir):
    raise MmjaxError(f"config.data.dir: data dir not found: {d.dir}")
  if not d.inter_file:
    raise MmjaxError("config.data.inter_file is required for data.name='mmrec'")
  return mmrec.load(d.dir, d.inter_file, mmrec.feature_file_list(d.feature_files),
                    d.feature_dir)


def run_list(config) -> tuple[list[int], str, list, list[dict]]:
  """(seeds, grid key, grid values, one hyper-parameter dict per run).

  Runs are ordered value-major: run r has grid value r // S, seed r % S.
  """
  seeds = list(config.seeds) or [config.seed]
  key, values = config.grid.key, list(config.grid.points)
  if bool(key) != bool(values):
    raise MmjaxError("config.grid.key and config.grid.points go together")
  if key and key not in fs.HPARAMS:
    raise MmjaxError(f"config.grid.key={key!r}: a grid can vary one of "
                     f"{sorted(fs.HPARAMS)}")
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
      eval_users=jax.device_put(eval_users(data).astype(np.int32), rep))


def eval_users(data: mmrec.MMRecData) -> np.ndarray:
  """The users with a valid or a test item, ascending."""
  return np.unique(np.concatenate([data.pairs[VALID][:, 0], data.pairs[TEST][:, 0]]))


def make_ranker(data: mmrec.MMRecData, targets: np.ndarray, mesh, how: str = "auto"):
  """Ranks `targets` (E, P) of the evaluated users, train items masked: NumPy
  blocks (`how="host"`; "auto" picks them on CPU, where they beat XLA:CPU's
  TopK) or a jitted matmul + top_k ("device")."""
  users = eval_users(data)
  train = np.unique(data.pairs[TRAIN], axis=0)    # Sorted by user, then item.
  if how == "host" or (how == "auto" and jax.default_backend() == "cpu"):
    train = train[np.isin(train[:, 0], users)]
    row = np.searchsorted(users, train[:, 0])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(users)))])
    return ranking.HostRanker(indptr, train[:, 1], targets, max(KS))
  exclude = np.zeros((data.num_users, data.num_items), bool)
  exclude[train[:, 0], train[:, 1]] = True
  return ranking.DeviceRanker(
      jax.device_put(exclude[users], mesh_lib.replicated(mesh)), targets, max(KS))


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


def _evaluate(programs, consts, states, hps, ranker, targets):
  """Valid and test metrics of every run; `targets` are the valid then the
  test items of each evaluated user, the ranker's columns."""
  ranks = programs.rank_all(consts, states["params"], hps, ranker)
  out = []
  for split, cols in ((VALID, slice(0, targets[VALID].shape[1])),
                      (TEST, slice(targets[VALID].shape[1], None))):
    n_t = np.sum(targets[split] >= 0, axis=1)
    out.append([metrics_from_ranks(r[:, cols], n_t, max(KS), KS) for r in ranks])
  return out


def train_and_evaluate_frozen(config, workdir: str, log=print) -> dict:
  from mmjax.train.trainer import prepare_workdir, write_outputs
  config_lib.validate(config)
  fcfg = config.frozen
  data = load_data(config)
  workdir = prepare_workdir(workdir)   # After the inputs: bad ones leave nothing.
  log(f"data: {data.describe()} ({config.data.dir})")
  if data.num_items < max(KS):
    raise MmjaxError(f"{config.data.inter_file}: {data.num_items} items; the "
                     f"metrics rank the top {max(KS)}, so at least that many")
  mesh = mesh_lib.make_mesh(config.mesh)
  seeds, key, values, hps = run_list(config)
  consts = build_constants(data, fcfg, mesh)
  shape = fs.Shape(
      num_users=data.num_users, num_items=data.num_items,
      num_train=len(data.pairs[TRAIN]), batch_size=config.train.batch_size,
      negatives=fcfg.negatives, layers=fcfg.layers,
      item_layers=fcfg.item_layers if consts.item_graph is not None else 0,
      k_max=max(KS))
  feature_dims = [f.shape[1] for f in data.features.values()]
  try:
    programs = fs.Programs(fcfg, config.model.dim, shape, feature_dims, mesh)
  except ValueError as e:
    raise MmjaxError(f"config.frozen: {e}") from None
  users = eval_users(data)
  targets = {}
  for split in (VALID, TEST):
    items = data.user_items(split)   # One pass over the split, then per user.
    targets[split] = pad_lists([items[u] for u in users])
  ranker = make_ranker(data, np.concatenate([targets[VALID], targets[TEST]], 1), mesh,
                       fcfg.ranking)
  hp_arrays = fs.stack_hparams(hps)
  keys = jax.vmap(jax.random.key)(jnp.asarray(
      [seed for _ in (values or [None]) for seed in seeds]))
  states = programs.init(keys)
  runs = len(hps)
  log(f"{runs} run(s) in one program: seeds {seeds}"
      + (f" x {key} in {values}" if key else "")
      + f"; {shape.num_batches} batches of {shape.batch_size} per epoch")

  writer = reporting.MetricsWriter(workdir)
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
      valid, test = _evaluate(programs, consts, states, hp_arrays, ranker, targets)
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
    raise MmjaxError("no evaluation ran: set config.frozen.eval_every <= epochs")
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
