// Decode attention straight from the paged KV cache: one query row per sequence, no gathered copy.
//
// The torch path gathers every row's context into a [B, KV, L, D] tensor (one full write and read of
// the context per layer) and runs two batched GEMVs over it; at 32 sequences that gather and those
// matmuls were a third of a decode step. Here each row walks its block table once for K and once for V. Each row is computed alone, in a fixed order, whatever else is in the batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int kLanes = 8;

// Eight partial sums, combined in a fixed order: vectorizes to one FMA stream, same result every call.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

// q: [B, H, D] float32, already scaled by 1/sqrt(D). k_cache, v_cache: [slots, KV * D] float32.
// tables: [B, max_blocks] int64 block ids. lens: [B] int64 context lengths (>= 1). Returns [B, H, D].
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor lens, int64_t block_size,
                                     int64_t n_kv_heads) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
              v_cache.dtype() == torch::kFloat32, "float32 only");
  TORCH_CHECK(tables.dtype() == torch::kInt64 && lens.dtype() == torch::kInt64, "int64 tables and lens");
  q = q.contiguous();
  k_cache = k_cache.contiguous();
  v_cache = v_cache.contiguous();
  tables = tables.contiguous();
  lens = lens.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KV = n_kv_heads, G = H / KV, width = KV * D, max_blocks = tables.size(1);
  TORCH_CHECK(H % KV == 0 && k_cache.size(1) == width && v_cache.size(1) == width, "shape mismatch");
  const int64_t slots = k_cache.size(0);
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= max_blocks * block_size, "context length outside the block table");
  }
  // One sequence per work item, all heads together: each position's K (then V) row of all heads is one
  // contiguous read, which keeps the memory system streaming.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w;
    std::vector<float> acc(H * D);
    std::vector<float> total(H);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t len = lp[b];
      const int64_t* table = tp + b * max_blocks;
      const float* qb = qp + b * H * D;
      w.resize(H * len);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        TORCH_CHECK(slot >= 0 && slot < slots, "block id outside the cache");
        const float* k = kp + slot * width;
        for (int64_t h = 0; h < H; ++h) w[h * len + t] = dot(qb + h * D, k + (h / G) * D, D);
      }
      for (int64_t h = 0; h < H; ++h) {
        float* s = w.data() + h * len;
        const float m = *std::max_element(s, s + len);
        for (int64_t t = 0; t < len; ++t) s[t] = std::exp(s[t] - m);
        float sum = 0.f;
        for (int64_t t = 0; t < len; ++t) sum += s[t];
        total[h] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const float* v = vp + slot * width;
        for (int64_t h = 0; h < H; ++h) {
          const float p = w[h * len + t];
          const float* vh = v + (h / G) * D;
          float* a = acc.data() + h * D;
          for (int64_t d = 0; d < D; ++d) a[d] += p * vh[d];
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        float* o = op + (b * H + h) * D;
        const float inv = 1.f / total[h];
        for (int64_t d = 0; d < D; ++d) o[d] = acc[h * D + d] * inv;
      }
    }
  });
  return out;
}
