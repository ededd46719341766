// y[M, N] = x[M, K] @ W^T with W kept in its GGUF block layout (raw bytes viewing the mapped file).
//
// Every format is read through one shape: a 32-wide block of signed int8 q, two scales (first and second
// 16 values; equal except for Q6_K, whose scales cover 16 values) and an offset, w = scale * q + offset.
// Activations are quantized once per call to int8 blocks of 32 (x ~ dx * qx) with the block's exact float
// sum kept for the offset term: dot = sum_b dx_b * (lo_b * <q, qx>_lo + hi_b * <q, qx>_hi) + off_b * sum_b(x).
//
// A tile of weight rows is decoded once into scratch and then dotted with every activation row. Each
// (row, column) result is computed by the same instruction sequence whatever M is and whichever tile or
// thread the row lands in, so a row's numbers never depend on what shares its batch (for a fixed ISA).
// Integer products are exact; the ISAs differ only in how the per-lane float sums are reduced.
//
// Paths (isa.h chooses one per call): scalar decodes every row and dots it in plain C++; AVX2 stages rows
// unsigned for maddubs (Q8_0 signed) and, at one activation row on a 32-wide format, dots each weight row
// straight from its bytes (the GEMV: the same arithmetic as a staged tile); AVX-512 stages rows as
// q ^ 0x80 for VNNI's dpbusd.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "block_formats.h"
#include "isa.h"
#include "simd_avx2.h"

