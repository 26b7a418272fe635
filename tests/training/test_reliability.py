"""What the training CLIs guarantee: checkpoints that cannot run code, damaged ones
refused with a message, a resume that does what was asked (or says why not), one run
per folder, clear exit statuses when the folder cannot be written, complete metrics
across a stop."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dim_fused
from dim_fused.training import checkpoint, evaluate, train
from dim_fused.training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--hidden", "32", "32", "--units", "32", "--batch-size", "16", "--no-progress", "--no-eval"]


@pytest.fixture(autouse=True)
def _needs_cpu_backend():
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")


def finished_run(folder: Path, steps: int = 3, *extra: str) -> Path:
    assert train.main(["--steps", str(steps), "--log-every", "1", "--out", str(folder), *FAST, *extra]) == 0
    return folder / "checkpoint.pt"


class _Exploit:
    """Unpickling this runs a shell command (what torch.load(weights_only=False) would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    with open(run / "checkpoint.pt", "wb") as f:
        pickle.dump({"config": _Exploit(marker)}, f)
    assert train.main(["--resume", "--out", str(run), *FAST]) == 2
    assert evaluate.main([str(run / "checkpoint.pt")]) == 2
    assert not marker.exists()
    assert "is not a dim_fused training checkpoint: it does not load" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["empty", "truncated", "random bytes", "wrong keys"])
def test_a_damaged_checkpoint_is_refused_with_a_message(tmp_path, capsys, damage):
    path = finished_run(tmp_path / "run")
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"step": 3, "weights": torch.zeros(2)}, path)
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(path.parent), *FAST]) == 2
    assert evaluate.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "checkpoint" in err and "Traceback" not in err


def test_resume_applies_what_may_change_and_refuses_what_contradicts(tmp_path, capsys):
    path = finished_run(tmp_path / "run", 3)
    out = str(path.parent)
    capsys.readouterr()
    assert train.main(["--resume", "--out", out, "--estimator", "dv", *FAST]) == 2
    assert "--estimator dv (the checkpoint's run has infonce)" in capsys.readouterr().err
    assert train.main(["--resume", "--out", out, "--seed", "3", *FAST[:5], "--batch-size", "8", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 8" in err and "--seed 3" in err
    assert train.main(["--resume", "--overwrite", "--out", out, *FAST]) == 2
    assert "contradict each other" in capsys.readouterr().err
    assert train.main(["--resume", "--steps", "2", "--out", out, *FAST]) == 2
    assert "already at step 3" in capsys.readouterr().err
    # Options equal to the saved ones are fine; more steps and a new learning rate are applied, and said.
    assert train.main(["--resume", "--steps", "5", "--lr", "3e-4", "--estimator", "infonce", "--out", out, *FAST]) == 0
    err = capsys.readouterr().err
    assert "resuming with --steps 5 (was 3)" in err and "resuming with --lr 0.0003 (was 0.0001)" in err
    state = torch.load(path, weights_only=True)
    assert state["step"] == 5 and state["config"]["lr"] == 3e-4
    assert train.main(["--resume", "--out", out, *FAST]) == 0  # nothing left to train: evaluates, exits 0


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    lock = checkpoint.RunLock(out)  # as a first run holds it
    try:
        assert train.main(["--steps", "2", "--out", str(out), *FAST]) == 2
        assert "in use by another training run (pid" in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists()
    finally:
        lock.release()
    assert train.main(["--steps", "2", "--out", str(out), *FAST]) == 0  # released: the folder is free again


def test_an_unwritable_folder_exits_3_with_a_message(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(checkpoint.RunLock, "__init__", read_only)
    assert train.main(["--steps", "2", "--out", str(tmp_path / "run"), *FAST]) == 3
    err = capsys.readouterr().err
    assert "cannot write to" in err and "Read-only file system" in err and "Traceback" not in err


def test_a_full_disk_exits_3_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    path = finished_run(tmp_path / "run", 2)
    before = torch.load(path, weights_only=True)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert train.main(["--resume", "--steps", "4", "--checkpoint-every", "1", "--out", str(path.parent), *FAST]) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "holds the last checkpoint, intact" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == before["step"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--steps", "2", "--device", "cuda", "--out", str(tmp_path / "run"), *FAST]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_a_stopped_and_resumed_run_writes_the_same_metrics(tmp_path):
    """SIGTERM mid-window (log every 4 steps): the checkpoint carries the window, so the
    resumed run's records are those of an uninterrupted run."""
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "dim_fused.training.train", "--steps", "400", "--log-every", "4"]
    process = subprocess.Popen([*command, "--out", str(out), *FAST], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(out / "metrics.jsonl")) < 2:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no metrics in 2 minutes"
            time.sleep(0.05)
        time.sleep(0.3)  # somewhere inside a window
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
    stopped_at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    target = (stopped_at // 4 + 2) * 4
    assert train.main(["--steps", str(target), "--resume", "--out", str(out), *FAST]) == 0
    assert train.main(["--steps", str(target), "--log-every", "4", "--out", str(tmp_path / "straight"), *FAST]) == 0
    resumed, straight = (read_metrics(p / "metrics.jsonl") for p in (out, tmp_path / "straight"))
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(4, target + 1, 4))
    for a, b in zip(resumed, straight, strict=True):
        assert {k: v for k, v in a.items() if k != "steps_per_s"} == {k: v for k, v in b.items() if k != "steps_per_s"}


def test_exit_statuses_are_documented():
    help_text = subprocess.run(
        [sys.executable, "-m", "dim_fused.training.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    help_text = " ".join(help_text.split())
    assert "Exit status: 0 done, 2" in help_text and "3 folder not writable" in help_text
    readme = (ROOT / "README.md").read_text()
    assert "| 3 |" in readme and "| 130 |" in readme  # the README's table of exit statuses
