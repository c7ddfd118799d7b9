"""Start `mlm` in a real 2-rank CPU (gloo) group, for tests/test_distributed.py.

    launch(["pretrain", "--train_file", ...])                    # accelerate launch ... -m mlm pretrain ...
    launch([...], config="recipes/accelerate/cpu-2proc.yaml")    # through the launch config instead of flags
    launch([...], interrupt_after=13)                            # this file as the script: stops the run
    launch([...], pretend_gpu=True)                              # ... makes mlm believe it has a GPU

Run as a script (what those two options start under the launcher), it patches mlm, then runs the CLI:
--interrupt_after N makes mlm.pretrain.mlm_loss raise KeyboardInterrupt at its N-th call on every rank;
--pretend_gpu makes mlm.loop see a GPU, so it leaves accelerate's device choice alone (no CPU group).

    accelerate launch ... tests/dist_helpers.py --interrupt_after 13 pretrain --output_dir ...
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A port nobody listens on now (bound to port 0 and released), so parallel tests never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list, processes: int = 2, config: str | None = None, interrupt_after: int | None = None,
           pretend_gpu: bool = False, timeout: float = 240) -> subprocess.CompletedProcess:
    """`accelerate launch` of `mlm ARGV` on `processes` CPU ranks; returns the finished process (+ .seconds).

    Without `config`, the flags that give a real gloo group on a CPU machine (ACCELERATE_USE_CPU=1 with
    --multi_gpu; `--cpu --num_processes 2` would start ONE process). With `config`, nothing but the file
    and a free port: ACCELERATE_USE_CPU is removed from the environment, so the file (and mlm) must do it.
    With `pretend_gpu`, ACCELERATE_USE_CPU=0 and mlm believes it has a GPU: nothing joins the ranks.
    """
    began = time.perf_counter()
    proc = start_launch(argv, processes, config, interrupt_after, pretend_gpu)
    return finish(proc, timeout, began)


def start_launch(argv: list, processes: int = 2, config: str | None = None, interrupt_after: int | None = None,
                 pretend_gpu: bool = False) -> subprocess.Popen:
    """The launcher of `launch`, started and not waited for (tests that signal it or its ranks)."""
    port = str(free_port())
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config:
        cmd += ["--config_file", config, "--main_process_port", port]
    else:
        cmd += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", port]
    if interrupt_after is not None or pretend_gpu:
        cmd += [os.path.abspath(__file__)]
        cmd += ["--interrupt_after", str(interrupt_after)] if interrupt_after is not None else []
        cmd += ["--pretend_gpu"] if pretend_gpu else []
    else:
        cmd += ["-m", "mlm"]
    env = child_env()
    if config:
        env.pop("ACCELERATE_USE_CPU", None)
    else:
        env["ACCELERATE_USE_CPU"] = "0" if pretend_gpu else "1"
    return start(cmd + [str(a) for a in argv], env)


def child_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}


def start(cmd: list, env: dict | None = None) -> subprocess.Popen:
    # Its own process group: a hung run is killed with its ranks, not just the launcher above them.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    proc.cmd = cmd
    return proc


def finish(proc: subprocess.Popen, timeout: float, started: float) -> subprocess.CompletedProcess:
    """Wait for `proc` (and every process holding its output open: its ranks); kill them all after `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.cmd)} still running after {timeout}s (a hang?):\n{err[-3000:]}") from None
    result = subprocess.CompletedProcess(proc.cmd, proc.returncode, out, err)
    result.seconds = time.perf_counter() - started
    return result


def _patched_cli(argv: list[str]) -> int:
    import mlm.loop
    import mlm.pretrain as pretrain
    from mlm.cli import main

    if argv[0] == "--interrupt_after":
        limit, argv = int(argv[1]), argv[2:]
        real_loss, calls = pretrain.mlm_loss, {"n": 0}

        def interrupting_loss(model, batch):
            calls["n"] += 1
            if calls["n"] >= limit:  # every rank makes the same calls, so all stop at the same point
                raise KeyboardInterrupt
            return real_loss(model, batch)

        pretrain.mlm_loss = interrupting_loss
    if argv[0] == "--pretend_gpu":
        argv = argv[1:]
        mlm.loop._has_device = lambda: True
    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(_patched_cli(sys.argv[1:]))
