"""docs/config.md, written from the schema.

  python -m mmjax.config.doc > docs/config.md
"""

from __future__ import annotations

from mmjax.config.checks import type_name
from mmjax.config.schema import (ALL, END_TO_END, FEATURE_GRAPH, KEYS, RENAMED,
                                 SECTIONS, Key)

COMMAND = "python -m mmjax.config.doc > docs/config.md"

_PATHS = {ALL: "all", END_TO_END: "end-to-end", FEATURE_GRAPH: "feature graph"}


def _paths(key: Key) -> str:
  return _PATHS.get(tuple(key.paths), ", ".join(key.paths))


def _allowed(key: Key) -> str:
  parts = []
  if key.choices:
    parts.append(("each of " if key.type is tuple else "")
                 + " / ".join(f"`{c!r}`" for c in key.choices))
  kind = (f"tuple of {type_name(key.of).split(' ', 1)[1]}s" if key.of is not None
          else type_name(key.type))
  if not key.choices:
    parts.append(kind.removeprefix("a ").removeprefix("an "))
  if key.bounds:
    parts.append(("each " if key.type is tuple else "") + key.bounds)
  if key.nonempty:
    parts.append("not empty")
  if key.required_on:
    parts.append("required for " + ", ".join(key.required_on))
  return "; ".join(parts)


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def markdown() -> str:
  lines = [
      "# Config reference",
      "",
      f"<!-- Generated from mmjax/config/schema.py by `{COMMAND}`. -->",
      "",
      "Config files (`configs/*.py`) start from `default_config()` and change "
      "values; any key can also be set on the command line as "
      "`--config.KEY=VALUE` (tuples as `--config.seeds=0,1,2`). "
      "`mmjax config show CONFIG` prints a resolved config.",
      "",
      "*Allowed*: every number must also be finite (no NaN or inf) and every "
      "integer fit 32 bits; `cpus` is the machine's CPU count. A tuple's "
      "bounds apply to each element.",
      "",
      "*Read by*: the data paths (`data.name`) that use a key: *end-to-end* is "
      "`synthetic` and `raw` (the multimodal model), *feature graph* is "
      "`mmrec`. A key set to a non-default value on a path that does not "
      "read it is an error.",
      "",
  ]
  section = None
  for key in KEYS:
    top = key.path.split(".")[0] if "." in key.path else ""
    if top != section:
      section = top
      lines += ["", f"## {section or 'top level'}", ""]
      if section in SECTIONS:
        lines += [SECTIONS[section], ""]
      lines += ["| Key | Default | Allowed | Read by | Meaning |",
                "|---|---|---|---|---|"]
    lines.append(f"| `{key.path}` | `{key.default!r}` | {_cell(_allowed(key))} "
                 f"| {_paths(key)} | {_cell(key.doc)} |")
  lines += ["", "## Renamed and removed keys", "",
            "Setting one of these is an error that names its replacement.", "",
            "| Old key | Now |", "|---|---|"]
  for old, new in RENAMED.items():
    lines.append(f"| `{old}` | " + (f"`{new}`" if new else "removed") + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(markdown(), end="")
