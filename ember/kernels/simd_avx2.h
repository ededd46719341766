// AVX2 building blocks of the quant kernels, shared by the staged-tile path, the in-register GEMV and the
// AVX-512 path (which inlines them: AVX-512 holds AVX2).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "block_formats.h"
#include "isa.h"

namespace ember {

EMBER_TARGET_AVX2 EMBER_INLINE float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 16 bytes of packed 4-bit values as 32 bytes 0..15: every low nibble (a block's values 0-15), then every
// high nibble (values 16-31).
EMBER_TARGET_AVX2 EMBER_INLINE __m256i unpack_nibbles(const uint8_t* p) {
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low), _mm_and_si128(v, low));
}

// One block of a 32-wide 4- or 8-bit format (Q4_0, Q4_1, Q8_0) in registers: n is the stored values
// (unsigned q + bias for the 4-bit formats, signed q for Q8_0), w = d * (n - bias) + off.
struct Block32 {
  __m256i n;
  float d;
  float off;
};

template <int64_t qtype>
EMBER_TARGET_AVX2 EMBER_INLINE Block32 load_block32(const uint8_t* p) {
  constexpr BlockFormat F = kFormat<qtype>;
  static_assert(F.is_32_wide() && F.high_at == kAbsent, "a 32-wide format without high bits");
  const float d = load_f16(p + F.scale_at);
  const __m256i n = F.bias == 0 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + F.quants_at))
                                : unpack_nibbles(p + F.quants_at);
  // Q4_1: w = d * n + m, held as d * (n - 8) + (m + 8d).
  const float off = F.has_offset() ? load_f16(p + F.min_at) + static_cast<float>(F.bias) * d : 0.f;
  return {n, d, off};
}

EMBER_TARGET_AVX2 EMBER_INLINE float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One block's exact integer products <w, x> as eight int32 lanes (lane i: values 4i..4i+3). Signed w goes
// through maddubs as |w| times x with w's sign (|w| <= 128, |x| <= 127: no saturation); unsigned w (q + c,
// at most 63) straight, with corr_c = -c * each lane's sum of x added back, so both give the signed <q, x>.
template <bool kSigned>
EMBER_TARGET_AVX2 EMBER_INLINE __m256i dot_int8_lanes(__m256i w, __m256i x, __m256i corr_c) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (kSigned) return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
  return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones), corr_c);
}

}  // namespace ember
