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
//   (w = q * d + m, as Q4_1), in panels of 8 output rows (described below).
// - int8: int8 values in [-127, 127] (stored + 128) and one fp32 scale per output row (llmkit's
//   per-channel int8), in panels of 8 rows like int4's.
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
// The file is built at first use with -march=native (llmkit/cpu_kernels.py): the ISA is the
// machine's own.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t QK = 32;  // values per block

float fp16_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mantissa;
      do { ++e; m <<= 1; } while ((m & 0x400) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3ff) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// One activation row -> int8 values (k), per-block scales and exact sums (k / 32 each).
#if defined(__AVX2__)
// A block at a time in four vectors. The int8 values, scales and integer sums are those of the plain
// loop below bit for bit (vcvtps2dq rounds to nearest even, as nearbyint in the default rounding mode);
// only the float sum s is added in another order. The plain loop did not vectorise (nearbyint, and a
// float sum it may not reorder): for 32 rows of 576 inputs it took ~10 us a call longer than this
// (one thread; ~7% of a 576 x 576 layer's products at that batch; BENCHMARKS.md).
inline float horizontal_sum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

inline float horizontal_max(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

void quantize_row(const float* x, int64_t k, int8_t* q, float* d, float* s, int32_t* sq) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i byte_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleave
  for (int64_t b = 0; b < k / QK; ++b) {
    const float* xb = x + b * QK;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const __m256 amax8 = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], magnitude), _mm256_and_ps(v[1], magnitude)),
                                       _mm256_max_ps(_mm256_and_ps(v[2], magnitude), _mm256_and_ps(v[3], magnitude)));
    const float amax = horizontal_max(amax8);
    const __m256 inverse = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m256i r[4];
    for (int i = 0; i < 4; ++i) r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * QK), _mm256_permutevar8x32_epi32(bytes, byte_order));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    d[b] = amax / 127.f;
    sq[b] = _mm_cvtsi128_si32(t);
    s[b] = horizontal_sum(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
  }
}
#else
void quantize_row(const float* x, int64_t k, int8_t* q, float* d, float* s, int32_t* sq) {
  for (int64_t b = 0; b < k / QK; ++b) {
    const float* xb = x + b * QK;
    float amax = 0.f, sum = 0.f;
    for (int i = 0; i < QK; ++i) {
      amax = std::max(amax, std::fabs(xb[i]));
      sum += xb[i];
    }
    const float inverse = amax > 0.f ? 127.f / amax : 0.f;
    int32_t qsum = 0;
    for (int i = 0; i < QK; ++i) {
      q[b * QK + i] = static_cast<int8_t>(std::nearbyint(xb[i] * inverse));
      qsum += q[b * QK + i];
    }
    d[b] = amax / 127.f;
    sq[b] = qsum;
    s[b] = sum;
  }
}
#endif

#if defined(__AVX2__)
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define LLMKIT_VNNI 1  // vpdpbusd: unsigned x signed bytes into int32, no intermediate saturation
#endif

// 4 activation bytes (4 consecutive inputs of one row) in each of the 8 32-bit lanes: the signed operand
// that a byte dot product takes against 8 output rows' 4 weights each
inline __m256i broadcast_four(const int8_t* a) {
  int32_t four;
  std::memcpy(&four, a, 4);
  return _mm256_set1_epi32(four);
}

#if defined(LLMKIT_VNNI)
// acc + the 8 int32 sums of four products each of 32 unsigned bytes u (8 output rows' 4 weights) and the
// 4 signed activation bytes at a, the same in every lane (vpdpbusd: no intermediate saturation, so the
// int8 weights' +128 offset is fine here, unlike vpmaddubsw's). With AVX-512 the 4 bytes are the
// instruction's own broadcast memory operand ({1to8}): GCC 12 does not fold _mm256_set1_epi32 of a load
// into vpdpbusd, and a separate vpbroadcastd for each was 32 more instructions a block of a 4-row tile
// (int8 layers at 32 rows 1.05-1.08x in-process A/B with this, int4 1.00-1.04x; BENCHMARKS.md).
inline __m256i add_dot_four(__m256i acc, __m256i u, const int8_t* a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  asm("vpdpbusd %[a]%{1to8%}, %[u], %[acc]"
      : [acc] "+v"(acc)
      : [u] "v"(u), [a] "m"(*reinterpret_cast<const int32_t*>(a)));
  return acc;
#else
  return _mm256_dpbusd_avx_epi32(acc, u, broadcast_four(a));
#endif
}
#endif
#endif

