"""The optimizer: AdamW with warmup + cosine decay and global-norm clipping,
with optional frozen parameters (config.train.freeze)."""

import functools
import re

import jax
import jax.numpy as jnp
import optax

from mmjax.errors import MmjaxError


def learning_rate(train_cfg) -> optax.Schedule:
  warmup = min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=warmup,
      decay_steps=max(train_cfg.steps, warmup + 1), end_value=0.0)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  # Decay matrices and embeddings only: biases, LayerNorm scales and the
  # learnable temperatures/bias of the contrastive losses are left alone.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip
      else optax.identity(),
      optax.adamw(learning_rate(train_cfg), weight_decay=train_cfg.weight_decay,
                  mask=decay_mask, mu_dtype=jnp.dtype(train_cfg.mu_dtype)))
  if not train_cfg.freeze:
    return tx
  # Frozen parameters get no moments, no decay and no share of the clipping
  # norm: the whole chain only sees the trainable ones.
  labels = functools.partial(freeze_labels, patterns=tuple(train_cfg.freeze),
                             unfreeze_last_blocks=train_cfg.unfreeze_last_blocks)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: _zero_updates()},
                               labels)


TRAINABLE, FROZEN = "trainable", "frozen"
_BLOCK = re.compile(r"(.*)/layers/(\d+)/.*")


def param_path(keypath) -> str:
  """'text/layers/0/attention/query/kernel' for a leaf of nnx.State params."""
  return jax.tree_util.keystr(keypath, simple=True,
                              separator="/").removesuffix("/value")


def freeze_labels(params, *, patterns: tuple[str, ...],
                  unfreeze_last_blocks: int = 0):
  """FROZEN / TRAINABLE per parameter (config.train.freeze, LiT style).

  A parameter is frozen when a pattern re.fullmatch-es its path; then the last
  `unfreeze_last_blocks` blocks (`<tower>/layers/<i>/...`) of every block
  stack are trainable again. A pattern that matches nothing is an error.
  """
  compiled = []
  for i, pattern in enumerate(patterns):
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise MmjaxError(f"config.train.freeze[{i}]={pattern!r}: bad regex ({e})") from None
  paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  unused = [p.pattern for p in compiled if not any(p.fullmatch(n) for n in paths)]
  if unused:
    raise MmjaxError(f"config.train.freeze: {unused} match no parameter; paths look "
                     f"like {paths[len(paths) // 2]!r} (regexes are re.fullmatch-ed)")
  blocks = {}   # Block-stack prefix -> number of blocks.
  for name in paths:
    if m := _BLOCK.fullmatch(name):
      blocks[m[1]] = max(blocks.get(m[1], 0), int(m[2]) + 1)

  def label(keypath, _):
    name = param_path(keypath)
    if not any(p.fullmatch(name) for p in compiled):
      return TRAINABLE
    m = _BLOCK.fullmatch(name)
    if m and int(m[2]) >= blocks[m[1]] - unfreeze_last_blocks:
      return TRAINABLE
    return FROZEN
  return jax.tree_util.tree_map_with_path(label, params)


def _zero_updates() -> optax.GradientTransformation:
  # -0.0, not optax.set_to_zero's +0.0: p + (-0.0) == p bit for bit for
  # every p (p = -0.0 included), so frozen parameters stay bit-identical.
  return optax.stateless(
      lambda updates, params=None: jax.tree.map(lambda u: jnp.full_like(u, -0.0),
                                                updates))
