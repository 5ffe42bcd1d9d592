"""Every config key: its default, type, allowed values, bounds and meaning.

One `Key` per leaf of the config tree, in tree order. `default_config()`
builds the locked ConfigDict from these, `checks.validate()` checks every
value against them and `doc.markdown()` writes docs/config.md from them.

`paths` says which data paths (`data.name`) read a key: a key set to a
non-default value on a path that ignores it is an error.
"""

from __future__ import annotations

# The data paths, Key and RESUME_CHANGES are re-exported: the schema is where
# the rest of the code looks them up.
from mmjax.config.key import (ALL, E2E_WEIGHT, END_TO_END, FEATURE_GRAPH,  # noqa: F401
                              FRACTION, MMREC, NONNEG, PATH_NAMES, POS, RAW,
                              SEED_RANGE, SYNTHETIC, K, Key)
from mmjax.config.training_keys import RESUME_CHANGES, TRAINING_KEYS  # noqa: F401

# The hyper-parameters a feature-graph search (`grid.axes`) varies within one
# program: they are traced per run, so one compile trains every value.
GRID_KEYS = ("train.lr", "train.weight_decay", "model.rec.temperature",
             "loss.softmax", "loss.bpr", "loss.infonce",
             "feature_graph.content_weight", "feature_graph.tower_lr")


