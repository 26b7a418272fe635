"""The trainer: checkpoints, resume, backends, several processes, the probe, the CLI."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dim_fused
from dim_fused.training import DIMConfig, ImageData, TrainConfig, Trainer, checkpoint, evaluate, train
from dim_fused.training.data import to_inputs
from dim_fused.training.graphs import GraphedStep
from dim_fused.training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# Small critics keep the runs short; the encoder is the official one.
FAST = ["--hidden", "32", "32", "--units", "32", "--batch-size", "16", "--no-progress", "--no-eval"]


def needs_cpu_backend():
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")


def config(**overrides) -> TrainConfig:
    model = {"in_channels": 1, "hidden": (32, 32), "units": 32, "gamma": 0.1, **overrides.pop("model", {})}
    return TrainConfig(model=DIMConfig(**model), **{"batch_size": 16, **overrides})


def run_cli(*args: str) -> int:
    return train.main([*args])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["generators"]["shared"], b["generators"]["shared"])


def test_resume_continues_exactly(tmp_path):
    needs_cpu_backend()
    assert (
        run_cli("--steps", "6", "--checkpoint-every", "3", "--log-every", "1", "--out", str(tmp_path / "a"), *FAST) == 0
    )
    assert run_cli("--steps", "3", "--log-every", "1", "--out", str(tmp_path / "b"), *FAST) == 0
    assert run_cli("--steps", "6", "--resume", "--out", str(tmp_path / "b"), *FAST[-2:]) == 0
    assert_same_state(load(tmp_path / "a" / "checkpoint.pt"), load(tmp_path / "b" / "checkpoint.pt"))
    first, second = (read_metrics(tmp_path / run / "metrics.jsonl") for run in "ab")
    assert [r["step"] for r in second] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(first, second, strict=True):
        assert x["loss"] == y["loss"] and x["local_mi"] == y["local_mi"]


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomically({"step": 1, "weights": torch.arange(5)}, path)

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomically({"step": 2}, path)
    assert load(path)["step"] == 1 and torch.equal(load(path)["weights"], torch.arange(5))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, how):
    needs_cpu_backend()
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "dim_fused.training.train",
        "--steps",
        "1000",
        "--checkpoint-every",
        "1",
        "--log-every",
        "1",
    ]
    process = subprocess.Popen([*command, "--out", str(out), *FAST], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() or len(read_metrics(out / "metrics.jsonl")) < 3:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the run wrote no checkpoint in 2 minutes"
            time.sleep(0.05)
        process.send_signal(how)
        code = process.wait(timeout=60)
    finally:
        process.kill()
    if how == signal.SIGTERM:
        assert code == 130  # stopped cleanly after checkpointing its last step
    stopped_at = load(out / "checkpoint.pt")["step"]
    target = stopped_at + 2
    assert run_cli("--steps", str(target), "--resume", "--out", str(out), *FAST[-2:]) == 0
    assert run_cli("--steps", str(target), "--out", str(tmp_path / "straight"), *FAST) == 0
    assert_same_state(load(tmp_path / "straight" / "checkpoint.pt"), load(out / "checkpoint.pt"))
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


@pytest.mark.parametrize("critic", ["concat", "dot"])
def test_reference_and_fused_backends_give_the_same_loss_curve(tmp_path, critic):
    needs_cpu_backend()
    curves = {}
    for backend in ("reference", "cpu"):
        trainer = Trainer(
            config(steps=5, log_every=1, model={"critic": critic, "backend": backend, "alpha": 0.5}), tmp_path / backend
        )
        (tmp_path / backend).mkdir()
        trainer.run(progress=False)
        curves[backend] = read_metrics(tmp_path / backend / "metrics.jsonl")
    for ref, fused in zip(curves["reference"], curves["cpu"], strict=True):
        for key in ("loss", "local_mi", "global_mi", "prior", "prior_bound"):
            assert fused[key] == pytest.approx(ref[key], rel=1e-3, abs=1e-4), (ref["step"], key)
        assert fused["steps_per_s"] > 0


def test_mixed_precision_steps_follow_the_float32_ones(tmp_path):
    needs_cpu_backend()  # bfloat16 autocast on CPU: the path --amp takes on a GPU
    curves = {}
    for amp in (False, True):
        trainer = Trainer(config(steps=3, log_every=1, amp=amp, model={"backend": "cpu"}), tmp_path / str(amp))
        trainer.run(progress=False)
        curves[amp] = read_metrics(tmp_path / str(amp) / "metrics.jsonl")
    for full, mixed in zip(curves[False], curves[True], strict=True):
        for key in ("loss", "local_mi", "prior"):  # the default: encode-and-dot, InfoNCE (about log(B L))
            assert mixed[key] == pytest.approx(full[key], rel=0.02, abs=2e-3), (full["step"], key)
    assert curves[False] != curves[True]  # it did run in bfloat16


def test_a_time_budget_ends_training_checkpointed(tmp_path, capsys):
    needs_cpu_backend()
    out = tmp_path / "run"
    assert run_cli(*FAST, "--steps", "8", "--log-every", "2", "--time-budget", "0.001", "--out", str(out)) == 0
    assert load(out / "checkpoint.pt")["step"] == 2  # the first logging step past the budget
    assert "--time-budget 0.001 s spent at step 2 of 8" in capsys.readouterr().err
    assert run_cli(*FAST, "--steps", "8", "--log-every", "2", "--resume", "--out", str(out)) == 0
    assert load(out / "checkpoint.pt")["step"] == 8
    with pytest.raises(SystemExit):
        run_cli("--time-budget", "-3m", "--out", str(tmp_path / "other"))


# ---- data of any kind ------------------------------------------------------------------------------------------------
def test_any_tensor_dataset_trains_and_probes(tmp_path):
    """A researcher's own tensors reach the trainer and the probes without touching the
    built-in datasets."""
    needs_cpu_backend()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 36, 36), generator=generator, dtype=torch.uint8)
    labels = torch.arange(64) % 4
    mine = ImageData.from_tensors("my-images", images[:48], labels[:48], images[48:], labels[48:])
    cfg = config(steps=3, data="my-images", batch_size=8)
    trainer = Trainer(cfg, tmp_path / "run", data=mine)
    assert trainer.run(progress=False) and trainer.step == 3
    result = evaluate.evaluate(cfg, trainer.model.state_dict(), mine, trainer.device, classifier_epochs=1)
    assert result["data"] == "my-images" and result["test_images"] == 16
    assert 0 <= result["trained"]["linear"]["global"] <= 1
    with pytest.raises(ValueError, match="the data given is 'my-images' but the config names 'digits'"):
        Trainer(config(), tmp_path / "other", data=mine)
    with pytest.raises(ValueError, match="pass an ImageData"):  # the name alone does not find the tensors
        Trainer(cfg, tmp_path / "again")


def test_two_views_train_on_two_crops_of_the_same_images(tmp_path):
    """With views 2 each step's batch is two random crops/flips of the same images (the
    second half differs from the first only by the augmentation)."""
    needs_cpu_backend()
    images = torch.arange(48 * 36 * 36).remainder(251).to(torch.uint8).reshape(48, 1, 36, 36)
    mine = ImageData.from_tensors("mine", images[:40], torch.arange(40) % 4, images[40:], torch.arange(8) % 4)
    trainer = Trainer(config(steps=2, data="mine", batch_size=8, model={"views": 2}), tmp_path / "run", data=mine)
    batch = next(trainer.batches())
    first, second = batch.chunk(2)
    assert batch.shape == (16, 1, 32, 32) and not torch.equal(first, second)
    full = to_inputs(mine.unlabeled.images[trainer.batch_indices(0)], 36)  # the whole 36x36 images
    for view in (first, second):
        for image, crop in zip(full, view, strict=True):
            crops = [image[:, t : t + 32, u : u + 32] for t in range(5) for u in range(5)]
            assert any(torch.equal(crop, c) or torch.equal(crop, c.flip(-1)) for c in crops)
    assert trainer.run(progress=False) and trainer.step == 2
    assert trainer.config.model.views == 2
    with pytest.raises(SystemExit):
        train.parse_args(["--views", "3"])


def test_strong_augmentation_is_an_option_of_the_run(tmp_path):
    needs_cpu_backend()
    args = [
        "--data",
        "digits",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--augment",
        "strong",
        "--out",
        str(tmp_path / "run"),
    ]
    cfg = train.config_from_args(train.parse_args(args))
    assert cfg.augment == "strong"
    trainer = Trainer(cfg, tmp_path / "run")
    batch = next(trainer.batches())
    assert batch.shape == (8, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    assert trainer.run(progress=False) and trainer.step == 2
    with pytest.raises(SystemExit):
        train.parse_args(["--augment", "jitter"])
    with pytest.raises(ValueError, match="augment must be one of crop, strong"):
        config(augment="jitter")


def test_a_folder_of_images_trains(tmp_path):
    from test_data import write_image_folder

    needs_cpu_backend()
    write_image_folder(tmp_path / "images", unlabeled=8)
    cfg = config(steps=2, data="folder", data_dir=str(tmp_path / "images"), batch_size=4, model={"in_channels": 3})
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.run(progress=False) and len(trainer.data.unlabeled.labels) == 8


def test_a_short_fashion_mnist_run_and_its_probes(tmp_path):
    """Real images end to end, when Debian's package is installed (as on CI): the loader,
    a short training run, every probe (on a subset) with the raw-pixel baseline, the plots."""
    from dim_fused.training import data

    needs_cpu_backend()
    if not data.FASHION_MNIST_PACKAGE.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "fashion"
    args = ["--data", "fashion-mnist", "--data-dir", str(tmp_path / "none"), "--units", "64", "--steps", "40"]
    args += ["--probe-samples", "3000", "--classifier-epochs", "2", "--no-progress", "--out", str(out)]
    assert run_cli(*args) == 0
    probe = json.loads((out / "probe.json").read_text())
    assert probe["data"] == "fashion-mnist" and probe["test_images"] == 10000 and probe["classes"] == 10
    assert probe["probe"]["train_images"] == 3000
    for encoder, layers in (("trained", evaluate.FEATURES), ("random", evaluate.FEATURES), ("pixels", ["pixels"])):
        assert set(probe[encoder]["linear"]) == set(probe[encoder]["nonlinear"]) == set(layers)
        assert all(0.5 < accuracy < 1 for accuracy in probe[encoder]["linear"].values()), probe[encoder]  # 0.1: chance
    assert (out / "probes.png").stat().st_size > 10_000 and (out / "curves.png").stat().st_size > 10_000


# ---- several processes ----------------------------------------------------------------------------------------------
PER_RANK = 4


def _one_step(world_batch: int, estimator: str) -> dict:
    # The encode-and-dot critics score every rank's pairs exactly, whatever the estimator.
    model = {"critic": "dot", "estimator": estimator, "alpha": 1.0, "beta": 1.0, "gamma": 0.5}
    cfg = config(steps=1, model=model)
    cfg.batch_size = world_batch
    trainer = Trainer(cfg, "unused")
    images = next(trainer.batches())
    metrics = trainer.train_step(images)
    # Gradients, not Adam's first step (which is about lr * sign(grad) and so amplifies rounding of tiny ones).
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    buffers = {name: b.clone() for name, b in trainer.model.named_buffers()}
    kept = {key: metrics[key] for key in ("loss", "local_mi", "prior_bound")}
    return {**kept, "grads": grads, "buffers": buffers}


def _rank_main(rank: int, world: int, init_file: str, estimators: list[str], results) -> None:
    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results[rank] = {estimator: _one_step(PER_RANK, estimator) for estimator in estimators}
    finally:
        dist.destroy_process_group()
    # As the trainer's CLI does under torchrun: DDP keeps gloo's worker threads alive past
    # destroy_process_group, and one that outlives the interpreter's finalisation aborts.
    os._exit(0)


@pytest.mark.parametrize("world", [2, 4])
def test_several_processes_take_the_single_process_step(tmp_path, world):
    """InfoNCE (the default) and DV contrast each positive with every rank's negatives, an
    f-measure with every rank's pairs: the same objective, value and gradients as one process."""
    needs_cpu_backend()
    estimators = ["infonce", "dv", "jsd"] if world == 2 else ["infonce"]
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(world, str(tmp_path / "init"), estimators, results), nprocs=world, join=True)
        per_rank = [results[r] for r in range(world)]
    for estimator in estimators:
        ranks = [r[estimator] for r in per_rank]
        single = _one_step(world * PER_RANK, estimator)
        for rank in ranks:  # the whole batch's estimate on every rank (the prior's term is each rank's own)
            torch.testing.assert_close(rank["local_mi"], single["local_mi"], rtol=1e-4, atol=1e-5, msg=estimator)
        mean_loss = sum(r["loss"] for r in ranks) / world
        torch.testing.assert_close(mean_loss, single["loss"], rtol=1e-4, atol=1e-5, msg=estimator)
        torch.testing.assert_close(sum(r["prior_bound"] for r in ranks) / world, single["prior_bound"])
        # A gradient that cancels analytically (InfoNCE's softmax weights of a row sum to one: a
        # bias shared by every local code gets none) is rounding noise of the model's largest ones.
        floor = 1e-6 * max(g.abs().max().item() for g in single["grads"].values())
        for kind in ("grads", "buffers"):  # buffers: BatchNorm running statistics over the whole batch
            for key, value in single[kind].items():
                atol = 1e-4 * value.abs().max().item() + (floor if kind == "grads" else 0.0)
                for rank in ranks:
                    torch.testing.assert_close(
                        rank[kind][key],
                        value,
                        rtol=1e-4,
                        atol=atol,
                        msg=lambda m, where=f"{estimator} {key}": f"{where}: {m}",
                    )


