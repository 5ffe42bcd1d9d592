"""A pretrained text tower trained inside the feature-graph recommender.

The tower is a BERT-family checkpoint (e.g. all-MiniLM-L6-v2) over each
item's text. Its first blocks stay frozen and its last `blocks` are trained
by the recommender's step:

- the frozen blocks run once, before training (`prepare`): their token
  states (N, L, H) are a constant of the program;
- each step runs the trainable blocks on `tower_items` sampled items only,
  mean-pools them over the text's tokens and L2-normalizes them (what
  sentence-transformers computes, and what `mmjax features` writes);
- the graph propagation needs every item's vector, so the model keeps a
  memory of every item's latest tower output (as MoCo does for its keys).
  The step's rows replace theirs, with their gradient; the rest are the
  memory, constants to the gradient. Evaluation and serving read the
  memory.

Encoding the whole catalog through even one block every step would cost
more than the rest of the model by orders of magnitude; the memory makes a
step's tower cost that of `tower_items` items.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.models.aligners import l2_normalize
from mmjax.models.encoders import attention as attn_lib
from mmjax.models.encoders import hf_import
from mmjax.models.encoders.text import BertLayer
from mmjax.models.recommender import ItemMemory

# BertLayer arguments taken from the checkpoint's text config.
_LAYER_KEYS = ("hidden", "heads", "mlp_dim", "ln_eps", "activation")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TowerInputs:
  """Device constants of the program: the frozen blocks' output."""
  hidden: jax.Array   # (N, L, H) token states after the frozen blocks.
  mask: jax.Array     # (N, L) 1 = a real token.


@dataclasses.dataclass
class Prepared:
  """Everything the tower needs, computed once from the checkpoint."""
  layer: dict           # BertLayer keyword arguments.
  blocks: int           # Trainable blocks.
  state: nnx.State      # The pretrained tower: its trainable blocks and memory.
  inputs: TowerInputs   # Host arrays until put on devices.
  at_max_len: int       # Texts of max_len tokens or more (the longer ones are cut).

  @property
  def width(self) -> int:
    return int(self.layer["hidden"])

  @property
  def initial(self) -> np.ndarray:
    """(N, H) every item's pooled vector before training."""
    return np.asarray(self.state["memory"][...])


class TextTower(nnx.Module):
  """The trainable last blocks and the memory of every item's output."""

  def __init__(self, *, num_items: int, blocks: int, layer: dict, rngs: nnx.Rngs):
    self.layers = nnx.List([BertLayer(**layer, dropout=0.0, dtype=jnp.float32,
                                      param_dtype=jnp.float32, rngs=rngs)
                            for _ in range(blocks)])
    self.memory = ItemMemory(jnp.zeros((num_items, layer["hidden"]), jnp.float32))

  def encode(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, L, H) frozen token states -> (B, H) unit vectors."""
    x = attn_lib.apply_blocks(self.layers, hidden, mask)
    return l2_normalize(attn_lib.masked_mean(x, mask))

  def __call__(self, inputs: TowerInputs | None, rows: jax.Array | None):
    """(every item's vector (N, H), the fresh rows (R, H) or None).

    With `rows`, those items are encoded now (and get gradients); the rest,
    and everything without `rows`, come from the memory."""
    memory = jax.lax.stop_gradient(self.memory[...])
    if rows is None:
      return memory, None
    fresh = self.encode(inputs.hidden[rows], inputs.mask[rows])
    return memory.at[rows].set(fresh), fresh


def prepare(texts: list[str], model_dir: str, *, blocks: int, max_len: int,
            batch_size: int = 256) -> Prepared:
  """Tokenizes `texts` with the folder's tokenizer, runs the checkpoint's
  frozen blocks over them and the trainable ones once (the initial memory)."""
  encoder = hf_import.load_text_encoder(model_dir, pooling="mean")
  total = len(encoder.layers)
  if not 1 <= blocks <= total:
    raise MmjaxError(f"config.feature_graph.tower_blocks={blocks}: the checkpoint "
                     f"{model_dir} has {total} blocks; choose 1..{total}")
  tokens, mask = TextTokenizer(model_dir, max_len).encode_all(texts)
  lengths = mask.sum(axis=1)
  width = max(int(lengths.max()), 1)   # Padding beyond the longest text is dead weight.
  tokens, mask = tokens[:, :width], mask[:, :width]
  frozen = total - blocks
  graphdef, params = nnx.split(encoder)

  @jax.jit
  def run(params, tok, m):
    enc = nnx.merge(graphdef, params)
    x = enc.embeddings(tok, jnp.zeros_like(tok), deterministic=True, rngs=None)
    h = attn_lib.apply_blocks(enc.layers[:frozen], x, m)
    y = attn_lib.apply_blocks(enc.layers[frozen:], h, m)
    return h, l2_normalize(attn_lib.masked_mean(y, m))

  hidden, pooled = [], []
  for start in range(0, len(texts), batch_size):
    h, p = run(params, tokens[start:start + batch_size], mask[start:start + batch_size])
    hidden.append(np.asarray(h))
    pooled.append(np.asarray(p))
  kw = hf_import.text_config_from_hf(model_dir)
  layer = {k: kw[k] for k in _LAYER_KEYS if k in kw}
  tower = TextTower(num_items=len(texts), blocks=blocks, layer=layer, rngs=nnx.Rngs(0))
  tower.layers = nnx.List(list(encoder.layers[frozen:]))
  tower.memory = ItemMemory(jnp.asarray(np.concatenate(pooled)))
  state = jax.tree.map(np.asarray, nnx.state(tower))
  return Prepared(layer=layer, blocks=blocks, state=state,
                  inputs=TowerInputs(hidden=np.concatenate(hidden), mask=mask),
                  at_max_len=int((lengths >= max_len).sum()))
