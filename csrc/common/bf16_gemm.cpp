// bf16 x bf16 -> fp32 products on AVX512-BF16 (see bf16_gemm.h). The product is computed as
// Z = X Y: X's rows are read in place, two consecutive k of a row broadcast as one 32-bit
// pair; Y is packed, 64 columns at a time, into pairs of its rows (k, k + 1) interleaved per
// column, the layout vdpbf16ps multiplies against a broadcast pair. A tile of 6 rows x 64
// columns of Z stays in 24 registers for the whole of K. X is whichever of a and b^T has rows
// along K, so that the operand packed is the small one (the global codes against codes laid
// out in rows) or one packed by interleaving rows (codes laid out (E, L) per image), never
// the large one transposed.
#include "bf16_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DIM_FUSED_BF16_DOT 1
#define DIM_FUSED_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace dim_fused::cpu {

#ifdef DIM_FUSED_BF16_DOT

bool has_bf16_dot() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

namespace {

constexpr int kLanes = 16;    // fp32 lanes of a 512-bit register
constexpr int kPanel = 64;    // columns of Y per packed panel: 4 registers
constexpr int kTileRows = 6;  // rows of X per tile: 6 x 4 accumulators
constexpr int kVectors = kPanel / kLanes;

// Z (P x Q, element (p, q) at z[p * zp + q * zq]) = X (P x K, row p at x + p * ldx, K
// contiguous) Y (K x Q, element (k, q) at y[k * yk + q * yq]; yk or yq is 1), bf16 values
// as their bits.
struct Product {
  const uint16_t* x;
  int64_t ldx;
  const uint16_t* y;
  int64_t yk, yq;
  bool y_rows;  // Y's rows contiguous (yq == 1), else its columns (yk == 1)
  float* z;
  int64_t zp, zq;
  int64_t rows, columns, depth;  // P, Q, K
};

int64_t pairs_of(int64_t depth) { return (depth + 1) / 2; }

// Y's columns [first, first + kPanel) as (pairs_of(K), kPanel) 32-bit words: word (i, c) holds
// Y(2i, c) in its low half and Y(2i + 1, c) in its high half; zeros past K and past Q.
DIM_FUSED_AVX512_BF16 void pack_panel(const Product& p, int64_t first, uint32_t* panel) {
  const int64_t pairs = pairs_of(p.depth), width = std::min<int64_t>(kPanel, p.columns - first);
  if (p.y_rows) {  // rows of Y contiguous: two rows interleaved, 16 columns at a time
    for (int64_t i = 0; i < pairs; ++i) {
      const uint16_t* even = p.y + 2 * i * p.yk + first;
      const bool has_odd = 2 * i + 1 < p.depth;
      for (int v = 0; v < kVectors; ++v) {
        const int64_t n = std::clamp<int64_t>(width - v * kLanes, 0, kLanes);
        const __mmask16 mask = static_cast<__mmask16>((uint32_t(1) << n) - 1);
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, even + v * kLanes));
        const __m512i hi =
            has_odd
                ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, even + p.yk + v * kLanes))
                : _mm512_setzero_si512();
        _mm512_storeu_si512(panel + i * kPanel + v * kLanes,
                            _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
    return;
  }
  // columns of Y contiguous: each column's pairs are words already, transposed here
  for (int64_t c = 0; c < kPanel; ++c) {
    const uint16_t* column = p.y + (first + c) * p.yq;
    for (int64_t i = 0; i < pairs; ++i) {
      uint32_t word = 0;
      if (c < width) {
        const uint32_t odd = 2 * i + 1 < p.depth ? column[2 * i + 1] : 0;
        word = uint32_t(column[2 * i]) | (odd << 16);
      }
      panel[i * kPanel + c] = word;
    }
  }
}

// acc[r][v] += the products of row r's pair (two k) with the panel's pairs of those k.
template <int kRows, int kRegisters>
DIM_FUSED_AVX512_BF16 inline __attribute__((always_inline)) void accumulate(
    __m512 (&acc)[kRows][kRegisters], const uint32_t* words, const uint32_t* pairs) {
  __m512i columns[kRegisters];
  for (int v = 0; v < kRegisters; ++v) columns[v] = _mm512_loadu_si512(pairs + v * kLanes);
  for (int r = 0; r < kRows; ++r) {
    const __m512bh pair = (__m512bh)_mm512_set1_epi32(int(words[r]));
    for (int v = 0; v < kRegisters; ++v) {
      acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pair, (__m512bh)columns[v]);
    }
  }
}

