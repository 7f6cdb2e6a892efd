"""A pytest plugin that replays recorded runs: every bundle in a folder becomes a test.

    # pyproject.toml
    [tool.pytest.ini_options]
    agentflow_bundles = "tests/bundles"    # bundles written by `agentflow export` / AgentFlow.export_run
    agentflow_app = "myapp.flows:app"       # optional: where the code is, if not where the runs say

Each ``*.json`` file in the folder (and its subfolders) is imported into a fresh temporary SQLite database
and replayed strictly (``AgentFlow.replay``): nothing is called, nothing reaches the network. The test
passes when the code still does what the record says, and fails with the ``ReplayDivergence`` report
otherwise. The code is found through the ref each run recorded (``package.module:agent``, or a script
path), or through ``agentflow_app``: an ``AgentFlow`` with the workflow registered, a workflow function,
or an ``Agent``.

The folder must lie where pytest collects (under ``testpaths``, or named on the command line). Installed
with agentflow (entry point ``pytest11``); it imports agentflow only when a bundle is run, so it costs
nothing where it is not used. Bundle tests carry the marker ``agentflow_bundle``
(``-m "not agentflow_bundle"`` leaves them out).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._app import AgentFlow
    from ._models import Run

__all__ = ["BundleFile", "BundleReplay"]

_BUNDLES = "agentflow_bundles"
_APP = "agentflow_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _BUNDLES,
        "a folder (relative to rootdir) of agentflow run bundles; each *.json in it is replayed strictly as a test",
        default="",
    )
    parser.addini(
        _APP,
        "the code to replay agentflow bundles with (module:attribute or path.py:attribute): an AgentFlow, a "
        "workflow function or an Agent; default: the ref each run recorded",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "agentflow_bundle: the strict replay of a recorded agentflow run bundle")


_FOLDER = pytest.StashKey[Path | None]()


def _bundle_folder(config: pytest.Config) -> Path | None:
    """The bundle folder, resolved once per session (every collected file asks)."""
    if _FOLDER not in config.stash:
        value = str(config.getini(_BUNDLES) or "").strip()
        config.stash[_FOLDER] = (config.rootpath / value).resolve() if value else None
    return config.stash[_FOLDER]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> BundleFile | None:
    if file_path.suffix != ".json":
        return None
    folder = _bundle_folder(parent.config)
    if folder is None or not file_path.resolve().is_relative_to(folder):
        return None
    bundle: BundleFile = BundleFile.from_parent(parent, path=file_path)
    return bundle


class BundleFile(pytest.File):
    """A bundle file: one test, the strict replay of the run it was exported from."""

    def collect(self) -> Iterator[BundleReplay]:
        try:  # the run id names the test; a file that is not a bundle fails when it runs, with the reason
            root = json.loads(self.path.read_bytes()).get("root")
        except (ValueError, AttributeError):
            root = None
        item: BundleReplay = BundleReplay.from_parent(self, name=root if isinstance(root, str) and root else "replay")
        item.add_marker("agentflow_bundle")
        yield item


class BundleReplay(pytest.Item):
    """Import the bundle into a temporary database, find the run's code, and replay it strictly."""

    def runtest(self) -> None:
        from ._app import AgentFlow

        with tempfile.TemporaryDirectory(prefix="agentflow-bundle-") as folder, AgentFlow(f"{folder}/replay.db") as app:
            run_id = app.import_runs(self.path)[0]
            _register_code(app, app.get_run(run_id), self._app_ref())
            app.replay(run_id)

    def _app_ref(self) -> str | None:
        ref = str(self.config.getini(_APP) or "").strip()
        if not ref:
            return None
        module, sep, attr = ref.rpartition(":")
        if sep and module.endswith(".py") and not Path(module).is_absolute():
            return f"{self.config.rootpath / module}:{attr}"  # a script path is relative to rootdir
        return ref

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .errors import AgentFlowError

        if isinstance(excinfo.value, AgentFlowError):
            return f"replay of bundle {self.path.name}: {excinfo.value}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"agentflow bundle {self.path.name}: strict replay of run {self.name}"


def _register_code(app: AgentFlow, run: Run, app_ref: str | None) -> None:
    """Register the run's workflow on ``app`` from ``app_ref`` or the ref the run recorded."""
    from ._refs import register_code
    from .errors import ConfigurationError

    ref = app_ref or run.workflow_ref
    if ref is None:
        raise ConfigurationError(
            f"run {run.id} did not record where its workflow {run.workflow!r} lives (defined inside a function, or "
            f"not kept in a module-level variable?); set the ini option {_APP} = module:attribute"
        )
    try:
        register_code(app, run.workflow, ref)
    except ConfigurationError as exc:
        if app_ref is not None:
            raise
        raise ConfigurationError(f"{exc}; if the code moved, set the ini option {_APP} = module:attribute") from None
