"""The feature-graph recommender on any MMRec-format data dir.

  python launch.py --config configs/mmrec.py --workdir runs/mmrec \
      --config.data.dir=DIR --config.data.inter_file=NAME.inter \
      --config.data.feature_files=text_feat.npy,image_feat.npy \
      [--config.data.feature_dir=FEATURES_DIR] [--config.seeds=0,1,2]

Fixed item features through the aligners, LightGCN over the user-item graph
and a kNN item graph; MMRec's protocol (full ranking, train items masked,
early stop on valid Recall@20 with patience 20, test at the best valid
epoch), so figures compare with MMRec's models; see docs/mmrec.md.

Like MMRec's published tables, the result comes from a search on the
user's data, picked on valid: the softmax temperature at 0.1, 0.15 and
0.2 (the range of the contrastive temperatures MMRec's models use: SLMRec
searches 0.1 and 0.2, SMORE fixes 0.2), vmapped in one program, then the
chosen point rerun with three seeds. Three LightGCN layers: LightGCN's own
default. `--config.grid.axes=` trains the config as it is.
"""

from mmjax.config import default_config


def get_config():
  c = default_config()
  c.data.name = "mmrec"
  c.model.dim = 64
  c.model.rec.temperature = 0.1
  c.feature_graph.layers = 3
  c.loss.softmax = 1.0
  c.loss.bpr = 0.0
  c.loss.infonce = 0.1
  c.train.batch_size = 16384   # 6 steps per DBbook epoch: propagation runs per step.
  c.feature_graph.negatives = 512
  c.train.lr = 1e-2
  c.train.weight_decay = 0.0
  # MMRec's protocol: validate every epoch, stop after 20 evaluations
  # without a better valid recall@20.
  c.train.eval_every = 1
  c.train.early_stop.metric = "recall@20"
  c.train.early_stop.patience = 20
  # A checkpoint every 10 epochs bounds what a kill loses; saves are async.
  c.train.checkpoint_every = 10
  c.grid.axes = "model.rec.temperature=0.1,0.15,0.2"
  c.seeds = (0, 1, 2)
  return c
