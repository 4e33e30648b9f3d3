// The drivers of benchmarks/weight_stream.py, appended to llmkit/kernels/int8_dot.cpp's text (they call the
// quantize_row, run_panels and run_swiglu of int8_linear.h, which it includes): a batch-1 decode step's linear
// layers, in their order, in ONE parallel region, each thread taking an even share of a layer's panels, an
// OpenMP barrier between layers (the next layer's input waits for every thread's outputs). No norms, no
// attention, no operator calls, no tensors made: what llmkit's tiles make of the weight stream when nothing
// else runs, the most any batch-1 step built on them could read. Every layer reads the same input row (its
// values do not change the integer tiles' time); the outputs land in one scratch row, not checked.
//
// `decode_token`: a PROTOTYPE of a whole batch-1 decode token in one parallel region, for its time. It is
// not llmkit's model: its norms, RoPE and attention are this file's own arithmetic, not the bits of the
// model's forward (weight_stream.py reports how far its logits are from the model's: within the rounding
// of int8 activations). Float16 caches, SmolLM2's kind of layer only; no checks beyond the shapes it reads.

#include <omp.h>

namespace {

Linear lin_of(const at::Tensor& w, const at::Tensor& s, int64_t k) {
  return Linear{w.data_ptr<uint8_t>(), s.numel() ? s.data_ptr<float>() : nullptr, w.size(0), k};
}

at::Tensor weight_stream(const at::Tensor& x, std::vector<at::Tensor> weights, std::vector<int64_t> in_features,
                         std::vector<at::Tensor> scales) {
  const int64_t layers = static_cast<int64_t>(weights.size());
  TORCH_CHECK(static_cast<int64_t>(in_features.size()) == layers && static_cast<int64_t>(scales.size()) == layers,
              "weight_stream: one in_features and one scales tensor (empty for int4) per weight");
  int64_t widest = 0, longest = 0;
  std::vector<Linear> linears(layers);
  for (int64_t i = 0; i < layers; ++i) {
    if (scales[i].numel()) check_int8_weight(weights[i], scales[i], "weight_stream");
    else check_int4_weight(weights[i], in_features[i], "weight_stream");
    linears[i] = lin_of(weights[i], scales[i], in_features[i]);
    widest = std::max(widest, linears[i].n);
    longest = std::max(longest, linears[i].k);
  }
  const at::Tensor x2 = as_rows(x, x.size(-1), "weight_stream");
  TORCH_CHECK(x2.numel() >= longest, "weight_stream: x must hold the widest layer's ", longest, " inputs");
  at::Tensor out = at::empty({widest}, x.options().dtype(at::kFloat));
  const float* in = x2.data_ptr<float>();
  float* o = out.data_ptr<float>();
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const QuantizedActivations a = activation_buffer(1, longest);
    for (const Linear& linear : linears) {
      quantize_row(in, linear.k, a.q, a.d, a.s, a.sq);  // every thread its own copy, as int8_dot.cpp's decode calls
      run_panels(linear, a, o, t, threads);
#pragma omp barrier
    }
  }
  return out;
}

#if defined(__AVX2__)
// x * w / sqrt(mean(x^2) + eps) for one row of d (a multiple of 8) values
inline void rms_norm_row(const float* x, const float* w, int64_t d, float eps, float* out) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) { __m256 v = _mm256_loadu_ps(x + i); acc = _mm256_fmadd_ps(v, v, acc); }
  const float r = 1.f / std::sqrt(horizontal_sum(acc) / d + eps);
  const __m256 rv = _mm256_set1_ps(r);
  for (int64_t i = 0; i < d; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv), _mm256_loadu_ps(w + i)));
}

