"""Train-step throughput: JAX vs torch eager vs torch.compile, in one run.

  python -m mmjax.bench.throughput --config configs/demo.py --out demo.json

The same model (weights copied from the JAX model into the PyTorch baseline),
the same loss terms and optimizer (AdamW + clipping + the same schedule) and
the same pre-made batches (drawn once from the train pipeline, converted
ahead: no input pipeline in the timing) on both sides. Compilation and
warm-up steps are excluded; the three runs are interleaved round by round
and each figure is the median over rounds of (round time / steps). Each run
starts its turn with an untimed switch-in of one JAX call's worth of steps
(config.train.steps_per_call), so no run is charged for what the one before it
left behind (the first XLA call after torch runs slower, its fresh buffers
page-faulting); the switch-in times are reported too, and --switch-in 0
times the cold switch instead. FLOPs per
step come from XLA's cost analysis of the compiled JAX step (the same math
runs on the torch side). Writes JSON and prints a markdown table.

On a GPU both sides run there: JAX on its default backend, torch on CUDA
(synchronized before each round's clock stops), and `--dtype bfloat16` is
the config's model.dtype for JAX and autocast for torch, parameters f32 on
both. Where the chip's peak is known (`PEAK_FLOPS`, or --peak-tflops) each
run's MFU is achieved FLOP/s over that peak.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
import torch
from flax import nnx

from mmjax import config as config_lib
from mmjax.baselines.torch import train_step as torch_step
from mmjax.baselines.torch.model import TorchMultimodalRecommender
from mmjax.baselines.torch.transfer import to_torch
from mmjax.data import store
from mmjax.data.features import TextTokenizer
from mmjax.data.pipeline import train_dataset
from mmjax.models.model import DataShapes, build_model
from mmjax import mesh as mesh_lib
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.cost import step_flops
from mmjax.train.step import (init_state, make_multi_step, make_train_step,
                              state_shardings)
from mmjax.data.resolve import resolve_data_dir

RUNS = ("jax", "torch_eager", "torch_compile")
# Dense bf16 tensor-core peaks (FLOP/s) of chips whose MFU is reported by
# default, matched against jax.devices()[0].device_kind.
PEAK_FLOPS = {"bfloat16": {"H100": 989e12, "H200": 989e12}}


def log(message: str) -> None:
  print(f"[throughput {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def device_name() -> str:
  """The CPU's model and cores, or the backend and its device kind."""
  if jax.default_backend() == "cpu":
    return f"cpu: {cpu_name()}, {os.cpu_count()} cores"
  return f"{jax.default_backend()}: {jax.devices()[0].device_kind}"


def load_config(path: str):
  config = config_lib.load(path)   # A file or a shipped config's name.
  config_lib.validate(config)
  return config


def torch_device() -> str:
  """Where the torch runs go: CUDA when JAX runs on a GPU, else the CPU. A
  comparison across kinds of chip would mean nothing, so JAX on a GPU
  without CUDA torch, or on a TPU, is an error (time JAX alone: --runs jax)."""
  backend = jax.default_backend()
  if backend == "cpu":
    return "cpu"
  if backend == "gpu" and torch.cuda.is_available():
    return "cuda"
  raise SystemExit(f"JAX runs on {backend} but torch has no such device "
                   f"(torch.cuda.is_available() is {torch.cuda.is_available()}); "
                   "pass --runs jax to time JAX alone")


def peak_flops(dtype: str) -> float | None:
  """The known dense peak of this chip for `dtype` (PEAK_FLOPS), or None."""
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.get(dtype, {}).items() if k in kind), None)


def make_batches(config, count: int):
  data_dir = resolve_data_dir(config.data)
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), config.data.max_text_len)
  it = iter(train_dataset(data_dir, catalog, config.data,
                          batch_size=config.train.batch_size, seed=config.seed,
                          co_items=config.loss.co_item > 0))
  batches = [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(count)]
  return DataShapes.of(catalog, tok, config.data.max_text_len), batches


