"""Resuming a workdir: the config it was trained with, and the newest good checkpoint.

Each run stores its resolved config as `<workdir>/config.json`. A rerun first
compares the parameter shapes of the newest checkpoint with the ones the new
config builds; if they differ it refuses, naming the config keys that changed
(a silent partial restore would be worse than no resume). A checkpoint that
cannot be read (truncated, corrupted) is moved aside with a warning and the
previous one is tried.
"""

import json
import os

import jax

from mmjax.errors import MmjaxError

CONFIG_FILE = "config.json"


def save_config(workdir: str, config) -> None:
  """Writes config.json atomically (temp file + rename)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def load_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_diff(old: dict, new: dict) -> list[str]:
  """`key: old -> new` for every key whose value differs."""
  a, b = _flatten(old), _flatten(new)
  return [f"config.{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _path(keys) -> str:
  parts = []
  for k in keys:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def leaf_shapes(tree) -> dict:
  """'a/b/c' -> (shape, dtype name) of every array leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def shape_mismatches(saved: dict, expected: dict) -> list[str]:
  """The leaves that are missing, extra or of another shape/dtype."""
  out = []
  for k in sorted(set(saved) | set(expected)):
    if saved.get(k) != expected.get(k):
      out.append(f"{k}: checkpoint {saved.get(k, 'absent')}, "
                 f"config {expected.get(k, 'absent')}")
  return out


def restore_newest_good(ckpt, state, data_iterator, config, workdir, log):
  """Restores the newest readable checkpoint; `state` unchanged if none exists.

  MmjaxError if the checkpoints were written with incompatible shapes, or if
  none of them can be read.
  """
  steps = sorted(ckpt.all_steps(), reverse=True)
  expected = leaf_shapes(state)
  for step in steps:
    try:
      saved = ckpt.saved_shapes(step)
    except Exception as e:  # A corrupt checkpoint can fail in many ways.
      _set_aside(ckpt, step, e, log)
      continue
    bad = shape_mismatches(saved, expected)
    if bad:
      raise MmjaxError(_incompatible_message(workdir, config, step, bad))
    try:
      state = ckpt.restore(state, data_iterator, step=step)
    except Exception as e:
      _set_aside(ckpt, step, e, log)
      continue
    log(f"resumed from checkpoint at step {int(state['step'])}")
    return state
  if steps:
    raise MmjaxError(f"no readable checkpoint in {ckpt.directory}; the broken "
                     f"ones were moved to {ckpt.quarantine_dir}")
  return state


def _set_aside(ckpt, step, error, log) -> None:
  where = ckpt.quarantine(step)
  log(f"WARNING: checkpoint {step} is unreadable ({type(error).__name__}: "
      f"{str(error).splitlines()[0][:200]}); moved to {where}, trying the previous one")


def _incompatible_message(workdir, config, step, mismatches) -> str:
  old = load_config(workdir)
  keys = (config_diff(old, json.loads(config.to_json_best_effort()))
          if old is not None else [])
  what = ("; differing keys: " + ", ".join(keys)) if keys else (
      f" (no {CONFIG_FILE} in the workdir to name the differing keys)")
  return (f"checkpoint {step} in {os.path.join(workdir, 'checkpoints')} was "
          f"written with an incompatible config{what}; shapes differ at "
          f"{len(mismatches)} array(s), e.g. {mismatches[0]}. Use another "
          "--workdir or the original config.")
