"""The package's import structure: every module imports only from its own layer or the layers
below it (the order is written once, in docs/architecture.md, and read from there), and no
two modules import each other in a cycle. Imports are read with ``ast``, not executed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PKG = REPO / "recsys"


def layer_table() -> dict[str, int]:
    """The layer table of docs/architecture.md: ``| N | `recsys/path.py` | job |`` rows between
    the ``<!-- layers`` markers -> {module or package prefix: N}. A ``.py`` file names one
    module, a folder ending in ``/`` every module below it."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layers")[1].split("<!-- /layers -->")[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([\w/.]+)`", block, re.M)
    assert rows, "docs/architecture.md has no layer table between <!-- layers --> markers"
    table = {}
    for n, path in rows:
        key = path.rstrip("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        table[key + (".*" if path.endswith("/") else "")] = int(n)
    return table


def layer_of(name: str, table: dict[str, int]) -> int:
    """The layer of module ``name``: its own row, else the row of the folder holding it."""
    if name in table:
        return table[name]
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) + ".*" in table:
            return table[".".join(parts[:i]) + ".*"]
    below = {n for k, n in table.items() if k.startswith(name + ".")}  # a package: its modules' layer
    if len(below) == 1:
        return below.pop()
    raise AssertionError(f"module {name} is in no row of the layer table of docs/architecture.md")


def module_name(path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path) -> set[str]:
    """recsys modules imported anywhere in ``path`` (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "recsys"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "recsys":
                for a in node.names:  # `from recsys.data import formats`: a module, not a name
                    sub = f"{node.module}.{a.name}"
                    out.add(sub if _exists(sub) else node.module)
    out.discard(me)
    return out


def _exists(name: str) -> bool:
    p = REPO.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def upward_imports(deps: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    """'a (layer i) imports b (layer j)' for every import of a higher layer."""
    out = []
    for name, ds in deps.items():
        mine = layer_of(name, table)
        out += [f"{name} (layer {mine}) imports {d} (layer {layer_of(d, table)})"
                for d in sorted(ds) if layer_of(d, table) > mine]
    return out


def test_every_module_is_in_a_layer_and_imports_only_downward():
    table = layer_table()
    deps = {name: imports_of(path) for name, path in MODULES.items()}
    for name in deps:
        layer_of(name, table)  # every module has a row
    assert not upward_imports(deps, table), "\n".join(upward_imports(deps, table))


def test_no_import_cycles():
    graph = {n: {d for d in imports_of(p) if d in MODULES} for n, p in MODULES.items()}
    # a package's __init__ may re-export its submodules: edges from a package into itself are
    # how re-exports work, so a cycle through an __init__ that only re-exports is not counted
    graph = {n: {d for d in ds if not (d.startswith(n + ".") and MODULES[n].name == "__init__.py")}
             for n, ds in graph.items()}
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_an_upward_import_is_caught():
    # the checks can fail: a data module that imports the model layer is reported
    tree_deps = {"recsys.data.datamodule": {"recsys.model.module"}}
    assert upward_imports(tree_deps, layer_table()) == [
        "recsys.data.datamodule (layer 1) imports recsys.model.module (layer 4)"]
    with pytest.raises(AssertionError, match="no row"):
        layer_of("recsys.newpackage.thing", layer_table())


def test_light_imports_stay_light():
    # the readers, the registry, the schema, the exact retriever and the metrics load without
    # Lightning, torch or FAISS; the package imports its names lazily
    code = ("import sys; import recsys; from recsys.data.download import download; "
            "import recsys.data.formats, recsys.data.datasets, recsys.schema, recsys.retrieval, recsys.eval.metrics; "
            "heavy = sorted(m for m in ('lightning', 'torch', 'faiss') if m in sys.modules); "
            "assert not heavy, heavy; print(recsys.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]


def test_public_api():
    import recsys

    assert isinstance(recsys.__version__, str) and recsys.__version__
    for name in recsys.__all__:
        assert getattr(recsys, name) is not None, name
    assert recsys.TwoTowerModule.__module__ == "recsys.model.module"
    assert recsys.InteractionDataModule.__module__ == "recsys.data.datamodule"
    with pytest.raises(AttributeError):
        recsys.NoSuchThing  # noqa: B018


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p.parent) for p in PKG.rglob("__init__.py")}
    assert on_disk | {"recsys.configs"} == packages


def test_no_mock_or_monkeypatching_in_library_or_benchmarks():
    offenders = []
    for folder in ("recsys", "bench"):
        for p in (REPO / folder).rglob("*.py"):
            text = p.read_text()
            if "unittest.mock" in text or "mock.patch" in text or "monkeypatch" in text:
                offenders.append(str(p.relative_to(REPO)))
    assert not offenders, offenders


def test_readme_layout_names_every_module():
    # the README's Layout block lists every module file (by name) and every subpackage
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout")[1].split("```")[1]
    missing = [str(p.relative_to(REPO)) for p in PKG.rglob("*.py")
               if p.name != "__init__.py" and p.parent.name != "commands" and p.stem not in block]
    missing += [str(p.relative_to(REPO)) for p in PKG.rglob("__init__.py") if p.parent.name + "/" not in block
                and p.parent != PKG]
    assert not missing, f"README Layout does not mention {missing}"
