// The host plans' matrix products (see gemm.h). oneDNN is reached through ATen's own entry,
// at::native::mkldnn_matmul (exported by libtorch_cpu, not in its public headers), and MKL's
// bf16 x bf16 -> fp32 GEMM through cblas_gemm_bf16bf16f32 (exported where torch links MKL):
// each looked up at run time and tried once, so that a torch without it, or one that refuses
// a dtype there, falls back instead of failing to load.
#include "gemm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/record_function.h>
#include <c10/util/FunctionRef.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "bf16_gemm.h"
#include "host_buffers.h"

namespace dim_fused {
namespace {

// result = beta * result + alpha * mat1 @ mat2, mat1, mat2 and result of one dtype.
using OneDnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float,
                              float);
constexpr const char* kOneDnnMatmul = "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff";

// A function libtorch_cpu exports, by its (mangled) name; nullptr where this torch has none.
template <typename Function>
Function find_in_torch(const char* name) {
  void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  return reinterpret_cast<Function>(dlsym(torch_cpu != nullptr ? torch_cpu : RTLD_DEFAULT, name));
}

OneDnnMatmul find_onednn() { return find_in_torch<OneDnnMatmul>(kOneDnnMatmul); }

enum class Provider { Auto, OneDnn, Blas };
std::atomic<Provider> g_provider{Provider::Auto};

// Whether oneDNN computes a product of this dtype here: found, and right on a 3 x 3 case.
bool onednn_runs(at::ScalarType dtype) {
  static std::once_flag once;
  static bool runs[3] = {false, false, false};  // float, bfloat16, half
  std::call_once(once, [] {
    const OneDnnMatmul matmul = find_onednn();
    if (matmul == nullptr) return;
    const at::ScalarType types[3] = {at::kFloat, at::kBFloat16, at::kHalf};
    for (int i = 0; i < 3; ++i) {
      try {
        const at::Tensor a = at::arange(9, at::dtype(types[i])).view({3, 3});
        at::Tensor out = at::empty({3, 3}, a.options());
        matmul(a, a.t(), out, 0.0f, 1.0f);
        runs[i] = at::equal(out.to(at::kFloat), at::mm(a.to(at::kFloat), a.to(at::kFloat).t()));
      } catch (const std::exception&) {
        runs[i] = false;
      }
    }
  });
  switch (dtype) {
    case at::kFloat: return runs[0];
    case at::kBFloat16: return runs[1];
    case at::kHalf: return runs[2];
    default: return false;
  }
}

// C = alpha A B + beta C in row-major CBLAS terms (MKL's LP64 interface, the one torch links):
// bf16 A and B (their bits), fp32 C.
using BlasBf16Gemm = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k,
                              float alpha, const uint16_t* a, int lda, const uint16_t* b, int ldb,
                              float beta, float* c, int ldc);
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;

BlasBf16Gemm find_blas_bf16() { return find_in_torch<BlasBf16Gemm>("cblas_gemm_bf16bf16f32"); }

// How BLAS reads one matrix of an operand: transposed or not, and its leading dimension;
// nullopt where it cannot (no unit stride, or a size past its 32-bit integers).
struct BlasMatrix {
  int trans, ld;
};
std::optional<BlasMatrix> blas_matrix(const at::Tensor& t) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  const auto fits = [](int64_t v) { return v <= std::numeric_limits<int>::max(); };
  if (!fits(rows) || !fits(cols)) return std::nullopt;
  if (t.stride(-1) == 1 || cols == 1) {
    const int64_t ld = rows == 1 ? std::max<int64_t>(cols, 1) : t.stride(-2);
    if (ld >= std::max<int64_t>(cols, 1) && fits(ld)) return BlasMatrix{kCblasNoTrans, int(ld)};
  }
  if (t.stride(-2) == 1 || rows == 1) {
    const int64_t ld = cols == 1 ? std::max<int64_t>(rows, 1) : t.stride(-1);
    if (ld >= std::max<int64_t>(rows, 1) && fits(ld)) return BlasMatrix{kCblasTrans, int(ld)};
  }
  return std::nullopt;
}

