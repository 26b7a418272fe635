"""Every bad input raises a clear error naming the argument, before any kernel runs."""

import pytest
import torch
from helpers import FUSED_CASES, require

import dim_fused

POS = torch.randn(4, 5)
NEG = torch.randn(4, 5)


@pytest.mark.parametrize(
    ("pos", "neg", "estimator", "error", "match"),
    [
        (POS, NEG, "nope", ValueError, "estimator must be one of"),
        (POS, NEG, "JSD", ValueError, "estimator must be one of"),
        (POS.tolist(), NEG, "jsd", TypeError, "pos_scores must be a torch.Tensor"),
        (torch.empty(0, 5), NEG, "jsd", ValueError, "pos_scores must be non-empty"),
        (POS, torch.empty(3, 0), "jsd", ValueError, "neg_scores must be non-empty"),
        (POS.long(), NEG, "jsd", TypeError, "pos_scores must be float16, bfloat16, float32 or float64"),
        (POS, NEG.double(), "jsd", TypeError, "neg_scores has dtype torch.float64 but pos_scores has torch.float32"),
        (POS, NEG, "infonce", ValueError, r"neg_scores must have shape \(K, \*pos_scores.shape\) = \(K, 4, 5\)"),
        (POS, torch.randn(2, 5, 4), "infonce", ValueError, "neg_scores must have shape"),
    ],
)
def test_bad_scores(pos, neg, estimator, error, match):
    for backend in dim_fused.available_backends("cpu"):
        with pytest.raises(error, match=match):
            dim_fused.mi_bound(pos, neg, estimator, backend=backend)


def test_mixed_devices():
    if not torch.cuda.is_available():
        pos = torch.randn(2, 3, device="meta")
        with pytest.raises(ValueError, match="neg_scores is on cpu but pos_scores is on meta"):
            dim_fused.mi_bound(pos, torch.randn(2, 3), "jsd")
    else:
        with pytest.raises(ValueError, match="neg_scores is on cpu but pos_scores is on cuda"):
            dim_fused.mi_bound(POS.cuda(), NEG, "jsd")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of auto, reference, cpu, cuda, triton; got 'gpu'"):
        dim_fused.mi_bound(POS, NEG, "jsd", backend="gpu")


def test_cuda_backend_on_cpu_tensors_says_why():
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        dim_fused.mi_bound(POS, NEG, "jsd", backend="cuda")


@pytest.mark.parametrize(("backend", "device"), FUSED_CASES)
def test_direct_op_calls_are_checked_too(backend, device):
    require(backend, device)
    op = torch.ops.dim_fused.mi_bound_triton if backend == "triton" else torch.ops.dim_fused.mi_bound
    if backend != "triton":
        with pytest.raises(ValueError, match="unknown estimator 'nope'"):
            op(POS.to(device), NEG.to(device), "nope")
        with pytest.raises(ValueError, match="infonce needs neg_scores of shape"):
            op(POS.to(device), NEG.to(device), "infonce")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch": 1, "locations": 4}, "batch must be at least 2"),
        ({"batch": 4, "locations": 0}, "locations must be at least 1"),
        ({"batch": 4, "locations": 2, "num_negatives": 0}, "num_negatives must be at least 1"),
        (
            {"batch": 4, "locations": 2, "generator": torch.Generator(), "device": "meta"},
            "generator is on cpu but device is meta",
        ),
    ],
)
def test_bad_permutation_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dim_fused.location_permutation(**kwargs)


@pytest.mark.parametrize(
    ("feature_map", "perm", "error", "match"),
    [
        (torch.randn(1, 3, 4), None, ValueError, r"feature_map.shape\[0\] \(the batch\) must be at least 2"),
        (torch.randn(3, 4), None, ValueError, "feature_map must have 3 to 4 dimensions"),
        (torch.randn(3, 2, 4), torch.zeros(1, 4, 3, dtype=torch.long), ValueError, "must be a permutation of range"),
        (
            torch.randn(3, 2, 4),
            torch.zeros(1, 3, 4, dtype=torch.long),
            ValueError,
            r"perm must have shape .* got \(1, 3, 4\)",
        ),
        (torch.randn(3, 2, 4), torch.zeros(1, 4, 3), TypeError, "perm must be an int32 or int64 tensor"),
        (torch.randn(3, 2, 4), [[0, 1, 2]], TypeError, "perm must be a torch.Tensor"),
    ],
)
def test_bad_local_shuffle(feature_map, perm, error, match):
    with pytest.raises(error, match=match):
        dim_fused.local_shuffle(feature_map, perm=perm)


LOCAL = torch.randn(3, 4, 5)
GLOBAL = torch.randn(3, 4)


