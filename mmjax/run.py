"""The whole run, from config to summary.json: train, evaluate, post-process.

The layers below each do one part: `mmjax.train` trains (and checkpoints),
`mmjax.eval` measures, `mmjax.postprocess` calibrates on valid. This module
builds each from the config and hands one's output to the next; `mmjax
train` (cli.py) calls `train_and_evaluate`.
"""

import functools
import time

from etils import epath

from mmjax import config as config_lib
from mmjax.errors import MmjaxError
from mmjax.eval import feature_graph as feature_graph_eval
from mmjax.eval.embed import Embedder
from mmjax.eval.representation import representation_report
from mmjax.eval import evaluators
from mmjax.eval.zero_shot import text_encoder
from mmjax.eval.evaluate import (all_item_vectors, baselines, evaluate,
                                 scoring_vectors)
from mmjax.eval.pointwise import evaluate_labels
from mmjax.postprocess import choose
from mmjax.train import aot
from mmjax.train import feature_graph_search
from mmjax.train import loop
from mmjax.train import trainer
from mmjax.train.checkpoint import restore_best
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
    return feature_graph_search.train_and_evaluate(
        config, workdir, log, dry_run=dry_run, make_evaluator=functools.partial(
            feature_graph_eval.Evaluator, how=config.train.eval_ranking))
  if dry_run:   # Abstract shapes only: no data, no arrays (train/aot.py).
    out_dir = workdir or "."
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    return aot.dry_run(config, log, out_dir=out_dir)
  if config.mesh.topology:
    raise MmjaxError("config.mesh.topology is for --dry_run (compiling for a "
                     "TPU topology); training uses the local devices")
  s = trainer.setup(config, workdir, log,
                    check_catalog=functools.partial(choose.check_catalog,
                                                    config.postprocess))
  with open_workdir(s.workdir, log) as workdir:   # One run per workdir.
    s.workdir = workdir
    # One embedder for the warm start and the evaluations: compiled once.
    embedder = Embedder(s.graphdef, s.mesh, config.train.eval_batch_size)
    item_vectors = lambda params, buffers: all_item_vectors(
        embedder, params, buffers, s.catalog, s.tokenizer)["item"]
    evs = evaluators.from_config(config, s.catalog, s.mesh)
    recommendation = evs["recommendation"]
    task = trainer.EndToEndTask(
        s, functools.partial(_valid_metrics, s, embedder, recommendation),
        item_vectors=item_vectors)
    outcome = loop.run(task, config, workdir, log)
    if outcome.preempted_at is not None:
      return dict(preempted_at_step=outcome.preempted_at,
                  signal=outcome.preempted_by)
    return _evaluate(s, best_state(outcome, task, workdir), outcome, embedder, log,
                     evs.get("zero_shot"))


def _valid_metrics(s: trainer.Setup, embedder, recommendation, params,
                   buffers) -> dict:
  """Valid ranking metrics of a state, for the evaluations during training."""
  history_len = config_lib.eval_history_len(s.config.data)
  items = all_item_vectors(embedder, params, buffers, s.catalog, s.tokenizer)["item"]
  users, items = scoring_vectors(embedder, params, buffers, s.catalog, items,
                                 history_len)
  valid = recommendation.metrics(users[recommendation.users], items)["valid"]
  labelled = evaluate_labels(s.graphdef, params, buffers, s.catalog, (users, items),
                             splits=("valid",))
  return {**valid, **labelled.get("valid", {})}


def best_state(outcome: loop.Outcome, task, workdir: str) -> dict:
  """The best-valid state (<workdir>/best), or the latest where it is that one."""
  latest = task.servable(outcome.state)
  if outcome.best_step is None or outcome.best_step == int(outcome.state["step"]):
    return latest
  return restore_best(workdir, latest)


