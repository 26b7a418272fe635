"""gather_with_grad: two gloo processes on CPU against one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dim_fused

BATCH, UNITS, LOCATIONS, WORLD = 3, 5, 4, 2


def whole_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    local = torch.randn(WORLD * BATCH, UNITS, LOCATIONS, generator=generator, dtype=torch.float64)
    global_codes = torch.randn(WORLD * BATCH, UNITS, generator=generator, dtype=torch.float64)
    return local, global_codes


def rank_main(rank: int, init_file: str, estimator: str, results) -> None:
    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local, global_codes = whole_batch()
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        local = local[mine].clone().requires_grad_()
        global_codes = global_codes[mine].clone().requires_grad_()
        everyone = dim_fused.distributed.gather_with_grad(global_codes)
        estimate = dim_fused.dot_product_mi(
            local, everyone, estimator=estimator, positive_offset=rank * BATCH, backend="cpu"
        )
        estimate.backward()
        results[rank] = (estimate.detach(), local.grad, global_codes.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator", ["jsd", "x2"])
def test_two_ranks_match_one_process(tmp_path, estimator):
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(str(tmp_path / "init"), estimator, results), nprocs=WORLD, join=True)
        per_rank = [results[r] for r in range(WORLD)]

    local, global_codes = whole_batch()
    local.requires_grad_()
    global_codes.requires_grad_()
    single = dim_fused.reference.dot_product_mi(local, global_codes, estimator)
    single.backward()

    mean_estimate = sum(r[0] for r in per_rank) / WORLD
    torch.testing.assert_close(mean_estimate, single.detach())
    for rank, (_, d_local, d_global) in enumerate(per_rank):
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        # DDP averages gradients over ranks: each rank's share is its gradient / WORLD.
        torch.testing.assert_close(d_local / WORLD, local.grad[mine])
        torch.testing.assert_close(d_global / WORLD, global_codes.grad[mine])


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
