// Attention over a KV cache whose result for a query does not depend on the other queries or keys
// computed with it, for the models whose linear layers round activations to int8 (int8_dot.cpp).
//
// Why: a network that rounds its activations is discontinuous. A difference of one unit in the last
// place of an attention output can move an activation across a rounding boundary, the next layers
// turn that into differences of the size of the rounding itself, and after a few layers two runs of
// the same prompt disagree as much as int4 disagrees with fp32. Measured on SmolLM2-135M int4 with
// int8 activations (BENCHMARKS.md): the same 400 tokens prefilled whole or in two chunks differ by a
// mean KL of 0.023 nats, the int4-vs-fp32 figure itself, and the greedy token differs at 12% of the
// positions, because PyTorch's attention rounds a query's result slightly differently with 1 or 42
// queries beside it (1e-7). A prefix-cache hit, a chunked prefill or another batch then changed greedy
// replies. Here each query's result is computed by the same arithmetic whatever the number of queries,
// keys past its own, padding rows or threads: the dot products over the head dimension in 16 fixed lanes
// and a fixed tree, the softmax's normaliser and the weighted sum of values split by each key's own index.
// With the linear kernels' row independence, a prompt prefilled whole, in chunks or from the prefix
// cache, alone or in a batch, gives bit-identical logits (tests/test_cpu_kernels.py).

#include <torch/extension.h>

#include "attention_query.h"

namespace {

#if defined(__AVX512F__)
// The G query heads of one kv head, decoding (one query each, seeing the same keys: a mask broadcast over
// heads), scored and summed together: each key and value is loaded and converted once for the G of them
// (dot4_group, weighted_values) instead of once a query. Every score, weight and sum is attend_query's
// arithmetic for that query, so the bits are those of the query alone. q: the G queries, D apart; p: G
// rows of `padded` scores; out: G outputs, D apart.
template <int G, int D, typename KV>
void attend_group(const float* q, const KV* kb, int64_t ks, const KV* vb, int64_t vs, const float* k_scale,
                  const float* v_scale, int64_t st, const bool* seen, int64_t ms, int64_t last, float scale_f,
                  const Ahead& ahead, float* p, int64_t padded, float* out) {
  constexpr bool INT8 = std::is_same_v<KV, int8_t>;
  const int64_t limit = (last + KEYS - 1) / KEYS * KEYS;
  PacedPrefetch<KV> prefetch(ahead, last, ks, vs, st, D);
  for (int64_t j = 0; j < limit;) {
    prefetch.step();
    if (j + 4 <= last && seen[j * ms] && seen[(j + 1) * ms] && seen[(j + 2) * ms] && seen[(j + 3) * ms]) {
      v4 four[G];
      dot4_group<G, KV>(q, D, kb + j * ks, ks, D, four);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) {
        if constexpr (INT8)
          four[g] = four[g] * v4{k_scale[j * st], k_scale[(j + 1) * st], k_scale[(j + 2) * st], k_scale[(j + 3) * st]};
        four[g] = four[g] * scale_f;
        std::memcpy(p + g * padded + j, &four[g], sizeof four[g]);
      }
      j += 4;
    } else {
      for (int g = 0; g < G; ++g) p[g * padded + j] = score_one(q + g * D, kb, ks, k_scale, st, seen, ms, j, last, D, scale_f);
      ++j;
    }
  }
  float sums[G];
  for (int g = 0; g < G; ++g) sums[g] = softmax_weights(p + g * padded, limit, last, v_scale, st);
  weighted_values<D, G, KV>(p, padded, sums, vb, vs, seen, ms, last, out);
  for (int g = 0; g < G; ++g)
    if (sums[g] == 0.f) std::fill(out + g * D, out + (g + 1) * D, 0.f);  // sees nothing: a padding row
}
#endif

