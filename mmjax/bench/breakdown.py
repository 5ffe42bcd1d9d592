"""Where a train step's time goes, JAX vs torch: forward (loss), forward +
backward, and the full step (the difference is the optimizer update).

  python -m mmjax.bench.breakdown --config configs/demo.py --out breakdown.json

Same model, weights and batches as mmjax.bench.throughput; every figure is
the median over interleaved rounds, warm-up and compilation excluded.
"""

import argparse
import json
import os
import statistics
import time

import jax
import torch

from mmjax.bench.throughput import (JaxRunner, TorchRunner, cpu_name, load_config, log,
                                    make_batches)
from mmjax.train.step import make_loss_fn

PARTS = ("forward", "forward_backward", "step")


def jax_parts(runner, config):
  loss_fn = make_loss_fn(runner.graphdef, config.loss)
  fwd = jax.jit(loss_fn)
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  rng = runner.state["rng"]

  def part(fn):
    def run(batch):
      s = runner.state
      return fn(s["params"], s["buffers"], batch, rng, s["step"])
    return run

  return dict(forward=part(fwd), forward_backward=part(fwd_bwd))


def torch_parts(runner, config):
  model = runner.step.model
  loss = runner.step._loss  # Eager or compiled, as the step uses it.

  def forward(batch):
    with torch.no_grad():
      return loss(batch, True)[0]

  def forward_backward(batch):
    model.zero_grad(set_to_none=True)
    out = loss(batch, True)[0]
    out.backward()
    return out

  return dict(forward=forward, forward_backward=forward_backward)


def time_fn(fn, batches, steps: int, block) -> float:
  t = time.perf_counter()
  for i in range(steps):
    out = fn(batches[i % len(batches)])
  block(out)
  return (time.perf_counter() - t) / steps


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  config = load_config(args.config)
  # The parts are those of one step: time the one-step program.
  config.train.steps_per_call = 1
  shapes, batches = make_batches(config, 2)
  jr = JaxRunner(config, shapes, batches)
  runs = {"jax": (jr, jax_parts(jr, config), jax.block_until_ready)}
  for name, compiled in (("torch_eager", False), ("torch_compile", True)):
    tr = TorchRunner(config, shapes, batches, jr.model, compile=compiled)
    runs[name] = (tr, torch_parts(tr, config), lambda x: x)
  fns = {}
  for name, (runner, parts, block) in runs.items():
    fns[name] = dict(parts, step=lambda b, r=runner: r.run(1))
    for part in PARTS:   # Warm-up (and compilation) of every part.
      time_fn(fns[name][part], runner.batches, 2, block)
    log(f"{name} warmed up")
  times = {n: {p: [] for p in PARTS} for n in runs}
  for r in range(args.rounds):
    for name, (runner, _, block) in runs.items():
      for part in PARTS:
        times[name][part].append(time_fn(fns[name][part], runner.batches, args.steps, block))
    log(f"round {r + 1}/{args.rounds}")
  out = {n: {p: 1e3 * statistics.median(v) for p, v in parts.items()}
         for n, parts in times.items()}
  for parts in out.values():
    parts["backward"] = parts["forward_backward"] - parts["forward"]
    parts["optimizer_and_rest"] = parts["step"] - parts["forward_backward"]
  result = dict(config=args.config, unit="ms (median)", device=cpu_name(), **out)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
