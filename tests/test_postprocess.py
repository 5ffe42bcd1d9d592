"""postprocess/choose.py: what asks for post-processing, and its summary line."""

import ml_collections
import pytest

from mmjax import postprocess
from mmjax.errors import MmjaxError


def _cfg(**kw):
  values = dict(item_id_scales=(), item_id_clusters=(), user_refit_penalties=(),
                user_refit_steps=100)
  return ml_collections.ConfigDict(dict(values, **kw))


def test_only_listed_candidates_ask_for_post_processing():
  assert not postprocess.enabled(_cfg())
  assert not postprocess.enabled(_cfg(user_refit_steps=5))
  assert postprocess.enabled(_cfg(item_id_scales=(0.5,)))
  assert postprocess.enabled(_cfg(item_id_clusters=(3,)))
  assert postprocess.enabled(_cfg(user_refit_penalties=(1.0,)))


def test_more_clusters_than_items_fails_naming_the_key():
  class Catalog:
    num_items = 10
  postprocess.check_catalog(_cfg(item_id_clusters=(10,)), Catalog)
  with pytest.raises(MmjaxError, match=r"postprocess.item_id_clusters=\(11,\)"):
    postprocess.check_catalog(_cfg(item_id_clusters=(3, 11)), Catalog)


def test_describe_names_the_choices_and_the_model_as_trained():
  line = postprocess.describe(dict(
      file="postprocess.json", item_id_table="k5:0.75/0.25", user_refit="tower",
      as_trained_recall_at_20=dict(valid=0.2, test=0.21)))
  assert line == ("post-processed (postprocess.json): item-ID table k5:0.75/0.25, "
                  "user vectors tower; as trained: valid recall@20 0.2000, test 0.2100")
