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
from safetensors import safe_open

from mmjax.errors import MmjaxError
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


def read_config(path: str) -> dict:
  """`config.json` of an HF checkpoint folder."""
  file = os.path.join(path, 'config.json')
  if not os.path.isfile(file):
    raise MmjaxError(f'{path}: not an HF checkpoint folder (no config.json)')
  try:
    with open(file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise MmjaxError(f'{file}: invalid JSON ({e})') from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the folder's safetensors file(s), as numpy arrays."""
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  elif os.path.isfile(os.path.join(path, 'model.safetensors')):
    files = ['model.safetensors']
  else:
    raise MmjaxError(f'{path}: no model.safetensors (PyTorch .bin checkpoints '
                     'are not read; re-save with safe_serialization=True)')
  out = {}
  for name in files:
    with safe_open(os.path.join(path, name), framework='numpy') as f:
      for key in f.keys():
        out[key] = f.get_tensor(key)
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


def text_config_from_hf(path: str) -> dict:
  """`BertEncoder` keyword arguments for a BERT-family folder."""
  _, cfg = _arch_config(path, ('bert',))
  _require(path, cfg, 'position_embedding_type', ('absolute',))
  return dict(vocab_size=cfg['vocab_size'], hidden=cfg['hidden_size'],
              layers=cfg['num_hidden_layers'],
              heads=cfg['num_attention_heads'],
              mlp_dim=cfg['intermediate_size'],
              max_len=cfg['max_position_embeddings'],
              type_vocab=cfg.get('type_vocab_size', 2),
              ln_eps=cfg.get('layer_norm_eps', 1e-12),
              activation=cfg.get('hidden_act', 'gelu'))


def image_config_from_hf(path: str) -> dict:
  """`ViT` keyword arguments for a ViT or CLIP(-vision) folder.

  The HF ViT pooler is decided by the weights: see `load_image_encoder`.
  """
  kind, cfg = _arch_config(path, ('vit', 'clip_vision_model'))
  clip = kind == 'clip_vision_model'
  if not clip:
    _require(path, cfg, 'qkv_bias', (True,))
    _require(path, cfg, 'pooler_act', ('tanh',))
  return dict(image_size=cfg.get('image_size', 224),
              patch_size=cfg.get('patch_size', 32 if clip else 16),
              hidden=cfg.get('hidden_size', 768),
              layers=cfg.get('num_hidden_layers', 12),
              heads=cfg.get('num_attention_heads', 12),
              mlp_dim=cfg.get('intermediate_size', 3072),
              channels=cfg.get('num_channels', 3),
              ln_eps=cfg.get('layer_norm_eps', 1e-5 if clip else 1e-12),
              activation=cfg.get('hidden_act', 'quick_gelu' if clip else 'gelu'),
              pre_norm=clip, patch_bias=not clip, norm_tokens=not clip)


def image_normalization(path: str) -> tuple[tuple, tuple]:
  """Per-channel (mean, std) the checkpoint expects of pixels in [0, 1]."""
  kind, _ = _arch_config(path, ('vit', 'clip_vision_model'))
  file = os.path.join(path, 'preprocessor_config.json')
  if os.path.isfile(file):
    with open(file) as f:
      pre = json.load(f)
    if 'image_mean' in pre and 'image_std' in pre:
      return tuple(pre['image_mean']), tuple(pre['image_std'])
  if kind == 'clip_vision_model':
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)
  return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)   # HF ViTImageProcessor defaults.


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
