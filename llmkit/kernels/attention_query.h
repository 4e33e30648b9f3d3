// attention.cpp's arithmetic for one query (attend_query) and what it takes: attention.cpp runs it over a
// batch's queries, llama_layer.cpp's batch-1 step over a token's heads, the same bits either way. Every
// file that includes it gets its own copy (an anonymous namespace).

#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention_scores.h"
#include "vector_exp.h"

namespace {

// exp(x - top) for a vector of scores (x <= top), 0 where a score is NO_KEY (vector_exp.h's exp_in_range).
// Below -87 it gives exp(-87) ~ 1.6e-38: nothing, beside the top key's 1.
template <typename V>
inline V exp_lanes(V scores, float top) {
  const V none = scores == NO_KEY ? V{} + 1.0f : V{};  // 1 in the lanes that see nothing
  V x = scores - top;
  x = x > -87.0f ? x : V{} - 87.0f;
  const V e = exp_in_range(x);
  return none > 0.5f ? V{} : e;
}

// The softmax weights of one query's scores p[0, padded) in place (NO_KEY where unseen, and past the keys):
// exp(score - top), an int8 cache's value scales (rows v_scale_stride apart; null otherwise) folded into
// each key's weight after the normaliser is summed (the values' sums are then sum_j (p_j * s_j) * v_j).
// Returns the normaliser, split by the key's own index (16 lanes, then a fixed tree) so that extra unseen
// keys change no bit; 0 for a query that sees nothing (a padding row), which otherwise has at least its
// top key's exp(0) = 1.
inline float softmax_weights(float* __restrict p, int64_t padded, int64_t keys, const float* v_scale,
                             int64_t v_scale_stride) {
  // The 16 lanes of the maximum and of the normaliser in registers: as PIECES vectors of the ISA's width
  // (GCC kept 16-float vectors on the stack on AVX2 here too, and took the maximum lane by lane from there)
  constexpr int PIECES = LANES / NATIVE;
  vnative tops[PIECES];
  for (int c = 0; c < PIECES; ++c) tops[c] = vnative{} + NO_KEY;
  for (int64_t j = 0; j < padded; j += LANES)  // padded is a multiple of KEYS (16)
    for (int c = 0; c < PIECES; ++c) {
      vnative x;
      std::memcpy(&x, p + j + c * NATIVE, sizeof x);
      tops[c] = x > tops[c] ? x : tops[c];
    }
  float top = NO_KEY;
  for (int c = 0; c < PIECES; ++c)
    for (int l = 0; l < NATIVE; ++l) top = std::max(top, tops[c][l]);
  if (top == NO_KEY) return 0.f;
  vnative lanes[PIECES] = {};  // the normaliser: key j in lane j % 16, then dot()'s tree
  for (int64_t j = 0; j < padded; j += LANES)
    for (int c = 0; c < PIECES; ++c) {
      vnative x;
      std::memcpy(&x, p + j + c * NATIVE, sizeof x);
      const vnative e = exp_lanes(x, top);
      std::memcpy(p + j + c * NATIVE, &e, sizeof e);
      lanes[c] += e;
    }
#if defined(__AVX512F__)
  const float sum = sum16(lanes[0]);
#else
  const float sum = sum8(lanes[0] + lanes[1]);  // sum16's tree: its first step is low + high
#endif
  if (v_scale != nullptr)
    for (int64_t j = 0; j < keys; ++j) p[j] *= v_scale[j * v_scale_stride];
  return sum;
}

// The weighted sums of the values for G queries that see the same keys (the query heads of one kv head,
// decoding): query g's weights at p + g * p_stride, its normaliser sums[g], its output at out + g * D. Each
// query's sums are the same operations in the same order whatever G is (the values are loaded once for
// all G): seen keys only, not weighted by 0 (a cache slot past a row's end may hold NaN), even and odd keys
// in two sums, then (even + odd) / sum.
template <int D, int G, typename KV>
inline void weighted_values(const float* __restrict p, int64_t p_stride, const float* sums, const KV* __restrict v,
                            int64_t v_stride, const bool* __restrict seen, int64_t mask_stride, int64_t keys,
                            float* __restrict out) {
  static_assert(D > 0 && D % NATIVE == 0, "the sums in vector registers");
  // GROUP registers' worth of the head's values at a time over all keys: each value's sums are the same
  // operations in the same order however the values are grouped; 2 x G x GROUP sums are live, in registers
  // (GCC kept 16-float vectors in memory on AVX2 here, moving them through general registers: 5x slower;
  // one register a pass, then four: 4-15% faster at decode shapes, BENCHMARKS.md)
  constexpr int GROUP = (D / NATIVE) % 4 == 0 ? 4 : (D / NATIVE) % 2 == 0 ? 2 : 1;  // registers a pass
  for (int c = 0; c < D / NATIVE; c += GROUP) {
    vnative even[G][GROUP], odd[G][GROUP];  // constant indices after unrolling: kept in registers
#pragma GCC unroll 16
    for (int q = 0; q < G; ++q)
#pragma GCC unroll 4
      for (int g = 0; g < GROUP; ++g) even[q][g] = odd[q][g] = vnative{};
    for (int64_t j = 0; j < keys; j += 2) {
      if (seen[j * mask_stride]) {
        const KV* vj = v + j * v_stride + c * NATIVE;
        vnative values[GROUP];
#pragma GCC unroll 4
        for (int g = 0; g < GROUP; ++g) values[g] = load_native(vj + g * NATIVE);
#pragma GCC unroll 16
        for (int q = 0; q < G; ++q)
#pragma GCC unroll 4
          for (int g = 0; g < GROUP; ++g) even[q][g] = fmadd(vnative{} + p[q * p_stride + j], values[g], even[q][g]);
      }
      if (j + 1 < keys && seen[(j + 1) * mask_stride]) {
        const KV* vj = v + (j + 1) * v_stride + c * NATIVE;
        vnative values[GROUP];
#pragma GCC unroll 4
        for (int g = 0; g < GROUP; ++g) values[g] = load_native(vj + g * NATIVE);
#pragma GCC unroll 16
        for (int q = 0; q < G; ++q)
#pragma GCC unroll 4
          for (int g = 0; g < GROUP; ++g) odd[q][g] = fmadd(vnative{} + p[q * p_stride + j + 1], values[g], odd[q][g]);
      }
    }
#pragma GCC unroll 16
    for (int q = 0; q < G; ++q)
#pragma GCC unroll 4
      for (int g = 0; g < GROUP; ++g) {
        const vnative o = (even[q][g] + odd[q][g]) / sums[q];
        std::memcpy(out + q * D + (c + g) * NATIVE, &o, sizeof o);
      }
  }
}

// Softmax of one query's scores p[0, padded) (softmax_weights) and the weighted sum of the values it sees.
// D > 0: the head size known when compiling (the sums stay in registers: weighted_values); D = 0: any size,
// given as d_any, the same arithmetic in memory.
template <int D, typename KV>
void softmax_values(float* __restrict p, int64_t padded, const KV* __restrict v, int64_t v_stride,
                    const bool* __restrict seen, int64_t mask_stride, int64_t keys, int64_t d_any,
                    float* __restrict acc_any, float* __restrict out, const float* v_scale,
                    int64_t v_scale_stride) {
  const int64_t d = D > 0 ? D : d_any;
  const float sum = softmax_weights(p, padded, keys, v_scale, v_scale_stride);
  if (sum == 0.f) {  // a query that sees nothing (a padding row)
    std::fill(out, out + d, 0.f);
    return;
  }
  if constexpr (D > 0 && D % NATIVE == 0) {
    weighted_values<D, 1, KV>(p, padded, &sum, v, v_stride, seen, mask_stride, keys, out);
  } else {  // the same arithmetic, any head size
    float* __restrict acc = acc_any;  // acc[0, d): even keys, acc[d, 2d): odd keys
    std::fill(acc, acc + 2 * d, 0.f);
    for (int64_t j = 0; j < keys; ++j)
      if (seen[j * mask_stride]) {
        const KV* __restrict vj = v + j * v_stride;
        float* __restrict a = acc + (j & 1) * d;
        for (int64_t c = 0; c < d; ++c) a[c] = fmadd(p[j], to_float(vj[c]), a[c]);
      }
    for (int64_t c = 0; c < d; ++c) out[c] = (acc[c] + acc[d + c]) / sum;
  }
}

// How a decoding query asks for the cache rows of the (batch row, kv head) group ahead (attend below):
// `shared`, each query of its group asks for its share of the rows of the group `ahead` groups on;
// otherwise the group's first query asks for all of them. Measured on the AVX-512 EPYC, batch 32 x 9
// heads, caches cold (BENCHMARKS.md): for a float16 cache, all by the first query, 2 ahead beat 1 (128 keys:
// 186-188 us a call against 207-220), and shared 1 ahead beat that (1.19-1.21x at 100 keys, 1.31x at 160);
// an int8 cache's call is bound by its arithmetic, not its reads, and shared was 0.89-0.90x there.
template <typename KV>
struct PrefetchPlan {
  static constexpr int64_t ahead = 1;
  static constexpr bool shared = true;
};
template <>
struct PrefetchPlan<int8_t> {
  static constexpr int64_t ahead = 2;
  static constexpr bool shared = false;
};

// Ask for rows [begin, end) of k and v (d values each, strides in values) to be brought into L2.
template <typename KV>
inline void prefetch_rows(const char* k, int64_t k_stride, const char* v, int64_t v_stride, int64_t begin,
                          int64_t end, int64_t d) {
  const int64_t bytes = d * static_cast<int64_t>(sizeof(KV));
  for (int64_t j = begin; j < end; ++j)
    for (int64_t offset = 0; offset < bytes; offset += 64) {
      __builtin_prefetch(k + j * k_stride * static_cast<int64_t>(sizeof(KV)) + offset, 0, 2);
      __builtin_prefetch(v + j * v_stride * static_cast<int64_t>(sizeof(KV)) + offset, 0, 2);
    }
}

// The scales of an int8 cache: (batch, kv_heads, >= keys, 1) float32, read through their strides; no data
// for a float or half cache.
struct RowScales {
  const float* data = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
  const float* of(int64_t b, int64_t kv_head) const {
    return data == nullptr ? nullptr : data + b * batch_stride + kv_head * head_stride;
  }
};

// What to ask the cache for while a query scores its keys: rows [begin, end) of a group ahead (k null:
// nothing), and an int8 cache's scales of those rows.
struct Ahead {
  const char *k = nullptr, *v = nullptr;
  const float *k_scale = nullptr, *v_scale = nullptr;
  int64_t begin = 0, end = 0;
};

// Asks for an Ahead's rows a few at a time while a query scores its `last` keys: `step()` at every step
// of the scoring loop asks for `per_step` more, so that the requests overlap the arithmetic.
template <typename KV>
class PacedPrefetch {
 public:
  PacedPrefetch(const Ahead& ahead, int64_t last, int64_t ks, int64_t vs, int64_t st, int64_t d)
      : ahead_(ahead), ks_(ks), vs_(vs), st_(st), d_(d), prefetched_(ahead.begin) {
    const int64_t steps = std::max<int64_t>((last + 3) / 4, 1);  // a step scores up to 4 keys
    per_step_ = (ahead.end - ahead.begin + steps - 1) / steps;
  }

