"""A model at the scale users pretrain: BERT-base text, ViT-B/16 at 224 px.

  python launch.py --config configs/large.py --dry_run \
      --config.mesh.topology=v5e:16x16

Text: 12 layers of width 768 (12 heads, MLP 3072); image: ViT-B/16 at
224 px (196 patches + CLS); a 512-wide shared space; a global batch of
32,768 with InfoNCE and SigLIP over the whole batch, computed as ring losses
(no device holds the B x B logits). Parameters and optimizer state are
sharded over the data axis (FSDP), compute is bfloat16 with float32 master
weights, and every encoder block is recomputed in the backward pass.
Its per-chip memory on TPU topologies is in docs/scale.md.
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  # Sizes the data axis of a pod divides: the item tables shard with FSDP.
  c.data.synthetic.update(num_items=102_400, num_users=51_200, image_size=224)
  c.data.max_text_len = 64
  c.model.dim = 512
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.model.text.update(hidden=768, layers=12, heads=12, mlp_dim=3072)
  c.model.image.update(hidden=768, layers=12, heads=12, mlp_dim=3072,
                       patch_size=16)
  c.model.fusion.hidden = 768
  c.model.rec.user_id_embedding = False
  c.loss.siglip = 1.0
  # MMD's kernel is a dense (2B)^2 matrix on every device: off at this batch.
  c.loss.mmd = 0.0
  c.loss.contrastive_impl = "ring"
  # FSDP: every matrix and embedding table split on its first dimension
  # over the data axis (mesh.rule_shardings leaves a dimension the axis does
  # not divide replicated); the optimizer's moments follow.
  c.mesh.rules = ((r"(kernel|embedding)$", ("data", None)),)
  c.train.batch_size = 32768
  c.train.eval_batch_size = 4096
  return c