// ---------------------------------------------------------------------------------------------------
// int4 weights, in panels of 8 output rows (as llama.cpp's repacked Q4_0_8x8 CPU layout): for each
// block of 32 inputs, 4 x 32 bytes in which lane i (4 bytes) holds 4 consecutive inputs of row i, low
// nibbles inputs 4t..4t+3 and high nibbles inputs 16+4t..16+4t+3 of the t-th 32 bytes; then the 8
// rows' fp16 scales and their fp16 mins: 160 bytes a block. One byte dot product against 4 broadcast
// activation bytes then advances all 8 rows at once, and the scales are applied 8 rows a vector.

constexpr int64_t PANEL = 8, PANEL_BLOCK_BYTES = 160;

// Software prefetch of the weight stream 2.5 KB ahead of the block being multiplied (16 int4 blocks, 10
// int8 ones), the next panel's first blocks included: the hardware prefetcher alone ramps up too slowly
// on a layer of a few hundred KB read by each thread as one stream. Measured on the 2-core AVX2 EPYC
// (Zen 3) over SmolLM2-135M's 120 int4 layers at batch 1: 3.01 -> 2.52 ms a token (4, 8, 16, 24, 32
// blocks ahead: 2.85, 2.64, 2.52-2.62, 2.59, 2.58). Only the first row tile of a panel prefetches; the
// others find the panel in the cache.
constexpr int64_t PREFETCH_AHEAD = 2560;

inline void prefetch_ahead(const uint8_t* block, int64_t block_bytes) {
  for (int64_t offset = 0; offset < block_bytes; offset += 64)
    __builtin_prefetch(block + PREFETCH_AHEAD + offset, 0, 3);
}

template <int R>
inline void int4_panel_tile(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx, const float* sx,
                            int64_t k, float* out, int64_t ldo, bool prefetch) {
  const int64_t nb = k / QK;
#if defined(LLMKIT_VNNI)
  // Two dot products per row (low and high nibbles) and the rows in the inner loop: 2R independent
  // vpdpbusd chains. One chain per row (8 in a row, each waiting for the last) kept the instruction at
  // 1 a cycle for 4 rows: its latency is 4 cycles and a core can start 2 a cycle (measured on the
  // AVX-512 EPYC, Zen 4: 4 chains 1.0 a cycle, 8 or more 1.85-1.9; BENCHMARKS.md).
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, PANEL_BLOCK_BYTES);
    __m256i dot_low[R], dot_high[R];
    for (int r = 0; r < R; ++r) dot_low[r] = dot_high[r] = _mm256_setzero_si256();
    for (int t = 0; t < 4; ++t) {  // low nibbles: inputs 4t..4t+3; high nibbles: inputs 16 + 4t..
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
      const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        dot_low[r] = add_dot_four(dot_low[r], lo, a + 4 * t);
        dot_high[r] = add_dot_four(dot_high[r], hi, a + 16 + 4 * t);
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 128)));
    const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 144)));
    for (int r = 0; r < R; ++r) {
      const __m256i dot = _mm256_add_epi32(dot_low[r], dot_high[r]);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(dx[r * nb + b])), acc[r]);
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[r * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
#elif defined(__AVX2__)
  // AVX2 without VNNI: vpmaddubsw gives int16 sums of product pairs. A block's 8 of them per row are
  // added as int16 and widened once (vpmaddwd), a third fewer instructions than widening each; no
  // saturation: a pair sum is at most 2 * 15 * 127 = 3,810 in magnitude (|q_x| <= 127), eight 30,480.
  // The 32 bytes of weights are the outer loop and the rows the inner one, so that the accumulators
  // stay in the 16 ymm registers. The integer dot is exact, so the order of its sums changes nothing.
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, PANEL_BLOCK_BYTES);
    __m256i pairs[R];
    for (int r = 0; r < R; ++r) pairs[r] = _mm256_setzero_si256();
    for (int t = 0; t < 4; ++t) {  // low nibbles: inputs 4t..4t+3; high nibbles: inputs 16 + 4t..
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
      const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(lo, broadcast_four(a + 4 * t)));
        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(hi, broadcast_four(a + 16 + 4 * t)));
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 128)));
    const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 144)));
    for (int r = 0; r < R; ++r) {
      const __m256i dot = _mm256_madd_epi16(pairs[r], _mm256_set1_epi16(1));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(dx[r * nb + b])), acc[r]);
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[r * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    float acc[PANEL] = {0.f};
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* p = panel + b * PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, PANEL_BLOCK_BYTES);
      const int8_t* a = qx + r * k + b * QK;
      for (int i = 0; i < PANEL; ++i) {
        int32_t dot = 0;
        for (int t = 0; t < 4; ++t)
          for (int j = 0; j < 4; ++j) {
            const uint8_t byte = p[32 * t + 4 * i + j];
            dot += (byte & 0x0f) * a[4 * t + j] + (byte >> 4) * a[16 + 4 * t + j];
          }
        uint16_t dh, mh;
        std::memcpy(&dh, p + 128 + 2 * i, 2);
        std::memcpy(&mh, p + 144 + 2 * i, 2);
        acc[i] = std::fma(static_cast<float>(dot), fp16_to_float(dh) * dx[r * nb + b], acc[i]);
        acc[i] = std::fma(fp16_to_float(mh), sx[r * nb + b], acc[i]);
      }
    }
    for (int i = 0; i < PANEL; ++i) out[r * ldo + i] = acc[i];
  }
