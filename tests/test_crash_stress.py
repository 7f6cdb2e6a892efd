"""The randomized crash/resume stress test (``crash_stress.py``) on a fixed set of seeds, in this process.

Each seed is a workflow of gathered calls (steps, payments under idempotency keys, child runs) that crashes
with calls in flight and is resumed; the checks are listed in ``crash_stress.py``. In the derived modes a
run derived from the finished one (a restart, a fork, a counterfactual or a live replay) then crashes and
is resumed too. A failure names the seeds and their failure types; ``python tests/crash_stress.py -v SEED
[mode options]`` shows one in full, and ``--seeds 0:500`` runs many more. With
``AGENTFLOW_TEST_POSTGRES_URL`` set, some seeds also run on Postgres (each in a database of its own).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from crash_stress import Mode, Result, run_one

# Seeds that fail with reservations hidden from resumed runs. The first three have no sync call (nothing
# runs in a worker thread), so they take the same path every time.
FAIL_UNDER_SABOTAGE = (43, 267, 294, 0, 46, 236)
# what a broken key shows as (not "error" or "hang": the harness itself must work)
KEY_FAILURES = {"key-changed", "key-reuse", "paid-twice", "rerun", "output", "divergence", "replay"}
# Seeds whose derived run (of the kind ``make_derived`` draws for it: counterfactual 32, live 43, fork 46,
# restart 18) fails when a resumed derived run inherits nothing from its source. 32 and 43 have no sync
# call (nothing runs in a worker thread), so they take the same path every time.
FAIL_UNDER_DERIVED_SABOTAGE = (32, 43, 46, 18)
# what a derived run that lost its inheritance shows as: a payment made again, its key, its output
DERIVED_FAILURES = {"d-" + kind for kind in KEY_FAILURES} | {"d-paid-live"}


POSTGRES_URL = os.environ.get("AGENTFLOW_TEST_POSTGRES_URL")


def run_seeds(seeds: range | tuple[int, ...], directory: Path, mode: Mode, postgres: str | None = None) -> list[Result]:
    """Run the seeds one after the other, each in a database of its own under ``directory`` (or on the
    Postgres server ``postgres``); check that nothing is left behind (threads, an event loop)."""
    threads = set(threading.enumerate())
    results = [run_one(seed, directory, mode, postgres=postgres) for seed in seeds]
    assert set(threading.enumerate()) <= threads, "a seed left threads behind"
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    return results


def report(results: list[Result]) -> str:
    lines = [f"seed {r.seed}: {', '.join(r.kinds)}: {r.failures[0][1][:200]}" for r in results if r.failures]
    return f"{len(lines)} of {len(results)} seeds failed ({results[0].mode.describe()}):\n" + "\n".join(lines)


@pytest.mark.parametrize(
    ("seeds", "mode"),
    [
        (range(40), Mode()),
        (range(40), Mode(retries=True, crashes=4)),
        (range(30), Mode(recover=True)),
    ],
    ids=["default", "retries-4-crashes", "recover"],
)
def test_seeds_keep_their_keys_across_crashes(seeds: range, mode: Mode, tmp_path: Path) -> None:
    results = run_seeds(seeds, tmp_path, mode)
    assert not any(r.failures for r in results), report(results)


@pytest.mark.parametrize(
    ("seeds", "mode"),
    [
        (range(16), Mode(derived="all")),
        (range(24, 36), Mode(derived="all", recover=True, retries=True, crashes=3)),
    ],
    ids=["derived", "derived-recover-retries"],
)
def test_derived_runs_keep_what_they_inherit_across_crashes(seeds: range, mode: Mode, tmp_path: Path) -> None:
    results = run_seeds(seeds, tmp_path, mode)
    assert not any(r.failures for r in results), report(results)
    kinds = [r.plan.rsplit("\nderived ", 1)[1].split()[0] for r in results]
    assert set(kinds) == {"restart", "fork", "counterfactual", "live"}, kinds  # each kind is exercised
    crashed = [r.seed for r in results if any(line.startswith("  derived run crashed at b") for line in r.log)]
    assert len(crashed) >= len(results) // 2, f"only seeds {crashed} crashed their derived run"


@pytest.mark.parametrize(
    ("seeds", "mode"),
    [
        (range(16), Mode(retries=True, crashes=3)),
        (range(5, 13), Mode(derived="all", recover=True)),
    ],
    ids=["retries-3-crashes", "derived-recover"],
)
def test_seeds_on_postgres(seeds: range, mode: Mode, tmp_path: Path) -> None:
    """The same course on Postgres: its transactions, its reservations and its leases keep the keys too."""
    if not POSTGRES_URL:
        pytest.skip("AGENTFLOW_TEST_POSTGRES_URL is not set")
    results = run_seeds(seeds, tmp_path, mode, POSTGRES_URL)
    assert not any(r.failures for r in results), report(results)
    kinds = {r.plan.rsplit("\nderived ", 1)[1].split()[0] for r in results if mode.derived}
    assert not mode.derived or kinds == {"restart", "fork", "counterfactual", "live"}, kinds


def test_the_derived_checker_fails_when_resumed_derived_runs_inherit_nothing(tmp_path: Path) -> None:
    results = run_seeds(FAIL_UNDER_DERIVED_SABOTAGE, tmp_path, Mode(derived="all", sabotage_derived=True))
    failing = [r for r in results if r.failures]
    assert failing, f"no seed of {FAIL_UNDER_DERIVED_SABOTAGE} failed with the derived runs' inheritance off"
    assert {kind for r in failing for kind in r.kinds} <= DERIVED_FAILURES, report(results)


def test_the_checker_fails_when_reservations_are_off(tmp_path: Path) -> None:
    results = run_seeds(FAIL_UNDER_SABOTAGE, tmp_path, Mode(sabotage=True))
    failing = [r for r in results if r.failures]
    assert failing, f"no seed of {FAIL_UNDER_SABOTAGE} failed with reservations hidden from resumed runs"
    assert {kind for r in failing for kind in r.kinds} <= KEY_FAILURES, report(results)
