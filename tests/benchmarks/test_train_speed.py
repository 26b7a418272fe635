"""benchmarks.train_speed: every backend of a critic timed interleaved, at a toy size."""

import json

import pytest
import torch

from benchmarks import train_speed
from benchmarks.timing import Timing


def test_backends_timed_interleaved_and_recorded(tmp_path, monkeypatch):
    calls = []
    real = train_speed.measure_interleaved

    def spy(fns, device, **kwargs):
        calls.append(sorted(fns))
        return real(fns, device, **kwargs)

    monkeypatch.setattr(train_speed, "measure_interleaved", spy)
    argv = ["--device", "cpu", "--critics", "concat", "--backends", "reference", "cpu"]
    argv += ["--batch-size", "4", "--units", "16", "--warmup", "1", "--min-time", "0", "--out", str(tmp_path)]
    assert train_speed.main(argv) == 0
    assert calls == [["cpu", "reference"]]  # one interleaved measurement of both backends
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["critic"], r["backend"], r["cuda_graphs"]) for r in rows] == [
        ("concat", "reference", False),
        ("concat", "cpu", False),
    ]
    repeats = {r["step_ms"]["repeats"] for r in rows}
    assert len(repeats) == 1 and repeats.pop() >= 5  # one step of each per round
    assert all(r["steps_per_s"] > 0 and r["peak_mib"] is None for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| concat | cpu | off |" in table and "| 1.00 |" in table


def test_cuda_graphs_refused_on_a_cpu():
    with pytest.raises(SystemExit, match="CUDA graphs need a CUDA device"):
        train_speed.main(["--device", "cpu", "--cuda-graphs", "on"])


def test_time_steps_warms_every_trainer_up(monkeypatch):
    class Counting:
        device = torch.device("cpu")

        def __init__(self):
            self.steps = 0

        def batches(self):
            while True:
                yield None

        def train_step(self, _):
            self.steps += 1

    trainers = {"a": Counting(), "b": Counting()}
    timings = train_speed.time_steps(trainers, warmup=3, min_time_s=0)
    assert set(timings) == {"a", "b"} and all(isinstance(t, Timing) for t in timings.values())
    assert trainers["a"].steps == trainers["b"].steps == 3 + timings["a"].repeats
