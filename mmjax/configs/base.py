"""A base-size model: a small BERT-like text tower and a small ViT at 64 px.

  python launch.py --config configs/base.py --workdir runs/base
  python -m mmjax.bench.throughput --config configs/base.py --out base.json

Both towers are 4 layers of width 256 (4 heads, MLP 1024); the ViT sees
64 px images as 8x8 patches (64 tokens + CLS); texts are up to 32 tokens.
Big enough that the dense layers' matmuls dominate the step, which makes it
the throughput benchmark's second config beside the demo.
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  c.data.synthetic.image_size = 64
  c.data.max_text_len = 32
  c.model.dim = 128
  c.model.text.update(hidden=256, layers=4, heads=4, mlp_dim=1024, pooling="mean")
  c.model.image.update(hidden=256, layers=4, heads=4, mlp_dim=1024, patch_size=8,
                       pooling="mean")
  c.model.fusion.hidden = 256
  c.model.rec.user_id_embedding = False
  c.train.batch_size = 128
  # Eight steps per compiled call: on CPU each call maps and first-touches
  # the step's large temporary buffers, so fewer calls fault fewer pages; on
  # accelerators it saves dispatches (docs/experiments.md).
  c.train.steps_per_call = 8
  c.train.steps = 2000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_every = 500
  return c
