"""Every config key: its default, type, allowed values, bounds and meaning.

One `Key` per leaf of the config tree, in tree order. `default_config()`
builds the locked ConfigDict from these, `checks.validate()` checks every
value against them and `doc.markdown()` writes docs/config.md from them.

`paths` says which data paths (`data.name`) read a key: a key set to a
non-default value on a path that ignores it is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SYNTHETIC, RAW, MMREC = "synthetic", "raw", "mmrec"
END_TO_END = (SYNTHETIC, RAW)   # The multimodal model, trained end to end.
FEATURE_GRAPH = (MMREC,)        # The graph recommender on fixed item features.
ALL = END_TO_END + FEATURE_GRAPH

PATH_NAMES = {SYNTHETIC: "the end-to-end model on the embedded catalog",
              RAW: "the end-to-end model on a raw folder",
              MMREC: "the feature-graph recommender"}

# The hyper-parameters a feature-graph search (`grid.axes`) varies within one
# program: they are traced per run, so one compile trains every value.
GRID_KEYS = ("train.lr", "train.weight_decay", "model.rec.temperature",
             "loss.softmax", "loss.bpr", "loss.infonce",
             "feature_graph.content_weight", "feature_graph.tower_lr")

# What a resumed run must share with its checkpoint's run, unless
# `train.allow_resume_change` names it ("data": the catalog).
RESUME_CHANGES = ("train.batch_size", "seed", "data")


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. `bounds` ("> 0", ">= 0", "[0, 1)", "[0, 4 * cpus]")
  and `of` (the element type) apply to each element of a tuple key; `cpus`
  is the machine's CPU count. Every number must also be finite, and every
  integer fit 32 bits. `nonempty`: a tuple key that may not be ()."""
  path: str
  default: Any
  doc: str
  choices: tuple = ()
  bounds: str = ""
  of: type | None = None
  paths: tuple[str, ...] = ALL
  required_on: tuple[str, ...] = ()   # Data paths on which "" is an error.
  nonempty: bool = False

  @property
  def type(self) -> type:
    return type(self.default)


K = Key
_POS, _NONNEG = "> 0", ">= 0"
_SEED = "[0, 2147483647]"
_FRACTION = "[0, 1)"   # Dropouts and probabilities.
_E2E_WEIGHT = dict(bounds=_NONNEG, paths=END_TO_END)

