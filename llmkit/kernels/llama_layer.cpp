// A Llama-type decoder layer (pre-norm RMSNorm, rotary positions, grouped-query attention, SwiGLU, no biases)
// on int8_dot.cpp's linear kernels, and a whole batch-1 decode token in ONE parallel region built from the same
// functions.
//
// Why: a batch-1 token of SmolLM2-135M is ~150 operator calls, each linear layer its own OpenMP region, and
// ~130 small compiled kernels (norms, RoPE, residual sums) run on one thread between them while the other
// waits. On the 2-core AVX2 EPYC a token spent ~0.5 ms starting and joining regions and ~0.6 ms between them,
// of ~6 ms (BENCHMARKS.md, twenty-second session); a prototype token in one region read the weights at 80% of
// the machine's bandwidth against the engine's 73% (int8), 70% against 55% (int4) (benchmarks/weight_stream.py).
//
// The one-region step (TokenStep) must give the bits of the compiled graph it stands in for: a prefix-cache hit
// reuses keys and values a decode step wrote, the same prompt prefilled gives them again, and a batch-1 step
// and a batched one must agree (the engine's equivalence tests; attention.cpp says why the bits matter with
// int8 activations). So the graph runs this layer too, as three operators around the KV-cache write and the
// attention operator -- `llama_pre_attention` (RMSNorm, the qkv layer, RoPE), `llama_post_attention` (the
// output layer, the residual, RMSNorm, gate/up with SwiGLU, down, the residual) and `llama_final` (the last
// RMSNorm and the head) -- and every row of both goes through the same functions: rms_norm_row and rope_row
// below (neither inlined nor cloned: one instruction sequence for every caller), int8_linear.h's panels (run_panels, run_swiglu), attention_query.h's
// attend_query. A row's result depends on no other row (the kernels' own rule), so the graph's batched and
// chunked forwards and the one-region token agree bit for bit (tests/test_token_step.py).

#include <omp.h>
#include <torch/custom_class.h>
#include <torch/extension.h>

#include "attention_query.h"
#include "int8_linear.h"

namespace {

typedef float eight_floats __attribute__((vector_size(8 * sizeof(float))));

// x * weight / sqrt(mean(x^2) + eps) for one row of d values (a multiple of 8): the squares summed in 8 lanes,
// the lanes then in order. nn.RMSNorm's arithmetic, rounded its own way; the same bits for every caller.
__attribute__((noinline, noclone)) void rms_norm_row(const float* x, const float* weight, int64_t d, float eps, float* out) {
  eight_floats acc{};
  for (int64_t i = 0; i < d; i += 8) {
    eight_floats v;
    std::memcpy(&v, x + i, sizeof v);
    acc += v * v;
  }
  float sum = 0.f;
  for (int i = 0; i < 8; ++i) sum += acc[i];
  const float r = 1.f / std::sqrt(sum / static_cast<float>(d) + eps);
  for (int64_t i = 0; i < d; i += 8) {
    eight_floats v, w;
    std::memcpy(&v, x + i, sizeof v);
    std::memcpy(&w, weight + i, sizeof w);
    v = v * r * w;
    std::memcpy(out + i, &v, sizeof v);
  }
}

// RoPE on `heads` heads of hd values in place, llmkit.model.apply_rope's rotate-half form:
// x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1) for the halves x1, x2
__attribute__((noinline, noclone)) void rope_row(float* x, int64_t heads, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h, x += hd)
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * cos[i] - b * sin[i];
      x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

Linear linear_of(const at::Tensor& weight, const std::optional<at::Tensor>& scales, int64_t k, const char* op) {
  if (scales.has_value()) check_int8_weight(weight, *scales, op);
  else check_int4_weight(weight, k, op);
  TORCH_CHECK(!scales.has_value() || weight.size(1) == k, op, ": an int8 weight of ", weight.size(1), " inputs for ",
              k, " features");
  return Linear{weight.data_ptr<uint8_t>(), scales.has_value() ? scales->data_ptr<float>() : nullptr, weight.size(0), k};
}

// The graph's linear layers: int8_dot.cpp's operators
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales, int64_t k) {
  return scales.has_value() ? int8_linear(x, weight, *scales) : int4_linear(x, weight, k);
}

