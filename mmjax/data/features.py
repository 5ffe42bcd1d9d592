"""Per-item feature transforms shared by the train pipeline and evaluation."""

import os

import numpy as np
import tokenizers

from mmjax.errors import MmjaxError


class TextTokenizer:
  """A `tokenizers.Tokenizer` padded/truncated to a fixed length.

  `path` is the catalog's WordPiece `tokenizer.json`, or an HF checkpoint
  folder whose tokenizer `transformers.AutoTokenizer` loads (offline).
  """

  def __init__(self, path: str, max_len: int):
    self.path, self.max_len = path, max_len
    if os.path.isdir(path):
      hf = _hf_tokenizer(path)
      self._tok = hf.backend_tokenizer
      pad, mask, specials = hf.pad_token, hf.mask_token, hf.all_special_tokens
    else:
      self._tok = tokenizers.Tokenizer.from_file(path)
      pad, mask = "[PAD]", "[MASK]"
      specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    self._tok.enable_truncation(max_len)
    self.pad_id = self._tok.token_to_id(pad)
    self.mask_id = self._tok.token_to_id(mask)
    self._tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token=pad)
    self.vocab_size = self._tok.get_vocab_size()
    self.special_ids = np.asarray(sorted(self._tok.token_to_id(t) for t in specials))

  def encode_all(self, texts) -> tuple[np.ndarray, np.ndarray]:
    encs = self._tok.encode_batch(
        [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts])
    return (np.asarray([e.ids for e in encs], np.int32),
            np.asarray([e.attention_mask for e in encs], np.int32))

  # Pickled into grain worker processes by path, not by Rust object.
  def __getstate__(self):
    return dict(path=self.path, max_len=self.max_len)

  def __setstate__(self, state):
    self.__init__(state["path"], state["max_len"])


# One of these must be in an HF folder: without them transformers builds a
# tokenizer of the special tokens alone, and every word becomes [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def _hf_tokenizer(path: str):
  """A fast tokenizer from an HF folder; never touches the network."""
  import transformers
  if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
    raise MmjaxError(f"{path}: no tokenizer files ({' or '.join(TOKENIZER_FILES)})")
  try:
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except Exception as e:  # tokenizers raises a bare Exception on bad JSON.
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise MmjaxError(f"{path}: cannot load its tokenizer ({message})") from None
  if not tok.is_fast or tok.pad_token is None or tok.mask_token is None:
    raise MmjaxError(f"{path}: the tokenizer must be a fast tokenizer with "
                     "pad and mask tokens")
  return tok


def normalize_images(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) * (2.0 / 255.0) - 1.0


def mask_tokens(ids: np.ndarray, attn: np.ndarray, tok: TextTokenizer,
                prob: float, max_predictions: int, rng: np.random.Generator):
  """BERT masking of a (B, L) batch, at most `max_predictions` per row.

  Of the chosen tokens 80% become [MASK], 10% a random token, 10% stay.
  Returns (masked ids (B, L), positions (B, P), labels (B, P)); label -1
  marks an unused prediction slot. Predicting only at gathered positions
  keeps the vocabulary projection off the other (1 - prob) of the tokens.
  """
  can = (attn > 0) & ~np.isin(ids, tok.special_ids)
  r = rng.random(ids.shape)
  key = np.where(can & (r < prob), r, np.inf)
  positions = np.argsort(key, axis=1, kind="stable")[:, :max_predictions]
  used = np.isfinite(np.take_along_axis(key, positions, 1))
  positions = np.where(used, positions, 0).astype(np.int32)
  labels = np.where(used, np.take_along_axis(ids, positions, 1), -1).astype(np.int32)
  rows = np.nonzero(used)[0]
  cols = positions[used]
  how = rng.random(len(rows))
  out = ids.copy()
  out[rows[how < 0.8], cols[how < 0.8]] = tok.mask_id
  rand = (how >= 0.8) & (how < 0.9)
  out[rows[rand], cols[rand]] = rng.integers(0, tok.vocab_size, int(rand.sum()))
  return out.astype(np.int32), positions, labels


def augment_images(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2):
  """Per-image random translation (edge padding) and brightness/contrast jitter.

  images: (B, H, W, C) float in [-1, 1].
  """
  b, h, w, _ = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
  dy, dx = rng.integers(0, 2 * m + 1, (2, b))
  # A slice per image: far cheaper than one fancy-indexed gather here.
  out = np.stack([padded[k, y:y + h, x:x + w] for k, (y, x) in enumerate(zip(dy, dx))])
  scale = rng.uniform(0.9, 1.1, (b, 1, 1, 1)).astype(np.float32)
  shift = rng.uniform(-0.1, 0.1, (b, 1, 1, 1)).astype(np.float32)
  return np.clip(out * scale + shift, -1.0, 1.0)


# normalize_images of every uint8 level: a pixel map becomes a table lookup.
_LEVELS = normalize_images(np.arange(256, dtype=np.uint8))


def model_images(images: np.ndarray, rng: np.random.Generator | None,
                 max_shift: int = 2) -> np.ndarray:
  """uint8 (B, H, W, 3) -> the model's float32 images: `normalize_images`,
  then with an rng `augment_images` (the same draws, the same values).

  Shifts the uint8 pixels (a quarter of the bytes) and folds normalization,
  brightness/contrast and clipping into one 256-entry table per image, so
  each pixel is read and written once in float32; edge padding and a
  per-pixel map commute, so the values are exactly those of the two steps.
  """
  if rng is None:
    return _LEVELS.take(images)
  b, h, w, _ = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
  dy, dx = rng.integers(0, 2 * m + 1, (2, b))
  scale = rng.uniform(0.9, 1.1, (b, 1)).astype(np.float32)
  shift = rng.uniform(-0.1, 0.1, (b, 1)).astype(np.float32)
  tables = np.clip(_LEVELS[None, :] * scale + shift, -1.0, 1.0)
  out = np.empty(images.shape, np.float32)
  for k, (y, x) in enumerate(zip(dy, dx)):
    np.take(tables[k], padded[k, y:y + h, x:x + w], out=out[k])
  return out