KEYS: tuple[Key, ...] = (
    K("seed", 0, "Seed of the parameters, the data order and dropout.",
      bounds=SEED_RANGE),
    K("seeds", (), "Feature graph: seeds trained together as one vmapped program, e.g. "
      "(0, 1, 2); (): seed. With grid.axes: the seeds the chosen point is "
      "rerun with.", of=int, bounds=SEED_RANGE, paths=FEATURE_GRAPH),

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
      bounds=POS, paths=(SYNTHETIC,)),
    K("data.synthetic.num_users", 1000, "Users of the embedded catalog.",
      bounds=POS, paths=(SYNTHETIC,)),
    K("data.synthetic.image_size", 32, "Side of the catalog's images (px).",
      bounds=">= 8", paths=(SYNTHETIC,)),
    K("data.synthetic.interactions_per_user", 30, "Interactions drawn per "
      "user (mean); at most num_items // 2.", bounds=">= 3",
      paths=(SYNTHETIC,)),
    K("data.synthetic.seed", 0, "Seed of the catalog.", bounds=SEED_RANGE,
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
      "to fit where they are read, centred on grey.", bounds=POS, paths=(RAW,)),
    K("data.raw.max_stored_side", 0, "The data dir keeps each image file as "
      "it is, or downscaled to this longest side when larger; 0: as it is.",
      bounds=NONNEG, paths=(RAW,)),
    K("data.raw.valid_fraction", 0.1, "Per user, without a split column.",
      bounds="(0, 1)", paths=(RAW,)),
    K("data.raw.test_fraction", 0.1, "Per user, without a split column.",
      bounds="(0, 1)", paths=(RAW,)),
    K("data.raw.tokenizer_vocab", 4096, "WordPiece vocabulary trained on the "
      "items' texts.", bounds=POS, paths=(RAW,)),
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
      "sampled at random.", bounds=POS, paths=END_TO_END),
    K("data.eval_history_len", 0, "Evaluation and inference pool each user's "
      "last N train items (a longer history gives a steadier mean); 0: "
      "data.history_len.", bounds=NONNEG, paths=END_TO_END),
    K("data.mlm_prob", 0.15, "Masked-token probability of the MLM term.",
      bounds=FRACTION, paths=END_TO_END),
    K("data.mlm_max_predictions", 4, "Masked tokens per text (BERT's "
      "max_predictions_per_seq).", bounds=POS, paths=END_TO_END),
    K("data.augment", True, "Random image augmentation in training.",
      paths=END_TO_END),
    K("data.item_ssl_fraction", 0.0, "Share of each train batch's rows drawn "
      "from every catalog item (those without train interactions too): only "
      "the self-supervised and alignment terms see them.", bounds=FRACTION,
      paths=END_TO_END),
    K("data.worker_count", 0, "Grain worker processes; 0: in the trainer's "
      "process.", bounds="[0, 4 * cpus]", paths=END_TO_END),
    K("data.num_threads", 2, "Grain read threads; 0: read in the calling "
      "thread.", bounds="[0, 256]", paths=END_TO_END),
    K("data.prefetch", 4, "Batches read ahead; 0: none.", bounds="[0, 256]",
      paths=END_TO_END),
    K("data.item_cache", 8192, "Items each train-stream process keeps decoded "
      "and tokenized (LRU); the rest are read from the item records per batch.",
      bounds=NONNEG, paths=END_TO_END),
    K("data.inter_file", "", "MMRec interactions file in data.dir, e.g. "
      "\"dbbook.inter\".", paths=FEATURE_GRAPH, required_on=(MMREC,)),
    K("data.feature_files", "", "\"a.npy,b.npy\": one (items, d) feature "
      "matrix per modality; \"\": item IDs only.", paths=FEATURE_GRAPH),
    K("data.feature_dir", "", "Where feature_files are; \"\": data.dir.",
      paths=FEATURE_GRAPH),

    # --- model --------------------------------------------------------------
    K("model.dim", 64, "Width of the shared (aligned) space.", bounds=POS),
    K("model.dtype", "float32", "Compute dtype; parameters stay float32.",
      choices=("float32", "bfloat16"), paths=END_TO_END),
    K("model.remat", False, "Recompute each encoder block in the backward "
      "pass (less memory, more compute).", paths=END_TO_END),
    K("model.text.hidden", 64, "Text tower width.", bounds=POS,
      paths=END_TO_END),
    K("model.text.layers", 2, "Text tower blocks.", bounds=POS,
      paths=END_TO_END),
    K("model.text.heads", 4, "Attention heads; must divide hidden.",
      bounds=POS, paths=END_TO_END),
    K("model.text.mlp_dim", 128, "Text tower MLP width.", bounds=POS,
      paths=END_TO_END),
    K("model.text.pooling", "cls", "Text vector: the [CLS] token or the mean "
      "of the tokens.", choices=("cls", "mean"), paths=END_TO_END),
    K("model.text.dropout", 0.0, "Text tower dropout.", bounds=FRACTION,
      paths=END_TO_END),
    K("model.text.type_vocab", 2, "Token-type vocabulary.", bounds=POS,
      paths=END_TO_END),
    K("model.text.init_from", "", "An HF BERT-family folder (docs/pretrained."
      "md): its config sets the architecture (the keys above except pooling "
      "and dropout are unused), its weights and tokenizer are loaded.",
      paths=END_TO_END),
    K("model.image.kind", "vit", "Image tower.", choices=("vit", "cnn"),
      paths=END_TO_END),
    K("model.image.patch_size", 8, "ViT patch side (px); must divide the "
      "image size.", bounds=POS, paths=END_TO_END),
    K("model.image.hidden", 64, "Image tower width.", bounds=POS,
      paths=END_TO_END),
    K("model.image.layers", 2, "Image tower blocks.", bounds=POS,
      paths=END_TO_END),
    K("model.image.heads", 4, "Attention heads; must divide hidden.",
      bounds=POS, paths=END_TO_END),
    K("model.image.mlp_dim", 128, "Image tower MLP width.", bounds=POS,
      paths=END_TO_END),
    K("model.image.pooling", "cls", "Image vector: the CLS token or the mean "
      "of the patches.", choices=("cls", "mean"), paths=END_TO_END),
    K("model.image.dropout", 0.0, "Image tower dropout.", bounds=FRACTION,
      paths=END_TO_END),
    K("model.image.cnn_widths", (16, 32, 64), "Channels per stage of the "
      "\"cnn\" tower.", of=int, bounds=POS, nonempty=True,
      paths=END_TO_END),
    K("model.image.init_from", "", "An HF ViT / CLIP(-vision) folder; needs "
      "kind=\"vit\".", paths=END_TO_END),
    K("model.fusion.kind", "mlp", "How an item's text and image vectors "
      "combine.", choices=("mlp", "cross_attention"), paths=END_TO_END),
    K("model.fusion.hidden", 128, "Fusion width.", bounds=POS,
      paths=END_TO_END),
    K("model.fusion.heads", 4, "Cross-attention heads; must divide "
      "model.dim.", bounds=POS, paths=END_TO_END),
    K("model.fusion.layers", 1, "Cross-attention blocks.", bounds=POS,
      paths=END_TO_END),
    K("model.fusion.dropout", 0.0, "Fusion dropout.", bounds=FRACTION,
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
      "[+ bias].", bounds=POS),
    K("model.caption.layers", 2, "Blocks of the caption decoder, built "
      "where loss.caption > 0.", bounds=POS, paths=END_TO_END),

    # --- loss: weights of the terms of one objective; 0 switches one off ----
    K("loss.infonce", 1.0, "Text-image InfoNCE (feature graph: the "
      "modality-ID alignment term).", bounds=NONNEG),
    K("loss.siglip", 0.0, "Text-image sigmoid loss.", bounds=NONNEG,
      paths=END_TO_END),
    K("loss.mmd", 0.1, "MMD between the text and image vectors.",
      bounds=NONNEG, paths=END_TO_END),
    K("loss.coral", 0.1, "CORAL (covariance) alignment.", bounds=NONNEG,
      paths=END_TO_END),
    K("loss.mlm", 0.1, "Masked-language-model term of the text tower.",
      bounds=NONNEG, paths=END_TO_END),
    K("loss.softmax", 1.0, "Sampled-softmax recommendation loss.",
      bounds=NONNEG),
    K("loss.bpr", 0.0, "BPR recommendation loss.", bounds=NONNEG),
    K("loss.bce", 0.0, "Binary cross-entropy recommendation loss.",
      bounds=NONNEG, paths=END_TO_END),
    K("loss.pointwise", 0.0, "A head on (user, item) fits the explicit labels: "
      "BCE on 0/1 clicks, squared error on ratings; valid/test report AUC and "
      "log-loss, or RMSE (summary.json's \"pointwise\").", **E2E_WEIGHT),
    K("loss.caption", 0.0, "CoCa captioning: a causal decoder predicts the "
      "item's text from its image (model.caption.*).", **E2E_WEIGHT),
    K("loss.linear_align", 0.0, "||A x_text - B x_image||^2 before "
      "normalization; collapses without loss.decorrelation.", **E2E_WEIGHT),
    K("loss.decorrelation", 0.0, "VICReg variance and covariance penalty on "
      "each modality's projections: the guard against collapse.", **E2E_WEIGHT),
    K("loss.co_item", 0.0, "InfoNCE between the content vectors of two train "
      "items of one user.", bounds=NONNEG, paths=END_TO_END),
    K("loss.co_item_temperature", 0.3, "Temperature of loss.co_item.",
      bounds=POS, paths=END_TO_END),
    K("loss.orthogonality", 0.01, "Keeps the projections near-orthogonal.",
      bounds=NONNEG, paths=END_TO_END),
    K("loss.pretrain_steps", 0, "Contrastive terms only for the first N "
      "steps.", bounds=NONNEG, paths=END_TO_END),
    K("loss.contrastive_impl", "dense", "\"ring\": InfoNCE/SigLIP sharded "
      "over the mesh's data axis, never building the B x B logits "
      "(docs/scale.md).", choices=("dense", "ring"), paths=END_TO_END),
    K("loss.contrastive_chunk", 512, "Keys per logit tile of the ring "
      "version.", bounds=POS, paths=END_TO_END),
) + TRAINING_KEYS

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
