"""The bad-input catalogue, end to end through the CLI: one clear line naming
the file/key/line, exit 2, no traceback, and nothing left in the workdir."""

import os

import numpy as np
import pytest
from PIL import Image

import training_runs as runs
from mmjax import cli
from mmjax.errors import MmjaxError

CONFIG = os.path.join(runs.HERE, "tiny_cli_config.py")


@pytest.fixture()
def train(capsys):
  """train(workdir, *overrides) -> (exit code, stdout, stderr), in-process."""

  def run(workdir, *overrides, verbose=False):
    # Each data path starts from a config it reads every key of.
    config = {"data.name=raw": CONFIG + ":raw", "data.name=mmrec": "mmrec"}.get(
        next((o for o in overrides if o.startswith("data.name=")), ""), CONFIG)
    argv = ["mmjax train", "--config", config, f"--workdir={workdir}",
            *[f"--config.{o}" for o in overrides]] + (["--verbose"] if verbose else [])
    capsys.readouterr()
    try:
      cli.train_main(argv)
      code = 0
    except SystemExit as e:
      code = e.code
    out, err = capsys.readouterr()
    return code, out, err

  return run


def _refused(result, *needles):
  code, _, err = result
  assert code == 2, err[-2000:]
  lines = [l for l in err.splitlines() if l.strip() and not l.startswith("train")]
  assert len(lines) == 1 and lines[0].startswith("mmjax: error: "), err[-2000:]
  for n in needles:
    assert n in lines[0], lines[0]
  assert "Traceback" not in err


# --- Config and command line -------------------------------------------------

def test_unknown_config_key(train, tmp_path):
  _refused(train(tmp_path / "run", "train.stepz=3"), "unknown config key: config.train.stepz")
  assert not (tmp_path / "run").exists()


def test_wrong_type_for_a_key(train, tmp_path):
  _refused(train(tmp_path / "run", "train.steps=abc"), "--config.train.steps=abc")
  assert not (tmp_path / "run").exists()


def test_bad_value_for_a_key(train, tmp_path):
  _refused(train(tmp_path / "run", "train.nan_policy=ignore"), "config.train.nan_policy")


def test_missing_data_dir(train, tmp_path, data_dir):
  _refused(train(tmp_path / "run", f"data.dir={tmp_path}/nope"),
           f"data dir not found: {tmp_path}/nope")
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir(train, tmp_path, data_dir):
  (tmp_path / "file").write_text("x")   # No dir can be made under a file.
  _refused(train(tmp_path / "file" / "run", f"data.dir={data_dir}"),
           "workdir is not writable", str(tmp_path / "file" / "run"))


def test_more_item_id_clusters_than_items(train, tmp_path, data_dir):
  _refused(train(tmp_path / "run", f"data.dir={data_dir}",
                 "postprocess.item_id_clusters=(4,100000)"),
           "config.postprocess.item_id_clusters=(100000,)", "more clusters than the")
  assert not (tmp_path / "run").exists()


def test_verbose_shows_the_traceback(train, tmp_path):
  with pytest.raises(MmjaxError, match="data dir not found"):
    train(tmp_path / "run", f"data.dir={tmp_path}/nope", verbose=True)


def test_batch_not_divisible_by_the_device_count(tmp_path, data_dir):
  proc = runs.launch(tmp_path / "run", data_dir, "train.batch_size=12", devices=8)
  code, out, err = runs.finish(proc)
  _refused((code, out, err), "config.train.batch_size=12", "8 devices")
  assert not (tmp_path / "run").exists()


# --- MMRec .inter + feature files -------------------------------------------

INTER = "userID\titemID\tx_label\n" + "".join(
    f"{u}\t{(u + k) % 6}\t{0 if k < 3 else k - 2}\n" for u in range(4) for k in range(5))


def _mmrec(tmp_path, inter=INTER, features=None):
  d = tmp_path / "mmrec"
  d.mkdir()
  (d / "x.inter").write_text(inter)
  over = ["data.name=mmrec", f"data.dir={d}", "data.inter_file=x.inter"]
  if features is not None:
    np.save(d / "f.npy", features)
    over.append("data.feature_files=f.npy")
  return over, str(d)


