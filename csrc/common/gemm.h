// The matrix products of the host plans. On a CPU they run on the machine's fastest fp32 /
// bf16 GEMM that ships inside torch: oneDNN's matmul (what ATen itself takes for bf16
// matmuls; on some x86-64 CPUs MKL's fp32 sgemm runs at under half its rate), found at run
// time, in IEEE fp32 (no down-conversion), else BLAS through at::mm; in fp32, per shape class,
// whichever of the two was measured faster here. bf16 products with an fp32 result, per shape
// class, on whichever was measured faster of the project's AVX512-BF16 kernel (bf16_gemm.h)
// where the CPU has it and MKL's bf16 x bf16 -> fp32 GEMM where torch links MKL (AMX on recent
// Intel Xeons). DIM_FUSED_CPU_GEMM (read in Python, set with dim_fused::set_cpu_gemm) forces
// either provider (onednn: the own kernel for those; blas: MKL's). On CUDA: cuBLAS.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

namespace dim_fused {

// a @ b (2-D), in the inputs' dtype.
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);
// a @ b in `out` dtype with fp32 accumulation: CUDA writes float32 from half inputs directly
// where ATen has aten::mm.dtype, a CPU from bf16 inputs on AVX512-BF16 or MKL; elsewhere the
// operands are converted first. The operands may differ in dtype (one of them `out`'s).
at::Tensor gemm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out);
// out = a @ b (+ bias, broadcast over the rows), written in place.
void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const std::optional<at::Tensor>& bias = std::nullopt);
// out += a @ b, out in the accumulation dtype (float32 for half inputs; on a CPU the product
// of half operands is rounded to their dtype before it is added, at twice the fp32 rate).
void gemm_accumulate(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// Batched (3-D): a @ b in `out` dtype (see gemm_to), and written in place.
at::Tensor batched_gemm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out);
void batched_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// out += sum over the batch of a_i @ b_i, out in the accumulation dtype: the products and
// their sum over the batch in the operands' dtype where out's differs on a CPU (fp32 inside,
// rounded once, as gemm_accumulate), else in out's (gemm_to); bf16 into fp32 on a CPU, per
// shape class, on MKL's bf16 GEMM (each product added unrounded) where that was measured
// faster here.
void batched_gemm_sum_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// The CPU GEMM provider: "onednn" (when torch carries it), "blas", or "auto": per shape class
// of fp32 products, the one measured faster here (oneDNN for the rest; BLAS where torch has no
// oneDNN). set_cpu_gemm returns the provider now in use.
std::string set_cpu_gemm(c10::string_view provider);
std::string cpu_gemm();
// auto's measured choices so far, one line per shape class: the shape, the provider, both times.
std::vector<std::string> cpu_gemm_choices();
// Whether MKL's bf16 x bf16 -> fp32 GEMM is found in this torch and right.
bool cpu_blas_bf16();

}  // namespace dim_fused
