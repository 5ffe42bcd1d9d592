"""One prepared check for a lent accelerator: bf16 throughput and a demo run.

  python -m mmjax.bench.accelerator_check --out docs/bench/accelerator_h100.json

In one process:
1. the throughput benchmark (`mmjax.bench.throughput`) on configs/base.py in
   bfloat16: JAX, and torch eager and torch.compile where torch reaches the
   same device (CUDA); the ratios, and MFU where the chip's peak is known;
2. the demo config trained end to end for --demo-steps steps: its
   examples/s and the share of the train loop spent waiting for data.
Writes one JSON with both and the device's name. The defaults are meant to
finish within 8 minutes on one GPU.
"""

import argparse
import json
import os
import tempfile
import time

import jax

from mmjax import config as config_lib
from mmjax.bench import throughput
from mmjax.run import train_and_evaluate


def throughput_runs() -> str:
  """All three runs where torch can run on the device JAX uses, else JAX's."""
  backend = jax.default_backend()
  if backend == "cpu":
    return ",".join(throughput.RUNS)
  if backend == "gpu":
    import torch
    if torch.cuda.is_available():
      return ",".join(throughput.RUNS)
  return "jax"


def demo_run(spec: str, steps: int, workdir: str) -> dict:
  config = config_lib.load(spec, [("train.steps", str(steps))])
  config.train.checkpoint_every = steps
  config.train.log_every = min(config.train.log_every, steps)
  t0 = time.time()
  summary = train_and_evaluate(config, workdir, log=lambda *_: None)
  train = summary["train"]
  return dict(config=spec, steps=steps, batch_size=config.train.batch_size,
              examples_per_sec=train["examples_per_sec"],
              data_wait_share=train["data_wait_share"],
              train_seconds=train["seconds"], wall_seconds=time.time() - t0,
              test_recall_at_20=summary["test"]["recall@20"])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="where the JSON goes")
  p.add_argument("--throughput-config", default="base")
  p.add_argument("--demo-config", default="demo")
  p.add_argument("--demo-steps", type=int, default=400)
  p.add_argument("--rounds", type=int, default=5, help="throughput's timed rounds")
  p.add_argument("--steps", type=int, default=8, help="throughput's steps per round")
  p.add_argument("--runs", default="", help="throughput's runs; default: "
                 "jax, torch_eager, torch_compile where torch has the device")
  p.add_argument("--workdir", default="", help="the demo run's workdir; default: "
                 "a temporary folder")
  args = p.parse_args(argv)
  if args.demo_steps < 1:
    p.error("--demo-steps must be >= 1")
  started = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    bench = throughput.main([
        "--config", args.throughput_config, "--out", os.path.join(tmp, "t.json"),
        "--dtype", "bfloat16", "--rounds", str(args.rounds), "--steps", str(args.steps),
        "--runs", args.runs or throughput_runs()])
    demo = demo_run(args.demo_config, args.demo_steps,
                    args.workdir or os.path.join(tmp, "demo"))
  result = dict(device=throughput.device_name(), throughput=bench, demo=demo,
                seconds=time.time() - started,
                versions=dict(jax=jax.__version__))
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{result['device']}: throughput {bench['markdown'].splitlines()[2]}; demo "
        f"{demo['examples_per_sec']:.0f} ex/s, waiting for data "
        f"{demo['data_wait_share']:.0%}; {result['seconds']:.0f}s")
  return result


if __name__ == "__main__":
  main()
