"""benchmarks/gpu_check.sh, the prepared GPU run, in its dry-run mode: both calls' steps and
plumbing on a CPU (small cases), so that a GPU session is not spent finding a broken script,
and their outputs within what comes back from the GPU machine (at most 8 files, 2 folders
deep)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = {
    "1": (
        "build",
        "backends",
        "tests",
        "smoke",
        "memcheck",
        "headline-bf16",
        "headline-fp32",
        "train-speed",
        "targets",
    ),
    "2": (
        "build",
        "backends",
        "rerun",
        "racecheck",
        "graphs-bf16",
        "launches",
        "large-bf16",
        "compiled-bf16",
        "tf32",
        "targets",
    ),
}


# Stand-ins for compute-sanitizer: one that runs the program it is given (as the real one does
# where it works), one that refuses the GPU as it does under gVisor (KINDS.md).
SANITIZERS = {
    "passes": 'while [ "${1#-}" != "$1" ]; do shift 2; done; exec "$@"',
    "refuses": 'echo "========= Error: Device not supported"; exit 1',
}


def fake_sanitizer(tmp_path: Path, behaviour: str) -> str:
    path = tmp_path / f"compute-sanitizer-{behaviour}"
    path.write_text(f"#!/usr/bin/env bash\n{SANITIZERS[behaviour]}\n")
    path.chmod(0o755)
    return str(path)


def dry_run(call: str, out: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **extra}
    env.pop("TRITON_INTERPRET", None)  # as on a machine whose only Triton is the GPU one
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--call", call, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.parametrize("call", ["1", "2"])
def test_each_call_runs_end_to_end_in_dry_run_mode(tmp_path, call):
    """Call 1 with a sanitizer that refuses the GPU (its step is unsupported, not failed),
    call 2 with one that runs the program (its step passes)."""
    out = tmp_path / "check"
    extra = {"GPU_CHECK_SANITIZER": fake_sanitizer(tmp_path, "refuses" if call == "1" else "passes")}
    if call == "2":
        extra["GPU_CHECK_RERUN"] = "tests/ops/mi_bound/test_mi_bound.py::test_opcheck"
    result = dry_run(call, out, **extra)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines() if line[:2] == "| "}
    unsupported = {"memcheck"} if call == "1" else set()
    for step in STEPS[call]:
        wanted = "unsupported" if step in unsupported else "0"
        assert rows.get(step) == wanted, f"step {step}: {rows.get(step)}\n{summary}"
    if unsupported:
        assert "refused this GPU (Device not supported" in summary
    assert f"kernel {os.uname().release}" in summary
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["log.txt", "rows.json", "summary.md", "tests.xml"]
    assert all(p.stat().st_size < 16 << 20 for p in files)
    assert f"--dry-run --call {call}" in summary
    assert ("## launches.md" in summary and "| concat_conv_mi | jsd | reference |" in summary) == (call == "2")
    assert "## targets.md" in summary and "| target | wanted | found |" in summary
    reports = json.loads((out / "rows.json").read_text())
    expected = {
        "1": {"headline-bf16", "headline-fp32", "train-speed"},
        "2": {"graphs-bf16", "compiled-bf16", "tf32", "large-bf16"},
    }
    assert set(reports) == expected[call]
    assert all(run["rows"] for run in reports.values())
    log = (out / "log.txt").read_text()
    assert all(f"==== {step}: rc 0" in log for step in STEPS[call] if step not in unsupported)
    assert all(f"==== {step}: rc 75" in log for step in unsupported)


def test_the_calls_refuse_a_wrong_call_number(tmp_path):
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--call", "3", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage" in result.stderr
