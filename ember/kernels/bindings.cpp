// The Python face of ember's native kernels (one extension module built from every .cpp here).
//
// Every kernel takes `isa`: -1 runs the best level this CPU has (isa.h), 0 / 1 / 2 force scalar / AVX2 /
// AVX-512 (refused where the CPU lacks it), which is how the tests compare every path with the scalar one.
#include <torch/extension.h>

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor lens, int64_t block_size,
                                     int64_t n_kv_heads, int64_t window, int64_t isa);
torch::Tensor add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor weight,
                           double eps, int64_t isa);
torch::Tensor rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor slots, int64_t n_heads, int64_t n_kv_heads,
                            int64_t head_dim, int64_t isa);
torch::Tensor silu_mul(torch::Tensor gu, int64_t isa);
std::vector<torch::Tensor> quantize_activations_int8(torch::Tensor x, int64_t isa);
void gguf_matmul_int8(torch::Tensor xq, torch::Tensor xd, torch::Tensor xs, torch::Tensor xc, torch::Tensor w,
                      int64_t qtype, torch::Tensor rows, double scale, torch::Tensor out, int64_t isa);
torch::Tensor gguf_dequantize_rows(torch::Tensor w, int64_t qtype, torch::Tensor ids, int64_t K, int64_t isa);
std::vector<int64_t> cpu_isas();
torch::Tensor gguf_linear_int8(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                               std::vector<torch::Tensor> rows, std::vector<double> scales, int64_t isa);

// The kernels touch no Python object, so they release the GIL as torch's own ops do: the engine runs on
// its own thread, and holding the GIL through a forward pass stalled the event loop (HTTP, SSE writes).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using release = py::call_guard<py::gil_scoped_release>;
  const auto isa = py::arg("isa") = -1;
  m.def("paged_decode_attention", &paged_decode_attention, "attention over a paged KV cache, row by row",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("tables"), py::arg("lens"),
        py::arg("block_size"), py::arg("n_kv_heads"), py::arg("window") = 0, isa, release());
  m.def("add_rms_norm", &add_rms_norm, "h += delta; rmsnorm(h) * weight", py::arg("h"), py::arg("delta"),
        py::arg("weight"), py::arg("eps"), isa, release());
  m.def("rope_write_kv", &rope_write_kv, "RoPE on q and k, k and v into the cache, rotated q out", py::arg("qkv"),
        py::arg("cos"), py::arg("sin"), py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"),
        py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), isa, release());
  m.def("silu_mul", &silu_mul, "silu(gate) * up", py::arg("gu"), isa, release());
  m.def("quantize_activations_int8", &quantize_activations_int8,
        "x -> int8 blocks of 32, their scales, sums and lane corrections", py::arg("x"), isa, release());
  m.def("gguf_matmul_int8", &gguf_matmul_int8,
        "out = scale * x @ W[rows]^T, W in a GGUF block format, x as quantize_activations_int8 gave it",
        py::arg("xq"), py::arg("xd"), py::arg("xs"), py::arg("xc"), py::arg("w"), py::arg("qtype"), py::arg("rows"),
        py::arg("scale"), py::arg("out"), isa, release());
  m.def("gguf_linear_int8", &gguf_linear_int8, "x @ concat(parts)^T, each part a GGUF block tensor", py::arg("x"),
        py::arg("ws"), py::arg("qtypes"), py::arg("rows"), py::arg("scales"), isa, release());
  m.def("gguf_dequantize_rows", &gguf_dequantize_rows, "rows of a GGUF block tensor as float32", py::arg("w"),
        py::arg("qtype"), py::arg("ids"), py::arg("K"), isa, release());
  m.def("cpu_isas", &cpu_isas, "the ISA levels this CPU runs (0 scalar, 1 avx2, 2 avx512 with VNNI)", release());
}
