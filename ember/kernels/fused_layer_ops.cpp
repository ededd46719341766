// The small per-layer steps of a Llama block, fused: residual add + RMSNorm, RoPE + K/V cache write,
// SiLU(gate) * up.
//
// At one decode row each of these is a handful of torch ops of ~3-10 us apiece, almost all dispatch
// and OpenMP fork/join: ~60 ops per layer made half of a 12 ms single-stream step. Each function here is
// one call. Every row is computed alone, in a fixed order, so results do not depend on the batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>

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

// qkv: [T, (H + 2 KV) * D] (q heads, then k heads, then v heads). Rotates q and k by rotate-half RoPE
// with cos/sin [T, D/2], writes k and v into the caches ([slots, KV * D]) at `slots` [T], and returns the
// rotated q as [T, H, D].
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
              v_cache.size(1) == KV * D && k_cache.dtype() == torch::kFloat32, "caches must be [slots, KV*D]");
  auto q = torch::empty({T, H, D}, qkv.options());
  const float* src = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  float* qp = q.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t n_slots = k_cache.size(0), width = (H + 2 * KV) * D;
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(slot[t] >= 0 && slot[t] < n_slots, "slot outside the cache");
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = src + t * width;
      const float* c = cp + t * half;
      const float* s = sp + t * half;
      for (int64_t h = 0; h < H + KV; ++h) {
        const float* x = row + h * D;
        float* o = h < H ? qp + (t * H + h) * D : kc + slot[t] * KV * D + (h - H) * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          o[i] = x1 * c[i] - x2 * s[i];
          o[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
      const float* v = row + (H + KV) * D;
      float* vo = vc + slot[t] * KV * D;
      for (int64_t i = 0; i < KV * D; ++i) vo[i] = v[i];
    }
  });
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
