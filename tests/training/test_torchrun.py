"""The training application under torchrun, as a user launches it: two processes on one
node, and two nodes (two torchrun invocations on this machine, one process each, meeting
on a loopback address). Every process must exit 0 (a rank that died at its exit of
"terminate called without an active exception" made torchrun exit 1 and kill rank 0 in
its probes) and the run folder must be complete. Each launch is bounded in time, and
killed with its processes when it runs over."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dim_fused
from dim_fused.training.checkpoint import load_checkpoint
from dim_fused.training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds for one launch, all its processes together
STEPS = 10
RUN = ["-m", "dim_fused.training.train", "--data", "digits", "--units", "64", "--batch-size", "16"]
RUN += ["--steps", str(STEPS), "--no-progress"]
TINY_PROBES = ["--probe-samples", "300", "--classifier-epochs", "2"]
# What torchrun sets for its workers: a value inherited from the test's own environment would mislead them.
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def torchrun() -> list[str]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    script = Path(sys.executable).with_name("torchrun")  # the venv's, next to its python
    found = str(script) if script.exists() else shutil.which("torchrun")
    if found is None:
        pytest.skip("torchrun is not installed")
    return [found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(commands: list[list[str]], logs: list[Path]) -> list[tuple[int, str]]:
    """Run the commands at once (each in its own session, so a time-out kills torchrun
    and its workers); their (exit status, output) once all have ended."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    processes = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with open(log, "w") as out:
                processes.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        deadline = time.monotonic() + TIMEOUT
        for process, log in zip(processes, logs, strict=True):
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"torchrun ran over {TIMEOUT} s; its output:\n{log.read_text()[-4000:]}")
        return [(p.returncode, log.read_text()) for p, log in zip(processes, logs, strict=True)]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def assert_complete(out: Path, world: int, probes: bool) -> None:
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").is_file()
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["step"] == STEPS and saved["world_size"] == world
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1 if not probes else -2]["step"] == STEPS
    if probes:
        probe = json.loads((out / "probe.json").read_text())
        assert records[-1] == {"probe": probe}


def test_two_processes_end_cleanly_every_time(tmp_path, torchrun):
    """The issue's command three times, the last one with (tiny) probes on rank 0 while
    rank 1 has nothing left to do."""
    for attempt, probes in enumerate([False, False, True]):
        out = tmp_path / f"run{attempt}"
        extra = TINY_PROBES if probes else ["--no-eval"]
        command = [*torchrun, "--nproc-per-node", "2", *RUN, *extra, "--out", str(out)]
        [(code, output)] = launch([command], [tmp_path / f"log{attempt}"])
        assert code == 0 and "terminate called" not in output, f"attempt {attempt}:\n{output[-4000:]}"
        assert_complete(out, world=2, probes=probes)


def test_two_nodes_on_one_machine(tmp_path, torchrun):
    """README's two-node command: node ranks 0 and 1, one process each, a static rendezvous
    on 127.0.0.1; the run folder (the same one here: a shared filesystem) is complete."""
    out, port = tmp_path / "run", free_port()
    node = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    commands = [[*torchrun, *node, "--node-rank", str(rank), *RUN, "--no-eval", "--out", str(out)] for rank in (0, 1)]
    results = launch(commands, [tmp_path / "node0.log", tmp_path / "node1.log"])
    for rank, (code, output) in enumerate(results):
        assert code == 0 and "terminate called" not in output, f"node {rank}:\n{output[-4000:]}"
    assert_complete(out, world=2, probes=False)
