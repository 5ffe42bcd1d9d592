"""mmjax.bench.throughput's round protocol: interleaved, rotating turns, each
starting with an untimed switch-in that stays out of the timed figures."""

import pytest

from mmjax.bench import throughput


class _Recorder:
  """A runner whose first `cold` steps after another runner ran cost 10x."""

  def __init__(self, name, log, step_s):
    self.name, self.log, self.step_s = name, log, step_s

  def run(self, steps):
    cold = not self.log or self.log[-1][0] != self.name
    self.log.append((self.name, steps))
    return steps * self.step_s * (10.0 if cold else 1.0)


def test_switch_in_turns_are_untimed_and_the_order_rotates():
  log = []
  runners = {n: _Recorder(n, log, s) for n, s in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
  times, switch = throughput.interleave(runners, steps=3, rounds=3, switch_steps=2)
  # Every turn: a 2-step switch-in, then the 3 timed steps, same runner.
  turns = [log[i:i + 2] for i in range(0, len(log), 2)]
  assert all(t[0] == (t[1][0], 2) and t[1][1] == 3 for t in turns)
  assert [t[0][0] for t in turns] == list("abc" "bca" "cab")
  assert times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}
  assert switch == {"a": [10.0] * 3, "b": [20.0] * 3, "c": [30.0] * 3}


def test_without_switch_in_the_cold_turn_is_timed():
  log = []
  runners = {n: _Recorder(n, log, 1.0) for n in "abc"}
  times, switch = throughput.interleave(runners, steps=2, rounds=2, switch_steps=0)
  # Three runs rotating: every turn follows another run's, so every one is cold.
  assert times == {n: [10.0, 10.0] for n in "abc"}
  assert switch == {n: [] for n in "abc"}


def test_bad_protocol_arguments_are_refused():
  with pytest.raises(SystemExit):
    throughput.main(["--config", "configs/demo.py", "--out", "x.json", "--switch-in", "-1"])
