"""pbi_ml never imports dagster; pbi_assets does not import heavy ML libraries at import time."""

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


def test_code_location_import_is_light():
    # the multiprocess executor re-imports the code location per step: keep torch & co out of it
    code = (
        "import sys, pbi_assets.definitions\n"
        "heavy = [n for n in ('torch', 'diffusers', 'transformers', 'open_clip') if n in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# every private Dagster name the project uses, each with its reason in pbi_assets/dagster_internals.py
PRIVATE_DAGSTER_NAMES = {
    "dagster._core.definitions.assets.graph.asset_graph_subset": {"AssetGraphSubset"},
    "dagster._core.execution.backfill": {"BULK_ACTION_TERMINAL_STATUSES", "PartitionBackfill"},
    "dagster._core.storage.runs.sqlite": {"SqliteRunStorage"},
    "dagster._core.storage.tags": {"BACKFILL_ID_TAG", "PARTITION_NAME_TAG"},
    "dagster._core.utils": {"make_new_backfill_id"},
    "dagster._utils.concurrency": {"ConcurrencyKeyInfo"},
}


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


def test_private_dagster_imports_are_listed_in_one_module_with_their_reasons():
    internals = ROOT / "pbi_assets" / "dagster_internals.py"
    elsewhere = {
        str(path.relative_to(ROOT)): imports
        for package in ("pbi_assets", "pbi_ml")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != internals and (imports := _private_dagster_imports(path))
    }
    assert elsewhere == {}, "import private Dagster names through pbi_assets/dagster_internals.py (with the reason)"
    assert _private_dagster_imports(internals) == PRIVATE_DAGSTER_NAMES, (
        "a private Dagster name added or dropped: update PRIVATE_DAGSTER_NAMES with its reason in dagster_internals.py"
    )
