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
    lines = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| WARNING")]
    assert len(lines) == 1 + len(configs.TINY)  # one line per op and setting, + the header
    assert "time / FLOPs at peak" in summary and data["meta"]["ceilings"]["gemm_tflop_per_s"] > 0
    assert str(tmp_path) in result.stdout  # the user is told where the files are
    launches_table = (tmp_path / "launches.md").read_text()
    assert "| concat_conv_mi | jsd | reference |" in launches_table and "| mi_bound | jsd | cpu |" in launches_table
    assert "us / call (tiny inputs)" in result.stdout
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
    real_prepare = report.prepare_peer
    calls = []

    def prepare_peer(config, peer, *args):
        calls.append(peer)
        if config.op == "dot_product_mi":
            raise KeyboardInterrupt
        return real_prepare(config, peer, *args)

    monkeypatch.setattr(report, "prepare_peer", prepare_peer)
    monkeypatch.setattr(report.memory, "limit_cpu_memory", lambda gigabytes: None)
    monkeypatch.setattr(report, "measure_ceilings", lambda device, dtype: {"copy_gb_per_s": 1.0})
    rows = report.main(["--tiny", "--out", str(tmp_path)])
    finished = len(configs.TINY[0].estimators) * len(cases.MODES) * len(cases.PEERS["mi_bound"])
    assert len(rows) == finished and {r["op"] for r in rows} == {"mi_bound"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["interrupted"] is True and len(data["rows"]) == finished


def test_timings_run_before_the_memory_accounting(monkeypatch):
    """Peak-RSS accounting maps every large allocation on its own (slow for the
    materialising peers): every timing must be taken before it is switched on."""
    events = []
    real_measure = report.measure_interleaved
    monkeypatch.setattr(report, "measure_interleaved", lambda *a, **k: events.append("timing") or real_measure(*a, **k))
    monkeypatch.setattr(report.memory, "prepare_cpu_accounting", lambda: events.append("accounting"))
    rows = report.run(configs.TINY[:2], CPU, torch.float32, {"copy_gb_per_s": 1.0}, progress=False)
    assert events.count("accounting") == 1 and "timing" not in events[events.index("accounting") :]
    assert all(r["peak_bytes"] is not None for r in rows if r["status"] == "ok")


def test_the_peers_are_timed_interleaved(monkeypatch):
    """Round after round, every peer of a case once per round in a rotating order: a
    machine's drift falls on every peer alike."""
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = report.measure_interleaved(fns, CPU, min_time_s=0.0)
    assert set(timings) == {"a", "b", "c"} and all(t.repeats == 5 for t in timings.values())
    assert calls[:6] == ["a", "b", "c", "b", "c", "a"]


def test_a_fused_backend_slower_than_the_reference_gets_a_warning_row():
    row = {"op": "concat_conv_mi", "config": "cifar", "estimator": "jsd", "mode": "forward+backward"}
    rows = [
        {**row, "peer": "reference", "status": "ok", "median_ms": 10.0, "speedup_vs_reference": 1.0},
        {**row, "peer": "cpu", "status": "ok", "median_ms": 12.0, "speedup_vs_reference": 10 / 12},
    ]
    summary = report.summary(rows)
    assert "| WARNING: concat_conv_mi | cifar | jsd | cpu, forward+backward |" in summary
    assert "slower than the reference on this machine" in summary


def test_the_floor_is_the_flops_at_the_best_gemm_rate(monkeypatch):
    """A CPU's fp32 GEMM rate is the better of BLAS (MKL) and oneDNN, measured in the run."""
    from benchmarks import ceilings

    monkeypatch.setattr(ceilings, "_copy_rate", lambda device, n_bytes: 10.0)
    monkeypatch.setattr(ceilings, "_gemm_rates", lambda device, dtype, n: {"blas": 0.1, "onednn": 0.25})
    measured = ceilings.measure_ceilings(CPU, torch.float32)
    assert measured["gemm_tflop_per_s"] == 0.25 and measured["gemm_fp32_blas_tflop_per_s"] == 0.1
    group = [
        {"peer": "cpu", "status": "ok", "median_ms": 20.0, "flop": 2.5e9, "bytes": 1, "peak_bytes": None},
    ]
    report._derive(group, measured)
    assert group[0]["floor_ratio"] == pytest.approx(2.0)  # 20 ms against 2.5 GFLOP / 0.25 TFLOP/s = 10 ms
