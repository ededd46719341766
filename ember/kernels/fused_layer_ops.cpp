// The small per-layer steps of a Llama block, fused: residual add + RMSNorm, RoPE + K/V cache write,
// SiLU(gate) * up.
//
// At one decode row each of these is a handful of torch ops of ~3-10 us apiece, almost all dispatch
// and OpenMP fork/join: ~60 ops per layer made half of a 12 ms single-stream step. Each function here is
// one call. Every row is computed alone, in a fixed order, so results do not depend on the batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "isa.h"

namespace ember {
namespace {

constexpr int64_t kRowsPerTask = 16;  // below this many rows a call runs inline: no thread fork at all

void check_rows(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.dtype() == torch::kFloat32 && t.dim() == 2 && t.is_contiguous(), what,
              " must be a contiguous float32 matrix");
}

// Rows begin..end-1 of add_rms_norm.
EMBER_INLINE void add_rms_norm_body(float* hp, const float* dp, const float* wp, float* op, int64_t dim, float eps,
                                    int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    float* x = hp + t * dim;
    if (dp != nullptr) {
      const float* y = dp + t * dim;
      for (int64_t i = 0; i < dim; ++i) x[i] += y[i];
    }
    float ss = 0.f;
    for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(dim) + eps);
    float* o = op + t * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = x[i] * r * wp[i];
  }
}

EMBER_FOR_EACH_ISA(void, add_rms_norm_rows,
                   (float* hp, const float* dp, const float* wp, float* op, int64_t dim, float eps, int64_t begin,
                    int64_t end),
                   add_rms_norm_body, (hp, dp, wp, op, dim, eps, begin, end))

}  // namespace
}  // namespace ember

// h += delta (when given), then returns rmsnorm(h) * weight. h: [T, dim] updated in place.
torch::Tensor add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor weight,
                           double eps, int64_t isa) {
  using namespace ember;
  check_rows(h, "h");
  const int64_t T = h.size(0), dim = h.size(1);
  TORCH_CHECK(weight.dtype() == torch::kFloat32 && weight.numel() == dim, "weight must be float32 [dim]");
  const float* dp = nullptr;
  torch::Tensor d;
  if (delta.has_value()) {
    d = delta->contiguous();
    TORCH_CHECK(d.dtype() == torch::kFloat32 && d.sizes() == h.sizes(), "delta must match h");
    dp = d.data_ptr<float>();
  }
  auto out = torch::empty_like(h);
  float* hp = h.data_ptr<float>();
  const float* wp = weight.contiguous().data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  dispatch_isa(isa, "add_rms_norm", [&](auto level) {
    at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
      add_rms_norm_rows<decltype(level)::value>(hp, dp, wp, op, dim, e, begin, end);
    });
  });
  return out;
}

namespace ember {
namespace {

// n floats to float16 (binary16 bits), rounded to nearest even as torch's .to(torch.float16) rounds: the
// vector levels 8 per F16C instruction (every AVX2 CPU has it).
EMBER_INLINE void narrow_tail(const float* src, uint16_t* dst, int64_t i, int64_t n) {
  for (; i < n; ++i) dst[i] = c10::Half(src[i]).x;
}

EMBER_TARGET_AVX2 EMBER_INLINE void narrow_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  narrow_tail(src, dst, i, n);
}

template <Isa I>
void narrow(const float* src, uint16_t* dst, int64_t n);
template <>
__attribute__((noinline)) void narrow<kScalar>(const float* src, uint16_t* dst, int64_t n) {
  narrow_tail(src, dst, 0, n);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX2 void narrow<kAvx2>(const float* src, uint16_t* dst, int64_t n) {
  narrow_f16c(src, dst, n);
}
template <>
__attribute__((noinline)) EMBER_TARGET_AVX512 void narrow<kAvx512>(const float* src, uint16_t* dst, int64_t n) {
  narrow_f16c(src, dst, n);
}

// Rotate-half RoPE of one head of D values into o.
EMBER_INLINE void rotate(const float* x, const float* c, const float* s, int64_t half, float* o) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    o[i] = x1 * c[i] - x2 * s[i];
    o[i + half] = x2 * c[i] + x1 * s[i];
  }
}

// Rows begin..end-1 of rope_write_kv into caches of element type C (float, or float16 bits: a K head is
// rotated into scratch, then narrowed).
template <Isa I, typename C>
EMBER_INLINE void rope_write_kv_body(const float* src, const float* cp, const float* sp, const int64_t* slot,
                                     float* qp, C* kc, C* vc, int64_t H, int64_t KV, int64_t D, int64_t begin,
                                     int64_t end) {
  const int64_t half = D / 2, width = (H + 2 * KV) * D;
  std::vector<float> scratch(std::is_same_v<C, float> ? 0 : D);
  for (int64_t t = begin; t < end; ++t) {
    const float* row = src + t * width;
    const float* c = cp + t * half;
    const float* s = sp + t * half;
    for (int64_t h = 0; h < H; ++h) rotate(row + h * D, c, s, half, qp + (t * H + h) * D);
    C* ko = kc + slot[t] * KV * D;
    C* vo = vc + slot[t] * KV * D;
    const float* v = row + (H + KV) * D;
    if constexpr (std::is_same_v<C, float>) {
      for (int64_t h = 0; h < KV; ++h) rotate(row + (H + h) * D, c, s, half, ko + h * D);
      for (int64_t i = 0; i < KV * D; ++i) vo[i] = v[i];
    } else {
      for (int64_t h = 0; h < KV; ++h) {
        rotate(row + (H + h) * D, c, s, half, scratch.data());
        narrow<I>(scratch.data(), ko + h * D, D);
      }
      narrow<I>(v, vo, KV * D);
    }
  }
}

