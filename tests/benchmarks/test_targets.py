"""benchmarks/targets.py: each GPU target is met, not met or not measured, from the rows the
report and train_speed write (synthetic rows here: no GPU has produced real ones)."""

import json

from benchmarks import targets


def _row(op, config, estimator, peer, ms, **extra):
    return {
        "op": op,
        "config": config,
        "estimator": estimator,
        "mode": "forward+backward",
        "peer": peer,
        "status": "ok",
        "median_ms": ms,
        **extra,
    }


def _report(dtype, rows, graphs=False, **meta):
    return {"meta": {"dtype": dtype, "cuda_graphs": graphs, **meta}, "rows": rows}


def _write(folder, name, data):
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(data))


def _verdicts(folder):
    return {o.target: o for o in targets.evaluate(list(targets.results([folder])))}


def test_each_target_is_met_not_met_or_not_measured(tmp_path):
    concat = [
        _row("concat_conv_mi", "cifar", "jsd", "reference", 4.0),
        _row("concat_conv_mi", "cifar", "jsd", "cuda", 1.5),
        _row("concat_conv_mi", "cifar", "jsd", "triton", 0.9),  # the faster fused backend counts
        _row("concat_conv_mi", "cifar", "infonce", "reference", 4.0),
        _row("concat_conv_mi", "cifar", "infonce", "triton", 1.2),  # 3.3x: the worst estimator decides
        _row("concat_conv_mi", "cifar", "infonce", "cpu", 0.1, mode="forward"),  # another pass: not read
    ]
    dot = [
        _row("dot_product_mi", "cifar", "infonce", "official", 10.0),
        _row("dot_product_mi", "cifar", "infonce", "reference", 3.0),
        _row("dot_product_mi", "cifar", "infonce", "triton", 0.5),
        _row("dot_product_mi", "cifar", "jsd", "reference", 100.0),  # not InfoNCE: not read
    ]
    large = [_row("concat_conv_mi", "large", "jsd", "triton", 1.0, gemm_fraction=0.6)]
    _write(tmp_path, "headline-bf16", _report("bfloat16", concat + dot + large))
    _write(tmp_path, "tf32", _report("float32", concat, fp32_precision="tf32"))  # not the IEEE run
    graphed = [
        _row("concat_conv_mi", "cifar", "jsd", "reference", 1.0),
        _row("concat_conv_mi", "cifar", "jsd", "cuda", 0.5),
    ]
    _write(tmp_path, "graphs-bf16", _report("bfloat16", graphed, graphs=True))
    steps = [
        {"critic": "dot", "backend": "reference", "cuda_graphs": True, "steps_per_s": 100.0},
        {"critic": "dot", "backend": "triton", "cuda_graphs": True, "steps_per_s": 150.0},
        {"critic": "dot", "backend": "cuda", "cuda_graphs": False, "steps_per_s": 900.0},  # eager: not read
    ]
    _write(tmp_path, "train-speed", {"command": "x", "rows": steps})

    found = _verdicts(tmp_path)
    bf16 = "concat_conv_mi CIFAR bfloat16: fused vs reference eager"
    assert found[bf16].met is False and found[bf16].found.startswith("3.33x (triton, infonce)")
    both = found["concat_conv_mi CIFAR bfloat16: fused vs reference, both as CUDA graphs"]
    assert both.met is True and both.found.startswith("2.00x (cuda, jsd)")
    assert found["dot_product_mi InfoNCE CIFAR bfloat16: fused vs the official formulation"].met is True  # 20x
    assert found["dot_product_mi InfoNCE CIFAR bfloat16: fused vs reference eager"].met is True  # 6x
    assert found["concat_conv_mi CIFAR float32: fused vs reference eager"].met is None  # only TF32 ran
    assert found["concat_conv_mi large bf16: fused rate vs the bf16 GEMM rate of the run"].met is True
    training = found["DIM training step, dot critic: fused backend vs reference, both as CUDA graphs"]
    assert training.met is False and training.found.startswith("1.50x (triton)")
    assert found["DIM training step, concat critic: fused backend vs reference, both as CUDA graphs"].met is None


def test_the_table_names_its_sources_and_nothing_found_is_not_measured(tmp_path, capsys):
    assert targets.main([str(tmp_path), "--out", str(tmp_path / "targets.md")]) == 0
    table = (tmp_path / "targets.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "no results.json found" in table
    assert table.count("not measured") == len(targets.evaluate([]))
    assert "**not met**" not in table
