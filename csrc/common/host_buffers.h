// Large host (CPU) buffers of the plans, kept for reuse when freed. glibc hands blocks of
// megabytes back to the kernel on free (munmap, or a trim of the heap), so a plan's fresh
// buffers of every call were page-faulted and zeroed by the kernel again: on the project's
// 2-core machine, 1,600-6,500 page faults (5-13 ms of system time) per forward+backward of
// concat_conv_mi at the CIFAR setting, by what ran before it (docs/design.md, "Host buffers").
// A freed buffer of at least kHostBufferMin bytes (a chunk's activations among them) returns
// here (up to the cache's limit, DIM_FUSED_CPU_CACHE_BYTES) and the next request of its size
// takes it, already mapped. Other devices' and small requests go to at::empty.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dim_fused {

constexpr int64_t kHostBufferMin = int64_t(1) << 18;

// at::empty(sizes, options), from the cache on a CPU when at least kHostBufferMin bytes:
// contiguous, its storage resizable like any CPU tensor's.
at::Tensor host_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// t when contiguous, else its contiguous copy (from the cache when large).
at::Tensor host_contiguous(const at::Tensor& t);
// t when of `dtype`, else its conversion (from the cache when large), with t's strides where
// t is dense.
at::Tensor host_converted(const at::Tensor& t, at::ScalarType dtype);

// The most bytes the cache keeps idle (0: none, every buffer freed at once); returns it.
int64_t set_cpu_cache_bytes(int64_t bytes);
// (bytes held idle now, the limit).
std::tuple<int64_t, int64_t> cpu_cache_bytes();
// Frees every idle buffer.
void empty_cpu_cache();

}  // namespace dim_fused
