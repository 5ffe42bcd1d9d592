"""`mmjax export` and `mmjax recommend` on a finished tiny run.

The commands run in-process (one set of compiles); one subprocess checks
that a bad workdir is one error line and a non-zero exit.
"""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import mmjax
from mmjax import api, cli


@pytest.fixture(scope="module")
def model(trained_workdir):
  return mmjax.load(trained_workdir)


def _mmjax(monkeypatch, capsys, *argv):
  """Runs `mmjax *argv` in-process: (exit code, stdout, stderr)."""
  monkeypatch.setattr(sys, "argv", ["mmjax", *map(str, argv)])
  code = 0
  try:
    cli.main()
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def _one_error(code, err, needle):
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2 and len(lines) == 1, err
  assert lines[0].startswith("mmjax: error:") and needle in lines[0], err


def test_export_writes_npy_parquet_and_id_map(model, trained_workdir, tmp_path,
                                              monkeypatch, capsys):
  out = tmp_path / "export"
  code, stdout, _ = _mmjax(monkeypatch, capsys, "export", "--workdir", trained_workdir,
                           "--out", out)
  assert code == 0 and "48 users, 96 items, dim 16" in stdout
  users = np.load(out / "users.npy")
  np.testing.assert_allclose(users, model.user_embeddings, atol=1e-6)
  for name, key in (("items", "item"), ("items_text", "z_text"),
                    ("items_image", "z_image")):
    np.testing.assert_allclose(np.load(out / f"{name}.npy"),
                               model.item_embeddings[key], atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-4)
  ids = json.load(open(out / "id_map.json"))
  assert ids["item_id"] == list(range(96)) and ids["user_id"] == list(range(48))
  assert ids["item_text"] == model.catalog.item_text
  items = pq.read_table(out / "items.parquet").to_pydict()
  assert set(items) == {"item_id", "text", "embedding", "text_embedding",
                        "image_embedding"}
  np.testing.assert_allclose(np.asarray(items["image_embedding"]),
                             model.item_embeddings["z_image"], atol=1e-6)
  assert items["text"][7] == model.catalog.item_text[7]
  parquet_users = pq.read_table(out / "users.parquet").to_pydict()
  np.testing.assert_allclose(np.asarray(parquet_users["embedding"]), users, atol=1e-6)
  manifest = json.load(open(out / "export.json"))
  assert manifest["step"] == 4 and manifest["files"]["items.npy"] == [96, 16]
  # The scoring vectors reproduce recommend's scores.
  su, si = np.load(out / "scoring_users.npy"), np.load(out / "scoring_items.npy")
  recs = model.recommend(5, 3)
  np.testing.assert_allclose(si[[r.item for r in recs]] @ su[5],
                             [r.score for r in recs], rtol=1e-5)
  assert manifest["files"]["scoring_items.npy"] == list(si.shape)


def test_recommend_prints_the_apis_top_k_and_draws_a_grid(
    model, trained_workdir, tmp_path, monkeypatch, capsys):
  png = tmp_path / "grid.png"
  code, stdout, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", trained_workdir,
                           "--user", 5, "--k", 4, "--png", png)
  assert code == 0
  rows = [l.split() for l in stdout.splitlines() if l.strip()[:1].isdigit()]
  recs = model.recommend(5, 4)
  assert [int(r[2]) for r in rows] == [r.item for r in recs]
  assert [float(r[4]) for r in rows] == pytest.approx([r.score for r in recs], abs=1e-4)
  assert recs[0].text in stdout and f"{len(model.seen(5))} items seen" in stdout
  width, height = Image.open(png).size
  assert width > 300 and height > 150


def test_recommend_similar_and_text(model, trained_workdir, monkeypatch, capsys):
  code, stdout, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", trained_workdir,
                           "--similar", 11, "--k", 3)
  assert code == 0
  assert [f"item {r.item:6d}" in stdout for r in model.similar(11, 3)] == [True] * 3
  code, stdout, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", trained_workdir,
                           "--text", "red striped shirt", "--k", 3)
  assert code == 0 and "'red striped shirt'" in stdout
  assert [f"item {r.item:6d}" in stdout
          for r in model.search("red striped shirt", 3)] == [True] * 3


@pytest.mark.parametrize("args, needle", [
    (("--user", 48), "unknown user '48': user ids are 0..47"),
    (("--similar", 500), "unknown item '500': item ids are 0..95"),
    (("--user", 1, "--k", 1000), "k=1000 must be in"),
    (("--user", 1, "--similar", 2), "not allowed with argument"),
    ((), "one of the arguments --user --similar --text --all-users is required"),
    (("--user", "abc"), "unknown user 'abc': user ids are 0..47"),
    (("--all-users",), "--all-users writes a parquet file: give --out"),
    (("--user", 1, "--out", "x.parquet"), "--out and --batch-users go with --all-users"),
])
def test_recommend_bad_arguments_are_one_error_line(trained_workdir, monkeypatch,
                                                    capsys, args, needle):
  _one_error(*_mmjax(monkeypatch, capsys, "recommend", "--workdir", trained_workdir,
                     *args)[::2], needle)


def test_png_needs_images(trained_workdir, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(api.TrainedModel, "has_images", property(lambda self: False))
  code, _, err = _mmjax(monkeypatch, capsys, "recommend", "--workdir", trained_workdir,
                        "--user", 1, "--png", tmp_path / "x.png")
  _one_error(code, err, "--png: the catalog of")
  assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", ["export", "recommend", "report"])
def test_workdir_without_checkpoint_in_process(tmp_path, monkeypatch, capsys, command):
  extra = ("--user", 0) if command == "recommend" else ()
  _one_error(*_mmjax(monkeypatch, capsys, command, "--workdir", tmp_path, *extra)[::2],
             "no checkpoint in")


def test_cli_subprocess_error_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", "from mmjax.cli import main; main()", "recommend",
       "--workdir", str(tmp_path), "--user", "0"],
      capture_output=True, text=True, timeout=300)
  _one_error(proc.returncode, proc.stderr, f"no checkpoint in {tmp_path}/checkpoints")
  assert "Traceback" not in proc.stderr
