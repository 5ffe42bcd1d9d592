"""mmjax.bench.throughput end to end on the tiny config: bf16 compute on both
sides, a chosen subset of runs, MFU against a given peak; and the torch step
under bf16 autocast."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mmjax.baselines.torch.model import TorchMultimodalRecommender  # noqa: E402
from mmjax.baselines.torch.train_step import TorchTrainStep, to_torch_batch  # noqa: E402
from mmjax.bench import throughput  # noqa: E402
from tiny import shapes_and_batch  # noqa: E402


def test_bf16_jax_and_eager_with_mfu(config):
  config.model.dtype = "bfloat16"
  out = throughput.measure(config, steps=1, rounds=2, warmup=1, num_batches=1,
                           runs=("jax", "torch_eager"), peak=1e12)
  assert set(out) >= {"jax", "torch_eager"} and "torch_compile" not in out
  assert out["torch_device"] == "cpu" and out["ratio_vs_compile"] is None
  jax_eps, eager_eps = (out[n]["examples_per_sec"] for n in ("jax", "torch_eager"))
  assert out["ratio_vs_eager"] == pytest.approx(jax_eps / eager_eps)
  for name in ("jax", "torch_eager"):
    r = out[name]
    assert len(r["step_ms_rounds"]) == 2 and r["examples_per_sec"] > 0
    assert r["mfu"] == pytest.approx(r["achieved_flops_per_sec"] / 1e12)
  assert out["flops_per_step"] > 0
  table = throughput.markdown(out)
  assert "| MFU |" in table and "torch_compile" not in table


def test_runs_without_jax_are_refused():
  for runs in ("torch_eager", "jax,torch_fast"):
    with pytest.raises(SystemExit):
      throughput.main(["--config", "configs/demo.py", "--out", "x.json", "--runs", runs])


def test_bf16_autocast_step_keeps_f32_state(config):
  shapes, batch = shapes_and_batch(config)
  losses = {}
  for dtype in (torch.float32, torch.bfloat16):
    torch.manual_seed(0)
    model = TorchMultimodalRecommender(config.model, shapes)
    step = TorchTrainStep(model, config.loss, torch.optim.SGD(model.parameters(), lr=0.1),
                          compute_dtype=dtype)
    losses[dtype] = float(step(to_torch_batch(batch))[0])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.rec.item_memory.dtype == torch.float32
    assert np.isfinite(losses[dtype])
  # bf16 rounding moves the loss, a little.
  assert losses[torch.bfloat16] != losses[torch.float32]
  assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=5e-2)
