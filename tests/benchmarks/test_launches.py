"""Launch budgets, counted (not timed) on the CPU: each fused op's forward+backward on its
GPU path (the Triton backend, under the interpreter here) issues at most its budget of
device launches and no host sync, at every size; and the counter counts what it says."""

import dataclasses

import pytest
import torch

import dim_fused
from benchmarks import launches
from benchmarks.configs import Config
from dim_fused.ops.common import checks

TRITON = "triton" in dim_fused.available_backends("cpu")
needs_triton = pytest.mark.skipif(not TRITON, reason="the Triton backend runs on the CPU only under the interpreter")


def _cases():
    for config in launches.SETTINGS:
        for estimator in config.estimators:
            yield pytest.param(config, estimator, id=f"{config.op}-{estimator}")


def _larger(config: Config) -> Config:
    """The same problem at other sizes (every size but K changed)."""
    grown = {"batch": config.batch + 3, "locations": 2 * config.locations}  # concat: 3 x 4 locations
    if config.op == "dot_product_mi":
        grown["units"] = config.units + 24
    if config.op == "concat_conv_mi":
        grown.update(channels=config.channels + 4, global_dim=config.global_dim + 3, hidden=(40, 24))
    return dataclasses.replace(config, **grown)


@needs_triton
@pytest.mark.parametrize(("config", "estimator"), list(_cases()))
def test_the_gpu_path_meets_its_launch_budget_without_host_syncs(config, estimator):
    counted = launches.count(_warm(launches.forward_backward(config, "triton", estimator)))
    assert counted.total <= launches.BUDGET[config.op], counted.describe()
    assert not counted.syncs, f"host syncs on the GPU path: {dict(counted.syncs)}"


@needs_triton
@pytest.mark.parametrize("config", launches.SETTINGS, ids=lambda c: c.op)
def test_counts_do_not_depend_on_sizes(config):
    estimator = config.estimators[0]
    small = launches.count(_warm(launches.forward_backward(config, "triton", estimator)))
    large = launches.count(_warm(launches.forward_backward(_larger(config), "triton", estimator)))
    assert small.kernels == large.kernels


def test_no_fused_backend_syncs_the_host():
    for config in launches.SETTINGS:
        for peer in launches.paths()[1:]:
            counted = launches.count(_warm(launches.forward_backward(config, peer, config.estimators[-1])))
            assert not counted.syncs, f"{config.op} {peer}: {dict(counted.syncs)}"


def test_the_counter_counts_launches_syncs_and_leaves_host_checks_out():
    x = torch.ones(4)

    def work():
        y = torch.zeros(4) + x  # a fill and an add
        y.view(2, 2).t().contiguous()  # views launch nothing, the copy does
        with checks.host_check():  # CPU-only: neither launch nor sync
            y.sum().item()
        return y.max().item()  # a reduction, then a sync

    counted = launches.count(work)
    assert counted.total == 4, counted.describe()
    assert dict(counted.syncs) == {"aten::_local_scalar_dense": 1}
    assert counted.host_checks == 1


@needs_triton
def test_concat_conv_mi_takes_one_launch_per_extra_negative_only_when_deterministic():
    config = next(c for c in launches.SETTINGS if c.op == "concat_conv_mi")
    two = dataclasses.replace(config, num_negatives=2)
    fast = launches.count(_warm(launches.forward_backward(two, "triton", "jsd")))
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = launches.count(_warm(launches.forward_backward(two, "triton", "jsd")))
    finally:
        torch.use_deterministic_algorithms(False)
    assert fast.kernels["triton::_dz1_kernel"] == 2 and deterministic.kernels["triton::_dz1_kernel"] == 3
    # (deterministic mode also fills fresh tensors with NaN: launches of that mode's own)
    kernels = [{k: n for k, n in c.kernels.items() if k.startswith("triton::")} for c in (fast, deterministic)]
    assert sum(kernels[1].values()) == sum(kernels[0].values()) + 1


def test_the_table_names_every_path(tmp_path, capsys):
    rows = launches.main(["--out", str(tmp_path / "launches.md")])
    assert {(r["op"], r["peer"]) for r in rows} >= {(c.op, p) for c in launches.SETTINGS for p in launches.paths()}
    assert all(r["host_us"] is None or r["host_us"] > 0 for r in rows)
    text = (tmp_path / "launches.md").read_text()
    assert text.count("\n") == len(rows) + 2 and text == capsys.readouterr().out


def _warm(fn):
    fn()  # compiles what compiles once (Triton's interpreter, torch.compile peers)
    return fn