#define EMBER_ROPE_PARAMS(C)                                                                                 \
  (const float* src, const float* cp, const float* sp, const int64_t* slot, float* qp, C* kc, C* vc, int64_t H, \
   int64_t KV, int64_t D, int64_t begin, int64_t end)
EMBER_FOR_EACH_ISA(void, rope_write_kv_rows_f32, EMBER_ROPE_PARAMS(float), (rope_write_kv_body<I, float>),
                   (src, cp, sp, slot, qp, kc, vc, H, KV, D, begin, end))
EMBER_FOR_EACH_ISA(void, rope_write_kv_rows_f16, EMBER_ROPE_PARAMS(uint16_t), (rope_write_kv_body<I, uint16_t>),
                   (src, cp, sp, slot, qp, kc, vc, H, KV, D, begin, end))
#undef EMBER_ROPE_PARAMS

// Rows begin..end-1 of silu_mul.
EMBER_INLINE void silu_mul_body(const float* src, float* op, int64_t hidden, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const float* g = src + t * 2 * hidden;
    const float* u = g + hidden;
    float* o = op + t * hidden;
    for (int64_t i = 0; i < hidden; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
}

EMBER_FOR_EACH_ISA(void, silu_mul_rows, (const float* src, float* op, int64_t hidden, int64_t begin, int64_t end),
                   silu_mul_body, (src, op, hidden, begin, end))

}  // namespace
}  // namespace ember

// qkv: [T, (H + 2 KV) * D] (q heads, then k heads, then v heads). Rotates q and k by rotate-half RoPE
// with cos/sin [T, D/2], writes k and v into the caches ([slots, KV * D], float32 or float16: rounded to
// the cache's type) at `slots` [T], and returns the rotated q as [T, H, D].
torch::Tensor rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor slots, int64_t n_heads, int64_t n_kv_heads,
                            int64_t head_dim, int64_t isa) {
  using namespace ember;
  check_rows(qkv, "qkv");
  const int64_t T = qkv.size(0), H = n_heads, KV = n_kv_heads, D = head_dim, half = D / 2;
  TORCH_CHECK(qkv.size(1) == (H + 2 * KV) * D && D % 2 == 0, "qkv does not match the head layout");
  cos = cos.contiguous();
  sin = sin.contiguous();
  slots = slots.contiguous();
  TORCH_CHECK(cos.numel() == T * half && sin.numel() == T * half, "cos/sin must be [T, D/2]");
  TORCH_CHECK(slots.dtype() == torch::kInt64 && slots.numel() == T, "slots must be int64 [T]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.size(1) == KV * D &&
              v_cache.size(1) == KV * D && k_cache.dtype() == v_cache.dtype() &&
              (k_cache.dtype() == torch::kFloat32 || k_cache.dtype() == torch::kFloat16),
              "caches must be [slots, KV*D], both float32 or both float16");
  auto q = torch::empty({T, H, D}, qkv.options());
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t n_slots = k_cache.size(0);
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(slot[t] >= 0 && slot[t] < n_slots, "slot outside the cache");
  const float* src = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  const bool f32 = k_cache.dtype() == torch::kFloat32;
  dispatch_isa(isa, "rope_write_kv", [&](auto level) {
    constexpr Isa I = decltype(level)::value;
    at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
      if (f32) {
        rope_write_kv_rows_f32<I>(src, cp, sp, slot, qp, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), H,
                                  KV, D, begin, end);
      } else {
        rope_write_kv_rows_f16<I>(src, cp, sp, slot, qp, static_cast<uint16_t*>(k_cache.data_ptr()),
                                  static_cast<uint16_t*>(v_cache.data_ptr()), H, KV, D, begin, end);
      }
    });
  });
  return q;
}

// gu: [T, 2 * hidden] (gate, then up) -> silu(gate) * up: [T, hidden].
torch::Tensor silu_mul(torch::Tensor gu, int64_t isa) {
  using namespace ember;
  check_rows(gu, "gu");
  const int64_t T = gu.size(0), hidden = gu.size(1) / 2;
  auto out = torch::empty({T, hidden}, gu.options());
  const float* src = gu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  dispatch_isa(isa, "silu_mul", [&](auto level) {
    at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
      silu_mul_rows<decltype(level)::value>(src, op, hidden, begin, end);
    });
  });
  return out;
}
