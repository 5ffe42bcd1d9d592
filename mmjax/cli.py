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
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Only compile the train step for the configured mesh and "
    "print its per-device memory and FLOPs.")
# Multi-host (docs/scale.md): the same command on every host.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-host run found by JAX's cluster "
    "auto-detection (TPU pod slice, SLURM, Open MPI).")


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
  if not _WORKDIR.value and not _DRY_RUN.value:
    _fail("--workdir is required")
  from mmjax.train import distributed
  from mmjax.train.trainer import train_and_evaluate
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value, auto=_DISTRIBUTED.value)
    train_and_evaluate(_CONFIG.value, _WORKDIR.value, dry_run=_DRY_RUN.value)
  except MmjaxError as e:
    if _VERBOSE.value:
      raise
    _fail(str(e))


def _argparse_command(module: str):
  """A command whose module has `parser()` (argparse) and `run(args)`."""
  def command_main(argv: list[str]) -> None:
    import importlib
    mod = importlib.import_module(module)
    parser = mod.parser()
    parser.prog = argv[0]
    parser.add_argument("--verbose", action="store_true",
                        help="Show tracebacks for errors.")
    parser.error = lambda message: _fail(f"{argv[0]}: {message}")
    args = parser.parse_args(argv[1:])
    try:
      mod.run(args)
    except MmjaxError as e:
      if args.verbose:
        raise
      _fail(str(e))
  return command_main


_COMMANDS = {
    "train": train_main,
    "export": _argparse_command("mmjax.export"),
    "recommend": _argparse_command("mmjax.recommend"),
    "report": _argparse_command("mmjax.report.html"),
    "encode": _argparse_command("mmjax.encode"),
}


def main() -> None:
  """`mmjax <command> [flags]`."""
  if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
    _fail(f"usage: mmjax {{{','.join(_COMMANDS)}}} [flags]; e.g. "
          "mmjax train --config configs/demo.py --workdir runs/demo")
  _COMMANDS[sys.argv[1]]([f"mmjax {sys.argv[1]}"] + sys.argv[2:])