namespace ember {
namespace {

inline float f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// One decoded row: q[K], lane scales s8[K/32 * 8] (lanes 0-3 cover values 0-15 of a block, lanes 4-7
// values 16-31: the int32 lanes of a 32-byte dot product) and off[K/32].
// The AVX-512 path decodes q + 128 (unsigned, as dpbusd wants its first operand; stored as q ^ 0x80) and
// starts each lane's integer sum at the activation side's -128 * (sum of the lane's four x) to take the
// 128 back out: the same integer as the signed product, with nothing extra per weight row.
struct RowView {
  int8_t* q;
  float* s8;
  float* off;
};

EMBER_INLINE void set_scales(float* s8, float lo, float hi) {
  for (int i = 0; i < 4; ++i) s8[i] = lo;
  for (int i = 4; i < 8; ++i) s8[i] = hi;
}

// K-quants pack 8 six-bit (scale, min) pairs into 12 bytes.
EMBER_INLINE void scale_min_k4(int j, const uint8_t* s, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Decodes one stored block (32 or 256 values) into `out` starting at its block index `b32`: signed
// q = n - bias, each 32 values' two lane scales and offset.
template <int64_t qtype>
EMBER_INLINE void unpack_block(const uint8_t* p, RowView out, int64_t b32) {
  constexpr BlockFormat F = kFormat<qtype>;
  int8_t* q = out.q + b32 * kQK;
  float* s8 = out.s8 + b32 * 8;
  float* off = out.off + b32;
  if constexpr (qtype == Q4_0 || qtype == Q4_1) {  // Q4_1: w = d * n + m, held as d * (n - 8) + (m + 8d)
    const float d = f16(p + F.scale_at);
    const uint8_t* qs = p + F.quants_at;
    for (int j = 0; j < 16; ++j) {
      q[j] = static_cast<int8_t>((qs[j] & 0x0F) - F.bias);
      q[j + 16] = static_cast<int8_t>((qs[j] >> 4) - F.bias);
    }
    set_scales(s8, d, d);
    off[0] = F.has_offset() ? f16(p + F.min_at) + static_cast<float>(F.bias) * d : 0.f;
  } else if constexpr (qtype == Q5_0) {
    const float d = f16(p + F.scale_at);
    uint32_t qh;
    std::memcpy(&qh, p + F.high_at, 4);
    const uint8_t* qs = p + F.quants_at;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
      const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      q[j] = static_cast<int8_t>(lo - F.bias);
      q[j + 16] = static_cast<int8_t>(hi - F.bias);
    }
    set_scales(s8, d, d);
    off[0] = 0.f;
  } else if constexpr (qtype == Q8_0) {
    const float d = f16(p + F.scale_at);
    std::memcpy(q, p + F.quants_at, kQK);
    set_scales(s8, d, d);
    off[0] = 0.f;
  } else if constexpr (qtype == Q4_K || qtype == Q5_K) {
    // w = d*sc * n - dmin*mn, n in 0..15 (0..31), held as d*sc * (n - c) + (c*d*sc - dmin*mn), c = bias.
    const float d = f16(p + F.scale_at), dmin = f16(p + F.min_at);
    const uint8_t* sc = p + F.scales_at;
    const uint8_t* qs = p + F.quants_at;
    for (int j = 0; j < 4; ++j) {
      const uint8_t* ql = qs + 32 * j;
      for (int half = 0; half < 2; ++half) {
        int sub = 2 * j + half, s, mn;
        scale_min_k4(sub, sc, &s, &mn);
        int8_t* qq = q + sub * kQK;
        for (int l = 0; l < 32; ++l) {
          int n = half ? (ql[l] >> 4) : (ql[l] & 0x0F);
          if constexpr (F.high_at != kAbsent) n |= ((p[F.high_at + l] >> sub) & 1) << 4;
          qq[l] = static_cast<int8_t>(n - F.bias);
        }
        const float ds = d * static_cast<float>(s);
        set_scales(s8 + 8 * sub, ds, ds);
        off[sub] = static_cast<float>(F.bias) * ds - dmin * static_cast<float>(mn);
      }
    }
  } else {
    static_assert(qtype == Q6_K, "every format in block_formats.h has a decoder");
    // ql: the low 4 bits, qh: the top 2, int8 scales (one per 16 values).
    const uint8_t* ql = p + F.quants_at;
    const uint8_t* qh = p + F.high_at;
    const int8_t* sc = reinterpret_cast<const int8_t*>(p + F.scales_at);
    const float d = f16(p + F.scale_at);
    for (int h = 0; h < 2; ++h) {
      for (int r = 0; r < 4; ++r) {
        const int sub = 4 * h + r;
        const uint8_t* l4 = ql + 64 * h + (r & 1) * 32;
        const uint8_t* h2 = qh + 32 * h;
        int8_t* qq = q + sub * kQK;
        for (int l = 0; l < 32; ++l) {
          const int lo = (r < 2) ? (l4[l] & 0x0F) : (l4[l] >> 4);
          const int hi = (h2[l] >> (2 * r)) & 3;
          qq[l] = static_cast<int8_t>((lo | (hi << 4)) - F.bias);
        }
        set_scales(s8 + 8 * sub, d * sc[8 * h + 2 * r], d * sc[8 * h + 2 * r + 1]);
        off[sub] = 0.f;
      }
    }
  }
}

template <int64_t qtype>
EMBER_INLINE void unpack_row(const uint8_t* row, int64_t K, RowView out) {
  constexpr BlockFormat F = kFormat<qtype>;
  for (int64_t b = 0; b < K / F.values; ++b) unpack_block<qtype>(row + b * F.bytes, out, b * (F.values / kQK));
}

// How a tile's weights are held for the dot products: SIGNED q (scalar; AVX2 for Q8_0), FLIPPED q ^ 0x80
// (AVX-512 VNNI, whose dpbusd wants an unsigned first operand) or UNSIGNED q + bias (AVX2's maddubs for
// every format with a bias: 0..63 at most, so a pair of products never saturates int16).
enum Staging { SIGNED, FLIPPED, UNSIGNED };

Staging staging_for(Isa isa, const BlockFormat& f) {
  if (isa == kAvx512) return FLIPPED;
  return isa == kAvx2 && f.bias > 0 ? UNSIGNED : SIGNED;
}

// A weight row decoded and held as `mode` says, in plain C++ (vectorized by the level that inlines it).
template <int64_t qtype>
EMBER_INLINE void stage_row_decoded_t(const uint8_t* row, int64_t K, RowView out, Staging mode) {
  unpack_row<qtype>(row, K, out);
  if (mode == FLIPPED)
    for (int64_t j = 0; j < K; ++j) out.q[j] = static_cast<int8_t>(out.q[j] ^ 0x80);
  if (mode == UNSIGNED)
    for (int64_t j = 0; j < K; ++j) out.q[j] = static_cast<int8_t>(out.q[j] + kFormat<qtype>.bias);
}

EMBER_INLINE void stage_row_decoded(int64_t qtype, const uint8_t* row, int64_t K, RowView out, Staging mode) {
  switch (qtype) {
    case Q4_0: return stage_row_decoded_t<Q4_0>(row, K, out, mode);
    case Q4_1: return stage_row_decoded_t<Q4_1>(row, K, out, mode);
    case Q5_0: return stage_row_decoded_t<Q5_0>(row, K, out, mode);
    case Q8_0: return stage_row_decoded_t<Q8_0>(row, K, out, mode);
    case Q4_K: return stage_row_decoded_t<Q4_K>(row, K, out, mode);
    case Q5_K: return stage_row_decoded_t<Q5_K>(row, K, out, mode);
    case Q6_K: return stage_row_decoded_t<Q6_K>(row, K, out, mode);
    default: TORCH_CHECK(false, "gguf kernels: unsupported GGML type ", qtype);
  }
}

// The 32-wide 4- and 8-bit formats SmolLM2 and most small models use, 32 values per few vector ops: the
// same values stage_row_decoded writes.
template <int64_t qtype>
EMBER_TARGET_AVX2 EMBER_INLINE void stage_row_32_wide(const uint8_t* row, int64_t K, RowView out, Staging mode) {
  constexpr BlockFormat F = kFormat<qtype>;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(mode == FLIPPED ? 0x80 : 0));
  // UNSIGNED keeps the 4-bit formats' stored n = q + bias (Q8_0 has no unsigned form and stays signed).
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(mode == UNSIGNED ? 0 : F.bias));
  for (int64_t b = 0; b < K / kQK; ++b) {
    const Block32 blk = load_block32<qtype>(row + b * F.bytes);
    const __m256i q = _mm256_sub_epi8(blk.n, bias);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q + b * kQK), _mm256_xor_si256(q, flip));
    _mm256_storeu_ps(out.s8 + 8 * b, _mm256_set1_ps(blk.d));
    out.off[b] = blk.off;
  }
}

