"""mi_bound: each backend against the reference and torch.compile(reference)."""

import pytest

from . import cases, configs


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("peer", cases.PEERS["mi_bound"])
@pytest.mark.parametrize("estimator", configs.MI_BOUND_ESTIMATORS)
@pytest.mark.parametrize("config", configs.MI_BOUND, ids=lambda c: c.name)
def test_mi_bound(run_case, config, estimator, peer, mode):
    run_case(config, estimator, peer, mode)
