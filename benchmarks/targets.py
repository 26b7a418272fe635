"""The GPU targets of the fused ops and the training step (issue 21, section 4), met or
not, from the results a run wrote: ``python -m benchmarks.targets FOLDER... [--out F]``.

Every ``results.json`` under the folders is read: the report's (rows of one dtype, eager
or, with ``--cuda-graphs``, every peer's step replayed as a CUDA graph) and
``benchmarks.train_speed``'s (steps/s per critic, backend and CUDA-graph mode). A target
whose rows are not there is listed as not measured; one whose peers ran is met or not,
with the ratio found (the fused side: the faster of the fused backends on that row)."""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .cases import FUSED

MODE = "forward+backward"


class Outcome(NamedTuple):
    target: str
    wanted: str
    found: str
    met: bool | None  # None: not measured

    def cells(self) -> list[str]:
        verdict = "not measured" if self.met is None else "met" if self.met else "**not met**"
        return [self.target, self.wanted, self.found, verdict]


def results(folders: list[Path]) -> Iterator[dict]:
    for folder in folders:
        for path in sorted(folder.rglob("results.json")):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("rows"), list):
                data["path"] = str(path)
                yield data


def _report_rows(runs: list[dict], dtype: str, graphs: bool) -> list[dict]:
    """The ok forward+backward rows of the reports of ``dtype``, eager or graphed (float32:
    IEEE only, the issue's same precision for every peer)."""
    rows = []
    for run in runs:
        meta = run.get("meta", {})
        if "op" not in (run["rows"][0] if run["rows"] else {}):
            continue
        if meta.get("dtype") != dtype or bool(meta.get("cuda_graphs")) != graphs:
            continue
        if dtype == "float32" and meta.get("fp32_precision", "ieee") != "ieee":
            continue
        rows += [r for r in run["rows"] if r.get("status") == "ok" and r.get("mode") == MODE]
    return rows


def _ratio(rows: list[dict], op: str, config: str, estimator: str | None, peer: str) -> tuple[float, str] | None:
    """(peer's time / the fastest fused backend's, that backend) on the rows of one case;
    the smallest over estimators when ``estimator`` is None."""
    found = []
    estimators = {r["estimator"] for r in rows if r["op"] == op and r["config"] == config}
    for name in sorted(estimators if estimator is None else {estimator}):
        case = {r["peer"]: r for r in rows if (r["op"], r["config"], r["estimator"]) == (op, config, name)}
        fused = [case[p] for p in FUSED if p in case]
        if peer in case and fused:
            best = min(fused, key=lambda r: r["median_ms"])
            found.append((case[peer]["median_ms"] / best["median_ms"], f"{best['peer']}, {name}"))
    return min(found) if found else None


def _speedup(target: str, minimum: float, measured: tuple[float, str] | None) -> Outcome:
    wanted = f">= {minimum:g}x"
    if measured is None:
        return Outcome(target, wanted, "", None)
    ratio, where = measured
    return Outcome(target, wanted, f"{ratio:.2f}x ({where})", ratio >= minimum)


def evaluate(runs: list[dict]) -> list[Outcome]:
    outcomes = []
    for dtype in ("bfloat16", "float32"):
        eager, graphed = _report_rows(runs, dtype, False), _report_rows(runs, dtype, True)
        outcomes += [
            _speedup(
                f"concat_conv_mi CIFAR {dtype}: fused vs reference eager",
                4,
                _ratio(eager, "concat_conv_mi", "cifar", None, "reference"),
            ),
            _speedup(
                f"concat_conv_mi CIFAR {dtype}: fused vs reference, both as CUDA graphs",
                1.5,
                _ratio(graphed, "concat_conv_mi", "cifar", None, "reference"),
            ),
            _speedup(
                f"dot_product_mi InfoNCE CIFAR {dtype}: fused vs the official formulation",
                10,
                _ratio(eager, "dot_product_mi", "cifar", "infonce", "official"),
            ),
            _speedup(
                f"dot_product_mi InfoNCE CIFAR {dtype}: fused vs reference eager",
                3,
                _ratio(eager, "dot_product_mi", "cifar", "infonce", "reference"),
            ),
        ]
    outcomes.append(_gemm_rate(_report_rows(runs, "bfloat16", False)))
    outcomes += _training(runs)
    return outcomes


def _gemm_rate(rows: list[dict]) -> Outcome:
    target, wanted = "concat_conv_mi large bf16: fused rate vs the bf16 GEMM rate of the run", ">= 0.5"
    best: dict[str, dict] = {}  # the faster fused backend of each estimator; then the worst estimator counts
    large = [r for r in rows if (r["op"], r["config"]) == ("concat_conv_mi", "large") and r["peer"] in FUSED]
    for row in large:
        fraction = row.get("gemm_fraction") or 0.0
        if fraction > best.get(row["estimator"], {}).get("gemm_fraction", 0.0):
            best[row["estimator"]] = row
    if not best:
        return Outcome(target, wanted, "", None)
    worst = min(best.values(), key=lambda row: row["gemm_fraction"])
    found = f"{worst['gemm_fraction']:.2f} ({worst['peer']}, {worst['estimator']})"
    return Outcome(target, wanted, found, worst["gemm_fraction"] >= 0.5)


def _training(runs: list[dict]) -> list[Outcome]:
    rows = [r for run in runs for r in run["rows"] if "steps_per_s" in r and r.get("cuda_graphs")]
    outcomes = []
    for critic in ("dot", "concat"):  # dot: the default config's critic
        target = f"DIM training step, {critic} critic: fused backend vs reference, both as CUDA graphs"
        mine = {r["backend"]: r["steps_per_s"] for r in rows if r["critic"] == critic}
        fused = [(mine[b], b) for b in FUSED if b in mine]
        if "reference" not in mine or not fused:
            outcomes.append(Outcome(target, ">= 2x", "", None))
            continue
        rate, backend = max(fused)
        ratio = rate / mine["reference"]
        outcomes.append(Outcome(target, ">= 2x", f"{ratio:.2f}x ({backend})", ratio >= 2))
    return outcomes


def markdown(outcomes: list[Outcome], sources: list[str]) -> str:
    lines = ["| target | wanted | found | |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(o.cells()) + " |" for o in outcomes]
    lines += ["", "From: " + (", ".join(f"`{s}`" for s in sources) or "no results.json found")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding results.json files (searched below)")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    runs = list(results(args.folders))
    table = markdown(evaluate(runs), [run["path"] for run in runs])
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
