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
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t QK = 32;  // values per decoded block
// ggml's type ids (gguf.GGMLQuantizationType).
enum QType : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };
enum Isa : int64_t { PORTABLE = 0, AVX2 = 1, AVX512VNNI = 2 };

struct Format {
  int64_t block_values;  // values per stored block
  int64_t block_bytes;
};

Format format_of(int64_t qtype) {
  switch (qtype) {
    case Q4_0: return {32, 18};
    case Q4_1: return {32, 20};
    case Q5_0: return {32, 22};
    case Q8_0: return {32, 34};
    case Q4_K: return {256, 144};
    case Q5_K: return {256, 176};
    case Q6_K: return {256, 210};
    default: TORCH_CHECK(false, "quant_matmul: unsupported GGML type ", qtype);
  }
}

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

inline void set_scales(float* s8, float lo, float hi) {
  for (int i = 0; i < 4; ++i) s8[i] = lo;
  for (int i = 4; i < 8; ++i) s8[i] = hi;
}

// K-quants pack 8 six-bit (scale, min) pairs into 12 bytes.
inline void scale_min_k4(int j, const uint8_t* s, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Decodes one stored block (32 or 256 values) into `out` starting at its block index `b32`.
template <int64_t qtype>
inline void decode_block(const uint8_t* p, RowView out, int64_t b32) {
  int8_t* q = out.q + b32 * QK;
  float* s8 = out.s8 + b32 * 8;
  float* off = out.off + b32;
  switch (qtype) {
    case Q4_0: {
      float d = f16(p);
      for (int j = 0; j < 16; ++j) {
        q[j] = static_cast<int8_t>((p[2 + j] & 0x0F) - 8);
        q[j + 16] = static_cast<int8_t>((p[2 + j] >> 4) - 8);
      }
      set_scales(s8, d, d);
      off[0] = 0.f;
      return;
    }
    case Q4_1: {  // w = d * n + m, n in 0..15, held as d * (n - 8) + (m + 8d)
      float d = f16(p), m = f16(p + 2);
      for (int j = 0; j < 16; ++j) {
        q[j] = static_cast<int8_t>((p[4 + j] & 0x0F) - 8);
        q[j + 16] = static_cast<int8_t>((p[4 + j] >> 4) - 8);
      }
      set_scales(s8, d, d);
      off[0] = m + 8.f * d;
      return;
    }
    case Q5_0: {
      float d = f16(p);
      uint32_t qh;
      std::memcpy(&qh, p + 2, 4);
      const uint8_t* qs = p + 6;
      for (int j = 0; j < 16; ++j) {
        int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        q[j] = static_cast<int8_t>(lo - 16);
        q[j + 16] = static_cast<int8_t>(hi - 16);
      }
      set_scales(s8, d, d);
      off[0] = 0.f;
      return;
    }
    case Q8_0: {
      float d = f16(p);
      std::memcpy(q, p + 2, 32);
      set_scales(s8, d, d);
      off[0] = 0.f;
      return;
    }
    case Q4_K:
    case Q5_K: {  // w = d*sc * n - dmin*mn, n in 0..15 (0..31), held as d*sc * (n - c) + (c*d*sc - dmin*mn)
      const bool five = qtype == Q5_K;
      float d = f16(p), dmin = f16(p + 2);
      const uint8_t* sc = p + 4;
      const uint8_t* qh = p + 16;
      const uint8_t* qs = p + (five ? 48 : 16);
      const int c = five ? 16 : 8;
      for (int j = 0; j < 4; ++j) {
        const uint8_t* ql = qs + 32 * j;
        for (int half = 0; half < 2; ++half) {
          int sub = 2 * j + half, s, mn;
          scale_min_k4(sub, sc, &s, &mn);
          int8_t* qq = q + sub * QK;
          for (int l = 0; l < 32; ++l) {
            int n = half ? (ql[l] >> 4) : (ql[l] & 0x0F);
            if (five) n |= ((qh[l] >> sub) & 1) << 4;
            qq[l] = static_cast<int8_t>(n - c);
          }
          float ds = d * static_cast<float>(s);
          set_scales(s8 + 8 * sub, ds, ds);
          off[sub] = static_cast<float>(c) * ds - dmin * static_cast<float>(mn);
        }
      }
      return;
    }
    case Q6_K: {  // ql[128], qh[64], int8 scales[16] (one per 16 values), d
      const uint8_t* ql = p;
      const uint8_t* qh = p + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(p + 192);
      float d = f16(p + 208);
      for (int h = 0; h < 2; ++h) {
        for (int r = 0; r < 4; ++r) {
          int sub = 4 * h + r;
          const uint8_t* l4 = ql + 64 * h + (r & 1) * 32;
          const uint8_t* h2 = qh + 32 * h;
          int8_t* qq = q + sub * QK;
          for (int l = 0; l < 32; ++l) {
            int lo = (r < 2) ? (l4[l] & 0x0F) : (l4[l] >> 4);
            int hi = (h2[l] >> (2 * r)) & 3;
            qq[l] = static_cast<int8_t>((lo | (hi << 4)) - 32);
          }
          set_scales(s8 + 8 * sub, d * sc[8 * h + 2 * r], d * sc[8 * h + 2 * r + 1]);
          off[sub] = 0.f;
        }
      }
      return;
    }
    default: TORCH_CHECK(false, "quant_matmul: unsupported GGML type ", qtype);
  }
}

template <int64_t qtype>
void decode_row_t(const uint8_t* row, int64_t K, RowView out) {
  const Format f = format_of(qtype);
  const int64_t per = f.block_values / QK;
  for (int64_t b = 0; b < K / f.block_values; ++b) decode_block<qtype>(row + b * f.block_bytes, out, b * per);
}

// How a tile's weights are held for the dot products: SIGNED q (portable; AVX2 for Q8_0), FLIPPED q ^ 0x80
// (AVX-512 VNNI, whose dpbusd wants an unsigned first operand) or UNSIGNED q + unsigned_bias(qtype) (AVX2's
// maddubs for every format but Q8_0: 0..63 at most, so a pair of products never saturates int16).
enum Staging { SIGNED, FLIPPED, UNSIGNED };

// The c with q + c >= 0 for every q of the format (0: none, the format stays signed).
int unsigned_bias(int64_t qtype) {
  switch (qtype) {
    case Q4_0: case Q4_1: case Q4_K: return 8;
    case Q5_0: case Q5_K: return 16;
    case Q6_K: return 32;
    default: return 0;
  }
}

// The 32-wide formats SmolLM2 and most small models use, decoded 32 values per few vector ops; the same
// values decode_block<> writes.
__attribute__((target("avx2,f16c,fma"))) bool decode_row_avx2(int64_t qtype, const uint8_t* row, int64_t K,
                                                             RowView out, Staging mode) {
  if (qtype != Q4_0 && qtype != Q4_1 && qtype != Q8_0) return false;
  const Format f = format_of(qtype);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(mode == FLIPPED ? 0x80 : 0));
  // UNSIGNED keeps the 4-bit formats' raw n = q + 8 (Q8_0 has no unsigned form and stays signed).
  const __m256i eight = _mm256_set1_epi8(mode == UNSIGNED ? 0 : 8);
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t b = 0; b < K / QK; ++b) {
    const uint8_t* p = row + b * f.block_bytes;
    uint16_t h;
    std::memcpy(&h, p, 2);
    const float d = _cvtsh_ss(h);
    __m256i q;
    if (qtype == Q8_0) {
      q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      out.off[b] = 0.f;
    } else {
      const uint8_t* qs = p + (qtype == Q4_1 ? 4 : 2);
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
      __m256i n = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low), _mm_and_si128(v, low));
      q = _mm256_sub_epi8(n, eight);
      if (qtype == Q4_1) {
        std::memcpy(&h, p + 2, 2);
        out.off[b] = _cvtsh_ss(h) + 8.f * d;
      } else {
        out.off[b] = 0.f;
      }
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q + b * QK), _mm256_xor_si256(q, bias));
    _mm256_storeu_ps(out.s8 + 8 * b, _mm256_set1_ps(d));
  }
  return true;
}

