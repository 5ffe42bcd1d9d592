"""Memory and time of contrastive loss+grad: ring (sharded, chunked) vs naive.

  python -m mmjax.bench.contrastive_memory --devices 8 --batch 65536 --dim 512 \
      --out r.json

`--batch` takes a comma-separated list (default: the scaling table
1024,4096,16384,65536). Every (impl, batch) runs in a fresh subprocess with
`--devices` simulated CPU devices, so its RSS high-water mark is its own.

JSON rows: {impl, loss, batch, dim, devices, chunk, peak_bytes,
loss_extra_bytes, rss_peak_bytes, seconds, max_abs_diff_vs_naive, skipped}.

  * peak_bytes: XLA's `compiled.memory_analysis()` of the jitted loss+grad
    program, per device: arguments + outputs + temporaries - aliased.
  * loss_extra_bytes: its temporaries alone (`temp_size_in_bytes`): the memory
    the loss needs beyond its inputs and outputs, per device.
  * rss_peak_bytes: the subprocess's measured RSS high-water mark (all
    simulated devices together, plus the Python/XLA runtime), taken before
    the naive reference runs for the diff.
  * seconds: wall time of one loss+grad call after compilation (best of
    `--repeats`).
  * max_abs_diff_vs_naive: the largest |ring - naive| over the loss and its
    gradients, where naive fits (`--naive_max_batch`); null elsewhere.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _measure(args) -> dict:
  """One (impl, batch) row; runs in its own process."""
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from mmjax.losses import contrastive, sharded_contrastive

  mesh = Mesh(np.asarray(jax.devices()).reshape(-1, 1), ("data", "model"))
  b, d = args.batch[0], args.dim
  keys = jax.random.split(jax.random.key(0), 3)
  normed = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  sharding = NamedSharding(mesh, P("data"))
  make = jax.jit(lambda k: normed(jax.random.normal(k, (b, d), jnp.float32)),
                 out_shardings=sharding)
  z_a, z_b = make(keys[0]), make(keys[1])
  ids = jax.device_put(jax.random.randint(keys[2], (b,), 0, 4 * b), sharding)

  def loss_fn(impl):
    ring = impl == "ring"
    kw = dict(mesh=mesh, chunk=args.chunk) if ring else {}
    if args.loss == "infonce":
      fn = sharded_contrastive.ring_infonce if ring else contrastive.infonce
      return lambda za, zb, coef: fn(za, zb, coef[0], ids=ids, **kw)
    fn = sharded_contrastive.ring_siglip if ring else contrastive.siglip
    return lambda za, zb, coef: fn(za, zb, coef[0], coef[1], ids=ids, **kw)

  coef = jnp.array([2.3, -10.0], jnp.float32)
  def compiled(impl):
    grad = jax.value_and_grad(loss_fn(impl), argnums=(0, 1, 2))
    return jax.jit(grad).lower(z_a, z_b, coef).compile()

  run = compiled(args.impl)
  mem = run.memory_analysis()
  seconds, out = float("inf"), None
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(z_a, z_b, coef))
    seconds = min(seconds, time.perf_counter() - t0)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  diff = None
  if args.impl == "ring" and b <= args.naive_max_batch:
    ref = compiled("naive")(z_a, z_b, coef)
    diff = max(float(jnp.max(jnp.abs(x - y)))
               for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
  return dict(
      peak_bytes=int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
      loss_extra_bytes=int(mem.temp_size_in_bytes),
      rss_peak_bytes=rss,
      seconds=seconds, max_abs_diff_vs_naive=diff, loss_value=float(out[0]))


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")],
                 default=[1024, 4096, 16384, 65536])
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--chunk", type=int, default=512)
  p.add_argument("--loss", choices=("infonce", "siglip"), default="infonce")
  p.add_argument("--impls", default="ring,naive")
  p.add_argument("--naive_max_batch", type=int, default=4096,
                 help="naive is skipped above this batch (its B x B logits "
                      "and their gradient do not fit)")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default="contrastive_memory.json")
  p.add_argument("--impl", help=argparse.SUPPRESS)   # Set for the subprocess.
  return p.parse_args(argv)


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.impl:   # The subprocess: one row to stdout.
    print(json.dumps(_measure(args)))
    return
  rows = []
  for b in args.batch:
    for impl in args.impls.split(","):
      row = dict(impl=impl, loss=args.loss, batch=b, dim=args.dim,
                 devices=args.devices, chunk=args.chunk if impl == "ring" else None)
      if impl == "naive" and b > args.naive_max_batch:
        row.update(skipped=f"B x B logits alone need {b * b * 4 / 2**30:.1f} GiB",
                   peak_bytes=None, loss_extra_bytes=None, rss_peak_bytes=None,
                   seconds=None, max_abs_diff_vs_naive=None)
      else:
        cmd = [sys.executable, "-m", "mmjax.bench.contrastive_memory",
               "--impl", impl, "--batch", str(b), "--devices", str(args.devices),
               "--dim", str(args.dim), "--chunk", str(args.chunk), "--loss", args.loss,
               "--naive_max_batch", str(args.naive_max_batch),
               "--repeats", str(1 if b >= 16384 else args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
          row.update(skipped=f"failed: {proc.stderr.strip().splitlines()[-1:]}")
        else:
          row.update(json.loads(proc.stdout.strip().splitlines()[-1]), skipped=None)
      rows.append(row)
      print(json.dumps(row), flush=True)
      with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