EMBER_TARGET_AVX2 EMBER_INLINE void stage_row_vector(int64_t qtype, const uint8_t* row, int64_t K, RowView out,
                                                    Staging mode) {
  switch (qtype) {
    case Q4_0: return stage_row_32_wide<Q4_0>(row, K, out, mode);
    case Q4_1: return stage_row_32_wide<Q4_1>(row, K, out, mode);
    case Q8_0: return stage_row_32_wide<Q8_0>(row, K, out, mode);
    default: return stage_row_decoded(qtype, row, K, out, mode);
  }
}

// One weight row staged for level I's dot products (the scalar level decodes every format in plain C++;
// the vector levels' intrinsics cannot be inlined into it, hence no EMBER_FOR_EACH_ISA here).
template <Isa I>
void stage_row(int64_t qtype, const uint8_t* row, int64_t K, RowView out, Staging mode);
template <>
__attribute__((noinline)) void stage_row<kScalar>(int64_t qtype, const uint8_t* row, int64_t K, RowView out,
                                                  Staging mode) {
  stage_row_decoded(qtype, row, K, out, mode);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX2 void stage_row<kAvx2>(int64_t qtype, const uint8_t* row, int64_t K,
                                                                  RowView out, Staging mode) {
  stage_row_vector(qtype, row, K, out, mode);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX512 void stage_row<kAvx512>(int64_t qtype, const uint8_t* row, int64_t K,
                                                                      RowView out, Staging mode) {
  stage_row_vector(qtype, row, K, out, mode);
}

// One quantized activation row: xq[K], dx[K/32] and the exact float sum of each block's values.
struct ActView {
  const int8_t* q;
  const float* d;
  const float* sum;
  const int32_t* corr;    // -128 * each lane's sum of four q (see RowView)
  const int32_t* corr_c;  // -c * the same sums, c = the weights' bias (UNSIGNED staging only)
};

// The scalar level's dot product of a staged (SIGNED) row and an activation row.
float dot_row_scalar(const RowView& w, const ActView& x, int64_t nb) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float macc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* wq = w.q + b * kQK;
    const int8_t* xq = x.q + b * kQK;
    for (int lane = 0; lane < 8; ++lane) {
      int32_t s = 0;
      for (int j = 4 * lane; j < 4 * lane + 4; ++j) s += int32_t(wq[j]) * int32_t(xq[j]);
      acc[lane] += static_cast<float>(s) * (w.s8[8 * b + lane] * x.d[b]);
    }
    macc += w.off[b] * x.sum[b];
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + macc;
}

// sum_b off[b] * sum[b] in order: the offset term of every AVX2 dot product, one out-of-line body so that
// every caller rounds it alike. Compiled for AVX2 like its callers: legacy SSE code called while their ymm
// accumulators are live pays a transition penalty per instruction (10x on the AVX2 path at M = 512).
__attribute__((noinline)) EMBER_TARGET_AVX2 float offset_sum(const float* off, const float* sum, int64_t nb) {
  float m = 0.f;
  for (int64_t b = 0; b < nb; ++b) m += off[b] * sum[b];
  return m;
}

// y[m * ystride + n] = scale * dot(x[m], w[n]) for MR activation rows and NR staged weight rows, sharing
// their loads. Every pair's accumulator goes through the same operations in the same order as with
// MR = NR = 1 (and as matvec_row_avx2), so how rows are grouped never changes a result.
template <int MR, int NR, bool kSigned>
EMBER_TARGET_AVX2 void dot_tile_avx2(const RowView* w, const ActView* x, int64_t nb, float scale, float* y,
                                     int64_t ystride) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[NR];
    __m256 ws[NR];
    for (int n = 0; n < NR; ++n) {
      wv[n] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[n].q + b * kQK));
      ws[n] = _mm256_loadu_ps(w[n].s8 + 8 * b);
    }
    for (int m = 0; m < MR; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].q + b * kQK));
      const __m256i cx = kSigned ? _mm256_setzero_si256()
                                 : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].corr_c + 8 * b));
      const __m256 dx = _mm256_set1_ps(x[m].d[b]);
      for (int n = 0; n < NR; ++n) {
        const __m256 f = _mm256_cvtepi32_ps(dot_int8_lanes<kSigned>(wv[n], xv, cx));
        acc[m][n] = _mm256_fmadd_ps(f, _mm256_mul_ps(ws[n], dx), acc[m][n]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      y[m * ystride + n] = scale * (hsum_ps(acc[m][n]) + offset_sum(w[n].off, x[m].sum, nb));
}

// One weight row of a 32-wide format against one activation row, decoded in registers (no staging): the
// decode step's GEMV. Same values and operations as staging the row UNSIGNED (Q8_0: SIGNED) and running
// dot_tile_avx2<1, 1>. off: nb floats of scratch.
template <int64_t qtype>
EMBER_TARGET_AVX2 float matvec_row_avx2(const uint8_t* row, const ActView& x, int64_t nb, float* off) {
  constexpr BlockFormat F = kFormat<qtype>;
  constexpr bool kSigned = F.bias == 0;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Block32 blk = load_block32<qtype>(row + b * F.bytes);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kQK));
    const __m256i cx = kSigned ? _mm256_setzero_si256()
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr_c + 8 * b));
    off[b] = blk.off;
    const __m256 f = _mm256_cvtepi32_ps(dot_int8_lanes<kSigned>(blk.n, xv, cx));
    acc = _mm256_fmadd_ps(f, _mm256_mul_ps(_mm256_set1_ps(blk.d), _mm256_set1_ps(x.d[b])), acc);
  }
  return hsum_ps(acc) + offset_sum(off, x.sum, nb);
}