// q (batch, heads, queries, d) float; k, v (batch, kv_heads, keys, d) of KV (float, half, or int8 with row
// scales k_rows / v_rows), each row's last dimension contiguous; the mask (batch, heads, queries, keys) at
// mp, read through mask_strides (zero along a dimension it is broadcast over); out like q.
template <typename KV>
void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const bool* mp,
            const std::array<int64_t, 4>& mask_strides, int64_t keys, float scale_f, at::Tensor& out,
            RowScales k_rows = {}, RowScales v_rows = {}) {
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), d = q.size(3);
  const int64_t kv_heads = k.size(1), ks = k.stride(2), vs = v.stride(2);
  const float* qp = q.data_ptr<float>();
  const KV *kp = static_cast<const KV*>(k.data_ptr()), *vp = static_cast<const KV*>(v.data_ptr());
  float* op = out.data_ptr<float>();
  const int64_t group = heads / kv_heads, padded = (keys + KEYS - 1) / KEYS * KEYS;
  TORCH_CHECK(k_rows.row_stride == v_rows.row_stride, "attention: k_scale and v_scale need the same strides");
  // Many queries: the keys transposed once per (batch row, kv head) in blocks of 16, and scored 16 at a time
  // (dot_keys); few queries (decoding): scored one by one (dot), without the copy. The same bits either way.
  const bool transpose = queries * group >= 16;
  std::vector<float> kt(transpose ? batch * kv_heads * padded * d : 0, 0.f);
  if (transpose) {
    at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const KV* kb = kp + bh / kv_heads * k.stride(0) + bh % kv_heads * k.stride(1);
        float* dst = kt.data() + bh * padded * d;
        for (int64_t j = 0; j < keys; ++j)
          for (int64_t c = 0; c < d; ++c)
            dst[(j / KEYS) * KEYS * d + c * KEYS + j % KEYS] = to_float(kb[j * ks + c]);
      }
    });
  }
#if defined(__AVX512F__)
  // Decoding with grouped-query attention: the query heads of a kv head together (attend_group), in runs
  // of up to 4 (the registers their sums take)
  const int64_t run = group % 4 == 0 ? 4 : group % 3 == 0 ? 3 : group % 2 == 0 ? 2 : 1;
  if (!transpose && queries == 1 && run > 1 && mask_strides[1] == 0 && (d == 64 || d == 128)) {
    at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> p(run * padded);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / kv_heads, kvh = bh % kv_heads;
        const bool* seen = mp + b * mask_strides[0];
        const int64_t ms = mask_strides[3];
        int64_t last = keys;
        while (last > 0 && !seen[(last - 1) * ms]) --last;
        using Plan = PrefetchPlan<KV>;
        const int64_t next = bh + Plan::ahead;
        const KV *kb = kp + b * k.stride(0) + kvh * k.stride(1), *vb = vp + b * v.stride(0) + kvh * v.stride(1);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; h += run) {
          Ahead ahead;  // the rows of the group ahead, asked for by the kv head's first run
          if (h == kvh * group && last > 0 && next < batch * kv_heads) {
            const int64_t nb = next / kv_heads, nh = next % kv_heads;
            ahead = {reinterpret_cast<const char*>(kp + nb * k.stride(0) + nh * k.stride(1)),
                     reinterpret_cast<const char*>(vp + nb * v.stride(0) + nh * v.stride(1)), k_rows.of(nb, nh),
                     v_rows.of(nb, nh), 0, last};
          }
          const float* qh = qp + (b * heads + h) * d;
          float* oh = op + (b * heads + h) * d;
          const float *k_scale = k_rows.of(b, kvh), *v_scale = v_rows.of(b, kvh);
          const auto call = [&](auto G, auto D) {
            attend_group<decltype(G)::value, decltype(D)::value, KV>(qh, kb, ks, vb, vs, k_scale, v_scale,
                                                                   k_rows.row_stride, seen, ms, last, scale_f,
                                                                   ahead, p.data(), padded, oh);
          };
          using D64 = std::integral_constant<int, 64>;
          using D128 = std::integral_constant<int, 128>;
          if (run == 4) d == 64 ? call(std::integral_constant<int, 4>{}, D64{}) : call(std::integral_constant<int, 4>{}, D128{});
          else if (run == 3) d == 64 ? call(std::integral_constant<int, 3>{}, D64{}) : call(std::integral_constant<int, 3>{}, D128{});
          else d == 64 ? call(std::integral_constant<int, 2>{}, D64{}) : call(std::integral_constant<int, 2>{}, D128{});
        }
      }
    });
    return;
  }
