"""`textclf run` on an up-to-date project: wall time of each of N runs and their median.

Run it in a project where `textclf run` (or `make run`) has finished, alone on the machine:

    .venv/bin/python benchmarks/rerun.py --runs 5

Every run must answer "no change" (else the project was not up to date and nothing is timed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    textclf = str(Path(sys.executable).parent / "textclf")
    times = []
    for i in range(args.runs):
        start = time.perf_counter()
        proc = subprocess.run([textclf, "run"], cwd=args.project, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0 or "no change" not in proc.stdout:
            sys.exit(
                f"run {i + 1} was not a no-change run (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        print(f"run {i + 1}: {times[-1]:.2f} s  {proc.stdout.strip().splitlines()[-1]}")
    median = statistics.median(times)
    print(f"median of {args.runs}: {median:.2f} s (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
