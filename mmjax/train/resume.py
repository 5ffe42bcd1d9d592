"""Resuming a workdir: the config it was trained with, and the newest good checkpoint.

Each run stores its resolved config as `<workdir>/config.json` and what its
example stream depends on (batch size, seed, a fingerprint of the catalog)
as `<workdir>/run_identity.json`. A rerun refuses to resume when any of
those changed, naming them, unless `train.allow_resume_change` lists them;
and when `train.steps` is below the checkpoint's step. It then compares the
parameter shapes of the newest checkpoint with the ones the new config
builds; if they differ it refuses, naming the config keys that changed (a
silent partial restore would be worse than no resume). A checkpoint that
cannot be read (truncated, corrupted) is moved aside with a warning and the
previous one is tried.
"""

import hashlib
import json

import jax
import numpy as np
from etils import epath

from mmjax.config.schema import RESUME_CHANGES
from mmjax.errors import MmjaxError
from mmjax.train import paths
from mmjax.train.atomic import atomic_write

CONFIG_FILE = "config.json"
IDENTITY_FILE = "run_identity.json"


def save_config(workdir: str, config) -> None:
  with atomic_write(paths.join(workdir, CONFIG_FILE)) as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> dict | None:
  path = epath.Path(paths.join(workdir, CONFIG_FILE))
  if not path.exists():
    return None
  return json.loads(path.read_text())


def catalog_fingerprint(catalog) -> str:
  """A digest of the items and the split interactions."""
  h = hashlib.blake2b(digest_size=16)
  h.update(f"{catalog.num_users} {catalog.num_items}".encode())
  for a in (catalog.interactions, catalog.split, catalog.item_images):
    h.update(np.ascontiguousarray(a).tobytes())
  if catalog.labels is not None:   # Unlabelled catalogs keep their digest.
    h.update(catalog.labels.tobytes())
  h.update("\0".join(catalog.item_text).encode())
  return h.hexdigest()


def run_identity(config, catalog, data_dir: str) -> dict:
  """What a resumed run must share with the checkpoint's, by the names
  `train.allow_resume_change` takes (schema.RESUME_CHANGES)."""
  return {"train.batch_size": int(config.train.batch_size), "seed": int(config.seed),
          "data": {"fingerprint": catalog_fingerprint(catalog), "dir": data_dir}}


def save_identity(workdir: str, identity: dict) -> None:
  with atomic_write(paths.join(workdir, IDENTITY_FILE)) as f:
    json.dump(identity, f, indent=2)


def _changed(key: str, old, new) -> str | None:
  """How `key` changed, or None."""
  if key == "data":
    if old.get("fingerprint") == new["fingerprint"]:
      return None
    return f"data (another catalog: {old.get('dir')} -> {new['dir']})"
  return None if old == new else f"{key} ({old} -> {new})"


def check_identity(workdir: str, identity: dict, allowed, step: int) -> None:
  """MmjaxError naming what changed since the run of checkpoint `step`,
  except the names in `allowed`. A workdir without the record (older runs)
  passes."""
  path = epath.Path(paths.join(workdir, IDENTITY_FILE))
  if not path.exists():
    return
  old = json.loads(path.read_text())
  keys = [k for k in RESUME_CHANGES
          if k in old and k not in allowed and _changed(k, old[k], identity[k])]
  if keys:
    names = ",".join(keys)
    raise MmjaxError(
        f"refusing to resume checkpoint {step} in {workdir}: changed since it "
        f"was trained: {', '.join(_changed(k, old[k], identity[k]) for k in keys)}; "
        "use the original values, another --workdir, or "
        "--config.train.allow_resume_change=" + names)


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


def restore_newest_good(ckpt, state, data_iterator, config, workdir, log, *,
                        identity: dict | None = None, total: int | None = None,
                        total_key: str = "train.steps"):
  """Restores the newest readable checkpoint; `state` unchanged if none exists.

  MmjaxError if `identity` (`run_identity`) differs from the checkpoints'
  run, if `total` (default config.train.steps; the message names it
  `total_key`) is below the restored step, if the checkpoints were written
  with incompatible shapes, or if none of them can be read.
  """
  steps = sorted(ckpt.all_steps(), reverse=True)
  if steps and identity is not None:
    check_identity(workdir, identity, config.train.allow_resume_change, steps[0])
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
    total = config.train.steps if total is None else total
    if total < step:
      raise MmjaxError(
          f"config.{total_key}={total} is below step {step} of the "
          f"checkpoint in {ckpt.directory}: set {total_key} >= {step}, or use "
          "another --workdir")
    try:
      state = ckpt.restore(state, data_iterator, step=step)
    except Exception as e:
      _set_aside(ckpt, step, e, log)
      continue
    log(f"resumed from checkpoint at {total_key.split('.')[-1].rstrip('s')} "
        f"{int(state['step'])}")
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
  return (f"checkpoint {step} in {paths.join(workdir, 'checkpoints')} was "
          f"written with an incompatible config{what}; shapes differ at "
          f"{len(mismatches)} array(s), e.g. {mismatches[0]}. Use another "
          "--workdir or the original config.")
