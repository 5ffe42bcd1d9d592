"""mmjax: multimodal alignment for recommender systems, in JAX/Flax NNX."""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """A finished run as a `mmjax.api.TrainedModel` (see mmjax/api.py)."""
  from mmjax.api import load as load_run  # Keeps `import mmjax` light.
  return load_run(workdir, step)
