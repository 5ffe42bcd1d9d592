"""`mmjax eval --workdir W [--split valid|test]`: evaluates a finished or
interrupted run again, from its best-valid state (<workdir>/best), and
prints the table training prints. Nothing in the workdir changes.

The end-to-end model is evaluated as trained (no post-processing: that is
chosen once, at the end of training, and recorded in postprocess.json).
"""

from __future__ import annotations

import argparse
import functools

from etils import epath

from mmjax import config as config_lib
from mmjax.errors import MmjaxError
from mmjax.eval import feature_graph as feature_graph_eval
from mmjax.eval.embed import Embedder
from mmjax.eval.evaluate import baselines, evaluate
from mmjax.run import format_summary
from mmjax.train import feature_graph_serving
from mmjax.train import trainer
from mmjax.train.checkpoint import Checkpointer, restore_best
from mmjax.train.feature_graph_summary import format_summary as format_graph
from mmjax.train.feature_graph_summary import summarize

SPLITS = ("valid", "test")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="The run's workdir.")
  p.add_argument("--split", default="test", choices=SPLITS)
  return p


def feature_graph(workdir: str, config, split: str) -> dict:
  task, state, stop = feature_graph_serving.restore_task(
      workdir, config, make_evaluator=functools.partial(
          feature_graph_eval.Evaluator, how=config.train.eval_ranking))
  valid, test = task.evaluator(*task.vectors(state["best"]))
  summary = summarize(stop, valid, test, task.seeds, task.points)
  summary["runs"] = task.runs
  print(format_graph(summary, split))
  return summary


def end_to_end(workdir: str, config, split: str) -> dict:
  quiet = lambda *_: None
  s = trainer.setup(config, workdir, quiet)
  like = {k: s.state[k] for k in trainer.SERVED}
  state = restore_best(workdir, like)
  from_best = state is not None
  if not from_best:   # Written before any validation: the newest checkpoint.
    ckpt = Checkpointer(workdir, every=1, keep=config.train.keep_checkpoints)
    try:
      if ckpt.latest_step() is None:
        raise MmjaxError(f"no checkpoint in {workdir}: nothing to evaluate")
      state = ckpt.restore(s.state)
    finally:
      ckpt.close()
  embedder = Embedder(s.graphdef, s.mesh, config.train.eval_batch_size)
  result = evaluate(s.graphdef, state["params"], state["buffers"], s.catalog,
                    s.tokenizer, s.mesh,
                    history_len=config_lib.eval_history_len(config.data),
                    batch_size=config.train.eval_batch_size, embedder=embedder)
  out = {split: result[split], "retrieval": dict(result["retrieval"])}
  out["retrieval"]["chance_r@1"] = 1.0 / s.catalog.num_items
  if split == "test":   # The references rank the test split.
    out.update(baselines(s.catalog))
  print(f"step {int(state['step'])} ({'best valid' if from_best else 'latest'})")
  print(format_summary(out, split))
  return out


def run(args) -> dict:
  workdir = args.workdir if "://" in args.workdir else str(
      epath.Path(args.workdir).resolve())
  if not epath.Path(workdir).exists():
    raise MmjaxError(f"workdir not found: {workdir}")
  config = feature_graph_serving.run_config(workdir)
  if config.data.name == "mmrec":
    return feature_graph(workdir, config, args.split)
  return end_to_end(workdir, config, args.split)
