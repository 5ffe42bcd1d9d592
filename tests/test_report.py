"""`mmjax report`: the HTML page, its diagnostics, and how it degrades."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mmjax
from mmjax import cli
from mmjax.errors import MmjaxError
from mmjax.report import diagnostics, html


@pytest.fixture(scope="module")
def model(trained_workdir):
  return mmjax.load(trained_workdir)


@pytest.fixture(scope="module")
def page(model, trained_workdir, tmp_path_factory):
  """`mmjax report` with a peers file and two queries, run in-process."""
  tmp = tmp_path_factory.mktemp("report")
  peers = tmp / "peers.json"
  peers.write_text(json.dumps({"MMRec VBPR": {"recall@20": 0.0123}}))
  out = str(tmp / "report.html")
  argv = ["mmjax", "report", "--workdir", trained_workdir, "--out", out,
          "--peers", str(peers), "--query", "red striped shirt",
          "--query", model.catalog.item_text[9]]
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sys, "argv", argv)
    cli.main()
  return out, open(out, encoding="utf-8").read()


def test_page_has_every_section_and_is_self_contained(page, model):
  _, text = page
  for heading in ("Training curves", "Metrics", "Retrieval examples",
                  "Alignment diagnostics"):
    assert f"<h2>{heading}" in text
  sources = re.findall(r'<img[^>]* src="([^"]*)"', text)
  # curves + 2 queries x 5 hits + the PCA figure, all inline.
  assert len(sources) == 1 + 2 * 5 + 1
  assert all(s.startswith("data:image/png;base64,") for s in sources)
  assert "<script" not in text and "http://" not in text and "https://" not in text
  for name in ("test", "oracle", "popularity", "MMRec VBPR", "0.0123", "red striped shirt"):
    assert f">{name}<" in text or name in text
  assert "initialization" in text and f"trained (step {model.step})" in text


def test_metric_rows_omit_what_a_run_lacks(model):
  summary = {k: v for k, v in model.summary.items() if k != "oracle"}
  summary["peers"] = {"BM3": {"recall@20": 0.2}}
  names = [n for n, _ in html.metric_rows(summary, {"LATTICE": {"recall@20": 0.1}})]
  assert names == ["test", "valid", "popularity", "BM3", "LATTICE"]


def test_diagnostics_of_known_sets():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 8)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  same = diagnostics.alignment_diagnostics(x, x)
  assert same["modality_gap"] == pytest.approx(0.0, abs=1e-6)
  assert same["mmd"] == pytest.approx(0.0, abs=1e-5)
  assert same["paired_cosine"] == pytest.approx(1.0, abs=1e-5)
  assert same["t2i_r@1"] == 1.0
  shift = np.zeros(8, np.float32)
  shift[0] = 0.5
  moved = diagnostics.alignment_diagnostics(x, x + shift)
  assert moved["modality_gap"] == pytest.approx(0.5, abs=1e-5)
  assert moved["mmd"] > 0.01
  # A 2-D PCA of points spread along one axis keeps that axis first.
  line = np.outer(np.linspace(-1, 1, 20), np.eye(8)[3]).astype(np.float32)
  a, b = diagnostics.pca_2d(line, line + 0.01)
  assert a.shape == b.shape == (20, 2) and np.ptp(a[:, 0]) > 100 * np.ptp(a[:, 1])


def test_training_moves_the_diagnostics(model):
  before = model.at_init().item_embeddings
  after = model.item_embeddings
  d0 = diagnostics.alignment_diagnostics(before["z_text"], before["z_image"])
  d1 = diagnostics.alignment_diagnostics(after["z_text"], after["z_image"])
  assert d0 != d1


def test_bad_peers_file(tmp_path):
  bad = tmp_path / "peers.json"
  bad.write_text(json.dumps({"BM3": 0.2}))
  with pytest.raises(MmjaxError, match="peers.json: expected"):
    html.load_peers(str(bad))
  with pytest.raises(MmjaxError, match="cannot read peers file"):
    html.load_peers(str(tmp_path / "missing.json"))


_BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(_BROWSER is None, reason="no headless Chromium on this machine "
                    "(apt-get install chromium-headless-shell)")
def test_page_renders_in_headless_chromium_without_console_errors(page, tmp_path):
  path, _ = page
  shot = tmp_path / "shot.png"
  proc = subprocess.run(
      [_BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
       "--v=0", "--window-size=1200,2400", f"--screenshot={shot}", f"file://{path}"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.getsize(shot) > 10_000
  console = [l for l in proc.stderr.splitlines() if ":CONSOLE" in l]
  assert not console, console
