"""The config contract, by generation: for every key of the schema,
hypothesis draws values it must refuse (wrong type, out of bounds, NaN, inf,
integers past 32 bits, a choice not allowed, () where a value is needed) and
sets them either as `--config.KEY=TEXT` or in a config file. `mmjax train`
must then exit 2 with exactly one `mmjax: error: ...` line on stderr, no
traceback, and no workdir.

Validation runs before any JAX work, so each example costs milliseconds.
MMJAX_FUZZ_EXAMPLES=N draws N examples per key instead of the CI count.
"""

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mmjax.run  # noqa: F401  Patched below; imported outside hypothesis's runs.
from mmjax import cli
from mmjax.config.checks import in_bounds
from mmjax.config.schema import FEATURE_GRAPH, KEYS, RAW, SYNTHETIC

TESTS = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = int(os.environ.get("MMJAX_FUZZ_EXAMPLES", "4"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
INT32 = 2**31


# --- the base config a key is read on ---------------------------------------

def _base(key) -> tuple[str, list[str], str]:
  """(config spec, overrides that select the key's data path, the Python
  that builds that config in a config file)."""
  spec, path_args, source = _path_base(key)
  # An override of the very key would replace the value a config file sets.
  return spec, [a for a in path_args if not a.startswith(f"--config.{key.path}=")], source


def _path_base(key) -> tuple[str, list[str], str]:
  tiny = os.path.join(TESTS, "tiny_cli_config.py")
  head = f"import sys\nsys.path.insert(0, {TESTS!r})\n"
  if SYNTHETIC in key.paths:
    return tiny, [], head + "from tiny_cli_config import get_config as base\n"
  if RAW in key.paths:
    return (tiny + ":raw", ["--config.data.name=raw", "--config.data.raw.root=/x"],
            head + "from tiny_cli_config import get_config as _tiny\n"
            "base = lambda: _tiny('raw')\n")
  assert set(key.paths) <= set(FEATURE_GRAPH), key.path
  return ("mmrec", ["--config.data.dir=/x", "--config.data.inter_file=x.inter"],
          "from mmjax.config import load\nbase = lambda: load('mmrec')\n")


# --- invalid values ------------------------------------------------------------

def _outside(bounds: str, numbers):
  return numbers.filter(lambda v: not in_bounds(v, bounds))


def _bad_numbers(kind: type, bounds: str):
  """Numbers of `kind` the key must refuse, as Python values."""
  huge = st.one_of(st.integers(INT32, 2**70), st.integers(-2**70, -INT32 - 1))
  if kind is int:
    out = [huge]
    if bounds:
      out.append(_outside(bounds, st.integers(-2**40, 2**40)))
    return st.one_of(*out)
  out = [st.sampled_from([float("nan"), float("inf"), float("-inf")])]
  if bounds:
    out.append(_outside(bounds, st.floats(-1e30, 1e30, allow_nan=False)))
  return st.one_of(*out)


def _wrong_type(kind: type):
  """Values of another type than `kind` (as config-file Python values)."""
  others = {bool: st.sampled_from([2, 0.5, "yes", (True,)]),
            int: st.sampled_from([1.5, "3", True, (1,), None]),
            # ConfigDict itself turns a bool set on a float key into 0.0/1.0.
            float: st.sampled_from(["0.1", (0.1,), None]),
            str: st.sampled_from([3, 0.5, True, ("a",), None]),
            tuple: st.sampled_from([3, "1,2", 0.5])}
  return others[kind]


# Keys whose values have a structure of their own beyond type and bounds.
STRUCTURED = {
    "mesh.rules": [(1,), (("x",),), (("(", ()),), (("x", ("batch",)),), ((1, ()),)],
    "train.freeze": [("text/(",), ("[",)],
}


def bad_values(key):
  """Python values that `key` must refuse."""
  out = [_wrong_type(key.type)]
  if key.path in STRUCTURED:
    out.append(st.sampled_from(STRUCTURED[key.path]))
  if key.choices and key.type is str:
    out.append(st.text(max_size=8).filter(lambda s: s not in key.choices))
  if key.type in (int, float):
    out.append(_bad_numbers(key.type, key.bounds))
  if key.type is tuple:
    if key.nonempty:
      out.append(st.just(()))
    if key.of in (int, float):
      element = _bad_numbers(key.of, key.bounds)
      out.append(st.tuples(element))
      out.append(st.sampled_from([("a",), (None,)] + ([(1.5,)] if key.of is int else [])))
    if key.choices:
      out.append(st.text(max_size=8).filter(lambda s: s not in key.choices)
                 .map(lambda s: (s,)))
  return st.one_of(*out)


def _as_source(value) -> str:
  """`value` as Python source (NaN and inf spelled as float(...))."""
  if isinstance(value, float) and value != value:
    return "float('nan')"
  if isinstance(value, float) and value in (float("inf"), float("-inf")):
    return f"float('{value}')"
  if isinstance(value, tuple):
    return "(" + "".join(_as_source(v) + ", " for v in value) + ")"
  return repr(value)


def _as_text(key, value) -> str | None:
  """`value` as an override's TEXT, or None when no text spells it: a text
  is always a valid string, and "3" for a tuple key means (3,)."""
  if key.type is str or isinstance(value, str) or value is None:
    return None
  if key.type is tuple and not isinstance(value, tuple):
    return None
  if isinstance(value, tuple):
    if any(isinstance(v, float) and (v != v or abs(v) == float("inf")) for v in value):
      return None   # nan/inf are not Python literals inside a tuple.
    return repr(value)
  return repr(value) if not isinstance(value, bool) else str(value).lower()


# --- one run -------------------------------------------------------------------

def _accepted(config, workdir, **kw):
  raise AssertionError(f"validation accepted it; a run would start in {workdir}")


def run_train(argv: list[str]) -> tuple[int, str]:
  """(exit status, stderr) of `mmjax train` in-process; a config that passes
  validation fails the test at once instead of training."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
      mock.patch("mmjax.run.train_and_evaluate", _accepted):
    try:
      cli.train_main(["mmjax train"] + argv)
      code = 0
    except SystemExit as e:
      code = e.code
  return code, err.getvalue()


def assert_refused(code: int, stderr: str, workdir: str, what: str) -> None:
  lines = stderr.strip().splitlines()
  assert code == 2, f"{what}: exit {code}, stderr {stderr!r}"
  assert len(lines) == 1 and lines[0].startswith("mmjax: error: "), (what, stderr)
  assert "Traceback" not in stderr, (what, stderr)
  assert not os.path.exists(workdir), f"{what}: left {workdir}"


def _refuses(key, value, through_file: bool) -> None:
  spec, path_args, base_source = _base(key)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "w")
    args = ["--workdir", workdir] + path_args
    text = None if through_file else _as_text(key, value)
    if text is None:
      spec = os.path.join(tmp, "c.py")
      with open(spec, "w") as f:
        f.write(base_source + "\n\ndef get_config():\n  c = base()\n"
                f"  c.{key.path} = {_as_source(value)}\n  return c\n")
      argv = ["--config", spec] + args
    else:
      argv = ["--config", spec] + args + [f"--config.{key.path}={text}"]
    code, stderr = run_train(argv)
    assert_refused(code, stderr, workdir, f"config.{key.path}={value!r}")


@pytest.mark.parametrize("key", KEYS, ids=[k.path for k in KEYS])
def test_every_key_refuses_invalid_values(key):
  @FUZZ
  @given(value=bad_values(key), through_file=st.booleans())
  def check(value, through_file):
    _refuses(key, value, through_file)
  check()


# Values each fine alone that break a constraint between keys.
BETWEEN = [
    ["--config.model.image.patch_size=5"],
    ["--config.model.text.heads=3"],
    ["--config.model.image.heads=5"],
    ["--config.train.accum_steps=3"],
    ["--config.model.fusion.kind=cross_attention", "--config.model.fusion.heads=5"],
    ["--config.data.synthetic.interactions_per_user=60"],
    ["--config.postprocess.item_id_scales=(2,)", "--config.model.rec.item_id_embedding=false"],
    ["--config.mesh.data=0"],
    ["--config.model.image.init_from=/nonexistent"],
]


@FUZZ
@given(overrides=st.sampled_from(BETWEEN))
def test_constraints_between_keys_refuse_the_same_way(overrides):
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "w")
    code, stderr = run_train(["--config", os.path.join(TESTS, "tiny_cli_config.py"),
                              "--workdir", workdir] + overrides)
    assert_refused(code, stderr, workdir, " ".join(overrides))


@pytest.mark.parametrize("override", ["train.lr=nan", "data.max_text_len=100000",
                                      "model.image.cnn_widths=()"])
def test_a_real_process_prints_one_line(override, tmp_path):
  """The same through `python -m mmjax`: nothing else reaches stderr."""
  workdir = str(tmp_path / "w")
  p = subprocess.run(
      [sys.executable, "-m", "mmjax", "train", "--config",
       os.path.join(TESTS, "tiny_cli_config.py"), "--workdir", workdir,
       f"--config.{override}"], capture_output=True, text=True, timeout=120)
  assert_refused(p.returncode, p.stderr, workdir, override)
