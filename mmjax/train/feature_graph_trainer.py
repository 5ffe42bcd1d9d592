"""Trains feature-graph recommenders on MMRec-format data, MMRec's protocol.

Protocol (as enoche/MMRec's trainer): full ranking of all items with the
user's train positives masked; validation every `train.eval_every` epochs;
early stop once the valid `train.early_stop.metric` has not improved for
more than `train.early_stop.patience` evaluations; the reported test
metrics are those of the best valid epoch's state. The ranking and its
metrics are the evaluator's (`make_evaluator`, built by the caller from the
eval layer: `mmjax.eval.feature_graph.Evaluator`).

All seeds (`config.seeds`) and the points of vmapped grid axes
(`config.grid.axes`) train together as one vmapped program:
`FeatureGraphTask` gives them to the one loop (`mmjax.train.loop`), which
checkpoints, resumes, validates and keeps each run's best state. The summary
(feature_graph_summary.py) gives the per-seed results, their mean and
standard deviation, and per grid point the same. A search over several
programs and the rerun of its chosen point: feature_graph_search.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.config import grid as grid_lib
from mmjax.data import mmrec
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.data.items_table import read_items
from mmjax.errors import MmjaxError
from mmjax.models import graph as graph_lib
from mmjax.models import text_tower
from mmjax.train import feature_graph_step as fs
from mmjax.train import loop
from mmjax.train.cost import scan_flops
from mmjax.train.feature_graph_summary import format_summary, summarize
from mmjax.train.outputs import open_workdir, write_outputs


def load_data(config) -> mmrec.MMRecData:
  d = config.data   # validate() saw dir and inter_file set.
  if not os.path.isdir(d.dir):
    raise MmjaxError(f"config.data.dir: data dir not found: {d.dir}")
  return mmrec.load(d.dir, d.inter_file, mmrec.feature_file_list(d.feature_files),
                    d.feature_dir)


def load_tower(config, data: mmrec.MMRecData) -> text_tower.Prepared | None:
  """The text tower over `feature_graph.text_file`'s texts, or None."""
  f = config.feature_graph
  if not f.text_tower:
    return None
  path = os.path.join(config.data.dir, f.text_file)
  texts = read_items(path, f.text_id_column, [f.text_column])[f.text_column]
  if len(texts) != data.num_items:
    raise MmjaxError(f"config.feature_graph.text_file: {path} has {len(texts)} items, "
                     f"the interactions {data.num_items} (max itemID + 1)")
  return text_tower.prepare(texts, f.text_tower, blocks=f.tower_blocks,
                            max_len=f.max_text_len, items=f.tower_items,
                            buckets=f.tower_buckets)


def run_list(config) -> tuple[list[int], list[dict], list[dict]]:
  """(seeds, grid points, one hyper-parameter dict per run).

  The points are those of `config.grid.axes`, whose keys must all be
  vmapped ones ([{}] without a grid). Runs are ordered point-major: run r
  has point r // S, seed r % S.
  """
  seeds = list(config.seeds) or [config.seed]
  axes = grid_lib.parse_axes(config.grid.axes)
  static, _ = grid_lib.split_static(axes)
  if static:   # feature_graph_search runs those as programs of their own.
    raise MmjaxError(f"config.grid.axes: {static[0][0]} changes the program; "
                     "train it through mmjax.train.feature_graph_search")
  points = grid_lib.points(axes) or [{}]
  base = fs.hparams(config)
  hps = [dict(base, **{fs.HPARAMS[k]: float(v) for k, v in p.items()})
         for p in points for _ in seeds]
  return seeds, points, hps


def build_constants(data: mmrec.MMRecData, fcfg, mesh, tower=None) -> fs.Constants:
  """`tower`: a `text_tower.Prepared`; its pretrained vectors join the kNN
  graph's features (FREEDOM's graph: fixed before training)."""
  shards = mesh.shape["data"]
  train = data.pairs[TRAIN]
  ui = graph_lib.user_item_graph(train, data.num_users, data.num_items, shards)
  item_graph = None
  sources = list(data.features.values()) + ([tower.initial] if tower else [])
  if fcfg.knn_k and sources and fcfg.item_layers:
    item_graph = graph_lib.stack_edges(
        [graph_lib.knn_graph(f, fcfg.knn_k, shards) for f in sources])
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
      eval_users=jax.device_put(data.eval_users().astype(np.int32), rep),
      tower=jax.device_put(tower.inputs, rep) if tower else None)


@jax.jit
def _keep_best(best, params, improved):
  """Each run's best parameters: `params` where `improved` (R,), else `best`."""
  pick = lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b)
  return jax.tree.map(pick, best, params)


def data_fingerprint(data: mmrec.MMRecData, tower=None) -> str:
  """A digest of the split pairs and the features (the text tower's too)."""
  h = hashlib.blake2b(digest_size=16)
  h.update(f"{data.num_users} {data.num_items}".encode())
  for s in (TRAIN, VALID, TEST):
    h.update(np.ascontiguousarray(data.pairs[s]).tobytes())
  for name, f in data.features.items():
    h.update(name.encode())
    h.update(np.ascontiguousarray(f).tobytes())
  if tower is not None:
    h.update(np.ascontiguousarray(tower.initial).tobytes())
  return h.hexdigest()


