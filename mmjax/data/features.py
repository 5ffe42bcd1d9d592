"""Per-item feature transforms shared by the train pipeline and evaluation."""

import numpy as np
import tokenizers


class TextTokenizer:
  """A WordPiece `tokenizers.Tokenizer` padded/truncated to a fixed length."""

  def __init__(self, path: str, max_len: int):
    self.path, self.max_len = path, max_len
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.enable_truncation(max_len)
    self.pad_id = self._tok.token_to_id("[PAD]")
    self.mask_id = self._tok.token_to_id("[MASK]")
    self._tok.enable_padding(length=max_len, pad_id=self.pad_id)
    self.vocab_size = self._tok.get_vocab_size()
    self.special_ids = np.asarray(sorted(
        self._tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")))

  def __call__(self, text: str | bytes) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    enc = self._tok.encode(text)
    return (np.asarray(enc.ids, np.int32),
            np.asarray(enc.attention_mask, np.int32))

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


def normalize_images(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) * (2.0 / 255.0) - 1.0


def mask_tokens(ids: np.ndarray, attn: np.ndarray, tok: TextTokenizer,
                prob: float, rng: np.random.Generator):
  """BERT masking: of the chosen tokens 80% [MASK], 10% random, 10% kept.

  Returns (masked ids, labels) with label -1 where nothing is predicted.
  """
  can = (attn > 0) & ~np.isin(ids, tok.special_ids)
  chosen = can & (rng.random(ids.shape) < prob)
  labels = np.where(chosen, ids, -1).astype(np.int32)
  r = rng.random(ids.shape)
  out = np.where(chosen & (r < 0.8), tok.mask_id, ids)
  rand = rng.integers(0, tok.vocab_size, ids.shape)
  out = np.where(chosen & (r >= 0.8) & (r < 0.9), rand, out)
  return out.astype(np.int32), labels


def augment_image(image: np.ndarray, rng: np.random.Generator, max_shift: int = 2):
  """A random translation (edge padding) and brightness/contrast jitter."""
  h, w, _ = image.shape
  dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
  padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                  mode="edge")
  out = padded[max_shift + dy:max_shift + dy + h, max_shift + dx:max_shift + dx + w]
  scale = rng.uniform(0.9, 1.1)
  shift = rng.uniform(-0.1, 0.1)
  return np.clip(out * scale + shift, -1.0, 1.0).astype(np.float32)
