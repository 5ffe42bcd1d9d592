"""The config keys of training, post-processing, evaluation, the feature
graph, the search grid and the mesh (the rest are in schema.py)."""

from mmjax.config.key import END_TO_END, FEATURE_GRAPH, NONNEG, POS, RAW, K, Key

# What a resumed run must share with its checkpoint's run, unless
# `train.allow_resume_change` names it ("data": the catalog).
RESUME_CHANGES = ("train.batch_size", "seed", "data")

TRAINING_KEYS: tuple[Key, ...] = (
    # --- train --------------------------------------------------------------
    K("train.steps", 1000, "Optimizer steps.", bounds=POS, paths=END_TO_END),
    K("train.batch_size", 256, "Global, across all devices and processes.",
      bounds=POS),
    K("train.lr", 2e-3, "Peak learning rate.", bounds=POS),
    K("train.warmup_steps", 100, "Linear warm-up, then cosine decay.",
      bounds=NONNEG, paths=END_TO_END),
    K("train.weight_decay", 1e-4, "AdamW weight decay.", bounds=NONNEG),
    K("train.grad_clip", 1.0, "Global gradient-norm clip.", bounds=NONNEG,
      paths=END_TO_END),
    K("train.log_every", 50, "Steps between logged metrics.", bounds=POS,
      paths=END_TO_END),
    K("train.checkpoint_every", 500, "Steps (feature graph: epochs) between "
      "checkpoints; SIGTERM, Ctrl-C and the end always save one.",
      bounds=POS),
    K("train.keep_checkpoints", 2, "Checkpoints kept for resuming (the "
      "best-valid state is kept apart, in <workdir>/best).", bounds=POS),
    K("train.eval_every", 0, "Steps (feature graph: epochs) between valid "
      "evaluations during training; 0: once, at the end. The state with the "
      "best valid train.early_stop.metric is kept and serves test, export "
      "and inference.", bounds=NONNEG),
    K("train.early_stop.metric", "recall@20", "Valid metric that picks the "
      "best state and drives early stopping.",
      choices=tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50))),
    K("train.early_stop.patience", 20, "Stop once this many evaluations in a "
      "row have not beaten the best (MMRec's rule: more than this many); 0: "
      "never stop early.", bounds=NONNEG),
    K("train.eval_batch_size", 512, "Items or users per evaluation batch.",
      bounds=POS, paths=END_TO_END),
    K("train.eval_ranking", "auto", "Full ranking at evaluation: "
      "\"device\" (jitted matmul + top_k), \"host\" (NumPy blocks) or "
      "\"auto\" (host on the CPU backend, device elsewhere).",
      choices=("auto", "host", "device")),
    K("train.nan_policy", "skip", "A NaN/Inf loss or gradient norm is never "
      "applied; \"skip\" goes on for up to max_skipped_steps such steps, "
      "\"stop\" stops at once.", choices=("skip", "stop"), paths=END_TO_END),
    K("train.max_skipped_steps", 10, "See nan_policy.", bounds=NONNEG,
      paths=END_TO_END),
    K("train.log_example_ids", False, "Write example_ids.p<process>.jsonl: "
      "the example ids of every step.", paths=END_TO_END),
    K("train.steps_per_call", 1, "Train steps per call of the compiled "
      "program (a scan over stacked batches; the same updates): fewer host "
      "round trips and buffer set-ups.", bounds=POS, paths=END_TO_END),
    K("train.accum_steps", 1, "GradCache: the encoders run in this many "
      "micro-batches, the loss sees the whole batch; must divide "
      "batch_size.", bounds=POS, paths=END_TO_END),
    K("train.mu_dtype", "float32", "Adam's first moment; \"bfloat16\" halves "
      "it.", choices=("float32", "bfloat16"), paths=END_TO_END),
    K("train.freeze", (), "Frozen parameters (LiT): regexes fullmatched "
      "against paths like \"text/layers/0/attention/query/kernel\"; they get "
      "no update and no optimizer state.", of=str, paths=END_TO_END),
    K("train.unfreeze_last_blocks", 0, "The last N blocks of a frozen stack "
      "are trained again.", bounds=NONNEG, paths=END_TO_END),
    K("train.allow_resume_change", (), "Resume although these changed since "
      "the checkpoint was trained (otherwise refused): the batch size, the "
      "seed, the data (another catalog).", of=str, choices=RESUME_CHANGES,
      paths=END_TO_END),

    # --- postprocess: evaluation-time calibration (mmjax/postprocess) -------
    K("postprocess.item_id_scales", (), "After training, the item-ID table "
      "scaled by each of these (and 1) is tried; the best on valid recall@20 "
      "serves evaluation and inference (the checkpoint keeps the table as "
      "trained). Needs model.rec.item_id_embedding.", of=float,
      bounds=NONNEG, paths=END_TO_END),
    K("postprocess.item_id_clusters", (), "Per count, the ID table is also "
      "tried shrunk toward its k-means centroids. Needs "
      "model.rec.item_id_embedding.", of=int, bounds=">= 2",
      paths=END_TO_END),
    K("postprocess.user_refit_penalties", (), "The user vectors are refit to "
      "the final item vectors (full-softmax likelihood of each user's train "
      "items), per-user offsets L2-penalized by each of these; valid "
      "recall@20 picks among them and the tower. (): keep the tower.",
      of=float, bounds=POS, paths=END_TO_END),
    K("postprocess.user_refit_steps", 100, "Full-batch Adam steps per "
      "penalty.", bounds=POS, paths=END_TO_END),

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
      "* content.", bounds=NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.init_std", 0.1, "Of the ID embeddings.", bounds=NONNEG,
      paths=FEATURE_GRAPH),
    K("feature_graph.layers", 2, "LightGCN layers on the user-item graph; 0: "
      "off.", bounds=NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.knn_k", 10, "Item-item kNN graph from the features; 0: "
      "off.", bounds=NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.item_layers", 1, "Propagation steps on the kNN graph; "
      "0: off.", bounds=NONNEG, paths=FEATURE_GRAPH),
    K("feature_graph.negatives", 256, "Uniform negatives per batch, drawn on "
      "device.", bounds=POS, paths=FEATURE_GRAPH),
    K("feature_graph.epochs", 1000, "At most this many epochs.", bounds=POS,
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
      bounds=POS, paths=FEATURE_GRAPH),
    K("feature_graph.tower_blocks", 1, "The tower's last blocks that train; the "
      "rest stay frozen and run once, before training.", bounds=POS,
      paths=FEATURE_GRAPH),
    K("feature_graph.tower_items", 256, "Items the tower encodes per step (the "
      "first of the negatives, drawn per length bucket); the others are its "
      "memory of their latest vectors.", bounds=POS, paths=FEATURE_GRAPH),
    K("feature_graph.tower_buckets", 4, "Length groups of the texts: each "
      "step encodes the tower's items of a group at that group's width, "
      "chosen to minimise padding (1: all at the longest text's).",
      bounds=POS, paths=FEATURE_GRAPH),
    K("feature_graph.tower_lr", 1e-4, "Learning rate of the tower's blocks "
      "(train.lr: the rest).", bounds=NONNEG, paths=FEATURE_GRAPH),
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
    K("mesh.model", 1, "Devices on the model axis.", bounds=POS),
    K("mesh.rules", (), "Parameter sharding: ((regex, spec), ...); the first "
      "regex that matches a parameter path gives its PartitionSpec (a mesh "
      "axis name or None per dimension); e.g. ((r\".*kernel\", (\"data\", "
      "None)),) is FSDP over data. Unmatched: replicated.",
      paths=END_TO_END),
    K("mesh.dcn_data", 1, "Slices joined over the data-center network; the "
      "data axis is split across them (outermost), the rest of the mesh "
      "lies within each slice. Must divide the data axis.", bounds=POS),
    K("mesh.topology", "", "With --dry_run: compile for this TPU topology "
      "instead of the local devices, e.g. \"v5e:16x16\" or \"v5p:4x4x4\" "
      "(needs the tpu extra, libtpu); \"\": the local devices. Refused "
      "when training.", paths=END_TO_END),
)
