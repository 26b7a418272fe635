"""pytest-benchmark suite for mi_bound: every peer side by side in one process.

pytest benchmarks/test_mi_bound.py --benchmark-group-by=param:config,param:estimator,param:mode
"""

import pytest
import torch

from . import cases, configs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("peer", cases.PEERS)
@pytest.mark.parametrize("estimator", configs.MI_BOUND_ESTIMATORS)
@pytest.mark.parametrize("config", configs.MI_BOUND, ids=lambda c: c.name)
def test_mi_bound(benchmark, config, estimator, peer, mode):
    reason = cases.unavailable(peer, DEVICE)
    if reason is not None:
        pytest.skip(reason)
    pos, neg = cases.mi_bound_inputs(config, DEVICE, torch.float32)
    run = cases.step(cases.mi_bound_fn(peer), (pos, neg), mode, estimator)
    if DEVICE.type == "cuda":

        def run_synced():
            run()
            torch.cuda.synchronize()

        benchmark.pedantic(run_synced, warmup_rounds=3, rounds=50)
    else:
        benchmark(run)
    benchmark.extra_info.update(
        device=str(DEVICE), bytes=cases.mi_bound_bytes(config, pos.element_size(), mode), num_scores=config.num_scores
    )