void decode_row(int64_t qtype, const uint8_t* row, int64_t K, RowView out) {
  switch (qtype) {
    case Q4_0: return decode_row_t<Q4_0>(row, K, out);
    case Q4_1: return decode_row_t<Q4_1>(row, K, out);
    case Q5_0: return decode_row_t<Q5_0>(row, K, out);
    case Q8_0: return decode_row_t<Q8_0>(row, K, out);
    case Q4_K: return decode_row_t<Q4_K>(row, K, out);
    case Q5_K: return decode_row_t<Q5_K>(row, K, out);
    case Q6_K: return decode_row_t<Q6_K>(row, K, out);
    default: TORCH_CHECK(false, "quant_matmul: unsupported GGML type ", qtype);
  }
}

bool has_offset(int64_t qtype) { return qtype == Q4_1 || qtype == Q4_K || qtype == Q5_K; }

// One quantized activation row: xq[K], dx[K/32] and the exact float sum of each block's values.
struct ActView {
  const int8_t* q;
  const float* d;
  const float* sum;
  const int32_t* corr;    // -128 * each lane's sum of four q (see RowView)
  const int32_t* corr_c;  // -c * the same sums, c = unsigned_bias of the weights (UNSIGNED staging only)
};

float dot_portable(const RowView& w, const ActView& x, int64_t nb) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float macc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* wq = w.q + b * QK;
    const int8_t* xq = x.q + b * QK;
    for (int lane = 0; lane < 8; ++lane) {
      int32_t s = 0;
      for (int j = 4 * lane; j < 4 * lane + 4; ++j) s += int32_t(wq[j]) * int32_t(xq[j]);
      acc[lane] += static_cast<float>(s) * (w.s8[8 * b + lane] * x.d[b]);
    }
    macc += w.off[b] * x.sum[b];
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + macc;
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum_b off[b] * sum[b] in order: the offset term of every AVX2 dot product, one out-of-line body so that
// every caller rounds it alike.
__attribute__((noinline)) float offset_sum(const float* off, const float* sum, int64_t nb) {
  float m = 0.f;
  for (int64_t b = 0; b < nb; ++b) m += off[b] * sum[b];
  return m;
}

