"""mmjax: multimodal alignment for recommender systems, in JAX/Flax NNX.

The public API (`mmjax.load`, ...) loads on first use, so that importing a
submodule such as `mmjax.train.step` brings in nothing from the layers above
it (the API, evaluation, the benchmarks).
"""

import importlib as _importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "load": "mmjax.api",
    "TrainedModel": "mmjax.api",
    "FeatureGraphModel": "mmjax.api",
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(_importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mmjax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY))
