"""The MMRec models people compare with (LightGCN, FREEDOM, BM3), trained in
JAX with MMRec's protocol, and the comparison table.

  python -m mmjax.bench.mmrec_zoo --data DIR --inter_file F \
      --feature_dir D --feature_files a.npy[,b.npy] --out zoo.json \
      [--models lightgcn,freedom,bm3] [--workdir W] \
      [--set freedom.dropout=0.8 --set bm3.n_layers=2]

Each model trains through the one loop (mmjax.train.loop): validation every
epoch, early stop after `--patience` (20) evaluations without a better valid
Recall@20, test at the best valid epoch. Hyper-parameters default to the
points of ../shared/benchmarks/peers.md; `--set MODEL.KEY=VALUE` overrides
one (any field of the model's dataclass, e.g. learning_rate, knn_k).
Writes `{"rows": [{"model", "recall@20", "ndcg@20", "seconds_per_epoch",
"seconds_per_eval", "best_epoch", ...}]}` and prints a markdown table.
Each model keeps its checkpoints in W/<model>; a rerun resumes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import jax

from mmjax import mesh as mesh_lib
from mmjax.configs.mmrec import get_config
from mmjax.data import mmrec
from mmjax.errors import MmjaxError
from mmjax.eval.feature_graph import Evaluator
from mmjax.models.mmrec_zoo import MODELS
from mmjax.train import loop
from mmjax.train.outputs import open_workdir
from mmjax.train.zoo_task import ZooTask

# peers.md's points (MMRec's grids); the rest are MMRec's defaults.
PEER_HPARAMS = {
    "lightgcn": dict(n_layers=2, reg_weight=1e-4),
    "freedom": dict(dropout=0.9, reg_weight=0.0),
    "bm3": dict(n_layers=1, reg_weight=0.1, dropout=0.3),
}
COLUMNS = ("model", "recall@20", "ndcg@20", "best_epoch", "epochs_run",
           "seconds_per_epoch", "seconds_per_eval", "cpu_seconds_per_epoch",
           "cpu_seconds_per_eval")


def parse_overrides(items, models) -> dict:
  """["freedom.dropout=0.8", ...] -> {"freedom": {"dropout": 0.8}}, typed
  as the field's default."""
  out = {m: {} for m in models}
  for item in items or ():
    name, sep, value = item.partition("=")
    model, _, key = name.partition(".")
    if not sep or model not in MODELS or not key:
      raise MmjaxError(f"--set {item!r}: write MODEL.KEY=VALUE with MODEL one of "
                       f"{', '.join(MODELS)} (e.g. freedom.dropout=0.8)")
    fields = {f.name: f for f in dataclasses.fields(MODELS[model])
              if f.name not in ("num_users", "num_items", "feature_dims",
                                "feature_names")}
    if key not in fields:
      raise MmjaxError(f"--set {item!r}: {model} has no {key!r}; "
                       f"choose one of {', '.join(sorted(fields))}")
    kind = type(fields[key].default)
    try:
      out.setdefault(model, {})[key] = kind(float(value)) if kind is int else kind(value)
    except ValueError:
      raise MmjaxError(f"--set {item!r}: {value!r} is not a {kind.__name__}") from None
  return out


def loop_config(args):
  """The loop's keys: MMRec's protocol (validate every epoch, early stop on
  valid Recall@20)."""
  c = get_config()
  c.data.dir, c.data.inter_file = args.data, args.inter_file
  c.train.eval_every = 1
  c.train.early_stop.metric = "recall@20"
  c.train.early_stop.patience = args.patience
  c.train.checkpoint_every = args.checkpoint_every
  c.train.keep_checkpoints = args.keep_checkpoints
  return c


def build_model(name: str, data, hparams: dict):
  cls = MODELS[name]
  feats = data.features if name != "lightgcn" else {}
  if name != "lightgcn" and not feats:
    raise MmjaxError(f"--models {name}: needs at least one --feature_files matrix")
  return cls(num_users=data.num_users, num_items=data.num_items,
             feature_dims=tuple(f.shape[1] for f in feats.values()),
             feature_names=tuple(feats), **hparams)


