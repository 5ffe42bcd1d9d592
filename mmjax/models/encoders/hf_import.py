"""Offline import/export of HF checkpoints into our NNX encoders.

A checkpoint is a local folder as `save_pretrained` writes it: `config.json`
plus `model.safetensors` (or shards with `model.safetensors.index.json`).
Supported: BERT-family `model_type='bert'` (BERT, MiniLM, e.g.
all-MiniLM-L6-v2) -> `BertEncoder` (+ `MaskedLMHead` from `cls.predictions`),
`'vit'` -> `ViT`, `'clip_vision_model'` / `'clip'` (its vision tower) -> `ViT`
in CLIP mode. The tensor tables live in `hf_mapping`; this module reads
folders, checks them strictly and moves the arrays.

    encoder = load_text_encoder(dir, pooling='mean')   # all-MiniLM-L6-v2
    sd = export_state_dict(encoder, bert_mapping(6, pooler=False))
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from mmjax.data import safe_paths
from mmjax.errors import MmjaxError
from mmjax.models.encoders.attention import activation_fn
from mmjax.models.encoders.hf_mapping import (Entry, bert_mapping,
                                              clip_vision_mapping,
                                              mlm_head_mapping, vit_mapping)
from mmjax.models.encoders.text import BertEncoder, MaskedLMHead
from mmjax.models.encoders.vision import ViT

__all__ = [
    'Entry', 'bert_mapping', 'mlm_head_mapping', 'vit_mapping',
    'clip_vision_mapping', 'load_state_dict', 'export_state_dict',
    'read_config', 'read_state_dict', 'text_config_from_hf',
    'image_config_from_hf', 'image_normalization', 'load_text_encoder',
    'load_mlm_head', 'load_image_encoder'
]

_SHOW = 8   # Names listed per kind of problem in one error message.


def _names(keys) -> str:
  keys = sorted(keys)
  more = f' (+{len(keys) - _SHOW} more)' if len(keys) > _SHOW else ''
  return ', '.join(map(str, keys[:_SHOW])) + more


def load_state_dict(module: nnx.Module, state_dict: dict, mapping: list[Entry],
                    *, source: str = 'state_dict') -> None:
  """Fills `module`'s parameters from HF-named, torch-layout arrays.

  Strict: every mapped tensor must be present with the right shape, and
  `state_dict` may hold nothing else; otherwise one MmjaxError names every
  missing, unexpected and mis-shaped tensor (`source` names the checkpoint).
  """
  params = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  wanted = {e.hf_key for e in mapping}
  problems = []
  unmapped = [e.path for e in mapping if e.path not in params]
  if unmapped:   # A mapping that does not fit the module is a caller bug.
    problems.append('the module has no parameter '
                    + _names('/'.join(map(str, p)) for p in unmapped))
  missing = wanted - set(state_dict)
  if missing:
    problems.append(f'missing tensors: {_names(missing)}')
  extra = set(state_dict) - wanted
  if extra:
    problems.append(f'unexpected tensors: {_names(extra)}')
  new, bad_shapes = {}, []
  for e in mapping:
    if e.hf_key not in state_dict or e.path not in params:
      continue
    var = params[e.path]
    got = np.asarray(state_dict[e.hf_key])
    expected = e.transform.to_hf(np.empty(var.shape, np.float32)).shape
    if got.shape != expected:
      bad_shapes.append(f'{e.hf_key} has shape {got.shape}, expected {expected}')
      continue
    new[e.path] = jnp.asarray(e.transform.to_nnx(got), var.dtype)
  if bad_shapes:
    problems.append('mis-shaped tensors: ' + _names(bad_shapes))
  if problems:
    raise MmjaxError(f'{source}: ' + '; '.join(problems))
  nnx.update(module, nnx.from_flat_state(new))


def export_state_dict(module: nnx.Module,
                      mapping: list[Entry]) -> dict[str, np.ndarray]:
  """The inverse of `load_state_dict`: HF names, torch layout, numpy."""
  params = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  unmapped = [e.path for e in mapping if e.path not in params]
  if unmapped:
    raise MmjaxError('the module has no parameter '
                     + _names('/'.join(map(str, p)) for p in unmapped))
  return {e.hf_key: np.ascontiguousarray(
      e.transform.to_hf(np.asarray(params[e.path][...]))) for e in mapping}


# ---------------------------------------------------------------- folders


def _read_json_object(file: str) -> dict:
  try:
    with open(file, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise MmjaxError(f'{file}: invalid JSON ({e})') from None
  if not isinstance(value, dict):
    raise MmjaxError(f'{file}: expected a JSON object')
  return value


def read_config(path: str) -> dict:
  """`config.json` of an HF checkpoint folder."""
  file = os.path.join(path, 'config.json')
  if not os.path.isfile(file):
    raise MmjaxError(f'{path}: not an HF checkpoint folder (no config.json)')
  return _read_json_object(file)


def weight_files(path: str) -> list[str]:
  """The folder's safetensors file(s): the shards its index names, or
  `model.safetensors`."""
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(index):
    weight_map = _read_json_object(index).get('weight_map')
    if (not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(v, str) for v in weight_map.values())):
      raise MmjaxError(f'{index}: expected "weight_map": {{tensor: file, ...}}')
    names = sorted(set(weight_map.values()))
    # A shard the index names outside the folder is refused, never opened.
    files = [safe_paths.require_inside(path, n, index) for n in names]
    for file in files:
      if not os.path.isfile(file):
        raise MmjaxError(f'{index}: names {file}, which does not exist')
    return files
  if os.path.isfile(os.path.join(path, 'model.safetensors')):
    return [os.path.join(path, 'model.safetensors')]
  raise MmjaxError(f'{path}: no model.safetensors (PyTorch .bin checkpoints '
                   'are not read; re-save with safe_serialization=True)')


def _open_weights(file: str):
  try:
    return safe_open(file, framework='numpy')
  except (OSError, SafetensorError) as e:
    raise MmjaxError(f'{file}: not a readable safetensors file ({e})') from None


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Every tensor's shape, from the safetensors headers alone (which
  safe_open checks against the file's size: a truncated file fails here)."""
  out = {}
  for file in weight_files(path):
    with _open_weights(file) as f:
      for key in f.keys():
        out[key] = tuple(f.get_slice(key).get_shape())
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the folder's safetensors file(s), as numpy arrays."""
  out = {}
  for file in weight_files(path):
    with _open_weights(file) as f:
      for key in f.keys():
        try:
          out[key] = f.get_tensor(key)
        except SafetensorError as e:
          raise MmjaxError(f'{file}: cannot read tensor {key!r} ({e})') from None
  return out


