"""Tiny HF checkpoint folders (config.json + model.safetensors + tokenizer),
written without torch: random weights of our own modules, exported through
hf_import, so `AutoModel` / `AutoTokenizer` and `init_from` can read them."""

import os

import numpy as np
import transformers
from flax import nnx
from safetensors.numpy import save_file

from mmjax.models.encoders import hf_import
from mmjax.models.encoders.text import BertEncoder
from mmjax.models.encoders.vision import ViT

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _perturbed(state: dict, seed: int) -> dict:
  # Non-trivial LayerNorm scales/biases, so a swapped pair cannot pass.
  rng = np.random.default_rng(seed)
  return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
          for k, v in state.items()}


def save_tiny_bert(path, words, *, layers=2, hidden=16, heads=2, max_len=40,
                   seed=0) -> str:
  """A BertModel folder (with pooler) whose WordPiece vocab is `words`."""
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  vocab = SPECIALS + [w for w in dict.fromkeys(words) if w not in SPECIALS]
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
  transformers.BertTokenizerFast(os.path.join(path, "vocab.txt")).save_pretrained(path)
  transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=2 * hidden,
      max_position_embeddings=max_len).save_pretrained(path)
  model = BertEncoder(vocab_size=len(vocab), hidden=hidden, layers=layers,
                      heads=heads, mlp_dim=2 * hidden, max_len=max_len,
                      rngs=nnx.Rngs(seed))
  state = hf_import.export_state_dict(model, hf_import.bert_mapping(layers))
  save_file(_perturbed(state, seed), os.path.join(path, "model.safetensors"))
  return path


def save_tiny_vit(path, *, image_size=16, patch=8, layers=1, hidden=16, heads=2,
                  seed=0) -> str:
  """A ViTModel folder with its tanh pooler."""
  path = os.fspath(path)
  transformers.ViTConfig(
      image_size=image_size, patch_size=patch, hidden_size=hidden,
      num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=2 * hidden).save_pretrained(path)
  model = ViT(image_size=image_size, patch_size=patch, hidden=hidden,
              layers=layers, heads=heads, mlp_dim=2 * hidden, pooler=True,
              ln_eps=1e-12, rngs=nnx.Rngs(seed))
  state = hf_import.export_state_dict(model, hf_import.vit_mapping(layers, pooler=True))
  save_file(_perturbed(state, seed), os.path.join(path, "model.safetensors"))
  return path


def catalog_words(data_dir) -> list[str]:
  """The tiny catalog's WordPiece vocabulary (so its texts tokenize well)."""
  import tokenizers
  from mmjax.data import store
  vocab = tokenizers.Tokenizer.from_file(store.tokenizer_path(data_dir)).get_vocab()
  return sorted(vocab, key=vocab.get)


def torch_sentence_embeddings(model_dir, texts, max_length=64):
  """The reference: transformers AutoModel + torch, masked mean, L2-normalized
  (how the peers' DBbook features were made)."""
  import torch
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  batch = tok(list(texts), padding=True, truncation=True, max_length=max_length,
              return_tensors="pt")
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  with torch.no_grad():
    last = model(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  return torch.nn.functional.normalize((last * m).sum(1) / m.sum(1), dim=-1).numpy()
