"""The PyTorch train step: forward + every loss term, backward, clipping,
optimizer update and the item-memory refresh, as mmjax.train.step does it.

`make_optimizer` is the torch twin of mmjax.train.optimizer: AdamW (fused CPU
kernel) with weight decay on matrices/embeddings only, global-norm clipping
in the step, and optax's own warmup-cosine schedule tabulated once (so the
per-step learning rate costs no JAX call).
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from mmjax.baselines.torch.losses import loss_terms, weighted_total
from mmjax.train.optimizer import learning_rate


def to_torch_batch(batch: dict, device: str = "cpu") -> dict:
  """A numpy batch as torch tensors on `device`; integer ids as int64,
  torch's index type."""
  out = {}
  for k, v in batch.items():
    t = torch.from_numpy(np.array(v))
    out[k] = (t.long() if not t.is_floating_point() else t).to(device)
  return out


def lr_table(train_cfg) -> np.ndarray:
  """The learning rate of every step 0..steps, from the optax schedule."""
  return np.asarray(jax.vmap(learning_rate(train_cfg))(jnp.arange(train_cfg.steps + 1)))


def make_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.Optimizer:
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [dict(params=[p for p in params if p.ndim >= 2], weight_decay=train_cfg.weight_decay),
            dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)]
  return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                           fused=True)


class TorchTrainStep:
  """step(batch) -> (loss, terms) updates `model` in place.

  compile=True compiles forward + loss with torch.compile (inductor); the
  backward is compiled with it by AOTAutograd. The fused AdamW is one kernel
  already, so the optimizer step is left eager. compute_dtype=torch.bfloat16
  runs forward + loss under autocast (parameters and optimizer stay f32), as
  mmjax's model.dtype = "bfloat16" does.
  """

  def __init__(self, model, loss_cfg, optimizer, *, lr: np.ndarray | None = None,
               grad_clip: float = 0.0, compile: bool = False,
               compute_dtype: torch.dtype = torch.float32):
    self.model, self.loss_cfg, self.optimizer = model, loss_cfg, optimizer
    self.lr, self.grad_clip, self.step_count = lr, grad_clip, 0
    self.compute_dtype = compute_dtype
    # Autocast wants the device type; the model stays where it is (move it
    # before building the step).
    self.device_type = next(model.parameters()).device.type
    self.params = [p for p in model.parameters() if p.requires_grad]
    self._loss = torch.compile(self._loss_fn) if compile else self._loss_fn

  def _loss_fn(self, batch, joint: bool):
    terms, extras = loss_terms(self.model, batch, self.loss_cfg)
    return weighted_total(terms, self.loss_cfg, joint), terms, extras

  def __call__(self, batch: dict):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    joint = self.step_count >= self.loss_cfg.pretrain_steps
    with torch.autocast(self.device_type, dtype=self.compute_dtype,
                        enabled=self.compute_dtype != torch.float32):
      loss, terms, extras = self._loss(batch, joint)
    loss.backward()
    if self.grad_clip:
      torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
    if self.lr is not None:
      for group in self.optimizer.param_groups:
        group["lr"] = float(self.lr[min(self.step_count, len(self.lr) - 1)])
    self.optimizer.step()
    if "items" in extras:
      self.model.rec.refresh_memory(batch["item_id"], extras.pop("items"))
    self.step_count += 1
    return loss.detach(), {k: v.detach() for k, v in {**terms, **extras}.items()}
