"""The package's import graph: no cycle, layers point one way, no private
name crosses a module boundary. Reads the sources with `ast` (nothing is
imported), so it takes well under a second."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mosaic_jax"
# The layers below training (issue 20): they import nothing from the three
# layers above them.
LOWER = ("agent", "batches", "benchmarks", "data", "distributed", "envs",
         "judge", "losses", "models", "pareto", "rewards", "rollout",
         "sampling", "sections", "sharding", "text_policy")
UPPER = ("train", "methods", "eval")


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name (without the package) -> its file."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _resolve(name: str, modules) -> str | None:
  """The longest module prefix of a dotted `mosaic_jax.` name."""
  parts = name.split(".")[1:]
  while parts and ".".join(parts) not in modules:
    parts.pop()
  return ".".join(parts) if parts else None


def _imports(path: pathlib.Path, modules):
  """(module imported, names taken from it) of every import in the file,
  function-level ones included."""
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("mosaic_jax."):
          yield _resolve(alias.name, modules), ()
    elif (isinstance(node, ast.ImportFrom) and node.module
          and node.module.split(".")[0] == "mosaic_jax" and not node.level):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full.split(".", 1)[-1] in modules:
          yield full.split(".", 1)[1], ()
        else:
          yield _resolve(node.module, modules), (alias.name,)


def _graph():
  modules = _modules()
  graph, private = {}, []
  for name, path in modules.items():
    deps = set()
    for dep, names in _imports(path, modules):
      if dep and dep != name:
        deps.add(dep)
      private += [f"{name} imports {dep}.{n}" for n in names
                  if n.startswith("_")]
    graph[name] = deps
  return graph, private


def _top(module: str) -> str:
  return module.split(".")[0]


def test_graph_reads_the_package():
  graph, _ = _graph()
  # The reader sees the edges it is meant to check.
  assert "rollout" in graph["methods.mosaic"]
  assert "train.run" in graph["methods.fate"]
  assert "envs.records" in graph["rollout"]


def test_lower_layers_import_nothing_above_them():
  graph, _ = _graph()
  bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if _top(m) in LOWER
               for d in deps if _top(d) in UPPER)
  assert not bad, "\n".join(bad)


def test_train_imports_no_method():
  graph, _ = _graph()
  bad = sorted(f"{m} -> {d}" for m, deps in graph.items()
               if _top(m) in ("train", "eval") for d in deps
               if _top(d) == "methods")
  assert not bad, "\n".join(bad)


def test_no_import_cycle():
  graph, _ = _graph()
  state, path, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    path.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep)
    path.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "\n".join(cycles)


def test_no_private_name_crosses_modules():
  _, private = _graph()
  assert not private, "\n".join(private)


@pytest.mark.parametrize("source", [
    "from mosaic_jax.train import run\n",
    "import mosaic_jax.methods.fate\n",
])
def test_a_lower_layer_edge_would_be_found(source, tmp_path):
  # The check is not vacuous: an upward import in a lower module is an edge.
  modules = {**_modules()}
  fake = tmp_path / "fake.py"
  fake.write_text(source, encoding="utf-8")
  deps = {d for d, _ in _imports(fake, modules)}
  assert deps & {"train.run", "methods.fate"}
