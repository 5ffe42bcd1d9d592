"""HF checkpoint tensor names <-> NNX parameter paths, per architecture.

A mapping is a list of `Entry(hf_key, path, transform)`: `hf_key` is the
tensor's name in an HF `model.safetensors` as `save_pretrained` writes it
(the hub layout; transformers 5 renames some modules in memory, e.g.
`ViTModel`, so go through safetensors + `from_pretrained` on the torch side),
`path` is the parameter's path in our module (`nnx.state(module, nnx.Param)`)
and `transform` converts the torch layout to ours and back. All tables are
built here from the same few helpers, so BERT, ViT and CLIP share one
description of an attention block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """An invertible layout change: `to_nnx(to_hf(x)) == x`."""
  name: str
  to_nnx: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform('identity', lambda x: x, lambda x: x)
# torch Linear weight (out, in) <-> Flax kernel (in, out).
LINEAR = Transform('linear', lambda w: w.T, lambda k: k.T)
# torch Conv2d weight OIHW <-> Flax kernel HWIO.
CONV = Transform('conv', lambda w: w.transpose(2, 3, 1, 0),
                 lambda k: k.transpose(3, 2, 0, 1))


def leading_axes(n: int) -> Transform:
  """Adds `n` leading unit axes (CLIP stores (D,) where we keep (1, 1, D))."""
  return Transform(f'leading_axes({n})',
                   lambda x: x.reshape((1,) * n + x.shape),
                   lambda x: x.reshape(x.shape[n:]))


class Entry(NamedTuple):
  hf_key: str
  path: tuple
  transform: Transform


def prefixed(mapping: list[Entry], path: tuple = (),
             hf: str = '') -> list[Entry]:
  """The mapping of a submodule at `path` whose HF tensors start with `hf`.

  E.g. `prefixed(bert_mapping(6), ('text',), 'bert.')` maps the text tower of
  our whole model onto a `BertForMaskedLM` checkpoint.
  """
  return [Entry(hf + e.hf_key, tuple(path) + e.path, e.transform)
          for e in mapping]


def _linear(hf: str, path: tuple, bias: bool = True) -> list[Entry]:
  out = [Entry(f'{hf}.weight', path + ('kernel',), LINEAR)]
  return out + ([Entry(f'{hf}.bias', path + ('bias',), IDENTITY)]
                if bias else [])


def _conv(hf: str, path: tuple, bias: bool) -> list[Entry]:
  out = [Entry(f'{hf}.weight', path + ('kernel',), CONV)]
  return out + ([Entry(f'{hf}.bias', path + ('bias',), IDENTITY)]
                if bias else [])


def _norm(hf: str, path: tuple) -> list[Entry]:
  return [Entry(f'{hf}.weight', path + ('scale',), IDENTITY),
          Entry(f'{hf}.bias', path + ('bias',), IDENTITY)]


def _embed(hf: str, path: tuple) -> list[Entry]:
  return [Entry(f'{hf}.weight', path + ('embedding',), IDENTITY)]


@dataclasses.dataclass(frozen=True)
class BlockNames:
  """HF names of one transformer block's pieces (relative to the block)."""
  query: str
  key: str
  value: str
  attn_out: str
  mlp_in: str
  mlp_out: str
  norm_attn: str   # BERT: post-LN after attention; ViT: pre-LN before it.
  norm_mlp: str


BERT_BLOCK = BlockNames(
    query='attention.self.query', key='attention.self.key',
    value='attention.self.value', attn_out='attention.output.dense',
    mlp_in='intermediate.dense', mlp_out='output.dense',
    norm_attn='attention.output.LayerNorm', norm_mlp='output.LayerNorm')
VIT_BLOCK = BlockNames(
    query='attention.attention.query', key='attention.attention.key',
    value='attention.attention.value', attn_out='attention.output.dense',
    mlp_in='intermediate.dense', mlp_out='output.dense',
    norm_attn='layernorm_before', norm_mlp='layernorm_after')