def train_one(name: str, data, args, hparams: dict, evaluator, log) -> dict:
  """Trains one model in <workdir>/<name>; its row of the table."""
  model = build_model(name, data, hparams)
  if name == "lightgcn":   # IDs only: the features stay out of its data.
    data = dataclasses.replace(data, features={})
  task = ZooTask(model, data, evaluator, epochs=args.epochs, seed=args.seed,
                 hparams=hparams, data_dir=args.data)
  config = loop_config(args)
  with open_workdir(os.path.join(args.workdir, name), log) as workdir:
    outcome = loop.run(task, config, workdir, log)
  if outcome.preempted_at is not None:
    raise MmjaxError(f"{name}: stopped at epoch {outcome.preempted_at}; rerun the "
                     "same command to resume")
  if not outcome.early_stop.evaluated:
    raise MmjaxError("no evaluation ran: set --epochs >= 1")
  _, test = task.test(outcome.state)
  st = outcome.stats
  return {"model": name, "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
          "best_epoch": outcome.early_stop.best_step[0], "epochs_run": st["epochs"],
          "seconds_per_epoch": st["seconds_per_epoch"],
          "seconds_per_eval": st["seconds_per_eval"],
          "cpu_seconds_per_epoch": st["cpu_seconds_per_epoch"],
          "cpu_seconds_per_eval": st["cpu_seconds_per_eval"],
          "hparams": _hp(model),
          "test": test}


def _hp(model) -> dict:
  skip = ("num_users", "num_items", "feature_dims", "feature_names")
  return {k: v for k, v in dataclasses.asdict(model).items() if k not in skip}


def markdown(rows) -> str:
  head = ["model", "test R@20", "test N@20", "best epoch", "s/epoch", "s/eval",
          "CPU s/epoch", "CPU s/eval"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    lines.append(f"| {r['model']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
                 f"{r['best_epoch']} | {r['seconds_per_epoch']:.3f} | "
                 f"{r['seconds_per_eval']:.3f} | {r['cpu_seconds_per_epoch']:.3f} | "
                 f"{r['cpu_seconds_per_eval']:.3f} |")
  return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True, help="MMRec data dir")
  p.add_argument("--inter_file", required=True, help="NAME.inter in --data")
  p.add_argument("--feature_dir", default="", help="where the .npy files are "
                 "(default: --data)")
  p.add_argument("--feature_files", default="", help="a.npy[,b.npy]")
  p.add_argument("--out", required=True, help="the JSON table")
  p.add_argument("--models", default="lightgcn,freedom,bm3")
  p.add_argument("--workdir", default="", help="checkpoints (default: a temp dir)")
  p.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE")
  p.add_argument("--epochs", type=int, default=1000, help="MMRec's epochs")
  p.add_argument("--patience", type=int, default=20, help="MMRec's stopping_step")
  p.add_argument("--seed", type=int, default=999, help="MMRec's seed")
  p.add_argument("--checkpoint_every", type=int, default=20, help="epochs")
  p.add_argument("--keep_checkpoints", type=int, default=2)
  return p


def run(args, log=print) -> dict:
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  bad = [m for m in models if m not in MODELS]
  if bad or not models:
    raise MmjaxError(f"--models {args.models!r}: choose from {', '.join(MODELS)}")
  if min(args.epochs, args.checkpoint_every, args.keep_checkpoints) < 1 or args.patience < 0:
    raise MmjaxError("--epochs, --checkpoint_every and --keep_checkpoints must be "
                     ">= 1, --patience >= 0")
  overrides = parse_overrides(args.set, models)
  if not os.path.isdir(args.data):
    raise MmjaxError(f"--data: data dir not found: {args.data}")
  data = mmrec.load(args.data, args.inter_file,
                    mmrec.feature_file_list(args.feature_files), args.feature_dir)
  log(f"data: {data.describe()}")
  args.workdir = args.workdir or tempfile.mkdtemp(prefix="mmrec_zoo_")
  mesh = mesh_lib.make_mesh(get_config().mesh)
  evaluator = Evaluator(data, mesh)
  rows = []
  for name in models:
    hparams = {**PEER_HPARAMS[name], **overrides.get(name, {})}
    rows.append(train_one(name, data, args, hparams, evaluator, log))
  table = {"rows": rows, "data": dict(dir=args.data, inter_file=args.inter_file,
                                      feature_files=args.feature_files),
           "devices": [str(d) for d in jax.devices()]}
  with open(args.out, "w") as f:
    json.dump(table, f, indent=2)
  log(markdown(rows))
  return table


def main(argv=None) -> int:
  try:
    run(parser().parse_args(argv))
  except MmjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