// out = a @ b on MKL's bf16 x bf16 -> fp32 GEMM (fp32 accumulation, the result unrounded):
// 2-D, or 3-D batched (a zero batch stride allowed). False, writing nothing, where it does
// not apply: no such entry in this torch, other dtypes, an operand BLAS cannot read.
bool blas_bf16_to_float(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// Whether MKL's entry is found and right on a 3 x 3 case.
bool blas_bf16_runs() {
  static const bool runs = [] {
    if (find_blas_bf16() == nullptr) return false;
    try {
      const at::Tensor a = at::arange(9, at::dtype(at::kBFloat16)).view({3, 3});
      const at::Tensor out = at::empty({3, 3}, at::dtype(at::kFloat));
      return blas_bf16_to_float(out, a, a.t()) &&
             at::equal(out, at::mm(a.to(at::kFloat), a.to(at::kFloat).t()));
    } catch (const std::exception&) {
      return false;
    }
  }();
  return runs;
}

bool blas_bf16_to_float(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  static const BlasBf16Gemm gemm = find_blas_bf16();
  if (gemm == nullptr || !a.is_cpu() || a.scalar_type() != at::kBFloat16 ||
      b.scalar_type() != at::kBFloat16 || out.scalar_type() != at::kFloat || !out.is_contiguous() ||
      a.dim() != b.dim() || out.dim() != a.dim() || (a.dim() != 2 && a.dim() != 3) ||
      out.numel() == 0) {
    return false;
  }
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t batch = a.dim() == 3 ? a.size(0) : 1;
  const auto a_matrix = blas_matrix(a), b_matrix = blas_matrix(b);
  if (!a_matrix || !b_matrix || k > std::numeric_limits<int>::max() || k == 0) return false;
  RECORD_FUNCTION("dim_fused::blas_bf16_gemm", std::vector<c10::IValue>({a, b}));
  const auto* a_bits = reinterpret_cast<const uint16_t*>(a.const_data_ptr<at::BFloat16>());
  const auto* b_bits = reinterpret_cast<const uint16_t*>(b.const_data_ptr<at::BFloat16>());
  float* c = out.data_ptr<float>();
  const int64_t a_batch = batch > 1 ? a.stride(0) : 0, b_batch = batch > 1 ? b.stride(0) : 0;
  const auto product = [&](int64_t i) {
    gemm(kCblasRowMajor, a_matrix->trans, b_matrix->trans, int(m), int(n), int(k), 1.0f,
         a_bits + i * a_batch, a_matrix->ld, b_bits + i * b_batch, b_matrix->ld, 0.0f,
         c + i * m * n, int(n));
  };
  // A batch of at least one product per thread: the products split among torch's threads, each
  // call on one (MKL runs single-threaded inside a parallel region); fewer: MKL threads each.
  if (batch >= at::get_num_threads()) {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) product(i);
    });
  } else {
    for (int64_t i = 0; i < batch; ++i) product(i);
  }
  return true;
}

