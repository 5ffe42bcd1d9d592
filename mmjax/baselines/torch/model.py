"""mmjax's MultimodalRecommender in PyTorch, as a PyTorch user would write it.

The towers are transformers' own `BertModel` and `ViTModel` with
`attn_implementation="sdpa"` (mmjax's encoders follow their layouts); the
rest is heads.py. Built from the same `config.model` and `DataShapes` as
`mmjax.models.model.build_model`; images arrive NHWC (the mmjax batch) and
are permuted to NCHW for the patch convolution.
"""

import torch
from torch import nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from mmjax.baselines.torch import heads
from mmjax.models.model import DataShapes

_ATTN = "sdpa"


def bert_config(t, shapes: DataShapes) -> BertConfig:
  return BertConfig(
      vocab_size=shapes.vocab_size, hidden_size=t.hidden,
      num_hidden_layers=t.layers, num_attention_heads=t.heads,
      intermediate_size=t.mlp_dim, max_position_embeddings=shapes.max_text_len,
      type_vocab_size=t.type_vocab, hidden_act="gelu", layer_norm_eps=1e-12,
      hidden_dropout_prob=t.dropout,
      attention_probs_dropout_prob=0.0,  # mmjax's fused attention has none.
      attn_implementation=_ATTN)


def vit_config(im, shapes: DataShapes) -> ViTConfig:
  return ViTConfig(
      image_size=shapes.image_size, patch_size=im.patch_size, num_channels=3,
      hidden_size=im.hidden, num_hidden_layers=im.layers,
      num_attention_heads=im.heads, intermediate_size=im.mlp_dim,
      hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
      hidden_dropout_prob=im.dropout, attention_probs_dropout_prob=0.0,
      attn_implementation=_ATTN)


class TorchMultimodalRecommender(nn.Module):
  """Item = fusion(aligned text, aligned image) [+ item ID]; user tower; dot."""

  def __init__(self, cfg, shapes: DataShapes):
    super().__init__()
    t, im, f = cfg.text, cfg.image, cfg.fusion
    if im.kind != "vit":
      raise ValueError("the PyTorch baseline builds the ViT image tower only")
    self.text_pooling, self.image_pooling = t.pooling, im.pooling
    bert = bert_config(t, shapes)
    self.text = BertModel(bert, add_pooling_layer=t.pooling == "cls")
    self.mlm_head = heads.MaskedLMHead(bert, shapes.vocab_size)
    self.image = ViTModel(vit_config(im, shapes), add_pooling_layer=False)
    self.text_proj = heads.Projection(t.hidden, cfg.dim)
    self.image_proj = heads.Projection(im.hidden, cfg.dim)
    if f.kind == "mlp":
      self.fusion = heads.MLPFusion(cfg.dim, f.hidden, cfg.dim, f.dropout)
    else:
      self.fusion = heads.CrossAttentionFusion(
          cfg.dim, f.heads, t.hidden, im.hidden, cfg.dim, f.layers,
          dropout=f.dropout)
    self.contrastive = heads.ContrastiveParams()
    r = cfg.rec
    self.rec = heads.Recommender(
        num_users=shapes.num_users, num_items=shapes.num_items, dim=cfg.dim,
        item_id_embedding=r.item_id_embedding, user_id_embedding=r.user_id_embedding,
        history=r.history, item_bias=r.item_bias, temperature=r.temperature)

  def encode_text(self, tokens, mask):
    out = self.text(input_ids=tokens, attention_mask=mask)
    hidden = out.last_hidden_state
    pooled = out.pooler_output if self.text_pooling == "cls" else heads.masked_mean(hidden, mask)
    return hidden, pooled

  def encode_image(self, images):
    x = self.image(pixel_values=images.permute(0, 3, 1, 2)).last_hidden_state
    tokens = x[:, 1:]
    return tokens, (x[:, 0] if self.image_pooling == "cls" else tokens.mean(1))

  def encode_items(self, tokens, mask, images, item_ids):
    out = self.encode_content(tokens, mask, images)
    out["item"] = self.rec.item_vectors(out["content"], item_ids)
    return out

  def encode_content(self, tokens, mask, images):
    text_tokens, text_pooled = self.encode_text(tokens, mask)
    image_tokens, image_pooled = self.encode_image(images)
    z_text, z_image = self.text_proj(text_pooled), self.image_proj(image_pooled)
    content = self.fusion(z_text, z_image, text_tokens=text_tokens, text_mask=mask,
                          image_tokens=image_tokens)
    return dict(z_text=z_text, z_image=z_image, content=content)

  def mlm_logits(self, tokens, mask, positions):
    hidden = self.text(input_ids=tokens, attention_mask=mask).last_hidden_state
    hidden = torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return self.mlm_head(hidden, self.text.embeddings.word_embeddings.weight)

  def orthogonality_penalty(self):
    return self.text_proj.orthogonality_penalty() + self.image_proj.orthogonality_penalty()