// One block's exact integer products as eight int32 lanes (lane i: values 4i..4i+3). Signed weights go
// through maddubs as |w| times x with w's sign (|w| <= 128, |x| <= 127: no saturation); unsigned ones
// (q + c, at most 63) straight, with -c * sum(x) per lane added back, so both give the signed <q, x>.
template <bool SGN>
__attribute__((target("avx2,fma"))) inline __m256i block_dot_avx2(__m256i w, __m256i x, __m256i corr_c) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (SGN) return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
  return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones), corr_c);
}

// y[m * ystride + n] = scale * dot(x[m], w[n]) for MR activation rows and NR staged weight rows, sharing
// their loads. Every pair's accumulator goes through the same operations in the same order as with
// MR = NR = 1 (and as gemv_row_avx2), so how rows are grouped never changes a result.
template <int MR, int NR, bool SGN>
__attribute__((target("avx2,fma"))) void dot_tile_avx2(const RowView* w, const ActView* x, int64_t nb, float scale,
                                                      float* y, int64_t ystride) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[NR];
    __m256 ws[NR];
    for (int n = 0; n < NR; ++n) {
      wv[n] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[n].q + b * QK));
      ws[n] = _mm256_loadu_ps(w[n].s8 + 8 * b);
    }
    for (int m = 0; m < MR; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].q + b * QK));
      const __m256i cx = SGN ? _mm256_setzero_si256()
                             : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m].corr_c + 8 * b));
      const __m256 dx = _mm256_set1_ps(x[m].d[b]);
      for (int n = 0; n < NR; ++n) {
        const __m256 f = _mm256_cvtepi32_ps(block_dot_avx2<SGN>(wv[n], xv, cx));
        acc[m][n] = _mm256_fmadd_ps(f, _mm256_mul_ps(ws[n], dx), acc[m][n]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      y[m * ystride + n] = scale * (hsum256(acc[m][n]) + offset_sum(w[n].off, x[m].sum, nb));
}

// One weight row of a 32-wide format against one activation row, decoded in registers (no staging): the
// decode step's GEMV. Same values and operations as staging the row UNSIGNED (Q8_0: SIGNED) and running
// dot_tile_avx2<1, 1>. off: nb floats of scratch.
template <int64_t qtype>
__attribute__((target("avx2,f16c,fma"))) float gemv_row_avx2(const uint8_t* row, const ActView& x, int64_t nb,
                                                             float* off) {
  constexpr bool SGN = qtype == Q8_0;
  constexpr int64_t bytes = qtype == Q8_0 ? 34 : (qtype == Q4_1 ? 20 : 18);
  const __m128i low = _mm_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = row + b * bytes;
    uint16_t h;
    std::memcpy(&h, p, 2);
    const float d = _cvtsh_ss(h);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * QK));
    __m256i wv, cx;
    if (SGN) {
      wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      cx = _mm256_setzero_si256();
      off[b] = 0.f;
    } else {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + (qtype == Q4_1 ? 4 : 2)));
      wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low), _mm_and_si128(v, low));
      cx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr_c + 8 * b));
      if (qtype == Q4_1) {
        std::memcpy(&h, p + 2, 2);
        off[b] = _cvtsh_ss(h) + 8.f * d;
      } else {
        off[b] = 0.f;
      }
    }
    const __m256 f = _mm256_cvtepi32_ps(block_dot_avx2<SGN>(wv, xv, cx));
    acc = _mm256_fmadd_ps(f, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_set1_ps(x.d[b])), acc);
  }
  return hsum256(acc) + offset_sum(off, x.sum, nb);
}

