"""The figures this folder's README quotes, read from the runs' results.json: per run, each
fused `cpu` case's median and its ratios (the report's own fields), and the training steps'
ratios to the reference backend.

    .venv/bin/python benchmarks/results/cpu-2core-2026-12-06-passes/summary.py [FOLDER]

FOLDER (default: this one) is another folder of the same runs (`OUT=FOLDER measure.sh K`).
"""

import json
import sys
from pathlib import Path

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
RUNS = (1, 2, 3)
# The report's ratio fields a README column quotes, per results folder.
REPORTS = {
    "fp32": (
        "speedup_vs_reference",
        "speedup_vs_best_compiled",
        "speedup_vs_official",
        "speedup_vs_seed",
        "memory_vs_reference",
        "floor_ratio",
    ),
    "k8": ("speedup_vs_reference", "speedup_vs_best_compiled", "speedup_vs_seed", "memory_vs_reference", "floor_ratio"),
    "fp32-retain": ("speedup_vs_reference", "speedup_vs_best_compiled", "floor_ratio"),
    "bf16": ("speedup_vs_reference", "speedup_vs_reference-fp32", "speedup_vs_best_compiled", "memory_vs_reference"),
}
TRAINING = ("train", "train-retain", "amp")


def _joined(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _rows(name: str, run: int) -> list[dict]:
    path = HERE / f"{name}-run{run}" / "results.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def reports() -> None:
    for name, fields in REPORTS.items():
        print(f"\n## {name}: fused cpu, forward+backward (runs {', '.join(map(str, RUNS))})")
        cases = {}
        for run in RUNS:
            for row in _rows(name, run):
                if row["peer"] == "cpu" and row["status"] == "ok" and row["mode"] == "forward+backward":
                    cases.setdefault((row["op"], row["config"], row["estimator"]), []).append(row)
        for (op, config, estimator), rows in cases.items():
            if op == "mi_bound":
                cells = [f"x reference {_joined([r['speedup_vs_reference'] for r in rows])}"]
            else:
                cells = [f"ms {_joined([r['median_ms'] for r in rows])}"]
                for field in fields:
                    values = [r.get(field) for r in rows]
                    if all(v is not None for v in values):
                        cells.append(f"{field} {_joined(values)}")
            print(f"{op} {config} {estimator}: " + "; ".join(cells))


def training() -> None:
    for name in TRAINING:
        print(f"\n## {name}: steps/s (reference, cpu) and x reference (runs {', '.join(map(str, RUNS))})")
        by_critic = {}
        for run in RUNS:
            path = HERE / f"{name}-run{run}" / "results.json"
            if not path.exists():
                continue
            rows = json.loads(path.read_text())["rows"]
            for critic in sorted({r["critic"] for r in rows}):
                rate = {r["backend"]: r["steps_per_s"] for r in rows if r["critic"] == critic}
                by_critic.setdefault(critic, []).append(
                    f"{rate['reference']:.2f}/{rate['cpu']:.2f} = {rate['cpu'] / rate['reference']:.2f}"
                )
        for critic, cells in by_critic.items():
            print(f"{critic}: {'; '.join(cells)}")


if __name__ == "__main__":
    reports()
    training()