at::Tensor linear_swiglu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scales,
                         int64_t k) {
  return scales.has_value() ? int8_linear_swiglu(x, weight, *scales) : int4_linear_swiglu(x, weight, k);
}

at::Tensor float_rows(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 CPU tensor");
  return t.contiguous();
}

// Every row of x (rows, d) through rms_norm_row, into a new tensor; rows in parallel where there are many
at::Tensor norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps, const char* op) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(d % 8 == 0 && weight.numel() == d, op, ": a norm weight of ", weight.numel(), " values for ", d,
              " features (a multiple of 8)");
  const at::Tensor w = float_rows(weight, op, "the norm weight");
  at::Tensor out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op_out = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rms_norm_row(xp + r * d, wp, d, static_cast<float>(eps), op_out + r * d);
  });
  return out;
}

// x (..., d) float32 -> the rows' q, k and v ((..., (heads + 2 kv_heads) hd)), RoPE applied to q and k: the
// attention norm, the qkv layer (int8 weights with their scales, or int4 without), cos and sin (..., hd) the
// rows' RoPE tables.
at::Tensor llama_pre_attention(const at::Tensor& x_in, const at::Tensor& norm, double eps, const at::Tensor& qkv,
                               const std::optional<at::Tensor>& qkv_scales, const at::Tensor& cos_in,
                               const at::Tensor& sin_in, int64_t heads, int64_t kv_heads) {
  const char* op = "llama_pre_attention";
  const at::Tensor x = float_rows(x_in, op, "x");
  const int64_t d = x.size(-1), rows = x.numel() / d, hd = cos_in.size(-1);
  const at::Tensor cos = float_rows(cos_in, op, "cos"), sin = float_rows(sin_in, op, "sin");
  TORCH_CHECK(cos.numel() == rows * hd && sin.numel() == rows * hd && hd % 2 == 0, op, ": cos and sin need ",
              hd, " values for each of the ", rows, " rows");
  TORCH_CHECK(qkv.size(0) == (heads + 2 * kv_heads) * hd, op, ": the qkv layer has ", qkv.size(0), " outputs, not (",
              heads, " + 2 x ", kv_heads, ") x ", hd);
  at::Tensor out = linear(norm_rows(x, norm, eps, op), qkv, qkv_scales, d);
  float* o = out.data_ptr<float>();
  const float *c = cos.data_ptr<float>(), *s = sin.data_ptr<float>();
  const int64_t width = qkv.size(0);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rope_row(o + r * width, heads + kv_heads, c + r * hd, s + r * hd, hd);
  });
  return out;
}

// x (..., d), the attention's output y (..., heads hd) -> the layer's output: h = x + out(y), then
// h + down(silu(gate(norm(h))) * up(norm(h)))
at::Tensor llama_post_attention(const at::Tensor& x_in, const at::Tensor& y, const at::Tensor& out_w,
                                const std::optional<at::Tensor>& out_scales, const at::Tensor& norm, double eps,
                                const at::Tensor& gate_up, const std::optional<at::Tensor>& gate_up_scales,
                                const at::Tensor& down, const std::optional<at::Tensor>& down_scales) {
  const char* op = "llama_post_attention";
  const at::Tensor x = float_rows(x_in, op, "x");
  const int64_t d = x.size(-1);
  at::Tensor h = linear(y, out_w, out_scales, y.size(-1));
  TORCH_CHECK(h.sizes() == x.sizes(), op, ": the output layer gives ", h.sizes(), " for a residual of ", x.sizes());
  float* hp = h.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < h.numel(); ++i) hp[i] = xp[i] + hp[i];
  const at::Tensor act = linear_swiglu(norm_rows(h, norm, eps, op), gate_up, gate_up_scales, d);
  at::Tensor out = linear(act, down, down_scales, act.size(-1));
  float* op_out = out.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) op_out[i] = hp[i] + op_out[i];
  return out;
}

// The final norm and the head: x (..., d) -> logits (..., vocab)
at::Tensor llama_final(const at::Tensor& x_in, const at::Tensor& norm, double eps, const at::Tensor& head,
                       const std::optional<at::Tensor>& head_scales) {
  const at::Tensor x = float_rows(x_in, "llama_final", "x");
  return linear(norm_rows(x, norm, eps, "llama_final"), head, head_scales, x.size(-1));
}

