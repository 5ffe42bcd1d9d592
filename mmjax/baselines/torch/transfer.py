"""Weight transfer between mmjax's NNX model and the PyTorch baseline, both ways.

Encoders: the HF tables of `mmjax.models.encoders.hf_mapping` give the hub
(safetensors) names; transformers 5 renames some modules in memory (ViTModel),
so the torch side goes through `save_pretrained` / `from_pretrained`, which
convert between the two layouts.

Everything else: the torch modules (heads.py) carry the nnx attribute names,
so a torch name is the nnx path with the leaf renamed (`kernel`, `scale`,
`embedding` -> `weight`) and a kernel in torch layout.
"""

import os
import tempfile

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from safetensors.numpy import save_file

from mmjax.models.encoders.hf_import import (export_state_dict, load_state_dict,
                                             read_state_dict)
from mmjax.models.encoders.hf_mapping import CONV, IDENTITY, LINEAR, bert_mapping, vit_mapping

ENCODERS = ("text", "image")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def encoder_mapping(jax_model, tower: str):
  module = getattr(jax_model, tower)
  mapping = bert_mapping if tower == "text" else vit_mapping
  return mapping(len(module.layers), pooler=module.pooler is not None)


def head_name(path: tuple) -> str:
  """The torch state_dict key of the non-encoder nnx variable at `path`."""
  *head, leaf = [str(p) for p in path]
  return ".".join(head + [_LEAF.get(leaf, leaf)])


def _layout(path: tuple, ndim: int):
  if path[-1] != "kernel":
    return IDENTITY
  return LINEAR if ndim == 2 else CONV


def _head_variables(jax_model):
  """(path, variable) of every non-encoder variable: params and item memory."""
  return [(p, v) for p, v in nnx.to_flat_state(nnx.state(jax_model)) if p[0] not in ENCODERS]


def _init_kwargs(hf_module) -> dict:
  return dict(add_pooling_layer=getattr(hf_module, "pooler", None) is not None)


def _load_hub(hf_module, hub: dict) -> None:
  """Loads hub-named numpy tensors into a transformers model, strictly."""
  with tempfile.TemporaryDirectory() as d:
    hf_module.config.save_pretrained(d)
    save_file(hub, os.path.join(d, "model.safetensors"))
    loaded, info = type(hf_module).from_pretrained(
        d, config=hf_module.config, output_loading_info=True, **_init_kwargs(hf_module))
  bad = {k: v for k, v in info.items() if v}
  if bad:
    raise KeyError(f"{type(hf_module).__name__}: {bad}")
  hf_module.load_state_dict(loaded.state_dict())


def _save_hub(hf_module) -> dict:
  with tempfile.TemporaryDirectory() as d:
    hf_module.save_pretrained(d)
    return read_state_dict(d)


@torch.no_grad()
def to_torch(jax_model, torch_model: torch.nn.Module) -> None:
  """Copies every weight (and the item memory) of `jax_model` into `torch_model`."""
  for tower in ENCODERS:
    _load_hub(getattr(torch_model, tower),
              export_state_dict(getattr(jax_model, tower), encoder_mapping(jax_model, tower)))
  target = {k: v for k, v in torch_model.state_dict().items()
            if k.split(".")[0] not in ENCODERS}
  done = set()
  for path, var in _head_variables(jax_model):
    name, value = head_name(path), np.asarray(var[...])
    if name not in target:
      raise KeyError(f"nnx {'.'.join(map(str, path))} -> torch {name}: no such entry")
    target[name].copy_(torch.from_numpy(np.array(_layout(path, value.ndim).to_hf(value))))
    done.add(name)
  if set(target) - done:
    raise KeyError(f"torch entries with no JAX source: {sorted(set(target) - done)}")


def to_jax(torch_model: torch.nn.Module, jax_model) -> None:
  """Copies every weight (and the item memory) of `torch_model` into `jax_model`."""
  for tower in ENCODERS:
    mapping = encoder_mapping(jax_model, tower)
    hub = _save_hub(getattr(torch_model, tower))
    load_state_dict(getattr(jax_model, tower), {e.hf_key: hub[e.hf_key] for e in mapping},
                    mapping, source=f"torch {tower}")
  source = torch_model.state_dict()
  new = {}
  for path, var in _head_variables(jax_model):
    # A copy: .numpy() shares torch's memory, which the next torch step updates.
    value = source[head_name(path)].detach().cpu().numpy().copy()
    new[path] = jnp.asarray(_layout(path, value.ndim).to_nnx(value), var.dtype)
  nnx.update(jax_model, nnx.from_flat_state(new))