// out += sum over the batch of a_i @ b_i on MKL's bf16 GEMM, out fp32 (2-D, contiguous), the
// products added unrounded (beta = 1). A product of small inner dimension K (64 for
// dot_product_mi's d_global) runs at a fraction of MKL's rate, so the batch is summed in
// groups as products of inner dimension group * K: each of torch's threads takes a block of
// out's columns and, per group, gathers the group's a_i side by side into (M x group K) and
// its b_i columns into (cols x group K), sized to stay in the core's cache (b's at most
// 2^19 values: 1 MiB, half the L2 of the project's Intel Xeon), then adds their product.
// False, writing nothing, where it does not apply (as blas_bf16_to_float).
bool blas_bf16_sum_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  static const BlasBf16Gemm gemm = find_blas_bf16();
  const auto fits = [](int64_t v) { return v <= std::numeric_limits<int>::max(); };
  if (gemm == nullptr || !a.is_cpu() || a.scalar_type() != at::kBFloat16 ||
      b.scalar_type() != at::kBFloat16 || out.scalar_type() != at::kFloat || !out.is_contiguous() ||
      a.dim() != 3 || b.dim() != 3 || out.dim() != 2 || out.numel() == 0 || a.size(2) == 0 ||
      !fits(a.size(1)) || !fits(a.size(2)) || !fits(b.size(2))) {
    return false;
  }
  const int64_t m = a.size(1), k = a.size(2), n = b.size(2), batch = a.size(0);
  const int64_t threads = at::get_num_threads();
  const int64_t columns = std::max<int64_t>((n + threads - 1) / threads, 16);
  const int64_t group = std::clamp<int64_t>((int64_t(1) << 19) / (columns * k), 1, batch);
  if (!fits(group * k)) return false;
  RECORD_FUNCTION("dim_fused::blas_bf16_gemm_sum", std::vector<c10::IValue>({a, b}));
  // One buffer per thread, from the plans' cache (a fresh one would be page-faulted per call).
  const int64_t a_values = m * group * k, per_thread = a_values + columns * group * k;
  const at::Tensor buffers = host_empty({threads * per_thread}, a.options());
  float* c = out.data_ptr<float>();
  at::parallel_for(0, n, columns, [&](int64_t begin, int64_t end) {
    const at::Tensor mine = buffers.narrow(0, at::get_thread_num() * per_thread, per_thread);
    for (int64_t block = begin; block < end; block += columns) {
      const int64_t cols = std::min(columns, end - block);
      for (int64_t first = 0; first < batch; first += group) {
        const int64_t images = std::min(group, batch - first), inner = images * k;
        const at::Tensor a_group = mine.narrow(0, 0, m * inner).view({m, images, k});
        const at::Tensor b_group = mine.narrow(0, a_values, cols * inner).view({cols, images, k});
        a_group.copy_(a.narrow(0, first, images).permute({1, 0, 2}));
        b_group.copy_(b.narrow(0, first, images).narrow(2, block, cols).permute({2, 0, 1}));
        gemm(kCblasRowMajor, kCblasNoTrans, kCblasTrans, int(m), int(cols), int(inner), 1.0f,
             reinterpret_cast<const uint16_t*>(a_group.const_data_ptr<at::BFloat16>()), int(inner),
             reinterpret_cast<const uint16_t*>(b_group.const_data_ptr<at::BFloat16>()), int(inner),
             1.0f, c + block, int(n));
      }
    }
  });
  return true;
}

// A batch of one matrix (a zero stride on the batch dimension only): oneDNN's matmul
// broadcasts it itself when given the one matrix, (1, M, K).
bool batch_broadcast(const at::Tensor& t) {
  return t.dim() == 3 && t.size(0) > 1 && t.stride(0) == 0;
}

// Whether oneDNN's entry would materialise a broadcast operand: it reads contiguous and
// transposed matrices in place and copies the rest, which for a zero stride within a
// matrix means a copy of the whole expanded tensor.
bool broadcast(const at::Tensor& t) {
  for (int64_t d = batch_broadcast(t) ? 1 : 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) return true;
  }
  return false;
}

bool onednn_measured_faster(const at::Tensor& a, const at::Tensor& b);
bool direct_bf16_product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// Whether a product of these operands goes to oneDNN.
bool use_onednn(const at::Tensor& a, const at::Tensor& b) {
  const Provider provider = g_provider.load();
  return provider != Provider::Blas && a.is_cpu() && a.scalar_type() == b.scalar_type() &&
         a.numel() > 0 && b.numel() > 0 && !broadcast(a) && !broadcast(b) &&
         onednn_runs(a.scalar_type()) &&
         (provider == Provider::OneDnn || onednn_measured_faster(a, b));
}

// out = beta * out + a @ b on oneDNN (a range of its own in torch.profiler: the product is
// not an ATen op).
void onednn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  static const OneDnnMatmul matmul = find_onednn();
  RECORD_FUNCTION("dim_fused::onednn_matmul", std::vector<c10::IValue>({a, b}));
  const auto one_matrix = [](const at::Tensor& t) {
    return batch_broadcast(t) ? t.narrow(0, 0, 1) : t;
  };
  matmul(one_matrix(a), one_matrix(b), out, beta, 1.0f);
}