// dot_tile_avx2 for any MR <= 4, NR <= 2.
template <bool SGN>
void dot_tile_avx2_any(int64_t mr, int64_t nr, const RowView* w, const ActView* x, int64_t nb, float scale,
                       float* y, int64_t ystride) {
#define EMBER_TILE(M_, N_) \
  if (mr == M_ && nr == N_) return dot_tile_avx2<M_, N_, SGN>(w, x, nb, scale, y, ystride);
  EMBER_TILE(4, 2) EMBER_TILE(4, 1) EMBER_TILE(3, 2) EMBER_TILE(3, 1)
  EMBER_TILE(2, 2) EMBER_TILE(2, 1) EMBER_TILE(1, 2) EMBER_TILE(1, 1)
#undef EMBER_TILE
  TORCH_CHECK(false, "dot_tile_avx2: bad tile ", mr, "x", nr);
}

constexpr int64_t TILE_ROWS = 16;  // weight rows decoded together, then dotted with every activation row

#define EMBER_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")))

// acc[r] += sum_b offT[b][r] * sum[b] for the TILE_ROWS rows of a tile at once (offT: the tile's offsets,
// transposed), so the offset term costs no horizontal sum per output.
EMBER_AVX512 inline void add_offsets_avx512(const float* offT, const float* sum, int64_t nb, float* acc) {
  static_assert(TILE_ROWS == 16, "one zmm of offsets per block");
  __m512 a = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) a = _mm512_fmadd_ps(_mm512_loadu_ps(offT + 16 * b), _mm512_set1_ps(sum[b]), a);
  _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_loadu_ps(acc), a));
}

