"""The README's quickstart runs as written, and its two commands are the ones CI and the examples use."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _run_block(code: str, folder: Path) -> list[str]:
    script = folder / "block.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_DATABASE_URL"}
    result = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_quickstart_code_block_runs_as_written(tmp_path: Path) -> None:
    quickstart = _blocks("python")[0]
    assert _run_block(quickstart, tmp_path) == ["completed charged 42.0", "['fetch_order#0', 'charge#0']"]
    assert (tmp_path / ".agentflow" / "agentflow.db").exists()  # the embedded default


def test_model_calls_and_tools_block_runs_offline_as_written(tmp_path: Path) -> None:
    blocks = _blocks("python")
    assert len(blocks) == 3
    assert _run_block(blocks[1], tmp_path) == [
        "Order A-17 has shipped.",
        "['llm#0', 'lookup_order#0', 'llm#1']",
        "True True",
    ]


def test_agents_block_runs_offline_as_written(tmp_path: Path) -> None:
    assert _run_block(_blocks("python")[2], tmp_path) == [
        "Order A-17 has shipped.",
        "['llm#0', 'lookup_order#0', 'support.state#0', 'llm#1', 'support.state#1']",
        "4",
        "True",
    ]


def test_readme_commands_are_the_ones_ci_and_the_examples_use() -> None:
    main_job, tests = _blocks("sh")
    ci = (REPO / ".ci" / "run").read_text()
    assert tests.strip() in ci
    # The main job is `agentflow demo` (tests/test_examples.py runs it through the installed script).
    assert main_job.strip().endswith("&& .venv/bin/agentflow demo")