class JaxRunner:
  """The mmjax train step (jitted, state donated) over device-resident
  batches; with config.train.steps_per_call = k > 1, k steps per call of the
  compiled program (make_multi_step), k batches stacked per call."""

  def __init__(self, config, shapes, batches):
    model = build_model(config.model, shapes, seed=config.seed,
                      caption=config.loss.caption > 0)
    tx = make_optimizer(config.train)
    graphdef, state = init_state(model, tx, config.seed)
    self.graphdef = graphdef
    self.model = nnx.merge(graphdef, *jax.tree.map(np.array, (state["params"], state["buffers"])))
    mesh = mesh_lib.make_mesh(config.mesh)
    sh = state_shardings(state, mesh)
    self.state = jax.device_put(state, sh)
    self.per_call = k = config.train.steps_per_call
    args = (graphdef, tx, config.loss, mesh, sh, learning_rate(config.train),
            config.train.accum_steps)
    if k == 1:
      self.batches = [mesh_lib.global_batch(b, mesh) for b in batches]
      step = make_train_step(*args)
    else:   # Each call takes the next k batches, cycling.
      n = len(batches)
      self.batches = [mesh_lib.global_batches([batches[(i * k + j) % n] for j in range(k)],
                                              mesh) for i in range(n)]
      step = make_multi_step(*args)
    t = time.perf_counter()
    self.step = step.lower(self.state, self.batches[0]).compile()
    self.compile_s = time.perf_counter() - t
    # A loop's body is counted once: a k-step program reports one step.
    self.flops = step_flops(self.step)

  def run(self, steps: int) -> float:
    """Seconds for `steps` steps (whole calls; the time of a last partial
    call's extra steps is scaled away)."""
    calls = -(-steps // self.per_call)
    t = time.perf_counter()
    for i in range(calls):
      self.state, metrics = self.step(self.state, self.batches[i % len(self.batches)])
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - t) * steps / (calls * self.per_call)


class TorchRunner:
  """The PyTorch baseline's train step, eager or torch.compile'd."""

  def __init__(self, config, shapes, batches, jax_model, *, compile: bool,
               device: str = "cpu"):
    model = TorchMultimodalRecommender(config.model, shapes)
    to_torch(jax_model, model)
    model.to(device)
    self.device = device
    self.step = torch_step.TorchTrainStep(
        model, config.loss, torch_step.make_optimizer(model, config.train),
        lr=torch_step.lr_table(config.train), grad_clip=config.train.grad_clip,
        compile=compile, compute_dtype=getattr(torch, config.model.dtype))
    self.batches = [torch_step.to_torch_batch(b, device) for b in batches]
    self.compile_s = 0.0

  def run(self, steps: int) -> float:
    t = time.perf_counter()
    for i in range(steps):
      self.step(self.batches[i % len(self.batches)])
    if self.device == "cuda":   # The clock stops when the GPU is done.
      torch.cuda.synchronize()
    return time.perf_counter() - t


def warm_up(runner, steps: int) -> None:
  t = time.perf_counter()
  runner.run(steps)
  runner.compile_s += time.perf_counter() - t


def interleave(runners: dict, *, steps: int, rounds: int, switch_steps: int):
  """Times `steps` steps of each runner per round, the order rotating round
  by round; each turn starts with `switch_steps` untimed steps (if > 0).
  Returns ({name: [s/step per round]}, {name: [switch-in s/step per round]})."""
  names = list(runners)
  times = {name: [] for name in names}
  switch_times = {name: [] for name in names}
  for r in range(rounds):
    # Rotate the order too, so no run always follows the same one.
    for name in names[r % len(names):] + names[:r % len(names)]:
      if switch_steps:
        switch_times[name].append(runners[name].run(switch_steps) / switch_steps)
      times[name].append(runners[name].run(steps) / steps)
    log(f"round {r + 1}/{rounds}: " + ", ".join(
        f"{n} {1e3 * times[n][-1]:.1f} ms" for n in names))
  return times, switch_times


def measure(config, *, steps: int, rounds: int, warmup: int, num_batches: int,
            switch_steps: int = 0, runs=RUNS, peak: float | None = None) -> dict:
  """The `runs` (jax first, then any of the torch runs) on `config`,
  interleaved (`interleave`; `switch_steps` untimed steps start each turn);
  the figures main() writes as JSON. With `peak` (FLOP/s), each run's MFU."""
  shapes, batches = make_batches(config, num_batches)
  log(f"{num_batches} batches of {config.train.batch_size} ready")
  runners = {"jax": JaxRunner(config, shapes, batches)}
  log(f"jax step compiled in {runners['jax'].compile_s:.1f}s")
  device = torch_device() if len(runs) > 1 else None
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    if name in runs:
      runners[name] = TorchRunner(config, shapes, batches, runners["jax"].model,
                                  compile=compiled, device=device)
  for name, runner in runners.items():
    warm_up(runner, warmup)
    log(f"{name} warmed up ({runner.compile_s:.1f}s with compilation)")
  times, switch_times = interleave(runners, steps=steps, rounds=rounds,
                                   switch_steps=switch_steps)
  flops = runners["jax"].flops
  bs = config.train.batch_size
  out = {}
  for name in runners:
    step_s = statistics.median(times[name])
    out[name] = dict(examples_per_sec=bs / step_s, step_ms=1e3 * step_s,
                     step_ms_rounds=[1e3 * t for t in times[name]],
                     achieved_flops_per_sec=flops / step_s,
                     mfu=flops / step_s / peak if peak else None,
                     switch_in_step_ms=(1e3 * statistics.median(switch_times[name])
                                        if switch_steps else None),
                     warmup_and_compile_s=runners[name].compile_s)
  out["flops_per_step"] = flops
  out["peak_flops_per_sec"] = peak
  out["torch_device"] = device
  for key, name in (("ratio_vs_eager", "torch_eager"), ("ratio_vs_compile", "torch_compile")):
    out[key] = (out["jax"]["examples_per_sec"] / out[name]["examples_per_sec"]
                if name in out else None)
  return out