class FeatureGraphTask:
  """The feature-graph recommender as a `loop.Task`: units are epochs (one
  compiled `lax.scan` each), R runs (seeds x grid values) vmapped in one
  program. The state: {"runs": the runs' params, Adam state and RNG,
  "best": each run's best-valid params, "step": the epoch}."""
  unit = "epoch"
  total_key = "feature_graph.epochs"
  per_call = 1
  log_every = 1
  guarded = False
  keeps_best = True      # state["best"]: saved to <workdir>/best with checkpoints.
  data_iterator = None   # The epoch order comes from each run's RNG.

  def __init__(self, config, data: mmrec.MMRecData, mesh, evaluator):
    fcfg = config.feature_graph
    self.config, self.data, self.mesh, self.evaluator = config, data, mesh, evaluator
    self.seeds, self.points, hps = run_list(config)
    self.runs, self.total = len(hps), fcfg.epochs
    tower = load_tower(config, data)
    self.tower = None if tower is None else dict(
        model=fcfg.text_tower, blocks=tower.blocks, width=tower.width,
        tokens=int(tower.inputs.mask.shape[1]), at_max_len=tower.at_max_len,
        buckets=[dict(width=b.width, items=b.size, per_step=b.draws) for b in tower.plan])
    self.consts = build_constants(data, fcfg, mesh, tower)
    self.shape = fs.Shape(
        num_users=data.num_users, num_items=data.num_items,
        num_train=len(data.pairs[TRAIN]), batch_size=config.train.batch_size,
        negatives=fcfg.negatives, layers=fcfg.layers,
        item_layers=fcfg.item_layers if self.consts.item_graph is not None else 0,
        tower_plan=tower.plan if tower else ())
    self.examples_per_unit = self.runs * self.shape.num_train
    feature_dims = [f.shape[1] for f in data.features.values()]
    try:
      self.programs = fs.Programs(fcfg, config.model.dim, self.shape, feature_dims,
                                  mesh, tower)
    except ValueError as e:
      raise MmjaxError(f"config.feature_graph: {e}") from None
    self.hp = fs.stack_hparams(hps)
    self.identity = {"train.batch_size": int(config.train.batch_size),
                     "seed": [int(s) for s in self.seeds],
                     "data": {"fingerprint": data_fingerprint(data, tower),
                              "dir": config.data.dir}}

  def describe(self) -> str:
    grid = config_lib.get(self.config, "grid.axes")
    return (f"{self.runs} run(s) in one program: seeds {self.seeds}"
            + (f" x {len(self.points)} points of {grid}" if grid else "")
            + f"; {self.shape.num_batches} batches of {self.shape.batch_size} per epoch"
            + ("" if self.tower is None else
               f"; text tower: the last {self.tower['blocks']} block(s) of "
               f"{self.tower['model']}, {self.shape.tower_items} items per step, "
               f"{self.tower['tokens']} tokens per text ({self.tower['at_max_len']} "
               "at feature_graph.max_text_len), in buckets of "
               + ", ".join(f"{b['per_step']} at {b['width']}" for b in self.tower["buckets"])
               + " tokens"))

  def _keys(self):
    return jax.vmap(jax.random.key)(jnp.asarray(
        [seed for _ in self.points for seed in self.seeds]))

  def abstract_runs(self):
    """The shapes of the runs' state, allocating nothing."""
    return self.programs.init.eval_shape(self._keys())

  def initial_state(self) -> dict:
    runs = self.programs.init(self._keys())
    rep = mesh_lib.replicated(self.mesh)
    return dict(runs=runs, best=jax.tree.map(jnp.copy, runs["params"]),
                step=jax.device_put(jnp.zeros((), jnp.int32), rep))

  def compile_epoch(self, state):
    return self.programs.epoch.lower(self.consts, state["runs"], self.hp).compile()

  def prepare(self, state, start, workdir, log) -> float:
    del start, workdir
    compiled = self.compile_epoch(state)
    mem = compiled.memory_analysis()
    flops = self.epoch_flops(compiled)
    if mem is not None:
      log(f"compiled epoch: {memory_bytes(mem)['total'] / 2**20:.1f} MiB per device, "
          f"{flops / 1e9:.2f} GFLOPs/epoch for {self.runs} run(s)")
    return flops

  def epoch_flops(self, compiled) -> float:
    return scan_flops(compiled, self.shape.num_batches)

  def advance(self, state, n):
    rows = []
    for _ in range(n):
      runs, metrics = self.programs.epoch(self.consts, state["runs"], self.hp)
      state = dict(state, runs=runs, step=state["step"] + 1)
      rows.append({k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()})
    return state, rows, 0.0

  def vectors(self, params):
    """(users (R, E, dim), items (R, N, dim)) of the evaluated users."""
    return self.programs.embed(self.consts, params, self.hp)

  def evaluate(self, state) -> list[dict]:
    return self.evaluator(*self.vectors(state["runs"]["params"]))[0]

  def keep_best(self, state, improved):
    return dict(state, best=_keep_best(state["best"], state["runs"]["params"],
                                       jnp.asarray(improved)))

  def servable(self, state) -> dict:
    return {"best": state["best"], "step": state["step"]}


