"""The config tree: every key mmjax reads, its default, and its validation.

Config files under `configs/` start from `default_config()` and change
values; they never add keys. The tree is locked, so a typo in a config file
or a `--config.a.b=v` override is an error instead of a silently ignored key.
"""

import os
import re

import ml_collections

from mmjax.errors import MmjaxError

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
  """The full tree with defaults; see README "Config reference"."""
  c = ConfigDict()
  c.seed = 0

  c.data = ConfigDict()
  c.data.name = "synthetic"   # Or "raw": ingest config.data.raw.
  c.data.dir = ""             # "" -> generate the embedded catalog in the cache.
  c.data.cache_dir = ""       # "" -> $MMJAX_CACHE or ~/.cache/mmjax.
  c.data.synthetic = ConfigDict(dict(
      num_items=2000, num_users=1000, image_size=32,
      interactions_per_user=30, seed=0))
  # data.name="raw": a folder of tables + image files, ingested once into a
  # cached data dir (mmjax/data/raw.py; docs/raw_data.md). Paths below are
  # relative to root.
  c.data.raw = ConfigDict(dict(
      root="",
      adapter="table",            # "table" or "clothing" (one images.csv).
      items_file="items.csv",     # .tsv/.inter: tab-separated, else CSV.
      interactions_file="interactions.csv",
      image_root="",              # The items' image paths are relative to it.
      columns=ConfigDict(dict(    # "table" adapter; split used if present.
          item_id="item_id", text="text", image="image", user_id="user_id",
          split="split")),
      image_size=64,              # Resized to fit, centred on grey.
      valid_fraction=0.1,         # Per user, without a split column.
      test_fraction=0.1,
      tokenizer_vocab=4096))
  c.data.max_text_len = 32
  c.data.history_len = 20     # Train items pooled by the user tower.
  # Evaluation and inference pool each user's last N train items (0: as many
  # as data.history_len). Training samples history_len at random per step; at
  # evaluation a longer history gives a steadier mean.
  c.data.eval_history_len = 0
  c.data.mlm_prob = 0.15
  c.data.mlm_max_predictions = 4  # Per text; BERT's max_predictions_per_seq.
  c.data.augment = True
  c.data.worker_count = 0     # >0: grain worker processes (mp_prefetch).
  c.data.num_threads = 2
  c.data.prefetch = 4         # Batches read ahead.
  # data.name="mmrec": MMRec's <dir>/<inter_file> plus frozen item features
  # (mmjax/data/mmrec.py; docs/mmrec.md), trained by train/frozen_trainer.py.
  c.data.inter_file = ""      # e.g. "dbbook.inter".
  c.data.feature_files = ""   # "a.npy,b.npy": one (items, d) matrix per modality.
  c.data.feature_dir = ""     # Where feature_files are; "" -> data.dir.

  c.model = ConfigDict()
  c.model.dim = 64            # The shared (aligned) space.
  c.model.dtype = "float32"   # Compute dtype; parameters stay float32.
  c.model.remat = False       # Recompute each encoder block in the backward pass.
  # How attention runs (models/encoders/attention.py): "auto" takes the fused
  # CPU kernel (mmjax/kernels, built with the machine's C++ compiler on first
  # use) for f32 on XLA:CPU and XLA's attention elsewhere; "xla" always XLA's;
  # "cpu" insists on the kernel.
  c.model.attention_kernel = "auto"
  # Who runs the dense layers' matmuls (models/encoders/linear.py), chosen
  # the same way: "auto" the CPU kernels of mmjax/kernels/cpu_dense for f32
  # on XLA:CPU (widths that are multiples of 16), XLA's dots elsewhere.
  c.model.dense_kernel = "auto"
  c.model.text = ConfigDict(dict(
      hidden=64, layers=2, heads=4, mlp_dim=128, pooling="cls",
      dropout=0.0, type_vocab=2,
      # An HF BERT-family folder (docs/pretrained.md): its config.json sets
      # the architecture (the keys above except pooling/dropout are unused),
      # its weights are loaded and its tokenizer replaces the catalog's.
      init_from=""))
  c.model.image = ConfigDict(dict(
      kind="vit", patch_size=8, hidden=64, layers=2, heads=4, mlp_dim=128,
      pooling="cls", dropout=0.0, cnn_widths=(16, 32, 64),
      init_from=""))   # An HF ViT / CLIP(-vision) folder; kind must be "vit".
  c.model.fusion = ConfigDict(dict(
      kind="mlp", hidden=128, heads=4, layers=1, dropout=0.0))
  c.model.rec = ConfigDict(dict(
      item_id_embedding=True, user_id_embedding=True,
      history="memory",    # "memory" (item-vector bank) or "embedding".
      item_bias=True,      # A learned per-item score offset (popularity).
      temperature=0.1,     # score = cos(user, item) / temperature [+ bias].
      # After training, evaluation tries the item-ID table scaled by each of
      # these (and 1) and, per count in item_id_clusters, shrunk toward its
      # k-means centroids (eval/item_id_table.py); the best on valid
      # recall@20 is used for evaluation and inference (the checkpoint
      # keeps the table as trained). () and () leave it as trained.
      item_id_scales=(),
      item_id_clusters=(),
      # Then (eval/user_refit.py) the user vectors are refit to the final item
      # vectors by the full-softmax likelihood of each user's train items,
      # with per-user offsets L2-penalized by each of these and per-item
      # score offsets; valid recall@20 picks among them and the tower itself.
      # () keeps the tower. refit_steps: full-batch Adam steps per penalty.
      refit_penalties=(),
      refit_steps=100))

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
  # InfoNCE between the content vectors of two train items of one user (the
  # batch item and a random other item of its user; losses/recommendation.py).
  c.loss.co_item = 0.0
  c.loss.co_item_temperature = 0.3
  c.loss.orthogonality = 0.01
  c.loss.pretrain_steps = 0   # Contrastive terms only for the first N steps.
  # "ring": InfoNCE/SigLIP sharded over the mesh's data axis, never building
  # the B x B logits (losses/sharded_contrastive.py; docs/scale.md).
  c.loss.contrastive_impl = "dense"
  c.loss.contrastive_chunk = 512    # Keys per logit tile of the ring version.

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
  # NaN/Inf loss or gradient norm: the update is never applied (guard.py);
  # "skip" goes on for up to max_skipped_steps such steps, "stop" stops at once.
  c.train.nan_policy = "skip"
  c.train.max_skipped_steps = 10
  c.train.log_example_ids = False  # example_ids.p<process>.jsonl: per-step ids.
  # Train steps per call of the compiled program (a lax.scan over that many
  # stacked batches; the same updates): fewer host round trips, and on CPU
  # one mapping of the step's temporary buffers per call instead of per step.
  c.train.steps_per_call = 1
  # On CPU, which ops XLA hands to YNNPACK in the train step (comma-separated
  # kinds of config.YNN_FUSION_KINDS; "" none, "xla" XLA's own default).
  # "reduce": on the 2-core benchmark machine XLA's own (Eigen) dots ran the
  # encoders' matmuls faster than YNNPACK's (docs/benchmarking.md).
  c.train.cpu_ynn_fusions = "reduce"

  # GradCache: encoders run in accum_steps micro-batches, the loss sees the
  # whole batch (train/accumulate.py).
  c.train.accum_steps = 1
  c.train.mu_dtype = "float32"    # Adam's first moment; "bfloat16" halves it.
  # Frozen parameters (LiT): regexes re.fullmatch-ed against parameter paths
  # like "text/layers/0/attention/query/kernel", e.g. ("text/.*",). Frozen
  # ones get no update and no optimizer state; the last N blocks
  # (<tower>/layers/<i>/...) of a frozen stack are trained again.
  c.train.freeze = ()
  c.train.unfreeze_last_blocks = 0

  # The frozen-feature recommender (data.name="mmrec"; models/frozen.py).
  c.frozen = ConfigDict(dict(
      encoder="linear",     # Per modality: "identity", "linear" or "mlp".
      fusion="mean",        # Of the modalities: "mean" or "mlp" (exactly 2).
      content_weight=1.0,   # items_0 = item-ID embedding + w * content.
      init_std=0.1,         # Of the ID embeddings.
      layers=2,             # LightGCN layers on the user-item graph; 0: off.
      knn_k=10,             # Item-item kNN graph from the features; 0: off.
      item_layers=1,        # Propagation steps on the kNN graph; 0: off.
      negatives=256,        # Uniform negatives per batch, drawn on device.
      # Full ranking at evaluation: "device" (jitted matmul + top_k per
      # block), "host" (NumPy blocks + np.partition) or "auto" (host on the
      # CPU backend, where XLA's TopK is slow; device elsewhere).
      ranking="auto",
      epochs=1000, patience=20, eval_every=1))  # MMRec's early stopping.
  c.seeds = ()                # (0, 1, 2): one vmapped program; () -> seed.
  c.grid = ConfigDict(dict(key="", points=()))  # key="train.lr", points=(1e-3, 3e-3).
  c.mesh = ConfigDict(dict(data=-1, model=1))  # -1: all remaining devices.
  # Parameter sharding: ((regex, spec), ...); the first regex that matches a
  # parameter path ("text/layers/0/attention/query/kernel") gives its
  # PartitionSpec, a tuple of mesh axis names or None per dimension, e.g.
  # ((r".*kernel", ("data", None)),) is FSDP over `data`. Unmatched: replicated.
  c.mesh.rules = ()
  c.lock()
  return c


