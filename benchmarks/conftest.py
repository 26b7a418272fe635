"""pytest-benchmark fixtures: every peer of an op side by side in one process.

pytest benchmarks --benchmark-group-by=param:config,param:estimator,param:mode
"""

import pytest
import torch

from . import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def run_case(benchmark):
    """Checks a fused peer against the reference, then times one case with pytest-benchmark."""

    def run(config, estimator: str, peer: str, mode: str) -> None:
        reason = cases.unavailable(peer, DEVICE)
        if reason is not None:
            pytest.skip(reason)
        if peer in cases.FUSED:
            cases.check(config, peer, DEVICE, torch.float32, estimator)
        inputs = cases.make_inputs(config, DEVICE, torch.float32)
        fn = cases.step(config.op, peer, inputs, estimator, mode)
        if DEVICE.type == "cuda":

            def synced():
                fn()
                torch.cuda.synchronize()

            benchmark.pedantic(synced, warmup_rounds=3, rounds=30)
        else:
            benchmark.pedantic(fn, warmup_rounds=1, rounds=5)
        itemsize = torch.empty((), dtype=torch.float32).element_size()
        benchmark.extra_info.update(
            device=str(DEVICE), flop=cases.flops(config, mode), bytes=cases.bytes_moved(config, itemsize, mode)
        )

    return run
