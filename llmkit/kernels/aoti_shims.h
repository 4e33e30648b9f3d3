// The operators as C functions that an AOTInductor program calls directly (llmkit/infer/ahead.py).
//
// Why: an AOTInductor program calls an operator it does not know through its proxy executor, which
// boxes the arguments into a stack of IValues and goes through the dispatcher's boxed call, and a
// program's step makes ~150 such calls (SmolLM2-135M, 5 a layer). Given a C function of the name
// AOTInductor derives (aoti_torch_cpu_<operator>) and its declaration (inductor's
// `aot_inductor.custom_ops_to_c_shims`, cpu_kernels.c_shims), the program calls it with tensor handles
// instead (BENCHMARKS.md, 2026-12-06, twenty-first session). Built into the main library only
// (LLMKIT_AOTI_SHIMS); cpu_kernels.py makes its symbols visible to the programs it loads.
#pragma once

#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <optional>

// extern "C" AOTITorchError aoti_torch_cpu_<name>(arguments..., AtenTensorHandle* out): the declaration
// must be cpu_kernels.C_SHIMS's for <name>. A C++ exception becomes an error code and its message
// (AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE); the program raises it as a RuntimeError.
#define LLMKIT_C_SHIM(name, ...) \
  extern "C" __attribute__((visibility("default"))) AOTITorchError aoti_torch_cpu_##name(__VA_ARGS__)

namespace llmkit_shim {
// A handle is an at::Tensor* the program owns: borrowed here, no reference count touched.
inline const at::Tensor& tensor(AtenTensorHandle handle) {
  return *torch::aot_inductor::tensor_handle_to_tensor_pointer(handle);
}
// An optional tensor comes as a pointer to a handle, null for None.
inline std::optional<at::Tensor> optional_tensor(const AtenTensorHandle* handle) {
  return handle ? std::optional<at::Tensor>(tensor(*handle)) : std::nullopt;
}
// The result handed over: the program frees it.
inline AtenTensorHandle handle(at::Tensor&& result) { return torch::aot_inductor::new_tensor_handle(std::move(result)); }
}  // namespace llmkit_shim
