"""One config key's declaration, the data paths keys apply to, and the
bounds the key tables share."""

from __future__ import annotations

import dataclasses
from typing import Any

SYNTHETIC, RAW, MMREC = "synthetic", "raw", "mmrec"
END_TO_END = (SYNTHETIC, RAW)   # The multimodal model, trained end to end.
FEATURE_GRAPH = (MMREC,)        # The graph recommender on fixed item features.
ALL = END_TO_END + FEATURE_GRAPH

PATH_NAMES = {SYNTHETIC: "the end-to-end model on the embedded catalog",
              RAW: "the end-to-end model on a raw folder",
              MMREC: "the feature-graph recommender"}


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. `bounds` ("> 0", ">= 0", "[0, 1)", "[0, 4 * cpus]")
  and `of` (the element type) apply to each element of a tuple key; `cpus`
  is the machine's CPU count. Every number must also be finite, and every
  integer fit 32 bits. `nonempty`: a tuple key that may not be ()."""
  path: str
  default: Any
  doc: str
  choices: tuple = ()
  bounds: str = ""
  of: type | None = None
  paths: tuple[str, ...] = ALL
  required_on: tuple[str, ...] = ()   # Data paths on which "" is an error.
  nonempty: bool = False

  @property
  def type(self) -> type:
    return type(self.default)


K = Key   # Short, for the long tables of keys.
POS, NONNEG = "> 0", ">= 0"
SEED_RANGE = "[0, 2147483647]"
FRACTION = "[0, 1)"   # Dropouts and probabilities.
E2E_WEIGHT = dict(bounds=NONNEG, paths=END_TO_END)