KEYS: tuple[Key, ...] = (
    K("seed", 0, "Seed of the parameters, the data order and dropout.",
      bounds=_SEED),
    K("seeds", (), "Feature graph: seeds trained together as one vmapped program, e.g. "
      "(0, 1, 2); (): seed. With grid.axes: the seeds the chosen point is "
      "rerun with.", of=int, bounds=_SEED, paths=FEATURE_GRAPH),

    # --- data ---------------------------------------------------------------
    K("data.name", "synthetic", "The data path: the embedded catalog, a raw "
      "folder (docs/raw_data.md) or MMRec-format data with fixed item "
      "features (docs/mmrec.md).", choices=ALL),
    K("data.dir", "", "A prepared data dir; \"\" generates the embedded "
      "catalog in the cache (synthetic). The MMRec folder for mmrec.",
      paths=(SYNTHETIC, MMREC), required_on=(MMREC,)),
    K("data.cache_dir", "", "Where generated and ingested data go; \"\": "
      "$MMJAX_CACHE or ~/.cache/mmjax.", paths=END_TO_END),
    K("data.synthetic.num_items", 2000, "Items of the embedded catalog.",
      bounds=_POS, paths=(SYNTHETIC,)),
    K("data.synthetic.num_users", 1000, "Users of the embedded catalog.",
      bounds=_POS, paths=(SYNTHETIC,)),
    K("data.synthetic.image_size", 32, "Side of the catalog's images (px).",
      bounds=">= 8", paths=(SYNTHETIC,)),
    K("data.synthetic.interactions_per_user", 30, "Interactions drawn per "
      "user (mean); at most num_items // 2.", bounds=">= 3",
      paths=(SYNTHETIC,)),
    K("data.synthetic.seed", 0, "Seed of the catalog.", bounds=_SEED,
      paths=(SYNTHETIC,)),
    K("data.synthetic.impressions", 0, "Labelled impressions shown per user "
      "(click or not, for loss.pointwise); 0: 20 where loss.pointwise > 0, "
      "else none.", bounds=">= 0", paths=(SYNTHETIC,)),
    K("data.raw.root", "", "The raw folder; the paths below are relative to "
      "it. Ingested once into the cache.", paths=(RAW,), required_on=(RAW,)),
    K("data.raw.adapter", "table", "\"table\": an items and an interactions "
      "table; \"clothing\": one images.csv.", choices=("table", "clothing"),
      paths=(RAW,)),
    K("data.raw.items_file", "items.csv", "Items table (.tsv/.inter: "
      "tab-separated, else CSV).", paths=(RAW,)),
    K("data.raw.interactions_file", "interactions.csv", "Interactions table.",
      paths=(RAW,)),
    K("data.raw.image_root", "", "The items' image paths are relative to it.",
      paths=(RAW,)),
    K("data.raw.columns.item_id", "item_id", "Items/interactions column: the "
      "item id.", paths=(RAW,)),
    K("data.raw.columns.text", "text", "Items column: the text.", paths=(RAW,)),
    K("data.raw.columns.image", "image", "Items column: the image path.",
      paths=(RAW,)),
    K("data.raw.columns.user_id", "user_id", "Interactions column: the user "
      "id.", paths=(RAW,)),
    K("data.raw.columns.split", "split", "Interactions column: train/valid/"
      "test, used if present.", paths=(RAW,)),
    K("data.raw.columns.label", "", "Interactions column: an explicit label "
      "for loss.pointwise, 0/1 clicks (0: an impression, no positive) or "
      "ratings; \"\": none.", paths=(RAW,)),
    K("data.raw.image_size", 64, "The model's image side: images are resized "
      "to fit where they are read, centred on grey.", bounds=_POS, paths=(RAW,)),
    K("data.raw.max_stored_side", 0, "The data dir keeps each image file as "
      "it is, or downscaled to this longest side when larger; 0: as it is.",
      bounds=_NONNEG, paths=(RAW,)),
    K("data.raw.valid_fraction", 0.1, "Per user, without a split column.",
      bounds="(0, 1)", paths=(RAW,)),
    K("data.raw.test_fraction", 0.1, "Per user, without a split column.",
      bounds="(0, 1)", paths=(RAW,)),
    K("data.raw.tokenizer_vocab", 4096, "WordPiece vocabulary trained on the "
      "items' texts.", bounds=_POS, paths=(RAW,)),
    K("data.raw.image_formats", ("JPEG", "PNG", "WEBP"), "The only image "
      "formats opened (by content, whatever the extension); other files are "
      "counted as unsupported.", choices=("JPEG", "PNG", "WEBP", "GIF", "BMP",
                                          "TIFF"), of=str, nonempty=True,
      paths=(RAW,)),
    K("data.raw.max_image_pixels", 4096 * 4096, "Images whose header declares "
      "more pixels are counted as too large, never decoded.",
      bounds="[1, 89478485]", paths=(RAW,)),
    K("data.raw.absolute_image_root", "", "Absolute image paths in the items "
      "table are read only inside this folder; \"\": refused. Relative ones "
      "must stay inside image_root, after symlinks.", paths=(RAW,)),
    K("data.max_text_len", 32, "Tokens per text, [CLS] and [SEP] included; "
      "with model.text.init_from at most its max_position_embeddings.",
      bounds="[2, 512]", paths=END_TO_END),
    K("data.history_len", 20, "Train items the user tower pools per step, "
      "sampled at random.", bounds=_POS, paths=END_TO_END),
    K("data.eval_history_len", 0, "Evaluation and inference pool each user's "
      "last N train items (a longer history gives a steadier mean); 0: "
      "data.history_len.", bounds=_NONNEG, paths=END_TO_END),
    K("data.mlm_prob", 0.15, "Masked-token probability of the MLM term.",
      bounds=_FRACTION, paths=END_TO_END),
    K("data.mlm_max_predictions", 4, "Masked tokens per text (BERT's "
      "max_predictions_per_seq).", bounds=_POS, paths=END_TO_END),
    K("data.augment", True, "Random image augmentation in training.",
      paths=END_TO_END),
    K("data.item_ssl_fraction", 0.0, "Share of each train batch's rows drawn "
      "from every catalog item (those without train interactions too): only "
      "the self-supervised and alignment terms see them.", bounds=_FRACTION,
      paths=END_TO_END),
    K("data.worker_count", 0, "Grain worker processes; 0: in the trainer's "
      "process.", bounds="[0, 4 * cpus]", paths=END_TO_END),
    K("data.num_threads", 2, "Grain read threads; 0: read in the calling "
      "thread.", bounds="[0, 256]", paths=END_TO_END),
    K("data.prefetch", 4, "Batches read ahead; 0: none.", bounds="[0, 256]",
      paths=END_TO_END),
    K("data.item_cache", 8192, "Items each train-stream process keeps decoded "
      "and tokenized (LRU); the rest are read from the item records per batch.",
      bounds=_NONNEG, paths=END_TO_END),
    K("data.inter_file", "", "MMRec interactions file in data.dir, e.g. "
      "\"dbbook.inter\".", paths=FEATURE_GRAPH, required_on=(MMREC,)),
    K("data.feature_files", "", "\"a.npy,b.npy\": one (items, d) feature "
      "matrix per modality; \"\": item IDs only.", paths=FEATURE_GRAPH),
    K("data.feature_dir", "", "Where feature_files are; \"\": data.dir.",
      paths=FEATURE_GRAPH),

    # --- model --------------------------------------------------------------
    K("model.dim", 64, "Width of the shared (aligned) space.", bounds=_POS),
    K("model.dtype", "float32", "Compute dtype; parameters stay float32.",
      choices=("float32", "bfloat16"), paths=END_TO_END),
    K("model.remat", False, "Recompute each encoder block in the backward "
      "pass (less memory, more compute).", paths=END_TO_END),
    K("model.text.hidden", 64, "Text tower width.", bounds=_POS,
      paths=END_TO_END),
    K("model.text.layers", 2, "Text tower blocks.", bounds=_POS,
      paths=END_TO_END),
    K("model.text.heads", 4, "Attention heads; must divide hidden.",
      bounds=_POS, paths=END_TO_END),
    K("model.text.mlp_dim", 128, "Text tower MLP width.", bounds=_POS,
      paths=END_TO_END),
    K("model.text.pooling", "cls", "Text vector: the [CLS] token or the mean "
      "of the tokens.", choices=("cls", "mean"), paths=END_TO_END),
    K("model.text.dropout", 0.0, "Text tower dropout.", bounds=_FRACTION,
      paths=END_TO_END),
    K("model.text.type_vocab", 2, "Token-type vocabulary.", bounds=_POS,
      paths=END_TO_END),
    K("model.text.init_from", "", "An HF BERT-family folder (docs/pretrained."
      "md): its config sets the architecture (the keys above except pooling "
      "and dropout are unused), its weights and tokenizer are loaded.",
      paths=END_TO_END),
    K("model.image.kind", "vit", "Image tower.", choices=("vit", "cnn"),
      paths=END_TO_END),
    K("model.image.patch_size", 8, "ViT patch side (px); must divide the "
      "image size.", bounds=_POS, paths=END_TO_END),
    K("model.image.hidden", 64, "Image tower width.", bounds=_POS,
      paths=END_TO_END),
    K("model.image.layers", 2, "Image tower blocks.", bounds=_POS,
      paths=END_TO_END),
    K("model.image.heads", 4, "Attention heads; must divide hidden.",
      bounds=_POS, paths=END_TO_END),
    K("model.image.mlp_dim", 128, "Image tower MLP width.", bounds=_POS,
      paths=END_TO_END),
    K("model.image.pooling", "cls", "Image vector: the CLS token or the mean "
      "of the patches.", choices=("cls", "mean"), paths=END_TO_END),
    K("model.image.dropout", 0.0, "Image tower dropout.", bounds=_FRACTION,
      paths=END_TO_END),
    K("model.image.cnn_widths", (16, 32, 64), "Channels per stage of the "
      "\"cnn\" tower.", of=int, bounds=_POS, nonempty=True,
      paths=END_TO_END),
    K("model.image.init_from", "", "An HF ViT / CLIP(-vision) folder; needs "
      "kind=\"vit\".", paths=END_TO_END),
    K("model.fusion.kind", "mlp", "How an item's text and image vectors "
      "combine.", choices=("mlp", "cross_attention"), paths=END_TO_END),
    K("model.fusion.hidden", 128, "Fusion width.", bounds=_POS,
      paths=END_TO_END),
    K("model.fusion.heads", 4, "Cross-attention heads; must divide "
      "model.dim.", bounds=_POS, paths=END_TO_END),
    K("model.fusion.layers", 1, "Cross-attention blocks.", bounds=_POS,
      paths=END_TO_END),
    K("model.fusion.dropout", 0.0, "Fusion dropout.", bounds=_FRACTION,
      paths=END_TO_END),
    K("model.rec.item_id_embedding", True, "Add a learned per-item ID vector "
      "to the content vector.", paths=END_TO_END),
    K("model.rec.user_id_embedding", True, "Add a learned per-user vector to "
      "the pooled history.", paths=END_TO_END),
    K("model.rec.history", "memory", "What the user tower pools: the item-"
      "vector bank of content vectors, or a separately learned table.",
      choices=("memory", "embedding"), paths=END_TO_END),
    K("model.rec.item_bias", True, "A learned per-item score offset "
      "(popularity).", paths=END_TO_END),
    K("model.rec.temperature", 0.1, "score = cos(user, item) / temperature "
      "[+ bias].", bounds=_POS),
    K("model.caption.layers", 2, "Blocks of the caption decoder, built "
      "where loss.caption > 0.", bounds=_POS, paths=END_TO_END),

    # --- loss: weights of the terms of one objective; 0 switches one off ----
    K("loss.infonce", 1.0, "Text-image InfoNCE (feature graph: the "
      "modality-ID alignment term).", bounds=_NONNEG),
    K("loss.siglip", 0.0, "Text-image sigmoid loss.", bounds=_NONNEG,
      paths=END_TO_END),
    K("loss.mmd", 0.1, "MMD between the text and image vectors.",
      bounds=_NONNEG, paths=END_TO_END),
    K("loss.coral", 0.1, "CORAL (covariance) alignment.", bounds=_NONNEG,
      paths=END_TO_END),
    K("loss.mlm", 0.1, "Masked-language-model term of the text tower.",
      bounds=_NONNEG, paths=END_TO_END),
    K("loss.softmax", 1.0, "Sampled-softmax recommendation loss.",
      bounds=_NONNEG),
    K("loss.bpr", 0.0, "BPR recommendation loss.", bounds=_NONNEG),
    K("loss.bce", 0.0, "Binary cross-entropy recommendation loss.",
      bounds=_NONNEG, paths=END_TO_END),
    K("loss.pointwise", 0.0, "A head on (user, item) fits the explicit labels: "
      "BCE on 0/1 clicks, squared error on ratings; valid/test report AUC and "
      "log-loss, or RMSE (summary.json's \"pointwise\").", **_E2E_WEIGHT),
    K("loss.caption", 0.0, "CoCa captioning: a causal decoder predicts the "
      "item's text from its image (model.caption.*).", **_E2E_WEIGHT),
    K("loss.linear_align", 0.0, "||A x_text - B x_image||^2 before "
      "normalization; collapses without loss.decorrelation.", **_E2E_WEIGHT),
    K("loss.decorrelation", 0.0, "VICReg variance and covariance penalty on "
      "each modality's projections: the guard against collapse.", **_E2E_WEIGHT),
    K("loss.co_item", 0.0, "InfoNCE between the content vectors of two train "
      "items of one user.", bounds=_NONNEG, paths=END_TO_END),
    K("loss.co_item_temperature", 0.3, "Temperature of loss.co_item.",
      bounds=_POS, paths=END_TO_END),
    K("loss.orthogonality", 0.01, "Keeps the projections near-orthogonal.",
      bounds=_NONNEG, paths=END_TO_END),
    K("loss.pretrain_steps", 0, "Contrastive terms only for the first N "
      "steps.", bounds=_NONNEG, paths=END_TO_END),
    K("loss.contrastive_impl", "dense", "\"ring\": InfoNCE/SigLIP sharded "
      "over the mesh's data axis, never building the B x B logits "
      "(docs/scale.md).", choices=("dense", "ring"), paths=END_TO_END),
    K("loss.contrastive_chunk", 512, "Keys per logit tile of the ring "
      "version.", bounds=_POS, paths=END_TO_END),

    # --- train --------------------------------------------------------------
    K("train.steps", 1000, "Optimizer steps.", bounds=_POS, paths=END_TO_END),
    K("train.batch_size", 256, "Global, across all devices and processes.",
      bounds=_POS),
    K("train.lr", 2e-3, "Peak learning rate.", bounds=_POS),
    K("train.warmup_steps", 100, "Linear warm-up, then cosine decay.",
      bounds=_NONNEG, paths=END_TO_END),
    K("train.weight_decay", 1e-4, "AdamW weight decay.", bounds=_NONNEG),
    K("train.grad_clip", 1.0, "Global gradient-norm clip.", bounds=_NONNEG,
      paths=END_TO_END),
    K("train.log_every", 50, "Steps between logged metrics.", bounds=_POS,
      paths=END_TO_END),
    K("train.checkpoint_every", 500, "Steps (feature graph: epochs) between "
      "checkpoints; SIGTERM, Ctrl-C and the end always save one.",
      bounds=_POS),
    K("train.keep_checkpoints", 2, "Checkpoints kept for resuming (the "
      "best-valid state is kept apart, in <workdir>/best).", bounds=_POS),
    K("train.eval_every", 0, "Steps (feature graph: epochs) between valid "
      "evaluations during training; 0: once, at the end. The state with the "
      "best valid train.early_stop.metric is kept and serves test, export "
      "and inference.", bounds=_NONNEG),
    K("train.early_stop.metric", "recall@20", "Valid metric that picks the "
      "best state and drives early stopping.",
      choices=tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50))),
    K("train.early_stop.patience", 20, "Stop once this many evaluations in a "
      "row have not beaten the best (MMRec's rule: more than this many); 0: "
      "never stop early.", bounds=_NONNEG),
    K("train.eval_batch_size", 512, "Items or users per evaluation batch.",
      bounds=_POS, paths=END_TO_END),
    K("train.eval_ranking", "auto", "Full ranking at evaluation: "
      "\"device\" (jitted matmul + top_k), \"host\" (NumPy blocks) or "
      "\"auto\" (host on the CPU backend, device elsewhere).",
      choices=("auto", "host", "device")),
    K("train.nan_policy", "skip", "A NaN/Inf loss or gradient norm is never "
      "applied; \"skip\" goes on for up to max_skipped_steps such steps, "
      "\"stop\" stops at once.", choices=("skip", "stop"), paths=END_TO_END),
    K("train.max_skipped_steps", 10, "See nan_policy.", bounds=_NONNEG,
      paths=END_TO_END),
    K("train.log_example_ids", False, "Write example_ids.p<process>.jsonl: "
      "the example ids of every step.", paths=END_TO_END),
    K("train.steps_per_call", 1, "Train steps per call of the compiled "
      "program (a scan over stacked batches; the same updates): fewer host "
      "round trips and buffer set-ups.", bounds=_POS, paths=END_TO_END),
    K("train.accum_steps", 1, "GradCache: the encoders run in this many "
      "micro-batches, the loss sees the whole batch; must divide "
      "batch_size.", bounds=_POS, paths=END_TO_END),
    K("train.mu_dtype", "float32", "Adam's first moment; \"bfloat16\" halves "
      "it.", choices=("float32", "bfloat16"), paths=END_TO_END),
    K("train.freeze", (), "Frozen parameters (LiT): regexes fullmatched "
      "against paths like \"text/layers/0/attention/query/kernel\"; they get "
      "no update and no optimizer state.", of=str, paths=END_TO_END),
    K("train.unfreeze_last_blocks", 0, "The last N blocks of a frozen stack "
      "are trained again.", bounds=_NONNEG, paths=END_TO_END),
    K("train.allow_resume_change", (), "Resume although these changed since "
      "the checkpoint was trained (otherwise refused): the batch size, the "
      "seed, the data (another catalog).", of=str, choices=RESUME_CHANGES,
      paths=END_TO_END),

    # --- postprocess: evaluation-time calibration (mmjax/postprocess) -------
    K("postprocess.item_id_scales", (), "After training, the item-ID table "
      "scaled by each of these (and 1) is tried; the best on valid recall@20 "
      "serves evaluation and inference (the checkpoint keeps the table as "
      "trained). Needs model.rec.item_id_embedding.", of=float,
      bounds=_NONNEG, paths=END_TO_END),
    K("postprocess.item_id_clusters", (), "Per count, the ID table is also "
      "tried shrunk toward its k-means centroids. Needs "
      "model.rec.item_id_embedding.", of=int, bounds=">= 2",
      paths=END_TO_END),
    K("postprocess.user_refit_penalties", (), "The user vectors are refit to "
      "the final item vectors (full-softmax likelihood of each user's train "
      "items), per-user offsets L2-penalized by each of these; valid "
      "recall@20 picks among them and the tower. (): keep the tower.",
      of=float, bounds=_POS, paths=END_TO_END),
    K("postprocess.user_refit_steps", 100, "Full-batch Adam steps per "
      "penalty.", bounds=_POS, paths=END_TO_END),

    # --- eval: extra evaluators (mmjax/eval/evaluators.py) -------------------
    K("eval.zero_shot.labels_file", "", "A table (CSV; .tsv tab-separated) "
      "giving items a class label; relative paths are in data.raw.root. The "
      "items' images are classified zero-shot among the labels through the "
      "text tower (mmjax/eval/zero_shot.py); \"\": off.", paths=(RAW,)),
    K("eval.zero_shot.id_column", "item_id", "Its column of item ids.",
      paths=(RAW,)),
    K("eval.zero_shot.label_column", "label", "Its column of class labels.",
      paths=(RAW,)),
    K("eval.zero_shot.ignore_labels", (), "Labels whose items are left out, "
      "e.g. (\"Not sure\",).", of=str, paths=(RAW,)),
    K("eval.zero_shot.templates", ("a photo of a {label}.", "a {label}.",
                                   "a photo of the {label}.",
                                   "a good photo of a {label}.",
                                   "a picture of a {label}."),
      "Prompts, each with {label}; a class's text vector is the normalized "
      "mean of its prompts' vectors.", of=str, nonempty=True, paths=(RAW,)),
    K("eval.zero_shot.split", "test", "The items evaluated: those of this "
      "split's interactions, or all.", choices=("train", "valid", "test", "all"),
      paths=(RAW,)),

    # --- feature_graph: data.name="mmrec" (mmjax/models/feature_graph.py) ---
    K("feature_graph.encoder", "linear", "Per modality, from the fixed "
      "features to model.dim.", choices=("identity", "linear", "mlp"),
      paths=FEATURE_GRAPH),
    K("feature_graph.fusion", "mean", "Of the modalities; \"mlp\" needs "
      "exactly two feature files.", choices=("mean", "mlp"),
      paths=FEATURE_GRAPH),
    K("feature_graph.content_weight", 1.0, "items_0 = item-ID embedding + w "
      "* content.", bounds=_NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.init_std", 0.1, "Of the ID embeddings.", bounds=_NONNEG,
      paths=FEATURE_GRAPH),
    K("feature_graph.layers", 2, "LightGCN layers on the user-item graph; 0: "
      "off.", bounds=_NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.knn_k", 10, "Item-item kNN graph from the features; 0: "
      "off.", bounds=_NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.item_layers", 1, "Propagation steps on the kNN graph; "
      "0: off.", bounds=_NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.negatives", 256, "Uniform negatives per batch, drawn on "
      "device.", bounds=_POS, paths=FEATURE_GRAPH),
    K("feature_graph.epochs", 1000, "At most this many epochs.", bounds=_POS,
      paths=FEATURE_GRAPH),
    K("feature_graph.text_tower", "", "An HF BERT-family folder (e.g. "
      "all-MiniLM-L6-v2): a text tower over the items' texts, one more "
      "modality whose last tower_blocks blocks train with the recommender "
      "(mmjax/models/text_tower.py); \"\": none.", paths=FEATURE_GRAPH),
    K("feature_graph.text_file", "", "The items table with the texts, in "
      "data.dir (.tsv or .csv; MMRec itemIDs 0..N-1).", paths=FEATURE_GRAPH),
    K("feature_graph.text_id_column", "itemID", "Its item-id column.",
      paths=FEATURE_GRAPH),
    K("feature_graph.text_column", "title", "Its text column.", paths=FEATURE_GRAPH),
    K("feature_graph.max_text_len", 64, "Tokens per text; longer ones are cut.",
      bounds=_POS, paths=FEATURE_GRAPH),
    K("feature_graph.tower_blocks", 1, "The tower's last blocks that train; the "
      "rest stay frozen and run once, before training.", bounds=_POS,
      paths=FEATURE_GRAPH),
    K("feature_graph.tower_items", 256, "Items the tower encodes per step (of "
      "the uniformly drawn negatives); the others are its memory of their "
      "latest vectors.", bounds=_POS, paths=FEATURE_GRAPH),
    K("feature_graph.tower_lr", 1e-4, "Learning rate of the tower's blocks "
      "(train.lr: the rest).", bounds=_NONNEG, paths=FEATURE_GRAPH),
    K("grid.axes", "", "A search: \"KEY=V1,V2; KEY2=...\", the cartesian "
      "product of the axes, each point trained with seed and the same early "
      "stopping; the point with the best valid train.early_stop.metric is rerun "
      "with seeds and reported. Keys: the GRID_KEYS (vmapped: one program), "
      "feature_graph.layers, item_layers, knn_k, negatives, init_std, encoder, "
      "fusion, train.batch_size, model.dim (one program per combination). "
      "mmjax/config/grid.py.", paths=FEATURE_GRAPH),

    # --- mesh ---------------------------------------------------------------
    K("mesh.data", -1, "Devices on the data axis; -1: all remaining devices.",
      bounds=">= -1"),
    K("mesh.model", 1, "Devices on the model axis.", bounds=_POS),
    K("mesh.rules", (), "Parameter sharding: ((regex, spec), ...); the first "
      "regex that matches a parameter path gives its PartitionSpec (a mesh "
      "axis name or None per dimension); e.g. ((r\".*kernel\", (\"data\", "
      "None)),) is FSDP over data. Unmatched: replicated.",
      paths=END_TO_END),
    K("mesh.dcn_data", 1, "Slices joined over the data-center network; the "
      "data axis is split across them (outermost), the rest of the mesh "
      "lies within each slice. Must divide the data axis.", bounds=_POS),
    K("mesh.topology", "", "With --dry_run: compile for this TPU topology "
      "instead of the local devices, e.g. \"v5e:16x16\" or \"v5p:4x4x4\" "
      "(needs the tpu extra, libtpu); \"\": the local devices. Refused "
      "when training.", paths=END_TO_END),
)

