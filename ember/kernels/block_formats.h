// The GGUF block formats the quant kernels read, one constexpr entry per format: the only place a block's
// size and byte layout are written down. Every format decodes to 32-value blocks of signed int8
// q = n - bias (n the stored unsigned bits; Q8_0 is stored signed) with w = scale * q + offset.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace ember {

constexpr int64_t kQK = 32;  // values per decoded block, and per int8 activation block
constexpr int kAbsent = -1;  // a field the format does not have

// ggml's type ids (gguf.GGMLQuantizationType).
enum QType : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

struct BlockFormat {
  int64_t qtype;
  int64_t values;   // values per stored block (32, or 256 for the K-quants)
  int64_t bytes;    // bytes per stored block
  int scale_at;     // float16 d
  int min_at;       // float16 m (Q4_1) or dmin (Q4_K, Q5_K): the format has an offset term
  int scales_at;    // the K-quants' per-sub-block scales (6-bit pairs packed in 12 bytes; Q6_K: 16 int8)
  int high_at;      // qh: the fifth bit of Q5 values, the top two bits of Q6_K's
  int quants_at;    // qs / ql: the low bits (Q8_0: the int8 values themselves)
  int bias;         // n - bias is signed q; 0: stored signed. Also the c of unsigned q + c staging.
  constexpr bool has_offset() const { return min_at != kAbsent; }
  constexpr bool is_32_wide() const { return values == kQK; }
};

constexpr BlockFormat kQ4_0{Q4_0, 32, 18, 0, kAbsent, kAbsent, kAbsent, 2, 8};
constexpr BlockFormat kQ4_1{Q4_1, 32, 20, 0, 2, kAbsent, kAbsent, 4, 8};
constexpr BlockFormat kQ5_0{Q5_0, 32, 22, 0, kAbsent, kAbsent, 2, 6, 16};
constexpr BlockFormat kQ8_0{Q8_0, 32, 34, 0, kAbsent, kAbsent, kAbsent, 2, 0};
constexpr BlockFormat kQ4_K{Q4_K, 256, 144, 0, 2, 4, kAbsent, 16, 8};
constexpr BlockFormat kQ5_K{Q5_K, 256, 176, 0, 2, 4, 16, 48, 16};
constexpr BlockFormat kQ6_K{Q6_K, 256, 210, 208, kAbsent, 192, 128, 0, 32};

constexpr BlockFormat kFormats[] = {kQ4_0, kQ4_1, kQ5_0, kQ8_0, kQ4_K, kQ5_K, kQ6_K};

// The entry of `qtype` (usable in constant expressions), or nullptr where ember has no kernel for it.
constexpr const BlockFormat* find_format(int64_t qtype) {
  for (const BlockFormat& f : kFormats)
    if (f.qtype == qtype) return &f;
  return nullptr;
}

// The entry of a format known at compile time (a type without one does not compile).
template <int64_t qtype>
constexpr BlockFormat kFormat = *find_format(qtype);

inline const BlockFormat& checked_format(int64_t qtype, const char* kernel) {
  const BlockFormat* f = find_format(qtype);
  TORCH_CHECK(f != nullptr, kernel, ": unsupported GGML type ", qtype);
  return *f;
}

}  // namespace ember
