"""mmjax's loss terms in PyTorch, and the same `loss_terms` / `weighted_total`
as mmjax/train/step.py (the math of mmjax/losses/*, for unpadded batches)."""

import torch
import torch.nn.functional as F

from mmjax.baselines.torch.heads import l2_normalize
from mmjax.train.step import REC_TERMS, USER_TERMS

_MAX_SCALE = 100.0


def pair_mask(ids):
  """(B, B) bool: the diagonal, and every pair of distinct items."""
  return (ids[:, None] != ids[None, :]) | torch.eye(len(ids), dtype=torch.bool, device=ids.device)


def diag_softmax_xent(logits, allowed, rows=None):
  """Mean diagonal-target CE over all rows, or over the rows where `rows`."""
  xent = logits.masked_fill(~allowed, float("-inf")).logsumexp(1) - logits.diagonal()
  if rows is None:
    return xent.mean()
  return (xent * rows).sum() / rows.sum().clamp_min(1)


def infonce(z_a, z_b, log_scale, ids):
  logits = log_scale.exp().clamp(max=_MAX_SCALE) * (z_a @ z_b.T)
  allowed = pair_mask(ids)
  return 0.5 * (diag_softmax_xent(logits, allowed) + diag_softmax_xent(logits.T, allowed.T))


def siglip(z_a, z_b, log_t, bias, ids):
  logits = log_t.exp() * (z_a @ z_b.T) + bias
  b = logits.shape[0]
  labels = 2.0 * torch.eye(b, device=logits.device) - 1.0
  return -(F.logsigmoid(labels * logits) * pair_mask(ids)).sum() / b


def _sq_dists(a, b):
  d = a.square().sum(-1)[:, None] + b.square().sum(-1)[None, :] - 2.0 * a @ b.T
  return d.clamp_min(0.0)


def mmd(x, y, bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0)):
  n = x.shape[0]
  z = torch.cat([x, y], 0)
  d = _sq_dists(z, z)
  p = z.shape[0]
  s = (d.sum() / (p * (p - 1))).detach().clamp_min(1e-12)
  k = sum(torch.exp(-d / (2.0 * sig**2 * s)) for sig in bandwidths)
  return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def _cov(x):
  xc = x - x.mean(0, keepdim=True)
  return xc.T @ xc / (x.shape[0] - 1)


def coral(x, y):
  d = x.shape[1]
  return (_cov(x) - _cov(y)).square().sum() / (4.0 * d * d)


def masked_lm_loss(logits, labels):
  """(mean cross-entropy, accuracy) over the positions with label >= 0."""
  mask = labels >= 0
  n = mask.sum().clamp_min(1).float()
  nll = F.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(),
                        reduction="none").view(labels.shape)
  correct = (logits.argmax(-1) == labels) & mask
  return (nll * mask).sum() / n, correct.sum() / n


def sampled_softmax_logq(u, v, item_ids, log_q):
  return diag_softmax_xent(u @ v.T - log_q[None, :], pair_mask(item_ids))


def bpr(u, v, item_ids):
  s_pos = (u * v).sum(-1)
  s_neg = (u * v.roll(-1, 0)).sum(-1)
  ok = (item_ids.roll(-1) != item_ids).float()
  return -(F.logsigmoid(s_pos - s_neg) * ok).sum() / ok.sum().clamp_min(1.0)


def bce(u, v, item_ids):
  s = u @ v.T
  neg = (pair_mask(item_ids) & ~torch.eye(len(item_ids), dtype=torch.bool, device=s.device)).float()
  pos = -F.logsigmoid(s.diagonal()).mean()
  return pos + (-F.logsigmoid(-s) * neg).sum() / neg.sum().clamp_min(1.0)


def co_item_infonce(a, b, item_ids, co_item_ids, temperature):
  """mmjax.losses.recommendation.co_item_infonce; rows with co_item_ids -1 drop out."""
  ok = co_item_ids >= 0
  logits = (a @ b.T) / temperature
  off = ~torch.eye(len(item_ids), dtype=torch.bool, device=a.device)
  allowed = ~(off & ((item_ids[:, None] == co_item_ids[None, :])
                     | (co_item_ids[:, None] == co_item_ids[None, :])
                     | ~(ok[:, None] & ok[None, :])))
  return 0.5 * (diag_softmax_xent(logits, allowed, ok)
                + diag_softmax_xent(logits.T, allowed.T, ok))


def loss_terms(model, batch: dict, loss_cfg) -> tuple[dict, dict]:
  """Every loss term (unweighted); mirrors mmjax.train.step.loss_terms."""
  ids = batch["item_id"]
  out = model.encode_items(batch["tokens"], batch["mask"], batch["image"], ids)
  z_t, z_i, c = out["z_text"], out["z_image"], model.contrastive
  terms, extras = {}, {}
  if loss_cfg.infonce:
    terms["infonce"] = infonce(z_t, z_i, c.infonce_log_scale, ids)
  if loss_cfg.siglip:
    terms["siglip"] = siglip(z_t, z_i, c.siglip_log_t, c.siglip_bias, ids)
  if loss_cfg.mmd:
    terms["mmd"] = mmd(z_t, z_i)
  if loss_cfg.coral:
    terms["coral"] = coral(z_t, z_i)
  if loss_cfg.orthogonality:
    terms["orthogonality"] = model.orthogonality_penalty()
  if loss_cfg.mlm:
    logits = model.mlm_logits(batch["mlm_tokens"], batch["mask"], batch["mlm_positions"])
    terms["mlm"], extras["mlm_accuracy"] = masked_lm_loss(logits, batch["mlm_labels"])
  if loss_cfg.co_item:
    co = model.encode_content(batch["co_tokens"], batch["co_mask"], batch["co_image"])
    terms["co_item"] = co_item_infonce(
        l2_normalize(out["content"]), l2_normalize(co["content"]), ids,
        batch["co_item_id"], loss_cfg.co_item_temperature)
  if any(loss_cfg[t] for t in USER_TERMS):
    u = model.rec.user_vectors(batch["user_id"], batch["history"])
    extras["items"] = out["item"]
    u, v = model.rec.scoring_vectors(u, out["item"], ids)
    if loss_cfg.softmax:
      terms["softmax"] = sampled_softmax_logq(u, v, ids, batch["log_q"])
    if loss_cfg.bpr:
      terms["bpr"] = bpr(u, v, ids)
    if loss_cfg.bce:
      terms["bce"] = bce(u, v, ids)
  return terms, extras


def weighted_total(terms: dict, loss_cfg, joint: bool):
  """Weighted sum; the recommendation terms count once `joint` (after the
  pretrain phase). A bool, not the step, so torch.compile sees a constant."""
  return sum(loss_cfg[name] * value for name, value in terms.items()
             if joint or name not in REC_TERMS)