BY_PATH = {k.path: k for k in KEYS}

SECTIONS = {
    "data": "Where the data comes from and how batches are made.",
    "model": "The towers, the fusion and the recommender head.",
    "loss": "Weights of the terms of the one objective; 0 switches a term "
            "off.",
    "train": "Optimization, checkpoints and logging.",
    "postprocess": "Optional evaluation-time calibration, chosen on valid "
                   "recall@20 and written to postprocess.json in the workdir.",
    "eval": "Evaluations besides ranking and retrieval, run after training.",
    "feature_graph": "The graph recommender on fixed item features "
                     "(data.name=\"mmrec\", MMRec's protocol).",
    "grid": "Feature graph: a hyper-parameter search, picked on valid.",
    "mesh": "The device mesh and parameter sharding (docs/scale.md).",
}

# Keys that no longer exist: the new name, or None for a removed key. A
# renamed section renames every key under it.
RENAMED = {
    "frozen": "feature_graph",
    "model.rec.item_id_scales": "postprocess.item_id_scales",
    "model.rec.item_id_clusters": "postprocess.item_id_clusters",
    "model.rec.refit_penalties": "postprocess.user_refit_penalties",
    "model.rec.refit_steps": "postprocess.user_refit_steps",
    "model.attention_kernel": None,
    "model.dense_kernel": None,
    "train.cpu_ynn_fusions": None,
    "feature_graph.patience": "train.early_stop.patience",
    "feature_graph.eval_every": "train.eval_every",
    "feature_graph.ranking": "train.eval_ranking",
    "grid.key": "grid.axes",
    "grid.points": "grid.axes",
}