CLIP_BLOCK = BlockNames(
    query='self_attn.q_proj', key='self_attn.k_proj', value='self_attn.v_proj',
    attn_out='self_attn.out_proj', mlp_in='mlp.fc1', mlp_out='mlp.fc2',
    norm_attn='layer_norm1', norm_mlp='layer_norm2')


def _block(hf: str, path: tuple, names: BlockNames,
           post_ln: bool) -> list[Entry]:
  """One block; BERT (post-LN) keeps its norms inside the output modules."""
  attn = path + ('attention',)
  out = []
  for name, ours in ((names.query, 'query'), (names.key, 'key'),
                     (names.value, 'value')):
    out += _linear(f'{hf}.{name}', attn + (ours,))
  out += _linear(f'{hf}.{names.attn_out}', attn + ('output', 'dense'))
  out += _linear(f'{hf}.{names.mlp_in}', path + ('intermediate', 'dense'))
  out += _linear(f'{hf}.{names.mlp_out}', path + ('output', 'dense'))
  if post_ln:
    out += _norm(f'{hf}.{names.norm_attn}', attn + ('output', 'LayerNorm'))
    out += _norm(f'{hf}.{names.norm_mlp}', path + ('output', 'LayerNorm'))
  else:
    out += _norm(f'{hf}.{names.norm_attn}', path + ('layernorm_before',))
    out += _norm(f'{hf}.{names.norm_mlp}', path + ('layernorm_after',))
  return out


def bert_mapping(layers: int, *, pooler: bool = True) -> list[Entry]:
  """`BertModel` <-> `BertEncoder` (pooler only with pooling='cls')."""
  emb = ('embeddings',)
  out = (_embed('embeddings.word_embeddings', emb + ('word_embeddings',)) +
         _embed('embeddings.position_embeddings',
                emb + ('position_embeddings',)) +
         _embed('embeddings.token_type_embeddings',
                emb + ('token_type_embeddings',)) +
         _norm('embeddings.LayerNorm', emb + ('LayerNorm',)))
  for i in range(layers):
    out += _block(f'encoder.layer.{i}', ('layers', i), BERT_BLOCK, True)
  if pooler:
    out += _linear('pooler.dense', ('pooler', 'dense'))
  return out


def mlm_head_mapping() -> list[Entry]:
  """`cls.predictions.*` <-> `MaskedLMHead` (the decoder is tied, not stored)."""
  return (_linear('cls.predictions.transform.dense', ('transform', 'dense')) +
          _norm('cls.predictions.transform.LayerNorm',
                ('transform', 'LayerNorm')) +
          [Entry('cls.predictions.bias', ('bias',), IDENTITY)])


def vit_mapping(layers: int, *, pooler: bool = False) -> list[Entry]:
  """`ViTModel` <-> `ViT` (pooler: HF's tanh pooler, `ViT(pooler=True)`)."""
  out = [Entry('embeddings.cls_token', ('cls_token',), IDENTITY),
         Entry('embeddings.position_embeddings', ('position_embeddings',),
               IDENTITY)]
  out += _conv('embeddings.patch_embeddings.projection', ('patch_embed',),
               bias=True)
  for i in range(layers):
    out += _block(f'encoder.layer.{i}', ('layers', i), VIT_BLOCK, False)
  out += _norm('layernorm', ('layernorm',))
  if pooler:
    out += _linear('pooler.dense', ('pooler',))
  return out


def clip_vision_mapping(layers: int) -> list[Entry]:
  """`CLIPVisionModel` <-> `ViT(pre_norm=True, patch_bias=False,
  norm_tokens=False)`; a `CLIPModel` checkpoint needs `hf='vision_model.'`."""
  out = [Entry('embeddings.class_embedding', ('cls_token',), leading_axes(2)),
         Entry('embeddings.position_embedding.weight',
               ('position_embeddings',), leading_axes(1))]
  out += _conv('embeddings.patch_embedding', ('patch_embed',), bias=False)
  out += _norm('pre_layrnorm', ('pre_layernorm',))
  for i in range(layers):
    out += _block(f'encoder.layers.{i}', ('layers', i), CLIP_BLOCK, False)
  out += _norm('post_layernorm', ('layernorm',))
  return out
