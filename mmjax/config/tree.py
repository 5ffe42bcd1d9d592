"""The config tree built from the schema: default_config() and lookups."""

from __future__ import annotations

import ml_collections

from mmjax.config.schema import KEYS

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
  """The full tree with every key at its default, locked: assigning a key
  that does not exist is an error, not a new key."""
  c = ConfigDict()
  for key in KEYS:
    node = c
    *sections, leaf = key.path.split(".")
    for name in sections:
      if name not in node:
        node[name] = ConfigDict()
      node = node[name]
    node[leaf] = key.default
  c.lock()
  return c


def get(config: ConfigDict, path: str):
  """The value at dotted `path` ("train.lr")."""
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def eval_history_len(data_cfg: ConfigDict) -> int:
  """How many of a user's last train items evaluation and inference pool."""
  return data_cfg.eval_history_len or data_cfg.history_len
