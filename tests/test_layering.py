"""Imports point one way: from a layer to the same or a lower one, no cycles.

The layers, lowest first: base (errors, config, configs, cache, mesh) <- data <-
models <- losses <- train <- eval <- postprocess <- top (run, api, cli, ...).
The graph is read from the source with `ast` (imports inside functions
included), so nothing is imported to check it. A new top-level module is
unknown until it is given a layer here.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

import mmjax

PACKAGE = pathlib.Path(mmjax.__file__).parent

# Top-level name under mmjax -> layer (lower numbers are lower layers).
LAYERS = {
    "errors": 0, "config": 0, "cache": 0, "mesh": 0,
    "data": 1,
    "models": 2,
    "losses": 3,
    "train": 4,
    "eval": 5,
    "postprocess": 6,
    "run": 7, "api": 7, "cli": 7, "export": 7, "recommend": 7, "report": 7,
    "reevaluate": 7,
    "feature_extraction": 7, "bench": 7, "baselines": 7, "queries": 7,
    "new_items": 7,
    "__main__": 7,  # `python -m mmjax`: the CLI.
    # The shipped config files: the loader finds them through the package;
    # they build on the config alone.
    "configs": 0,
}
CORE = ("data", "models", "losses", "train")
# What the core never imports: the benchmark wing and its PyTorch twin.
NOT_IN_CORE = ("torch", "mmjax.baselines", "mmjax.bench")


def _modules(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  """Dotted name -> source file of every module of `package`."""
  out = {}
  for path in sorted(package.rglob("*.py")):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


def _imported(node, module: str, is_package: bool) -> list[str]:
  """Absolute names an import statement refers to (modules or attributes)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  if node.level:   # Relative: resolve against the importing module's package.
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    prefix = ".".join(base + ([node.module] if node.module else []))
  else:
    prefix = node.module
  return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def _resolve(name: str, modules) -> str | None:
  """The longest prefix of `name` that is one of `modules`; the root package
  only for `mmjax` and `mmjax.<attribute>` (a missing module is no edge)."""
  parts = name.split(".")
  for n in range(len(parts), 1, -1):
    if ".".join(parts[:n]) in modules:
      return ".".join(parts[:n])
  return parts[0] if len(parts) <= 2 else None


def import_graph(package: pathlib.Path = PACKAGE
                 ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
  """(module -> mmjax modules it imports, module -> outside packages it imports)."""
  modules = _modules(package)
  inside, outside = {}, {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), str(path))
    deps, ext = set(), set()
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      names = _imported(node, name, path.name == "__init__.py")
      if isinstance(node, ast.ImportFrom):   # `from a import b`: a.b or a.
        sources, names = names[:1], names[1:]
      else:
        sources = names
      if sources[0].split(".")[0] == "mmjax":
        deps |= {_resolve(n, modules) for n in names} - {None, name}
      else:
        ext |= {n.split(".")[0] for n in sources}
    inside[name], outside[name] = deps, ext
  return inside, outside


def _top_name(module: str) -> str | None:
  """"data" for mmjax.data.store; None for the root package."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def layer(module: str) -> int | None:
  """The layer of `mmjax.<name>...`; None for the root package (it only
  re-exports the API, lazily) and for a name without a layer."""
  return LAYERS.get(_top_name(module))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def upward_imports(graph) -> list[str]:
  return [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
          for m, deps in sorted(graph.items()) for d in sorted(deps)
          if None not in (layer(m), layer(d)) and layer(d) > layer(m)]


def core_imports_of_the_benchmark_wing(graph, outside) -> list[str]:
  bad = []
  for m in sorted(graph):
    if _top_name(m) in CORE:
      names = {f"mmjax.{_top_name(d)}" for d in graph[m]} | outside[m]
      bad += [f"{m} imports {n}" for n in NOT_IN_CORE if n in names]
  return bad


def test_every_top_level_module_has_a_layer():
  unknown = sorted({_top_name(m) for m in _modules()} - {None} - set(LAYERS))
  assert not unknown, (f"mmjax.{unknown[0]} has no layer: add it to LAYERS in "
                       "tests/test_layering.py (and to the layer list in the docs)")


def test_imports_point_downward():
  upward = upward_imports(import_graph()[0])
  assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycles():
  cycle = find_cycle(import_graph()[0])
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_imports_neither_torch_nor_the_benchmark_wing():
  bad = core_imports_of_the_benchmark_wing(*import_graph())
  assert not bad, "\n".join(bad)


def test_the_checks_catch_bad_imports(tmp_path):
  """A small package with an upward import (in a function), a relative
  cycle and torch in the core: each check reports it."""
  files = {
      "__init__.py": "",
      "errors.py": "",
      "data/__init__.py": "",
      "data/store.py": "import torch.nn\nfrom . import pipeline\n",
      "data/pipeline.py": "from mmjax.data.store import x\n",
      "train/__init__.py": "",
      "train/loop.py": "def f():\n  from mmjax.eval import ranking\n",
      "eval/__init__.py": "",
      "eval/ranking.py": "from mmjax import errors\n",
  }
  for name, text in files.items():
    (tmp_path / "mmjax" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mmjax" / name).write_text(text)
  graph, outside = import_graph(tmp_path / "mmjax")
  assert graph["mmjax.eval.ranking"] == {"mmjax.errors"}
  assert upward_imports(graph) == [
      "mmjax.train.loop (layer 4) imports mmjax.eval.ranking (layer 5)"]
  assert find_cycle(graph) == ["mmjax.data.pipeline", "mmjax.data.store",
                               "mmjax.data.pipeline"]
  assert core_imports_of_the_benchmark_wing(graph, outside) == [
      "mmjax.data.store imports torch"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


_LOADED = """
import importlib, sys
for name in sys.argv[1:]:
  importlib.import_module(name)
print(" ".join(sorted(m for m in sys.modules if m in {banned})))
"""


@pytest.mark.parametrize("modules", [
    ["mmjax.train.step"],
    # The whole training layer (and everything under it).
    sorted(m for m in _modules() if _top_name(m) in CORE),
], ids=["train.step", "core"])
def test_importing_the_core_loads_no_upper_layer(modules):
  banned = {"torch", "mmjax.bench", "mmjax.baselines", "mmjax.api", "mmjax.eval",
            "mmjax.postprocess", "mmjax.run"}
  out = subprocess.run(
      [sys.executable, "-c", _LOADED.format(banned=banned), *modules],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  loaded = out.stdout.strip()
  assert not loaded, f"importing {modules[0]} (and {len(modules) - 1} more) loaded {loaded}"