_CHOICES = {
    "data.name": ("synthetic", "raw", "mmrec"),
    "frozen.encoder": ("identity", "linear", "mlp"),
    "frozen.fusion": ("mean", "mlp"),
    "frozen.ranking": ("auto", "host", "device"),
    "data.raw.adapter": ("table", "clothing"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention_kernel": ("auto", "xla", "cpu"),
    "model.dense_kernel": ("auto", "xla", "cpu"),
    "model.text.pooling": ("cls", "mean"),
    "model.image.kind": ("vit", "cnn"),
    "model.image.pooling": ("cls", "mean"),
    "model.fusion.kind": ("mlp", "cross_attention"),
    "model.rec.history": ("memory", "embedding"),
    "train.nan_policy": ("skip", "stop"),
    "train.mu_dtype": ("float32", "bfloat16"),
    "loss.contrastive_impl": ("dense", "ring"),
}
_POSITIVE = (
    "train.steps", "train.batch_size", "train.log_every",
    "train.accum_steps", "loss.contrastive_chunk", "loss.co_item_temperature",
    "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size",
    "model.dim", "model.text.hidden", "model.text.layers", "model.text.heads",
    "model.image.hidden", "model.image.layers", "model.image.heads",
    "data.max_text_len", "data.history_len", "data.mlm_max_predictions",
    "data.synthetic.num_items", "data.synthetic.num_users",
    "data.synthetic.image_size", "data.raw.image_size",
    "data.raw.tokenizer_vocab",
    "frozen.negatives", "frozen.epochs", "frozen.eval_every",
    "model.rec.refit_steps", "train.steps_per_call",
)
_NON_NEGATIVE = (
    "loss.infonce", "loss.siglip", "loss.mmd", "loss.coral", "loss.mlm",
    "loss.softmax", "loss.bpr", "loss.bce", "loss.co_item", "loss.orthogonality",
    "loss.pretrain_steps", "train.warmup_steps", "train.weight_decay",
    "train.grad_clip", "data.worker_count", "train.max_skipped_steps",
    "data.eval_history_len",
    "train.unfreeze_last_blocks",
    "frozen.content_weight", "frozen.init_std", "frozen.layers", "frozen.knn_k",
    "frozen.item_layers", "frozen.patience",
)


YNN_FUSION_KINDS = ("dot", "eltwise", "reduce", "individual_dot",
                    "individual_convolution")


def ynn_fusion_kinds(value: str) -> tuple[str, ...] | None:
  """config.train.cpu_ynn_fusions as kinds; None for "xla" (XLA's default)."""
  if value == "xla":
    return None
  kinds = tuple(k.strip() for k in value.split(",") if k.strip())
  bad = [k for k in kinds if k not in YNN_FUSION_KINDS]
  if bad:
    raise MmjaxError(f"config.train.cpu_ynn_fusions={value!r}: {bad} not among "
                     f"{YNN_FUSION_KINDS} (or 'xla', or '' for none)")
  return kinds


def eval_history_len(data_cfg: ConfigDict) -> int:
  """How many of a user's last train items evaluation and inference pool."""
  return data_cfg.eval_history_len or data_cfg.history_len


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
  ynn_fusion_kinds(config.train.cpu_ynn_fusions)
  if not 0.0 <= config.data.mlm_prob < 1.0:
    raise MmjaxError(f"config.data.mlm_prob={config.data.mlm_prob} must be in [0, 1)")
  if config.model.rec.temperature <= 0:
    raise MmjaxError("config.model.rec.temperature must be > 0")
  scales = config.model.rec.item_id_scales
  if not all(isinstance(s, (int, float)) and s >= 0 for s in scales):
    raise MmjaxError(f"config.model.rec.item_id_scales={tuple(scales)} must be "
                     "numbers >= 0")
  clusters = config.model.rec.item_id_clusters
  if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 2
             for k in clusters):
    raise MmjaxError(f"config.model.rec.item_id_clusters={tuple(clusters)} must be "
                     "integers >= 2")
  penalties = config.model.rec.refit_penalties
  if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0
             for p in penalties):
    raise MmjaxError(f"config.model.rec.refit_penalties={tuple(penalties)} must be "
                     "numbers > 0")
  for path, value in (("item_id_scales", scales), ("item_id_clusters", clusters)):
    if value and not config.model.rec.item_id_embedding:
      raise MmjaxError(f"config.model.rec.{path} needs "
                       "config.model.rec.item_id_embedding=True")
  raw = config.data.raw
  if config.data.name == "raw" and not (
      0 < raw.valid_fraction and 0 < raw.test_fraction
      and raw.valid_fraction + raw.test_fraction < 1):
    raise MmjaxError("config.data.raw.valid_fraction and test_fraction must be "
                     "> 0 with a sum < 1")
  size = (raw.image_size if config.data.name == "raw"
          else config.data.synthetic.image_size)
  patch = config.model.image.patch_size
  if config.model.image.kind == "vit" and size % patch:
    raise MmjaxError(
        f"config.model.image.patch_size={patch} must divide the image size {size}")
  for tower in ("text", "image"):
    t = config.model[tower]
    if t.hidden % t.heads:
      raise MmjaxError(
          f"config.model.{tower}.hidden={t.hidden} must be divisible by heads={t.heads}")
  if config.train.batch_size % config.train.accum_steps:
    raise MmjaxError(
        f"config.train.accum_steps={config.train.accum_steps} must divide "
        f"config.train.batch_size={config.train.batch_size}")
  _check_sharding_rules(config.mesh.rules)
  _check_pretrained(config)