@pytest.mark.parametrize("inter,needle", [
    ("", "x.inter: empty file"),
    ("user\titem\tlabel\n0\t1\t0\n", "x.inter:1: bad header"),
    (INTER + "-1\t2\t0\n", "x.inter:22: negative id"),
    (INTER + "1\tseven\t0\n", "x.inter:22: non-numeric field"),
], ids=["empty_file", "wrong_header", "id_out_of_range", "wrong_field_type"])
def test_bad_inter_file(train, tmp_path, inter, needle):
  over, d = _mmrec(tmp_path, inter)
  _refused(train(tmp_path / "run", *over), os.path.join(d, needle))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("features,needle", [
    (np.zeros((5, 3), np.float32), "f.npy: 5 rows, but the interactions have 6 items"),
    (np.where(np.eye(6, 3) > 0, np.nan, 0).astype(np.float32), "f.npy: NaN/Inf in 3 rows"),
    (np.zeros((6, 3), np.int64), "f.npy: dtype int64, want a float array"),
], ids=["rows_not_item_count", "nan_features", "wrong_dtype"])
def test_bad_feature_file(train, tmp_path, features, needle):
  over, d = _mmrec(tmp_path, features=features)
  _refused(train(tmp_path / "run", *over), os.path.join(d, needle))
  assert not (tmp_path / "run").exists()


# --- Raw folder: items table + image files ----------------------------------

def _raw(tmp_path, *, texts=None, images=None, extra_interaction=""):
  """60 items (evaluation needs 50), 16 users x 5 interactions;
  `images`: item -> file bytes, or None for a missing file."""
  root = tmp_path / "raw"
  (root / "img").mkdir(parents=True)
  rng = np.random.default_rng(0)
  rows = ["item_id,text,image"]
  for i in range(60):
    text = (texts or {}).get(i, f"item {i} is a {['red', 'blue'][i % 2]} shirt")
    name = f"img/{i}.jpg"
    data = (images or {}).get(i, "ok")
    if data == "ok":
      Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(root / name)
    elif data is not None:
      (root / name).write_bytes(data)
    rows.append(f'{i},"{text}",{name}')
  (root / "items.csv").write_text("\n".join(rows) + "\n")
  inter = ["user_id,item_id"] + [f"u{u},{(u * 7 + k) % 60}" for u in range(16) for k in range(5)]
  (root / "interactions.csv").write_text("\n".join(inter) + "\n" + extra_interaction)
  return ["data.name=raw", f"data.raw.root={root}", "data.raw.image_size=16",
          "data.raw.tokenizer_vocab=64", f"data.cache_dir={tmp_path / 'cache'}"]


def test_empty_text_field(train, tmp_path):
  over = _raw(tmp_path, texts={4: "  "})
  _refused(train(tmp_path / "run", *over), "items.csv:6: column 'text' is empty")
  assert not (tmp_path / "run").exists()


def test_interaction_with_an_unknown_item(train, tmp_path):
  over = _raw(tmp_path, extra_interaction="u1,99\n")
  _refused(train(tmp_path / "run", *over),
           "interactions.csv:82: item '99' is not in the items table")
  assert not (tmp_path / "run").exists()


def test_no_readable_image(train, tmp_path):
  over = _raw(tmp_path, images={i: b"\xff\xd8 not a jpeg" for i in range(60)})
  _refused(train(tmp_path / "run", *over), "items.csv: none of its 60 images could be read")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_skipped_inputs_then_an_incompatible_config(train, tmp_path):
  """A corrupt JPEG and a missing image are skipped and counted, an
  over-long text is truncated and counted; the run trains. Resuming its
  workdir with other shapes is refused, naming the key, touching nothing."""
  long_text = " ".join(["very long text"] * 20)
  over = _raw(tmp_path, texts={3: long_text},
              images={1: b"\xff\xd8\xff\xe0 truncated jpeg", 2: None})
  code, out, err = train(tmp_path / "run", *over, "train.steps=1", "train.log_every=1")
  assert code == 0, err[-3000:]
  assert "1 missing, 1 corrupt (skipped; e.g. img/1.jpg, img/2.jpg)" in out
  assert "text: 1 of 58 truncated to max_text_len=16 tokens" in out
  before = sorted(os.listdir(tmp_path / "run"))
  stamp = os.path.getmtime(tmp_path / "run" / "config.json")
  _refused(train(tmp_path / "run", *over, "train.steps=2", "model.dim=32"),
           "was written with an incompatible config", "config.model.dim: 16 -> 32")
  assert sorted(os.listdir(tmp_path / "run")) == before
  assert os.path.getmtime(tmp_path / "run" / "config.json") == stamp
  assert runs.checkpoint_steps(tmp_path / "run") == [1]
