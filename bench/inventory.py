"""Benchmark `smsagent inventory` against same-run baselines; exits 1 if the median is over budget.

    python bench/inventory.py [--runs 15] [--budget-s 2.0]

Baselines, measured in the same run on the same machine: the interpreter starting and importing
asyncio (the floor for any Python command), and `lsblk --json` alone (one block-device probe).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def median_s(argv: Sequence[str], runs: int) -> float:
    """Median wall time of `runs` runs of a command whose output is discarded."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=2.0)
    args = parser.parse_args()
    smsagent = str(Path(sys.executable).parent / "smsagent")
    lsblk = shutil.which("lsblk") or "lsblk"
    cases = {
        "smsagent inventory": [smsagent, "inventory"],
        "python -c 'import asyncio'": [sys.executable, "-c", "import asyncio"],
        "lsblk --json --bytes": [lsblk, "--json", "--bytes"],
    }
    median_s(cases["smsagent inventory"], 1)  # warm the page cache first
    results = {name: median_s(argv, args.runs) for name, argv in cases.items()}
    median_smsagent = results["smsagent inventory"]
    print(f"runs={args.runs} cpus={os.cpu_count()} python={sys.version.split()[0]}")
    for name, seconds in results.items():
        ratio = median_smsagent / seconds if seconds else float("inf")
        print(f"{name:<30} median {seconds * 1000:8.1f} ms   inventory/this {ratio:6.1f}x")
    verdict = "within" if median_smsagent < args.budget_s else "OVER"
    print(
        f"smsagent inventory median {median_smsagent:.3f} s: {verdict} the {args.budget_s} s budget"
    )
    return 0 if median_smsagent < args.budget_s else 1


if __name__ == "__main__":
    sys.exit(main())
