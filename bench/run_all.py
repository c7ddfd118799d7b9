"""Run every benchmark in bench/ (what `make bench` calls), one after the other, each in its own process.

    python bench/run_all.py                    # all benchmarks, full settings
    python bench/run_all.py --quick            # smoke run of all of them (passed through to each)
    python bench/run_all.py --only pretrain_throughput --quick
    make bench ARGS="--quick"

A benchmark is any bench/*.py script, i.e. a file with an `if __name__ == "__main__":` block, except this one
and the helper modules (common.py, names starting with "_"). They run in the order of FIRST below, then
alphabetically, each as `python bench/NAME.py [--quick] [extra args after --]`; each must accept --quick and
writes its JSON under bench/results/. A benchmark that cannot run here (data missing) prints "SKIPPED: why"
and exits 0. The exit status is non-zero when any benchmark failed.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
FIRST = ["pretrain_throughput.py"]  # run before the others (alphabetical) when present
NOT_BENCHMARKS = {"run_all.py", "common.py", "gpu_check.py"}  # gpu_check: needs a GPU, run on its own


def is_benchmark(path: str) -> bool:
    name = os.path.basename(path)
    if name in NOT_BENCHMARKS or name.startswith("_"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return "__name__ == \"__main__\"" in text or "__name__ == '__main__'" in text


def discover() -> list[str]:
    """Benchmark scripts in run order: FIRST, then every other bench/*.py script alphabetically."""
    scripts = sorted(p for p in glob.glob(os.path.join(BENCH_DIR, "*.py")) if is_benchmark(p))
    first = [p for name in FIRST for p in scripts if os.path.basename(p) == name]
    return first + [p for p in scripts if p not in first]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smoke run)")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (file names without .py)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    scripts = discover()
    if args.only:
        wanted = {n.strip().removesuffix(".py") for n in args.only.split(",") if n.strip()}
        unknown = wanted - {os.path.basename(s)[:-3] for s in scripts}
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
                         f"found: {', '.join(os.path.basename(s)[:-3] for s in scripts)}")
        scripts = [s for s in scripts if os.path.basename(s)[:-3] in wanted]
    if args.list:
        print("\n".join(os.path.relpath(s) for s in scripts))
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    status = []
    for script in scripts:
        cmd = [sys.executable, script] + (["--quick"] if args.quick else []) + extra
        print(f"\n=== {' '.join(os.path.relpath(c) if c == script else c for c in cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, env=env, cwd=os.path.dirname(BENCH_DIR))
        status.append((os.path.basename(script), code, time.perf_counter() - start))
    print("\n=== summary")
    for name, code, seconds in status:
        print(f"{'ok    ' if code == 0 else 'FAILED'} {name} ({seconds:.0f}s)")
    return 0 if all(code == 0 for _, code, _ in status) else 1


if __name__ == "__main__":
    sys.exit(main())