#endif
}

// ---------------------------------------------------------------------------------------------------
// int8 weights, in the same panels of 8 output rows: for each block of 32 inputs, 8 x 32 bytes in which
// lane i of the t-th 32 bytes holds inputs 4t..4t+3 of row i, stored as w + 128 (unsigned, so that the
// byte dot product takes the weight as its unsigned operand, as for int4); 256 bytes a block. The +128
// adds 128 * sum(q_x) over the block to every row's dot product, one integer per activation block,
// subtracted before the block's scale is applied: the result is the exact integer <q_w, q_x>.

constexpr int64_t INT8_PANEL_BLOCK_BYTES = 256;

template <int R>
inline void int8_panel_tile(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx,
                            const int32_t* sqx, int64_t k, const float* scales, float* out, int64_t ldo,
                            bool prefetch) {
  const int64_t nb = k / QK;
#if defined(LLMKIT_VNNI)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * INT8_PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, INT8_PANEL_BLOCK_BYTES);
    // even and odd 4-input groups in two chains per row, rows inner: 2R independent vpdpbusd chains
    // (as int4_panel_tile; one chain per row left the instruction latency-bound)
    __m256i dot_even[R], dot_odd[R];
    for (int r = 0; r < R; ++r) dot_even[r] = dot_odd[r] = _mm256_setzero_si256();
    for (int t = 0; t < 8; t += 2) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t + 32));
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        dot_even[r] = add_dot_four(dot_even[r], w0, a + 4 * t);
        dot_odd[r] = add_dot_four(dot_odd[r], w1, a + 4 * t + 4);
      }
    }
    for (int r = 0; r < R; ++r) {
      __m256i dot = _mm256_add_epi32(dot_even[r], dot_odd[r]);
      dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(128 * sqx[r * nb + b]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dx[r * nb + b]), acc[r]);
    }
  }
  const __m256 s = _mm256_loadu_ps(scales);
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, _mm256_mul_ps(acc[r], s));
#elif defined(__AVX2__)
  // AVX2 without VNNI: vpmaddubsw saturates at (w + 128) * x pairs, so it takes |w| against x carrying
  // w's sign instead (llama.cpp's AVX2 q8_0 dot), and there is no offset to remove. Weights outer, rows
  // inner, as in int4_panel_tile, so that nothing spills out of the 16 ymm registers.
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1), offset = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * INT8_PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, INT8_PANEL_BLOCK_BYTES);
    __m256i dot[R];
    for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
    for (int t = 0; t < 8; ++t) {
      const __m256i w = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t)), offset);
      const __m256i w_abs = _mm256_sign_epi8(w, w);
      for (int r = 0; r < R; ++r) {
        const __m256i x = _mm256_sign_epi8(broadcast_four(qx + r * k + b * QK + 4 * t), w);
        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x), ones));
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(dx[r * nb + b]), acc[r]);
  }
  const __m256 s = _mm256_loadu_ps(scales);
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, _mm256_mul_ps(acc[r], s));
#else
  for (int r = 0; r < R; ++r) {
    float acc[PANEL] = {0.f};
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* p = panel + b * INT8_PANEL_BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, INT8_PANEL_BLOCK_BYTES);
      const int8_t* a = qx + r * k + b * QK;
      for (int i = 0; i < PANEL; ++i) {
        int32_t dot = 0;
        for (int t = 0; t < 8; ++t)
          for (int j = 0; j < 4; ++j) dot += (static_cast<int32_t>(p[32 * t + 4 * i + j]) - 128) * a[4 * t + j];
        acc[i] = std::fma(static_cast<float>(dot), dx[r * nb + b], acc[i]);
      }
    }
    for (int i = 0; i < PANEL; ++i) out[r * ldo + i] = acc[i] * scales[i];
  }