// `t` in `dtype`, a broadcast (zero-stride) dimension kept broadcast: converting the expanded
// tensor itself would materialise it whole.
at::Tensor converted_operand(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  at::Tensor base = t;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0) base = base.narrow(d, 0, 1);
  }
  return host_converted(base, dtype).expand(t.sizes());
}

// a (op) b in `out` dtype with fp32 accumulation. On CUDA, the ATen overload with an out_dtype
// (aten::mm.dtype, aten::bmm.dtype: cuBLAS writes float32 from half inputs) where this torch
// has one; on a CPU, bf16 operands unconverted where the project's AVX512-BF16 kernel or MKL's
// bf16 GEMM runs (direct_bf16_product: neither oneDNN's entry nor ATen writes float32 from
// bf16 there); elsewhere the operands are converted and multiplied in float32, so that scores
// and weight gradients reach their epilogues unrounded.
// Operands of two dtypes (an fp32 gradient against half activations) meet in the half one on
// CUDA (its tensor cores) and in `out` on a CPU (no rounding of the fp32 one).
at::Tensor converted(const char* op, at::Tensor (*plain)(const at::Tensor&, const at::Tensor&),
                     const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (a.is_cuda()) {
    const auto half = a.scalar_type() == out ? b.scalar_type() : a.scalar_type();
    static const auto with_dtype = c10::Dispatcher::singleton().findSchema({op, "dtype"});
    if (half != out && with_dtype && with_dtype->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) {
      return with_dtype->typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ScalarType)>()
          .call(converted_operand(a, half), converted_operand(b, half), out);
    }
  }
  if (a.is_cpu() && out == at::kFloat && a.scalar_type() == at::kBFloat16 &&
      b.scalar_type() == at::kBFloat16 && (cpu::has_bf16_dot() || blas_bf16_runs())) {
    std::vector<int64_t> sizes = a.sizes().vec();
    sizes.back() = b.size(-1);
    at::Tensor result = host_empty(sizes, a.options().dtype(out));
    if (direct_bf16_product(result, a, b)) return result;
  }
  return plain(converted_operand(a, out), converted_operand(b, out));
}

// out += t, an fp32 `out` and a half `t` of its shape, t widened in registers: one pass, where
// ATen's add_ of mixed dtypes converts t into a fresh fp32 tensor first, then adds it.
void add_widened(const at::Tensor& out, const at::Tensor& t) {
  if (!(out.is_cpu() && out.scalar_type() == at::kFloat && t.scalar_type() != at::kFloat &&
        out.sizes() == t.sizes() && out.is_contiguous() && t.is_contiguous())) {
    out.add_(t);
    return;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(t.scalar_type(), "add_widened", [&] {
    using V = at::vec::Vectorized<scalar_t>;
    using VF = at::vec::Vectorized<float>;
    const scalar_t* from = t.const_data_ptr<scalar_t>();
    float* into = out.data_ptr<float>();
    at::parallel_for(0, t.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + V::size() <= end; i += V::size()) {
        const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(V::loadu(from + i));
        (VF::loadu(into + i) + lo).store(into + i);
        (VF::loadu(into + i + VF::size()) + hi).store(into + i + VF::size());
      }
      for (; i < end; ++i) into[i] += float(from[i]);
    });
  });
}

at::Tensor batched_gemm(const at::Tensor& a, const at::Tensor& b) {
  if (!use_onednn(a, b)) return at::bmm(a, b);
  at::Tensor out = host_empty({a.size(0), a.size(1), b.size(2)}, a.options());
  onednn(out, a, b, 0.0f);
  return out;
}

// oneDNN runs a product of few rows and many columns (G global codes against B * L
// locations) at about half the rate of its transpose on the project's CPU: such a product is
// computed as (b^T a^T)^T, the transposes being views it reads in place.
bool few_rows(const at::Tensor& a, const at::Tensor& b) {
  return a.dim() == 2 && a.size(0) <= 128 && b.size(1) >= 8 * a.size(0);
}

// (b^T a^T) on oneDNN: the transpose of a @ b, (N, M) contiguous.
at::Tensor onednn_transposed(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = host_empty({b.size(1), a.size(0)}, a.options());
  onednn(out, b.t(), a.t(), 0.0f);
  return out;
}

