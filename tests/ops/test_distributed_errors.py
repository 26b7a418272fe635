"""gather_with_grad given a tensor it cannot gather on one rank only: every rank raises the
same ValueError (the ranks exchange a fixed-size descriptor first), none is left waiting
in a collective or cut off by its peer's "Connection closed", and the process group still
works afterwards. Two gloo processes on CPU."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import join_gloo

import dim_fused

WORLD = 2

# name: (rank 0's tensor, rank 1's tensor), as (shape, dtype)
CASES = {
    "dtype": (((3, 5), torch.float32), ((3, 5), torch.int8)),
    "dims": (((1,) * 9, torch.float32), ((3, 5), torch.float32)),
    "shape": (((3, 5), torch.float32), ((4, 5), torch.float32)),
}


def _rank_main(rank: int, init_file: str, results) -> None:
    join_gloo(rank, WORLD, init_file, timeout_s=60)  # a rank left waiting fails the test, not hangs it
    try:
        out = {}
        for name, per_rank in CASES.items():
            shape, dtype = per_rank[rank]
            try:
                dim_fused.distributed.gather_with_grad(torch.zeros(shape, dtype=dtype))
                out[name] = ("no error", "")
            except Exception as error:  # the type is part of what is checked
                out[name] = (type(error).__name__, str(error))
        # The exchange stays in step: a gather that agrees still works on both ranks.
        gathered = dim_fused.distributed.gather_with_grad(torch.full((2, 3), float(rank)))
        out["after"] = gathered[:, 0].tolist()
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_one_rank_with_a_bad_tensor_fails_every_rank_alike(tmp_path):
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
        per_rank = [dict(results[r]) for r in range(WORLD)]

    for name in CASES:
        assert per_rank[0][name] == per_rank[1][name], name  # the same error on both ranks
        kind, message = per_rank[0][name]
        assert kind == "ValueError", (name, kind, message)
    assert "rank 1: int8" in per_rank[0]["dtype"][1]
    assert "dims and dtypes float16, bfloat16, float32, float64, int32, int64" in per_rank[0]["dtype"][1]
    assert "rank 0: 9 dims" in per_rank[0]["dims"][1]
    assert "rank 1" not in per_rank[0]["dims"][1]  # only the rank at fault is named
    assert "rank 0: (3, 5) float32, rank 1: (4, 5) float32" in per_rank[0]["shape"][1]
    for rank in range(WORLD):
        assert per_rank[rank]["after"] == [0.0, 0.0, 1.0, 1.0]
