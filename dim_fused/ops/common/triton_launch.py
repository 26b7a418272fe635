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


# --- tiles --------------------------------------------------------------------------------
# (BLOCK_M rows x BLOCK_N columns, BLOCK_K per dot step), each checked to compile for sm_80
# and sm_90 without register spills, under this machine's Triton and the GPU machine's
# (tests/ops/test_gpu_compile.py). The first tile of each class is the one used without
# the autotuner.
def tile(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)


# float64 and the interpreter (autotuning there would time numpy).
SMALL_TILE = tile(32, 32, 32, 4, 2)
# 16-bit inputs, on tensor cores.
HALF_TILES = [tile(64, 64, 32, 8, 3), tile(64, 128, 32, 8, 3), tile(128, 64, 32, 8, 3)]
# float32 with TF32: its operands take twice a 16-bit one's registers, and 128 x 64 spills
# (Triton 3.6, sm_90).
TF32_TILES = HALF_TILES[:2]
# float32 without TF32, on FMA units: the one tile found spill-free under Triton 3.6 (of
# 32-64 x 64 x 16, 4 or 8 warps, 1 to 3 stages; 32 x 32 x 32 of 8 warps spills there).
FMA_TILES = [tile(64, 64, 16, 4, 1)]
ALL_TILES = [*HALF_TILES, *FMA_TILES, SMALL_TILE]


def tiles_for(dtype: torch.dtype, tf32: bool) -> list[triton.Config]:
    """The tiles a dtype may take (before sm_90, whose MMA layouts take more registers,
    only the first of the tensor-core tiles)."""
    if dtype == torch.float64:
        return [SMALL_TILE]
    if dtype == torch.float32 and not tf32:
        return FMA_TILES
    tiles = TF32_TILES if dtype == torch.float32 else HALF_TILES
    if triton.runtime.driver.active.get_current_target().arch < 90:
        return tiles[:1]
    return tiles


class Tuned:
    """A Triton kernel launched with one of its tiles (``kernel[grid](...)`` as usual).

    With DIM_FUSED_AUTOTUNE=1 (the default) on a GPU, through Triton's autotuner, which
    times every candidate tile by launching the kernel many times on the real buffers and
    then launches the winner: each kernel names the buffers a launch accumulates into
    (``restore_value``: saved before every timing run and restored after it) and those it
    writes only in part (``reset_to_zero``: zeroed before each timing run and before the
    real one), so the timing runs leave exactly one launch's result. With
    DIM_FUSED_AUTOTUNE=0 and under the interpreter there is no autotuner at all: the first
    candidate tile. ``last_config`` is the tile the last launch ran (for a launcher whose
    buffers depend on the tile). ``key`` names the arguments whose values decide the best tile (with the
    dtypes); ``spills(tile, dtype)`` names the tiles this kernel cannot hold in registers.
    """

    def __init__(self, kernel, *, key, dtype_arg, spills=None, restore_value=(), reset_to_zero=()):
        self.kernel = kernel
        self.key, self.dtype_arg, self.spills = list(key), dtype_arg, spills
        self.restore_value, self.reset_to_zero = list(restore_value), list(reset_to_zero)
        unknown = {*self.key, self.dtype_arg, *self.restore_value, *self.reset_to_zero} - set(kernel.arg_names)
        if unknown:
            raise ValueError(f"{kernel.__name__}: {sorted(unknown)} name no argument of the kernel")
        self.only: list[triton.Config] | None = None  # the tests' restriction to some tiles
        self.last_config: triton.Config | None = None  # the tile of the last launch (a host read, no sync)
        self._autotuner = None

    def candidates(self, named_args: dict, tf32: bool) -> list[triton.Config]:
        """The tiles for the launch's dtype that fit in registers (restricted to ``only``)."""
        dtype = named_args[self.dtype_arg].dtype
        tiles = tiles_for(dtype, tf32)
        tiles = [t for t in tiles if not (self.spills and self.spills(t, dtype))] or tiles
        if self.only is not None:
            tiles = [t for t in tiles if any(t is o for o in self.only)] or tiles
        return tiles

    def autotuner(self, configs=None, *, do_bench=None, prune: bool = True):
        """Triton's autotuner over ``configs`` (default: every tile), pruned to the launch's
        candidates unless ``prune`` is False, with this kernel's buffer declarations."""

        def early_prune(configs, named_args, **kwargs):
            wanted = self.candidates(named_args, bool(kwargs.get("ALLOW_TF32")))
            return [c for c in configs if any(c is w for w in wanted)] or configs

        return triton.autotune(
            list(configs or ALL_TILES),
            key=self.key,
            prune_configs_by={"early_config_prune": early_prune} if prune else None,
            restore_value=self.restore_value,
            reset_to_zero=self.reset_to_zero,
            do_bench=do_bench,
        )(self.kernel)

    def use_autotuner(self) -> bool:
        return tunables.autotune() and not tunables.triton_interpreted()

    def __getitem__(self, grid):
        if self.use_autotuner():
            if self._autotuner is None:
                self._autotuner = self.autotuner()

            def tuned_launch(*args, **kwargs):
                result = self._autotuner[grid](*args, **kwargs)
                self.last_config = getattr(self._autotuner, "best_config", None)  # set by its run()
                return result

            return tuned_launch

        def launch(*args, **kwargs):
            if tunables.triton_interpreted():
                config = SMALL_TILE
            else:
                named = dict(zip(self.kernel.arg_names, args, strict=False))
                config = self.candidates(named, bool(kwargs.get("ALLOW_TF32")))[0]
            self.last_config = config
            return self.kernel[grid](*args, **kwargs, **config.all_kwargs())

        return launch


def tuned(**declarations):
    """Decorator: ``Tuned(kernel, **declarations)``."""
    return lambda kernel: Tuned(kernel, **declarations)


@triton.jit
def dot(a, b, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr):
    """a @ b accumulated in ACC: on TF32 tensor cores where torch allows it, else in the
    inputs' own precision (IEEE float32 and float64; 16-bit inputs on tensor cores)."""
    if ALLOW_TF32:
        product = tl.dot(a, b, out_dtype=ACC)
    else:
        product = tl.dot(a, b, input_precision="ieee", out_dtype=ACC)
    return product


@triton.jit
def product(a_ptrs, a_step, b_ptrs, b_step, a_mask, b_mask, depth, ACC, ALLOW_TF32, BLOCK_K: tl.constexpr):
    """sum over k < depth of A[:, k] B[k, :], A's column k at a_ptrs + k * a_step (a
    (rows, 1) block of pointers) and B's row k at b_ptrs + k * b_step ((1, cols)), on B's
    dtype (A a float32 gradient, B the inputs or weights), accumulated in ACC."""
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((a_ptrs.shape[0], b_ptrs.shape[1]), dtype=ACC)
    for k0 in range(0, depth, BLOCK_K):
        k = k0 + ks
        a = tl.load(a_ptrs + k[None, :] * a_step, mask=a_mask & (k < depth)[None, :], other=0.0)
        b = tl.load(b_ptrs + k[:, None] * b_step, mask=(k < depth)[:, None] & b_mask, other=0.0)
        acc += dot(a.to(b.dtype), b, ACC, ALLOW_TF32)  # a float32 gradient meets B's dtype (as cuBLAS would)
    return acc


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
