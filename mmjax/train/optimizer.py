"""The optimizer: AdamW with warmup + cosine decay and global-norm clipping."""

import jax
import optax


def learning_rate(train_cfg) -> optax.Schedule:
  warmup = min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=warmup,
      decay_steps=max(train_cfg.steps, warmup + 1), end_value=0.0)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  # Decay matrices and embeddings only: biases, LayerNorm scales and the
  # learnable temperatures/bias of the contrastive losses are left alone.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip
      else optax.identity(),
      optax.adamw(learning_rate(train_cfg), weight_decay=train_cfg.weight_decay,
                  mask=decay_mask))
