"""dot_product_mi: each backend against the official formulation, the reference,
torch.compile(reference) and the op's bare GEMMs. The scale sweep lives in the
report (python -m benchmarks.report), which records out-of-memory peers."""

import pytest

from . import cases, configs


@pytest.mark.parametrize("mode", cases.MODES)
@pytest.mark.parametrize("peer", cases.PEERS["dot_product_mi"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("config", [c for c in configs.DOT_PRODUCT if not c.series], ids=lambda c: c.name)
def test_dot_product_mi(run_case, config, estimator, peer, mode):
    run_case(config, estimator, peer, mode)