  void step() {
    const int64_t wanted = std::min(prefetched_ + per_step_, ahead_.end);
    if (ahead_.k == nullptr || prefetched_ >= wanted) return;
    prefetch_rows<KV>(ahead_.k, ks_, ahead_.v, vs_, prefetched_, wanted, d_);
    if constexpr (std::is_same_v<KV, int8_t>)
      for (int64_t r = prefetched_; r < wanted; ++r)
        if (r % 16 == 0 || r == ahead_.begin) {  // a cache line holds 16 rows' scales
          __builtin_prefetch(ahead_.k_scale + r * st_, 0, 2);
          __builtin_prefetch(ahead_.v_scale + r * st_, 0, 2);
        }
    prefetched_ = wanted;
  }

 private:
  const Ahead ahead_;  // a copy: holding a reference, the int8 cache's batch-32 call ran 0.93x
  const int64_t ks_, vs_, st_, d_;
  int64_t prefetched_, per_step_;
};

// One key's score for a query, key by key: dot() x an int8 cache's row scale x scale_f; NO_KEY where the
// query does not see it or it is past `last`
template <typename KV>
inline float score_one(const float* qi, const KV* kb, int64_t ks, const float* k_scale, int64_t st,
                       const bool* seen, int64_t ms, int64_t j, int64_t last, int64_t d, float scale_f) {
  if (j >= last || !seen[j * ms]) return NO_KEY;
  if constexpr (std::is_same_v<KV, int8_t>)
    return dot(qi, kb + j * ks, d) * k_scale[j * st] * scale_f;
  else
    return dot(qi, kb + j * ks, d) * scale_f;
}

// One query: its scores against keys [0, last) -- from kt, its (batch row, kv head)'s keys transposed in
// blocks of 16 (many queries), or key by key from kb, rows ks apart (decoding) -- then softmax_values over
// vb's rows (vs apart) into out. An int8 cache: k_scale / v_scale are the rows' scales (st apart), a key's
// score being <q, k_int8> * its scale * scale_f on every path, so the bits stay path-independent.
template <typename KV>
void attend_query(const float* qi, const KV* kb, int64_t ks, const KV* vb, int64_t vs, const float* kt,
                  const float* k_scale, const float* v_scale, int64_t st, const bool* seen, int64_t ms,
                  int64_t last, int64_t d, float scale_f, const Ahead& ahead, float* p, float* acc, float* out) {
  constexpr bool INT8 = std::is_same_v<KV, int8_t>;
  const int64_t limit = (last + KEYS - 1) / KEYS * KEYS;
  if (kt != nullptr) {
    for (int64_t j0 = 0; j0 < limit; j0 += KEYS) dot_keys(qi, kt + j0 * d, d, p + j0);
    for (int64_t j = 0; j < limit; ++j) {
      if constexpr (INT8)
        p[j] = j < last && seen[j * ms] ? p[j] * k_scale[j * st] * scale_f : NO_KEY;
      else
        p[j] = j < last && seen[j * ms] ? p[j] * scale_f : NO_KEY;
    }
  } else {
    PacedPrefetch<KV> prefetch(ahead, last, ks, vs, st, d);
    for (int64_t j = 0; j < limit;) {
      prefetch.step();
      if (d % LANES == 0 && j + 4 <= last && seen[j * ms] && seen[(j + 1) * ms] && seen[(j + 2) * ms] &&
          seen[(j + 3) * ms]) {
        v4 four = dot4(qi, kb + j * ks, ks, d);
        if constexpr (INT8)
          four = four * v4{k_scale[j * st], k_scale[(j + 1) * st], k_scale[(j + 2) * st], k_scale[(j + 3) * st]};
        four = four * scale_f;
        std::memcpy(p + j, &four, sizeof four);
        j += 4;
      } else {
        p[j] = score_one(qi, kb, ks, k_scale, st, seen, ms, j, last, d, scale_f);
        ++j;
      }
    }
  }
  auto softmax = d == 64 ? softmax_values<64, KV> : d == 128 ? softmax_values<128, KV> : softmax_values<0, KV>;
  softmax(p, limit, vb, vs, seen, ms, last, d, acc, out, v_scale, st);
}

}  // namespace
