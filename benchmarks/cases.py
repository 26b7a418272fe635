"""What each benchmark row runs: the inputs of a config, each peer's callable,
the FLOP and byte counts its throughput is quoted against, why a peer cannot run
here, and the correctness check a fused peer must pass before it is timed.
Shared by the pytest-benchmark suite and the report."""

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import torch

import dim_fused
from dim_fused import official, reference

from .configs import Config

FUSED = ("cpu", "cuda", "triton")
MODES = ("forward", "forward+backward")
# "compiled": torch.compile(reference); "compiled-max": the same with mode="max-autotune" (a
# peer gets its best shot: the summary compares with the faster of the two).
# "reference-fp32": in a half-precision run, the reference eager on the same inputs in float32
# (what a user who leaves fp32 for bf16 compares with); skipped in an fp32 run.
PEERS = {
    "mi_bound": ("reference", "compiled", *FUSED),
    # "seed": the seed's tile-and-concat formulation; "matmuls": the op's unavoidable GEMMs.
    "concat_conv_mi": ("seed", "reference", "reference-fp32", "compiled", "compiled-max", "matmuls", *FUSED),
    # "matmuls": only the op's unavoidable GEMMs (scores; and both gradients), no estimator at all.
    "dot_product_mi": ("official", "reference", "reference-fp32", "compiled", "compiled-max", "matmuls", *FUSED),
}
COMPILED = ("compiled", "compiled-max")


def _concat_conv(call: Callable) -> Callable:
    """A concat-and-conv peer as a function of the flat inputs (feature map, global code,
    perm, weights..., biases...) and the estimator."""

    def fn(feature_map, global_code, perm, *rest):
        *params, estimator = rest
        half = len(params) // 2
        return call(feature_map, global_code, list(params[:half]), list(params[half:]), perm, estimator)

    return fn


REFERENCE_FN = {
    "mi_bound": reference.mi_bound,
    "dot_product_mi": reference.dot_product_mi,
    "concat_conv_mi": _concat_conv(reference.concat_conv_mi),
}


class WrongResult(AssertionError):
    """A fused peer disagreed with the float64 reference: it is not timed."""


def unavailable(peer: str, device: torch.device) -> str | None:
    """Why `peer` cannot be timed on `device`, or None."""
    if peer not in FUSED:
        return None
    if peer == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    try:
        dim_fused.resolve_backend(peer, device)
    except RuntimeError as why:
        return str(why)
    return None