// dot_tile_avx2 for any MR <= 4, NR <= 2.
template <bool kSigned>
void dot_tile_avx2_any(int64_t mr, int64_t nr, const RowView* w, const ActView* x, int64_t nb, float scale,
                       float* y, int64_t ystride) {
#define EMBER_TILE(M_, N_) \
  if (mr == M_ && nr == N_) return dot_tile_avx2<M_, N_, kSigned>(w, x, nb, scale, y, ystride);
  EMBER_TILE(4, 2) EMBER_TILE(4, 1) EMBER_TILE(3, 2) EMBER_TILE(3, 1)
  EMBER_TILE(2, 2) EMBER_TILE(2, 1) EMBER_TILE(1, 2) EMBER_TILE(1, 1)
#undef EMBER_TILE
  TORCH_CHECK(false, "dot_tile_avx2: bad tile ", mr, "x", nr);
}

constexpr int64_t kTileRows = 16;  // weight rows decoded together, then dotted with every activation row

// acc[r] += sum_b offT[b][r] * sum[b] for the kTileRows rows of a tile at once (offT: the tile's offsets,
// transposed), so the offset term costs no horizontal sum per output.
EMBER_TARGET_AVX512 void add_offsets_avx512(const float* offT, const float* sum, int64_t nb, float* acc) {
  static_assert(kTileRows == 16, "one zmm of offsets per block");
  __m512 a = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) a = _mm512_fmadd_ps(_mm512_loadu_ps(offT + 16 * b), _mm512_set1_ps(sum[b]), a);
  _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_loadu_ps(acc), a));
}

