"""Command-line entry points.

`python launch.py ...` and `mmjax train ...` are the same command.
"""

import os
import runpy
import sys

from absl import flags
from ml_collections import config_flags

from mmjax.errors import MmjaxError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks for errors.")


def _fail(message: str) -> None:
  print(f"mmjax: error: {message}", file=sys.stderr)
  sys.exit(2)


def _check_overrides(argv: list[str]) -> None:
  """Unknown `--config.x` keys become one clear line (absl would print a traceback)."""
  from mmjax.config import unknown_override_keys
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  if path is None:
    _fail("--config is required, e.g. --config configs/demo.py")
  path = path.split(":", 1)[0]
  if not os.path.isfile(path):
    _fail(f"config file not found: {path}")
  bad = unknown_override_keys(runpy.run_path(path)["get_config"](), argv)
  if bad:
    _fail("unknown config key" + ("s" if len(bad) > 1 else "") + ": "
          + ", ".join(f"config.{k}" for k in bad))


def train_main(argv: list[str]) -> None:
  """Trains and evaluates; argv as sys.argv (program name first)."""
  _check_overrides(argv)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  if not _WORKDIR.value:
    _fail("--workdir is required")
  from mmjax.train.trainer import train_and_evaluate
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except MmjaxError as e:
    if _VERBOSE.value:
      raise
    _fail(str(e))


_COMMANDS = {"train": train_main}


def main() -> None:
  """`mmjax <command> [flags]`."""
  if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
    _fail(f"usage: mmjax {{{','.join(_COMMANDS)}}} [flags]; e.g. "
          "mmjax train --config configs/demo.py --workdir runs/demo")
  _COMMANDS[sys.argv[1]]([f"mmjax {sys.argv[1]}"] + sys.argv[2:])
