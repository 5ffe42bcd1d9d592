"""FLOPs of the kernels' custom calls in a compiled program.

XLA's cost analysis counts a custom call as zero FLOPs, so a step whose
matmuls and attention run on mmjax's CPU kernels would report a fraction of
its work. `kernel_flops(hlo_text)` reads each mmjax custom call's operand
shapes from the compiled HLO and counts what XLA would count for the same
ops: 2 per multiply-add of the products (a bias add or column sum 1 per
element), the backward of attention as its four products. Like XLA's own
count, a loop body's calls count once. `step_flops(compiled)` is the whole
program's count: XLA's cost analysis plus these.
"""

from __future__ import annotations

import math
import re

_CALL = re.compile(r'custom_call_target="(mmjax_[a-z_]+)"')
# {f32[8,16]{1,0}, ...}: shapes with their layouts in braces.
_LAYOUTS = re.compile(r'operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}')
_SHAPE = re.compile(r'[a-z0-9]+\[([0-9,]*)\]')


def _shapes(line: str) -> list[tuple[int, ...]]:
  match = _LAYOUTS.search(line)
  if not match:
    return []
  return [tuple(int(d) for d in dims.split(',') if d)
          for dims in _SHAPE.findall(match.group(1))]


def _call_flops(target: str, shapes: list[tuple[int, ...]]) -> float:
  if target == 'mmjax_dense_fwd':      # x (M, K), w (K, N), b
    (m, k), (_, n) = shapes[0], shapes[1]
    return 2.0 * m * k * n + m * n
  if target == 'mmjax_dense_dx':       # dy (M, N), w (K, N)
    (m, n), (k, _) = shapes[0], shapes[1]
    return 2.0 * m * n * k
  if target == 'mmjax_dense_dw':       # x (T, K), dy (T, N)
    (t, k), (_, n) = shapes[0], shapes[1]
    return 2.0 * t * k * n + t * n
  if target in ('mmjax_attention_fwd', 'mmjax_attention_bwd'):
    q, kv = shapes[0], shapes[1]       # (..., Tq, H, D), (..., Tk, H, D)
    products = 2 if target.endswith('fwd') else 4
    return 2.0 * products * math.prod(q) * kv[-3]
  return 0.0


def step_flops(compiled) -> float:
  """FLOPs of a compiled program (a jax `Compiled`): XLA's cost analysis
  (0 where the backend reports none) plus the mmjax kernels' calls."""
  flops = 0.0
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
  except Exception:  # Not every backend reports costs.
    pass
  return flops + kernel_flops(compiled.as_text())


def kernel_flops(hlo_text: str) -> float:
  """Sum of the FLOPs of the mmjax custom calls in `hlo_text`."""
  total = 0.0
  for line in hlo_text.splitlines():
    match = _CALL.search(line)
    if match:
      total += _call_flops(match.group(1), _shapes(line))
  return total