def test_every_network_uses_the_official_adam_betas(tmp_path):
    trainer = Trainer(config(), tmp_path / "run")
    optimizers = [trainer.encoder_optimizer, trainer.prior_optimizer]
    assert all(group["betas"] == (0.5, 0.999) for o in optimizers for group in o.param_groups)
    trained = {id(p) for o in optimizers for group in o.param_groups for p in group["params"]}
    assert trained == {id(p) for p in trainer.model.parameters()}  # encoder, critics and D, each once


# ---- the acceptance test: DIM beats a random encoder on digits --------------------------------------------------
def test_a_short_digits_run_beats_the_random_encoder(tmp_path):
    needs_cpu_backend()
    out = tmp_path / "digits"
    # The defaults (DIM(L), encode-and-dot, InfoNCE) with a narrower critic, for speed on a CPU.
    assert run_cli("--steps", "300", "--units", "256", "--lr", "1e-3", "--out", str(out), "--no-progress") == 0
    probe = json.loads((out / "probe.json").read_text())
    trained, random = probe["trained"], probe["random"]
    assert trained["linear"]["global"] > random["linear"]["global"] + 0.02, probe
    one_shot = trained["few_labels"]["1"]["global"]["mean"], random["few_labels"]["1"]["global"]["mean"]
    assert one_shot[0] > one_shot[1] + 0.05, probe  # label efficiency: where trained and random differ most
    assert set(trained["nonlinear"]) == {"global", "fc", "conv"}
    assert (out / "curves.png").stat().st_size > 10_000
    assert read_metrics(out / "metrics.jsonl")[-1] == {"probe": probe}
    # and the evaluation command gives the same numbers from the checkpoint
    assert evaluate.main([str(out / "checkpoint.pt"), "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == probe


def test_one_step_on_stl10_with_the_alexnet_encoder(tmp_path, monkeypatch):
    from test_data import write_fake_stl10

    write_fake_stl10(tmp_path, monkeypatch)
    cfg = config(data="stl10", data_dir=str(tmp_path), model={"architecture": "alex64x64", "in_channels": 3})
    cfg.batch_size = 3
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.steps_per_epoch == 2  # 6 unlabeled images
    metrics = trainer.train_step(next(trainer.batches()))
    assert all(torch.isfinite(v) for v in metrics.values())


# ---- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "dim-best"], "preset must be one of dim-local, dim-global; got 'dim-best'"),
        (["--alpha", "-1"], "alpha must be a finite weight >= 0"),
        (["--batch-size", "1"], "batch size must be at least 2"),
        (["--estimator", "mine"], "estimator must be one of"),
        (["--data", "imagenet"], "data must be one of digits, fashion-mnist, cifar10"),
        (["--data", "cifar10", "--data-dir", "/nonexistent/folder"], "cifar-10-batches-py"),
        (["--backend", "tpu"], "backend must be one of"),
        (["--device", "cpu", "--cuda-graphs"], "CUDA graphs need a CUDA device"),
    ],
)
def test_bad_configurations_exit_with_a_clear_message(tmp_path, capsys, args, message):
    assert run_cli("--out", str(tmp_path / "run"), "--steps", "1", *FAST, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, capsys):
    checkpoint.save_atomically({"step": 3}, tmp_path / "checkpoint.pt")
    assert run_cli("--out", str(tmp_path), "--steps", "1", *FAST) == 2
    assert "already holds a run: pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert load(tmp_path / "checkpoint.pt") == {"step": 3}


