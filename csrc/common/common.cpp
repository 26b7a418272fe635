// What the ops share on the host (the GEMMs are in gemm.cpp), and the Python module the
// extension loads as.
// Each op defines its schema with TORCH_LIBRARY_FRAGMENT in csrc/<op>/<op>.cpp;
// fake kernels and autograd formulas are registered from dim_fused/ops/<op>/.
#include "common.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <string>
#include <utility>

#include "bf16_gemm.h"

namespace dim_fused {

Estimator parse_estimator(c10::string_view name) {
  static constexpr std::array<std::pair<const char*, Estimator>, 9> kNames = {{
      {"jsd", Estimator::JSD},
      {"gan", Estimator::GAN},
      {"kl", Estimator::KL},
      {"rkl", Estimator::RKL},
      {"h2", Estimator::H2},
      {"x2", Estimator::X2},
      {"w1", Estimator::W1},
      {"dv", Estimator::DV},
      {"infonce", Estimator::InfoNCE},
  }};
  for (const auto& [text, estimator] : kNames) {
    if (name == text) return estimator;
  }
  TORCH_CHECK_VALUE(false, "dim_fused: unknown estimator '", std::string(name),
                    "'; expected one of jsd, gan, kl, rkl, h2, x2, w1, dv, infonce");
}

void check_tunable(const char* op, const char* name, int64_t value) {
  TORCH_CHECK_VALUE(value >= 1, "dim_fused.", op, ": ", name, " must be at least 1, got ", value);
}

void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType d = t.scalar_type();
  TORCH_CHECK_VALUE(d == at::kDouble || d == at::kFloat || d == at::kBFloat16 || d == at::kHalf,
                    "dim_fused.", op, ": ", name,
                    " must be float64, float32, bfloat16 or float16, got ", d);
}

TORCH_LIBRARY_FRAGMENT(dim_fused, m) {
  // The CPU GEMM provider (gemm.h): set from DIM_FUSED_CPU_GEMM by the Python layer.
  m.def("set_cpu_gemm(str provider) -> str", &set_cpu_gemm);
  m.def("cpu_gemm() -> str", &cpu_gemm);
  m.def("cpu_gemm_choices() -> str[]", &cpu_gemm_choices);
  // For the tests: a @ b in float32 as the CPU plans compute their scores (gemm_to), whether
  // this CPU runs the bf16 products on AVX512-BF16 (bf16_gemm.h), and whether this torch has
  // MKL's bf16 GEMM (gemm.h).
  m.def("cpu_gemm_to_float(Tensor a, Tensor b) -> Tensor",
        [](const at::Tensor& a, const at::Tensor& b) {
          TORCH_CHECK_VALUE(
              a.is_cpu() && b.is_cpu() && a.dim() == b.dim() && (a.dim() == 2 || a.dim() == 3) &&
                  a.size(-1) == b.size(-2) && (a.dim() == 2 || a.size(0) == b.size(0)),
              "dim_fused.cpu_gemm_to_float: need CPU (M, K) @ (K, N) or batched, got ", a.sizes(),
              " and ", b.sizes());
          return a.dim() == 2 ? gemm_to(a, b, at::kFloat) : batched_gemm_to(a, b, at::kFloat);
        });
  // For the tests: start + sum over the batch of a_i @ b_i in float32, as the CPU plans sum
  // dot_product_mi's d_global (batched_gemm_sum_into).
  m.def("cpu_gemm_sum_to_float(Tensor start, Tensor a, Tensor b) -> Tensor",
        [](const at::Tensor& start, const at::Tensor& a, const at::Tensor& b) {
          TORCH_CHECK_VALUE(start.is_cpu() && a.is_cpu() && b.is_cpu() && start.dim() == 2 &&
                                a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) &&
                                a.size(2) == b.size(1) && start.size(0) == a.size(1) &&
                                start.size(1) == b.size(2),
                            "dim_fused.cpu_gemm_sum_to_float: need CPU (M, N) + sum of (B, M, K) "
                            "@ (B, K, N), got ",
                            start.sizes(), ", ", a.sizes(), " and ", b.sizes());
          const at::Tensor out = at::empty(start.sizes(), start.options().dtype(at::kFloat));
          out.copy_(start);
          batched_gemm_sum_into(out, a, b);
          return out;
        });
  m.def("cpu_bf16_dot() -> bool", &cpu::has_bf16_dot);
  m.def("cpu_blas_bf16() -> bool", &cpu_blas_bf16);
  // For the tests: the ranges one at::parallel_for of this extension splits into (1 in a
  // build without OpenMP, where it runs on the calling thread alone; setup.py).
  m.def("cpu_parallel_ranges() -> int", [] {
    std::atomic<int64_t> ranges{0};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { ++ranges; });
    return ranges.load();
  });
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs every op's registrations.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
