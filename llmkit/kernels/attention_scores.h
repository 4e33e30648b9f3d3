// The arithmetic of attention.cpp's scores: vector types, loads that convert float16 and int8 keys and
// values to float, and the dot products over the head dimension with their fixed trees (one key, 4 keys,
// 4 keys for several queries at once, 16 transposed keys), each giving the same bits for a query-key pair.
// attention.cpp says why the bits matter.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__F16C__) || defined(__FMA__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LANES = 16;  // partial sums of a dot product over the head dimension
constexpr int KEYS = 16;   // keys a transposed block holds (many queries: one query against 16 keys at once)
constexpr float NO_KEY = -std::numeric_limits<float>::infinity();

typedef float v16 __attribute__((vector_size(64)));  // GCC vectors: 16 floats in whatever registers the ISA has

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef float v2 __attribute__((vector_size(8)));

// The widest vector the ISA holds in one register, for sums that must stay in registers
#if defined(__AVX512F__)
typedef v16 vnative;
#else
typedef v8 vnative;
#endif
constexpr int NATIVE = sizeof(vnative) / sizeof(float);

template <typename Half, typename Whole>
inline Half low_half(const Whole& x) {
  Half h;
  std::memcpy(&h, &x, sizeof h);
  return h;
}

template <typename Half, typename Whole>
inline Half high_half(const Whole& x) {
  Half h;
  std::memcpy(&h, reinterpret_cast<const char*>(&x) + sizeof h, sizeof h);
  return h;
}

// The tree's steps after its first: lane l + 4 onto l, then l + 2, l + 1.
inline float sum8(v8 eight) {
  const v4 four = low_half<v4>(eight) + high_half<v4>(eight);
  const v2 two = low_half<v2>(four) + high_half<v2>(four);
  return two[0] + two[1];
}

// The 16 lanes added by a fixed tree: halves onto halves (lane l + 8 onto l, then l + 4, l + 2, l + 1),
// the tree dot_keys applies lane for lane.
inline float sum16(v16 part) { return sum8(low_half<v8>(part) + high_half<v8>(part)); }

inline v16 load16(const float* x) {
  v16 r;
  std::memcpy(&r, x, sizeof r);
  return r;
}

// Keys and values come as float, or as IEEE half (the engine's fp16 KV cache: half the bytes to read, and
// a decode step's attention at batch 32 reads its cache from memory; BENCHMARKS.md). A half converts to
// float exactly, so the arithmetic below, in float, is the same for either: only the rounding of the keys
// and values to half when they were stored differs.
inline v8 load8(const float* x) {
  v8 r;
  std::memcpy(&r, x, sizeof r);
  return r;
}

// Where the ISA has no conversion instruction for a type: value by value (exact for half and int8 alike).
template <typename T>
inline v8 load8_plain(const T* x) {
  v8 r;
  for (int l = 0; l < 8; ++l) r[l] = static_cast<float>(x[l]);
  return r;
}

inline v8 load8(const at::Half* x) {
#if defined(__F16C__)
  return (v8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
#else
  return load8_plain(x);
#endif
}

// int8 keys and values (the engine's int8 cache) convert exactly too; their row's scale is applied to the
// row's score and to the row's softmax weight (attend_query, softmax_values), once a row, not per value.
inline v8 load8(const int8_t* x) {
#if defined(__AVX2__)
  return (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x))));
#else
  return load8_plain(x);
#endif
}

// 16 values as two loads of 8 (no AVX-512)
template <typename T>
inline v16 load16_halves(const T* x) {
  v16 r;
  const v8 low = load8(x), high = load8(x + 8);
  std::memcpy(&r, &low, sizeof low);
  std::memcpy(reinterpret_cast<char*>(&r) + sizeof low, &high, sizeof high);
  return r;
}

inline v16 load16(const int8_t* x) {
#if defined(__AVX512F__)
  return (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))));
#else
  return load16_halves(x);
#endif
}

inline v16 load16(const at::Half* x) {
#if defined(__AVX512F__)
  return (v16)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
#else
  return load16_halves(x);
#endif
}

// A register's worth (vnative) of floats, halves or int8 values
template <typename KV>
inline vnative load_native(const KV* x) {
#if defined(__AVX512F__)
  return load16(x);
#else
  return load8(x);
#endif
}