// out = a @ b on oneDNN, in the formulation the plans use for these operands.
void onednn_product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (few_rows(a, b)) {
    out.copy_(onednn_transposed(a, b).t());
  } else {
    onednn(out, a, b, 0.0f);
  }
}

// auto's choices, per shape class, whichever provider computed one product of the class faster
// on this machine, measured once at the first such product and kept: for fp32 products
// oneDNN or MKL (ATen itself sends bf16 products to oneDNN); for bf16 products with an fp32
// result the project's AVX512-BF16 kernel (else the converted operands' fp32 product) or
// MKL's bf16 x bf16 -> fp32 GEMM. Neither wins everywhere: on the project's AMD EPYC oneDNN
// runs most fp32 products at twice MKL's rate but those of inner dimension 64 at half of it;
// on an Intel Xeon with AMX, MKL's bf16 GEMM runs the score products at about 5x the
// kernel's rate but (4096 x 64) @ (64 x 2048) at about a third of it. Products of under
// kMeasuredFlops run on the first unmeasured (their timing would be noise), and BLAS must be
// 10% faster to be chosen.
constexpr double kMeasuredFlops = double(int64_t(1) << 24);

// ceil(log2(n)): the shape classes are powers of two.
int64_t size_class(int64_t n) {
  int64_t c = 0;
  while ((int64_t(1) << c) < n) ++c;
  return c;
}

// The products auto measures: their name in cpu_gemm_choices, and the provider BLAS is timed
// against.
enum class Products { Fp32, Bf16ToFp32, Bf16SumToFp32 };

// (products, batch, M, K, N classes, each operand's rows contiguous, a broadcast operand,
// threads).
using ShapeClass = std::tuple<Products, int64_t, int64_t, int64_t, int64_t, bool, bool, bool, int>;

struct Measured {
  bool first;  // the provider BLAS was timed against won
  double first_ms, blas_ms;
  std::string line;  // "<products> <shape>: ", then the names and times
};

std::mutex g_measured_mutex;
std::map<ShapeClass, Measured> g_measured;

// The best of two timed calls after one untimed (oneDNN builds its primitive, MKL its
// buffers, on a first call).
double best_ms(const std::function<void()>& product) {
  product();
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 2; ++i) {
    const auto start = std::chrono::steady_clock::now();
    product();
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

// Whether `first` (named so) runs products of a's and b's shape class: measured against `blas`
// at the first product of the class of at least kMeasuredFlops, each writing a @ b into an
// fp32 tensor of the product's shape (for Bf16SumToFp32: adding the batch's sum of products
// into one of the sum's).
bool first_measured_faster(Products products, const char* name, const at::Tensor& a,
                           const at::Tensor& b, c10::function_ref<void(const at::Tensor&)> first,
                           c10::function_ref<void(const at::Tensor&)> blas) {
  const bool batched = a.dim() == 3;
  const int64_t batch = batched ? a.size(0) : 1;
  if (2.0 * double(batch * a.size(-2)) * double(a.size(-1) * b.size(-1)) < kMeasuredFlops) {
    return true;
  }
  const ShapeClass key{products,
                       batched ? size_class(batch) : -1,
                       size_class(a.size(-2)),
                       size_class(a.size(-1)),
                       size_class(b.size(-1)),
                       a.stride(-1) == 1,
                       b.stride(-1) == 1,
                       batch_broadcast(a) || batch_broadcast(b),
                       at::get_num_threads()};
  {
    const std::lock_guard<std::mutex> lock(g_measured_mutex);
    const auto found = g_measured.find(key);
    if (found != g_measured.end()) return found->second.first;
  }
  const at::Tensor out = products == Products::Bf16SumToFp32
                             ? at::zeros({a.size(-2), b.size(-1)}, at::kFloat)
                         : batched ? at::empty({batch, a.size(1), b.size(2)}, at::kFloat)
                                   : at::empty({a.size(0), b.size(1)}, at::kFloat);
  Measured m;
  m.first_ms = best_ms([&] { first(out); });
  m.blas_ms = best_ms([&] { blas(out); });
  m.first = !(m.blas_ms < 0.9 * m.first_ms);
  const auto layout = [](const at::Tensor& t) {
    return batch_broadcast(t) ? "broadcast" : (t.stride(-1) == 1 ? "rows" : "columns");
  };
  const char* kind = products == Products::Fp32         ? "fp32 "
                     : products == Products::Bf16ToFp32 ? "bf16 to fp32 "
                                                        : "bf16 summed in fp32 ";
  m.line = c10::str(kind, batched ? c10::str(batch, " x ") : std::string(), a.size(-2), " x ",
                    a.size(-1), " @ ", b.size(-2), " x ", b.size(-1), " (", layout(a), ", ",
                    layout(b), "), ", at::get_num_threads(), " threads: ", m.first ? name : "blas",
                    " (", name, " ", m.first_ms, " ms, blas ", m.blas_ms, " ms)");
  const std::lock_guard<std::mutex> lock(g_measured_mutex);
  return g_measured.emplace(key, m).first->second.first;
}

bool onednn_measured_faster(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != at::kFloat) return true;
  return first_measured_faster(
      Products::Fp32, "onednn", a, b, [&](const at::Tensor& out) { onednn_product(out, a, b); },
      [&](const at::Tensor& out) {
        at::Tensor result = out;
        a.dim() == 3 ? at::bmm_out(result, a, b) : at::mm_out(result, a, b);
      });
}