def ungraphable(peer: str, device: torch.device) -> str | None:
    """Why `peer`'s step cannot be timed captured as a CUDA graph on `device`, or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if peer in COMPILED:
        return "torch.compile's own graph mode is mode='reduce-overhead'; not captured by hand"
    return None


def make_inputs(config: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs (never zeros) at scales where every estimator is finite."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * scale).to(dtype)

    if config.op == "mi_bound":
        return randn(config.batch, config.locations) + 1.0, randn(config.num_negatives, config.batch, config.locations)
    if config.op == "concat_conv_mi":
        side = round(config.locations**0.5)
        feature_map = torch.relu(randn(config.batch, config.channels, side, config.locations // side))
        sizes = [config.channels + config.global_dim, *config.hidden, 1]
        weights = [randn(o, i, 1, 1, scale=i**-0.5) for i, o in zip(sizes, sizes[1:], strict=False)]
        biases = [randn(o, scale=0.1) for o in sizes[1:]]
        perm = dim_fused.location_permutation(
            config.batch, config.locations, num_negatives=config.num_negatives, device=device
        )
        return (feature_map, torch.sigmoid(randn(config.batch, config.global_dim)), perm, *weights, *biases)
    scale = config.units**-0.5  # unit-variance scores
    return randn(config.batch, config.units, config.locations, scale=scale**0.5), randn(
        config.batch, config.units, scale=scale**0.5
    )


@functools.cache
def _compiled(op: str, mode: str | None = None) -> Callable:  # one compiled function per op and mode
    # Shapes become dynamic after the first recompile; enough cache entries that a
    # sweep never silently falls back to eager.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    return torch.compile(REFERENCE_FN[op], mode=mode)


def _dot_product_matmuls(local: torch.Tensor, global_codes: torch.Tensor, backward: bool) -> Callable[[], object]:
    """The GEMMs no encode-and-dot implementation avoids: the scores, and in backward
    the two gradient GEMMs."""
    batch, units, _ = local.shape

    def run():
        scores = torch.bmm(global_codes.expand(batch, *global_codes.shape), local)
        if backward:
            torch.addbmm(global_codes, scores, local.transpose(1, 2), beta=0)
            torch.bmm(global_codes.t().expand(batch, units, global_codes.shape[0]), scores)
        return scores

    return run


def _concat_conv_matmuls(feature_map, global_code, perm, *params, backward: bool) -> Callable[[], object]:
    """The GEMMs no concat-and-conv implementation avoids: the first layer's local half
    over the B * L locations, every later layer over all (1 + K) * B * L pairs, and in
    backward each one's two gradient GEMMs."""
    weights = [w.reshape(w.shape[0], -1) for w in params[: len(params) // 2]]
    batch, channels = feature_map.shape[:2]
    rows = feature_map.reshape(batch, channels, -1).transpose(1, 2).reshape(-1, channels).contiguous()
    w1f = weights[0][:, :channels]
    pairs = torch.rand(rows.shape[0] * (perm.shape[0] + 1), w1f.shape[0], device=rows.device, dtype=rows.dtype)

    def run():
        first = rows @ w1f.t()
        hidden = [pairs]
        for w in weights[1:]:
            hidden.append(hidden[-1] @ w.t())
        if backward:
            grad = hidden[-1]
            for w, x in zip(reversed(weights[1:]), reversed(hidden[:-1]), strict=True):
                grad.t() @ x
                grad = grad @ w
            first.t() @ rows
            first @ w1f
        return hidden[-1]

    return run


def peer_fn(op: str, peer: str) -> Callable:
    """The peer as a function of (*inputs, estimator) returning the estimate."""
    if peer in ("reference", "reference-fp32"):  # step() hands the latter float32 inputs
        return REFERENCE_FN[op]
    if peer == "compiled":
        return _compiled(op)
    if peer == "compiled-max":
        return _compiled(op, "max-autotune")
    if peer == "official":
        return official.dot_product_mi
    if peer == "seed":
        return _concat_conv(official.seed_local_mi)
    if op == "mi_bound":
        return functools.partial(dim_fused.mi_bound, backend=peer)
    if op == "concat_conv_mi":
        return _concat_conv(
            lambda fmap, code, weights, biases, perm, estimator: dim_fused.concat_conv_mi(
                fmap, code, weights, biases, perm=perm, estimator=estimator, backend=peer
            )
        )
    return lambda local, global_codes, estimator: dim_fused.dot_product_mi(
        local, global_codes, estimator=estimator, backend=peer
    )


def _half(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)


def differentiable(inputs: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Leaf copies of the inputs (floating ones requiring grad), and those that do."""
    leaves = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
    return leaves, [x for x in leaves if x.requires_grad]


def step(op: str, peer: str, inputs: tuple[torch.Tensor, ...], estimator: str, mode: str) -> Callable[[], object]:
    """A closure running one forward (and backward) pass of `peer`."""
    backward = mode == "forward+backward"
    if peer == "matmuls":
        matmuls = _concat_conv_matmuls if op == "concat_conv_mi" else _dot_product_matmuls
        return matmuls(*inputs, backward=backward)
    if peer == "reference-fp32":  # converted once, outside the timed step
        inputs = tuple(x.float() if _half(x) else x for x in inputs)
    fn = peer_fn(op, peer)
    if not backward:
        return lambda: fn(*inputs, estimator)
    leaves, wrt = differentiable(inputs)
    return lambda: torch.autograd.grad(fn(*leaves, estimator), wrt)


def flops(config: Config, mode: str) -> int:
    """Useful floating-point operations: the forward GEMMs (dot: the scores; concat:
    the first layer's local half and every later layer over all pairs); backward
    doubles them (two gradient GEMMs each)."""
    if config.op == "mi_bound":
        return 0
    if config.op == "dot_product_mi":
        forward = 2 * config.batch * config.batch * config.locations * config.units
    else:
        rows = config.batch * config.locations
        widths = [*config.hidden, 1]
        forward = 2 * rows * config.channels * widths[0]
        forward += 2 * rows * (1 + config.num_negatives) * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    return forward * (1 if mode == "forward" else 3)


def bytes_moved(config: Config, itemsize: int, mode: str) -> int:
    """Bytes a pass must move at least: read the inputs; backward reads them again
    and writes a gradient of each."""
    if config.op == "mi_bound":
        elements = config.batch * config.locations * (1 + config.num_negatives)
    elif config.op == "dot_product_mi":
        elements = config.batch * config.units * (config.locations + 1)
    else:
        widths = [config.channels + config.global_dim, *config.hidden, 1]
        elements = config.batch * (config.channels * config.locations + config.global_dim)
        elements += sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    return elements * itemsize * (1 if mode == "forward" else 3)


FP32_PRECISIONS = ("ieee", "tf32")


def _resolved(precision: str) -> str:
    """A backend's fp32_precision, where "none" inherits torch.backends.fp32_precision (as
    cuBLAS and cuDNN read it)."""
    return torch.backends.fp32_precision if precision == "none" else precision


def tf32_enabled() -> bool:
    """Whether float32 matmuls may use TF32: torch's setting through the fp32_precision API
    only (the legacy allow_tf32 raises once a user set the new one)."""
    return _resolved(torch.backends.cuda.matmul.fp32_precision) == "tf32"


@contextlib.contextmanager
def fp32_precision(precision: str):
    """Every peer at one float32 precision: cuBLAS matmuls (the fused paths' GEMMs and
    Triton's dots follow it) and cuDNN convolutions (the reference critic's conv1d, whose
    default is TF32) both set to "ieee" or "tf32" for the block, then restored."""
    if precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32 precision must be one of {FP32_PRECISIONS}, got {precision!r}")
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = precision
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def check(config: Config, peer: str, device: torch.device, dtype: torch.dtype, estimator: str) -> None:
    """Value and gradients of `peer` against the float64 reference on the config's
    problem with the batch capped at 8 (same L, E, K), so the oracle always fits."""
    small = dataclasses.replace(config, batch=min(config.batch, 8))
    inputs = make_inputs(small, device, dtype, seed=1)
    exact, exact_wrt = differentiable(tuple(x.cpu().double() if x.is_floating_point() else x.cpu() for x in inputs))
    oracle = REFERENCE_FN[config.op](*exact, estimator)
    oracle_grads = torch.autograd.grad(oracle, exact_wrt)
    leaves, wrt = differentiable(inputs)
    out = peer_fn(config.op, peer)(*leaves, estimator)
    grads = torch.autograd.grad(out, wrt)
    tf32 = device.type == "cuda" and dtype == torch.float32 and tf32_enabled()
    tolerance = {torch.float64: 1e-9, torch.float32: 5e-3 if tf32 else 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
    named_grads = [(f"grad {i}", g, o) for i, (g, o) in enumerate(zip(grads, oracle_grads, strict=True))]
    for what, got, want in [("value", out, oracle), *named_grads]:
        limit = tolerance[dtype] * max(1.0, want.abs().max().item())
        error = (got.detach().double().cpu() - want).abs().max().item()
        if not error <= limit:
            raise WrongResult(f"{peer} {config.op} {estimator}: {what} is off by {error:.3g} (limit {limit:.3g})")
