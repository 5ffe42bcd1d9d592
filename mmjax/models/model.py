"""The whole model: encoders -> aligners -> fusion -> recommender.

`build_model` turns `config.model` into one NNX module tree (no shared
submodules); the train step splits it once and merges inside `jax.jit`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.data.catalog import TRAIN
from mmjax.models import pretrained
from mmjax.models.aligners import Projection, l2_normalize
from mmjax.models.caption import CaptionDecoder
from mmjax.models.encoders.text import BertEncoder, MaskedLMHead
from mmjax.models.encoders.vision import SmallCNN, ViT
from mmjax.models.fusion import build_fusion
from mmjax.models.recommender import Recommender


@dataclasses.dataclass(frozen=True)
class DataShapes:
  """What the model needs to know about the data it is built for."""
  vocab_size: int
  max_text_len: int
  image_size: int
  num_users: int
  num_items: int
  # Labelled data (loss.pointwise): "binary" or "rating", and the train
  # labels' mean (its logit for binary), where the head starts.
  label_kind: str = ""
  label_offset: float = 0.0

  @classmethod
  def of(cls, catalog, tokenizer, max_text_len: int) -> "DataShapes":
    kind, offset = catalog.label_kind, 0.0
    if kind:
      offset = float(np.mean(catalog.labelled_rows(TRAIN)[1]))
      if kind == "binary":
        rate = min(max(offset, 1e-3), 1 - 1e-3)
        offset = float(np.log(rate / (1 - rate)))
    return cls(vocab_size=tokenizer.vocab_size, max_text_len=max_text_len,
               image_size=catalog.image_size, num_users=catalog.num_users,
               num_items=catalog.num_items, label_kind=kind, label_offset=offset)


class ContrastiveParams(nnx.Module):
  """Learnable temperature (InfoNCE) and temperature + bias (SigLIP)."""

  def __init__(self):
    self.infonce_log_scale = nnx.Param(jnp.log(1 / 0.07) * jnp.ones(()))
    self.siglip_log_t = nnx.Param(jnp.log(10.0) * jnp.ones(()))
    self.siglip_bias = nnx.Param(-10.0 * jnp.ones(()))


class MultimodalRecommender(nnx.Module):
  """Item = fusion(aligned text, aligned image) [+ item ID]; user tower; dot."""

  def __init__(self, cfg, shapes: DataShapes, *, rngs: nnx.Rngs,
               caption: bool = False):
    dtype = jnp.dtype(cfg.dtype)
    t, im, f = cfg.text, cfg.image, cfg.fusion
    if t.init_from:
      self.text, self.mlm_head = pretrained.text_tower(cfg, shapes, rngs)
    else:
      self.text = BertEncoder(
          vocab_size=shapes.vocab_size, hidden=t.hidden, layers=t.layers,
          heads=t.heads, mlp_dim=t.mlp_dim, max_len=shapes.max_text_len,
          type_vocab=t.type_vocab, pooling=t.pooling, dropout=t.dropout,
          remat=cfg.remat, dtype=dtype, rngs=rngs)
      self.mlm_head = MaskedLMHead(t.hidden, shapes.vocab_size, dtype=dtype, rngs=rngs)
    # Pixels arrive in [-1, 1]; a pretrained tower wants (x - mean) / std.
    self.pixel_mean, self.pixel_std = (0.5,) * 3, (0.5,) * 3
    if im.init_from:
      self.image = pretrained.image_tower(cfg, shapes, rngs)
      self.pixel_mean, self.pixel_std = pretrained.image_normalization(im.init_from)
    elif im.kind == "vit":
      self.image = ViT(
          image_size=shapes.image_size, patch_size=im.patch_size,
          hidden=im.hidden, layers=im.layers, heads=im.heads,
          mlp_dim=im.mlp_dim, pooling=im.pooling, dropout=im.dropout,
          remat=cfg.remat, dtype=dtype, rngs=rngs)
    else:
      self.image = SmallCNN(
          image_size=shapes.image_size, widths=tuple(im.cnn_widths),
          hidden=im.hidden, dtype=dtype, rngs=rngs)
    text_hidden, image_hidden = pretrained.widths(self, cfg)
    self.text_proj = Projection(text_hidden, cfg.dim, dtype=dtype, rngs=rngs)
    self.image_proj = Projection(image_hidden, cfg.dim, dtype=dtype, rngs=rngs)
    fusion_kwargs = dict(dim=cfg.dim, out_dim=cfg.dim, dropout=f.dropout,
                         dtype=dtype, rngs=rngs)
    if f.kind == "mlp":
      fusion_kwargs.update(hidden=f.hidden)
    else:
      fusion_kwargs.update(heads=f.heads, layers=f.layers,
                           text_dim=text_hidden, image_dim=image_hidden)
    self.fusion = build_fusion(f.kind, **fusion_kwargs)
    self.contrastive = ContrastiveParams()
    # Only where loss.caption trains it (`caption`): other configs keep
    # their parameter tree.
    first = self.text.layers[0]
    self.caption = CaptionDecoder(
        vocab_size=shapes.vocab_size, dim=text_hidden,
        heads=first.attention.heads, mlp_dim=first.intermediate.dense.out_features,
        layers=cfg.caption.layers, max_len=shapes.max_text_len,
        context_dim=image_hidden, dropout=t.dropout, remat=cfg.remat,
        dtype=dtype, rngs=rngs) if caption else None
    self.rec = Recommender(
        num_users=shapes.num_users, num_items=shapes.num_items, dim=cfg.dim,
        item_id_embedding=cfg.rec.item_id_embedding,
        user_id_embedding=cfg.rec.user_id_embedding, history=cfg.rec.history,
        item_bias=cfg.rec.item_bias, temperature=cfg.rec.temperature, rngs=rngs,
        label_kind=shapes.label_kind, label_offset=shapes.label_offset)

  def encode_items(self, tokens, mask, images, item_ids, *,
                   deterministic: bool = True, rngs: nnx.Rngs | None = None,
                   hidden: bool = False):
    """The aligned per-modality vectors, the fused content and the item
    vectors (content plus item-ID embedding, unit norm)."""
    out = self.encode_content(tokens, mask, images, deterministic=deterministic,
                              rngs=rngs, hidden=hidden)
    out["item"] = self.rec.item_vectors(out["content"], item_ids)
    return out

  def encode_content(self, tokens, mask, images, *, deterministic: bool = True,
                     rngs: nnx.Rngs | None = None, hidden: bool = False):
    """{"z_text", "z_image", "content"}: what the item's text and image give,
    before the item-ID embedding. `hidden` adds "p_text" and "p_image" (the
    projections before L2 normalization) and "image_tokens" (B, N, C)."""
    text_tokens, text_pooled = self.text(
        tokens, mask, deterministic=deterministic, rngs=rngs)
    image_tokens, image_pooled = self.image(
        self._pixels(images), deterministic=deterministic, rngs=rngs)
    p_text = self.text_proj.project(text_pooled)
    p_image = self.image_proj.project(image_pooled)
    z_text = l2_normalize(p_text, self.text_proj.eps)
    z_image = l2_normalize(p_image, self.image_proj.eps)
    content = self.fusion(z_text, z_image, text_tokens=text_tokens,
                          text_mask=mask, image_tokens=image_tokens,
                          deterministic=deterministic, rngs=rngs)
    out = dict(z_text=z_text, z_image=z_image, content=content)
    if hidden:
      out.update(p_text=p_text, p_image=p_image, image_tokens=image_tokens)
    return out

  def encode_text(self, tokens, mask):
    """Aligned text vectors alone, e.g. for a text query (inference only)."""
    return self.text_proj(self.text(tokens, mask)[1])

  def encode_images(self, images):
    """Aligned image vectors alone (inference only)."""
    return self.image_proj(self.image(self._pixels(images))[1])

  def _pixels(self, images):
    """[-1, 1] pixels in the image tower's normalization (a no-op unless
    the tower is pretrained with other statistics, e.g. CLIP)."""
    if self.pixel_mean == self.pixel_std == (0.5,) * 3:
      return images
    mean = jnp.asarray(self.pixel_mean, images.dtype)
    std = jnp.asarray(self.pixel_std, images.dtype)
    return ((images + 1) / 2 - mean) / std

  def encode_users(self, user_ids, history, item_table=None):
    """User vectors; `item_table` (N, dim) replaces the training-time history
    table, e.g. with freshly encoded item vectors at evaluation."""
    if item_table is not None and self.rec.item_memory is None:
      item_table = None   # A learned history table is used as it is.
    return self.rec.user_vectors(user_ids, history, item_table)

  def mlm_logits(self, tokens, mask, positions, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
    """Vocabulary logits (B, P, V) at the masked `positions` (B, P) only."""
    hidden, _ = self.text(tokens, mask, deterministic=deterministic, rngs=rngs)
    hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    return self.mlm_head(hidden, self.text.embeddings.word_embeddings.embedding[...])

  def caption_logits(self, tokens, mask, image_tokens, *,
                     deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """(B, L - 1, V) logits of tokens 1..L-1, each from the tokens before it
    and the image tokens (or None); the decoder ties the text tower's table."""
    return self.caption(tokens[:, :-1], mask[:, :-1],
                        self.text.embeddings.word_embeddings.embedding[...],
                        image_tokens, deterministic=deterministic, rngs=rngs)

  def orthogonality_penalty(self) -> jax.Array:
    return (self.text_proj.orthogonality_penalty()
            + self.image_proj.orthogonality_penalty())


def build_model(cfg, shapes: DataShapes, *, seed: int,
                caption: bool = False) -> MultimodalRecommender:
  """The model of `cfg` (config.model); `caption`: with the caption decoder
  (config.loss.caption > 0)."""
  return MultimodalRecommender(cfg, shapes, rngs=nnx.Rngs(params=seed, dropout=seed + 1),
                               caption=caption)
