"""Shared fixtures: one tiny config and one tiny generated catalog per test process.

JAX compiles dominate CPU test time, so models are tiny, XLA compiles at a
low optimisation level (xla_env.py), and the persistent compilation cache is
shared by every test process (subprocesses included).
"""

import os
import sys

import pytest

_CACHE = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

sys.path.insert(0, os.path.dirname(__file__))
import xla_env  # noqa: E402
from tiny import tiny_config  # noqa: E402

xla_env.use_fast_compile()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("mmjax_cache"))


@pytest.fixture(scope="session")
def data_dir(cache_root):
  """The tiny embedded catalog, generated once per test process."""
  from mmjax.data import store_write
  from mmjax.data.synthetic import SyntheticSpec
  cfg = tiny_config()
  return store_write.ensure_synthetic(SyntheticSpec(**cfg.data.synthetic.to_dict()), cache_root)


@pytest.fixture()
def config(data_dir):
  cfg = tiny_config()
  cfg.data.dir = data_dir
  return cfg


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, data_dir):
  """One tiny finished run (checkpoint, metrics.jsonl, summary.json), shared
  by the after-training tests (api, export/recommend, report)."""
  from mmjax.run import train_and_evaluate
  cfg = tiny_config()
  cfg.data.dir = data_dir
  cfg.train.steps = 4
  cfg.train.checkpoint_every = 4
  workdir = str(tmp_path_factory.mktemp("trained"))
  train_and_evaluate(cfg, workdir, log=lambda *_: None)
  return workdir
