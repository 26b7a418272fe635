"""Across torch.distributed ranks: gloo processes on CPU against one process on the whole
batch. ``dot_product_mi(..., across_ranks=True)`` on R ranks of B images must return, on
every rank, the single-process estimate at R * B images, with gradients whose mean over
the ranks (DDP's rule) is the single-process gradient; and so must an f-measure over
globals gathered by the caller (gather_with_grad), whose ranks' estimates average to it."""

import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import join_gloo

import dim_fused
from dim_fused import ESTIMATORS

BATCH, UNITS, SPATIAL = 3, 5, (2, 2)
# Every estimator, the official formulations of the two that couple rows, each fused
# backend that runs on CPU tensors here, and the reference (which gathers every code).
CASES = [(estimator, False) for estimator in ESTIMATORS] + [("infonce", True), ("dv", True)]


def whole_batch(world: int, seed: int):
    """Codes of R * B images, scaled so that InfoNCE's softmax is far from uniform (and
    extreme on some rows: the merge must be the stable one)."""
    generator = torch.Generator().manual_seed(seed)
    local = torch.randn(world * BATCH, UNITS, *SPATIAL, generator=generator, dtype=torch.float64)
    global_codes = torch.randn(world * BATCH, UNITS, generator=generator, dtype=torch.float64) * 2
    global_codes[0] *= 30
    return local, global_codes


def gradients(function, local, global_codes):
    local, global_codes = local.clone().requires_grad_(), global_codes.clone().requires_grad_()
    value = function(local, global_codes)
    value.backward()
    return value.detach(), local.grad, global_codes.grad


def rank_main(rank: int, world: int, init_file: str, cases: list, results) -> None:
    join_gloo(rank, world, init_file)
    try:
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        out = {}
        for seed, (estimator, official, backend) in enumerate(cases):
            local, global_codes = whole_batch(world, seed)

            def across(loc, glo, estimator=estimator, official=official, backend=backend):
                return dim_fused.dot_product_mi(
                    loc, glo, estimator=estimator, official=official, across_ranks=True, backend=backend
                )

            out[(estimator, official, backend)] = gradients(across, local[mine], global_codes[mine])
            if estimator in dim_fused.F_MEASURES and not official:  # gathered by the caller

                def gathered(loc, glo, estimator=estimator, backend=backend):
                    everyone = dim_fused.distributed.gather_with_grad(glo)
                    return dim_fused.dot_product_mi(
                        loc, everyone, estimator=estimator, positive_offset=rank * BATCH, backend=backend
                    )

                out[(estimator, "gathered", backend)] = gradients(gathered, local[mine], global_codes[mine])
        results[rank] = out
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, world: int, cases: list) -> list[dict]:
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(world, str(tmp_path / "init"), cases, results), nprocs=world, join=True)
        return [results[r] for r in range(world)]


def check_against_one_process(per_rank: list[dict], world: int, cases: list) -> None:
    for seed, (estimator, official, backend) in enumerate(cases):
        local, global_codes = whole_batch(world, seed)
        single, d_local, d_global = gradients(
            lambda loc, glo, e=estimator, o=official: dim_fused.reference.dot_product_mi(loc, glo, e, o),
            local,
            global_codes,
        )
        for mode in [official] + (["gathered"] if estimator in dim_fused.F_MEASURES and not official else []):
            key = (estimator, mode, backend)
            estimates = torch.stack([r[key][0] for r in per_rank])
            if mode == "gathered":  # each rank's share: their mean is the whole batch's
                torch.testing.assert_close(estimates.mean(), single, msg=str(key))
            else:  # the whole batch's estimate, on every rank
                torch.testing.assert_close(estimates, single.expand(world), msg=str(key))
            for rank, (_, rank_d_local, rank_d_global) in enumerate(per_rank[r][key] for r in range(world)):
                mine = slice(rank * BATCH, (rank + 1) * BATCH)
                # DDP averages gradients over ranks: each rank's share is its gradient / R.
                torch.testing.assert_close(rank_d_local / world, d_local[mine], msg=f"{key} d_local rank {rank}")
                torch.testing.assert_close(rank_d_global / world, d_global[mine], msg=f"{key} d_global rank {rank}")


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_match_one_process(tmp_path, world):
    """Every estimator, every backend on CPU tensors here: 2 processes, and 4 (CI runs both)."""
    cases = [(e, o, b) for e, o in CASES for b in dim_fused.available_backends("cpu")]
    if world == 4:  # the merge's arithmetic is the same on every backend: the fused C++ one and the oracle
        cases = [(e, o, b) for e, o, b in cases if b in ("cpu", "reference")]
    check_against_one_process(run_ranks(tmp_path, world, cases), world, cases)


def test_one_process_is_the_plain_op():
    local, global_codes = whole_batch(1, 0)
    for estimator in ("infonce", "jsd"):
        across = dim_fused.dot_product_mi(local, global_codes, estimator=estimator, across_ranks=True)
        torch.testing.assert_close(across, dim_fused.dot_product_mi(local, global_codes, estimator=estimator))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("gathered globals", "across_ranks=True takes this rank's own global codes"),
        ("estimators differ", "the ranks disagree on estimator \\(rank 0: 8, rank 1: 0\\)"),
        ("backends differ", "the ranks disagree on backend 'reference'"),
    ],
)
def test_across_ranks_refuses_on_every_rank(tmp_path, case, message):
    """Every rank raises the same clear error (none waits in a collective the others skip)."""
    if case == "backends differ" and "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_refusal, args=(str(tmp_path / "init"), case, results), nprocs=2, join=True)
        messages = [results[r] for r in range(2)]
    assert all(re.search(message, m) for m in messages), messages


def _refusal(rank: int, init_file: str, case: str, results) -> None:
    join_gloo(rank, 2, init_file, timeout_s=60)
    try:
        local, global_codes = whole_batch(2, 0)
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        options = {"estimator": "infonce", "backend": "reference"}
        if case == "gathered globals":
            local, global_codes = local[:BATCH], global_codes
        else:
            local, global_codes = local[mine], global_codes[mine]
            key, values = (
                ("estimator", ["infonce", "jsd"]) if case == "estimators differ" else ("backend", ["cpu", "reference"])
            )
            options[key] = values[rank]
        try:
            dim_fused.dot_product_mi(local, global_codes, across_ranks=True, **options)
            results[rank] = "no error"
        except ValueError as error:
            results[rank] = str(error)
    finally:
        dist.destroy_process_group()


def test_single_process_is_the_identity():
    x = torch.randn(3, 4)
    assert dim_fused.distributed.gather_with_grad(x) is x


def test_cross_rank_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.BatchNorm1d(16)
    )
    model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, 2, 2)
    expected = model(x)
    model.load_state_dict(before)
    weight = model[1].weight
    converted = dim_fused.distributed.convert_batchnorm(model)
    assert converted[1].weight is weight  # shared: an optimiser built before still holds it
    assert isinstance(converted[1], dim_fused.distributed.CrossRankBatchNorm)
    assert isinstance(converted[3], dim_fused.distributed.CrossRankBatchNorm)
    assert converted.state_dict().keys() == before.keys()
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in before.items())
    torch.testing.assert_close(converted(x), expected)