#endif
  at::parallel_for(0, batch * heads * queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(padded), acc(2 * d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (heads * queries), h = item / queries % heads, i = item % queries;
      const float* qi = qp + item * d;
      const bool* seen = mp + b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2];
      const int64_t ms = mask_strides[3];
      int64_t last = keys;  // keys past the last seen one are skipped (the causal half of a prefill)
      while (last > 0 && !seen[(last - 1) * ms]) --last;
      // Decoding, a query asks, as it scores its keys, for rows of the group ahead to be brought into the
      // cache, a few a step (PrefetchPlan): each (batch row, kv head) reads a few KB of cache once from
      // memory, a stream too short for the hardware prefetcher, and the reads waited on memory instead of
      // overlapping the arithmetic (AVX-512 EPYC, float16 keys, the first query asking for the whole group
      // 2 ahead: 1.18-1.77x a call, a batch-32 int4 decode 1.045x; BENCHMARKS.md). Shared, query r of a
      // group of g asks for rows [last * r / g, last * (r + 1) / g).
      using Plan = PrefetchPlan<KV>;
      const int64_t next = b * kv_heads + h / group + Plan::ahead, r = h % group;
      Ahead ahead;
      if (!transpose && i == 0 && last > 0 && next < batch * kv_heads && (Plan::shared || r == 0)) {
        const int64_t nb = next / kv_heads, nh = next % kv_heads;
        const int64_t begin = Plan::shared ? last * r / group : 0, end = Plan::shared ? last * (r + 1) / group : last;
        ahead = {reinterpret_cast<const char*>(kp + nb * k.stride(0) + nh * k.stride(1)),
                 reinterpret_cast<const char*>(vp + nb * v.stride(0) + nh * v.stride(1)), k_rows.of(nb, nh),
                 v_rows.of(nb, nh), begin, end};
      }
      attend_query<KV>(qi, kp + b * k.stride(0) + h / group * k.stride(1), ks,
                       vp + b * v.stride(0) + h / group * v.stride(1), vs,
                       transpose ? kt.data() + (b * kv_heads + h / group) * padded * d : nullptr,
                       k_rows.of(b, h / group), v_rows.of(b, h / group), k_rows.row_stride, seen, ms, last, d,
                       scale_f, ahead, p.data(), acc.data(), op + item * d);
    }
  });
}

// Half and int8 keys and values are read as they are; any other dtype is converted to float first.
at::Tensor keys_or_values(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  const at::Tensor f = dtype == at::kHalf || dtype == at::kFloat || dtype == at::kChar ? t : t.to(at::kFloat);
  return f.stride(-1) == 1 ? f : f.contiguous();
}

// An int8 cache's scales for k or v (batch, kv_heads, >= keys, d): (batch, kv_heads, >= keys, 1) float32.
RowScales row_scales(const std::optional<at::Tensor>& scales, const at::Tensor& kv, int64_t keys, const char* name) {
  TORCH_CHECK(scales.has_value(), "attention: int8 keys and values need k_scale and v_scale (one float32 per row)");
  const at::Tensor& s = *scales;
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.dim() == 4 && s.device().is_cpu() && s.size(0) == kv.size(0) &&
                  s.size(1) == kv.size(1) && s.size(2) >= keys && s.size(3) == 1,
              "attention: ", name, " must be a float32 CPU tensor (", kv.size(0), ", ", kv.size(1), ", >= ", keys,
              ", 1); it is ", s.scalar_type(), " ", s.sizes());
  return RowScales{s.data_ptr<float>(), s.stride(0), s.stride(1), s.stride(2)};
}