// a * b + c in one rounding where the ISA has FMA, in two where it has not; written out, not left to the
// compiler's contraction of a * b + c, which it applied to one sum of a dot product and not to another
// (seen as soon as the keys came through a conversion): every path that scores a key or sums a value must
// round the same way, or a query's bits depend on which path ran it.
#if defined(__FMA__)
inline v8 fmadd(v8 a, v8 b, v8 c) { return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
inline float fmadd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline v8 fmadd(v8 a, v8 b, v8 c) { return a * b + c; }
inline float fmadd(float a, float b, float c) { return a * b + c; }
#endif
#if defined(__AVX512F__)
inline v16 fmadd(v16 a, v16 b, v16 c) { return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#endif

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }

// <q, k> over d values: 16 partial sums (lane l takes values l, l + 16, ...), then a fixed tree.
template <typename KV>
inline float dot(const float* q, const KV* k, int64_t d) {
#if defined(__AVX512F__)
  v16 part = {};
  int64_t i = 0;
  for (; i + LANES <= d; i += LANES) part = fmadd(load16(q + i), load16(k + i), part);
  for (; i < d; ++i) part[i % LANES] = fmadd(q[i], to_float(k[i]), part[i % LANES]);
  return sum16(part);
#else
  // The same sums as two named 8-lane halves: GCC kept a 16-float vector on the stack here, moving it
  // through general registers for every key (perf: vmovq/vpinsrq; 55 us for one decode row of 64 keys)
  v8 low = {}, high = {};
  int64_t i = 0;
  for (; i + LANES <= d; i += LANES) {
    low = fmadd(load8(q + i), load8(k + i), low);
    high = fmadd(load8(q + i + LANES / 2), load8(k + i + LANES / 2), high);
  }
  if (i < d) {  // the tail in lane i % 16, as above
    float part[LANES];
    std::memcpy(part, &low, sizeof low);
    std::memcpy(part + LANES / 2, &high, sizeof high);
    for (; i < d; ++i) part[i % LANES] = fmadd(q[i], to_float(k[i]), part[i % LANES]);
    std::memcpy(&low, part, sizeof low);
    std::memcpy(&high, part + LANES / 2, sizeof high);
  }
  return sum8(low + high);  // sum16's tree: its first step is low + high
#endif
}

// The rest of 4 keys' trees (dot()'s, sum8's steps) from their first step s0..s3, a vector at a time
inline v4 tree4(v8 s0, v8 s1, v8 s2, v8 s3) {
  typedef int32_t i8 __attribute__((vector_size(32)));
  // lane l + 4 onto l: [keys 0 | 1] and [keys 2 | 3], four lanes each
  const v8 x = __builtin_shuffle(s0, s1, i8{0, 1, 2, 3, 8, 9, 10, 11}) + __builtin_shuffle(s0, s1, i8{4, 5, 6, 7, 12, 13, 14, 15});
  const v8 y = __builtin_shuffle(s2, s3, i8{0, 1, 2, 3, 8, 9, 10, 11}) + __builtin_shuffle(s2, s3, i8{4, 5, 6, 7, 12, 13, 14, 15});
  // lane l + 2 onto l: [key 0, key 2 | key 1, key 3], two lanes each
  const v8 z = __builtin_shuffle(x, y, i8{0, 1, 8, 9, 4, 5, 12, 13}) + __builtin_shuffle(x, y, i8{2, 3, 10, 11, 6, 7, 14, 15});
  // lane 1 onto lane 0
  const v8 w = z + __builtin_shuffle(z, i8{1, 0, 3, 2, 5, 4, 7, 6});
  return v4{w[0], w[4], w[2], w[6]};
}

// dot() for 4 keys at once (rows k, k + stride, ...; d a multiple of 16): each key's partial sums and
// tree are dot()'s, so its score has the same bits, but the 4 keys' chains run side by side and their
// trees' steps are taken a vector at a time. dot() for one key waits on its FMA chain and then on its
// tree's adds, one after the other (a query-key pair took ~45 cycles with the keys in L2, ~13 of them
// arithmetic; BENCHMARKS.md).
template <typename KV>
inline v4 dot4(const float* q, const KV* k, int64_t stride, int64_t d) {
  v8 low[4] = {}, high[4] = {};
  for (int64_t i = 0; i < d; i += LANES) {
    const v8 a = load8(q + i), c = load8(q + i + LANES / 2);
#pragma GCC unroll 4
    for (int n = 0; n < 4; ++n) {
      low[n] = fmadd(a, load8(k + n * stride + i), low[n]);
      high[n] = fmadd(c, load8(k + n * stride + i + LANES / 2), high[n]);
    }
  }
  return tree4(low[0] + high[0], low[1] + high[1], low[2] + high[2], low[3] + high[3]);
}

#if defined(__AVX512F__)
// dot4() for the G queries of one kv head (q + g * q_stride) against the same 4 keys: each key's vector is
// loaded (and converted) once for all G queries. A query's 16 partial sums are one 16-lane register, lanes
// l and l + 8 being dot4's low and high halves: the same sums, so every score has dot()'s bits. 4 G
// registers of sums: AVX-512's 32 hold them for G <= 4 (AVX2's 16 would not; it scores query by query).
template <int G, typename KV>
inline void dot4_group(const float* q, int64_t q_stride, const KV* k, int64_t stride, int64_t d, v4* out) {
  v16 part[G][4] = {};
  for (int64_t i = 0; i < d; i += LANES) {
#pragma GCC unroll 4
    for (int n = 0; n < 4; ++n) {
      const v16 key = load16(k + n * stride + i);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) part[g][n] = fmadd(load16(q + g * q_stride + i), key, part[g][n]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g)
    out[g] = tree4(low_half<v8>(part[g][0]) + high_half<v8>(part[g][0]), low_half<v8>(part[g][1]) + high_half<v8>(part[g][1]),
                   low_half<v8>(part[g][2]) + high_half<v8>(part[g][2]), low_half<v8>(part[g][3]) + high_half<v8>(part[g][3]));
}
#endif

// The same arithmetic as dot(), for 16 keys at once held transposed (kt[c * 16 + j]: value c of key j):
// each key's partial sums and tree are dot()'s, step for step, so a score has the same bits either way,
// while the vectors run along the keys (no horizontal sum per key). The 16 partial sums are formed in
// pairs (l, l + 8), whose sum is the tree's first step, and for V = 8 keys at a time where vectors are 8
// floats wide (AVX2): 16 live vectors of 16 keys would not fit in its 16 registers (measured: spilled,
// 5x slower than PyTorch's attention on a 256-token prefill).
template <typename V>
inline void dot_keys_part(const float* q, const float* kt, int64_t d, float* out) {
  V eight[LANES / 2];
  for (int l = 0; l < LANES / 2; ++l) {
    V a = {}, b = {};
    int64_t i = 0;
    for (; i + LANES <= d; i += LANES) {
      V ka, kb;
      std::memcpy(&ka, kt + (i + l) * KEYS, sizeof ka);
      std::memcpy(&kb, kt + (i + l + LANES / 2) * KEYS, sizeof kb);
      a = fmadd(V{} + q[i + l], ka, a);
      b = fmadd(V{} + q[i + l + LANES / 2], kb, b);
    }
    if (i + l < d) {  // the tail: value i + l in lane l, as dot()'s part[i % 16]
      V ka;
      std::memcpy(&ka, kt + (i + l) * KEYS, sizeof ka);
      a = fmadd(V{} + q[i + l], ka, a);
    }
    if (i + l + LANES / 2 < d) {
      V kb;
      std::memcpy(&kb, kt + (i + l + LANES / 2) * KEYS, sizeof kb);
      b = fmadd(V{} + q[i + l + LANES / 2], kb, b);
    }
    eight[l] = a + b;
  }
  for (int width = LANES / 4; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) eight[l] += eight[l + width];
  std::memcpy(out, &eight[0], sizeof eight[0]);
}

inline void dot_keys(const float* q, const float* kt, int64_t d, float* out) {
#if defined(__AVX512F__)
  dot_keys_part<v16>(q, kt, d, out);
#else
  dot_keys_part<v8>(q, kt, d, out);
  dot_keys_part<v8>(q, kt + 8, d, out + 8);
#endif
}

}  // namespace
