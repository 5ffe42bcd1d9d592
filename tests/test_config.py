"""The config tree: locked, validated, overrides checked."""

import pytest

from mmjax.config import default_config, unknown_override_keys, validate
from mmjax.errors import MmjaxError


def test_default_and_demo_validate():
  validate(default_config())
  import runpy
  validate(runpy.run_path("configs/demo.py")["get_config"]())


def test_tree_is_locked():
  c = default_config()
  with pytest.raises(AttributeError):
    c.train.stepz = 3


@pytest.mark.parametrize("path,value,needle", [
    ("model.fusion.kind", "gated", "model.fusion.kind"),
    ("train.batch_size", 0, "train.batch_size"),
    ("loss.mmd", -1.0, "loss.mmd"),
    ("data.mlm_prob", 1.5, "data.mlm_prob"),
    ("model.image.patch_size", 5, "patch_size"),
    ("model.text.heads", 3, "model.text.hidden"),
    ("model.rec.item_id_scales", (0.5, -1.0), "model.rec.item_id_scales"),
    ("model.rec.item_id_scales", ("half",), "model.rec.item_id_scales"),
    ("model.rec.item_id_clusters", (1,), "model.rec.item_id_clusters"),
    ("data.eval_history_len", -1, "data.eval_history_len"),
    ("model.rec.item_id_clusters", (2.5,), "model.rec.item_id_clusters"),
    ("model.rec.item_id_clusters", (True,), "model.rec.item_id_clusters"),
    ("model.rec.refit_penalties", (1.0, 0.0), "model.rec.refit_penalties"),
    ("model.rec.refit_penalties", (True,), "model.rec.refit_penalties"),
    ("model.rec.refit_penalties", ("1",), "model.rec.refit_penalties"),
    ("model.rec.refit_steps", 0, "model.rec.refit_steps"),
    ("train.cpu_ynn_fusions", "reduce,dots", "train.cpu_ynn_fusions"),
])
def test_bad_values_name_the_key(path, value, needle):
  c = default_config()
  node = c
  *parents, leaf = path.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(MmjaxError, match=needle):
    validate(c)


def test_unknown_override_keys():
  argv = ["x", "--config.train.steps=3", "--config.train.stepz=4", "--config.nope.a=1",
          "--workdir=/tmp"]
  assert unknown_override_keys(default_config(), argv) == ["train.stepz", "nope.a"]


@pytest.mark.parametrize("key,value", [("item_id_scales", (0.5,)),
                                       ("item_id_clusters", (5,))])
def test_item_id_table_choices_need_the_item_id_embedding(key, value):
  c = default_config()
  c.model.rec[key] = value
  validate(c)
  c.model.rec.item_id_embedding = False
  with pytest.raises(MmjaxError, match=f"{key} needs .*item_id_embedding"):
    validate(c)
