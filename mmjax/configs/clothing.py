"""The multimodal recommender on real photos: the clothing data set.

  python launch.py --config configs/clothing.py --workdir runs/clothing \
      --config.data.raw.root=../shared/data/clothing

The folder holds images.csv (image, sender_id, label, kids) and
images/<image>.jpg; mmjax/data/clothing.py turns it into items (photo +
caption "a photo of a t-shirt") and interactions (sender -> photo). It is
ingested once into the data cache; later runs reuse it.

Every photo is sent once, so valid/test items never occur in train: this is
cold-start recommendation from content alone. Hence no item-ID embedding and
no per-item bias (both would be untrained noise for every candidate).
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  c.data.name = "raw"
  c.data.raw.update(adapter="clothing", items_file="images.csv",
                    image_root="images", image_size=64)
  c.data.max_text_len = 12          # The longest caption is 11 tokens.
  # 16 px patches (16 per 64 px photo): a quarter of the image tokens of 8 px ones.
  c.model.image.patch_size = 16
  c.model.text.pooling = "mean"
  c.model.image.pooling = "mean"
  c.model.rec.item_id_embedding = False
  c.model.rec.item_bias = False
  # ~18 epochs of the 4,328 train pairs; 300 steps left recall behind
  # (docs/raw_data.md).
  c.train.steps = 600
  c.train.batch_size = 128
  c.train.warmup_steps = 30
  c.train.log_every = 25
  c.train.checkpoint_every = 300
  return c
