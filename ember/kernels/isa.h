// Which instruction set a kernel runs: the one mechanism every kernel here uses.
//
// The extension is built for baseline x86-64 (no -march), and each hot function is compiled once per level
// below with a per-function target attribute, so one binary holds every path: an AVX-512 path is compiled
// on a CPU without it (Zen 3) and simply never chosen there. At each call the level is the caller's request
// (-1: the best this CPU has) checked against cpuid; asking for a lower level is how the tests run every
// path this CPU can run.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace ember {

// The AVX-512 level needs VNNI too (the quant kernels' int8 dot products), so one level serves every
// kernel; a CPU with AVX-512 but no VNNI runs the AVX2 level.
enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

#define EMBER_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define EMBER_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
// A body written once and compiled inside each level's target function (it must inline to take that
// level's instructions).
#define EMBER_INLINE __attribute__((always_inline)) inline

inline bool isa_available(int64_t isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (isa) {
    case kScalar: return true;
    case kAvx2: return avx2;
    case kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512vnni");
    default: return false;
  }
}

// The levels this CPU runs, lowest first.
inline std::vector<int64_t> available_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {kScalar, kAvx2, kAvx512})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

// The level a call runs: `requested` (-1: the best this CPU has), refused where the CPU lacks it.
inline Isa resolve_isa(int64_t requested, const char* kernel) {
  if (requested < 0) {
    static const Isa best = isa_available(kAvx512) ? kAvx512 : (isa_available(kAvx2) ? kAvx2 : kScalar);
    return best;
  }
  TORCH_CHECK(isa_available(requested), kernel, ": ISA ", requested, " is not available on this CPU");
  return static_cast<Isa>(requested);
}

// Declares NAME<I> and defines it for every level as `return BODY ARGS;` compiled for that level (BODY may
// name the level as I). A template cannot take its target attribute from a template argument, hence one
// explicit specialization per level; each stays out of line, so a level's instructions never leak into a
// caller compiled for another.
#define EMBER_FOR_EACH_ISA(RET, NAME, PARAMS, BODY, ARGS)                                          \
  template <Isa I>                                                                                 \
  RET NAME PARAMS;                                                                                 \
  template <>                                                                                      \
  __attribute__((noinline)) RET NAME<kScalar> PARAMS {                                             \
    [[maybe_unused]] constexpr Isa I = kScalar;                                                    \
    return BODY ARGS;                                                                              \
  }                                                                                                \
  template <>                                                                                      \
  __attribute__((noinline)) EMBER_TARGET_AVX2 RET NAME<kAvx2> PARAMS {                             \
    [[maybe_unused]] constexpr Isa I = kAvx2;                                                      \
    return BODY ARGS;                                                                              \
  }                                                                                                \
  template <>                                                                                      \
  __attribute__((noinline)) EMBER_TARGET_AVX512 RET NAME<kAvx512> PARAMS {                         \
    [[maybe_unused]] constexpr Isa I = kAvx512;                                                    \
    return BODY ARGS;                                                                              \
  }

template <Isa I>
struct IsaTag {
  static constexpr Isa value = I;
};

// f(IsaTag<level>{}) for the level `requested` resolves to: each kernel's one branch point between paths.
template <typename F>
decltype(auto) dispatch_isa(int64_t requested, const char* kernel, F&& f) {
  switch (resolve_isa(requested, kernel)) {
    case kAvx512: return f(IsaTag<kAvx512>{});
    case kAvx2: return f(IsaTag<kAvx2>{});
    default: return f(IsaTag<kScalar>{});
  }
}

}  // namespace ember