def _evaluate(s: trainer.Setup, state: dict, outcome: loop.Outcome, embedder,
              log, zero_shot=None) -> dict:
  """Evaluates and post-processes the best state; writes the outputs."""
  config, catalog = s.config, s.catalog
  log(f"evaluating the best valid state (step {int(state['step'])}) ...")
  t_eval = time.time()
  history_len = config_lib.eval_history_len(config.data)
  evaluated = evaluate(s.graphdef, state["params"], state["buffers"], catalog,
                       s.tokenizer, s.mesh, history_len=history_len,
                       batch_size=config.train.eval_batch_size, embedder=embedder)
  result, postprocessed = choose.run(
      config.postprocess, s.workdir, evaluated, embedder=embedder,
      params=state["params"], buffers=state["buffers"], catalog=catalog,
      history_len=history_len, step=int(state["step"]), log=log)
  labelled = evaluate_labels(s.graphdef, state["params"], state["buffers"],
                             catalog, evaluated["scoring_vectors"])
  if labelled:
    result["pointwise"] = labelled
  items = evaluated["item_vectors"]
  if "z_text" in items and "z_image" in items:
    result["representation"] = representation_report(items["z_text"], items["z_image"])
  if zero_shot is not None:   # config.eval.zero_shot: the items' classes.
    result.update(evaluators.nested(zero_shot.run(text_encoder(
        embedder, state["params"], state["buffers"], s.tokenizer), items["z_image"])))
  result.update(baselines(catalog))
  result["retrieval"]["chance_r@1"] = 1.0 / catalog.num_items
  result["ratios"] = {
      f"test_recall@20_vs_{b}": result["test"]["recall@20"] / result[b]["recall@20"]
      for b in ("oracle", "popularity") if result.get(b, {}).get("recall@20")}
  summary = dict(
      data=dict(num_items=catalog.num_items, num_users=catalog.num_users,
                num_interactions=int(len(catalog.interactions)), dir=s.data_dir),
      **result,
      train=dict(outcome.stats, eval_seconds=time.time() - t_eval,
                 last_metrics=outcome.last_row),
      best=dict(step=int(state["step"]), metric=outcome.early_stop.metric,
                valid=outcome.early_stop.valid[0]),
      config=config.to_dict())
  if postprocessed is not None:
    summary["postprocess"] = postprocessed
  write_outputs(s.workdir, summary, outcome.metrics_path, format_summary, log)
  return summary


def format_summary(s: dict, split: str = "test") -> str:
  """A short human-readable table of the run's results."""
  lines = ["", f"results ({split} split, train items masked):",
           f"  {'':12s} {'recall@20':>10s} {'ndcg@20':>10s} {'recall@50':>10s}"]
  for name in (split, "oracle", "popularity"):
    if name in s:
      m = s[name]
      lines.append(f"  {name:12s} {m['recall@20']:10.4f} {m['ndcg@20']:10.4f} "
                   f"{m['recall@50']:10.4f}")
  lines.append("  " + ", ".join(f"{k} = {v:.2f}" for k, v in s.get("ratios", {}).items()))
  r = s["retrieval"]
  lines.append(f"  text->image R@1 {r['t2i_r@1']:.3f}  R@10 {r['t2i_r@10']:.3f}  "
               f"image->text R@1 {r['i2t_r@1']:.3f}  (chance {r['chance_r@1']:.4f})")
  if "representation" in s:
    rep = s["representation"]
    lines.append(f"  effective rank: text {rep['text']['effective_rank']:.1f}, image "
                 f"{rep['image']['effective_rank']:.1f} (of dim {rep['dim']}); "
                 f"modality gap {rep['modality_gap']:.3f}")
  if "zero_shot" in s:
    z = s["zero_shot"]
    lines.append(f"  zero-shot ({z['num_classes']} classes): top-1 {z['top1']:.3f}  top-5 "
                 f"{z['top5']:.3f}  (chance {z['chance_top1']:.3f})")
  if "pointwise" in s:
    p = s["pointwise"]
    lines.append(f"  {p['kind']} labels: " + "; ".join(
        f"{name} " + ", ".join(f"{k} {v:.4f}" for k, v in p[name].items())
        for name in ("valid", "test") if name in p)
        + (f" (oracle test auc {p['oracle']['test']['auc']:.4f})"
           if "test" in p.get("oracle", {}) else ""))
  if "postprocess" in s:
    lines.append("  " + choose.describe(s["postprocess"]))
  if s.get("best"):
    b = s["best"]
    lines.append(f"  best valid {b['metric']} at step {b['step']}: "
                 f"{(b['valid'] or {}).get(b['metric'], float('nan')):.4f} (its state is tested)")
  if "train" in s:
    t = s["train"]
    lines.append(f"  train: {t['steps']} steps, {t['examples_per_sec']:.0f} ex/s, "
                 f"{t['seconds']:.0f}s, waiting for data "
                 f"{t.get('data_wait_share', 0):.0%}")
  return "\n".join(lines)
