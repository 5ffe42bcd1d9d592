"""The config tree: every key mmjax reads, its default, and its validation.

Config files under `configs/` start from `default_config()` and change
values; they never add keys. The tree is locked, so a typo in a config file
or a `--config.a.b=v` override is an error instead of a silently ignored key.
"""

import ml_collections

from mmjax.errors import MmjaxError

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
  """The full tree with defaults; see README "Config reference"."""
  c = ConfigDict()
  c.seed = 0

  c.data = ConfigDict()
  c.data.name = "synthetic"   # Only the embedded catalog in this version.
  c.data.dir = ""             # "" -> generate the embedded catalog in the cache.
  c.data.cache_dir = ""       # "" -> $MMJAX_CACHE or ~/.cache/mmjax.
  c.data.synthetic = ConfigDict(dict(
      num_items=2000, num_users=1000, image_size=32,
      interactions_per_user=30, seed=0))
  c.data.max_text_len = 32
  c.data.history_len = 20     # Train items pooled by the user tower.
  c.data.mlm_prob = 0.15
  c.data.mlm_max_predictions = 4  # Per text; BERT's max_predictions_per_seq.
  c.data.augment = True
  c.data.worker_count = 0     # >0: grain worker processes (mp_prefetch).
  c.data.num_threads = 2
  c.data.prefetch = 4         # Batches read ahead.

  c.model = ConfigDict()
  c.model.dim = 64            # The shared (aligned) space.
  c.model.dtype = "float32"   # Compute dtype; parameters stay float32.
  c.model.text = ConfigDict(dict(
      hidden=64, layers=2, heads=4, mlp_dim=128, pooling="cls",
      dropout=0.0, type_vocab=2))
  c.model.image = ConfigDict(dict(
      kind="vit", patch_size=8, hidden=64, layers=2, heads=4, mlp_dim=128,
      pooling="cls", dropout=0.0, cnn_widths=(16, 32, 64)))
  c.model.fusion = ConfigDict(dict(
      kind="mlp", hidden=128, heads=4, layers=1, dropout=0.0))
  c.model.rec = ConfigDict(dict(
      item_id_embedding=True, user_id_embedding=True,
      history="memory",    # "memory" (item-vector bank) or "embedding".
      item_bias=True,      # A learned per-item score offset (popularity).
      temperature=0.1))    # score = cos(user, item) / temperature [+ bias].

  c.loss = ConfigDict()
  # Weights of the terms of the one objective; 0 switches a term off.
  c.loss.infonce = 1.0
  c.loss.siglip = 0.0
  c.loss.mmd = 0.1
  c.loss.coral = 0.1
  c.loss.mlm = 0.1
  c.loss.softmax = 1.0
  c.loss.bpr = 0.0
  c.loss.bce = 0.0
  c.loss.orthogonality = 0.01
  c.loss.pretrain_steps = 0   # Contrastive terms only for the first N steps.

  c.train = ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 256    # Global, across all devices and processes.
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 1e-4
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2
  c.train.eval_batch_size = 512

  c.mesh = ConfigDict(dict(data=-1, model=1))  # -1: all remaining devices.
  c.lock()
  return c


_CHOICES = {
    "data.name": ("synthetic",),
    "model.dtype": ("float32", "bfloat16"),
    "model.text.pooling": ("cls", "mean"),
    "model.image.kind": ("vit", "cnn"),
    "model.image.pooling": ("cls", "mean"),
    "model.fusion.kind": ("mlp", "cross_attention"),
    "model.rec.history": ("memory", "embedding"),
}
_POSITIVE = (
    "train.steps", "train.batch_size", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size",
    "model.dim", "model.text.hidden", "model.text.layers", "model.text.heads",
    "model.image.hidden", "model.image.layers", "model.image.heads",
    "data.max_text_len", "data.history_len", "data.mlm_max_predictions",
    "data.synthetic.num_items", "data.synthetic.num_users",
    "data.synthetic.image_size",
)
_NON_NEGATIVE = (
    "loss.infonce", "loss.siglip", "loss.mmd", "loss.coral", "loss.mlm",
    "loss.softmax", "loss.bpr", "loss.bce", "loss.orthogonality",
    "loss.pretrain_steps", "train.warmup_steps", "train.weight_decay",
    "train.grad_clip", "data.worker_count",
)


def get(config: ConfigDict, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def validate(config: ConfigDict) -> None:
  """Raises MmjaxError naming the first bad key."""
  for path, choices in _CHOICES.items():
    if get(config, path) not in choices:
      raise MmjaxError(
          f"config.{path}={get(config, path)!r}: choose one of {choices}")
  for path in _POSITIVE:
    if get(config, path) <= 0:
      raise MmjaxError(f"config.{path}={get(config, path)} must be > 0")
  for path in _NON_NEGATIVE:
    if get(config, path) < 0:
      raise MmjaxError(f"config.{path}={get(config, path)} must be >= 0")
  if not 0.0 <= config.data.mlm_prob < 1.0:
    raise MmjaxError(f"config.data.mlm_prob={config.data.mlm_prob} must be in [0, 1)")
  if config.model.rec.temperature <= 0:
    raise MmjaxError("config.model.rec.temperature must be > 0")
  size, patch = config.data.synthetic.image_size, config.model.image.patch_size
  if config.model.image.kind == "vit" and size % patch:
    raise MmjaxError(
        f"config.model.image.patch_size={patch} must divide the image size {size}")
  for tower in ("text", "image"):
    t = config.model[tower]
    if t.hidden % t.heads:
      raise MmjaxError(
          f"config.model.{tower}.hidden={t.hidden} must be divisible by heads={t.heads}")


def unknown_override_keys(config: ConfigDict, argv: list[str]) -> list[str]:
  """The `--config.a.b=v` overrides in argv that name no key of `config`."""
  bad = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    try:
      get(config, path)
    except (KeyError, AttributeError):
      bad.append(path)
  return bad
