"""Careless and hostile use of the training CLIs (issue 23): ways a run gave wrong results
without a word, hung, ended in a traceback or wrote where it must not. Each now exits with
its documented status (0, 2, 3, 130) and one ``error: ...`` line naming what is wrong.
What could hang runs in a subprocess or a thread with a time-out."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import dim_fused
from dim_fused.training import checkpoint, evaluate, train
from dim_fused.training.trainer import Trainer, read_metrics

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--hidden", "32", "32", "--units", "32", "--batch-size", "16", "--no-progress", "--no-eval"]
WITH_PROBES = FAST[:-1]


def _has_cpu_backend() -> bool:
    return "cpu" in dim_fused.available_backends("cpu")


@pytest.fixture(autouse=True)
def _needs_cpu_backend():
    if not _has_cpu_backend():
        pytest.skip("needs the compiled cpu backend")


def finished_run(folder: Path, steps: int = 3, *extra: str) -> Path:
    assert train.main(["--steps", str(steps), "--log-every", "1", "--out", str(folder), *FAST, *extra]) == 0
    return folder / "checkpoint.pt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- wrong results without a word ---------------------------------------------------------------------------------
def test_a_resumed_learning_rate_reaches_the_optimizers(tmp_path):
    path = finished_run(tmp_path / "run", 2)
    args = ["--resume", "--steps", "3", "--lr", "3e-4", "--prior-lr", "5e-4", "--out", str(path.parent), *FAST]
    assert train.main(args) == 0
    state = load(path)  # the optimizers' own state, as the resumed run left it
    assert state["step"] == 3
    assert {group["lr"] for group in state["encoder_optimizer"]["param_groups"]} == {3e-4}
    assert {group["lr"] for group in state["prior_optimizer"]["param_groups"]} == {5e-4}


def test_resumed_epochs_count_the_checkpoints_dataset(tmp_path):
    out = tmp_path / "run"
    assert train.main(["--data", "synthetic", "--steps", "7", "--out", str(out), *FAST]) == 0
    # synthetic: 4096 images / 16 per batch = 256 steps an epoch (the default digits would give 84, so 5 steps)
    assert train.main(["--resume", "--epochs", "0.05", "--out", str(out), *FAST]) == 0
    assert load(out / "checkpoint.pt")["step"] == 13


@pytest.mark.parametrize(
    "args, words",
    [
        (["--epochs=0"], "--epochs 0.0: give a positive, finite number"),
        (["--epochs=-1"], "--epochs -1.0: give a positive, finite number"),
        (["--epochs=inf"], "--epochs inf: give a positive, finite number"),
        (["--epochs=nan"], "--epochs nan: give a positive, finite number"),
        (["--classifier-epochs", "-5"], "--classifier-epochs -5"),
    ],
)
def test_bad_lengths_are_refused_naming_the_option(tmp_path, capsys, args, words):
    assert train.main(["--out", str(tmp_path / "run"), *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert f"error: {words}" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("samples", [1, 7])
def test_probes_on_fewer_images_than_they_report_are_refused(tmp_path, capsys, samples):
    out = tmp_path / "run"
    args = ["--steps", "1", "--probe-samples", str(samples), "--classifier-epochs", "1", "--out", str(out)]
    assert train.main([*args, *WITH_PROBES]) == 2
    err = capsys.readouterr().err
    assert f"error: --probe-samples {samples}:" in err and "10-labels-per-class probe needs 10" in err
    assert not (out / "checkpoint.pt").exists()  # refused before training, not after
    # A run trained without the probes, then probed: refused too, before any work.
    assert train.main([*args, *FAST]) == 0
    assert evaluate.main([str(out / "checkpoint.pt"), "--classifier-epochs", "1"]) == 2
    assert f"error: --probe-samples {samples}:" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_finite_checkpoint(
    tmp_path, capsys, monkeypatch, what
):
    real_step = Trainer.train_step

    def diverging(self, images):
        metrics = real_step(self, images)
        if self.step >= 3:  # the 4th step goes wrong
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
            if what == "loss":
                metrics["loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(Trainer, "train_step", diverging)
    out = tmp_path / "run"
    # Logged every step, the loss is caught at step 4; logged never before the end, the weights at step 4's save.
    log_every = "1" if what == "loss" else "100"
    args = ["--steps", "8", "--log-every", log_every, "--checkpoint-every", "2", "--out", str(out), *FAST]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "error: training diverged: at step 4 the" in err and "keeps the last finite checkpoint" in err
    assert ("loss nan" if what == "loss" else "weights are not finite") in err
    assert load(out / "checkpoint.pt")["step"] == 2
    assert all(r["step"] <= 3 for r in read_metrics(out / "metrics.jsonl"))  # no NaN record


# ---- stops, disks and folders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGINT", "SIGINT"]], ids=["SIGTERM", "two Ctrl-C"])
def test_a_stop_during_the_final_probes_exits_130_at_once(tmp_path, signals):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dim_fused.training.train", "--steps", "2", "--out", str(out), *WITH_PROBES]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():  # the last checkpoint: the probes come next
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint in 2 minutes"
            time.sleep(0.05)
        time.sleep(1.0)  # inside the probes (100 classifier epochs: tens of seconds)
        for name in signals:
            process.send_signal(getattr(signal, name))
            time.sleep(0.2)
        code = process.wait(timeout=20)
        err = process.stderr.read()
    finally:
        process.kill()
    assert code == 130, err
    assert "stopped during the probes" in err and "Traceback" not in err
    assert load(out / "checkpoint.pt")["step"] == 2 and not (out / "probe.json").exists()


def test_two_ctrl_c_in_training_exit_130_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dim_fused.training.train", "--steps", "100000", "--log-every", "1"]
    command += ["--checkpoint-every", "1", "--out", str(out), *FAST]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() or len(read_metrics(out / "metrics.jsonl")) < 2:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no metrics in 2 minutes"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # checkpoint after this step...
        time.sleep(0.05)  # (two signals at once would reach Python's handler as one)
        process.send_signal(signal.SIGINT)  # ...no: leave now
        code = process.wait(timeout=30)
        err = process.stderr.read()
    finally:
        process.kill()
    assert code == 130, err
    assert "Traceback" not in err and "--resume" in err


def test_a_full_disk_reported_as_runtime_error_exits_3_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    path = finished_run(tmp_path / "run", 2)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):  # what torch.save's zip writer raises on a full tmpfs
        f.write(b"part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4048")

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["--resume", "--steps", "4", "--checkpoint-every", "1", "--out", str(path.parent), *FAST]
    assert train.main(args) == 3
    err = capsys.readouterr().err
    assert "error: cannot write to" in err and "unexpected pos" in err and "holds the last checkpoint, intact" in err
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_no_old_checkpoint(tmp_path, monkeypatch):
    path = finished_run(tmp_path / "run", 3)

    def killed(
        self, progress=True, time_budget=None
    ):  # as a SIGKILL after the start, before the new run's first checkpoint
        raise SystemExit(137)

    monkeypatch.setattr(Trainer, "run", killed)
    with pytest.raises(SystemExit):
        train.main(["--overwrite", "--steps", "5", "--out", str(path.parent), *FAST])
    monkeypatch.undo()
    assert not path.exists() and read_metrics(path.parent / "metrics.jsonl") == []
    # So --resume starts the new run afresh (with the old checkpoint it would refuse: "already at step 3").
    assert train.main(["--resume", "--steps", "2", "--out", str(path.parent), *FAST]) == 0
    assert load(path)["step"] == 2


@pytest.mark.parametrize("case", ["empty", "a file"])
def test_an_out_that_is_not_a_folder_is_refused(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    if case == "empty":
        out = ""
    else:
        out = str(tmp_path / "notes.txt")
        Path(out).write_text("not a run\n")
    assert train.main(["--steps", "1", "--out", out, *FAST]) == 2
    assert "error: --out" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ([] if case == "empty" else ["notes.txt"])


def test_a_checkpoint_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "checkpoint.pt")
    command = [sys.executable, "-m", "dim_fused.training.train", "--resume", "--out", str(out), *FAST]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "not a regular file" in result.stderr
    assert evaluate.main([str(out / "checkpoint.pt")]) == 2
    assert "not a regular file" in capsys.readouterr().err


# ---- security -----------------------------------------------------------------------------------------------------
def test_a_lock_that_is_a_symbolic_link_is_not_followed(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    assert train.main(["--steps", "1", "--out", str(out), *FAST]) == 2
    assert "error: " in capsys.readouterr().err
    assert victim.read_text() == "precious\n"
    assert not (out / "checkpoint.pt").exists()


def test_nothing_is_written_through_a_link_in_the_run_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = os.getpid()  # in-process: the temporary files carry this pid
    names = ["metrics.jsonl", "curves.png", f".metrics.jsonl.{pid}.tmp", f".curves.png.{pid}.tmp"]
    victims = []
    for i, name in enumerate(names):
        victims.append(tmp_path / f"victim{i}")
        victims[-1].write_text("precious\n")
        (out / name).symlink_to(victims[-1])
    assert train.main(["--steps", "2", "--log-every", "1", "--out", str(out), *FAST]) == 0
    assert [v.read_text() for v in victims] == ["precious\n"] * len(victims)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert not any((out / name).is_symlink() for name in names)


def test_a_download_from_a_network_that_never_answers_times_out(tmp_path, capsys, monkeypatch):
    import torchvision

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel completes the handshake; nobody ever answers
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url)
    monkeypatch.setenv("DIM_FUSED_DOWNLOAD_TIMEOUT", "1")
    args = ["--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--download", "--out", str(tmp_path / "run")]
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=train.main([*args, *FAST])), daemon=True)
    try:
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the download still hangs after 30 s"
    finally:
        server.close()  # resets the waiting connection: a hung thread ends too
    assert result["code"] == 2
    err = capsys.readouterr().err
    assert f"--download: cifar10 from {url}" in err  # the progress line says what and from where
    assert f"error: --download cifar10 into {tmp_path / 'data'} failed: fetching {url} failed: timed out" in err


# ---- checkpoints with the right keys but the wrong content --------------------------------------------------------
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    if not _has_cpu_backend():
        pytest.skip("needs the compiled cpu backend")
    return finished_run(tmp_path_factory.mktemp("good") / "run", 3)


def corrupt(state: dict, how: str) -> str:
    """Damage ``state`` as ``how`` says; returns the words the refusal must contain."""
    weight = next(key for key, value in state["model"].items() if value.dim() > 1)
    if how == "a weight of another shape":
        state["model"][weight] = torch.zeros(3)
        return f"model[{weight!r}] has shape (3,)"
    if how == "a missing weight":
        del state["model"][weight]
        return f"lacks {weight!r}"
    if how == "model as a string":
        state["model"] = "weights"
        return "model is a str"
    if how == "units that do not match the weights":
        state["config"]["model"]["units"] = 64
        return "do not match the weights"
    if how == "NaN weights":
        state["model"][weight].fill_(float("nan"))
        return f"model[{weight!r}] is not finite"
    if how == "a bad generator state":
        state["generators"]["shared"] = torch.zeros(7, dtype=torch.uint8)
        return "generators: shared is not a random generator's state"
    if how == "empty optimizer state":
        state["encoder_optimizer"] = {}
        return "encoder_optimizer is not an optimizer state"
    if how == "the other optimizer's state":
        state["encoder_optimizer"] = state["prior_optimizer"]
        return "encoder_optimizer does not fit the config's model"
    if how == "optimizer moments of another shape":
        next(iter(state["encoder_optimizer"]["state"].values()))["exp_avg"] = torch.zeros(2)
        return "encoder_optimizer: its exp_avg"
    if how == "bad metrics_windows":
        state["metrics_windows"] = [{"steps": "a", "sums": {}}]
        return "metrics_windows must be"
    if how == "step as a string":
        state["step"] = "3"
        return "step is '3'"
    if how == "step as a float":
        state["step"] = 3.0
        return "step is 3.0"
    if how == "a negative step":
        state["step"] = -1
        return "step is -1"
    if how == "step 10^12":
        state["step"] = 10**12
        return f"step is {10**12}"
    if how == "format 99":
        state["format"] = 99
        return "format is 99"
    if how == "a config value of the wrong type":
        state["config"]["steps"] = "3"
        return "config.steps is '3'"
    raise AssertionError(how)


CORRUPTIONS = [
    "a weight of another shape",
    "a missing weight",
    "model as a string",
    "units that do not match the weights",
    "NaN weights",
    "a bad generator state",
    "empty optimizer state",
    "the other optimizer's state",
    "optimizer moments of another shape",
    "bad metrics_windows",
    "step as a string",
    "step as a float",
    "a negative step",
    "step 10^12",
    "format 99",
    "a config value of the wrong type",
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_checkpoint_with_the_wrong_content_is_refused_naming_the_part(good_checkpoint, tmp_path, capsys, how):
    state = load(good_checkpoint)
    words = corrupt(state, how)
    out = tmp_path / "run"
    out.mkdir()
    torch.save(state, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train.main(["--resume", "--steps", "5", "--out", str(out), *FAST]) == 2
    resumed = capsys.readouterr().err
    assert evaluate.main([str(out / "checkpoint.pt"), "--classifier-epochs", "0"]) == 2
    evaluated = capsys.readouterr().err
    for err in (resumed, evaluated):
        assert err.count("error: ") == 1 and words in err and "Traceback" not in err, err
    assert (out / "checkpoint.pt").read_bytes() == before  # never trained on, never replaced


@pytest.mark.parametrize(
    "args, words",
    [
        (["--classifier-epochs", "-5"], "error: --classifier-epochs -5"),
        (["--json", "{file}/probe.json"], "error: --json"),
        (["--device", "nonsense"], "error: --device nonsense"),
        pytest.param(
            ["--device", "cuda"],
            "error: --device cuda: torch sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_evaluate_refuses_bad_options_before_the_work(good_checkpoint, tmp_path, capsys, monkeypatch, args, words):
    (tmp_path / "file").write_text("a file, not a folder\n")
    args = [arg.format(file=tmp_path / "file") for arg in args]
    probed = []
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: probed.append(a))
    assert evaluate.main([str(good_checkpoint), *args]) == 2
    assert words in capsys.readouterr().err
    assert not probed  # refused before the probes


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_runs_checkpoint_is_checked_but_not_refused_for_its_generators(good_checkpoint, tmp_path, capsys):
    """A CUDA generator's state (16 bytes) is valid in a checkpoint (evaluate reads it on any
    machine); only resuming it on a CPU fails, and says why."""
    state = load(good_checkpoint)
    cuda_state = torch.zeros(16, dtype=torch.uint8)
    state["generators"] = {"shared": cuda_state, "local": [cuda_state]}
    out = tmp_path / "run"
    out.mkdir()
    torch.save(state, out / "checkpoint.pt")
    assert checkpoint.load_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert train.main(["--resume", "--steps", "5", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "error: the checkpoint's generators does not fit this run" in err and "Traceback" not in err