@pytest.mark.parametrize(
    ("local", "global_codes", "kwargs", "error", "match"),
    [
        (LOCAL, torch.randn(3, 5), {}, ValueError, r"global_codes must have E = 4 columns"),
        (LOCAL, torch.randn(2, 4), {}, ValueError, r"global_codes must have at least B = 3 rows, got G = 2"),
        (
            LOCAL,
            torch.randn(5, 4),
            {"positive_offset": 3},
            ValueError,
            r"positive_offset must be in \[0, G - B\] = \[0, 2\]",
        ),
        (LOCAL, GLOBAL, {"positive_offset": -1}, ValueError, "positive_offset must be in"),
        (LOCAL, torch.randn(5, 4), {"estimator": "dv"}, ValueError, "'dv' couples all pairs .* needs G == B"),
        (LOCAL, torch.randn(5, 4), {"estimator": "infonce"}, ValueError, "'infonce' couples all pairs"),
        (
            torch.randn(1, 4, 5),
            torch.randn(1, 4),
            {},
            ValueError,
            r"local_codes.shape\[0\] \(the batch\) must be at least 2",
        ),
        (torch.randn(3, 4), GLOBAL, {}, ValueError, "local_codes must have 3 to 4 dimensions"),
        (LOCAL, torch.randn(3, 4, 1), {}, ValueError, "global_codes must have 2 dimensions"),
        (
            LOCAL,
            GLOBAL.double(),
            {},
            TypeError,
            "global_codes has dtype torch.float64 but local_codes has torch.float32",
        ),
        (LOCAL.int(), GLOBAL, {}, TypeError, "local_codes must be float16"),
        (LOCAL, GLOBAL, {"estimator": "nce"}, ValueError, "estimator must be one of"),
        (torch.empty(3, 4, 0), GLOBAL, {}, ValueError, "local_codes must be non-empty"),
    ],
)
def test_bad_dot_product_inputs(local, global_codes, kwargs, error, match):
    for backend in dim_fused.available_backends("cpu"):
        with pytest.raises(error, match=match):
            dim_fused.dot_product_mi(local, global_codes, backend=backend, **kwargs)


def test_dot_product_mixed_devices():
    with pytest.raises(ValueError, match="global_codes is on cpu but local_codes is on meta"):
        dim_fused.dot_product_mi(LOCAL.to("meta"), GLOBAL)


@pytest.mark.parametrize(("backend", "device"), FUSED_CASES)
def test_direct_dot_product_op_calls_are_checked(backend, device):
    require(backend, device)
    if backend == "triton":
        pytest.skip("the Triton op is reached through the validated functional API only")
    with pytest.raises(ValueError, match="dv and infonce need G == B"):
        torch.ops.dim_fused.dot_product_mi(LOCAL.to(device), torch.randn(4, 4, device=device), "dv", False, 0, 1 << 20)
    with pytest.raises(ValueError, match="positive_offset"):
        torch.ops.dim_fused.dot_product_mi(LOCAL.to(device), GLOBAL.to(device), "jsd", False, 1, 1 << 20)
    statistics = torch.ops.dim_fused.dot_product_mi_statistics
    with pytest.raises(ValueError, match="positive_offset"):  # gathered globals: any estimator, offset in range
        statistics(LOCAL.to(device), torch.randn(4, 4, device=device), "infonce", 2, 1 << 20)
    with pytest.raises(ValueError, match="estimator"):
        statistics(LOCAL.to(device), GLOBAL.to(device), "nce", 0, 1 << 20)


def _critic(channels=3, dim=2, hidden=(5,), last=1):
    sizes = [channels + dim, *hidden, last]
    weights = [torch.randn(o, i, 1, 1) for i, o in zip(sizes, sizes[1:], strict=False)]
    return weights, [torch.randn(w.shape[0]) for w in weights]


FMAP, CODE = torch.randn(3, 3, 2, 2), torch.randn(3, 2)


@pytest.mark.parametrize(
    ("fmap", "code", "layers", "kwargs", "error", "match"),
    [
        (torch.randn(1, 3, 4), torch.randn(1, 2), _critic(), {}, ValueError, r"feature_map.shape\[0\] \(the batch\)"),
        (FMAP, torch.randn(4, 2), _critic(), {}, ValueError, "global_code must have B = 3 rows"),
        (FMAP, CODE, _critic(dim=3), {}, ValueError, r"weights\[0\] must read 5 inputs = C \+ D"),
        (FMAP, CODE, _critic(last=2), {}, ValueError, "the last layer must have one output"),
        (FMAP, CODE, (_critic()[0][:1], _critic()[1][:1]), {}, ValueError, "at least two layers"),
        (FMAP, CODE, (_critic()[0], _critic()[1][:1]), {}, ValueError, "one entry .* per layer"),
        (FMAP, CODE, (_critic()[0], [torch.randn(4), None]), {}, ValueError, r"biases\[0\] must have 5 entries"),
        (FMAP, CODE, _critic(), {"perm": torch.zeros(1, 4, 3, dtype=torch.long)}, ValueError, "permutation"),
        (FMAP, CODE, _critic(), {"perm": torch.zeros(1, 3, 4, dtype=torch.long)}, ValueError, "perm must have shape"),
        (
            FMAP,
            CODE,
            _critic(),
            {"perm": dim_fused.location_permutation(3, 4, num_negatives=2), "num_negatives": 3},
            ValueError,
            r"perm must have shape \(num_negatives, locations, batch\) = \(3, 4, 3\)",
        ),
        (FMAP, CODE.double(), _critic(), {}, TypeError, "global_code has dtype torch.float64"),
        (FMAP, CODE, ([w.double() for w in _critic()[0]], _critic()[1]), {}, TypeError, r"weights\[0\] has dtype"),
        (FMAP, CODE, _critic(), {"estimator": "mine"}, ValueError, "estimator must be one of"),
    ],
)
def test_bad_concat_conv_inputs(fmap, code, layers, kwargs, error, match):
    for backend in dim_fused.available_backends("cpu"):
        with pytest.raises(error, match=match):
            dim_fused.concat_conv_mi(fmap, code, *layers, backend=backend, **kwargs)


def test_concat_conv_mixed_devices():
    weights, biases = _critic()
    with pytest.raises(ValueError, match="global_code is on cpu but feature_map is on meta"):
        dim_fused.concat_conv_mi(FMAP.to("meta"), CODE, weights, biases)
