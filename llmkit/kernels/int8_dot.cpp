// Linear layers with int8 activations and int4 or int8 weights, for x86 CPUs.
//
// Why: PyTorch's weight-only CPU kernels (_weight_int4pack_mm_for_cpu, _weight_int8pack_mm) turn the
// weights back into bf16 or fp32 and multiply in floating point. On a CPU without bf16 units that
// costs more than reading the weights (BENCHMARKS.md, issue 25: 14-17% of the memory bandwidth).
// llama.cpp instead quantizes each activation row to int8 in blocks of 32 (its Q8 formats) and
// multiplies integers with the CPU's byte dot-product instructions (ggml-cpu's vec_dot_q4_1_q8_1 and
// vec_dot_q8_0_q8_0). These kernels do the same, for llmkit's own weight layouts:
//
// - int4: 4-bit values q in [0, 15] with an fp16 scale d and min m per row and block of 32 inputs
//   (w = q * d + m, as Q4_1), in panels of 16 output rows with AVX-512, 8 without (int8_tiles.h).
// - int8: int8 values in [-127, 127] (stored + 128) and one fp32 scale per output row (llmkit's
//   per-channel int8), in panels like int4's.
//
// An activation row x is quantized per block b of 32: d_x = max|x| / 127, q_x = round(x / d_x), and
// s_x = sum(x) is kept exactly. Then for int4: y = sum_b d_w d_x <q_w, q_x> + m_w s_x; for int8:
// y = s_w sum_b d_x <q_w, q_x>.
//
// The byte dot product: AVX-512 VNNI / AVX-VNNI `vpdpbusd` (unsigned x signed bytes, four at a time into
// int32); AVX2 `vpmaddubsw` + `vpmaddwd`; plain C++ otherwise. The unsigned operand is the weight: the
// 4-bit value, or the int8 one plus 128 (corrected by 128 * the activation block's sum); for int8 on
// AVX2, |w| against x carrying w's sign.
//
// Every (row, output) pair is computed by the same instruction sequence whatever the number of rows,
// so a row's result does not depend on the batch it is in (the engine's batched == one-by-one tests).
// The multiply tiles, per instruction set, are in int8_tiles.h; int8_linear.h quantizes the activations and
// runs the tiles over a layer's panels (a header, so that llama_layer.cpp's one-region decode token runs the
// same code); this file registers the operators. It is built at first use with -march=native
// (llmkit/cpu_kernels.py): the ISA is the machine's own.

#include <torch/library.h>

#include <string>
#include <vector>

#include "int8_linear.h"

namespace {

// How many threads at::parallel_for gives a 64-item loop here: the test that the file was built with
// OpenMP (without it at::parallel_for runs everything on the calling thread).
int64_t parallel_threads() {
  std::vector<int> used(at::get_num_threads() + 1, 0);
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < static_cast<int>(used.size())) used[t] = 1;
  });
  int64_t n = 0;
  for (int u : used) n += u;
  return n;
}

// The rows of a full panel in this build's weight layout (cpu_kernels.py packs the weights for it)
int64_t panel_rows() { return PANEL; }

std::string isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "avx512-vnni";
#elif defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

// Registered as operators so that torch.compile can call them from a compiled decode step. The
// namespace is llmkit_cpu; tests build the file again for other instruction sets under other names.
#ifndef LLMKIT_OPS
#define LLMKIT_OPS llmkit_cpu
#endif
#define LLMKIT_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define LLMKIT_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

LLMKIT_LIBRARY(LLMKIT_OPS, m) {
  m.def("int4_linear(Tensor x, Tensor weight, int in_features) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int4_linear_swiglu(Tensor x, Tensor weight, int in_features) -> Tensor");
  m.def("int8_linear_swiglu(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("isa() -> str", &isa);
  m.def("panel_rows() -> int", &panel_rows);
  m.def("parallel_threads() -> int", &parallel_threads);
}

LLMKIT_LIBRARY_IMPL(LLMKIT_OPS, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_linear_swiglu", &int4_linear_swiglu);
  m.impl("int8_linear_swiglu", &int8_linear_swiglu);
}

#ifdef LLMKIT_AOTI_SHIMS
#include "aoti_shims.h"
// The operators above as C functions for AOTInductor programs (aoti_shims.h)
LLMKIT_C_SHIM(int4_linear, AtenTensorHandle x, AtenTensorHandle weight, int64_t in_features, AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({ *out = handle(int4_linear(tensor(x), tensor(weight), in_features)); });
}

LLMKIT_C_SHIM(int8_linear, AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle scales, AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({ *out = handle(int8_linear(tensor(x), tensor(weight), tensor(scales))); });
}

LLMKIT_C_SHIM(int4_linear_swiglu, AtenTensorHandle x, AtenTensorHandle weight, int64_t in_features,
              AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({ *out = handle(int4_linear_swiglu(tensor(x), tensor(weight), in_features)); });
}

LLMKIT_C_SHIM(int8_linear_swiglu, AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle scales,
              AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = handle(int8_linear_swiglu(tensor(x), tensor(weight), tensor(scales)));
  });
}
#endif
