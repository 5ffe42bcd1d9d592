"""XLA_FLAGS of the test processes, subprocesses included.

Tests run a few steps of tiny models, so XLA's compiles dominate their time.
At backend optimisation level 0 the CPU compiler skips most of LLVM's passes:
programs compile much faster and run somewhat slower, a good trade for a few
steps. Runs that a test compares are made under the same flags.
"""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"
_DEVICES = "--xla_force_host_platform_device_count"


def use_fast_compile() -> None:
  """Sets the suite's flags, unless the environment already sets XLA_FLAGS."""
  os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)


def with_devices(n: int) -> str:
  """This process's XLA_FLAGS with `n` simulated CPU devices."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICES)]
  return " ".join(kept + [f"{_DEVICES}={n}"])
