"""Multi-host start-up: one process per host, joined by jax.distributed.

Each process sees its local devices; `jax.devices()` then lists all of them
and the mesh spans every host. The grain pipeline reads each process's own
slice of the batch and `mesh.global_batch` assembles the global arrays;
Orbax writes checkpoints from all processes; only process 0 writes metrics
and the summary. See docs/scale.md for pod-slice and multi-node GPU launches.
"""

import jax

from mmjax.errors import MmjaxError


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1, auto: bool = False) -> bool:
  """Joins the processes of a multi-host run; True if it did.

  With `coordinator_address` (host:port), `num_processes` and `process_id`
  from the flags, it uses them; with `auto` (flag --distributed), JAX detects
  them (Cloud TPU pod slices, SLURM, Open MPI). Otherwise this is a
  single-process run and nothing happens. Must run before anything touches a
  JAX device.
  """
  explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
  if not explicit and not auto:
    return False
  if explicit and not (coordinator_address and num_processes > 0
                       and 0 <= process_id < num_processes):
    raise MmjaxError(
        "--coordinator_address, --num_processes and --process_id go together: "
        f"got {coordinator_address!r}, {num_processes}, {process_id}")
  # CPU processes need a cross-process collectives backend; GPU/TPU ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  try:
    jax.distributed.initialize()
  except (RuntimeError, ValueError) as e:
    raise MmjaxError(
        f"--distributed: JAX found no cluster to join ({e}); pass "
        "--coordinator_address, --num_processes and --process_id") from None
  return True
