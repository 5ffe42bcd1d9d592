"""A first look: a tiny model on a tiny catalog, trained and evaluated end to
end in a couple of minutes on a CPU.

  python launch.py --config configs/tiny.py --workdir runs/tiny

The same pipeline as configs/demo.py (catalog, both towers, fusion,
recommender, evaluation, post-processing), every size cut down: it shows
what a run writes, not what the model can do.
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  c.data.synthetic.update(num_items=200, num_users=100, image_size=16,
                          interactions_per_user=12)
  c.data.max_text_len = 16
  c.data.history_len = 4
  c.data.num_threads = 1
  c.model.dim = 32
  c.model.text.update(hidden=32, layers=1, heads=2, mlp_dim=64, pooling="mean")
  c.model.image.update(hidden=32, layers=1, heads=2, mlp_dim=64, patch_size=8,
                       pooling="mean")
  c.model.fusion.update(hidden=64, heads=2)
  c.model.rec.user_id_embedding = False
  c.loss.co_item = 1.0
  c.loss.mlm = 0.0
  c.postprocess.item_id_scales = (0.5,)
  c.postprocess.user_refit_penalties = (1.0,)
  c.postprocess.user_refit_steps = 20
  c.train.steps = 600
  c.train.batch_size = 32
  c.train.warmup_steps = 10
  c.train.log_every = 50
  c.train.checkpoint_every = 600
  c.train.eval_every = 300
  c.train.eval_batch_size = 128
  return c