struct Layer {
  const float *attn_norm, *mlp_norm;
  Linear qkv, out, gate_up, down;
};

// A whole batch-1 decode token in one parallel region (llmkit/infer/token_step.py builds it from a model whose
// every layer the graph runs through the operators above). Per layer, every thread normalises and rounds the
// residual row itself (its own copy: no barrier, no shared line written), then takes its share of the qkv
// panels; barrier; its share of the heads' RoPE, and of the kv heads' cache writes; barrier; its share of the
// query heads' attention (attend_query); barrier; its share of the output panels; barrier; the residual, the
// MLP norm, its share of the gate/up panel pairs; barrier; its share of down; barrier; the residual. Then the
// final norm and its share of the head. 6 barriers a layer instead of ~10 operator calls and their regions.
class TokenStep : public torch::CustomClassHolder {
 public:
  // layers: per layer attn_norm, qkv, qkv_scales, out, out_scales, mlp_norm, gate_up, gate_up_scales, down,
  // down_scales (scales empty for int4 layers); then the final norm, head, head_scales. embedding (vocab, d) and
  // cos, sin (positions, hd) float32.
  TokenStep(at::Tensor embedding, std::vector<at::Tensor> tensors, at::Tensor cos, at::Tensor sin, int64_t heads,
            int64_t kv_heads, double eps, double scale)
      : tensors_(std::move(tensors)), embedding_(embedding), cos_(cos), sin_(sin), heads_(heads), kv_heads_(kv_heads),
        eps_(static_cast<float>(eps)), scale_(static_cast<float>(scale)) {
    const char* op = "TokenStep";
    TORCH_CHECK(tensors_.size() % 10 == 3 && tensors_.size() > 3, op, ": 10 tensors a layer and 3 for the head");
    for (const at::Tensor* t : {&embedding_, &cos_, &sin_})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->is_contiguous(), op,
                  ": the embedding and the RoPE tables must be contiguous 2-D float32 tensors");
    d_ = embedding_.size(1), hd_ = cos_.size(1);
    TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0 && d_ % QK == 0 && hd_ % 8 == 0, op, ": ", heads,
                " heads for ", kv_heads, " kv heads, ", d_, " features, head size ", hd_);
    const auto scales = [](const at::Tensor& s) { return s.numel() ? std::optional<at::Tensor>(s) : std::nullopt; };
    const auto norm = [&](const at::Tensor& w) {
      TORCH_CHECK(w.scalar_type() == at::kFloat && w.numel() == d_ && w.is_contiguous(), op,
                  ": a norm weight must be ", d_, " contiguous float32 values");
      return w.data_ptr<float>();
    };
    const int64_t layers = static_cast<int64_t>(tensors_.size()) / 10;
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor* p = tensors_.data() + 10 * l;
      Layer layer{norm(p[0]), norm(p[5]), linear_of(p[1], scales(p[2]), d_, op),
                  linear_of(p[3], scales(p[4]), heads * hd_, op), linear_of(p[6], scales(p[7]), d_, op), {}};
      TORCH_CHECK(layer.qkv.n == (heads + 2 * kv_heads) * hd_ && layer.out.n == d_ && layer.gate_up.n % (2 * PANEL) == 0,
                  op, ": layer ", l, "'s shapes do not match");
      layer.down = linear_of(p[8], scales(p[9]), layer.gate_up.n / 2, op);
      TORCH_CHECK(layer.down.n == d_, op, ": layer ", l, "'s down layer has ", layer.down.n, " outputs");
      TORCH_CHECK(l == 0 || layer.gate_up.n == layers_[0].gate_up.n, op, ": layer ", l, " has ",
                  layer.gate_up.n / 2, " feed-forward units, layer 0 ", layers_[0].gate_up.n / 2);  // (step's buffers)
      layers_.push_back(layer);
    }
    final_norm_ = norm(tensors_[10 * layers]);
    head_ = linear_of(tensors_[10 * layers + 1], scales(tensors_[10 * layers + 2]), d_, op);
  }

  // The logits (1, vocab) of `token` at position `pos` of cache row `row`, its keys and values written there.
  // key_store, value_store: (layers, rows, kv_heads, capacity, hd) float16, the engine's KV cache.
  at::Tensor step(int64_t token, int64_t pos, const at::Tensor& key_store, const at::Tensor& value_store, int64_t row) {
    const int64_t layers = static_cast<int64_t>(layers_.size()), hd = hd_, d = d_;
    TORCH_CHECK(key_store.scalar_type() == at::kHalf && value_store.scalar_type() == at::kHalf &&
                    key_store.is_contiguous() && value_store.is_contiguous() && key_store.dim() == 5 &&
                    key_store.sizes() == value_store.sizes() && key_store.size(0) == layers &&
                    key_store.size(2) == kv_heads_ && key_store.size(4) == hd,
                "TokenStep: the caches must be contiguous float16 (", layers, ", rows, ", kv_heads_, ", capacity, ", hd,
                ") tensors");
    const int64_t cap = key_store.size(3);
    TORCH_CHECK(0 <= row && row < key_store.size(1) && 0 <= pos && pos < cap && pos < cos_.size(0), "TokenStep: row ",
                row, ", position ", pos, " outside the cache (", key_store.size(1), " rows, ", cap, " positions)");
    TORCH_CHECK(0 <= token && token < embedding_.size(0), "TokenStep: token ", token, " outside the vocabulary");
    at::Tensor logits = at::empty({1, head_.n}, embedding_.options());
    const int64_t heads = heads_, kv_heads = kv_heads_, group = heads / kv_heads, qkv_n = (heads + 2 * kv_heads) * hd;
    const int64_t ff = layers_[0].gate_up.n / 2, keys = pos + 1, padded = (keys + KEYS - 1) / KEYS * KEYS;
    std::vector<float> shared(qkv_n + heads * hd + ff + 2 * d);
    float *qkv = shared.data(), *y = qkv + qkv_n, *act = y + heads * hd, *o = act + ff, *o2 = o + d;
    at::Half *kc = key_store.data_ptr<at::Half>(), *vc = value_store.data_ptr<at::Half>();
    const float *c = cos_.data_ptr<float>() + pos * hd, *s = sin_.data_ptr<float>() + pos * hd;
    const float* x0 = embedding_.data_ptr<float>() + token * d;
    std::unique_ptr<bool[]> seen(new bool[padded]);
    std::fill(seen.get(), seen.get() + padded, true);
    int64_t widest = d;
    for (const Layer& l : layers_) widest = std::max({widest, l.out.k, l.down.k});
#pragma omp parallel num_threads(at::get_num_threads())
    {
      const int threads = omp_get_num_threads(), t = omp_get_thread_num();
      const QuantizedActivations a = activation_buffer(1, widest);
      std::vector<float> x(x0, x0 + d), h(d), p(padded), acc(2 * hd);
      for (int64_t li = 0; li < layers; ++li) {
        const Layer& l = layers_[li];
        rms_norm_row(x.data(), l.attn_norm, d, eps_, h.data());
        quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
        run_panels(l.qkv, a, qkv, t, threads);
#pragma omp barrier
        // RoPE on the q and k heads, a share each; a kv head's key (once rotated) and value into the cache
        for (int64_t g = t * kv_heads / threads; g < (t + 1) * kv_heads / threads; ++g) {
          float* key = qkv + (heads + g) * hd;
          const float* value = qkv + (heads + kv_heads + g) * hd;
          rope_row(key, 1, c, s, hd);
          at::Half* kd = kc + (((li * key_store.size(1) + row) * kv_heads + g) * cap + pos) * hd;
          at::Half* vd = vc + (((li * key_store.size(1) + row) * kv_heads + g) * cap + pos) * hd;
          for (int64_t i = 0; i < hd; ++i) kd[i] = key[i], vd[i] = value[i];
        }
        for (int64_t q = t * heads / threads; q < (t + 1) * heads / threads; ++q) rope_row(qkv + q * hd, 1, c, s, hd);
#pragma omp barrier
        for (int64_t q = t * heads / threads; q < (t + 1) * heads / threads; ++q) {
          const int64_t g = q / group, base = ((li * key_store.size(1) + row) * kv_heads + g) * cap * hd;
          attend_query<at::Half>(qkv + q * hd, kc + base, hd, vc + base, hd, nullptr, nullptr, nullptr, 0, seen.get(),
                                 1, keys, hd, scale_, Ahead{}, p.data(), acc.data(), y + q * hd);
        }
#pragma omp barrier
        quantize_row(y, heads * hd, a.q, a.d, a.s, a.sq);
        run_panels(l.out, a, o, t, threads);
#pragma omp barrier
        for (int64_t i = 0; i < d; ++i) x[i] = x[i] + o[i];
        rms_norm_row(x.data(), l.mlp_norm, d, eps_, h.data());
        quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
        run_swiglu(l.gate_up, a, act, t, threads);
#pragma omp barrier
        quantize_row(act, l.down.k, a.q, a.d, a.s, a.sq);
        run_panels(l.down, a, o2, t, threads);
#pragma omp barrier
        for (int64_t i = 0; i < d; ++i) x[i] = x[i] + o2[i];
      }
      rms_norm_row(x.data(), final_norm_, d, eps_, h.data());
      quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
      run_panels(head_, a, logits.data_ptr<float>(), t, threads);
    }
    return logits;
  }

 private:
  std::vector<at::Tensor> tensors_;  // kept alive: layers_ holds their pointers
  at::Tensor embedding_, cos_, sin_;
  int64_t heads_, kv_heads_, d_ = 0, hd_ = 0;
  float eps_, scale_;
  std::vector<Layer> layers_;
  const float* final_norm_ = nullptr;
  Linear head_{};
};

}  // namespace