def markdown(result: dict) -> str:
  mfu = result.get("peak_flops_per_sec") is not None
  rows = ["| run | examples/s | step ms | achieved GFLOP/s |" + (" MFU |" if mfu else "")
          + " JAX speed-up over it |",
          "|---|---:|---:|---:|" + ("---:|" if mfu else "") + "---:|"]
  jax_eps = result["jax"]["examples_per_sec"]
  for name in (n for n in RUNS if n in result):
    r = result[name]
    rows.append(f"| {name} | {r['examples_per_sec']:.1f} | {r['step_ms']:.1f} | "
                f"{r['achieved_flops_per_sec'] / 1e9:.1f} |"
                + (f" {100 * r['mfu']:.1f}% |" if mfu else "")
                + f" {jax_eps / r['examples_per_sec']:.2f}x |")
  return "\n".join(rows)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="a config file, e.g. configs/demo.py")
  p.add_argument("--out", required=True, help="where the JSON goes")
  p.add_argument("--steps", type=int, default=5, help="steps per timed round")
  p.add_argument("--rounds", type=int, default=7, help="timed rounds (median)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  p.add_argument("--batches", type=int, default=4, help="distinct pre-made batches")
  p.add_argument("--switch-in", type=int, default=1,
                 help="untimed JAX-call-sized turns (config.train.steps_per_call "
                      "steps) each run takes before its timed steps; 0: cold switch")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch intra-op threads (XLA's CPU pool uses every core)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="compute dtype (model.dtype; torch autocast); default: the config's")
  p.add_argument("--runs", default=",".join(RUNS),
                 help=f"which runs, comma-separated; jax is always one ({','.join(RUNS)})")
  p.add_argument("--peak-tflops", type=float,
                 help="the chip's peak for MFU; default: known chips' dense bf16 peak")
  args = p.parse_args(argv)
  if args.steps < 1 or args.rounds < 1 or args.switch_in < 0:
    p.error("--steps and --rounds must be >= 1 and --switch-in >= 0")
  runs = tuple(r for r in args.runs.split(",") if r)
  if "jax" not in runs or not set(runs) <= set(RUNS):
    p.error(f"--runs takes jax and any of {RUNS[1:]}, got {args.runs!r}")
  torch.set_num_threads(args.threads)
  config = load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  peak = 1e12 * args.peak_tflops if args.peak_tflops else peak_flops(config.model.dtype)
  switch_steps = args.switch_in * config.train.steps_per_call
  result = measure(config, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                   num_batches=args.batches, switch_steps=switch_steps, runs=runs,
                   peak=peak)
  result.update(
      config=args.config, batch_size=config.train.batch_size, dtype=config.model.dtype,
      device=device_name(),
      threads=dict(torch_intra_op=torch.get_num_threads(),
                   torch_inter_op=torch.get_num_interop_threads(),
                   xla_cpu="all cores (XLA's default CPU pool)",
                   xla_flags=os.environ.get("XLA_FLAGS", "")),
      versions=dict(jax=jax.__version__, torch=torch.__version__),
      protocol=dict(steps_per_round=args.steps, rounds=args.rounds, warmup=args.warmup,
                    batches=args.batches,
                    switch_in_steps=switch_steps))
  result["markdown"] = markdown(result)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(result["markdown"])
  ratios = ", ".join(f"{k} {result[k]:.2f}" for k in ("ratio_vs_eager", "ratio_vs_compile")
                     if result[k] is not None)
  print(f"{ratios or 'jax alone'}; {result['device']}")
  return result


if __name__ == "__main__":
  main()
