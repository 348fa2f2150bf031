"""``vitaccel.boards`` does not depend on ``vitaccel.sim``: board tops, the host link and the
builds must work where no simulator is installed, and the layers stay one-way. Checked in the
source (every import statement under boards/) and at run time (importing every boards module
pulls in no ``vitaccel.sim`` module, not even through another package)."""
import ast
import subprocess
import sys
from pathlib import Path

import vitaccel.boards

BOARDS_DIR = Path(vitaccel.boards.__file__).parent
PACKAGE = "vitaccel.boards"


def imported_names(path: Path):
    """Absolute names of the modules a source file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module
            else:
                parts = PACKAGE.split(".")
                parent = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            yield base
            for alias in node.names:          # `from vitaccel import sim` imports a module too
                yield f"{base}.{alias.name}"


def is_sim(name: str) -> bool:
    return name == "vitaccel.sim" or name.startswith("vitaccel.sim.")


def test_no_boards_source_imports_sim():
    files = sorted(BOARDS_DIR.glob("*.py"))
    assert len(files) >= 5
    offenders = {f.name: sorted({n for n in imported_names(f) if is_sim(n)}) for f in files}
    assert {f: names for f, names in offenders.items() if names} == {}


def test_import_resolution_sees_relative_and_from_imports(tmp_path):
    src = tmp_path / "probe.py"
    src.write_text("from ..sim import job\nfrom vitaccel import sim\nimport vitaccel.sim.tools\n")
    assert [n for n in imported_names(src) if is_sim(n)] == [
        "vitaccel.sim", "vitaccel.sim.job", "vitaccel.sim", "vitaccel.sim.tools"]


def test_importing_boards_loads_no_sim_module():
    modules = [f"{PACKAGE}.{f.stem}" for f in sorted(BOARDS_DIR.glob("*.py"))
               if f.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m == 'vitaccel.sim' "
              "or m.startswith('vitaccel.sim.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