def test_evaluate_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "missing.pt")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert evaluate.main([str(tmp_path / "junk.pt")]) == 2
    assert "is not a dim_fused training checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("critic", ["concat", "dot"])
def test_a_training_step_reads_no_value_on_the_host(tmp_path, critic):
    """The update after the draws (forward, backward, both optimizers' steps, the prior's
    gradient penalty) runs on the meta device, where reading any tensor's value on the host
    (item, a branch on data, nonzero, a data-dependent shape) raises: what on a GPU would
    be a host sync, and what a CUDA graph of the step cannot hold. The ops resolve to the
    reference there: their own host code is held to no sync by tests/benchmarks/test_launches.py."""
    images = torch.randint(0, 256, (24, 1, 36, 36), dtype=torch.uint8)
    mine = ImageData.from_tensors("mine", images[:16], torch.arange(16) % 4, images[16:], torch.arange(8) % 4)
    model = {"critic": critic, "alpha": 0.5, "global_critic": "flat", "views": 2}
    trainer = Trainer(config(steps=1, data="mine", batch_size=4, model=model), tmp_path / "run", data=mine)
    trainer.model.to("meta")  # the optimizers hold the same parameters, now on meta
    metrics = trainer.update(
        torch.empty(8, 1, 32, 32, device="meta"),
        trainer.model.negatives(4, device="meta"),
        torch.empty(8, 64, device="meta"),
    )
    assert sorted(metrics) == ["global_mi", "local_mi", "loss", "prior", "prior_accuracy", "prior_bound"]
    assert all(m.device.type == "meta" for m in metrics.values())
    with pytest.raises((RuntimeError, NotImplementedError)):  # the check is live: a read raises there
        metrics["loss"].item()


