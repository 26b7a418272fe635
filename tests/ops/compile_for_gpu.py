"""Compile every Triton kernel for a GPU architecture on a machine without one, through
the real launchers: `python tests/ops/compile_for_gpu.py ARCH` (80, 90) prints a JSON
list, one entry per compiled kernel with its resources (sm_90, what the project's GPUs
are, gets the whole cover; sm_80 the dtypes and tiles).

Triton compiles for a target without a device when its driver reports that target: a
stand-in driver does, every kernel launch becomes a compile-only warmup, and the
autotuner compiles each of its configurations instead of timing them. Run it without
TRITON_INTERPRET (the interpreter compiles nothing)."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


class StandInDriver:
    """What JITFunction.run asks of a driver before it compiles."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def is_active(self) -> bool:
        return True


compiled: list = []


def install(arch: int) -> None:
    driver.set_active(StandInDriver(arch))
    launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    def every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        for config in self.prune_configs(kwargs):
            self.fn.run(*args, **kwargs, **config.all_kwargs())
        self.nargs = None

    JITFunction.run = compile_only
    Autotuner.run = every_config


def resources(kernel) -> dict:
    """Registers and stack (spills and local arrays) from the cubin, shared memory from Triton."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True, check=True)
    registers = int(re.search(r"REG:(\d+)", usage.stdout).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage.stdout).group(1))
    signature = kernel.src.signature if hasattr(kernel.src, "signature") else {}
    names = list(signature)
    constants = {
        names[path[0]] if isinstance(path, tuple) else str(path): str(value)
        for path, value in getattr(kernel.src, "constants", {}).items()
    }
    return {
        "name": kernel.metadata.name,
        "registers": registers,
        "stack_bytes": stack,
        "shared_bytes": kernel.metadata.shared,
        "num_warps": kernel.metadata.num_warps,
        "float64": any("fp64" in str(t) for t in signature.values()),
        "signature": {k: str(v) for k, v in signature.items()},
        "constants": {k: v for k, v in constants.items() if k.isupper()},
    }


ESTIMATORS = ("jsd", "gan", "kl", "rkl", "h2", "x2", "w1", "dv", "infonce")


def launch_everything(full: bool) -> None:
    """Drive the launchers over a cover of what they can produce: every estimator's
    epilogue, every dtype (float32 with and without TF32, float16, bfloat16, float64) in
    every tile the autotuner may pick for it, both layouts of the codes, and edge shapes.
    `full=False` (the second architecture) covers the dtypes and tiles only."""
    import dim_fused
    from dim_fused.ops.common import triton_launch as tiles
    from dim_fused.ops.concat_conv_mi import triton_kernels as concat_conv_mi
    from dim_fused.ops.dot_product_mi import triton_kernels as dot_product_mi
    from dim_fused.ops.mi_bound import triton_kernels as mi_bound

    tile = 1 << 24  # scores per backward tile, the GPU default

    def scores(estimator, dtype, shape=(33, 17), k=3):
        pos = torch.randn(shape, dtype=dtype)
        neg = torch.randn((k, *shape) if estimator == "infonce" else shape, dtype=dtype)
        _, normaliser = mi_bound.forward(pos, neg, estimator)
        for kept in (normaliser, None):  # the forward's normaliser, and DV's recomputed one
            mi_bound.backward(torch.tensor(1.0, dtype=dtype), pos, neg, kept, estimator)

    def dot(estimator, dtype, tf32, configs, rows_layout=True, shape=(6, 40, 7, 6, 0)):
        batch, units, locations, num_globals, offset = shape
        for kernel in (
            dot_product_mi._reduce_kernel,
            dot_product_mi._gradient_kernel,
            dot_product_mi._tile_gradients_kernel,
        ):
            kernel.only = configs  # then pruned for the dtype and architecture as in a real run
        dot_product_mi.tf32_allowed = lambda tensor: tf32 and dtype == torch.float32
        local = torch.randn(batch, units, locations, dtype=dtype)
        if rows_layout:  # channels-last: units innermost
            local = local.transpose(1, 2).contiguous().transpose(1, 2)
        global_codes = torch.randn(num_globals, units, dtype=dtype)
        _, stats, _ = dot_product_mi.forward(local, global_codes, estimator, False, offset, tile)
        dot_product_mi.backward(torch.tensor(1.0), local, global_codes, stats, estimator, False, offset, tile)

    def concat(dtype, tf32, configs, shape=(5, 6, 9, 4, (40, 24), 2), b2=True):
        batch, channels, locations, dim, hidden, k = shape
        for kernel in (
            concat_conv_mi._split_kernel,
            concat_conv_mi._score_kernel,
            concat_conv_mi._dz2_kernel,
            concat_conv_mi._dw2_kernel,
            concat_conv_mi._dz1_kernel,
            concat_conv_mi._first_layer_gradients_kernel,
        ):
            kernel.only = configs
        concat_conv_mi.tf32_allowed = lambda tensor: tf32 and dtype == torch.float32
        sizes = [channels + dim, *hidden, 1]
        weights = [torch.randn(o, i, dtype=dtype) for i, o in zip(sizes, sizes[1:], strict=False)]
        biases = [torch.randn(o, dtype=dtype) for o in sizes[1:]]
        if not b2:
            biases[1] = torch.empty(0, dtype=dtype)
        fmap, code = torch.randn(batch, channels, locations, dtype=dtype), torch.randn(batch, dim, dtype=dtype)
        perm = dim_fused.location_permutation(batch, locations, num_negatives=k)
        _, scores, kept = concat_conv_mi.forward(fmap, code, weights, biases, perm, "jsd", False, False, 1)
        concat_conv_mi.backward(torch.tensor(1.0), fmap, code, weights, biases, perm, scores, kept, "jsd", True, 1)

    small = [tiles.SMALL_TILE]
    classes = [  # (dtype, TF32, the tiles the autotuner may pick for it)
        (torch.bfloat16, False, tiles.HALF_TILES),
        (torch.float16, False, tiles.HALF_TILES),
        (torch.float32, True, tiles.TF32_TILES),
        (torch.float32, False, tiles.FMA_TILES),
        (torch.float64, False, small),
    ]
    for i, (dtype, tf32, family) in enumerate(classes):
        dot("infonce", dtype, tf32, family, rows_layout=i % 2 == 0)  # the heaviest epilogue, in every tile
        scores("infonce" if i % 2 else "jsd", dtype)
        concat(dtype, tf32, family, b2=i % 2 == 0)
    if not full:
        return
    for i, estimator in enumerate(ESTIMATORS):  # every epilogue, both layouts in turn
        dot(estimator, torch.bfloat16, False, tiles.HALF_TILES[:1], rows_layout=i % 2 == 0)
        scores(estimator, torch.float32)
    dot("jsd", torch.bfloat16, False, tiles.HALF_TILES, rows_layout=False)  # gathered columns
    # Edge shapes the launchers produce: one location, B = G = 2, sizes multiples of 16, an offset, K = 1.
    for shape in ((2, 3, 1, 2, 0), (4, 32, 16, 4, 0), (3, 5, 9, 7, 2)):
        dot("jsd", torch.float32, False, tiles.FMA_TILES[-1:], rows_layout=False, shape=shape)
    scores("infonce", torch.float32, shape=(5,), k=1)
    concat(torch.bfloat16, False, tiles.HALF_TILES[:1], shape=(2, 3, 1, 2, (17, 9), 1))
    # The project's real shapes, whose sizes divisible by 16 Triton specialises on (aligned,
    # vectorised accesses; Hopper's wgmma): the CIFAR settings, STL-10's and the large one.
    real = [(torch.bfloat16, False, tiles.HALF_TILES), (torch.float32, True, tiles.TF32_TILES)]
    real.append((torch.float32, False, tiles.FMA_TILES))
    for dtype, tf32, family in real:
        dot("infonce", dtype, tf32, family, shape=(64, 2048, 64, 64, 0))  # CIFAR: B 64, E 2048, 8 x 8
        dot("jsd", dtype, tf32, family, rows_layout=False, shape=(256, 1024, 256, 256, 0))  # large
        concat(dtype, tf32, family, shape=(64, 128, 64, 64, (512, 512), 1))  # CIFAR
        concat(dtype, tf32, family, shape=(64, 384, 225, 64, (512, 512), 1))  # STL-10: 15 x 15
        concat(dtype, tf32, family, shape=(256, 256, 256, 128, (512, 512), 1))  # large


def main() -> None:
    arch = int(sys.argv[1])
    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    install(arch)
    launch_everything(full=arch == 90)
    json.dump([{**resources(k), "arch": arch} for k in compiled], sys.stdout)


if __name__ == "__main__":
    main()
