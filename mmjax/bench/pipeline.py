"""Input-pipeline throughput and memory, with no model.

  python -m mmjax.bench.pipeline --config configs/base.py --workers 0 \
      --seconds 20 [--items 100000] [--out pipeline.json]

Builds the config's train stream (`data.pipeline.train_dataset`, the
trainer's own), pulls one batch untimed (worker start-up, file opening), then
pulls batches for --seconds. Writes JSON: examples_per_sec,
examples_per_sec_per_core (over the cores this process may run on),
cpu_seconds_per_example (user + system time of this process and its grain
workers over the timed window: the figure that holds on a shared machine),
peak_rss_bytes (the largest summed RSS of this process and its workers,
sampled, from before the stream is built to the end) and base_rss_bytes
(the RSS before it is built: the interpreter and its libraries).
--items K swaps the synthetic catalog for one of K items (made once, cached);
--set KEY=VALUE overrides a config key.
"""

import argparse
import json
import os
import sys
import threading
import time

from absl import flags
import psutil

from mmjax import config as config_lib
from mmjax.data.pipeline import train_dataset
from mmjax.data.resolve import resolve_data_dir
from mmjax.errors import MmjaxError


def _tree(proc):
  try:
    return [proc] + proc.children(recursive=True)
  except psutil.Error:
    return [proc]


def _tree_rss(proc) -> int:
  total = 0
  for p in _tree(proc):
    try:
      total += p.memory_info().rss
    except psutil.Error:   # A worker that just exited.
      pass
  return total


def _tree_cpu(proc) -> float:
  total = 0.0
  for p in _tree(proc):
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.Error:
      pass
  return total


class _RssSampler:
  """The peak of `_tree_rss` sampled every `every` seconds in a thread."""

  def __init__(self, proc, every: float = 0.05):
    self.proc, self.every, self.peak = proc, every, _tree_rss(proc)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.wait(self.every):
      self.peak = max(self.peak, _tree_rss(self.proc))

  def stop(self) -> int:
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _tree_rss(self.proc))
    return self.peak


def load_config(path: str, workers: int, items: int | None, overrides=()):
  config = config_lib.load(path, overrides)
  config.data.worker_count = workers
  if items is not None:
    if config.data.name != "synthetic" or config.data.dir:
      raise MmjaxError(f"--items {items}: only the embedded synthetic catalog "
                       "has a size to set; drop --items or use such a config")
    config.data.synthetic.num_items = items
  config_lib.validate(config)
  return config


def measure(config, seconds: float, log=print) -> dict:
  """Runs the config's train stream for `seconds`; the JSON's fields."""
  data_dir = resolve_data_dir(config.data, log)
  proc = psutil.Process()
  base_rss = _tree_rss(proc)
  sampler = _RssSampler(proc)
  batch_size = config.train.batch_size
  it = iter(train_dataset(data_dir, None, config.data, batch_size=batch_size,
                          seed=config.seed))
  start_up = time.perf_counter()
  next(it)
  start_up = time.perf_counter() - start_up
  cpu0, t0, batches = _tree_cpu(proc), time.perf_counter(), 0
  while time.perf_counter() - t0 < seconds:
    next(it)
    batches += 1
  wall = time.perf_counter() - t0
  cpu = _tree_cpu(proc) - cpu0
  peak = sampler.stop()
  examples = batches * batch_size
  cores = len(os.sched_getaffinity(0))
  return {
      "examples_per_sec": examples / wall,
      "examples_per_sec_per_core": examples / wall / cores,
      "cpu_seconds_per_example": cpu / max(examples, 1),
      "examples_per_cpu_second": examples / cpu if cpu > 0 else None,
      "peak_rss_bytes": int(peak),
      "base_rss_bytes": int(base_rss),
      "examples": examples,
      "seconds": wall,
      "first_batch_seconds": start_up,
      "batch_size": batch_size,
      "workers": config.data.worker_count,
      "threads": config.data.num_threads,
      "cpu_count": cores,
      "num_items": _num_items(data_dir),
      "augment": bool(config.data.augment),
      "image_size": config.data.synthetic.image_size,
  }


def _num_items(data_dir) -> int:
  from mmjax.data import store
  return int(store.read_meta(data_dir)["num_items"])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="config file or shipped name")
  p.add_argument("--workers", type=int, default=0,
                 help="grain worker processes (data.worker_count)")
  p.add_argument("--seconds", type=float, default=20.0, help="timed window")
  p.add_argument("--items", type=int, default=None,
                 help="items of the synthetic catalog (data.synthetic.num_items)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, e.g. data.synthetic.image_size=32")
  p.add_argument("--out", default=None, help="JSON file to write")
  args = p.parse_args(argv)
  if args.workers < 0 or args.seconds <= 0:
    raise SystemExit("--workers must be >= 0 and --seconds > 0")
  # grain's worker processes read absl flags; this entry point parses none.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  log = lambda m: print(m, file=sys.stderr, flush=True)
  overrides = [tuple(o.split("=", 1)) for o in args.set]
  if any(len(o) != 2 for o in overrides):
    raise SystemExit(f"--set wants KEY=VALUE, got {args.set}")
  try:
    config = load_config(args.config, args.workers, args.items, overrides)
    result = {"config": args.config, **measure(config, args.seconds, log)}
  except MmjaxError as e:
    raise SystemExit(f"error: {e}") from None
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
