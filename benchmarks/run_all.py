"""Run every benchmark (each writes its own section), then rebuild RESULTS.md.

    python run_all.py            # full: `make bench`
    python run_all.py --quick    # reduced: `make bench-quick` (under 10 minutes)

Each benchmark runs in its own process, so one failing does not hide the
others' figures; failures are listed at the end and make the exit code 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# order: cheap and foundational first
BENCHMARKS = [
    "bench_scoring.py",
    "bench_index.py",
    "bench_match.py",
    "bench_clipcleaner.py",
    "bench_embed.py",
    "bench_memory.py",
    "bench_detection.py",
    "bench_temperature.py",
    "bench_flickr8k.py",
    "bench_training.py",
    "bench_training_seeds.py",  # after bench_training: it reuses that run's embeddings
]

# too slow for the quick run (a second estimator pre-training; six full training runs)
FULL_ONLY = {"bench_temperature.py", "bench_training_seeds.py"}


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name in BENCHMARKS:
        path = HERE / name
        if not path.exists():
            print(f"[skip] {name}: not present", flush=True)
            continue
        if quick and name in FULL_ONLY:
            print(f"[skip] {name}: full run only (make bench)", flush=True)
            continue
        args = [sys.executable, str(path)]
        if quick and "--quick" in path.read_text():
            args.append("--quick")
        print(f"[run] {' '.join(args[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(args, cwd=HERE)
        print(f"[done] {name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    subprocess.call([sys.executable, str(HERE / "make_results.py")], cwd=HERE)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
