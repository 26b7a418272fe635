// The host buffer cache (see host_buffers.h).
#include "host_buffers.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <list>
#include <memory>
#include <mutex>
#include <new>

namespace dim_fused {
namespace {

constexpr int64_t kGranule = int64_t(1) << 16;
constexpr size_t kPage = 4096;

// A new block at the start of a page. Through torch's allocator a block was 64-byte aligned
// only, wherever glibc's heap had room once glibc served blocks of this size from its heap
// rather than mmap (after it had unmapped larger ones, as when this cache is emptied). In a
// loop emptying the cache every third block of calls, concat_conv_mi at the CIFAR setting
// then ran at 105 ms instead of 80 on the project's AMD EPYC in every block; on page-aligned
// blocks at 80 in every block. (Its other slow state was the vCPUs' placement: docs/design.md,
// "Two threads, far apart".)
c10::DataPtr page_aligned(int64_t bytes) {
  void* data = nullptr;
  if (posix_memalign(&data, kPage, size_t(bytes)) != 0) throw std::bad_alloc();
  return {data, data, &std::free, c10::Device(c10::kCPU)};
}

class HostCache {
 public:
  // The idle block of `bytes` (rounded) or of at most a quarter more freed last (the one most
  // likely still in the CPU's caches), else a new one.
  c10::DataPtr take(int64_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto best = idle_.rend();
      for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
        if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 &&
            (best == idle_.rend() || it->bytes < best->bytes)) {
          best = it;
        }
      }
      if (best != idle_.rend()) {
        c10::DataPtr data = std::move(best->data);
        idle_bytes_ -= best->bytes;
        idle_.erase(std::next(best).base());
        return data;
      }
    }
    return page_aligned(bytes);
  }

  // Kept when it fits under the limit, the oldest idle blocks freed to make room.
  void give(int64_t bytes, c10::DataPtr data) {
    std::list<Block> freed;  // freed outside the lock
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (bytes > limit_) {
        freed.push_back({bytes, std::move(data)});
      } else {
        while (idle_bytes_ + bytes > limit_) {
          idle_bytes_ -= idle_.front().bytes;
          freed.splice(freed.end(), idle_, idle_.begin());
        }
        idle_.push_back({bytes, std::move(data)});
        idle_bytes_ += bytes;
      }
    }
  }

  int64_t set_limit(int64_t bytes) {
    std::list<Block> freed;
    const std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    while (idle_bytes_ > limit_) {
      idle_bytes_ -= idle_.front().bytes;
      freed.splice(freed.end(), idle_, idle_.begin());
    }
    return limit_;
  }

  std::tuple<int64_t, int64_t> bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return {idle_bytes_, limit_};
  }

 private:
  struct Block {
    int64_t bytes;
    c10::DataPtr data;
  };
  std::mutex mutex_;
  std::list<Block> idle_;  // oldest first
  int64_t idle_bytes_ = 0;
  int64_t limit_ = int64_t(256) << 20;  // tunables.py's default
};

// Never destroyed: a tensor freed during interpreter shutdown still finds it.
HostCache& cache() {
  static HostCache* instance = new HostCache();
  return *instance;
}

// A block lent to a tensor: back to the cache when its storage lets go of it.
struct Lease {
  c10::DataPtr block;
  int64_t bytes;
};

void end_lease(void* context) {
  std::unique_ptr<Lease> lease(static_cast<Lease*>(context));
  cache().give(lease->bytes, std::move(lease->block));
}

}  // namespace

at::Tensor host_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * int64_t(options.dtype().itemsize());
  if (!options.device().is_cpu() || bytes < kHostBufferMin || std::get<1>(cache().bytes()) == 0) {
    return at::empty(sizes, options);
  }
  const int64_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
  auto* lease = new Lease{cache().take(rounded), rounded};
  c10::DataPtr data(lease->block.get(), lease, &end_lease, c10::Device(c10::kCPU));
  // Resizable like any CPU tensor's storage: growing it allocates anew and ends the lease.
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(data),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(storage, 0, sizes);
}

at::Tensor host_contiguous(const at::Tensor& t) {
  return t.is_contiguous() ? t : host_empty(t.sizes(), t.options()).copy_(t);
}

at::Tensor host_converted(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  const auto options = t.options().dtype(dtype);
  if (!t.is_non_overlapping_and_dense()) return host_empty(t.sizes(), options).copy_(t);
  // t's strides kept (a transposed view stays one, as with Tensor::to): the copy runs
  // through memory in order.
  return host_empty({t.numel()}, options).as_strided(t.sizes(), t.strides()).copy_(t);
}

int64_t set_cpu_cache_bytes(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "dim_fused: the CPU cache's limit must be >= 0 bytes, got ", bytes);
  return cache().set_limit(bytes);
}

std::tuple<int64_t, int64_t> cpu_cache_bytes() { return cache().bytes(); }

void empty_cpu_cache() {
  const int64_t limit = std::get<1>(cache().bytes());
  cache().set_limit(0);
  cache().set_limit(limit);
}

TORCH_LIBRARY_FRAGMENT(dim_fused, m) {
  // Set from DIM_FUSED_CPU_CACHE_BYTES by the Python layer.
  m.def("set_cpu_cache_bytes(int bytes) -> int", &set_cpu_cache_bytes);
  m.def("cpu_cache_bytes() -> (int, int)", &cpu_cache_bytes);
  m.def("empty_cpu_cache() -> ()", &empty_cpu_cache);
}

}  // namespace dim_fused