// R weight rows against one activation row, sharing its loads; each row's accumulator sees exactly the
// operations it would see alone (R only interleaves them), so grouping never changes a result.
template <int R>
EMBER_AVX512 void dot_rows_avx512vnni(const RowView* w, const ActView& x, int64_t nb, float* y) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i xv = _mm512_loadu_si512(x.q + b * QK);
    __m512i xc = _mm512_loadu_si512(x.corr + 8 * b);
    __m512 dx = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(x.d[b])), _mm256_set1_ps(x.d[b + 1]), 1);
    for (int r = 0; r < R; ++r) {
      __m512i p = _mm512_dpbusd_epi32(xc, _mm512_loadu_si512(w[r].q + b * QK), xv);
      acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(w[r].s8 + 8 * b)), dx, acc[r]);
    }
  }
  __m256 acc8[R];
  for (int r = 0; r < R; ++r) acc8[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm512_extractf32x8_ps(acc[r], 1));
  if (b < nb) {  // an odd block count: the last block on 256-bit VNNI
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + b * QK));
    __m256i xc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.corr + 8 * b));
    __m256 dx = _mm256_set1_ps(x.d[b]);
    for (int r = 0; r < R; ++r) {
      __m256i p = _mm256_dpbusd_epi32(xc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r].q + b * QK)), xv);
      acc8[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_loadu_ps(w[r].s8 + 8 * b)), dx, acc8[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    y[r] = hsum256(acc8[r]);
  }
}

bool isa_available(int64_t isa) {
  __builtin_cpu_init();
  switch (isa) {
    case PORTABLE: return true;
    case AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AVX512VNNI:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return false;
  }
}

int64_t best_isa() {
  static const int64_t best = isa_available(AVX512VNNI) ? AVX512VNNI : (isa_available(AVX2) ? AVX2 : PORTABLE);
  return best;
}

// The ISA a call runs: `isa` (-1: the best this CPU has), refused where the CPU lacks it.
int64_t resolve_isa(int64_t isa) {
  if (isa < 0) isa = best_isa();
  TORCH_CHECK(isa_available(isa), "quant_matmul: ISA ", isa, " is not available on this CPU");
  return isa;
}


}  // namespace

std::vector<torch::Tensor> quant_activations(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "quant_activations: x must be float32 [M, K]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QK == 0, "quant_activations: K must be a multiple of 32");
  const int64_t nb = K / QK;
  auto xq = torch::empty({M, K}, torch::kInt8);
  auto xd = torch::empty({M, nb}, torch::kFloat32);
  auto xs = torch::empty({M, nb}, torch::kFloat32);
  auto xc = torch::empty({M, K / 4}, torch::kInt32);
  int32_t* pc = xc.data_ptr<int32_t>();
  const float* px = x.data_ptr<float>();
  int8_t* pq = xq.data_ptr<int8_t>();
  float* pd = xd.data_ptr<float>();
  float* ps = xs.data_ptr<float>();
  at::parallel_for(0, M * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* v = px + i * QK;
      float amax = 0.f, sum = 0.f;
      for (int j = 0; j < QK; ++j) {
        amax = std::max(amax, std::fabs(v[j]));
        sum += v[j];
      }
      float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      for (int j = 0; j < QK; ++j) pq[i * QK + j] = static_cast<int8_t>(std::nearbyint(v[j] * inv));
      for (int j = 0; j < QK / 4; ++j) {
        const int8_t* l = pq + i * QK + 4 * j;
        pc[i * (QK / 4) + j] = -128 * (int32_t(l[0]) + l[1] + l[2] + l[3]);
      }
      pd[i] = d;
      ps[i] = sum;
    }
  });
  return {xq, xd, xs, xc};
}