// RoPE on one head in place, llmkit.model.apply_rope's rotate-half form: x * cos + rotate_half(x) * sin
inline void rope_head(float* h, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = h[i], b = h[i + half];
    h[i] = a * cos[i] - b * sin[i];
    h[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

// One token of a Llama-type model (pre-norm RMSNorm, RoPE, grouped-query attention over a float16 cache,
// SwiGLU, no biases) at position `pos`, from its embedding row x0, in ONE parallel region: per layer,
// each thread normalises and rounds the residual row itself (no barrier for it), takes its share of the
// qkv panels; barrier; thread 0 rotates the key and writes the key and value rows into the cache; barrier;
// each thread its share of the query heads' attention (scores, softmax with vector_exp.h's exp, values);
// barrier; its share of o; barrier; the residual, the MLP norm, its share of gate+up panel pairs with
// int8_dot.cpp's SwiGLU epilogue; barrier; its share of down; barrier; the residual (every thread its own
// copy of the row). Then the final norm and the head's panels. t: per layer attn_norm, qkv, qkv_scales, out,
// out_scales, mlp_norm, gate_up, gate_up_scales, down, down_scales (scales empty for int4 layers), then the
// final norm, head, head_scales. k_cache, v_cache: (layers, kv_heads, capacity, head_dim) float16; cos, sin:
// the model's RoPE tables (positions, head_dim). Returns the logits.
at::Tensor decode_token(const at::Tensor& x0, std::vector<at::Tensor> t, at::Tensor k_cache, at::Tensor v_cache,
                        const at::Tensor& cos, const at::Tensor& sin, int64_t pos, int64_t heads, int64_t kv_heads,
                        double eps) {
  const int64_t d = x0.numel(), layers = (static_cast<int64_t>(t.size()) - 3) / 10, hd = cos.size(1);
  const int64_t cap = k_cache.size(2);
  TORCH_CHECK(static_cast<int64_t>(t.size()) == 10 * layers + 3 && hd == 64 && heads % kv_heads == 0 &&
              k_cache.scalar_type() == at::kHalf && v_cache.scalar_type() == at::kHalf && k_cache.is_contiguous() &&
              v_cache.is_contiguous() && k_cache.size(0) == layers && k_cache.size(1) == kv_heads && pos < cap &&
              pos < cos.size(0), "decode_token: a Llama-type layer list, head size 64, float16 caches, pos < capacity");
  std::vector<Linear> qkv(layers), out(layers), gu(layers), down(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* p = t.data() + 10 * l;
    qkv[l] = lin_of(p[1], p[2], d); out[l] = lin_of(p[3], p[4], heads * hd);
    gu[l] = lin_of(p[6], p[7], d); down[l] = lin_of(p[8], p[9], gu[l].n / 2);
  }
  const Linear head = lin_of(t[10 * layers + 1], t[10 * layers + 2], d);
  const float* final_norm = t[10 * layers].data_ptr<float>();
  at::Tensor logits = at::empty({head.n}, x0.options());
  const int64_t qkv_n = (heads + 2 * kv_heads) * hd, ff = gu[0].n / 2;
  std::vector<float> shared(qkv_n + d + ff + 2 * d + 64);
  float *qkv_buf = shared.data(), *y = qkv_buf + qkv_n, *act = y + d, *o = act + ff, *o2 = o + d;
  at::Half* kc = k_cache.data_ptr<at::Half>();
  at::Half* vc = v_cache.data_ptr<at::Half>();
  const float *c = cos.data_ptr<float>() + pos * hd, *s = sin.data_ptr<float>() + pos * hd;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), th = omp_get_thread_num();
    const QuantizedActivations a = activation_buffer(1, 2048);
    std::vector<float> x(x0.data_ptr<float>(), x0.data_ptr<float>() + d), h(d), scores(pos + 9);
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor* p = t.data() + 10 * l;
      rms_norm_row(x.data(), p[0].data_ptr<float>(), d, eps, h.data());
      quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
      run_panels(qkv[l], a, qkv_buf, th, threads);
#pragma omp barrier
      if (th == 0) {  // k: rope, then k and v into the cache at pos
        for (int64_t g = 0; g < kv_heads; ++g) {
          float* kh = qkv_buf + heads * hd + g * hd;
          const float* vh = qkv_buf + (heads + kv_heads) * hd + g * hd;
          rope_head(kh, c, s, hd);
          at::Half* kd = kc + ((l * kv_heads + g) * cap + pos) * hd;
          at::Half* vd = vc + ((l * kv_heads + g) * cap + pos) * hd;
          for (int64_t i = 0; i < hd; ++i) kd[i] = kh[i], vd[i] = vh[i];
        }
      }
#pragma omp barrier
      for (int64_t qh = th * heads / threads; qh < (th + 1) * heads / threads; ++qh) {
        float* q = qkv_buf + qh * hd;
        rope_head(q, c, s, hd);
        const int64_t g = qh / (heads / kv_heads);
        const at::Half* kb = kc + (l * kv_heads + g) * cap * hd;
        const at::Half* vb = vc + (l * kv_heads + g) * cap * hd;
        float top = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t i = 0; i < hd; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i),
                                  _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kb + j * hd + i))), acc);
          scores[j] = horizontal_sum(acc) * scale;
          top = std::max(top, scores[j]);
        }
        float sum = 0.f;
        int64_t j = 0;
        for (; j + PANEL <= pos + 1; j += PANEL) {
          panel_floats v;
          std::memcpy(&v, scores.data() + j, sizeof v);
          v = v - top;
          v = v > -87.0f ? v : panel_floats{} - 87.0f;
          v = exp_in_range(v);
          std::memcpy(scores.data() + j, &v, sizeof v);
          for (int i = 0; i < PANEL; ++i) sum += v[i];
        }
        for (; j <= pos; ++j) sum += scores[j] = std::exp(scores[j] - top);
        __m256 accs[8];
        for (int i = 0; i < 8; ++i) accs[i] = _mm256_setzero_ps();
        for (int64_t j = 0; j <= pos; ++j) {
          const __m256 pj = _mm256_set1_ps(scores[j] / sum);
          for (int i = 0; i < 8; ++i)
            accs[i] = _mm256_fmadd_ps(pj, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vb + j * hd + 8 * i))), accs[i]);
        }
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(y + qh * hd + 8 * i, accs[i]);
      }
#pragma omp barrier
      quantize_row(y, heads * hd, a.q, a.d, a.s, a.sq);
      run_panels(out[l], a, o, th, threads);
#pragma omp barrier
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
      rms_norm_row(x.data(), p[5].data_ptr<float>(), d, eps, h.data());
      quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
      run_swiglu(gu[l], a, act, th, threads);
#pragma omp barrier
      quantize_row(act, ff, a.q, a.d, a.s, a.sq);
      run_panels(down[l], a, o2, th, threads);
#pragma omp barrier
      for (int64_t i = 0; i < d; ++i) x[i] += o2[i];
    }
    rms_norm_row(x.data(), final_norm, d, eps, h.data());
    quantize_row(h.data(), d, a.q, a.d, a.s, a.sq);
    run_panels(head, a, logits.data_ptr<float>(), th, threads);
  }
  return logits;
}
#endif

}  // namespace

#define WEIGHT_STREAM_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
WEIGHT_STREAM_FRAGMENT(LLMKIT_OPS, m) {
  m.def("weight_stream(Tensor x, Tensor[] weights, int[] in_features, Tensor[] scales) -> Tensor", &weight_stream);
#if defined(__AVX2__)
  m.def("decode_token(Tensor x, Tensor[] t, Tensor k_cache, Tensor v_cache, Tensor cos, Tensor sin, int pos, "
        "int heads, int kv_heads, float eps) -> Tensor", &decode_token);
#endif
}
