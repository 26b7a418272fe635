"""Triton's autotuner times every candidate tile by launching the kernel several times on
the real buffers, then launches the winner. Every tuned kernel declares what a launch
accumulates into (restore_value) or writes in part (reset_to_zero), so that the timing
runs leave exactly one launch's result. Checked on the CPU, under the interpreter, with
Triton's own autotuner driven the way any of its versions drives it: every candidate tile
timed by three launches on the same buffers, then the winner (the first tile, then the
last) launched once more; mi_bound's kernels are not tuned (one block size)."""

import pytest
import torch
from helpers import require

import dim_fused
from dim_fused.ops.common import triton_launch, tunables
from dim_fused.ops.concat_conv_mi import triton_kernels as concat_kernels
from dim_fused.ops.dot_product_mi import triton_kernels as dot_kernels
from dim_fused.ops.mi_bound import triton_kernels as bound_kernels

MODULES = (concat_kernels, dot_kernels, bound_kernels)
TUNED = {
    f"{module.__name__.split('.')[-2]}.{name}": obj
    for module in MODULES
    for name, obj in vars(module).items()
    if isinstance(obj, triton_launch.Tuned)
}
# Every tile any dtype may take; under the interpreter each runs (float64 dots in numpy).
CANDIDATES = [triton_launch.SMALL_TILE, *triton_launch.HALF_TILES, *triton_launch.FMA_TILES]


def test_every_tuned_kernel_is_covered():
    assert sorted(TUNED) == [
        "concat_conv_mi._dw2_kernel",
        "concat_conv_mi._dz1_kernel",
        "concat_conv_mi._dz2_kernel",
        "concat_conv_mi._first_layer_gradients_kernel",
        "concat_conv_mi._score_kernel",
        "concat_conv_mi._split_kernel",
        "dot_product_mi._gradient_kernel",
        "dot_product_mi._reduce_kernel",
        "dot_product_mi._tile_gradients_kernel",
    ]


def test_declarations_name_the_kernels_arguments():
    """A tuning key or a buffer that names no argument would be silently dropped (a tile
    tuned for one batch reused for another): refused when the kernel is defined."""
    kernel = concat_kernels._dz1_kernel.kernel
    assert "images" in concat_kernels._dz1_kernel.key
    for wrong in ({"key": ["rows"]}, {"key": [], "restore_value": ["dz1_ptr"]}, {"key": [], "reset_to_zero": ["x"]}):
        with pytest.raises(ValueError, match="name no argument"):
            triton_launch.Tuned(kernel, dtype_arg="P_ptr", **wrong)


def test_without_autotuning_the_autotuner_is_bypassed(monkeypatch):
    monkeypatch.setattr(tunables, "triton_interpreted", lambda: False)
    monkeypatch.setenv("DIM_FUSED_AUTOTUNE", "0")
    assert not any(t.use_autotuner() for t in TUNED.values())
    monkeypatch.setenv("DIM_FUSED_AUTOTUNE", "1")
    assert all(t.use_autotuner() for t in TUNED.values())


def _problems():
    """concat_conv_mi (two hidden layers, K = 2: dz1's negatives launch adds into the dP and
    dQ its positives' launch stored; sizes across every tile's edges) and dot_product_mi (both layouts), float64."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(shape, generator=generator, dtype=torch.float64) * scale

    sizes = [5 + 3, 40, 70, 1]
    weights = [randn(o, i, scale=i**-0.5) for i, o in zip(sizes, sizes[1:], strict=False)]
    biases = [randn(o, scale=0.1) for o in sizes[1:]]
    perm = dim_fused.location_permutation(3, 21, num_negatives=2, generator=generator)
    fmap, code = randn(3, 5, 3, 7), randn(3, 3)

    def concat():
        return dim_fused.concat_conv_mi(fmap, code, weights, biases, perm=perm, estimator="infonce", backend="triton")

    local, global_codes = randn(5, 40, 3, 7), randn(5, 40)
    channels_last = local.contiguous(memory_format=torch.channels_last)
    return {
        "concat": (concat, [fmap, code, *weights, *biases]),
        **{
            f"dot-{estimator}-{layout}": (
                lambda e=estimator, c=codes: dim_fused.dot_product_mi(c, global_codes, estimator=e, backend="triton"),
                [codes, global_codes],
            )
            for estimator in ("jsd", "infonce")
            for layout, codes in (("contiguous", local), ("channels-last", channels_last))
        },
    }


def _value_and_grads(fn, leaves):
    for leaf in leaves:
        leaf.requires_grad_(True)
        leaf.grad = None
    out = fn()
    grads = torch.autograd.grad(out, leaves)
    return [out.detach(), *grads]


@pytest.mark.parametrize("winner", ["first", "last"])
def test_autotuning_leaves_the_result_of_one_launch(monkeypatch, winner):
    require("triton", "cpu")
    problems = _problems()
    plain = {name: _value_and_grads(fn, leaves) for name, (fn, leaves) in problems.items()}

    def three_launches(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        three_launches.calls += 1
        time = three_launches.calls if winner == "last" else -three_launches.calls
        return [-time, -time, -time]  # the last (or first) tile timed is the fastest

    three_launches.calls = 0
    for tuned in TUNED.values():
        monkeypatch.setattr(tuned, "use_autotuner", lambda: True)
        monkeypatch.setattr(tuned, "_autotuner", tuned.autotuner(CANDIDATES, do_bench=three_launches, prune=False))
    for name, (fn, leaves) in problems.items():
        tuned_result = _value_and_grads(fn, leaves)
        for what, got, want in zip(["value", *range(len(leaves))], tuned_result, plain[name], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{name} {what} ({winner} tile wins)")
    assert three_launches.calls >= len(CANDIDATES) * len(TUNED)  # every tuned kernel timed every tile
