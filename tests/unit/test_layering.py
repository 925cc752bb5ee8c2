"""pbi_ml never imports dagster; pbi_assets does not import heavy ML libraries at import time;
pbi_ml's modules import each other without cycles."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pbi_ml_source_never_imports_dagster():
    files = sorted((ROOT / "pbi_ml").rglob("*.py"))
    assert files, "pbi_ml has no modules?"
    offenders = [
        str(f.relative_to(ROOT)) for f in files if {"dagster", "dagster_webserver", "pbi_assets"} & _imported_modules(f)
    ]
    assert offenders == []


def test_importing_everything_in_pbi_ml_loads_no_dagster():
    # import every module of pbi_ml in a fresh interpreter and look at sys.modules
    code = (
        "import importlib, pkgutil, sys, pbi_ml\n"
        "for m in pkgutil.walk_packages(pbi_ml.__path__, 'pbi_ml.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'dagster' or n.startswith('dagster.'))\n"
        "print(','.join(bad[:3]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _pbi_ml_imports() -> dict[str, set[str]]:
    """pbi_ml module -> the pbi_ml modules it imports, at the top or inside a function (what runs:
    `if TYPE_CHECKING:` blocks left out); importing `a.b.c` also runs the packages `a.b` and `a`."""
    modules = {}
    for path in sorted((ROOT / "pbi_ml").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        type_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        imported = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        with_packages = {".".join(m.split(".")[:i]) for m in imported for i in range(2, m.count(".") + 2)}
        graph[name] = {m for m in with_packages if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_pbi_ml_modules_import_each_other_without_cycles():
    # counting imports inside functions too: a lazy import only hides a cycle. The one kind allowed:
    # inside one subpackage, a factory importing its backends lazily (describe.base -> describe.vlm)
    graph = _pbi_ml_imports()
    assert "pbi_ml.describe.vlm" in graph["pbi_ml.describe.base"], "the walk sees imports inside functions"
    crossing = [
        cycle for cycle in _cycles(graph) if len({m.rsplit(".", 1)[0] for m in cycle}) > 1 or cycle[0].count(".") == 1
    ]
    assert crossing == []


def test_code_location_import_is_light():
    # the multiprocess executor re-imports the code location per step: keep torch & co out of it
    code = (
        "import sys, pbi_assets.definitions\n"
        "heavy = [n for n in ('torch', 'diffusers', 'transformers', 'open_clip') if n in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _private_dagster_imports(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, {alias.name for alias in node.names})]
        elif isinstance(node, ast.Import):
            modules = [(alias.name, {"*"}) for alias in node.names]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0].startswith("dagster") and any(part.startswith("_") for part in parts[1:]):
                found.setdefault(module, set()).update(names)
    return found


def test_no_private_dagster_imports():
    """Public Dagster APIs only: no module of pbi_assets or pbi_ml imports `dagster._...` (there is
    none today; were one ever unavoidable, it would go in one module, with its reason, listed here)."""
    found = {
        str(path.relative_to(ROOT)): imports
        for package in ("pbi_assets", "pbi_ml")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (imports := _private_dagster_imports(path))
    }
    assert found == {}
