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
}
