"""The end-to-end multimodal task: from config to the state and programs
the one loop (`mmjax.train.loop`) trains.

`setup` builds what training needs (data, mesh, model state);
`EndToEndTask` gives the loop its steps, batches and valid evaluation.
Evaluating the best state on test is the caller's part (`mmjax.run`); the
dry run is `mmjax.train.aot`.
"""

import dataclasses
import time
from typing import Any, Callable

import jax

from mmjax import mesh as mesh_lib
from mmjax.data import store
from mmjax.data.pipeline import text_tokenizer, train_dataset
from mmjax.data.resolve import resolve_data_dir
from mmjax.models import pretrained
from mmjax.models.model import DataShapes, build_model
from mmjax.train import loop
from mmjax.train import reporting
from mmjax.train import resume
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


def setup(config, workdir: str, log=print, *,
          check_catalog: Callable | None = None) -> Setup:
  """Loads the data, makes the mesh, builds the model and its sharded state.

  Creates no workdir: the caller opens it (`outputs.open_workdir`, which
  also takes its lock) once this has succeeded, so a bad input leaves none
  behind. `check_catalog(catalog)` may reject the catalog.
  """
  started = time.time()
  pretrained.check_folders(config.model)   # Before any data work.
  data_dir = resolve_data_dir(config.data, log, labelled=config.loss.pointwise > 0)
  catalog = store.load_catalog(data_dir)
  if check_catalog is not None:
    check_catalog(catalog)
  tokenizer = text_tokenizer(data_dir, config)   # A pretrained tower's own.
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_batch_size(config.train.batch_size, mesh)

  log(f"data: {catalog.num_items} items, {catalog.num_users} users, "
      f"{len(catalog.interactions)} interactions ({data_dir})")
  log(f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
      f"device(s), {jax.process_count()} process(es)")

  shapes = DataShapes.of(catalog, tokenizer, config.data.max_text_len)
  model = build_model(config.model, shapes, seed=config.seed,
                      caption=config.loss.caption > 0)
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
      tokenizer=s.tokenizer, co_items=c.loss.co_item > 0,
      labels=c.loss.pointwise > 0)


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


class EndToEndTask:
  """The end-to-end multimodal model as a `loop.Task`: units are optimizer
  steps, batches come from the grain pipeline (its position is
  checkpointed), `train.steps_per_call` steps run per compiled call."""
  unit = "step"
  total_key = "train.steps"
  runs = 1
  guarded = True
  keeps_best = False   # Its best state is saved when it is found.

  def __init__(self, s: Setup, evaluate_valid: Callable,
               item_vectors: Callable | None = None):
    """`evaluate_valid(params, buffers)`: valid metrics of the state (one
    dict); `item_vectors(params, buffers)`: the catalog's item vectors, to
    warm-start the item memory (`warm_item_memory`)."""
    c = s.config
    self.setup, self.config = s, c
    self.total, self.per_call = c.train.steps, c.train.steps_per_call
    self.log_every = c.train.log_every
    self.examples_per_unit = c.train.batch_size
    self.identity = resume.run_identity(c, s.catalog, s.data_dir)
    self.data_iterator = iter(_dataset(s))
    self._evaluate_valid, self._item_vectors = evaluate_valid, item_vectors
    self._step_fn, self._multi_fn = _step_programs(s)
    self._compiled = None        # (steps per call, the AOT-compiled program).
    self._first_batches = None   # (host batches, global batch) compiled for.
    self._id_log = None

  def initial_state(self) -> dict:
    s = self.setup
    if self._item_vectors is not None:
      s.state = warm_item_memory(s, self._item_vectors)
    # The step donates the state: the setup lets go of it, so that a
    # restored checkpoint does not live next to the initial state.
    state, s.state = s.state, None
    return state

  def prepare(self, state, start, workdir, log) -> float:
    c, s = self.config, self.setup
    if c.train.log_example_ids:
      self._id_log = reporting.ExampleIdLog(workdir, start)
    # A finished run only re-evaluates: one batch to compile for.
    k = max(1, loop.call_length(start, self.total, self.per_call,
                                c.train.checkpoint_every, c.train.eval_every))
    locals_ = [next(self.data_iterator) for _ in range(k)]
    batch = _global(locals_, s.mesh)
    t0 = time.time()
    compiled = _program(self._step_fn, self._multi_fn, k).lower(state, batch).compile()
    # XLA's cost analysis counts a loop's body once: a k-step program's
    # FLOPs are one step's.
    flops = _report_compiled(compiled, log)
    log(f"setup {t0 - s.started:.1f}s, compile {time.time() - t0:.1f}s")
    self._compiled, self._first_batches = (k, compiled), (locals_, batch)
    return flops

  def advance(self, state, n):
    waited = 0.0
    if self._first_batches is not None:   # The ones the compile was made for.
      locals_, batch = self._first_batches
      self._first_batches = None
    else:
      t0 = time.time()
      locals_ = [next(self.data_iterator) for _ in range(n)]
      batch = _global(locals_, self.setup.mesh)
      waited = time.time() - t0
    k, compiled = self._compiled
    program = compiled if k == n else _program(self._step_fn, self._multi_fn, n)
    state, metrics = program(state, batch)
    # One host sync per call; the NaN policy still sees every step.
    rows = _per_step(jax.device_get(metrics), n)
    if self._id_log is not None:
      step = int(state["step"]) - n
      for j, local in enumerate(locals_):
        self._id_log.write(step + j + 1, local)
    return state, rows, waited

  def evaluate(self, state) -> list[dict]:
    return [self._evaluate_valid(state["params"], state["buffers"])]

  def keep_best(self, state, improved):
    del improved
    return state

  def servable(self, state) -> dict:
    return {k: state[k] for k in SERVED}


# What <workdir>/best keeps of the end-to-end state: enough to evaluate and
# serve (no optimizer state).
SERVED = ("params", "buffers", "step")
