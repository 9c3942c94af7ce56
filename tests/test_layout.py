"""The package layout holds: one sub-package per stage, imports flow one way, every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "spear_mm"
# A package imports only from packages listed before it (the top-level helper modules from anywhere).
ORDER = ["io", "scoring", "planning", "training", "statistics", "merging", "evaluation", "measured", "report", "pipeline", "demo",
         "cli"]  # fmt: skip
ANYWHERE = {"", "errors", "progress", "executors", "pair_stats", "__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported spear_mm module, imported inside a function) for every import of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("spear_mm"):
                for alias in child.names:
                    name = f"{child.module}.{alias.name}"
                    found.append((name if name in MODULES else child.module, inner))
            elif isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name.startswith("spear_mm"))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {m: {d for d, _ in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def walk(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if d not in state:
                walk(d, [*stack, d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            walk(m, [m])


def test_packages_import_only_earlier_stages():
    wrong = []
    for m, deps in GRAPH.items():
        a = _package(m)
        for d in deps:
            b = _package(d)
            if a == b or b in ANYWHERE or a in ANYWHERE and a != "errors":
                continue
            if a not in ORDER or b not in ORDER or ORDER.index(b) > ORDER.index(a):
                wrong.append(f"{m} imports {d}")
    assert not wrong, "imports against the stage order " + " < ".join(ORDER) + ":\n" + "\n".join(sorted(wrong))


def test_no_function_local_imports_of_the_package():
    local = [f"{m}: {d}" for m, p in MODULES.items() for d, inner in _imports(p) if inner]
    assert not local, "import these at the top of the module (only optional heavy packages import lazily):\n" + (
        "\n".join(local)
    )


def test_every_module_imports_on_its_own():
    """Each module in a clean package state (earlier imports of spear_mm dropped), in one interpreter."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(m for m in MODULES if m != 'spear_mm.__main__')!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for k in [k for k in sys.modules if k == 'spear_mm' or k.startswith('spear_mm.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


def test_modules_stay_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert not big, f"split these modules (over ~400 lines): {big}"


def test_package_ships_py_typed():
    assert (ROOT / "py.typed").is_file()


def test_shipped_data_files_resolve_from_their_modules():
    """Paths built from `__file__` move with the modules: every shipped demo file is found."""
    from spear_mm.demo.run import DEMO_CORPUS
    from spear_mm.evaluation.suites import DEMO_DATA

    assert DEMO_CORPUS.is_file()
    assert sorted(p.name for p in DEMO_DATA.iterdir()) == sorted(p.name for p in (ROOT / "_data" / "demo").iterdir())


def test_bench_scripts_import_only_names_that_exist():
    """bench/ scripts are not imported by the tests; a moved module must not break them silently."""
    import importlib

    missing = []
    for path in sorted((ROOT.parent / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spear_mm"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not missing, missing