// Z's rows [row, row + kRows) x columns [first, first + width) from a packed panel (`first`
// places the tile in Z only: the panel holds those columns).
template <int kRows, int kRegisters>
DIM_FUSED_AVX512_BF16 void tile(const Product& p, int64_t row, int64_t first, int64_t width,
                                const uint32_t* panel) {
  __m512 acc[kRows][kRegisters];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kRegisters; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const uint16_t* x = p.x + row * p.ldx;
  const int64_t whole_pairs = p.depth / 2;
  uint32_t words[kRows];
  for (int64_t i = 0; i < whole_pairs; ++i) {
    for (int r = 0; r < kRows; ++r) std::memcpy(&words[r], x + r * p.ldx + 2 * i, 4);
    accumulate(acc, words, panel + i * kPanel);
  }
  if (p.depth % 2 == 1) {  // the last k alone, its pair's other half zero
    for (int r = 0; r < kRows; ++r) words[r] = x[r * p.ldx + p.depth - 1];
    accumulate(acc, words, panel + whole_pairs * kPanel);
  }
  float* z = p.z + row * p.zp + first * p.zq;
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kRegisters; ++v) {
      const int64_t n = std::clamp<int64_t>(width - v * kLanes, 0, kLanes);
      if (p.zq == 1) {
        _mm512_mask_storeu_ps(z + r * p.zp + v * kLanes, static_cast<__mmask16>((1u << n) - 1),
                              acc[r][v]);
      } else {
        alignas(64) float lanes[kLanes];
        _mm512_store_ps(lanes, acc[r][v]);
        for (int64_t c = 0; c < n; ++c) z[r * p.zp + (v * kLanes + c) * p.zq] = lanes[c];
      }
    }
  }
}

using Tile = void (*)(const Product&, int64_t, int64_t, int64_t, const uint32_t*);

template <int kRows, int... kRegisters>
constexpr std::array<Tile, kVectors> tiles_of(std::integer_sequence<int, kRegisters...>) {
  return {&tile<kRows, kRegisters + 1>...};
}

template <int... kRows>
constexpr std::array<std::array<Tile, kVectors>, kTileRows> tile_table(
    std::integer_sequence<int, kRows...>) {
  return {tiles_of<kRows + 1>(std::make_integer_sequence<int, kVectors>())...};
}

// tiles[rows - 1][registers - 1]
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kTileRows>());

// Rows of X per staged block where Z is stored transposed: each tile's scattered stores go to
// a block held in L1, written out as kStaged contiguous floats per column (a tile's 6 rows
// would otherwise touch 64 rows of the output, a page apart at large sizes, per 6 rows).
constexpr int64_t kStaged = 8 * kTileRows;

// Z's rows [begin, end), every column.
void rows_of(const Product& p, int64_t begin, int64_t end) {
  thread_local std::vector<uint32_t> panel;
  panel.resize(pairs_of(p.depth) * kPanel);
  alignas(64) float staged[kPanel * kStaged];
  for (int64_t first = 0; first < p.columns; first += kPanel) {
    const int64_t width = std::min<int64_t>(kPanel, p.columns - first);
    const int registers = int((width + kLanes - 1) / kLanes);
    pack_panel(p, first, panel.data());
    for (int64_t block = begin; block < end; block += kStaged) {
      const int64_t block_rows = std::min(kStaged, end - block);
      Product into = p;  // the block's tiles, straight into Z or into `staged`
      if (p.zq != 1) {
        into.x = p.x + block * p.ldx;
        into.z = staged;
        into.zp = 1;
        into.zq = kStaged;
      }
      const bool staging = p.zq != 1;
      for (int64_t row = 0; row < block_rows; row += kTileRows) {
        const int rows = int(std::min<int64_t>(kTileRows, block_rows - row));
        kTiles[rows - 1][registers - 1](into, staging ? row : block + row, staging ? 0 : first,
                                        width, panel.data());
      }
      if (!staging) continue;
      for (int64_t c = 0; c < width; ++c) {
        std::memcpy(p.z + block * p.zp + (first + c) * p.zq, staged + c * kStaged,
                    block_rows * sizeof(float));
      }
    }
  }
}