def memory_bytes(mem) -> dict:
  """Per-device bytes of a compiled program's memory analysis."""
  out = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
             temp=mem.temp_size_in_bytes, alias=mem.alias_size_in_bytes)
  out["total"] = out["arguments"] + out["outputs"] + out["temp"] - out["alias"]
  return {k: int(v) for k, v in out.items()}


def train_and_evaluate_feature_graph(config, workdir: str, log=print, *,
                                     make_evaluator, dry_run: bool = False,
                                     extra: dict | None = None) -> dict:
  """Trains every run of the config through the one loop and evaluates each
  run's best state; `make_evaluator(data, mesh)` returns the evaluator: (users,
  items) of all runs -> (valid, test) metrics, one dict per run. `dry_run`
  compiles one epoch and reports its memory and FLOPs; nothing trains.
  `extra` joins the summary (the search's record of its points)."""
  config_lib.validate(config)
  data = load_data(config)
  log(f"data: {data.describe()} ({config.data.dir})")
  mesh = mesh_lib.make_mesh(config.mesh)
  task = FeatureGraphTask(config, data, mesh, make_evaluator(data, mesh))
  log(task.describe())
  if dry_run:
    return _dry_run(task, workdir, log)
  # After the inputs: bad ones leave nothing. One run per workdir.
  with open_workdir(workdir, log) as workdir:
    outcome = loop.run(task, config, workdir, log)
    if outcome.preempted_at is not None:
      return dict(preempted_at_step=outcome.preempted_at, signal=outcome.preempted_by)
    return _finish(task, outcome, workdir, log, extra or {})


def _finish(task: FeatureGraphTask, outcome: loop.Outcome, workdir: str, log,
            extra: dict) -> dict:
  """Test (and valid) metrics of each run's best state; summary.json."""
  stop = outcome.early_stop
  if not stop.evaluated:
    raise MmjaxError("no evaluation ran: set config.train.eval_every <= "
                     "config.feature_graph.epochs")
  valid, test = task.evaluator(*task.vectors(outcome.state["best"]))
  summary = summarize(stop, valid, test, task.seeds, task.points)
  st, data = outcome.stats, task.data
  summary.update(
      seconds_per_epoch=st["seconds_per_epoch"], seconds_per_eval=st["seconds_per_eval"],
      cpu_seconds_per_epoch=st["cpu_seconds_per_epoch"],
      cpu_seconds_per_eval=st["cpu_seconds_per_eval"],
      runs=task.runs, epochs_run=st["epochs"], resumed_from=st["resumed_from"],
      compile_and_first_epoch_seconds=st["first_call_seconds"],
      served_run=served_run(stop, task.seeds, task.points),
      data=dict(dir=task.config.data.dir, num_users=data.num_users,
                num_items=data.num_items,
                **{f"num_{n}": len(data.pairs[s]) for n, s in
                   (("train", TRAIN), ("valid", VALID), ("test", TEST))},
                features={k: list(v.shape) for k, v in data.features.items()},
                **({} if task.tower is None else {"text_tower": task.tower})),
      config=task.config.to_dict(), **extra)
  write_outputs(workdir, summary, outcome.metrics_path, format_summary, log)
  return summary


def served_run(stop, seeds, points) -> dict:
  """The run `mmjax.load`, export and recommend serve: the best on valid
  within the chosen grid point."""
  s = len(seeds)
  group = max(range(len(points)), key=lambda g: np.mean(stop.best[g * s:(g + 1) * s]))
  run = max(range(group * s, (group + 1) * s), key=lambda r: stop.best[r])
  return dict(run=run, seed=int(seeds[run % s]), best_epoch=stop.best_step[run],
              valid=stop.valid[run], **points[group])


def _dry_run(task: FeatureGraphTask, workdir: str, log) -> dict:
  """Compiles one epoch; reports per-device memory and FLOPs (dry_run.json)."""
  compiled = task.compile_epoch({"runs": task.abstract_runs()})
  mem = compiled.memory_analysis()
  report = dict(task="feature_graph", runs=task.runs, devices=jax.device_count(),
                flops_per_epoch=task.epoch_flops(compiled),
                per_device_bytes=memory_bytes(mem) if mem is not None else None,
                batches_per_epoch=task.shape.num_batches)
  out = epath.Path(workdir or ".")
  out.mkdir(parents=True, exist_ok=True)
  (out / "dry_run.json").write_text(json.dumps(report, indent=2))
  mib = (f"{report['per_device_bytes']['total'] / 2**20:.1f} MiB per device, "
         if mem is not None else "")
  log(f"dry run: one epoch of {task.runs} run(s) compiled: {mib}"
      f"{report['flops_per_epoch'] / 1e9:.2f} GFLOPs; nothing trained "
      f"({out / 'dry_run.json'})")
  return report