// q (batch, heads, queries, d); k, v (batch, kv_heads, >= keys, d), one dtype (half, int8: read as such), query
// head h reading key/value head h / (heads / kv_heads); mask bool (batch, heads, queries, keys), its first
// three dimensions broadcastable, true where a query sees a key. A query that sees no key gets zeros (a
// padding row's). The mask's width is the number of keys attended: k and v may hold more (the engine
// passes a KV cache's whole rows, not a slice of them, so that a compiled step has no slice whose
// contiguity -- the attention length equal to the cache's capacity or not -- it would specialise on).
// int8 k and v (an int8 KV cache): k_scale and v_scale give each row's scale (row_scales above).
at::Tensor attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& mask_in,
                     double scale, const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "attention: q, k and v must be 4-D");
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(), "attention: CPU tensors only");
  TORCH_CHECK(mask_in.scalar_type() == at::kBool && mask_in.dim() == 4, "attention: the mask must be a 4-D bool tensor");
  TORCH_CHECK(k_in.scalar_type() == v_in.scalar_type(), "attention: k is ", k_in.scalar_type(), " and v ",
              v_in.scalar_type(), "; they must have one dtype");
  // no dispatcher calls for what a decode step passes (float32 contiguous q, a half or float cache, a
  // broadcast mask): ~30 calls a token
  const at::Tensor q = q_in.scalar_type() == at::kFloat && q_in.is_contiguous() ? q_in : q_in.to(at::kFloat).contiguous();
  const at::Tensor k = keys_or_values(k_in), v = keys_or_values(v_in);
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), d = q.size(3);
  const int64_t kv_heads = k.size(1), keys = mask_in.size(3);
  TORCH_CHECK(k.size(0) == batch && k.size(3) == d && v.sizes() == k.sizes(), "attention: q ", q.sizes(), ", k ",
              k.sizes(), " and v ", v.sizes(), " do not match");
  TORCH_CHECK(keys <= k.size(2), "attention: the mask covers ", keys, " keys; k and v hold ", k.size(2));
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "attention: ", heads, " query heads for ", kv_heads, " kv heads");
  // the mask read in place, broadcast to (batch, heads, queries, keys) by a zero stride
  const int64_t wanted[4] = {batch, heads, queries, keys};
  std::array<int64_t, 4> mask_strides{};
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK(mask_in.size(i) == wanted[i] || mask_in.size(i) == 1, "attention: a mask of shape ", mask_in.sizes(),
                " does not broadcast to (", batch, ", ", heads, ", ", queries, ", ", keys, ")");
    mask_strides[i] = mask_in.size(i) == 1 ? 0 : mask_in.stride(i);
  }
  at::Tensor out = at::empty({batch, heads, queries, d}, q.options());
  const bool int8 = k.scalar_type() == at::kChar;
  TORCH_CHECK(int8 || (!k_scale.has_value() && !v_scale.has_value()), "attention: k_scale and v_scale are for int8 "
              "keys and values; these are ", k.scalar_type());
  if (int8)
    attend<int8_t>(q, k, v, mask_in.data_ptr<bool>(), mask_strides, keys, static_cast<float>(scale), out,
                   row_scales(k_scale, k, keys, "k_scale"), row_scales(v_scale, v, keys, "v_scale"));
  else if (k.scalar_type() == at::kHalf)
    attend<at::Half>(q, k, v, mask_in.data_ptr<bool>(), mask_strides, keys, static_cast<float>(scale), out);
  else
    attend<float>(q, k, v, mask_in.data_ptr<bool>(), mask_strides, keys, static_cast<float>(scale), out);
  return q_in.scalar_type() == at::kFloat ? out : out.to(q_in.scalar_type());
}

}  // namespace

#ifndef LLMKIT_OPS
#define LLMKIT_OPS llmkit_cpu
#endif
#define LLMKIT_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define LLMKIT_FRAGMENT_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

LLMKIT_FRAGMENT(LLMKIT_OPS, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale, Tensor? k_scale=None, "
        "Tensor? v_scale=None) -> Tensor");
}

LLMKIT_FRAGMENT_IMPL(LLMKIT_OPS, CPU, m) {
  m.impl("attention", &attention);
}

#ifdef LLMKIT_AOTI_SHIMS
#include "aoti_shims.h"
// attention as a C function for AOTInductor programs (aoti_shims.h)
LLMKIT_C_SHIM(attention, AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v, AtenTensorHandle mask, double scale,
              AtenTensorHandle* k_scale, AtenTensorHandle* v_scale, AtenTensorHandle* out) {
  using namespace llmkit_shim;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = handle(attention(tensor(q), tensor(k), tensor(v), tensor(mask), scale, optional_tensor(k_scale),
                            optional_tensor(v_scale)));
  });
}
#endif
