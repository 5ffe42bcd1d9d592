"""The non-encoder parts of the model in PyTorch: aligners, fusion heads,
the recommender towers, the MLM head and the contrastive temperatures.

Each mirrors its mmjax module (mmjax/models/{aligners,fusion,recommender}.py,
MaskedLMHead, ContrastiveParams) with the same attribute names, so a torch
parameter name is the nnx path with `kernel`/`scale`/`embedding` renamed to
`weight` (see transfer.py). Attention is `F.scaled_dot_product_attention`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  sq = x.square().sum(-1, keepdim=True).clamp_min(eps * eps)
  return x * torch.rsqrt(sq)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Mean of x (B, L, D) over the positions where mask (B, L) is set."""
  m = mask.to(x.dtype).unsqueeze(-1)
  return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def gelu(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x)  # Exact erf form, as HF "gelu" and the JAX side.


class Projection(nn.Module):
  """Bias-free linear map into the shared space, then L2 normalisation."""

  def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-6):
    super().__init__()
    self.eps = eps
    self.dense = nn.Linear(in_dim, out_dim, bias=False)

  def forward(self, x):
    return l2_normalize(self.dense(x), self.eps)

  def orthogonality_penalty(self):
    w = self.dense.weight.T  # (in, out), as the JAX kernel.
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - eye).square().sum() / gram.shape[0]


class MLPFusion(nn.Module):
  """fc2(GELU(fc1([z_t, z_i, z_t * z_i]))) + skip([z_t, z_i])."""

  def __init__(self, dim: int, hidden: int, out_dim: int, dropout: float = 0.0):
    super().__init__()
    self.fc1 = nn.Linear(3 * dim, hidden)
    self.dropout = nn.Dropout(dropout)
    self.fc2 = nn.Linear(hidden, out_dim)
    self.skip = nn.Linear(2 * dim, out_dim)

  def forward(self, z_text, z_image, text_tokens=None, text_mask=None,
              image_tokens=None):
    del text_tokens, text_mask, image_tokens
    h = self.dropout(gelu(self.fc1(torch.cat([z_text, z_image, z_text * z_image], -1))))
    return self.fc2(h) + self.skip(torch.cat([z_text, z_image], -1))


class _Dense(nn.Module):
  """Holds `dense` so the path reads `*.output.dense`, as on the JAX side."""

  def __init__(self, in_dim: int, out_dim: int, dropout: float):
    super().__init__()
    self.dense = nn.Linear(in_dim, out_dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(self.dense(x))


class CrossAttention(nn.Module):
  """Multi-head attention from x to context via scaled_dot_product_attention."""

  def __init__(self, dim: int, heads: int, dropout: float):
    super().__init__()
    self.heads = heads
    self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
    self.output = _Dense(dim, dim, dropout)

  def _split(self, x):
    b, n, d = x.shape
    return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

  def forward(self, x, context):
    q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
    a = F.scaled_dot_product_attention(q, k, v)
    return self.output(a.transpose(1, 2).flatten(2))


class PreLNCrossBlock(nn.Module):
  """x + attn(LN(x), LN_ctx(context)), then h + MLP(LN(h)) (ViT layer names)."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, ln_eps: float,
               dropout: float):
    super().__init__()
    self.layernorm_before = nn.LayerNorm(dim, eps=ln_eps)
    self.layernorm_context = nn.LayerNorm(dim, eps=ln_eps)
    self.attention = CrossAttention(dim, heads, dropout)
    self.layernorm_after = nn.LayerNorm(dim, eps=ln_eps)
    self.intermediate = _Dense(dim, mlp_dim, 0.0)
    self.output = _Dense(mlp_dim, dim, dropout)

  def forward(self, x, context):
    x = x + self.attention(self.layernorm_before(x), self.layernorm_context(context))
    return x + self.output(gelu(self.intermediate(self.layernorm_after(x))))


class CrossAttentionFusion(nn.Module):
  """Text tokens cross-attend to image tokens, masked-mean pooled, mixed with z's."""

  def __init__(self, dim: int, heads: int, text_dim: int, image_dim: int,
               out_dim: int, layers: int = 1, mlp_ratio: int = 4,
               ln_eps: float = 1e-6, dropout: float = 0.0):
    super().__init__()
    self.text_proj = nn.Linear(text_dim, dim)
    self.image_proj = nn.Linear(image_dim, dim)
    self.layers = nn.ModuleList(
        PreLNCrossBlock(dim, heads, mlp_ratio * dim, ln_eps, dropout)
        for _ in range(layers))
    self.layernorm = nn.LayerNorm(dim, eps=ln_eps)
    self.head = nn.Linear(dim + 2 * dim, out_dim)

  def forward(self, z_text, z_image, text_tokens=None, text_mask=None,
              image_tokens=None):
    x, context = self.text_proj(text_tokens), self.image_proj(image_tokens)
    for layer in self.layers:
      x = layer(x, context)
    pooled = masked_mean(self.layernorm(x), text_mask)
    return self.head(torch.cat([pooled, z_text, z_image], -1))


class HistoryMLP(nn.Module):
  """`layers` = Linear, tanh-GELU, Linear: nnx.Sequential's path and nnx.gelu."""

  def __init__(self, dim: int):
    super().__init__()
    self.layers = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"),
                                nn.Linear(2 * dim, dim))

  def forward(self, x):
    return self.layers(x)