// out = a @ b, bf16 operands, fp32 out, without converting the operands: on the project's
// AVX512-BF16 kernel (onednn), on MKL's bf16 GEMM (blas), or under auto whichever was measured
// faster for the shape class (the kernel's alternative, where the CPU lacks it, being the
// converted operands' fp32 product). False where the provider's product does not apply: the
// caller converts the operands.
bool direct_bf16_product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const Provider provider = g_provider.load();
  if (provider == Provider::OneDnn) return cpu::bf16_gemm_to_float(out, a, b);
  if (provider == Provider::Blas) return blas_bf16_runs() && blas_bf16_to_float(out, a, b);
  const bool kernel = cpu::has_bf16_dot();
  if (!blas_bf16_runs() || !blas_matrix(a) || !blas_matrix(b)) {
    return kernel && cpu::bf16_gemm_to_float(out, a, b);
  }
  const bool first = first_measured_faster(
      Products::Bf16ToFp32, kernel ? "avx512-bf16" : "converted", a, b,
      [&](const at::Tensor& result) {
        if (!(kernel && cpu::bf16_gemm_to_float(result, a, b))) {
          result.copy_(at::matmul(a.to(at::kFloat), b.to(at::kFloat)));
        }
      },
      [&](const at::Tensor& result) { blas_bf16_to_float(result, a, b); });
  if (first) return kernel && cpu::bf16_gemm_to_float(out, a, b);
  return blas_bf16_to_float(out, a, b);
}

}  // namespace

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_cpu()) return at::mm(a, b);
  const bool on_onednn = use_onednn(a, b);
  if (on_onednn && few_rows(a, b)) return onednn_transposed(a, b).t().contiguous();
  at::Tensor out = host_empty({a.size(0), b.size(1)}, a.options());
  if (on_onednn) {
    onednn(out, a, b, 0.0f);
  } else {
    at::mm_out(out, a, b);
  }
  return out;
}

at::Tensor gemm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (a.scalar_type() == out && b.scalar_type() == out) return gemm(a, b);
  return converted("aten::mm", &gemm, a, b, out);
}

void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const std::optional<at::Tensor>& bias) {
  if (!use_onednn(a, b) || out.scalar_type() != a.scalar_type()) {
    at::Tensor result = out;
    if (bias) {
      at::addmm_out(result, *bias, a, b);
    } else {
      at::mm_out(result, a, b);
    }
    return;
  }
  if (few_rows(a, b)) {
    onednn_product(out, a, b);
    if (bias) out.add_(*bias);
    return;
  }
  if (bias) out.copy_(bias->expand(out.sizes()));
  onednn(out, a, b, bias ? 1.0f : 0.0f);
}

