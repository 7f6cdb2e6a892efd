"""The top-level tools/ and memory/ folders ship as agentflow.tools and agentflow.memory."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import agentflow.memory
import agentflow.tools

REPO = Path(__file__).resolve().parent.parent


def test_tools_and_memory_import_as_subpackages_of_agentflow() -> None:
    assert agentflow.tools.__name__ == "agentflow.tools"
    assert agentflow.memory.__name__ == "agentflow.memory"
    # In this (editable) checkout they are the top-level folders themselves.
    assert Path(agentflow.tools.__file__ or "").parent == REPO / "tools"
    assert Path(agentflow.memory.__file__ or "").parent == REPO / "memory"


def test_built_wheel_contains_the_mapped_packages_and_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("agentflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "agentflow/__init__.py",
        "agentflow/py.typed",
        "agentflow/tools/__init__.py",
        "agentflow/memory/__init__.py",
        "agentflow/_store/migrations/env.py",
        "agentflow/_store/migrations/script.py.mako",
        "agentflow/_store/migrations/versions/0001_initial.py",
        "agentflow/evals/__init__.py",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("tests/", "tools/", "memory/", "examples/")) for n in names)

    # Installed on its own (import agentflow needs no dependency), the mapped packages are found in it.
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = (
        "import importlib.util, agentflow.memory, agentflow._store._schema as s; "
        "assert (s._MIGRATIONS / 'versions' / '0001_initial.py').exists(); "
        "print(importlib.util.find_spec('agentflow.tools').origin)"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "site-packages/agentflow/tools/__init__.py" in out.stdout