@dataclasses.dataclass(frozen=True)
class _Arch:
  prefix: str    # Base-model prefix in task checkpoints (BertForMaskedLM...).
  ignored: str   # Tensors that are never ours: buffers, other tasks' heads.


_ARCHS = {
    'bert': _Arch('bert.', r'(.*\.)?position_ids|cls\.seq_relationship\..*|'
                  r'cls\.predictions\.decoder\..*|classifier\..*|qa_outputs\..*'),
    'vit': _Arch('vit.', r'(.*\.)?position_ids|classifier\..*'),
    'clip_vision_model': _Arch(
        'vision_model.', r'(.*\.)?position_ids|text_model\..*|logit_scale|'
        r'(text|visual)_projection\..*'),
}


def _arch_config(path: str, allowed: tuple[str, ...]) -> tuple[str, dict]:
  """(architecture, config) of a folder; a CLIPModel yields its vision part."""
  cfg = read_config(path)
  kind = cfg.get('model_type')
  if kind == 'clip' and 'clip_vision_model' in allowed:
    kind, cfg = 'clip_vision_model', cfg.get('vision_config', {})
    if not isinstance(cfg, dict):
      raise MmjaxError(f'{path}/config.json: vision_config is not an object')
  if kind not in allowed:
    raise MmjaxError(f'{path}/config.json: model_type={kind!r} is not '
                     f'supported here; supported: {allowed} (or clip)')
  return kind, cfg