#endif
}

constexpr int TILE = 4;  // activation rows that share one unpacked weight block

// One call's quantized activations: per row, the int8 values q and per block of 32 the scale d, the sum s
// of the float values and the sum sq of q (the int8 weights' +128 offset).
struct QuantizedActivations {
  int8_t* q;
  float *d, *s;
  int32_t* sq;
};

// The buffer for one call's quantized activations, kept by the calling thread between calls (grown as
// needed, never zeroed): a batch-1 decode step makes ~150 operator calls, and four fresh vectors per call
// were four mallocs, four frees and a memset each (perf on the 2-core AVX2 EPYC: libc's allocator ~10% of
// the host thread's time in a decode step whose kernels did no work). The buffer is in use only until the
// operator returns; worker threads write into the caller's buffer.
QuantizedActivations activation_buffer(int64_t rows, int64_t k) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d, s;
  thread_local std::vector<int32_t> sq;
  const size_t values = static_cast<size_t>(rows * k), blocks = static_cast<size_t>(rows * (k / QK));
  if (q.size() < values) q.resize(values);
  if (d.size() < blocks) d.resize(blocks), s.resize(blocks), sq.resize(blocks);
  return QuantizedActivations{q.data(), d.data(), s.data(), sq.data()};
}

// The activations' quantization, done by the threads of the operator's own parallel region before they
// multiply: each claims rows a few at a time, then waits until every claimed row is written (a thread
// waits only for rows another thread is quantizing at that moment, so it cannot wait on a thread that
// never comes, however many threads the region gets). Quantizing before the region instead ran on the
// calling thread alone while the others spun: perf of a batch-32 decode step on the AVX-512 EPYC put it at
// ~2.3% of the calling thread's time, and a 1,536-input layer paid a second fork and join for it.
class SharedQuantization {
 public:
  SharedQuantization(const float* x, int64_t rows, int64_t k)
      : x_(x), rows_(rows), k_(k), chunk_(std::max<int64_t>(1, 4096 / k)), a_(activation_buffer(rows, k)) {}

  const QuantizedActivations& activations() const { return a_; }

  void help_then_wait() {
    const int64_t nb = k_ / QK;
    for (int64_t begin; (begin = next_.fetch_add(chunk_, std::memory_order_relaxed)) < rows_;) {
      const int64_t end = std::min(rows_, begin + chunk_);
      for (int64_t r = begin; r < end; ++r)
        quantize_row(x_ + r * k_, k_, a_.q + r * k_, a_.d + r * nb, a_.s + r * nb, a_.sq + r * nb);
      done_.fetch_add(end - begin, std::memory_order_release);
    }
    while (done_.load(std::memory_order_acquire) < rows_) {
#if defined(__x86_64__)
      __builtin_ia32_pause();  // a spin-wait hint (the pause instruction)
#endif
    }
  }

 private:
  const float* x_;
  const int64_t rows_, k_, chunk_;
  const QuantizedActivations a_;
  std::atomic<int64_t> next_{0}, done_{0};
};

// The activations as rows of k contiguous float32 values: x itself when it is that already (a decode
// step's case: no view and no dispatcher call), else a float32 copy.
at::Tensor as_rows(const at::Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": the activations must be on the CPU");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, op, ": the activations have ", x.dim() ? x.size(-1) : 0,
              " features, the weights ", k);
  TORCH_CHECK(k % QK == 0, op, ": the number of inputs (", k, ") must be a multiple of 32");
  if (x.scalar_type() == at::kFloat && x.is_contiguous()) return x;
  return x.to(at::kFloat).contiguous();
}