class Recommender(nn.Module):
  """Item and user towers of mmjax.models.recommender.Recommender."""

  def __init__(self, *, num_users: int, num_items: int, dim: int,
               item_id_embedding: bool, user_id_embedding: bool, history: str,
               item_bias: bool, temperature: float):
    super().__init__()
    self.item_id_embed = nn.Embedding(num_items, dim) if item_id_embedding else None
    self.user_embed = nn.Embedding(num_users, dim) if user_id_embedding else None
    self.item_bias = nn.Embedding(num_items, 1) if item_bias else None
    self.temperature = temperature
    self.history_embed = nn.Embedding(num_items, dim) if history == "embedding" else None
    if history == "memory":
      self.register_buffer("item_memory", torch.zeros(num_items, dim))
    else:
      self.item_memory = None
    self.history_mlp = HistoryMLP(dim)

  def item_vectors(self, fused, item_ids):
    if self.item_id_embed is not None:
      fused = fused + self.item_id_embed(item_ids)
    return l2_normalize(fused)

  def scoring_vectors(self, users, items, item_ids):
    u = users / self.temperature
    if self.item_bias is None:
      return u, items
    return (torch.cat([u, torch.ones_like(u[:, :1])], -1),
            torch.cat([items, self.item_bias(item_ids)], -1))

  def history_table(self):
    if self.item_memory is not None:
      return self.item_memory
    return self.history_embed.weight

  @torch.no_grad()
  def refresh_memory(self, item_ids, vectors):
    """Writes the batch's item vectors (duplicates averaged) into the memory."""
    if self.item_memory is None:
      return
    n = self.item_memory.shape[0]
    # The memory stays f32 when the step computes in bf16 (autocast).
    vectors = vectors.detach().to(self.item_memory.dtype)
    total = torch.zeros_like(self.item_memory).index_add_(0, item_ids, vectors)
    count = torch.zeros(n, 1, dtype=vectors.dtype, device=vectors.device).index_add_(
        0, item_ids, torch.ones_like(vectors[:, :1]))
    self.item_memory.copy_(torch.where(count > 0, total / count.clamp_min(1.0),
                                       self.item_memory))

  def user_vectors(self, user_ids, history):
    valid = (history >= 0).unsqueeze(-1).to(torch.float32)
    h = self.history_table()[history.clamp_min(0)] * valid
    pooled = l2_normalize(h.sum(1) / valid.sum(1).clamp_min(1.0))
    u = pooled + self.history_mlp(pooled)
    if self.user_embed is not None:
      u = u + self.user_embed(user_ids)
    return l2_normalize(u)


class MaskedLMHead(nn.Module):
  """HF `cls.predictions`: transform, then logits tied to the word embeddings."""

  def __init__(self, bert_config, vocab_size: int):
    super().__init__()
    self.transform = BertPredictionHeadTransform(bert_config)
    self.bias = nn.Parameter(torch.zeros(vocab_size))

  def forward(self, hidden, word_embeddings):
    return self.transform(hidden) @ word_embeddings.T + self.bias


class ContrastiveParams(nn.Module):
  """Learnable InfoNCE log-scale and SigLIP log-temperature and bias."""

  def __init__(self):
    super().__init__()
    self.infonce_log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    self.siglip_log_t = nn.Parameter(torch.tensor(math.log(10.0)))
    self.siglip_bias = nn.Parameter(torch.tensor(-10.0))
