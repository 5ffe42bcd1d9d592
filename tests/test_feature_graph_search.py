"""The feature graph's search (`config.grid.axes`): the cartesian product
of vmapped and static axes, each point's valid and test metrics, the chosen
point picked on valid and rerun with the seeds, and a rerun of the same
command that trains no program again."""

import json
import os

import numpy as np
import pytest

from mmjax.config import grid as grid_lib
from mmjax.run import train_and_evaluate
from mmjax.train import feature_graph_search as search

from mmrec_fixtures import make_dataset
from test_feature_graph_loop import config as loop_config

# One worker runs the whole module, so its module fixtures run once.
pytestmark = pytest.mark.xdist_group("test_feature_graph_search")

AXES = "loss.infonce=0,0.5; feature_graph.layers=1,2"


def config(root, names):
  c = loop_config(root, names)
  c.grid.axes = AXES
  c.train.update(lr=0.01, early_stop=dict(patience=2))
  c.feature_graph.epochs = 6
  return c


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  names = make_dataset(str(root))
  workdir = str(tmp_path_factory.mktemp("search"))
  lines = []
  summary = train_and_evaluate(config(root, names), workdir, log=lines.append)
  return root, names, workdir, summary, lines


def test_static_axes_make_programs_and_vmapped_axes_share_one(searched):
  root, names, _, _, _ = searched
  programs = search.program_configs(config(root, names))
  assert [fixed for fixed, _ in programs] == [{"feature_graph.layers": 1},
                                              {"feature_graph.layers": 2}]
  for fixed, sub in programs:
    assert sub.grid.axes == "loss.infonce=0.0,0.5" and sub.seeds == ()
    assert sub.feature_graph.layers == fixed["feature_graph.layers"]


def test_every_point_is_reported_and_the_best_on_valid_is_rerun(searched):
  _, _, workdir, s, lines = searched
  g = s["grid"]
  assert g["axes"] == AXES and g["programs"] == 2
  key = lambda p: json.dumps(p, sort_keys=True)
  assert (sorted(map(key, (r["point"] for r in g["results"])))
          == sorted(map(key, grid_lib.points(grid_lib.parse_axes(AXES)))))
  for r in g["results"]:
    assert set(r["valid"]) == set(r["test"]) and len(r["best_epochs"]) == 1
    assert 1 <= r["best_epochs"][0] <= r["epochs_run"] <= 6
  valid = [r["valid"]["recall@20"] for r in g["results"]]
  assert g["best"] == g["results"][int(np.argmax(valid))]["point"]
  # The rerun: the chosen values, no grid, every seed; its test is the result.
  assert s["config"]["grid"]["axes"] == ""
  for key, value in g["best"].items():
    section, leaf = key.split(".")
    assert s["config"][section][leaf] == value
  assert s["seed_list"] == [0, 1] and len(s["seeds"]) == 2
  assert any(line.startswith("chosen on valid recall@20") for line in lines)
  for i in range(2):
    assert os.path.exists(os.path.join(workdir, "grid", str(i), "summary.json"))
  saved = json.loads(open(os.path.join(workdir, "summary.json")).read())
  assert saved["grid"]["best"] == g["best"] and saved["test"] == s["test"]


def test_a_rerun_trains_no_search_program_again(searched):
  root, names, workdir, s, _ = searched
  stamps = [os.path.getmtime(os.path.join(workdir, "grid", str(i), "summary.json"))
            for i in range(2)]
  lines = []
  again = train_and_evaluate(config(root, names), workdir, log=lines.append)
  assert [os.path.getmtime(os.path.join(workdir, "grid", str(i), "summary.json"))
          for i in range(2)] == stamps
  assert again["grid"]["results"] == s["grid"]["results"]
  assert again["test"] == s["test"]


def test_the_search_serves_and_reports_its_points(searched, tmp_path):
  import mmjax
  from mmjax.report.html import build_report
  _, _, workdir, s, _ = searched
  model = mmjax.load(workdir)   # The rerun's best state.
  assert model.summary["served_run"]["seed"] in (0, 1)
  assert len(model.recommend(user=0, k=3)) == 3
  page = open(build_report(model, str(tmp_path / "report.html"))).read()
  assert "Search (" in page and page.count("chosen") == 1
