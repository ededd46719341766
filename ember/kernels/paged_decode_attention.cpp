// Attention straight from the paged KV cache, no gathered copy: every decode row, and on this path every
// prefill row too (a prefill row is a query over its context's first position+1 slots, exactly what a
// decode row at that position is).
//
// Each row's numbers depend on nothing but the row: its query, its context length, its window and its
// keys and values. Whatever else is in the batch, however its prompt was split into chunks and whether its
// prefix came from the cache, it does the same operations in the same order. torch's flash attention
// rounds a row differently depending on the chunk's length (tail rows and key blocks), which moved prompt
// logprobs by up to 0.1 nats under load once bf16 activations amplified it.
//
// Keys are visited in blocks of kKeyBlock positions aligned to absolute positions (0, 32, 64, ...), with
// an online softmax: a row keeps its running max, sum and weighted sum of values per head, and rescales
// them at each block boundary it crosses. The boundaries are absolute, so a row's rescaling points are
// the same in any tile. Consecutive rows of one sequence (a prefill chunk, a draft) form a tile that
// walks the context block by block: a block's K and V rows are read from memory once per tile and reused
// from cache by every row of it, and a row's scores never outgrow one block (the old whole-context score
// buffer spilled out of cache on long prompts).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "isa.h"

namespace ember {
namespace {

constexpr int64_t kTile = 16;
constexpr int64_t kKeyBlock = 32;

constexpr int kScoreKeys = 16;  // keys per pass of block_scores

// Vectors of kWidth floats (GCC vector extension, no intrinsics), one register of level I: AVX-512 16,
// AVX2 8, scalar (SSE2, in every x86-64) 4. The kernels below keep at most ~12 of them live, which fits
// AVX2's 16 registers (64-byte vectors there were two registers each and spilled: 10x slower on Zen 3).
template <Isa I>
struct Lanes {
  static constexpr int kWidth = I == kAvx512 ? 16 : (I == kAvx2 ? 8 : 4);
  static constexpr int kValVecs = I == kAvx512 ? 4 : 2;  // value columns per pass of block_values
  static constexpr int kScoreVecs = kScoreKeys / kWidth;
  typedef float vf __attribute__((vector_size(kWidth * sizeof(float))));
};

// Scores of N heads of one row against one block of keys: s[n][j] = sum_d q[n][d] * kt[d][j], kt the
// block's keys of their shared KV head transposed to [D, kKeyBlock] (64-byte aligned). Each score is one
// chain of multiply-adds over d in order, whatever N, the other heads and the vector width: lanes run
// over keys.
template <Isa I, int N>
EMBER_INLINE void block_scores(const float* q, const float* kt, int64_t D, float* s) {
  using vf = typename Lanes<I>::vf;
  constexpr int kVW = Lanes<I>::kWidth, kScoreVecs = Lanes<I>::kScoreVecs;
  for (int64_t j0 = 0; j0 < kKeyBlock; j0 += kScoreKeys) {
    vf a[N][kScoreVecs] = {};
    for (int64_t d = 0; d < D; ++d) {
      vf k[kScoreVecs];
      for (int c = 0; c < kScoreVecs; ++c) k[c] = *reinterpret_cast<const vf*>(kt + d * kKeyBlock + j0 + c * kVW);
      for (int n = 0; n < N; ++n) {
        const float qd = q[n * D + d];
        for (int c = 0; c < kScoreVecs; ++c) a[n][c] += qd * k[c];
      }
    }
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < kScoreVecs; ++c) *reinterpret_cast<vf*>(s + n * kKeyBlock + j0 + c * kVW) = a[n][c];
  }
}

template <typename V>
EMBER_INLINE V loadv(const float* p) {
  V x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

template <typename V>
EMBER_INLINE void storev(float* p, V x) { std::memcpy(p, &x, sizeof x); }

// n float16 values (IEEE binary16 bits) widened exactly to float32: the vector levels 8 per F16C
// instruction (every AVX2 CPU has it).
EMBER_INLINE void widen_tail(const uint16_t* src, float* dst, int64_t i, int64_t n) {
  for (; i < n; ++i) dst[i] = static_cast<float>(c10::Half(src[i], c10::Half::from_bits()));
}

EMBER_TARGET_AVX2 EMBER_INLINE void widen_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  widen_tail(src, dst, i, n);
}

template <Isa I>
void widen(const uint16_t* src, float* dst, int64_t n);
template <>
__attribute__((noinline)) void widen<kScalar>(const uint16_t* src, float* dst, int64_t n) {
  widen_tail(src, dst, 0, n);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX2 void widen<kAvx2>(const uint16_t* src, float* dst, int64_t n) {
  widen_f16c(src, dst, n);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX512 void widen<kAvx512>(const uint16_t* src, float* dst, int64_t n) {
  widen_f16c(src, dst, n);
}

// acc[n][d] += p[n][j] * v_j[d] for j = jlo..jhi-1 in order, for N heads sharing one KV head (vrows[j] + voff:
// their values at block position j). Every element of acc is one chain of multiply-adds over j, kept in
// registers for kValVecs vectors of columns (then one, then single columns) at a time.
template <Isa I, int N>
EMBER_INLINE void block_values(const float* p, const float* const* vrows, int64_t voff, int64_t jlo, int64_t jhi,
                               int64_t D, float* acc) {
  using vf = typename Lanes<I>::vf;
  constexpr int kVW = Lanes<I>::kWidth, kValVecs = Lanes<I>::kValVecs;
  constexpr int64_t W = kValVecs * kVW;
  int64_t d0 = 0;
  for (; d0 + W <= D; d0 += W) {
    vf a[N][kValVecs];
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < kValVecs; ++c) a[n][c] = loadv<vf>(acc + n * D + d0 + kVW * c);
    for (int64_t j = jlo; j < jhi; ++j) {
      const float* v = vrows[j] + voff + d0;
      vf vv[kValVecs];
      for (int c = 0; c < kValVecs; ++c) vv[c] = loadv<vf>(v + kVW * c);
      for (int n = 0; n < N; ++n) {
        const float pj = p[n * kKeyBlock + j];
        for (int c = 0; c < kValVecs; ++c) a[n][c] += pj * vv[c];
      }
    }
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < kValVecs; ++c) storev(acc + n * D + d0 + kVW * c, a[n][c]);
  }
  for (; d0 + kVW <= D; d0 += kVW) {
    vf a[N];
    for (int n = 0; n < N; ++n) a[n] = loadv<vf>(acc + n * D + d0);
    for (int64_t j = jlo; j < jhi; ++j) {
      const vf v = loadv<vf>(vrows[j] + voff + d0);
      for (int n = 0; n < N; ++n) a[n] += p[n * kKeyBlock + j] * v;
    }
    for (int n = 0; n < N; ++n) storev(acc + n * D + d0, a[n]);
  }
  for (; d0 < D; ++d0) {
    for (int n = 0; n < N; ++n) {
      float a = acc[n * D + d0];
      for (int64_t j = jlo; j < jhi; ++j) a += p[n * kKeyBlock + j] * vrows[j][voff + d0];
      acc[n * D + d0] = a;
    }
  }
}

// One block of keys for one row: updates the row's running max m[H], sum l[H] and weighted values
// acc[H * D] with the keys of block positions jlo..jhi-1 (kt: the block's keys as [KV, D, kKeyBlock];
// vrows[j]: the V cache row of block position j). s: [H, kKeyBlock] scratch, 64-byte aligned. `first`: the
// row's first block (nothing to rescale yet). Compiled out of line per level (row_block<I> below), so the
// compiler cannot interleave rows: a row's instructions are the same whichever rows share its tile.
template <Isa I>
EMBER_INLINE void row_block_body(const float* q, const float* kt, const float* const* vrows, int64_t jlo,
                                 int64_t jhi, bool first, int64_t H, int64_t G, int64_t D, float* m, float* l,
                                 float* acc, float* s) {
  // Heads sharing a KV head go through the kernel together, four at most: how a row's heads are grouped
  // depends on the model's shape only.
  for (int64_t h = 0; h < H;) {
    const int64_t n = std::min<int64_t>(4, G - h % G);
    const float* k = kt + (h / G) * D * kKeyBlock;
    float* sh = s + h * kKeyBlock;
    switch (n) {
      case 1: block_scores<I, 1>(q + h * D, k, D, sh); break;
      case 2: block_scores<I, 2>(q + h * D, k, D, sh); break;
      case 3: block_scores<I, 3>(q + h * D, k, D, sh); break;
      default: block_scores<I, 4>(q + h * D, k, D, sh); break;
    }
    h += n;
  }
  for (int64_t h = 0; h < H; ++h) {
    // Whole-block loops with the positions outside jlo..jhi neutralised: fixed trip counts, so exp and the
    // sum vectorize the same way for every row.
    float* sh = s + h * kKeyBlock;
    for (int64_t j = 0; j < kKeyBlock; ++j) sh[j] = (j >= jlo && j < jhi) ? sh[j] : -3.0e38f;
    float mb = sh[0];
    for (int64_t j = 1; j < kKeyBlock; ++j) mb = std::max(mb, sh[j]);
    const float mn = first ? mb : std::max(m[h], mb);
    for (int64_t j = 0; j < kKeyBlock; ++j) sh[j] = std::exp(sh[j] - mn);
    for (int64_t j = 0; j < kKeyBlock; ++j) sh[j] = (j >= jlo && j < jhi) ? sh[j] : 0.f;
    float sum = 0.f;
    for (int64_t j = 0; j < kKeyBlock; ++j) sum += sh[j];
    float* a = acc + h * D;
    if (first) {
      l[h] = sum;
      std::fill(a, a + D, 0.f);
    } else {
      const float scale = std::exp(m[h] - mn);
      l[h] = l[h] * scale + sum;
      for (int64_t d = 0; d < D; ++d) a[d] *= scale;
    }
    m[h] = mn;
  }
  for (int64_t h = 0; h < H;) {
    const int64_t n = std::min<int64_t>(4, G - h % G);
    const float* p = s + h * kKeyBlock;
    const int64_t voff = (h / G) * D;
    switch (n) {
      case 1: block_values<I, 1>(p, vrows, voff, jlo, jhi, D, acc + h * D); break;
      case 2: block_values<I, 2>(p, vrows, voff, jlo, jhi, D, acc + h * D); break;
      case 3: block_values<I, 3>(p, vrows, voff, jlo, jhi, D, acc + h * D); break;
      default: block_values<I, 4>(p, vrows, voff, jlo, jhi, D, acc + h * D); break;
    }
    h += n;
  }
}

EMBER_FOR_EACH_ISA(void, row_block,
                   (const float* q, const float* kt, const float* const* vrows, int64_t jlo, int64_t jhi,
                    bool first, int64_t H, int64_t G, int64_t D, float* m, float* l, float* acc, float* s),
                   row_block_body<I>, (q, kt, vrows, jlo, jhi, first, H, G, D, m, l, acc, s))

}  // namespace

