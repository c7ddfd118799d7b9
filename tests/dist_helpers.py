"""Start `mlm` in a real 2-rank CPU (gloo) group, for tests/test_distributed.py and tests/test_scale_out.py.

    launch(["pretrain", "--train_file", ...])                    # accelerate launch ... -m mlm pretrain ...
    launch([...], config="recipes/accelerate/cpu-2proc.yaml")    # through the launch config instead of flags
    launch([...], interrupt_after=13)                            # this file as the script: stops the run
    start_launch([...], stall_after=13)                          # ... blocks the run (to kill it)
    launch([...], pretend_gpu=True)                              # ... makes mlm believe it has a GPU
    start_nodes([argv_node0, argv_node1], config)                # 2 simulated nodes x 1 process on loopback

Run as a script (what those options start under the launcher), it patches mlm, then runs the CLI:
--interrupt_after N makes mlm.pretrain.run.mlm_loss raise KeyboardInterrupt at its N-th call on every rank
(--stall_after N: block there instead); --pretend_gpu makes mlm.core.loop see a GPU, so it leaves accelerate's
device choice alone (no CPU group).

    accelerate launch ... tests/dist_helpers.py --interrupt_after 13 pretrain --output_dir ...
"""
from __future__ import annotations

import json
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
                 pretend_gpu: bool = False, stall_after: int | None = None) -> subprocess.Popen:
    """The launcher of `launch`, started and not waited for (tests that signal it or its ranks).

    `stall_after N`: mlm_loss blocks at its N-th call on every rank (a run to kill at a known point)."""
    port = str(free_port())
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config:
        cmd += ["--config_file", config, "--main_process_port", port]
    else:
        cmd += ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", port]
    if interrupt_after is not None or pretend_gpu or stall_after is not None:
        cmd += [os.path.abspath(__file__)]
        cmd += ["--interrupt_after", str(interrupt_after)] if interrupt_after is not None else []
        cmd += ["--stall_after", str(stall_after)] if stall_after is not None else []
        cmd += ["--pretend_gpu"] if pretend_gpu else []
    else:
        cmd += ["-m", "mlm"]
    env = child_env()
    if config:
        env.pop("ACCELERATE_USE_CPU", None)
    else:
        env["ACCELERATE_USE_CPU"] = "0" if pretend_gpu else "1"
    return start(cmd + [str(a) for a in argv], env)


def start_nodes(node_argvs: list[list], config: str) -> list[subprocess.Popen]:
    """One `accelerate launch` per simulated node (node_argvs[k]: the mlm arguments of node k), each node one
    process, in its own process tree, meeting at a c10d rendezvous on 127.0.0.1."""
    port, nodes = str(free_port()), len(node_argvs)
    procs = []
    for rank, argv in enumerate(node_argvs):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes",
               str(nodes), "--num_machines", str(nodes), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", port, "--mixed_precision", "no", "-m", "mlm"]
        procs.append(start(cmd + [str(a) for a in argv], {**child_env(), "ACCELERATE_USE_CPU": "1"}))
    return procs


def child_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}


def start(cmd: list, env: dict | None = None) -> subprocess.Popen:
    # Its own process group: a hung run is killed with its ranks, not just the launcher above them.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    proc.cmd = cmd
    return proc


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it, ranks first: no chance to save. (torchrun starts each rank
    in a session of its own, so killing the launcher's process group would leave them running.)"""
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # ended on its own meanwhile
            pass


def finish(proc: subprocess.Popen, timeout: float, started: float) -> subprocess.CompletedProcess:
    """Wait for `proc` (and every process holding its output open: its ranks); kill them all after `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.cmd)} still running after {timeout}s (a hang?):\n{err[-3000:]}") from None
    result = subprocess.CompletedProcess(proc.cmd, proc.returncode, out, err)
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------- the tiny pretraining run and its outputs

PER_DEVICE = 4  # x 2 processes; the single-process twin runs 8


def pretrain_args(corpus, output_dir, **extra) -> list[str]:
    """The tiny model of test_pretrain_e2e without dropout, so that runs can be compared number for number.

    10% validation is ONE block: fewer evaluation examples than ranks, the case that used to deadlock.
    """
    args = dict(train_file=corpus["file"], cache_dir=corpus["cache"], output_dir=str(output_dir), vocab_size=200,
                max_seq_length=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, per_device_train_batch_size=PER_DEVICE,
                per_device_eval_batch_size=16, max_steps=20, logging_steps=1, eval_steps=10, save_steps=10,
                learning_rate=3e-3, warmup_steps=2, disable_tqdm="true", validation_split_percentage=10)
    args.update(extra)
    return ["pretrain"] + [x for k, v in args.items() if v is not None for x in (f"--{k}", str(v))]


def records(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(output_dir) -> list[float]:
    return [r["loss"] for r in records(output_dir) if "loss" in r]


def weights(output_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(output_dir, "model.safetensors"))


def check_ok(result, output_dir, processes=2) -> dict:
    """metrics.json of a finished run (`result`: its launch, or None for an in-process run)."""
    if result is not None:
        assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(open(os.path.join(output_dir, "metrics.json")).read())
    assert metrics["num_processes"] == processes  # the world size the loop really had
    return metrics


def _patched_cli(argv: list[str]) -> int:
    import mlm.core.accel
    import mlm.pretrain.run as pretrain
    from mlm.cli import main

    if argv[0] in ("--interrupt_after", "--stall_after"):
        stall, limit, argv = argv[0] == "--stall_after", int(argv[1]), argv[2:]
        real_loss, calls = pretrain.mlm_loss, {"n": 0}

        def interrupting_loss(model, batch):
            calls["n"] += 1
            if calls["n"] >= limit:  # every rank makes the same calls, so all stop at the same point
                if stall:
                    time.sleep(3600)  # until the test kills the run
                raise KeyboardInterrupt
            return real_loss(model, batch)

        pretrain.mlm_loss = interrupting_loss
    if argv[0] == "--pretend_gpu":
        argv = argv[1:]
        mlm.core.accel._has_device = lambda: True
    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(_patched_cli(sys.argv[1:]))