// A float32 output shaped like x with n features, written as rows of n by the caller.
at::Tensor new_output(const at::Tensor& x, int64_t n) {
  c10::SmallVector<int64_t, 5> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return at::empty(shape, x.options().dtype(at::kFloat));
}

// The output in the activations' dtype (bf16 activations get bf16 back).
at::Tensor in_dtype_of(const at::Tensor& x, const at::Tensor& out) {
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

// x (..., k) float or bf16; weight (n, k / 32 * 20) uint8: n / 8 panels as described above.
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, int64_t k) {
  TORCH_CHECK(weight.dtype() == at::kByte && weight.dim() == 2 && weight.is_contiguous(),
              "int4_linear: the weight must be a contiguous 2-D uint8 tensor");
  TORCH_CHECK(weight.size(1) == k / QK * 20, "int4_linear: a weight row has ", weight.size(1), " bytes; ", k,
              " inputs need ", k / QK * 20);
  TORCH_CHECK(weight.size(0) % PANEL == 0, "int4_linear: the outputs (", weight.size(0), ") must be a multiple of 8");
  const at::Tensor x2 = as_rows(x, k, "int4_linear");
  const int64_t rows = x2.numel() / k, n = weight.size(0), blocks = k / QK;
  SharedQuantization quantization(x2.data_ptr<float>(), rows, k);
  const QuantizedActivations& a = quantization.activations();
  at::Tensor out2 = new_output(x, n);
  float* out = out2.data_ptr<float>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  at::parallel_for(0, n / PANEL, 2, [&](int64_t begin, int64_t end) {
    quantization.help_then_wait();
    for (int64_t panel = begin; panel < end; ++panel) {
      const uint8_t* p = w + panel * blocks * PANEL_BLOCK_BYTES;
      float* o = out + panel * PANEL;
      int64_t r = 0;
      for (; r + TILE <= rows; r += TILE)
        int4_panel_tile<TILE>(p, blocks, a.q + r * k, a.d + r * blocks, a.s + r * blocks, k,
                              o + r * n, n, r == 0);
      for (; r < rows; ++r)
        int4_panel_tile<1>(p, blocks, a.q + r * k, a.d + r * blocks, a.s + r * blocks, k,
                           o + r * n, n, r == 0);
    }
  });
  return in_dtype_of(x, out2);
}

// x (..., k); weight (n, k) uint8: n / 8 panels as described above; scales (n) float32.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  TORCH_CHECK(weight.dtype() == at::kByte && weight.dim() == 2 && weight.is_contiguous(),
              "int8_linear: the weight must be a contiguous 2-D uint8 tensor (int8 panels)");
  const int64_t n = weight.size(0), k = weight.size(1), blocks = k / QK;
  TORCH_CHECK(n % PANEL == 0, "int8_linear: the outputs (", n, ") must be a multiple of 8");
  TORCH_CHECK(scales.dtype() == at::kFloat && scales.numel() == n && scales.is_contiguous(),
              "int8_linear: scales must be ", n, " contiguous float32 values");
  const at::Tensor x2 = as_rows(x, k, "int8_linear");
  const int64_t rows = x2.numel() / k;
  SharedQuantization quantization(x2.data_ptr<float>(), rows, k);
  const QuantizedActivations& a = quantization.activations();
  at::Tensor out2 = new_output(x, n);
  float* out = out2.data_ptr<float>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  at::parallel_for(0, n / PANEL, 2, [&](int64_t begin, int64_t end) {
    quantization.help_then_wait();
    for (int64_t panel = begin; panel < end; ++panel) {
      const uint8_t* p = w + panel * blocks * INT8_PANEL_BLOCK_BYTES;
      float* o = out + panel * PANEL;
      int64_t r = 0;
      for (; r + TILE <= rows; r += TILE)
        int8_panel_tile<TILE>(p, blocks, a.q + r * k, a.d + r * blocks, a.sq + r * blocks, k,
                              s + panel * PANEL, o + r * n, n, r == 0);
      for (; r < rows; ++r)
        int8_panel_tile<1>(p, blocks, a.q + r * k, a.d + r * blocks, a.sq + r * blocks, k,
                           s + panel * PANEL, o + r * n, n, r == 0);
    }
  });
  return in_dtype_of(x, out2);
}

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
  m.def("isa() -> str", &isa);
  m.def("parallel_threads() -> int", &parallel_threads);
}

LLMKIT_LIBRARY_IMPL(LLMKIT_OPS, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
