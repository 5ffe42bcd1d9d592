"""tiny_config() as a config file, for tests that run launch.py in a subprocess."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import tiny_config  # noqa: E402


def get_config():
  return tiny_config()