# ---- CUDA graphs -------------------------------------------------------------------------------------------------
def test_cuda_graphs_are_the_default_on_a_gpu_only(tmp_path):
    assert not Trainer(config(), tmp_path, device="cpu").cuda_graphs
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        Trainer(config(), tmp_path, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        GraphedStep(lambda: None, "cpu")
    if torch.cuda.is_available():
        assert Trainer(config(), tmp_path, device="cuda").cuda_graphs


def test_a_checkpoint_of_a_graphed_run_resumes_without_graphs(tmp_path):
    """A GPU run's optimisers are capturable (step counts on the device); resumed where graphs
    are off (a CPU, --no-cuda-graphs) they continue as plain Adam, from the same state."""
    trainer = Trainer(config(steps=4), tmp_path / "a")
    batches = trainer.batches()
    for _ in range(2):
        trainer.train_step(next(batches))
    state = copy.deepcopy(trainer.state())  # as saved: no tensor shared with the trainer
    for name in ("encoder_optimizer", "prior_optimizer"):  # as a capturable optimiser saves itself
        for group in state[name]["param_groups"]:
            group["capturable"] = True
    resumed = Trainer(config(steps=4), tmp_path / "b")
    resumed.load(state)
    for optimizer in (resumed.encoder_optimizer, resumed.prior_optimizer):
        assert all(not group["capturable"] for group in optimizer.param_groups)
        assert all(s["step"].device.type == "cpu" and float(s["step"]) == 2 for s in optimizer.state.values())
    mine, theirs = resumed.batches(), trainer.batches()
    assert resumed.train_step(next(mine))["loss"] == trainer.train_step(next(theirs))["loss"]


def _cuda_trainers(tmp_path, critic: str, backend: str) -> dict[bool, Trainer]:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if backend not in dim_fused.available_backends("cuda"):
        pytest.skip(f"backend {backend} is not available on this GPU")
    model = {"critic": critic, "backend": backend, "alpha": 0.5, "global_critic": "flat"}
    return {
        g: Trainer(config(steps=8, model=model), tmp_path / str(g), device="cuda", cuda_graphs=g) for g in (False, True)
    }


@pytest.mark.parametrize("backend", ["reference", "cuda", "triton"])
@pytest.mark.parametrize("critic", ["concat", "dot"])
def test_cuda_graphed_steps_follow_the_eager_ones(tmp_path, critic, backend):
    """Warm-up, capture and replays (static inputs refreshed every step, capturable Adam)
    take the eager trainer's steps: the same metrics at every step, the same weights."""
    trainers = _cuda_trainers(tmp_path, critic, backend)
    curves = {}
    for graphed, trainer in trainers.items():
        batches = trainer.batches()
        curves[graphed] = [
            {k: float(v) for k, v in trainer.train_step(next(batches)).items()} for _ in range(trainer.config.steps)
        ]
    assert trainers[True]._update.captured
    for step, (eager, graphed) in enumerate(zip(curves[False], curves[True], strict=True)):
        for key in eager:
            assert graphed[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), (step, key)
    weights = [t.model.state_dict() for t in trainers.values()]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_cuda_training_step_syncs_no_host(tmp_path, backend):
    """The whole step (draws, forward, backward, both optimisers) eagerly and replayed, under
    torch.cuda.set_sync_debug_mode("error"): a host sync raises. After 4 steps: the warm-up
    and the capture (which synchronises by design) come first."""
    for trainer in _cuda_trainers(tmp_path, "concat", backend).values():
        batches = trainer.batches()
        images = [next(batches) for _ in range(8)]
        for batch in images[:4]:
            trainer.train_step(batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in images[4:]:
                trainer.train_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
