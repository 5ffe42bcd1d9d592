"""tiny_config() as a config file, for tests that run launch.py in a subprocess.

`tiny_cli_config.py:raw` leaves the synthetic catalog's keys, which the raw
path does not read, at their defaults.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import tiny_config  # noqa: E402

from mmjax.config import default_config  # noqa: E402


def get_config(data: str = ""):
  c = tiny_config()
  if data == "raw":
    c.data.synthetic.update(default_config().data.synthetic)
  elif data:
    raise ValueError(f"unknown variant {data!r}; try 'raw'")
  return c