// R weight rows against one activation row, sharing its loads; each row's accumulator sees exactly the
// operations it would see alone (R only interleaves them), so grouping never changes a result.
template <int R>
EMBER_TARGET_AVX512 void dot_rows_avx512vnni(const RowView* w, const ActView& x, int64_t nb, float* y) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i xv = _mm512_loadu_si512(x.q + b * kQK);
    __m512i xc = _mm512_loadu_si512(x.corr + 8 * b);
    __m512 dx = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(x.d[b])), _mm256_set1_ps(x.d[b + 1]), 1);
    for (int r = 0; r < R; ++r) {
      __m512i p = _mm512_dpbusd_epi32(xc, _mm512_loadu_si512(w[r].q + b * kQK), xv);
      acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(w[r].s8 + 8 * b)), dx, acc[r]);
    }
  }
  __m256 acc8[R];
  for (int r = 0; r < R; ++r) acc8[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm512_extractf32x8_ps(acc[r], 1));
  if (b < nb) {  // an odd block count: the last block on 256-bit VNNI
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * kQK));
    __m256i xc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr + 8 * b));
    __m256 dx = _mm256_set1_ps(x.d[b]);
    for (int r = 0; r < R; ++r) {
      __m256i p = _mm256_dpbusd_epi32(xc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r].q + b * kQK)), xv);
      acc8[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_loadu_ps(w[r].s8 + 8 * b)), dx, acc8[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum_ps(acc8[r]);
}

// Activation blocks begin..end-1 (flat over rows) to int8: q, scale, exact sum and lane corrections.
EMBER_INLINE void quantize_blocks_body(const float* px, int64_t begin, int64_t end, int8_t* pq, float* pd,
                                       float* ps, int32_t* pc) {
  for (int64_t i = begin; i < end; ++i) {
    const float* v = px + i * kQK;
    float amax = 0.f, sum = 0.f;
    for (int j = 0; j < kQK; ++j) {
      amax = std::max(amax, std::fabs(v[j]));
      sum += v[j];
    }
    const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int j = 0; j < kQK; ++j) pq[i * kQK + j] = static_cast<int8_t>(std::nearbyint(v[j] * inv));
    for (int j = 0; j < kQK / 4; ++j) {
      const int8_t* l = pq + i * kQK + 4 * j;
      pc[i * (kQK / 4) + j] = -128 * (int32_t(l[0]) + l[1] + l[2] + l[3]);
    }
    pd[i] = d;
    ps[i] = sum;
  }
}

EMBER_FOR_EACH_ISA(void, quantize_blocks,
                   (const float* px, int64_t begin, int64_t end, int8_t* pq, float* pd, float* ps, int32_t* pc),
                   quantize_blocks_body, (px, begin, end, pq, pd, ps, pc))