#ifndef LLMKIT_OPS
#define LLMKIT_OPS llmkit_cpu
#endif
#define LLMKIT_LAYER_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define LLMKIT_LAYER_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

LLMKIT_LAYER_FRAGMENT(LLMKIT_OPS, m) {
  m.def("llama_pre_attention(Tensor x, Tensor norm, float eps, Tensor qkv, Tensor? qkv_scales, Tensor cos, "
        "Tensor sin, int heads, int kv_heads) -> Tensor");
  m.def("llama_post_attention(Tensor x, Tensor y, Tensor out, Tensor? out_scales, Tensor norm, float eps, "
        "Tensor gate_up, Tensor? gate_up_scales, Tensor down, Tensor? down_scales) -> Tensor");
  m.def("llama_final(Tensor x, Tensor norm, float eps, Tensor head, Tensor? head_scales) -> Tensor");
  m.class_<TokenStep>("TokenStep")
      .def(torch::init<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor, int64_t, int64_t, double, double>())
      .def("step", &TokenStep::step);
}

LLMKIT_LAYER_IMPL(LLMKIT_OPS, CPU, m) {
  m.impl("llama_pre_attention", &llama_pre_attention);
  m.impl("llama_post_attention", &llama_post_attention);
  m.impl("llama_final", &llama_final);
}

