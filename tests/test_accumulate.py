"""GradCache accumulation gives the gradients of the unaccumulated step."""

import pytest

from scale_setup import grads, max_diff, setup, tiny_f32_grads


@pytest.mark.slow
def test_gradcache_equals_full_batch(data_dir):
  """Every term (InfoNCE, SigLIP, MMD, CORAL, MLM, softmax, BPR, BCE) at once."""
  cfg, ((loss, (terms, memory)), g) = tiny_f32_grads(data_dir)
  cfg.train.accum_steps = 4
  (loss4, (terms4, memory4)), g4 = grads(setup(cfg, data_dir))
  assert set(terms) >= {"infonce", "siglip", "mmd", "coral", "mlm", "softmax"}
  assert abs(float(loss) - float(loss4)) <= 1e-5
  assert max_diff(terms, terms4) <= 1e-5
  assert max_diff(memory, memory4) <= 1e-5
  assert max_diff(g, g4) <= 1e-5


def test_accum_steps_must_divide_batch(config):
  from mmjax.config import validate
  from mmjax.errors import MmjaxError
  config.train.accum_steps = 3
  with pytest.raises(MmjaxError, match="config.train.accum_steps=3"):
    validate(config)
