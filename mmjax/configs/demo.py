"""The demo: a small multimodal recommender on the embedded catalog.

  python launch.py --config configs/demo.py --workdir runs/demo
  python launch.py --config configs/demo.py:small --workdir runs/demo_small

Sized to train in a few minutes on 2 CPU cores. Why the values below (the
ablations behind each: docs/experiments.md):
- mean pooling: the same recall as CLS, and far better text->image
  retrieval;
- no user-ID embedding: with ~24 train items a user it memorizes; the user
  tower relies on the pooled history instead;
- loss.co_item instead of MLM: two train items of one user pull their
  content vectors together, so the text tower learns the words users choose
  by (material, style), which the text-image InfoNCE never asks for; it
  costs about what MLM's second text pass did;
- postprocess.*: the item-ID table fits the train interactions beyond what
  carries over, so evaluation picks on valid a scaled or cluster-shrunk
  table (the clusters pool the image-only pattern over hundreds of items),
  then refits the user vectors to the final item vectors; 1,600 steps let
  the ID rows separate into those clusters;
- data.eval_history_len = 64: users are scored from all their train items,
  not the 20 the tower samples per step;
- train.steps_per_call = 8: eight steps per call of the compiled program
  (the same updates), so fewer host round trips and buffer mappings.
"""

from mmjax.config import default_config


def get_config(variant: str = ""):
  c = default_config()
  c.data.max_text_len = 24          # The catalog's longest text is 23 tokens.
  c.model.text.pooling = "mean"
  c.model.image.pooling = "mean"
  c.model.rec.user_id_embedding = False
  c.postprocess.item_id_scales = (0.25, 0.5, 0.75)
  c.postprocess.item_id_clusters = (4, 5, 6, 8)
  c.postprocess.user_refit_penalties = (0.3, 1.0, 3.0, 10.0)
  c.data.eval_history_len = 64
  c.loss.co_item = 1.0
  c.loss.mlm = 0.0
  c.train.steps = 1600
  c.train.batch_size = 256
  c.train.steps_per_call = 8        # One call of the compiled step per 8 steps.
  c.train.log_every = 50
  c.train.checkpoint_every = 400
  c.train.eval_every = 400          # Valid recall picks the state tested.
  if variant == "small":            # A quarter of the steps: a quicker look.
    c.train.steps = 400
    c.train.eval_every = 100
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; try 'small'")
  return c
