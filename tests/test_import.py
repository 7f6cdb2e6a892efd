"""``import agentflow`` stays light: nothing heavy is imported until it is used."""

import json
import subprocess
import sys

HEAVY = ["sqlalchemy", "sqlmodel", "pydantic", "pydantic_core", "alembic", "litellm", "tiktoken", "typer", "rich"]


def test_import_agentflow_loads_no_heavy_dependency() -> None:
    code = f"import sys, json, agentflow; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_store_is_loaded_when_an_agentflow_is_made(tmp_path: object) -> None:
    code = (
        "import sys, json, agentflow; agentflow.AgentFlow(sys.argv[1]).close(); "
        "print(json.dumps(['sqlalchemy' in sys.modules, 'litellm' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"{tmp_path}/a.db"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == [True, False]


def test_the_pytest_plugin_loads_agentflow_s_dependencies_only_when_a_bundle_is_replayed() -> None:
    # pytest loads the plugin (an entry point) in every session of every project agentflow is installed in.
    code = (
        "import sys, json, pytest, agentflow.pytest_plugin; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
