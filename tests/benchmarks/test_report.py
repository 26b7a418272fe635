"""The benchmark report: end to end at toy sizes, a wrong kernel refused before it
is timed, an out-of-memory peer recorded rather than crashing the run."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from benchmarks import cases, configs, report

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def test_report_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    expected_rows = sum(len(c.estimators) * len(cases.MODES) * len(cases.PEERS[c.op]) for c in configs.TINY)
    assert len(data["rows"]) == expected_rows
    assert {"date", "command", "device", "torch", "ceilings"} <= set(data["meta"])
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == expected_rows + 1  # header + one line per row
    assert (tmp_path / "results.csv").read_text().count("\n") == expected_rows + 1
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert {r["peer"] for r in ok} >= {"reference", "compiled", "cpu", "official", "matmuls"}
    assert all(r["median_ms"] > 0 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] for r in ok)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| ") == 1 + len(configs.TINY)  # one line per op and setting, + the header
    assert str(tmp_path) in result.stdout  # the user is told where the files are
    assert "| op | config |" in result.stdout and "\n| mi_bound | tiny | jsd | cpu |" in result.stdout
    for name in ("dot_product_mi-batch-jsd.png", "speedup.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_wrong_kernel_is_refused_before_timing(monkeypatch):
    config = configs.TINY[0]
    right = cases.peer_fn
    timed = []

    def wrong(op, peer):
        fn = right(op, peer)
        return (lambda *args: fn(*args) + 0.1) if peer == "cpu" else fn

    monkeypatch.setattr(cases, "peer_fn", wrong)
    monkeypatch.setattr(report, "measure", lambda *args, **kwargs: timed.append(args))
    inputs = report.input_sets(config, CPU, torch.float32)
    row = report.time_peer(config, "cpu", "jsd", "forward", inputs, CPU, torch.float32, {})
    assert row["status"] == "wrong result" and "value is off" in row["reason"]
    assert timed == []


def test_out_of_memory_peer_is_recorded(monkeypatch):
    config = configs.TINY[0]
    real_step = cases.step

    def step(op, peer, *args):
        if peer == "reference":

            def exhausted():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 TiB")

            return exhausted
        return real_step(op, peer, *args)

    monkeypatch.setattr(cases, "step", step)
    ceilings = {"copy_gb_per_s": 1.0, "gemm_fp32_tflop_per_s": 1.0}
    rows = report.run([config], CPU, torch.float32, ceilings, progress=False)
    reference_rows = [r for r in rows if r["peer"] == "reference"]
    assert reference_rows and all(r["status"] == "out of memory" for r in reference_rows)
    assert any(r["status"] == "ok" and r["peer"] == "compiled" for r in rows)
    assert "out of memory" in report.markdown(rows)


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(cases, "step", lambda *args: lambda: 1 / 0)
    config = configs.TINY[0]
    with pytest.raises(ZeroDivisionError):
        report.time_peer(config, "reference", "jsd", "forward", [()], CPU, torch.float32, {})


def test_interrupted_run_keeps_the_finished_cases(monkeypatch, tmp_path):
    """A time limit (SIGTERM, turned into KeyboardInterrupt) ends the run; the cases
    finished so far are still written, marked as interrupted."""
    real_time_peer = report.time_peer
    calls = []

    def time_peer(config, peer, *args):
        calls.append(peer)
        if config.op == "dot_product_mi":
            raise KeyboardInterrupt
        return real_time_peer(config, peer, *args)

    monkeypatch.setattr(report, "time_peer", time_peer)
    monkeypatch.setattr(report.memory, "limit_cpu_memory", lambda gigabytes: None)
    monkeypatch.setattr(report, "measure_ceilings", lambda device: {"copy_gb_per_s": 1.0})
    rows = report.main(["--tiny", "--out", str(tmp_path)])
    finished = len(configs.TINY[0].estimators) * len(cases.MODES) * len(cases.PEERS["mi_bound"])
    assert len(rows) == finished and {r["op"] for r in rows} == {"mi_bound"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["interrupted"] is True and len(data["rows"]) == finished


def test_timings_run_before_the_memory_accounting(monkeypatch):
    """Peak-RSS accounting maps every large allocation on its own (slow for the
    materialising peers): every timing must be taken before it is switched on."""
    events = []
    real_measure = report.measure
    monkeypatch.setattr(report, "measure", lambda *a, **k: events.append("timing") or real_measure(*a, **k))
    monkeypatch.setattr(report.memory, "prepare_cpu_accounting", lambda: events.append("accounting"))
    rows = report.run(configs.TINY[:2], CPU, torch.float32, {"copy_gb_per_s": 1.0}, progress=False)
    assert events.count("accounting") == 1 and "timing" not in events[events.index("accounting") :]
    assert all(r["peak_bytes"] is not None for r in rows if r["status"] == "ok")
