"""Command-line entry points: `mmjax <command> ...`.

`python launch.py ...` and `mmjax train ...` are the same command. Errors a
user can cause end the command with one line, `mmjax: error: ...`, and exit
status 2 (`--verbose` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from mmjax import config as config_lib
from mmjax.config import loader
from mmjax.errors import MmjaxError

CONFIG_DOC = "docs/config.md"
_CONFIG_HELP = (
    "a config file, or a config shipped with mmjax by name ("
    + ", ".join(loader.shipped_configs()) + "); FILE:ARG calls get_config(ARG)")
_OVERRIDES_HELP = (
    f"--config.KEY=VALUE sets any config key (repeatable), e.g. "
    f"--config.train.steps=500; every key, its default and allowed values: "
    f"{CONFIG_DOC}. `mmjax config show CONFIG` prints a resolved config.")


def _fail(message: str) -> None:
  print(f"mmjax: error: {message}", file=sys.stderr)
  sys.exit(2)


def version() -> str:
  from importlib import metadata
  try:
    return metadata.version("mmjax")
  except metadata.PackageNotFoundError:
    return "unknown"


def _parser(prog: str, description: str, usage: str | None = None
            ) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog=prog, usage=usage, description=description,
      epilog=textwrap.fill(_OVERRIDES_HELP, 79), allow_abbrev=False,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.error = lambda message: _fail(f"{prog}: {message}")
  return p


def train_parser(prog: str = "mmjax train") -> argparse.ArgumentParser:
  p = _parser(prog, "Trains and evaluates a model from a config file. Running "
              "again with the same\nworkdir resumes from its latest "
              f"checkpoint.\n\n  e.g. {prog} --config tiny --workdir runs/tiny",
              usage=f"{prog} --config CONFIG --workdir DIR "
              "[--config.KEY=VALUE ...] [flags]")
  p.add_argument("--config", metavar="CONFIG", help=_CONFIG_HELP)
  p.add_argument("--workdir", metavar="DIR", help="where checkpoints, metrics "
                 "and the summary go")
  p.add_argument("--dry_run", action="store_true",
                 help="only compile the train step, from abstract shapes, for "
                 "the mesh (or config.mesh.topology); print and write "
                 "dry_run.json (--workdir, else .) with per-device memory "
                 "and FLOPs")
  p.add_argument("--verbose", action="store_true",
                 help="show tracebacks for errors")
  multi = p.add_argument_group("multi-host runs (docs/scale.md): the same "
                               "command on every host")
  multi.add_argument("--coordinator_address", default="", metavar="HOST:PORT",
                     help="of process 0")
  multi.add_argument("--num_processes", type=int, default=0, metavar="N",
                     help="processes in the run")
  multi.add_argument("--process_id", type=int, default=-1, metavar="I",
                     help="this process's index")
  multi.add_argument("--distributed", action="store_true",
                     help="join a run found by JAX's cluster auto-detection "
                     "(TPU pod slice, SLURM, Open MPI)")
  return p


def _parse(parser: argparse.ArgumentParser, argv: list[str]):
  """(parsed flags, config overrides) of argv (program name first)."""
  try:
    overrides, rest = loader.split_overrides(argv[1:])
  except MmjaxError as e:
    if "-h" in argv or "--help" in argv:
      overrides, rest = [], [a for a in argv[1:] if a in ("-h", "--help")]
    else:
      _fail(str(e))
  return parser.parse_args(rest), overrides


def train_main(argv: list[str]) -> None:
  """Trains and evaluates; argv as sys.argv (program name first)."""
  args, overrides = _parse(train_parser(argv[0]), argv)
  if not args.config:
    _fail("--config is required, e.g. --config configs/demo.py")
  if not args.workdir and not args.dry_run:
    _fail("--workdir is required")
  try:
    config = config_lib.load(args.config, overrides)
    config_lib.validate(config)
    from mmjax.train import distributed
    from mmjax.run import train_and_evaluate
    distributed.initialize(args.coordinator_address, args.num_processes,
                           args.process_id, auto=args.distributed)
    result = train_and_evaluate(config, args.workdir, dry_run=args.dry_run)
  except MmjaxError as e:
    if args.verbose:
      raise
    _fail(str(e))
  except KeyboardInterrupt:   # Ctrl-C outside the train loop (which saves).
    if args.verbose:
      raise
    print("\nmmjax: interrupted (Ctrl-C) outside the train loop, which saves: "
          "a rerun resumes from the newest checkpoint in the workdir, if any",
          file=sys.stderr)
    sys.exit(130)
  if result.get("signal") == "SIGINT":   # Saved; the shell's status for Ctrl-C.
    sys.exit(130)


def show(config) -> str:
  """The config as `key = value` lines, non-defaults marked."""
  lines = []
  for key in config_lib.KEYS:
    value = config_lib.get(config, key.path)
    note = "" if value == key.default else f"  # default: {key.default!r}"
    lines.append(f"{key.path} = {value!r}{note}")
  return "\n".join(lines)


def config_main(argv: list[str]) -> None:
  """`mmjax config show CONFIG [--config.KEY=VALUE ...]`."""
  p = _parser(argv[0], "Inspect configs.")
  sub = p.add_subparsers(dest="action", metavar="{show}", required=True)
  s = sub.add_parser("show", help="print the resolved, validated config",
                     usage=f"{argv[0]} show CONFIG [--config.KEY=VALUE ...]",
                     description="Prints the config of CONFIG with the "
                     "overrides applied, after validating it.",
                     epilog=textwrap.fill(_OVERRIDES_HELP, 79),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  s.error = lambda message: _fail(f"{argv[0]} show: {message}")
  s.add_argument("config", metavar="CONFIG", help=_CONFIG_HELP)
  s.add_argument("--verbose", action="store_true", help="show tracebacks for errors")
  args, overrides = _parse(p, argv)
  try:
    config = config_lib.load(args.config, overrides)
    config_lib.validate(config)
  except MmjaxError as e:
    if args.verbose:
      raise
    _fail(str(e))
  print(show(config))


def _argparse_command(module: str):
  """A command whose module has `parser()` (argparse) and `run(args)`."""
  def command_main(argv: list[str]) -> None:
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


def _renamed(new: str):
  def command_main(argv: list[str]) -> None:
    _fail(f"renamed: use {new}")
  return command_main


# Command -> (what it does, its main). Hidden ones (no description) answer
# old names.
_COMMANDS = {
    "train": ("train and evaluate a model from a config", train_main),
    "config": ("show a resolved config", config_main),
    "features": ("compute fixed item features for the feature-graph path",
                 _argparse_command("mmjax.feature_extraction")),
    "eval": ("evaluate a run again from its best-valid state",
             _argparse_command("mmjax.reevaluate")),
    "export": ("export a trained model", _argparse_command("mmjax.export")),
    "recommend": ("recommendations from a trained model",
                  _argparse_command("mmjax.recommend")),
    "report": ("an HTML report of a run", _argparse_command("mmjax.report.html")),
    "encode": ("", _renamed("mmjax features")),
}


def usage() -> str:
  width = max(len(c) for c in _COMMANDS)
  commands = "\n".join(f"  {name:<{width}}  {what}"
                       for name, (what, _) in _COMMANDS.items() if what)
  return ("usage: mmjax COMMAND [flags]   (mmjax COMMAND --help for its flags)\n\n"
          f"commands:\n{commands}\n\n"
          "  e.g. mmjax train --config tiny --workdir runs/tiny\n\n"
          f"Config keys, defaults and allowed values: {CONFIG_DOC}.\n"
          "  --version  print the version and exit")


def main() -> None:
  """`mmjax <command> [flags]`."""
  argv = sys.argv[1:]
  if argv and argv[0] in ("-h", "--help"):
    print(usage())
    return
  if argv and argv[0] == "--version":
    print(f"mmjax {version()}")
    return
  if not argv:
    print(usage(), file=sys.stderr)
    sys.exit(2)
  if argv[0] not in _COMMANDS:
    _fail(f"unknown command {argv[0]!r}; choose one of "
          + ", ".join(c for c, (what, _) in _COMMANDS.items() if what)
          + " (mmjax --help)")
  _COMMANDS[argv[0]][1]([f"mmjax {argv[0]}"] + argv[1:])
