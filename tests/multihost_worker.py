"""One process of a multi-host run on CPU (gloo), or the 1-process reference.

  multihost_worker.py DATA_DIR NUM_PROCESSES PROCESS_ID PORT LOCAL_DEVICES

Runs 3 train steps of the tiny config (ring contrastive loss, so the ring
crosses the process boundary) and, on process 0, prints the per-step losses
and the final parameter checksum as one line: RESULT {json}.
"""

import faulthandler
import json
import os
import sys

# A hung collective prints every thread's stack and exits, instead of
# blocking the test until its timeout.
faulthandler.dump_traceback_later(int(os.environ.get("MMJAX_WORKER_TIMEOUT", 600)),
                                  exit=True)

data_dir, num_processes, process_id, port, local_devices = sys.argv[1:6]
sys.path.insert(0, os.path.dirname(__file__))
import xla_env  # noqa: E402

os.environ["XLA_FLAGS"] = xla_env.with_devices(int(local_devices))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmjax.train import distributed  # noqa: E402
from scale_setup import setup, train_steps  # noqa: E402
from tiny import tiny_config  # noqa: E402

if int(num_processes) > 1:
  distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
cfg = tiny_config()
cfg.data.dir = data_dir
cfg.loss.contrastive_impl = "ring"
cfg.train.warmup_steps = 0
state, metrics = train_steps(setup(cfg, data_dir), 3)
# Replicated metrics are fully addressable on every process.
losses = [float(m["loss"]) for m in metrics]
params = jax.tree.leaves(state["params"])
checksum = float(sum(np.abs(np.asarray(p.addressable_shards[0].data)).sum() for p in params))
if jax.process_index() == 0:
  print("RESULT " + json.dumps(dict(losses=losses, checksum=checksum,
                        processes=jax.process_count(), devices=jax.device_count())))