def _own_tensors(path: str, kind: str) -> dict[str, np.ndarray]:
  """The folder's tensors with the base-model prefix stripped and the
  never-ours tensors (buffers, other heads) dropped."""
  arch = _ARCHS[kind]
  out = {}
  for key, value in read_state_dict(path).items():
    key = key.removeprefix(arch.prefix)
    if not re.fullmatch(arch.ignored, key):
      out[key] = value
  return out


def _require(path: str, cfg: dict, key: str, allowed) -> None:
  if cfg.get(key, allowed[0]) not in allowed:
    raise MmjaxError(f'{path}/config.json: {key}={cfg[key]!r} is not supported '
                     f'(only {allowed})')


def _size(path: str, cfg: dict, key: str, default=None) -> int:
  """A positive integer of config.json; one line naming the file if not."""
  value = cfg.get(key, default)
  if value is None:
    raise MmjaxError(f'{path}/config.json: no {key!r}')
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise MmjaxError(f'{path}/config.json: {key}={value!r} is not a positive '
                     'integer')
  return value


def _eps(path: str, cfg: dict, default: float) -> float:
  value = cfg.get('layer_norm_eps', default)
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0 < value < 1):
    raise MmjaxError(f'{path}/config.json: layer_norm_eps={value!r} is not a '
                     'number in (0, 1)')
  return value


def _activation(path: str, cfg: dict, default: str) -> str:
  name = cfg.get('hidden_act', default)
  try:
    activation_fn(name)
  except (TypeError, ValueError) as e:   # TypeError: not even a string.
    raise MmjaxError(f'{path}/config.json: hidden_act={name!r} is not '
                     f'supported ({e})') from None
  return name


def _check_heads(path: str, hidden: int, heads: int) -> None:
  if hidden % heads:
    raise MmjaxError(f'{path}/config.json: hidden_size={hidden} is not a '
                     f'multiple of num_attention_heads={heads}')


def text_config_from_hf(path: str) -> dict:
  """`BertEncoder` keyword arguments for a BERT-family folder."""
  _, cfg = _arch_config(path, ('bert',))
  _require(path, cfg, 'position_embedding_type', ('absolute',))
  size = lambda key, default=None: _size(path, cfg, key, default)
  _check_heads(path, size('hidden_size'), size('num_attention_heads'))
  return dict(vocab_size=size('vocab_size'), hidden=size('hidden_size'),
              layers=size('num_hidden_layers'),
              heads=size('num_attention_heads'),
              mlp_dim=size('intermediate_size'),
              max_len=size('max_position_embeddings'),
              type_vocab=size('type_vocab_size', 2),
              ln_eps=_eps(path, cfg, 1e-12),
              activation=_activation(path, cfg, 'gelu'))


def image_config_from_hf(path: str) -> dict:
  """`ViT` keyword arguments for a ViT or CLIP(-vision) folder.

  The HF ViT pooler is decided by the weights: see `load_image_encoder`.
  """
  kind, cfg = _arch_config(path, ('vit', 'clip_vision_model'))
  clip = kind == 'clip_vision_model'
  if not clip:
    _require(path, cfg, 'qkv_bias', (True,))
    _require(path, cfg, 'pooler_act', ('tanh',))
  size = lambda key, default: _size(path, cfg, key, default)
  _check_heads(path, size('hidden_size', 768), size('num_attention_heads', 12))
  image, patch = size('image_size', 224), size('patch_size', 32 if clip else 16)
  if image % patch:
    raise MmjaxError(f'{path}/config.json: image_size={image} is not a '
                     f'multiple of patch_size={patch}')
  return dict(image_size=size('image_size', 224),
              patch_size=size('patch_size', 32 if clip else 16),
              hidden=size('hidden_size', 768),
              layers=size('num_hidden_layers', 12),
              heads=size('num_attention_heads', 12),
              mlp_dim=size('intermediate_size', 3072),
              channels=size('num_channels', 3),
              ln_eps=_eps(path, cfg, 1e-5 if clip else 1e-12),
              activation=_activation(path, cfg, 'quick_gelu' if clip else 'gelu'),
              pre_norm=clip, patch_bias=not clip, norm_tokens=not clip)