// out[m, n] = scale * dot(x_m, W[rows[n]]) (rows empty: n itself). out may be a column slice of a wider
// tensor (unit column stride), so a fused projection's parts write straight into their columns.
void quant_matmul(torch::Tensor xq, torch::Tensor xd, torch::Tensor xs, torch::Tensor xc, torch::Tensor w,
                  int64_t qtype,
                  torch::Tensor rows, double scale, torch::Tensor out, int64_t isa) {
  const int64_t M = xq.size(0), K = xq.size(1), nb = K / QK;
  Format f = format_of(qtype);
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 2, "quant_matmul: w must be uint8 [N, row bytes]");
  TORCH_CHECK(K % f.block_values == 0 && w.size(1) == K / f.block_values * f.block_bytes,
              "quant_matmul: w's row bytes do not match K=", K, " for type ", qtype);
  TORCH_CHECK(w.stride(1) == 1, "quant_matmul: w rows must be contiguous");
  TORCH_CHECK(xq.scalar_type() == torch::kInt8 && xq.is_contiguous() && K % QK == 0 &&
                  xd.numel() == M * nb && xs.numel() == M * nb && xc.numel() == M * (K / 4) && xd.is_contiguous() &&
                  xs.is_contiguous() && xc.is_contiguous() && xc.scalar_type() == torch::kInt32,
              "quant_matmul: pass quant_activations' four tensors unchanged");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.dim() == 2 && out.size(0) == M && out.stride(1) == 1,
              "quant_matmul: out must be float32 [M, N] with unit column stride");
  const int64_t N = out.size(1);
  const bool gather = rows.numel() > 0;
  TORCH_CHECK(gather ? rows.numel() == N && rows.scalar_type() == torch::kInt64 : w.size(0) == N,
              "quant_matmul: out columns must match W's rows (or rows' length)");
  const torch::Tensor rows_c = rows.contiguous();  // held: a temporary copy's pointer would dangle
  const int64_t* prow = gather ? rows_c.data_ptr<int64_t>() : nullptr;
  if (gather) {
    for (int64_t n = 0; n < N; ++n) TORCH_CHECK(prow[n] >= 0 && prow[n] < w.size(0), "quant_matmul: bad row index");
  }
  const int64_t chosen = resolve_isa(isa);
  const bool vnni = chosen == AVX512VNNI;
  const bool avx2 = chosen == AVX2;
  const bool offset = has_offset(qtype);
  const Staging staging = vnni ? FLIPPED : (avx2 && unsigned_bias(qtype) > 0 ? UNSIGNED : SIGNED);
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
    const int shift = 7 - __builtin_ctz(static_cast<unsigned>(unsigned_bias(qtype)));
    corr_c.resize(M * (K / 4));
    for (int64_t i = 0; i < M * (K / 4); ++i) corr_c[i] = pc[i] >> shift;
  }
  auto act = [&](int64_t m) {
    return ActView{pq + m * K, pd + m * nb, ps + m * nb, pc + m * (K / 4),
                   corr_c.empty() ? nullptr : corr_c.data() + m * (K / 4)};
  };
  // One activation row on AVX2 and a 32-wide format: each weight row is decoded in registers and dotted
  // at once (decode's GEMV), the same arithmetic as the staged tiles below.
  const bool gemv = avx2 && M == 1 && (qtype == Q4_0 || qtype == Q4_1 || qtype == Q8_0);
  // Enough rows per task that each thread decodes whole tiles and the fork is worth it at M = 1.
  const int64_t grain = std::max<int64_t>(TILE_ROWS, 65536 / std::max<int64_t>(K * M, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    if (gemv) {
      std::vector<float> offs(nb);
      const ActView a = act(0);
      for (int64_t n = begin; n < end; ++n) {
        const uint8_t* row = pw + (gather ? prow[n] : n) * wstride;
        float v = qtype == Q4_0   ? gemv_row_avx2<Q4_0>(row, a, nb, offs.data())
                  : qtype == Q4_1 ? gemv_row_avx2<Q4_1>(row, a, nb, offs.data())
                                  : gemv_row_avx2<Q8_0>(row, a, nb, offs.data());
        po[n] = sc * v;
      }
      return;
    }
    std::vector<int8_t> q(TILE_ROWS * K);
    std::vector<float> s8(TILE_ROWS * nb * 8), off(TILE_ROWS * nb);
    std::vector<float> offT(vnni ? nb * TILE_ROWS : 0);
    RowView tile[TILE_ROWS];
    for (int64_t r = 0; r < TILE_ROWS; ++r) tile[r] = {q.data() + r * K, s8.data() + r * nb * 8, off.data() + r * nb};
    const int cbias = staging == UNSIGNED ? unsigned_bias(qtype) : 0;
    for (int64_t t0 = begin; t0 < end; t0 += TILE_ROWS) {
      const int64_t nt = std::min(TILE_ROWS, end - t0);
      for (int64_t r = 0; r < nt; ++r) {
        const int64_t src = gather ? prow[t0 + r] : t0 + r;
        if (chosen == PORTABLE || !decode_row_avx2(qtype, pw + src * wstride, K, tile[r], staging)) {
          decode_row(qtype, pw + src * wstride, K, tile[r]);
          if (staging == FLIPPED)
            for (int64_t j = 0; j < K; ++j) tile[r].q[j] = static_cast<int8_t>(tile[r].q[j] ^ 0x80);
          if (staging == UNSIGNED)
            for (int64_t j = 0; j < K; ++j) tile[r].q[j] = static_cast<int8_t>(tile[r].q[j] + cbias);
        }
      }
      if (vnni && offset) {
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t r = 0; r < TILE_ROWS; ++r) offT[b * TILE_ROWS + r] = r < nt ? tile[r].off[b] : 0.f;
      }
      if (avx2) {
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
      for (int64_t m = 0; m < M; ++m) {
        const ActView a = act(m);
        float* y = po + m * ostride + t0;
        if (vnni) {
          alignas(64) float v[TILE_ROWS] = {};
          int64_t r = 0;
          for (; r + 4 <= nt; r += 4) dot_rows_avx512vnni<4>(tile + r, a, nb, v + r);
          for (; r < nt; ++r) dot_rows_avx512vnni<1>(tile + r, a, nb, v + r);
          if (offset) add_offsets_avx512(offT.data(), a.sum, nb, v);
          for (r = 0; r < nt; ++r) y[r] = sc * v[r];
        } else {
          for (int64_t r = 0; r < nt; ++r) y[r] = sc * dot_portable(tile[r], a, nb);
        }
      }
    }
  });
}

