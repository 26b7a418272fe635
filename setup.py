"""Build dim_fused._C (the metadata is in pyproject.toml): C++ CPU kernels always, CUDA kernels whenever a CUDA build
of torch and nvcc are present (a GPU is not needed to compile them).

Environment:
  DIM_FUSED_CUDA=auto|1|0   auto (default): build CUDA kernels when possible;
                            1: require them (fail otherwise); 0: skip them.
  TORCH_CUDA_ARCH_LIST      GPU architectures (default "8.0;9.0").
  MAX_JOBS                  parallel compile jobs (ninja).
  DIM_FUSED_CPU_CAPABILITY  avx2 (default on x86-64) or default: SIMD level of the
                            CPU kernels; build where you run, like -march=native.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup


def cuda_toolkit_root() -> str | None:
    """The toolkit root, asked of nvcc itself: the nvcc on PATH may be a wrapper
    script elsewhere, which would make torch guess CUDA_HOME one level too high."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    try:
        dry = subprocess.run(
            [nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    return str(Path(top.group(1).strip()).resolve()) if top else str(Path(nvcc).resolve().parents[1])


mode = os.environ.get("DIM_FUSED_CUDA", "auto").lower()
if mode not in ("auto", "1", "0"):
    raise SystemExit(f"DIM_FUSED_CUDA must be auto, 1 or 0, got {mode!r}")
if mode != "0" and (root := cuda_toolkit_root()):
    os.environ["CUDA_HOME"] = root  # before torch.utils.cpp_extension reads it
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

can_build_cuda = torch.version.cuda is not None and CUDA_HOME is not None
if mode == "1" and not can_build_cuda:
    raise SystemExit(
        "DIM_FUSED_CUDA=1 but the CUDA kernels cannot be built: "
        f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}. "
        "Install a CUDA build of torch (pip install torch==2.14.1) and nvcc."
    )
with_cuda = can_build_cuda and mode != "0"

# One folder per op (its schema, host plan, CPU and CUDA pieces) and csrc/common.
sources = sorted(glob.glob("csrc/*/*.cpp"))
cxx_flags = ["-O3"]  # torch picks the C++ standard its headers need
# The CPU kernels use at::vec SIMD vectors; build them for AVX2 (as torch's own
# AVX2 kernels are) on x86-64 unless DIM_FUSED_CPU_CAPABILITY=default.
if platform.machine() in ("x86_64", "AMD64") and os.environ.get("DIM_FUSED_CPU_CAPABILITY", "avx2") == "avx2":
    cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
# at::parallel_for splits a CPU kernel's range over torch's OpenMP threads only in code built
# with OpenMP (ATen/Parallel-inl.h); without it every parallel_for here ran on one thread.
# Linked against libgomp.so.1, the runtime torch has already loaded: one thread pool.
link_args = []
if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
    cxx_flags += ["-fopenmp"]
    link_args += ["-fopenmp"]
if with_cuda:
    sources += sorted(glob.glob("csrc/*/*.cu"))
    # The CUDA wheels torch depends on carry headers a bare toolkit may lack.
    purelib = Path(sysconfig.get_paths()["purelib"])
    include_dirs = sorted(glob.glob(str(purelib / "nvidia" / "cu*" / "include")))
    extension = CUDAExtension(
        "dim_fused._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        define_macros=[("DIM_FUSED_WITH_CUDA", "1")],
        libraries=["dl"],  # dlopen/dlsym of oneDNN's matmul (csrc/common/gemm.cpp)
        extra_link_args=link_args,
    )
else:
    extension = CppExtension(
        "dim_fused._C", sources, extra_compile_args=cxx_flags, extra_link_args=link_args, libraries=["dl"]
    )

# The package's metadata (name, version, dependencies, extras) is in pyproject.toml.
setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