void gemm_accumulate(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() == a.scalar_type() && use_onednn(a, b)) {
    if (few_rows(a, b)) {
      out.add_(onednn_transposed(a, b).t());
    } else {
      onednn(out, a, b, 1.0f);
    }
  } else if (out.scalar_type() == a.scalar_type()) {
    at::Tensor result = out;
    result.addmm_(a, b);
  } else if (use_onednn(a, b)) {
    // bf16 operands, an fp32 sum of products over chunks (weight gradients): each chunk's
    // product in bf16 on oneDNN (fp32 inside the GEMM, rounded once on the way out), summed
    // in fp32; converting the operands would run the product at the fp32 rate.
    add_widened(out, gemm(a, b));
  } else {
    out.add_(gemm_to(a, b, out.scalar_type()));
  }
}

at::Tensor batched_gemm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (a.scalar_type() == out && b.scalar_type() == out) return batched_gemm(a, b);
  return converted("aten::bmm", &batched_gemm, a, b, out);
}

void batched_gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!use_onednn(a, b) || out.scalar_type() != a.scalar_type()) {
    at::Tensor result = out;
    at::bmm_out(result, a, b);
    return;
  }
  onednn(out, a, b, 0.0f);
}

namespace {

// out += the sum of the batch's products, each product computed whole, the batch then summed.
void sum_of_products_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const bool in_operands_dtype =
      a.is_cpu() && out.scalar_type() != a.scalar_type() && use_onednn(a, b);
  const at::Tensor products =
      in_operands_dtype ? batched_gemm(a, b) : batched_gemm_to(a, b, out.scalar_type());
  add_widened(out, products.sum(0));  // fp32 inside the sum, rounded once to the products' dtype
}

// Whether a bf16 sum of products into fp32 goes to MKL's bf16 GEMM (blas_bf16_sum_into): under
// blas, and under auto where that was measured faster for the shape class than the products
// summed after (on the Intel Xeon with AMX, dot_product_mi's d_global in 0.6-0.75 of the
// time; on AMD's Zen 4, without AMX, MKL's bf16 GEMM runs at a third of oneDNN's rate).
bool blas_sums(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const Provider provider = g_provider.load();
  if (provider == Provider::OneDnn || !a.is_cpu() || a.scalar_type() != at::kBFloat16 ||
      b.scalar_type() != at::kBFloat16 || out.scalar_type() != at::kFloat || !blas_bf16_runs()) {
    return false;
  }
  return provider == Provider::Blas ||
         !first_measured_faster(
             Products::Bf16SumToFp32, "summed after", a, b,
             [&](const at::Tensor& sum) { sum_of_products_into(sum, a, b); },
             [&](const at::Tensor& sum) { blas_bf16_sum_into(sum, a, b); });
}

}  // namespace

void batched_gemm_sum_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (blas_sums(out, a, b) && blas_bf16_sum_into(out, a, b)) return;
  sum_of_products_into(out, a, b);
}

std::string cpu_gemm() {
  const Provider p = g_provider.load();
  if (p == Provider::Blas || !onednn_runs(at::kFloat)) return "blas";
  return p == Provider::OneDnn ? "onednn" : "auto";
}

std::vector<std::string> cpu_gemm_choices() {
  const std::lock_guard<std::mutex> lock(g_measured_mutex);
  std::vector<std::string> lines;
  for (const auto& [key, m] : g_measured) lines.push_back(m.line);
  return lines;
}

bool cpu_blas_bf16() { return blas_bf16_runs(); }

std::string set_cpu_gemm(c10::string_view provider) {
  if (provider == "auto") {
    g_provider = Provider::Auto;
  } else if (provider == "onednn") {
    TORCH_CHECK_VALUE(onednn_runs(at::kFloat),
                      "dim_fused: oneDNN's matmul is not available in this torch build; use "
                      "DIM_FUSED_CPU_GEMM=blas or auto");
    g_provider = Provider::OneDnn;
  } else if (provider == "blas") {
    g_provider = Provider::Blas;
  } else {
    TORCH_CHECK_VALUE(false, "dim_fused: DIM_FUSED_CPU_GEMM must be auto, onednn or blas, got '",
                      std::string(provider), "'");
  }
  return cpu_gemm();
}

}  // namespace dim_fused
