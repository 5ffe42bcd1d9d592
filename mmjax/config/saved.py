"""A run's saved config (summary.json's "config", or config.json in the
workdir) read back on top of today's defaults."""

from __future__ import annotations

import ml_collections

from mmjax.config.tree import default_config
from mmjax.errors import MmjaxError

# What rebuilding the model and its train state reads; the other sections
# (losses, the feature graph, post-processing, ...) only steered training or
# evaluation.
_REBUILT_FROM = ("seed", "data", "model", "train")


def _known(node, values: dict, prefix: str, unknown: list[str]) -> dict:
  """`values` without the keys `node` lacks (collected in `unknown`)."""
  out = {}
  for key, value in values.items():
    if key not in node:
      unknown.append(prefix + key)
    elif isinstance(value, dict) and isinstance(node[key], ml_collections.ConfigDict):
      out[key] = _known(node[key], value, f"{prefix}{key}.", unknown)
    else:
      out[key] = value
  return out


def from_saved(values: dict, path: str) -> ml_collections.ConfigDict:
  """The saved config `values` (read from `path`) on today's defaults.

  A key this version lacks is an error where it shapes the model (seed, data,
  model, train) and is dropped elsewhere: a run stays loadable after, say, a
  loss option is renamed.
  """
  config = default_config()
  unknown = []
  known = _known(config, values, "", unknown)
  bad = [k for k in unknown if k.split(".")[0] in _REBUILT_FROM]
  if bad:
    raise MmjaxError(f"{path}: config keys unknown to this mmjax version: "
                     + ", ".join(f"config.{k}" for k in bad))
  config.update(known)
  return config