// q: [B, H, D] float32, already scaled by 1/sqrt(D). k_cache, v_cache: [slots, KV * D], float32 or float16.
// tables: [B, max_blocks] int64 block ids. lens: [B] int64 context lengths (>= 1). window: 0 attends the
// whole context; w > 0 attends only the last w positions (the query at position p = len - 1 sees keys
// p - w + 1 .. p, Gemma's sliding layers). Returns [B, H, D].
namespace {

template <Isa I, typename T>
torch::Tensor attend(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor tables,
                     torch::Tensor lens, int64_t block_size, int64_t n_kv_heads, int64_t window) {
  TORCH_CHECK(tables.dtype() == torch::kInt64 && lens.dtype() == torch::kInt64, "int64 tables and lens");
  q = q.contiguous();
  k_cache = k_cache.contiguous();
  v_cache = v_cache.contiguous();
  tables = tables.contiguous();
  lens = lens.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KV = n_kv_heads, G = H / KV, width = KV * D, max_blocks = tables.size(1);
  TORCH_CHECK(H % KV == 0 && k_cache.size(1) == width && v_cache.size(1) == width, "shape mismatch");
  TORCH_CHECK(window >= 0, "window must be >= 0");
  const int64_t slots = k_cache.size(0);
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const T* kp = static_cast<const T*>(k_cache.data_ptr());
  const T* vp = static_cast<const T*>(v_cache.data_ptr());
  // float32 V rows are read in place; 16-bit ones are widened once per block into vbuf.
  constexpr bool wide = std::is_same_v<T, float>;
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= max_blocks * block_size, "context length outside the block table");
  }
  // Work items are tiles of up to kTile consecutive rows over the same context (a prefill chunk's rows,
  // or a draft's). Tiling only decides which rows share the reads of a key block (see row_block).
  std::vector<int64_t> tile_start;
  for (int64_t b = 0; b < B;) {
    tile_start.push_back(b);
    int64_t e = b + 1;
    while (e < B && e - b < kTile && lp[e] == lp[e - 1] + 1 &&
           std::equal(tp + e * max_blocks, tp + (e + 1) * max_blocks, tp + b * max_blocks)) {
      ++e;
    }
    b = e;
  }
  const int64_t n_tiles = static_cast<int64_t>(tile_start.size());
  tile_start.push_back(B);
  // A prefill chunk's tiles grow longer one by one, so contiguous halves would give one thread three
  // quarters of the work: work item i takes tiles from both ends in turn (0, last, 1, last - 1, ...).
  at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(kTile * H * D), m(kTile * H), l(kTile * H);
    // Scores of one row and block [H, kKeyBlock], and the block's keys transposed [KV, D, kKeyBlock],
    // both 64-byte aligned.
    std::vector<float> s(H * kKeyBlock + KV * D * kKeyBlock + 16);
    float* sp = s.data() + ((16 - (reinterpret_cast<uintptr_t>(s.data()) / sizeof(float)) % 16) % 16);
    float* kt = sp + H * kKeyBlock;
    const float* vrows[kKeyBlock];
    std::vector<float> vbuf(wide ? 0 : kKeyBlock * width), krow(wide ? 0 : width);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t tile = (i % 2 == 0) ? i / 2 : n_tiles - 1 - i / 2;
      const int64_t b0 = tile_start[tile], R = tile_start[tile + 1] - b0;
      const int64_t* table = tp + b0 * max_blocks;
      // Row r of the tile attends positions first[r] .. lp[b0 + r] - 1.
      int64_t first[kTile];
      int64_t hi = 0, lo = lp[b0];
      for (int64_t r = 0; r < R; ++r) {
        first[r] = window > 0 ? std::max<int64_t>(0, lp[b0 + r] - window) : 0;
        hi = std::max(hi, lp[b0 + r]);
        lo = std::min(lo, first[r]);
      }
      for (int64_t t0 = lo / kKeyBlock * kKeyBlock; t0 < hi; t0 += kKeyBlock) {
        // Positions outside every row's range get zero keys: finite scores, masked in row_block.
        for (int64_t j = 0; j < kKeyBlock; ++j) {
          const int64_t t = t0 + j;
          if (t < lo || t >= hi) {
            for (int64_t e = 0; e < width; ++e) kt[e * kKeyBlock + j] = 0.f;
            continue;
          }
          const int64_t slot = table[t / block_size] * block_size + t % block_size;
          TORCH_CHECK(slot >= 0 && slot < slots, "block id outside the cache");
          if constexpr (wide) {
            const float* k = kp + slot * width;
            for (int64_t e = 0; e < width; ++e) kt[e * kKeyBlock + j] = k[e];
            vrows[j] = vp + slot * width;
          } else {
            widen<I>(kp + slot * width, krow.data(), width);
            for (int64_t e = 0; e < width; ++e) kt[e * kKeyBlock + j] = krow[e];
            float* w = vbuf.data() + j * width;
            widen<I>(vp + slot * width, w, width);
            vrows[j] = w;
          }
        }
        for (int64_t r = 0; r < R; ++r) {
          const int64_t jlo = std::max(t0, first[r]) - t0, jhi = std::min(t0 + kKeyBlock, lp[b0 + r]) - t0;
          if (jlo >= jhi) continue;
          row_block<I>(qp + (b0 + r) * H * D, kt, vrows, jlo, jhi, first[r] >= t0, H, G, D, m.data() + r * H,
                    l.data() + r * H, acc.data() + r * H * D, sp);
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t h = 0; h < H; ++h) {
          float* o = op + ((b0 + r) * H + h) * D;
          const float inv = 1.f / l[r * H + h];
          const float* a = acc.data() + (r * H + h) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
        }
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace ember

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor lens, int64_t block_size,
                                     int64_t n_kv_heads, int64_t window, int64_t isa) {
  using namespace ember;
  TORCH_CHECK(q.dtype() == torch::kFloat32, "q must be float32");
  TORCH_CHECK(k_cache.dtype() == v_cache.dtype(), "K and V caches must share a dtype");
  const bool wide = k_cache.dtype() == torch::kFloat32;
  TORCH_CHECK(wide || k_cache.dtype() == torch::kFloat16, "KV cache must be float32 or float16");
  return dispatch_isa(isa, "paged_decode_attention", [&](auto level) {
    constexpr Isa I = decltype(level)::value;
    return wide ? attend<I, float>(q, k_cache, v_cache, tables, lens, block_size, n_kv_heads, window)
                : attend<I, uint16_t>(q, k_cache, v_cache, tables, lens, block_size, n_kv_heads, window);
  });
}
