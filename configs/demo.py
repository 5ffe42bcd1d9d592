"""The demo: a small multimodal recommender on the embedded catalog.

  python launch.py --config configs/demo.py --workdir runs/demo

Tuned to finish in a few minutes on 2 CPU cores.
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  c.train.steps = 1500
  c.train.batch_size = 256
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  return c
