"""What every Triton launcher shares: the device guard, torch dtypes as Triton's, and
the tiles the autotuner tries."""

import contextlib
import functools

import torch
import triton
import triton.language as tl

from . import tunables


def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU, whichever is current (a no-op for CPU tensors under
    the interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a torch floating dtype."""
    return {torch.float64: tl.float64, torch.float32: tl.float32, torch.float16: tl.float16}.get(dtype, tl.bfloat16)


# --- tiles the autotuner tries ---------------------------------------------------------
# (BLOCK_M rows x BLOCK_N columns, BLOCK_K per dot step), each checked to compile for sm_80
# and sm_90 without register spills (tests/ops/test_gpu_compile.py): tensor-core tiles for
# 16-bit inputs and TF32, smaller ones where float32 dots run on FMA units, the smallest
# for float64 and the interpreter (autotuning there would time numpy).
def tile(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)


SMALL_TILE = tile(32, 32, 32, 4, 2)
TENSOR_CORE_TILES = [tile(64, 128, 32, 8, 3), tile(128, 64, 32, 8, 3), tile(64, 64, 32, 8, 3)]
FMA_TILES = [tile(64, 64, 16, 8, 2), tile(32, 32, 32, 8, 2)]


def tuning_configs() -> list[triton.Config]:
    """Every tile under autotuning; one per dtype class with DIM_FUSED_AUTOTUNE=0 (what the
    GPU tests run); the small one under the interpreter."""
    if tunables.triton_interpreted():
        return [SMALL_TILE]
    if not tunables.autotune():
        return [TENSOR_CORE_TILES[-1], FMA_TILES[0], SMALL_TILE]
    return [*TENSOR_CORE_TILES, *FMA_TILES]


def tiles_for(dtype: torch.dtype, tf32: bool) -> list[triton.Config]:
    """The tiles for a dtype: tensor-core tiles for 16-bit inputs and TF32 (before sm_90,
    whose MMA layouts take more registers, only the 64 x 64 one), FMA tiles for float32
    without TF32, the small tile for float64."""
    if dtype == torch.float64:
        return [SMALL_TILE]
    if dtype == torch.float32 and not tf32:
        return FMA_TILES
    if triton.runtime.driver.active.get_current_target().arch < 90:
        return TENSOR_CORE_TILES[-1:]
    return TENSOR_CORE_TILES


def autotuned(key: list[str], dtype_arg: str, spills=None):
    """@triton.autotune over tuning_configs(), pruned to tiles_for() the dtype of the
    positional argument `dtype_arg` and the ALLOW_TF32 keyword; `spills(config, dtype)`
    names the tiles a kernel cannot hold in registers."""

    def prune(configs, named_args, **kwargs):
        dtype = named_args[dtype_arg].dtype
        wanted = tiles_for(dtype, bool(kwargs.get("ALLOW_TF32")))
        kept = [c for c in configs if any(c is w for w in wanted) and not (spills and spills(c, dtype))]
        return kept or [c for c in configs if any(c is w for w in wanted)] or configs

    def wrap(kernel):
        return triton.autotune(tuning_configs(), key=key, prune_configs_by={"early_config_prune": prune})(kernel)

    return wrap


@triton.jit
def relu(x):
    """max(x, 0) that keeps a NaN."""
    return tl.where((x > 0) | (x != x), x, 0.0)


def no_autocast(fn):
    """Run a launcher with autocast off: its torch ops choose their dtypes themselves (under
    torch.autocast the op's inputs already are in autocast's dtype)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
