// Attention straight from the paged KV cache, one query row at a time, no gathered copy: every decode
// row, and on this path every prefill row too (a prefill row is a query over its context's first
// position+1 slots, exactly what a decode row at that position is).
//
// The torch path gathers every row's context into a [B, KV, L, D] tensor (one full write and read of
// the context per layer) and runs two batched GEMVs over it; at 32 sequences that gather and those
// matmuls were a third of a decode step. Here each row walks its block table once for K and once for V.
// Each row is computed alone, in a fixed order, whatever else is in the batch, however its prompt was
// split into chunks and whether its prefix came from the cache; torch's flash attention rounds a row
// differently depending on the chunk's length (tail rows and key blocks), which moved prompt logprobs by
// up to 0.1 nats under load once bf16 activations amplified it. For prefill it is as fast as torch's.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int kLanes = 8;
constexpr int64_t kTile = 16;

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
// tables: [B, max_blocks] int64 block ids. lens: [B] int64 context lengths (>= 1). window: 0 attends the
// whole context; w > 0 attends only the last w positions (the query at position p = len - 1 sees keys
// p - w + 1 .. p, Gemma's sliding layers). Returns [B, H, D].
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor lens, int64_t block_size,
                                     int64_t n_kv_heads, int64_t window) {
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
  TORCH_CHECK(window >= 0, "window must be >= 0");
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
  // Work items are tiles of up to kTile consecutive rows over the same context (a prefill chunk's rows,
  // or a draft's): each K and V row is read once per tile, not once per row. Within a tile every row
  // still does exactly its own operations in its own order (the loops are only interchanged), so a
  // row's result is the same in any tile, alone or not. All heads together: each position's K (then V)
  // row of all heads is one contiguous read.
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
    std::vector<float> w;
    std::vector<float> acc(kTile * H * D);
    std::vector<float> total(kTile * H);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t tile = (i % 2 == 0) ? i / 2 : n_tiles - 1 - i / 2;
      const int64_t b0 = tile_start[tile], R = tile_start[tile + 1] - b0;
      const int64_t* table = tp + b0 * max_blocks;
      // Row r of the tile attends positions first[r] .. lp[b0 + r] - 1; its scores live at
      // w[off[r] + h * n + t - first[r]], n its number of positions.
      int64_t off[kTile], first[kTile];
      int64_t max_len = 0, min_first = lp[b0], size = 0;
      for (int64_t r = 0; r < R; ++r) {
        first[r] = window > 0 ? std::max<int64_t>(0, lp[b0 + r] - window) : 0;
        off[r] = size;
        size += H * (lp[b0 + r] - first[r]);
        max_len = std::max(max_len, lp[b0 + r]);
        min_first = std::min(min_first, first[r]);
      }
      w.resize(size);
      for (int64_t t = min_first; t < max_len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        TORCH_CHECK(slot >= 0 && slot < slots, "block id outside the cache");
        const float* k = kp + slot * width;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t len = lp[b0 + r] - first[r];
          if (t >= lp[b0 + r] || t < first[r]) continue;
          const float* qb = qp + (b0 + r) * H * D;
          float* wr = w.data() + off[r] - first[r];
          for (int64_t h = 0; h < H; ++h) wr[h * len + t] = dot(qb + h * D, k + (h / G) * D, D);
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        const int64_t len = lp[b0 + r] - first[r];
        for (int64_t h = 0; h < H; ++h) {
          float* sc = w.data() + off[r] + h * len;
          const float m = *std::max_element(sc, sc + len);
          for (int64_t t = 0; t < len; ++t) sc[t] = std::exp(sc[t] - m);
          float sum = 0.f;
          for (int64_t t = 0; t < len; ++t) sum += sc[t];
          total[r * H + h] = sum;
        }
      }
      std::fill(acc.begin(), acc.begin() + R * H * D, 0.f);
      for (int64_t t = min_first; t < max_len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const float* v = vp + slot * width;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t len = lp[b0 + r] - first[r];
          if (t >= lp[b0 + r] || t < first[r]) continue;
          const float* wr = w.data() + off[r] - first[r];
          float* ar = acc.data() + r * H * D;
          for (int64_t h = 0; h < H; ++h) {
            const float p = wr[h * len + t];
            const float* vh = v + (h / G) * D;
            float* a = ar + h * D;
            for (int64_t d = 0; d < D; ++d) a[d] += p * vh[d];
          }
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t h = 0; h < H; ++h) {
          float* o = op + ((b0 + r) * H + h) * D;
          const float inv = 1.f / total[r * H + h];
          const float* a = acc.data() + (r * H + h) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
        }
      }
    }
  });
  return out;
}
