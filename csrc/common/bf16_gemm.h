// bfloat16 products with a float32 result on a CPU: ATen has no such entry there (no
// aten::mm.dtype; oneDNN's matmul writes bf16 from bf16 through ATen, and MKL's
// gemm_bf16bf16f32 ran at a third of oneDNN's bf16 rate on the project's AMD EPYC), so the
// plans converted both operands to fp32 and multiplied at the fp32 rate. This runs the product
// on AVX512-BF16 dot products (two bf16 products summed into fp32 per lane) instead: the
// operands unconverted, accumulated and written in fp32, unrounded (docs/design.md, "bf16
// products").
#pragma once

#include <ATen/core/Tensor.h>

namespace dim_fused::cpu {

// Whether this CPU runs AVX512-BF16 (and the build targets x86-64).
bool has_bf16_dot();

// out = a @ b: a and b bfloat16, out float32 and contiguous; 2-D, or 3-D batched (a zero
// batch stride allowed). One of a (M, K) and b^T (N, K) must have rows contiguous along K.
// Returns false, writing nothing, where it does not apply: no AVX512-BF16, other dtypes or
// layouts.
bool bf16_gemm_to_float(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

}  // namespace dim_fused::cpu
