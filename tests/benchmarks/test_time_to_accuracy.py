"""The time-to-accuracy benchmark: its points are the probes' own numbers."""

import json

import pytest

import dim_fused
from benchmarks import time_to_accuracy


def test_the_curve_starts_at_the_random_encoder_and_ends_at_the_trained_one(tmp_path):
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    out = tmp_path / "curve"
    args = ["--budget", "2", "--every", "1", "--out", str(out), "--data", "digits", "--units", "32"]
    args += ["--batch-size", "16", "--classifier-epochs", "2"]
    assert time_to_accuracy.main(args) == 0
    curve = json.loads((out / "curve.json").read_text())
    probe = json.loads((out / "probe.json").read_text())
    first, last = curve["points"][0], curve["points"][-1]
    assert curve["command"] == "python -m benchmarks.time_to_accuracy " + " ".join(args)
    assert first["step"] == 0 and first["train_s"] == 0
    assert [p["step"] for p in curve["points"]] == sorted({p["step"] for p in curve["points"]})  # strictly later
    assert 1 <= last["train_s"] < 30 and len(curve["points"]) >= 2
    for encoder, point in (("random", first), ("trained", last)):
        assert point["Y linear"] == probe[encoder]["linear"]["global"]
        assert point["conv linear"] == probe[encoder]["linear"]["conv"]
        assert point["Y 1 per class"] == probe[encoder]["few_labels"]["1"]["global"]["mean"]
        assert point["Y 10 per class"] == probe[encoder]["few_labels"]["10"]["global"]["mean"]
    assert probe["pixels"]["linear"]["pixels"] > 0.5 and probe["probe"]["classifier_epochs"] == 2
    for picture in ("curve.png", "probes.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    assert (out / "run" / "checkpoint.pt").exists()
