"""Which data dir a config trains on."""

import os

from mmjax.data import raw, store
from mmjax.data.synthetic import SyntheticSpec
from mmjax.errors import MmjaxError


def resolve_data_dir(data_cfg, log=print) -> str:
  """The configured data dir, the ingested raw folder or the embedded catalog
  (both made once, cached)."""
  if data_cfg.name == "raw":
    return raw.ensure_ingested(data_cfg, log)
  if data_cfg.dir:
    if not os.path.isdir(data_cfg.dir):
      raise MmjaxError(f"data dir not found: {data_cfg.dir}")
    return data_cfg.dir
  spec = SyntheticSpec(**data_cfg.synthetic.to_dict())
  return store.ensure_synthetic(spec, data_cfg.cache_dir or None)
