"""Whether one family of mmjax's CPU kernels runs, and the config's choice.

Each family (the fused attention, the dense matmuls) has a config key with
the choices `CHOICES`: "xla" never uses the kernels; "cpu" insists on them
(an error says why they can't run); "auto" uses them on the CPU backend when
they are built, and XLA's ops elsewhere (GPU, TPU). A family can also be
turned off by an environment variable, for A/B runs.
"""

from __future__ import annotations

import logging
import os

import jax

from mmjax.kernels import build

log = logging.getLogger(__name__)

CHOICES = ('auto', 'xla', 'cpu')


def check_choice(family: str, kernel: str) -> str:
  """`kernel` if it is one of CHOICES; else a ValueError naming `family`."""
  if kernel not in CHOICES:
    raise ValueError(f'{family} kernel must be one of {CHOICES}, got {kernel!r}')
  return kernel


class Gate:
  """Availability of one kernel family: built and registered (on first
  ask), and not switched off by `env_var`=0. When it is not available the
  reason is logged once, with `fallback` (what runs instead)."""

  def __init__(self, family: str, env_var: str, fallback: str):
    self.family, self.env_var, self.fallback = family, env_var, fallback
    self._warned: set[str] = set()

  def unavailable_reason(self) -> str | None:
    """Why the kernels can't be used, or None (builds them on first call)."""
    if os.environ.get(self.env_var, '1') == '0':
      return f'disabled by {self.env_var}=0'
    return build.load()

  def available(self) -> bool:
    reason = self.unavailable_reason()
    if reason is not None and reason not in self._warned:
      self._warned.add(reason)
      log.warning('%s kernels unavailable, using %s: %s', self.family,
                  self.fallback, reason)
    return reason is None

  def wanted(self, kernel: str) -> bool:
    """Whether the choice `kernel` (validated where it was set: check_choice)
    runs these kernels on operands they support; "cpu" raises when they
    can't run."""
    if kernel == 'xla':
      return False
    if kernel == 'cpu':
      if not self.available():
        raise RuntimeError(
            f'{self.family} kernel "cpu": {self.unavailable_reason()}')
      return True
    return jax.default_backend() == 'cpu' and self.available()