// Rows of decoded weights to float32: w = s * q + off.
EMBER_INLINE void dequantize_rows_body(int64_t qtype, const uint8_t* pw, int64_t wstride, const int64_t* ids,
                                       int64_t begin, int64_t end, int64_t K, float* po) {
  const int64_t nb = K / kQK;
  std::vector<int8_t> q(K);
  std::vector<float> s8(nb * 8), off(nb);
  for (int64_t i = begin; i < end; ++i) {
    stage_row_decoded(qtype, pw + ids[i] * wstride, K, {q.data(), s8.data(), off.data()}, SIGNED);
    float* y = po + i * K;
    for (int64_t j = 0; j < K; ++j) y[j] = s8[(j / kQK) * 8 + (j % kQK) / 4] * q[j] + off[j / kQK];
  }
}

EMBER_FOR_EACH_ISA(void, dequantize_rows,
                   (int64_t qtype, const uint8_t* pw, int64_t wstride, const int64_t* ids, int64_t begin,
                    int64_t end, int64_t K, float* po),
                   dequantize_rows_body, (qtype, pw, wstride, ids, begin, end, K, po))

}  // namespace
}  // namespace ember

using namespace ember;
// x [M, K] float32 -> int8 blocks of 32 (x ~ d * q) as {q [M, K], d [M, K/32], exact block sums [M, K/32],
// lane corrections -128 * (sum of each four q) [M, K/4]}: what gguf_matmul_int8 takes as its activations.
std::vector<torch::Tensor> quantize_activations_int8(torch::Tensor x, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32,
              "quantize_activations_int8: x must be float32 [M, K]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kQK == 0, "quantize_activations_int8: K must be a multiple of 32");
  const int64_t nb = K / kQK;
  auto xq = torch::empty({M, K}, torch::kInt8);
  auto xd = torch::empty({M, nb}, torch::kFloat32);
  auto xs = torch::empty({M, nb}, torch::kFloat32);
  auto xc = torch::empty({M, K / 4}, torch::kInt32);
  const float* px = x.data_ptr<float>();
  int8_t* pq = xq.data_ptr<int8_t>();
  float* pd = xd.data_ptr<float>();
  float* ps = xs.data_ptr<float>();
  int32_t* pc = xc.data_ptr<int32_t>();
  dispatch_isa(isa, "quantize_activations_int8", [&](auto level) {
    at::parallel_for(0, M * nb, 256, [&](int64_t begin, int64_t end) {
      quantize_blocks<decltype(level)::value>(px, begin, end, pq, pd, ps, pc);
    });
  });
  return {xq, xd, xs, xc};
}

