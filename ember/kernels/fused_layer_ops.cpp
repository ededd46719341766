// The small per-layer steps of a Llama block, fused: residual add + RMSNorm, RoPE + K/V cache write,
// SiLU(gate) * up.
//
// At one decode row each of these is a handful of torch ops of ~3-10 us apiece, almost all dispatch
// and OpenMP fork/join: ~60 ops per layer made half of a 12 ms single-stream step. Each function here is
// one call. Every row is computed alone, in a fixed order, so results do not depend on the batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cmath>

namespace {

constexpr int64_t kRowsPerTask = 16;  // below this many rows a call runs inline: no thread fork at all

void check_rows(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.dtype() == torch::kFloat32 && t.dim() == 2 && t.is_contiguous(), what,
              " must be a contiguous float32 matrix");
}

}  // namespace

// h += delta (when given), then returns rmsnorm(h) * weight. h: [T, dim] updated in place.
torch::Tensor add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor weight,
                           double eps) {
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
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* x = hp + t * dim;
      if (dp != nullptr) {
        const float* y = dp + t * dim;
        for (int64_t i = 0; i < dim; ++i) x[i] += y[i];
      }
      float ss = 0.f;
      for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
      const float r = 1.f / std::sqrt(ss / static_cast<float>(dim) + static_cast<float>(eps));
      float* o = op + t * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] = x[i] * r * wp[i];
    }
  });
  return out;
}

namespace {

// float -> the cache's element: float32 as is, float16 (binary16 bits) rounded to nearest even, as
// torch's .to(torch.float16) rounds.
inline void store_as(float x, float* o) { *o = x; }
inline void store_as(float x, uint16_t* o) { *o = c10::Half(x).x; }

// Rotate-half RoPE of one head of D values into o (float32 q, or a cache row of either type).
template <typename O>
inline void rotate(const float* x, const float* c, const float* s, int64_t half, O* o) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    store_as(x1 * c[i] - x2 * s[i], o + i);
    store_as(x2 * c[i] + x1 * s[i], o + i + half);
  }
}

template <typename T>
void rotate_and_store(const float* src, const float* cp, const float* sp, const int64_t* slot, float* qp, T* kc,
                      T* vc, int64_t T_, int64_t H, int64_t KV, int64_t D) {
  const int64_t half = D / 2, width = (H + 2 * KV) * D;
  at::parallel_for(0, T_, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = src + t * width;
      const float* c = cp + t * half;
      const float* s = sp + t * half;
      for (int64_t h = 0; h < H; ++h) rotate(row + h * D, c, s, half, qp + (t * H + h) * D);
      for (int64_t h = 0; h < KV; ++h) rotate(row + (H + h) * D, c, s, half, kc + slot[t] * KV * D + h * D);
      const float* v = row + (H + KV) * D;
      T* vo = vc + slot[t] * KV * D;
      for (int64_t i = 0; i < KV * D; ++i) store_as(v[i], vo + i);
    }
  });
}

}  // namespace

// qkv: [T, (H + 2 KV) * D] (q heads, then k heads, then v heads). Rotates q and k by rotate-half RoPE
// with cos/sin [T, D/2], writes k and v into the caches ([slots, KV * D], float32 or float16: rounded to
// the cache's type) at `slots` [T], and returns the rotated q as [T, H, D].
torch::Tensor rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor slots, int64_t n_heads, int64_t n_kv_heads,
                            int64_t head_dim) {
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
  if (k_cache.dtype() == torch::kFloat32) {
    rotate_and_store<float>(src, cp, sp, slot, qp, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), T, H, KV,
                            D);
  } else {
    rotate_and_store<uint16_t>(src, cp, sp, slot, qp, static_cast<uint16_t*>(k_cache.data_ptr()),
                               static_cast<uint16_t*>(v_cache.data_ptr()), T, H, KV, D);
  }
  return q;
}

// gu: [T, 2 * hidden] (gate, then up) -> silu(gate) * up: [T, hidden].
torch::Tensor silu_mul(torch::Tensor gu) {
  check_rows(gu, "gu");
  const int64_t T = gu.size(0), hidden = gu.size(1) / 2;
  auto out = torch::empty({T, hidden}, gu.options());
  const float* src = gu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = src + t * 2 * hidden;
      const float* u = g + hidden;
      float* o = op + t * hidden;
      for (int64_t i = 0; i < hidden; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}