// Rows `ids` of W as float32 [len(ids), K]: an embedding lookup that dequantizes only what it gathers.
torch::Tensor quant_dequantize_rows(torch::Tensor w, int64_t qtype, torch::Tensor ids, int64_t K) {
  Format f = format_of(qtype);
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 2 && w.stride(1) == 1 &&
                  K % f.block_values == 0 && w.size(1) == K / f.block_values * f.block_bytes,
              "quant_dequantize_rows: w must be uint8 [N, row bytes] matching K");
  ids = ids.to(torch::kInt64).contiguous();
  const int64_t n = ids.numel(), nb = K / QK;
  auto out = torch::empty({n, K}, torch::kFloat32);
  const int64_t* pid = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(pid[i] >= 0 && pid[i] < w.size(0), "quant_dequantize_rows: bad id");
  const uint8_t* pw = w.data_ptr<uint8_t>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> q(K);
    std::vector<float> s8(nb * 8), off(nb);
    for (int64_t i = begin; i < end; ++i) {
      decode_row(qtype, pw + pid[i] * w.stride(0), K, {q.data(), s8.data(), off.data()});
      float* y = po + i * K;
      for (int64_t j = 0; j < K; ++j) y[j] = s8[(j / QK) * 8 + (j % QK) / 4] * q[j] + off[j / QK];
    }
  });
  return out;
}

std::vector<int64_t> quant_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {PORTABLE, AVX2, AVX512VNNI})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

// A whole (possibly fused) Linear in one call: x quantized once, then each part into its own columns.
torch::Tensor quant_linear(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                           std::vector<torch::Tensor> rows, std::vector<double> scales, int64_t isa) {
  TORCH_CHECK(ws.size() == qtypes.size() && ws.size() == rows.size() && ws.size() == scales.size(),
              "quant_linear: one qtype, row index and scale per part");
  auto act = quant_activations(x);
  int64_t n = 0;
  for (size_t i = 0; i < ws.size(); ++i) n += rows[i].numel() ? rows[i].numel() : ws[i].size(0);
  auto out = torch::empty({x.size(0), n}, torch::kFloat32);
  int64_t col = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    const int64_t ni = rows[i].numel() ? rows[i].numel() : ws[i].size(0);
    quant_matmul(act[0], act[1], act[2], act[3], ws[i], qtypes[i], rows[i], scales[i], out.narrow(1, col, ni), isa);
    col += ni;
  }
  return out;
}
