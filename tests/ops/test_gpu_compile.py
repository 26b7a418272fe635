"""What a GPU run could break, checked without a GPU: every Triton kernel compiles for
sm_80 and sm_90 through the real launchers (every estimator, dtype and autotuner tile,
both layouts of the codes, edge shapes and the project's real shapes) without register
spills, under this machine's Triton and, where `make setup` installed it beside the venv
(`gpu-triton/`), under the GPU machine's Triton version too; and the CUDA kernels in the
built extension use no stack beyond the float64 ones (accepted: double-precision math
calls; float64 is the test dtype, not a speed path). float32 without TF32 runs on FMA
units, a strict-precision path: ptxas keeps a word or two of some of those kernels on
the stack at 80-128 registers (not register pressure; the GPU machine's Triton and this
one's pick different ones), which is accepted up to FMA_STACK_LIMIT bytes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import dim_fused
from dim_fused.ops.common import library as _ops

ROOT = Path(__file__).resolve().parents[2]
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per block: A100, H100/H200
FLOAT64_STACK_LIMIT = 96  # bytes, see the module docstring
FMA_STACK_LIMIT = 16
# The GPU machine's Triton (`make setup` installs it with `pip install --target`): the
# version whose compiles the first GPU run meets.
GPU_TRITON = Path(sys.prefix) / "gpu-triton"


def _compiles(triton_path: Path | None) -> list[dict]:
    """Every kernel's resources: sm_80 and sm_90 with this machine's Triton, sm_90 (the
    GPU machine's architecture) with the one at triton_path."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["DIM_FUSED_QUIET"] = "1"
    if triton_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(triton_path), env.get("PYTHONPATH", "")])
    script = str(Path(__file__).with_name("compile_for_gpu.py"))
    runs = {
        arch: subprocess.Popen(
            [sys.executable, script, str(arch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for arch in ((90,) if triton_path else (80, 90))
    }
    kernels = []
    for arch, process in runs.items():
        out, err = process.communicate(timeout=1200)
        assert process.returncode == 0, f"sm_{arch} ({triton_path or 'this Triton'}): {err[-3000:]}"
        kernels += [{**k, "triton": str(triton_path or "this machine's")} for k in json.loads(out)]
    return kernels


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile and run them for real")
@pytest.mark.skipif(_ops.TRITON_IMPORT_ERROR is not None, reason="needs Triton")
@pytest.mark.parametrize("triton_path", [None, GPU_TRITON], ids=["this-triton", "gpu-triton"])
def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills(triton_path):
    if triton_path is not None and not (triton_path / "triton").is_dir():
        pytest.skip(f"the GPU machine's Triton is not installed in {triton_path} (make setup installs it)")
    kernels = _compiles(triton_path)
    assert {k["name"] for k in kernels} == {
        "_partials_kernel",
        "_estimate_kernel",
        "_gradient_kernel",
        "_reduce_kernel",
        "_finish_kernel",
        "_tile_gradients_kernel",
        "_score_kernel",
        "_dz2_kernel",
        "_dw2_kernel",
        "_dz1_kernel",
        "_split_kernel",
        "_first_layer_gradients_kernel",
        "_merge_kernel",
    }
    reduce = [k for k in kernels if k["name"] == "_reduce_kernel" and k["arch"] == 90]
    assert {k["constants"]["EST"] for k in reduce} == {str(i) for i in range(len(dim_fused.ESTIMATORS))}
    assert {k["signature"]["global_ptr"] for k in reduce} == {"*fp16", "*bf16", "*fp32", "*fp64"}
    assert {k["constants"]["ALLOW_TF32"] for k in reduce} == {"True", "False"}
    assert {k["constants"]["AFFINE"] for k in reduce} == {"True", "False"}
    for k in kernels:
        signature = k["signature"]
        dtype = next((signature[a] for a in ("global_ptr", "pos_ptr", "P_ptr", "f_ptr") if a in signature), None)
        what = f"{k['triton']} Triton, sm_{k['arch']} {k['name']} {dtype} {k['constants']} {k['num_warps']} warps"
        assert k["registers"] <= 255, what
        assert k["shared_bytes"] <= SHARED_LIMIT[k["arch"]], what
        fma = dtype == "*fp32" and k["constants"].get("ALLOW_TF32") == "False" and "BLOCK_M" in k["constants"]
        limit = FLOAT64_STACK_LIMIT if k["float64"] else FMA_STACK_LIMIT if fma else 0
        assert k["stack_bytes"] <= limit, f"spills: {what}"


def _cuda_extension() -> str:
    if not _ops.has_cpp_kernel("mi_bound", "CUDA"):
        pytest.skip("dim_fused._C was built without its CUDA kernels")
    if shutil.which("c++filt") is None:
        pytest.skip("needs c++filt to name the kernels")
    return dim_fused._C.__file__


def test_cuda_kernels_use_no_stack_but_float64_ones():
    usage = subprocess.run(
        [str(CUOBJDUMP), "-res-usage", _cuda_extension()], capture_output=True, text=True, check=True
    )
    mangled = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage.stdout)
    # Every kernel (26 of them) for each architecture built: TORCH_CUDA_ARCH_LIST is 8.0;9.0
    # here and 9.0 alone on the GPU machine (benchmarks/gpu_check.sh).
    architectures = set(re.findall(r"arch = (sm_\d+)", usage.stdout))
    assert architectures and len(mangled) >= 26 * len(architectures), usage.stdout[:2000]
    names = subprocess.run(
        ["c++filt"], input="\n".join(m[0] for m in mangled), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name, (_, registers, stack, shared, local) in zip(names, mangled, strict=True):
        float64 = re.search(r"<[^>]*\bdouble\b", name) is not None
        assert int(registers) <= 255 and int(shared) <= 48 * 1024, name
        assert int(local) == 0, f"{name} uses local memory"
        assert int(stack) <= (FLOAT64_STACK_LIMIT if float64 else 0), f"{name}: {stack} bytes of stack"


def test_every_triton_launch_is_guarded_by_its_tensors_device():
    """A launch with cuda:1 tensors while cuda:0 is current is an illegal access: every
    `kernel[grid](...)` in dim_fused/ops/*/triton_kernels.py runs inside `with device_of(...)`."""
    import ast

    total = 0
    for path in (ROOT / "dim_fused" / "ops").glob("*/triton_kernels.py"):
        tree = ast.parse(path.read_text())
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "device_of"
                for item in node.items
            ):
                guarded |= {id(inner) for inner in ast.walk(node)}
        launches = [
            node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
        ]
        for launch in launches:
            assert id(launch) in guarded, f"{path.name}:{launch.lineno}: a kernel launch outside device_of"
        total += len(launches)
    assert total >= 4  # mi_bound's two, dot_product_mi's two


def test_tf32_is_read_through_the_new_api(monkeypatch):
    """Once a user sets TF32 through fp32_precision, reading the legacy allow_tf32 raises:
    the launchers and the benchmarks must not."""
    from benchmarks import cases
    from dim_fused.ops.common.precision import tf32_allowed

    previous = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert cases.tf32_enabled()
        assert not tf32_allowed(torch.ones(2))  # CPU tensors never take TF32
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        assert tf32_allowed(torch.ones(2))
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert not cases.tf32_enabled() and not tf32_allowed(torch.ones(2))
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def test_tf32_none_inherits_the_global_setting(monkeypatch):
    """torch >= 2.9: a backend's "none" inherits torch.backends.fp32_precision, as cuBLAS
    reads it; the launchers and the benchmarks resolve it the same way, and none of the
    library or benchmark code reads the legacy allow_tf32."""
    from benchmarks import cases
    from dim_fused.ops.common.precision import tf32_allowed

    saved = torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    try:
        torch.backends.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "none"
        assert tf32_allowed(torch.ones(2)) and cases.tf32_enabled()
        torch.backends.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "none"
        assert not tf32_allowed(torch.ones(2)) and not cases.tf32_enabled()
    finally:
        torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    for path in [*(ROOT / "dim_fused").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        assert ".allow_tf32" not in path.read_text(), path


def test_every_peer_runs_at_one_fp32_precision():
    """The reference critic's conv1d goes through cuDNN, whose float32 default is TF32,
    while the fused paths follow the matmul setting: the benchmarks set both."""
    from benchmarks import cases

    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    for precision in cases.FP32_PRECISIONS:
        with cases.fp32_precision(precision):
            assert torch.backends.cuda.matmul.fp32_precision == precision
            assert torch.backends.cudnn.conv.fp32_precision == precision
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == saved
    with pytest.raises(ValueError, match="fp32 precision must be one of"), cases.fp32_precision("highest"):
        pass