def _check_pretrained(config: ConfigDict) -> None:
  """init_from folders exist; freeze patterns are regexes."""
  for tower in ("text", "image"):
    path = config.model[tower].init_from
    if path and not os.path.isfile(os.path.join(path, "config.json")):
      raise MmjaxError(f"config.model.{tower}.init_from={path!r}: no HF "
                       "checkpoint folder (config.json) there")
  if config.model.image.init_from and config.model.image.kind != "vit":
    raise MmjaxError("config.model.image.init_from needs config.model.image.kind='vit'")
  for i, pattern in enumerate(config.train.freeze):
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise MmjaxError(f"config.train.freeze[{i}]={pattern!r}: bad regex ({e})") from None


def _check_sharding_rules(rules) -> None:
  for i, rule in enumerate(rules):
    where = f"config.mesh.rules[{i}]={rule!r}"
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2
            and isinstance(rule[0], str) and isinstance(rule[1], (tuple, list))):
      raise MmjaxError(f"{where}: expected (regex, (axis or None, ...))")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise MmjaxError(f"{where}: bad regex ({e})") from None
    for axis in rule[1]:
      names = axis if isinstance(axis, (tuple, list)) else (axis,)
      if any(a not in (None, "data", "model") for a in names):
        raise MmjaxError(f"{where}: axes must be 'data', 'model' or None")


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