// out[m, n] = scale * dot(x_m, W[rows[n]]) (rows empty: n itself), W in a GGUF block format, x as
// quantize_activations_int8 returned it. out may be a column slice of a wider tensor (unit column stride),
// so a fused projection's parts write straight into their columns.
void gguf_matmul_int8(torch::Tensor xq, torch::Tensor xd, torch::Tensor xs, torch::Tensor xc, torch::Tensor w,
                      int64_t qtype, torch::Tensor rows, double scale, torch::Tensor out, int64_t isa) {
  const int64_t M = xq.size(0), K = xq.size(1), nb = K / kQK;
  const BlockFormat& f = checked_format(qtype, "gguf_matmul_int8");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 2, "gguf_matmul_int8: w must be uint8 [N, row bytes]");
  TORCH_CHECK(K % f.values == 0 && w.size(1) == K / f.values * f.bytes,
              "gguf_matmul_int8: w's row bytes do not match K=", K, " for type ", qtype);
  TORCH_CHECK(w.stride(1) == 1, "gguf_matmul_int8: w rows must be contiguous");
  TORCH_CHECK(xq.scalar_type() == torch::kInt8 && xq.is_contiguous() && K % kQK == 0 &&
                  xd.numel() == M * nb && xs.numel() == M * nb && xc.numel() == M * (K / 4) && xd.is_contiguous() &&
                  xs.is_contiguous() && xc.is_contiguous() && xc.scalar_type() == torch::kInt32,
              "gguf_matmul_int8: pass quantize_activations_int8's four tensors unchanged");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.dim() == 2 && out.size(0) == M && out.stride(1) == 1,
              "gguf_matmul_int8: out must be float32 [M, N] with unit column stride");
  const int64_t N = out.size(1);
  const bool gather = rows.numel() > 0;
  TORCH_CHECK(gather ? rows.numel() == N && rows.scalar_type() == torch::kInt64 : w.size(0) == N,
              "gguf_matmul_int8: out columns must match W's rows (or rows' length)");
  const torch::Tensor rows_c = rows.contiguous();  // held: a temporary copy's pointer would dangle
  const int64_t* prow = gather ? rows_c.data_ptr<int64_t>() : nullptr;
  if (gather) {
    for (int64_t n = 0; n < N; ++n)
      TORCH_CHECK(prow[n] >= 0 && prow[n] < w.size(0), "gguf_matmul_int8: bad row index");
  }
  const Isa chosen = resolve_isa(isa, "gguf_matmul_int8");
  const Staging staging = staging_for(chosen, f);
  const uint8_t* pw = w.data_ptr<uint8_t>();
  const int64_t wstride = w.stride(0), ostride = out.stride(0);
  const int8_t* pq = xq.data_ptr<int8_t>();
  const float* pd = xd.data_ptr<float>();
  const float* ps = xs.data_ptr<float>();
  const int32_t* pc = xc.data_ptr<int32_t>();
  float* po = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  // UNSIGNED staging's lane corrections -c * sum(x) = corr >> (7 - log2 c): exact, corr being -128 * sum(x).
  std::vector<int32_t> corr_c;
  if (staging == UNSIGNED) {
    const int shift = 7 - __builtin_ctz(static_cast<unsigned>(f.bias));
    corr_c.resize(M * (K / 4));
    for (int64_t i = 0; i < M * (K / 4); ++i) corr_c[i] = pc[i] >> shift;
  }
  auto act = [&](int64_t m) {
    return ActView{pq + m * K, pd + m * nb, ps + m * nb, pc + m * (K / 4),
                   corr_c.empty() ? nullptr : corr_c.data() + m * (K / 4)};
  };
  // One activation row on AVX2 and a 32-wide 4- or 8-bit format: each weight row is decoded in registers
  // and dotted at once (decode's GEMV), the same arithmetic as the staged tiles below.
  const bool matvec = chosen == kAvx2 && M == 1 && (qtype == Q4_0 || qtype == Q4_1 || qtype == Q8_0);
  // Enough rows per task that each thread decodes whole tiles and the fork is worth it at M = 1.
  const int64_t grain = std::max<int64_t>(kTileRows, 65536 / std::max<int64_t>(K * M, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    if (matvec) {
      std::vector<float> offs(nb);
      const ActView a = act(0);
      for (int64_t n = begin; n < end; ++n) {
        const uint8_t* row = pw + (gather ? prow[n] : n) * wstride;
        const float v = qtype == Q4_0   ? matvec_row_avx2<Q4_0>(row, a, nb, offs.data())
                        : qtype == Q4_1 ? matvec_row_avx2<Q4_1>(row, a, nb, offs.data())
                                        : matvec_row_avx2<Q8_0>(row, a, nb, offs.data());
        po[n] = sc * v;
      }
      return;
    }
    std::vector<int8_t> q(kTileRows * K);
    std::vector<float> s8(kTileRows * nb * 8), off(kTileRows * nb);
    std::vector<float> offT(chosen == kAvx512 ? nb * kTileRows : 0);
    RowView tile[kTileRows];
    for (int64_t r = 0; r < kTileRows; ++r) tile[r] = {q.data() + r * K, s8.data() + r * nb * 8, off.data() + r * nb};
    for (int64_t t0 = begin; t0 < end; t0 += kTileRows) {
      const int64_t nt = std::min(kTileRows, end - t0);
      for (int64_t r = 0; r < nt; ++r) {
        const uint8_t* src = pw + (gather ? prow[t0 + r] : t0 + r) * wstride;
        switch (chosen) {
          case kAvx512: stage_row<kAvx512>(qtype, src, K, tile[r], staging); break;
          case kAvx2: stage_row<kAvx2>(qtype, src, K, tile[r], staging); break;
          default: stage_row<kScalar>(qtype, src, K, tile[r], staging); break;
        }
      }
      if (chosen == kAvx2) {
        // 4 activation rows x 2 weight rows per kernel call: 8 accumulators, each load used 2 or 4 times.
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          const int64_t mr = std::min<int64_t>(4, M - m0);
          const ActView a[4] = {act(m0), act(std::min(m0 + 1, M - 1)), act(std::min(m0 + 2, M - 1)),
                                act(std::min(m0 + 3, M - 1))};
          for (int64_t r0 = 0; r0 < nt; r0 += 2) {
            const int64_t nr = std::min<int64_t>(2, nt - r0);
            float* y = po + m0 * ostride + t0 + r0;
            if (staging == SIGNED) dot_tile_avx2_any<true>(mr, nr, tile + r0, a, nb, sc, y, ostride);
            else dot_tile_avx2_any<false>(mr, nr, tile + r0, a, nb, sc, y, ostride);
          }
        }
        continue;
      }
      if (chosen == kAvx512 && f.has_offset()) {
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t r = 0; r < kTileRows; ++r) offT[b * kTileRows + r] = r < nt ? tile[r].off[b] : 0.f;
      }
      for (int64_t m = 0; m < M; ++m) {
        const ActView a = act(m);
        float* y = po + m * ostride + t0;
        if (chosen == kAvx512) {
          alignas(64) float v[kTileRows] = {};
          int64_t r = 0;
          for (; r + 4 <= nt; r += 4) dot_rows_avx512vnni<4>(tile + r, a, nb, v + r);
          for (; r < nt; ++r) dot_rows_avx512vnni<1>(tile + r, a, nb, v + r);
          if (f.has_offset()) add_offsets_avx512(offT.data(), a.sum, nb, v);
          for (r = 0; r < nt; ++r) y[r] = sc * v[r];
        } else {
          for (int64_t r = 0; r < nt; ++r) y[r] = sc * dot_row_scalar(tile[r], a, nb);
        }
      }
    }
  });
}

