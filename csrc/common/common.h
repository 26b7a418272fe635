// What every op's host code shares: estimator names, the accumulation dtype, the GEMMs
// (gemm.h), and the guard that keeps autocast out of a plan's ATen calls.
// Each op's own schema, checks, plan and device pieces live in csrc/<op>/.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/string_view.h>

#include "estimators.h"
#include "gemm.h"

// Profiler scopes that benchmarks/launches.py reads to count a plan's launches on the CPU:
// a device piece (what one kernel does on CUDA) counts as one launch, whatever ATen calls
// it makes on the CPU; a host check (reads data on the host, done on the CPU only: free
// there, a sync on a GPU) is no part of the GPU's path and is not counted.
#define DIM_FUSED_DEVICE_PIECE(name) RECORD_FUNCTION("dim_fused::" name, std::vector<c10::IValue>())
#define DIM_FUSED_HOST_CHECK() RECORD_FUNCTION("dim_fused::host_check", std::vector<c10::IValue>())

namespace dim_fused {

Estimator parse_estimator(c10::string_view name);

// The dtype reductions and scores accumulate in: float64 for float64 inputs, float32
// for every other floating dtype (dim_fused/ops/common/precision.py says the same).
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Held by every plan: the ATen calls inside a kernel are not autocast again (the plans
// choose their GEMMs' dtypes themselves; under torch.autocast the op's inputs already
// are in autocast's dtype).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// A tunable the Python layer passes down (dim_fused/ops/common/tunables.py reads
// them): at least 1.
void check_tunable(const char* op, const char* name, int64_t value);
// The kernels' dtypes: float64, float32, bfloat16 and float16 (an integer, bool or complex
// tensor would reach ATen calls that accept it and return a wrong-typed estimate).
void check_floating(const char* op, const char* name, const at::Tensor& t);

}  // namespace dim_fused
