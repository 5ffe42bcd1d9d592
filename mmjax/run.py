"""The whole run, from config to summary.json: train, evaluate, post-process.

The layers below each do one part: `mmjax.train` trains (and checkpoints),
`mmjax.eval` measures, `mmjax.postprocess` calibrates on valid. This module
builds each from the config and hands one's output to the next; `mmjax
train` (cli.py) calls `train_and_evaluate`.
"""

import functools
import os
import time

from mmjax import config as config_lib
from mmjax.errors import MmjaxError
from mmjax.eval import feature_graph as feature_graph_eval
from mmjax.eval.embed import Embedder
from mmjax.eval.evaluate import all_item_vectors, baselines, evaluate
from mmjax.postprocess import choose
from mmjax.train import aot
from mmjax.train import feature_graph_trainer
from mmjax.train import trainer
from mmjax.train.outputs import (check_workdir_free, open_workdir,
                                 write_outputs)


def train_and_evaluate(config, workdir: str, log=print, dry_run: bool = False) -> dict:
  """Trains and evaluates; returns the summary (also <workdir>/summary.json).

  `dry_run` only compiles the train step, from abstract shapes, and reports
  its per-device memory and FLOPs in <workdir or .>/dry_run.json (no
  training, no data read; config.mesh.topology compiles for a TPU
  topology). A run stopped by SIGTERM or Ctrl-C returns
  {"preempted_at_step": step, "signal": "SIGTERM" or "SIGINT"}.
  """
  config_lib.validate(config)
  if not dry_run:
    check_workdir_free(workdir)   # Fail before the setup, not after.
  if config.data.name == "mmrec":   # Precomputed features, MMRec's protocol.
    return feature_graph_trainer.train_and_evaluate_feature_graph(
        config, workdir, log, make_evaluator=functools.partial(
            feature_graph_eval.Evaluator, how=config.feature_graph.ranking))
  if dry_run:   # Abstract shapes only: no data, no arrays (train/aot.py).
    out_dir = workdir or "."
    os.makedirs(out_dir, exist_ok=True)
    return aot.dry_run(config, log, out_dir=out_dir)
  if config.mesh.topology:
    raise MmjaxError("config.mesh.topology is for --dry_run (compiling for a "
                     "TPU topology); training uses the local devices")
  s = trainer.setup(config, workdir, log,
                    check_catalog=functools.partial(choose.check_catalog,
                                                    config.postprocess))
  with open_workdir(s.workdir, log):   # One run per workdir.
    # One embedder for the warm start and the evaluation: compiled once.
    embedder = Embedder(s.graphdef, s.mesh, config.train.eval_batch_size)
    item_vectors = lambda params, buffers: all_item_vectors(
        embedder, params, buffers, s.catalog, s.tokenizer)["item"]
    trained = trainer.train(s, log, item_vectors=item_vectors)
    if trained.preempted_at is not None:
      return dict(preempted_at_step=trained.preempted_at,
                  signal=trained.preempted_by)
    return _evaluate(s, trained, embedder, log)


def _evaluate(s: trainer.Setup, trained: trainer.Trained, embedder, log) -> dict:
  """Evaluates and post-processes the trained state; writes the outputs."""
  config, catalog, state = s.config, s.catalog, trained.state
  log("evaluating ...")
  t_eval = time.time()
  history_len = config_lib.eval_history_len(config.data)
  evaluated = evaluate(s.graphdef, state["params"], state["buffers"], catalog,
                       s.tokenizer, s.mesh, history_len=history_len,
                       batch_size=config.train.eval_batch_size, embedder=embedder)
  result, postprocessed = choose.run(
      config.postprocess, s.workdir, evaluated, embedder=embedder,
      params=state["params"], buffers=state["buffers"], catalog=catalog,
      history_len=history_len, step=int(state["step"]), log=log)
  result.update(baselines(catalog))
  result["retrieval"]["chance_r@1"] = 1.0 / catalog.num_items
  result["ratios"] = {
      f"test_recall@20_vs_{b}": result["test"]["recall@20"] / result[b]["recall@20"]
      for b in ("oracle", "popularity") if result.get(b, {}).get("recall@20")}
  summary = dict(
      data=dict(num_items=catalog.num_items, num_users=catalog.num_users,
                num_interactions=int(len(catalog.interactions)), dir=s.data_dir),
      **result,
      train=dict(trained.stats, eval_seconds=time.time() - t_eval),
      config=config.to_dict())
  if postprocessed is not None:
    summary["postprocess"] = postprocessed
  write_outputs(s.workdir, summary, trained.metrics_path, format_summary, log)
  return summary


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
  if "postprocess" in s:
    lines.append("  " + choose.describe(s["postprocess"]))
  t = s["train"]
  lines.append(f"  train: {t['steps']} steps, {t['examples_per_sec']:.0f} ex/s, "
               f"{t['seconds']:.0f}s, waiting for data {t.get('data_wait_share', 0):.0%}")
  return "\n".join(lines)
