"""Towers of the whole model built from HF folders (config.model.*.init_from).

The folder's config.json decides the architecture; the data only has to fit
it: the tokenized length within the position table, the catalog's images at
the checkpoint's resolution. Weights come through `hf_import`.
"""

import jax.numpy as jnp
from flax import nnx

from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.models.encoders import hf_import
from mmjax.models.encoders.text import MaskedLMHead

image_normalization = hf_import.image_normalization


def check_text_folder(path: str) -> dict:
  """The text folder's config, weights and tokenizer are usable, and every
  token id has a row in the embedding table. Returns the architecture."""
  arch = hf_import.check_text_folder(path)
  tokens = TextTokenizer(path, max_len=8).vocab_size
  if tokens > arch["vocab_size"]:
    raise MmjaxError(f"{path}: the tokenizer has {tokens} ids, the embedding "
                     f"table only {arch['vocab_size']} rows")
  return arch


def check_folders(cfg) -> None:
  """Every config.model.*.init_from folder, before anything is built: one
  line naming the file at fault."""
  if cfg.text.init_from:
    check_text_folder(cfg.text.init_from)
  if cfg.image.init_from:
    hf_import.check_image_folder(cfg.image.init_from)


def text_tower(cfg, shapes, rngs: nnx.Rngs):
  """(BertEncoder, MaskedLMHead) of config.model.text.init_from; the head is
  the checkpoint's `cls.predictions` when it has one, else freshly made."""
  t, dtype = cfg.text, jnp.dtype(cfg.dtype)
  arch = hf_import.text_config_from_hf(t.init_from)
  if shapes.max_text_len > arch["max_len"]:
    raise MmjaxError(f"config.data.max_text_len={shapes.max_text_len} exceeds "
                     f"{t.init_from}'s max_position_embeddings={arch['max_len']}")
  if shapes.vocab_size > arch["vocab_size"]:
    raise MmjaxError(f"{t.init_from}: the tokenizer has {shapes.vocab_size} ids, "
                     f"the model only {arch['vocab_size']} embeddings")
  encoder = hf_import.load_text_encoder(
      t.init_from, pooling=t.pooling, dropout=t.dropout, remat=cfg.remat,
      dtype=dtype, rngs=rngs)
  head = hf_import.load_mlm_head(t.init_from, dtype=dtype, rngs=rngs)
  if head is None:
    head = MaskedLMHead(arch["hidden"], arch["vocab_size"], ln_eps=arch["ln_eps"],
                        dtype=dtype, rngs=rngs)
  return encoder, head


def image_tower(cfg, shapes, rngs: nnx.Rngs):
  """The ViT of config.model.image.init_from."""
  im = cfg.image
  arch = hf_import.image_config_from_hf(im.init_from)
  if arch["image_size"] != shapes.image_size:
    raise MmjaxError(f"config.model.image.init_from={im.init_from!r} takes "
                     f"{arch['image_size']}px images, the data has "
                     f"{shapes.image_size}px")
  return hf_import.load_image_encoder(
      im.init_from, pooling=im.pooling, dropout=im.dropout, remat=cfg.remat,
      dtype=jnp.dtype(cfg.dtype), rngs=rngs)


def widths(model, cfg) -> tuple[int, int]:
  """Output widths of the built text and image towers (a pretrained tower's
  come from its checkpoint, not from config.model.*.hidden)."""
  text = (model.text.embeddings.word_embeddings.features if cfg.text.init_from
          else cfg.text.hidden)
  image = (model.image.layernorm.num_features if cfg.image.init_from
           else cfg.image.hidden)
  return text, image
