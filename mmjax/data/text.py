"""Synthetic product descriptions and the WordPiece tokenizer trained on them.

Descriptions name an item's category, colour, material and style, each through
a random synonym, in one of several templates, with random filler phrases.
They never mention the pattern (that attribute is image-only), so no synonym,
template or filler may contain a pattern word.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from mmjax.errors import MmjaxError

# Attribute type -> canonical value -> synonyms (the canonical word first).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "category": {
        "shirt": ("shirt", "top", "tee", "blouse"),
        "dress": ("dress", "gown", "frock"),
        "shoe": ("shoe", "boot", "bootie"),
        "hat": ("hat", "cap", "bonnet"),
        "bag": ("bag", "handbag", "tote", "purse"),
        "scarf": ("scarf", "shawl", "muffler"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "tangerine", "apricot"),
        "yellow": ("yellow", "lemon", "mustard"),
        "green": ("green", "emerald", "olive"),
        "blue": ("blue", "navy", "azure"),
        "purple": ("purple", "violet", "plum"),
        "pink": ("pink", "rose", "blush"),
        "black": ("black", "jet black", "ebony"),
    },
    "material": {
        "cotton": ("cotton", "organic cotton", "pure cotton"),
        "wool": ("wool", "merino wool", "woolen"),
        "leather": ("leather", "genuine leather", "full grain leather"),
        "silk": ("silk", "mulberry silk", "silky"),
        "denim": ("denim", "washed denim", "chambray"),
        "linen": ("linen", "pure linen", "flax linen"),
    },
    "style": {
        "casual": ("casual", "relaxed", "laid back"),
        "formal": ("formal", "elegant", "refined"),
        "sporty": ("sporty", "athletic", "active"),
        "vintage": ("vintage", "retro", "old school"),
        "modern": ("modern", "contemporary", "minimalist"),
    },
}
TEXT_ATTRS = tuple(SYNONYMS)

# Slots {category} {colour} {material} {style} are filled with synonyms; the
# varied orders keep a model from keying on word position.
TEMPLATES = (
    "{style} {colour} {material} {category}",
    "{colour} {category} made of {material}, {style} look",
    "{material} {category} in {colour}, perfect for {style} outfits",
    "this {category} comes in {colour}. {material}. {style} style",
    "{style} {category}, {colour}, {material}",
    "our {colour} {material} {category} with {style} vibes",
    "{category} for a {style} wardrobe in {material}, colour {colour}",
    "{material}, {colour}: the {style} {category}",
)
FILLERS = (
    "great for everyday", "new arrival", "best seller", "limited edition",
    "free shipping", "gift idea", "true to size", "easy care",
    "customer favourite", "on sale now", "must have", "for all seasons",
    "lightweight feel", "comfortable fit", "ships in two days",
    "made to last", "loved by our customers", "back in stock",
)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def describe(values: Mapping[str, str], rng: np.random.Generator) -> str:
  """One random description of an item.

  Args:
    values: attribute type -> canonical value name, for every TEXT_ATTRS key.
    rng: source of template, synonym and filler choices.
  """
  words = {a: _pick(SYNONYMS[a][values[a]], rng) for a in TEXT_ATTRS}
  text = _pick(TEMPLATES, rng).format(**words)
  # 0-2 distinct fillers, each before or after the core sentence.
  for f in rng.choice(len(FILLERS), rng.integers(0, 3), replace=False):
    filler = FILLERS[f]
    text = f"{filler}. {text}" if rng.random() < 0.5 else f"{text}, {filler}"
  return text


def describe_all(
    attrs: Mapping[str, np.ndarray], rng: np.random.Generator
) -> list[str]:
  """Descriptions for all items; attrs maps type -> (N,) value indices."""
  names = {a: tuple(SYNONYMS[a]) for a in TEXT_ATTRS}
  n = len(attrs[TEXT_ATTRS[0]])
  return [
      describe({a: names[a][attrs[a][i]] for a in TEXT_ATTRS}, rng)
      for i in range(n)
  ]


def _pick(options, rng):
  return options[rng.integers(len(options))]


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 1024
) -> tokenizers.Tokenizer:
  """Trains a BERT-style WordPiece tokenizer offline on `texts`; the same texts always give
  the same tokenizer.

  [PAD] gets id 0; encodings are wrapped as "[CLS] $A [SEP]".
  """
  texts = list(texts)
  normalizer = normalizers.BertNormalizer(lowercase=True)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  # The library's trainer numbers "##c" pieces in hash-map order, and merge ties are broken by
  # id, so the vocabulary would change from run to run (huggingface/tokenizers#1794). Seeding
  # them in sorted order fixes every id; they are reserved only while training.
  inner = sorted({c for t in texts
                  for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
                  for c in word[1:]})
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS) + ["##" + c for c in inner],
      show_progress=False)
  trained = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  trained.normalizer, trained.pre_tokenizer = normalizer, pre_tokenizer
  trained.train_from_iterator(texts, trainer=trainer)
  tok = tokenizers.Tokenizer(models.WordPiece(
      trained.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
  tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
  tok.decoder = decoders.WordPiece()
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]",
      pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
  return tok


def load_tokenizer(path: str | os.PathLike) -> tokenizers.Tokenizer:
  """Loads a tokenizer saved with `Tokenizer.save` (a tokenizer.json)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MmjaxError(f"tokenizer file not found: {path}")
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # The library raises a bare Exception on bad JSON.
    raise MmjaxError(f"cannot read tokenizer file {path}: {e}") from e
