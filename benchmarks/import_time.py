"""What ``import agentflow`` costs, over a bare interpreter start measured in the same run.

    python benchmarks/import_time.py [--runs 20]

Target: well under 200 ms. Nothing heavy (SQLAlchemy, SQLModel, pydantic, litellm) is imported eagerly.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_ms(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    subprocess.run([sys.executable, "-c", "import agentflow"], check=True)  # warm the file cache
    bare = median_ms("pass", runs)
    full = median_ms("import agentflow", runs)
    print(f"python -c 'pass'              {bare:6.1f} ms (baseline)")
    print(f"python -c 'import agentflow'  {full:6.1f} ms = {full / bare:.2f}x baseline")
    print(f"import agentflow itself       {full - bare:6.1f} ms   (target: well under 200 ms)")
    return 0 if full - bare < 200 else 1


if __name__ == "__main__":
    sys.exit(main())
