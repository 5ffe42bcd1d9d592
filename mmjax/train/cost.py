"""What a compiled program costs, as XLA's cost analysis reports it."""


def step_flops(compiled) -> float:
  """FLOPs of a compiled program (a jax `Compiled`); 0 where the backend
  reports none. A loop's body counts once, so a k-step program reports one
  step."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend reports costs.  # pylint: disable=broad-except
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def scan_flops(compiled, iterations: int) -> float:
  """FLOPs of a compiled program that is one `lax.scan` of `iterations`
  identical steps (an epoch of batches): XLA counts the body once."""
  return step_flops(compiled) * iterations