#ifdef LLMKIT_AOTI_SHIMS
#include "aoti_shims.h"
// The operators above as C functions for AOTInductor programs (aoti_shims.h)
LLMKIT_C_SHIM(llama_pre_attention, AtenTensorHandle x, AtenTensorHandle norm, double eps, AtenTensorHandle qkv,
              AtenTensorHandle* qkv_scales, AtenTensorHandle cos, AtenTensorHandle sin, int64_t heads, int64_t kv_heads,
              AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = handle(llama_pre_attention(tensor(x), tensor(norm), eps, tensor(qkv), optional_tensor(qkv_scales),
                                      tensor(cos), tensor(sin), heads, kv_heads));
  });
}

LLMKIT_C_SHIM(llama_post_attention, AtenTensorHandle x, AtenTensorHandle y, AtenTensorHandle out_w,
              AtenTensorHandle* out_scales, AtenTensorHandle norm, double eps, AtenTensorHandle gate_up,
              AtenTensorHandle* gate_up_scales, AtenTensorHandle down, AtenTensorHandle* down_scales,
              AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = handle(llama_post_attention(tensor(x), tensor(y), tensor(out_w), optional_tensor(out_scales), tensor(norm),
                                       eps, tensor(gate_up), optional_tensor(gate_up_scales), tensor(down),
                                       optional_tensor(down_scales)));
  });
}

LLMKIT_C_SHIM(llama_final, AtenTensorHandle x, AtenTensorHandle norm, double eps, AtenTensorHandle head,
              AtenTensorHandle* head_scales, AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = handle(llama_final(tensor(x), tensor(norm), eps, tensor(head), optional_tensor(head_scales)));
  });
}
#endif
