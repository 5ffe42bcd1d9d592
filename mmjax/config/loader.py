"""Config files and `--config.a.b=v` overrides, with one-line errors.

A config spec is a file path or the name of a config shipped in
`mmjax/configs/` ("demo", "demo.py", "configs/demo.py"), optionally followed
by `:arg`, which is passed to `get_config(arg)` (big_vision style).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import runpy
import traceback

from mmjax.config.checks import type_name
from mmjax.config.schema import BY_PATH, RENAMED, Key
from mmjax.config.tree import ConfigDict
from mmjax.errors import MmjaxError

OVERRIDE_PREFIX = "--config."


def shipped_dir() -> str:
  import mmjax.configs
  return os.path.dirname(os.path.abspath(mmjax.configs.__file__))


def shipped_configs() -> list[str]:
  """Names of the configs that ship with mmjax ("demo", "tiny", ...)."""
  return sorted(f[:-3] for f in os.listdir(shipped_dir())
                if f.endswith(".py") and not f.startswith("_"))


def resolve(spec: str) -> tuple[str, str | None]:
  """(config file, argument or None) for `spec`: an existing file, else a
  shipped config by name."""
  path, _, arg = spec.partition(":")
  arg = arg or None
  if os.path.isfile(path):
    return path, arg
  folder, name = os.path.split(path)
  name = name[:-3] if name.endswith(".py") else name
  if folder in ("", "configs") and name in shipped_configs():
    return os.path.join(shipped_dir(), name + ".py"), arg
  raise MmjaxError(f"config file not found: {path} (shipped configs: "
                   + ", ".join(shipped_configs()) + ")")


def load(spec: str, overrides: list[tuple[str, str]] = ()) -> ConfigDict:
  """The config of `spec` with `overrides` ((path, text) pairs) applied;
  not validated."""
  path, arg = resolve(spec)
  config = run_config_file(path, arg)
  for key_path, text in overrides:
    apply_override(config, key_path, text)
  return config


def run_config_file(path: str, arg: str | None) -> ConfigDict:
  get_config = runpy.run_path(path).get("get_config")
  if get_config is None:
    raise MmjaxError(f"{path}: defines no get_config()")
  if arg is not None and not inspect.signature(get_config).parameters:
    raise MmjaxError(f"{path}: get_config() takes no argument (got {arg!r})")
  try:
    return get_config() if arg is None else get_config(arg)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = _config_file_error(e)
    if message is None:
      raise
    raise MmjaxError(f"{_where(e, path)}: {message}") from None


def _where(error: Exception, path: str) -> str:
  """file:line of the config file's frame where `error` was raised."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.sep + "ml_collections" + os.sep not in f.filename
            and os.path.dirname(__file__) != os.path.dirname(f.filename)]
  return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else path


def _config_file_error(e: Exception) -> str | None:
  """The one-line message for an error raised in a config file, or None
  when it is not about config keys (a bug in the file: shown as is)."""
  text = str(e.args[0]) if e.args else str(e)
  if isinstance(e, TypeError):
    m = re.match(r"Could not override field '(\w+)' \(reference\)\. (.*) is of "
                 r"original type .* cast(?:ed)? to type <class '(\w+)'>", text)
    if m is None:
      return None
    kind = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}
    want = type_name(kind.get(m.group(3), tuple))
    return f"{m.group(1)}={m.group(2)}: expected {want}"
  if isinstance(e, ValueError):
    return text
  m = re.search(r"""Key "(\w+)" does not exist|^'?(\w+)'?$""", text.strip("'\""))
  if m is None:
    return None
  leaf = m.group(1) or m.group(2)
  for old, new in RENAMED.items():
    if old.split(".")[-1] == leaf:
      return old_key_message(old)
  close = difflib.get_close_matches(leaf, {k.split(".")[-1] for k in BY_PATH}, 3)
  hint = [p for p in BY_PATH if p.split(".")[-1] in close[:1]]
  return f"unknown config key {leaf!r}" + (
      f" (did you mean {' or '.join('config.' + p for p in hint)}?)" if hint else "")


def old_key_message(path: str) -> str | None:
  """The error for a renamed or removed key, or None if `path` is neither."""
  for old, new in RENAMED.items():
    if path == old or path.startswith(old + "."):
      if new is None:
        return f"config.{path} was removed"
      return f"config.{path} was renamed config.{new}{path[len(old):]}"
  return None


def unknown_key_message(path: str) -> str:
  close = difflib.get_close_matches(path, list(BY_PATH), 1)
  return f"unknown config key: config.{path}" + (
      f" (did you mean config.{close[0]}?)" if close else "")


def key_of(path: str) -> Key:
  """The schema Key at `path`; MmjaxError for an old, unknown or section key."""
  if path in BY_PATH:
    return BY_PATH[path]
  message = old_key_message(path)
  if message is None and any(p.startswith(path + ".") for p in BY_PATH):
    message = f"config.{path} is a section; set its keys (config.{path}.KEY=VALUE)"
  raise MmjaxError(message or unknown_key_message(path))


def split_overrides(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """(`--config.a.b=v` / `--config.a.b v` pairs, the other arguments)."""
  overrides, rest, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(OVERRIDE_PREFIX):
      path, eq, text = arg[len(OVERRIDE_PREFIX):].partition("=")
      if not eq:
        if i + 1 == len(argv):
          raise MmjaxError(f"{arg}: give a value, e.g. {arg}=VALUE")
        i, text = i + 1, argv[i + 1]
      key_of(path)   # Old, unknown and section keys fail before any work.
      overrides.append((path, text))
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def apply_override(config: ConfigDict, path: str, text: str) -> None:
  key = key_of(path)
  value = parse_value(key, text)
  *sections, leaf = path.split(".")
  node = config
  for name in sections:
    node = node[name]
  node[leaf] = value


_BOOLS = {"true": True, "1": True, "yes": True,
          "false": False, "0": False, "no": False}


def parse_value(key: Key, text: str):
  """The value of `--config.<key.path>=<text>`, of the key's type."""
  kind = key.type
  try:
    if kind is bool:
      return _BOOLS[text.lower()]
    if kind in (int, float, str):
      return kind(text)
    return _parse_tuple(text)
  except (KeyError, ValueError, SyntaxError):
    raise MmjaxError(f"--config.{key.path}={text}: expected "
                     f"{type_name(kind)}") from None


def _parse_tuple(text: str) -> tuple:
  """As ml_collections' tuple flags: a Python literal ("(1, 2)", "1,2"),
  else unquoted strings, comma-separated ("seed,data") or one ("text/.*")."""
  if not text.strip():
    return ()
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if "," in text:
      return tuple(part.strip() for part in text.split(","))
    if " " in text:
      raise SyntaxError(text) from None
    value = text
  if isinstance(value, (tuple, list)):
    return tuple(value)
  return (value,)
