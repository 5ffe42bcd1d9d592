"""Where mmjax caches what it builds (generated catalogs)."""

import os


def cache_root() -> str:
  """$MMJAX_CACHE, else ~/.cache/mmjax."""
  return os.environ.get("MMJAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "mmjax")
