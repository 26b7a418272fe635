"""concat_conv_mi: each backend against the seed's formulation, the reference,
torch.compile(reference) and the op's bare GEMMs."""

import pytest

from . import cases, configs


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("peer", cases.PEERS["concat_conv_mi"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("config", configs.CONCAT_CONV, ids=lambda c: c.name)
def test_concat_conv_mi(run_case, config, estimator, peer, mode):
    run_case(config, estimator, peer, mode)
