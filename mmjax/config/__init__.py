"""The config: one schema (schema.py) gives every key's default, type,
allowed values, bounds and meaning; docs/config.md is generated from it.

Config files start from `default_config()` and change values; they never add
keys. The tree is locked, so a typo in a config file or a `--config.a.b=v`
override is an error instead of a silently ignored key.
"""

from mmjax.config.checks import validate
from mmjax.config.loader import load, resolve, shipped_configs
from mmjax.config.schema import KEYS, RENAMED
from mmjax.config.tree import ConfigDict, default_config, eval_history_len, get

__all__ = ["ConfigDict", "KEYS", "RENAMED", "default_config", "eval_history_len",
           "get", "load", "resolve", "shipped_configs", "validate"]
