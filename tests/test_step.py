"""The weighted objective and the pretrain -> joint schedule."""

import jax.numpy as jnp
import pytest

from mmjax.config import default_config
from mmjax.train.step import weighted_total


@pytest.mark.parametrize("step,expected", [(0, 1.0 * 2 + 0.1 * 3), (4, 1.0 * 2 + 0.1 * 3),
                                           (5, 1.0 * 2 + 0.1 * 3 + 1.0 * 7 + 0.5 * 11)])
def test_recommendation_terms_join_after_pretraining(step, expected):
  cfg = default_config().loss
  cfg.update(infonce=1.0, mlm=0.1, softmax=1.0, bpr=0.5, pretrain_steps=5)
  terms = dict(infonce=jnp.float32(2), mlm=jnp.float32(3), softmax=jnp.float32(7),
               bpr=jnp.float32(11))
  assert float(weighted_total(terms, cfg, jnp.int32(step))) == pytest.approx(expected)