def image_normalization(path: str) -> tuple[tuple, tuple]:
  """Per-channel (mean, std) the checkpoint expects of pixels in [0, 1]."""
  kind, _ = _arch_config(path, ('vit', 'clip_vision_model'))
  file = os.path.join(path, 'preprocessor_config.json')
  if os.path.isfile(file):
    pre = _read_json_object(file)
    if 'image_mean' in pre and 'image_std' in pre:
      return tuple(pre['image_mean']), tuple(pre['image_std'])
  if kind == 'clip_vision_model':
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)
  return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)   # HF ViTImageProcessor defaults.


def check_text_folder(path: str) -> dict:
  """What `load_text_encoder` reads, checked without building anything:
  config.json, every weight file's header, and the word-embedding table's
  rows against config.json's vocab_size. Returns the architecture."""
  arch = text_config_from_hf(path)
  shapes = {k.removeprefix(_ARCHS['bert'].prefix): v
            for k, v in tensor_shapes(path).items()}
  table = shapes.get('embeddings.word_embeddings.weight')
  if table is None:
    raise MmjaxError(f'{path}: no embeddings.word_embeddings.weight tensor')
  if table[0] != arch['vocab_size']:
    raise MmjaxError(f'{path}: the word-embedding table has {table[0]} rows, '
                     f"config.json's vocab_size is {arch['vocab_size']}")
  return arch


def check_image_folder(path: str) -> dict:
  """What `load_image_encoder` reads, checked without building anything:
  config.json and every weight file's header. Returns the architecture."""
  arch = image_config_from_hf(path)
  tensor_shapes(path)
  return arch


def load_text_encoder(path: str, *, pooling: str = 'cls',
                      rngs: nnx.Rngs | None = None, **options) -> BertEncoder:
  """A `BertEncoder` with the folder's architecture and weights.

  `pooling='cls'` needs the checkpoint's pooler; with 'mean' a stored pooler
  is not used. An MLM head (`cls.predictions.*`) goes to `load_mlm_head`.
  `options` are the non-architecture arguments (dropout, dtype, remat).
  """
  kw = text_config_from_hf(path)
  state = {k: v for k, v in _own_tensors(path, 'bert').items()
           if not k.startswith('cls.predictions.')
           and not (pooling == 'mean' and k.startswith('pooler.'))}
  # Initial values are overwritten; only the structure matters.
  module = BertEncoder(**kw, pooling=pooling, **options,
                       rngs=rngs or nnx.Rngs(0))
  load_state_dict(module, state, bert_mapping(kw['layers'],
                                              pooler=pooling == 'cls'),
                  source=path)
  return module


def load_mlm_head(path: str, *, dtype=jnp.float32,
                  rngs: nnx.Rngs | None = None) -> MaskedLMHead | None:
  """The folder's `cls.predictions` head, or None when it has none."""
  kw = text_config_from_hf(path)
  state = {k: v for k, v in _own_tensors(path, 'bert').items()
           if k.startswith('cls.predictions.')}
  if not state:
    return None
  module = MaskedLMHead(kw['hidden'], kw['vocab_size'], ln_eps=kw['ln_eps'],
                        dtype=dtype, rngs=rngs or nnx.Rngs(0))
  load_state_dict(module, state, mlm_head_mapping(), source=path)
  return module


def load_image_encoder(path: str, *, pooling: str = 'cls',
                       rngs: nnx.Rngs | None = None, **options) -> ViT:
  """A `ViT` with the folder's architecture and weights.

  A ViT checkpoint's `pooler.dense` (ViTModel saves one by default) makes
  `pooled` HF's `pooler_output`; without one `pooled` is the final-LN'd CLS.
  `options` are the non-architecture arguments (dropout, dtype, remat).
  """
  kind, _ = _arch_config(path, ('vit', 'clip_vision_model'))
  kw = image_config_from_hf(path)
  state = _own_tensors(path, kind)
  pooler = kind == 'vit' and 'pooler.dense.weight' in state
  if kind == 'vit':
    mapping = vit_mapping(kw['layers'], pooler=pooler)
  else:
    mapping = clip_vision_mapping(kw['layers'])
  module = ViT(**kw, pooler=pooler, pooling=pooling, **options,
               rngs=rngs or nnx.Rngs(0))
  load_state_dict(module, state, mapping, source=path)
  return module
