"""The PyTorch baseline is the same model: weights transfer both ways, and one
SGD step from identical weights on an identical batch gives the same loss,
terms and updated parameters (f32, <= 1e-4)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from mmjax.baselines.torch import transfer  # noqa: E402
from mmjax.baselines.torch.model import TorchMultimodalRecommender  # noqa: E402
from mmjax.baselines.torch.train_step import TorchTrainStep, to_torch_batch  # noqa: E402
from mmjax.models.model import build_model  # noqa: E402
from mmjax import mesh as mesh_lib  # noqa: E402
from mmjax.train.step import init_state, make_train_step, state_shardings  # noqa: E402
from tiny import shapes_and_batch  # noqa: E402

pytestmark = pytest.mark.slow   # Two JAX step compiles.
LR = 0.5
VARIANTS = {
    # Every loss term; CLS pooling (BERT pooler), MLP fusion, item memory.
    "mlp": dict(),
    # Cross-attention fusion, mean pooling, learned history table, no item bias.
    "cross_attention": dict(fusion="cross_attention", pooling="mean", history="embedding",
                            item_bias=False),
}


def _configure(config, fusion="mlp", pooling="cls", history="memory", item_bias=True):
  config.model.fusion.kind = fusion
  config.model.text.pooling = config.model.image.pooling = pooling
  config.model.rec.update(history=history, item_bias=item_bias)
  return config


def _copy(tree):
  # Fresh arrays and Variable objects: nnx.merge shares a State's Variables.
  return jax.tree.map(np.array, tree)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def one_step(request, data_dir):
  from tiny import tiny_config
  config = tiny_config()
  config.data.dir = data_dir
  config = _configure(config, **VARIANTS[request.param])
  shapes, batch = shapes_and_batch(config)
  tx = optax.sgd(LR)
  graphdef, state = init_state(build_model(config.model, shapes, seed=0), tx, 0)
  start = _copy((state["params"], state["buffers"]))
  tmodel = TorchMultimodalRecommender(config.model, shapes)
  transfer.to_torch(nnx.merge(graphdef, *_copy(start)), tmodel)

  def from_torch():
    model = nnx.merge(graphdef, *_copy(start))
    transfer.to_jax(tmodel, model)
    return jax.device_get(nnx.split(model, nnx.Param, ...)[1:])

  round_trip = from_torch()

  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  sh = state_shardings(state, mesh)
  step = make_train_step(graphdef, tx, config.loss, mesh, sh, lambda s: LR)
  new_state, metrics = step(jax.device_put(state, sh), mesh_lib.global_batch(batch, mesh))
  tstep = TorchTrainStep(tmodel, config.loss, torch.optim.SGD(tmodel.parameters(), lr=LR))
  t_loss, t_terms = tstep(to_torch_batch(batch))
  return dict(start=start, round_trip=round_trip,
              jax=(jax.device_get(metrics), jax.device_get((new_state["params"], new_state["buffers"]))),
              torch=(float(t_loss), {k: float(v) for k, v in t_terms.items()},
                     from_torch()))


def test_weights_round_trip_exactly(one_step):
  assert _max_diff(one_step["start"], one_step["round_trip"]) == 0.0


def test_same_loss_and_terms(one_step):
  metrics, _ = one_step["jax"]
  t_loss, t_terms, _ = one_step["torch"]
  assert set(t_terms) >= {"infonce", "siglip", "mmd", "coral", "mlm", "softmax", "bpr", "bce",
                          "orthogonality"}
  assert abs(float(metrics["loss"]) - t_loss) <= 1e-4
  for name, value in t_terms.items():
    assert abs(float(metrics[name]) - value) <= 1e-4, name


def test_same_updated_parameters(one_step):
  _, jax_after = one_step["jax"]
  *_, torch_after = one_step["torch"]
  assert _max_diff(one_step["start"][0], jax_after[0]) > 1e-3   # The step moved them.
  assert _max_diff(jax_after, torch_after) <= 1e-4
