"""Which data dir a config trains on."""

import dataclasses
import os

from mmjax.data import raw, store_write
from mmjax.data.synthetic import SyntheticSpec
from mmjax.errors import MmjaxError


# Impressions per user of the embedded catalog where loss.pointwise asks
# for labels and data.synthetic.impressions leaves it to us.
AUTO_IMPRESSIONS = 20


def resolve_data_dir(data_cfg, log=print, *, labelled: bool = False) -> str:
  """The configured data dir, the ingested raw folder or the embedded catalog
  (both made once, cached); `labelled` (loss.pointwise > 0): the embedded
  catalog with impressions."""
  if data_cfg.name == "raw":
    return raw.ensure_ingested(data_cfg, log)
  if data_cfg.dir:
    if not os.path.isdir(data_cfg.dir):
      raise MmjaxError(f"data dir not found: {data_cfg.dir}")
    return data_cfg.dir
  spec = SyntheticSpec(**data_cfg.synthetic.to_dict())
  if labelled and not spec.impressions:
    spec = dataclasses.replace(spec, impressions=AUTO_IMPRESSIONS)
  return store_write.ensure_synthetic(spec, data_cfg.cache_dir or None)
