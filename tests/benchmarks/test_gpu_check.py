"""benchmarks/gpu_check.sh, the prepared GPU run, in its dry-run mode: the same steps and
plumbing on a CPU (small cases), so a GPU session is not spent finding a broken script."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_end_to_end_in_dry_run_mode(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # as on a machine whose only Triton is the GPU one
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()[6:] if line[:2] == "| "
    }
    for step in ("environment", "build", "backends", "tests", "smoke", "quick", "train-speed"):
        assert rows.get(step) == "0", f"step {step}: {rows.get(step)}\n{summary}"
    for written in ("versions.txt", "command.txt", "report-quick/summary.md", "train-speed/table.md", "tests-0.xml"):
        assert (out / written).exists(), written
    assert "--dry-run" in (out / "command.txt").read_text()
    assert "## report-quick/summary.md" in summary
