// The Python face of ember's native kernels (one extension module built from every .cpp here).
#include <torch/extension.h>

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor tables, torch::Tensor lens, int64_t block_size,
                                     int64_t n_kv_heads, int64_t window);
torch::Tensor add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor weight,
                           double eps);
torch::Tensor rope_write_kv(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                            torch::Tensor v_cache, torch::Tensor slots, int64_t n_heads, int64_t n_kv_heads,
                            int64_t head_dim);
torch::Tensor silu_mul(torch::Tensor gu);
std::vector<torch::Tensor> quant_activations(torch::Tensor x);
void quant_matmul(torch::Tensor xq, torch::Tensor xd, torch::Tensor xs, torch::Tensor xc, torch::Tensor w,
                  int64_t qtype, torch::Tensor rows, double scale, torch::Tensor out, int64_t isa);
torch::Tensor quant_dequantize_rows(torch::Tensor w, int64_t qtype, torch::Tensor ids, int64_t K);
std::vector<int64_t> quant_isas();
torch::Tensor quant_linear(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                           std::vector<torch::Tensor> rows, std::vector<double> scales, int64_t isa);

// The kernels touch no Python object, so they release the GIL as torch's own ops do: the engine runs on
// its own thread, and holding the GIL through a forward pass stalled the event loop (HTTP, SSE writes).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("paged_decode_attention", &paged_decode_attention, "attention over a paged KV cache, row by row",
        pybind11::arg("q"), pybind11::arg("k_cache"), pybind11::arg("v_cache"), pybind11::arg("tables"),
        pybind11::arg("lens"), pybind11::arg("block_size"), pybind11::arg("n_kv_heads"),
        pybind11::arg("window") = 0, release());
  m.def("add_rms_norm", &add_rms_norm, "h += delta; rmsnorm(h) * weight", pybind11::arg("h"),
        pybind11::arg("delta"), pybind11::arg("weight"), pybind11::arg("eps"), release());
  m.def("rope_write_kv", &rope_write_kv, "RoPE on q and k, k and v into the cache, rotated q out", release());
  m.def("silu_mul", &silu_mul, "silu(gate) * up", release());
  m.def("quant_activations", &quant_activations, "x -> int8 blocks of 32, their scales, sums and lane corrections", release());
  m.def("quant_matmul", &quant_matmul, "out = scale * x @ W[rows]^T, W in a GGUF block format", release());
  m.def("quant_linear", &quant_linear, "x @ concat(parts)^T, each part a GGUF block tensor", release());
  m.def("quant_dequantize_rows", &quant_dequantize_rows, "rows of a GGUF block tensor as float32", release());
  m.def("quant_isas", &quant_isas, "the quant_matmul ISAs this CPU runs (0 portable, 1 avx2, 2 avx512vnni)",
        release());
}
