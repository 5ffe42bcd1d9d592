"""JAX versions of the MMRec models people compare with (enoche/MMRec):
LightGCN (IDs only), FREEDOM and BM3, each a `ZooModel` (common.py) that
`mmjax.train.zoo_task` trains with MMRec's batches and protocol."""

from mmjax.models.mmrec_zoo.bm3 import BM3
from mmjax.models.mmrec_zoo.common import Graphs, ZooModel
from mmjax.models.mmrec_zoo.freedom import FREEDOM
from mmjax.models.mmrec_zoo.lightgcn import LightGCN

MODELS = {"lightgcn": LightGCN, "freedom": FREEDOM, "bm3": BM3}

__all__ = ["BM3", "FREEDOM", "Graphs", "LightGCN", "MODELS", "ZooModel"]