const uint16_t* bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>());
}

}  // namespace

bool bf16_gemm_to_float(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!has_bf16_dot() || !a.is_cpu() || a.scalar_type() != at::kBFloat16 ||
      b.scalar_type() != at::kBFloat16 || out.scalar_type() != at::kFloat || !out.is_contiguous() ||
      a.dim() != b.dim() || out.dim() != a.dim() || (a.dim() != 2 && a.dim() != 3) ||
      a.size(-1) == 0 || out.numel() == 0) {
    return false;
  }
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t batch = a.dim() == 3 ? a.size(0) : 1;
  TORCH_INTERNAL_ASSERT(b.size(-2) == k && out.size(-2) == m && out.size(-1) == n &&
                        (a.dim() == 2 || (b.size(0) == batch && out.size(0) == batch)));
  const bool a_rows = a.stride(-1) == 1 || a.size(-1) == 1;
  const bool a_columns = a.stride(-2) == 1 || a.size(-2) == 1;
  const bool b_rows = b.stride(-1) == 1 || b.size(-1) == 1;
  const bool b_columns = b.stride(-2) == 1 || b.size(-2) == 1;
  const auto batch_stride = [&](const at::Tensor& t) { return batch > 1 ? t.stride(0) : 0; };
  Product base{};
  base.depth = k;
  // Z = out^T = b^T a^T (X = b^T, Y = a^T packed) where b^T has rows along K, Z = out = a b
  // (X = a, Y = b packed) where a does and b's rows are contiguous; where both can, the one
  // that packs the smaller operand. Never a^T packed anew for each product of a batch that
  // broadcasts it.
  const bool can_transpose = b_columns && (a_rows || a_columns) && (batch == 1 || a.stride(0) != 0);
  const bool can_direct = a_rows && b_rows;
  const bool transposed = can_transpose && (!can_direct || m < n);
  if (transposed) {
    base.ldx = b.stride(-1);
    base.yk = a.stride(-1);
    base.yq = a.stride(-2);
    base.y_rows = a_columns;
    base.zp = 1;
    base.zq = n;
    base.rows = n;
    base.columns = m;
  } else if (can_direct) {
    base.ldx = a.stride(-2);
    base.yk = b.stride(-2);
    base.yq = b.stride(-1);
    base.y_rows = true;
    base.zp = n;
    base.zq = 1;
    base.rows = m;
    base.columns = n;
  } else {
    return false;
  }
  RECORD_FUNCTION("dim_fused::bf16_gemm", std::vector<c10::IValue>({a, b}));
  const at::Tensor& x_tensor = transposed ? b : a;
  const at::Tensor& y_tensor = transposed ? a : b;
  const int64_t x_batch = batch_stride(x_tensor), y_batch = batch_stride(y_tensor);
  const int64_t z_batch = m * n;
  // Work units: whole products of the batch, or, for fewer products than threads, row ranges
  // of each (each range packing its own panels).
  const int64_t threads = at::get_num_threads();
  const int64_t tiles = (base.rows + kTileRows - 1) / kTileRows;
  const int64_t splits = std::clamp<int64_t>((threads + batch - 1) / batch, 1, tiles);
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  const uint16_t* x = bits(x_tensor);
  const uint16_t* y = bits(y_tensor);
  float* z = out.data_ptr<float>();
  at::parallel_for(0, batch * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t item = unit / splits, split = unit % splits;
      Product p = base;
      p.x = x + item * x_batch;
      p.y = y + item * y_batch;
      p.z = z + item * z_batch;
      const int64_t first = split * tiles_per_split * kTileRows;
      if (first < base.rows) {
        rows_of(p, first, std::min(base.rows, first + tiles_per_split * kTileRows));
      }
    }
  });
  return true;
}

#else

bool has_bf16_dot() { return false; }

bool bf16_gemm_to_float(const at::Tensor&, const at::Tensor&, const at::Tensor&) { return false; }

#endif

}  // namespace dim_fused::cpu