// Rows `ids` of W as float32 [len(ids), K]: an embedding lookup that dequantizes only what it gathers.
torch::Tensor gguf_dequantize_rows(torch::Tensor w, int64_t qtype, torch::Tensor ids, int64_t K, int64_t isa) {
  const BlockFormat& f = checked_format(qtype, "gguf_dequantize_rows");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 2 && w.stride(1) == 1 && K % f.values == 0 &&
                  w.size(1) == K / f.values * f.bytes,
              "gguf_dequantize_rows: w must be uint8 [N, row bytes] matching K");
  ids = ids.to(torch::kInt64).contiguous();
  const int64_t n = ids.numel();
  auto out = torch::empty({n, K}, torch::kFloat32);
  const int64_t* pid = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(pid[i] >= 0 && pid[i] < w.size(0), "gguf_dequantize_rows: bad id");
  const uint8_t* pw = w.data_ptr<uint8_t>();
  float* po = out.data_ptr<float>();
  const int64_t wstride = w.stride(0);
  dispatch_isa(isa, "gguf_dequantize_rows", [&](auto level) {
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      dequantize_rows<decltype(level)::value>(qtype, pw, wstride, pid, begin, end, K, po);
    });
  });
  return out;
}

std::vector<int64_t> cpu_isas() { return available_isas(); }

// A whole (possibly fused) Linear in one call: x quantized once, then each part into its own columns.
torch::Tensor gguf_linear_int8(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                               std::vector<torch::Tensor> rows, std::vector<double> scales, int64_t isa) {
  TORCH_CHECK(ws.size() == qtypes.size() && ws.size() == rows.size() && ws.size() == scales.size(),
              "gguf_linear_int8: one qtype, row index and scale per part");
  auto act = quantize_activations_int8(x, isa);
  int64_t n = 0;
  for (size_t i = 0; i < ws.size(); ++i) n += rows[i].numel() ? rows[i].numel() : ws[i].size(0);
  auto out = torch::empty({x.size(0), n}, torch::kFloat32);
  int64_t col = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    const int64_t ni = rows[i].numel() ? rows[i].numel() : ws[i].size(0);
    gguf_matmul_int8(act[0], act[1], act[2], act[3], ws[i], qtypes[i], rows[i], scales[i], out.narrow(1, col, ni),
                     isa);
    col += ni;
  }
  return out;
}
