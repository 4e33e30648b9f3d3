// The multiply tiles of int8_dot.cpp: R activation rows (int8, per block of 32 a scale) against one panel
// of int4 or int8 weights, per instruction set. int8_dot.cpp describes the arithmetic and the drivers.
//
// The weight layout (llmkit/cpu_kernels.py packs it, asking the build for PANEL): panels of PANEL output
// rows -- 16 where the CPU has AVX-512, 8 elsewhere -- the last one of 8 rows where the outputs are 8 more
// than a multiple of 16. Per block of 32 inputs, a panel of P rows holds
// groups of 4P bytes in which lane i (4 bytes) holds 4 consecutive inputs of row i:
// - int4: 4 groups, low nibbles inputs 4t..4t+3 and high nibbles inputs 16+4t..16+4t+3 of group t; then
//   the P rows' fp16 scales and their P fp16 mins: 20P bytes a block (as llama.cpp's repacked Q4_0_8x8);
// - int8: 8 groups, group t inputs 4t..4t+3, each value stored + 128: 32P bytes a block.
// One byte dot product against 4 broadcast activation bytes then advances a vector's rows at once, and the
// scales are applied a vector of rows at a time.
//
// Why panels of 16: on AVX-512 a 512-bit vpdpbusd covers a whole panel. On Zen 4 it runs as two 256-bit
// halves (the same multiply-adds a cycle), but a tile issues half the instructions and half the
// activation broadcasts of 256-bit code on 8-row panels, and that, not the multipliers, was what held the
// 256-bit tiles: one core, 4 rows, data in L1, int8 195 against 140 GMAC/s, int4 166 against 129
// (a standalone loop of each tile; the instruction's peak is 217; BENCHMARKS.md, 2026-12-05). Without
// AVX-512 the panels stay at 8 rows: a 256-bit tile taking a 16-row panel's two halves, in one pass or
// two, ran 0.93-1.02x of the 8-row tile in -march=haswell builds at 32 rows.
//
// Every lane of every tile runs the same sequence of operations (integer dot products, which are exact,
// then the same float epilogue), so an output's bits do not depend on the tile, the panel's size or the
// number of rows computed with it (the engine's batched == one-by-one tests).

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX2__) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define LLMKIT_VNNI 1  // vpdpbusd: unsigned x signed bytes into int32, no intermediate saturation
#endif
#if defined(LLMKIT_VNNI) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LLMKIT_AVX512 1  // 512-bit tiles for the 16-row panels
#endif

namespace {

constexpr int64_t QK = 32;         // values per block
constexpr int64_t HALF_PANEL = 8;  // the rows of a 256-bit vector of int32 or float lanes
#if defined(LLMKIT_AVX512)
constexpr int64_t PANEL = 16;      // output rows of a panel (the last one may have HALF_PANEL)
#else
constexpr int64_t PANEL = HALF_PANEL;
#endif
constexpr int64_t INT4_ROW_BLOCK_BYTES = 20, INT8_ROW_BLOCK_BYTES = 32;  // per row and block

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

// Software prefetch of the weight stream 2.5 KB ahead of the block being multiplied, the next panel's
// first blocks included: the hardware prefetcher alone ramps up too slowly on a layer of a few hundred KB
// read by each thread as one stream. Measured on the 2-core AVX2 EPYC (Zen 3) over SmolLM2-135M's 120 int4
// layers at batch 1: 3.01 -> 2.52 ms a token (4, 8, 16, 24, 32 blocks of 160 bytes ahead: 2.85, 2.64,
// 2.52-2.62, 2.59, 2.58). A tile prefetches where it is the only one over its panel (1 or 4 rows); with
// more, int8_dot.cpp's each_row_tile prefetches for the tiles. A 16-row panel's blocks are twice the bytes
// and prefetch twice as far, the same number of blocks ahead: at 2.5 KB the 512-bit tiles waited on
// memory at batch 1 (AVX-512 EPYC, int8 decode against the 8-row build: 0.91x at 2.5 KB, 0.96x at 5 KB,
// 0.94x at 10 KB; layers read from memory at 5 KB against 2.5 KB: 1.06-1.28x on 8 of 10 shapes;
// BENCHMARKS.md, 2026-12-05).
constexpr int64_t PREFETCH_AHEAD = 2560;  // bytes, for an 8-row panel

inline void prefetch_ahead(const uint8_t* block, int64_t block_bytes, int64_t ahead = PREFETCH_AHEAD) {
  for (int64_t offset = 0; offset < block_bytes; offset += 64)
    __builtin_prefetch(block + ahead + offset, 0, 3);
}

#if defined(__AVX2__)
// 4 activation bytes (4 consecutive inputs of one row) in each of the 8 32-bit lanes: the signed operand
// that a byte dot product takes against 8 output rows' 4 weights each
inline __m256i broadcast_four(const int8_t* a) {
  int32_t four;
  std::memcpy(&four, a, 4);
  return _mm256_set1_epi32(four);
}
#endif

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

#if defined(LLMKIT_AVX512)
// The same over 16 lanes: a whole 16-row panel's 4 weights each against the 4 activation bytes at a
inline __m512i add_dot_four(__m512i acc, __m512i u, const int8_t* a) {
  asm("vpdpbusd %[a]%{1to16%}, %[u], %[acc]"
      : [acc] "+v"(acc)
      : [u] "v"(u), [a] "m"(*reinterpret_cast<const int32_t*>(a)));
  return acc;
}
#endif

// ---------------------------------------------------------------------------------------------------
// A tile: R activation rows against `blocks` blocks of one panel (all of k, or a chunk of it: panel, qx,
// dx, ... then point at the chunk's first block; rows stay k values and k / 32 blocks apart). Its float
// accumulators start at zero, or at `carry` (R x the panel's lanes, from the chunk before), and end at
// out + r * ldo: the outputs, or the carry for the next chunk.
//
// int4. A tile's outputs: R rows x the panel's outputs.

// The plain C++ tiles' loops (no AVX2), R rows against an 8-row panel: per row, block and output row i,
// acc_i = add(acc_i, the block's bytes, the row's block of activations, r, b, i); then finish(acc_i, i).
template <int R, class Add, class Finish>
inline void plain_tile(const uint8_t* panel, int64_t blocks, int64_t block_bytes, const int8_t* qx, int64_t k,
                       const float* carry, float* out, int64_t ldo, bool prefetch, const Add& add,
                       const Finish& finish) {
  for (int r = 0; r < R; ++r) {
    float acc[HALF_PANEL];
    for (int i = 0; i < HALF_PANEL; ++i) acc[i] = carry ? carry[r * HALF_PANEL + i] : 0.f;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* p = panel + b * block_bytes;
      if (prefetch) prefetch_ahead(p, block_bytes);
      const int8_t* a = qx + r * k + b * QK;
      for (int i = 0; i < HALF_PANEL; ++i) acc[i] = add(acc[i], p, a, r, b, i);
    }
    for (int i = 0; i < HALF_PANEL; ++i) out[r * ldo + i] = finish(acc[i], i);
  }
}

// 256-bit tiles (and plain C++): R rows against an 8-row panel.
template <int R>
inline void int4_tile_256(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx, const float* sx,
                          int64_t k, const float* carry, float* out, int64_t ldo, bool prefetch) {
  constexpr int64_t BLOCK_BYTES = INT4_ROW_BLOCK_BYTES * HALF_PANEL;
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  // VNNI: two dot products per row (low and high nibbles) and the rows in the inner loop: 2R independent
  // vpdpbusd chains. One chain per row (8 in a row, each waiting for the last) kept the instruction at
  // 1 a cycle for 4 rows: its latency is 4 cycles and a core can start 2 a cycle (measured on the
  // AVX-512 EPYC, Zen 4: 4 chains 1.0 a cycle, 8 or more 1.85-1.9; BENCHMARKS.md).
  // AVX2 without VNNI: vpmaddubsw gives int16 sums of product pairs. A block's 8 of them per row are
  // added as int16 and widened once (vpmaddwd), a third fewer instructions than widening each; no
  // saturation: a pair sum is at most 2 * 15 * 127 = 3,810 in magnitude (|q_x| <= 127), eight 30,480.
  // Either way the 32 bytes of weights are the outer loop and the rows the inner one, so that the
  // accumulators stay in registers (AVX2 has 16). The integer dot is exact: its order changes nothing.
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = carry ? _mm256_loadu_ps(carry + r * HALF_PANEL) : _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, BLOCK_BYTES);
#if defined(LLMKIT_VNNI)
    __m256i dot_low[R], dot_high[R];
    for (int r = 0; r < R; ++r) dot_low[r] = dot_high[r] = _mm256_setzero_si256();
#else
    __m256i pairs[R];
    for (int r = 0; r < R; ++r) pairs[r] = _mm256_setzero_si256();
#endif
    for (int t = 0; t < 4; ++t) {  // low nibbles: inputs 4t..4t+3; high nibbles: inputs 16 + 4t..
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
      const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
#if defined(LLMKIT_VNNI)
        dot_low[r] = add_dot_four(dot_low[r], lo, a + 4 * t);
        dot_high[r] = add_dot_four(dot_high[r], hi, a + 16 + 4 * t);
#else
        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(lo, broadcast_four(a + 4 * t)));
        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(hi, broadcast_four(a + 16 + 4 * t)));
#endif
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 128)));
    const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 144)));
    for (int r = 0; r < R; ++r) {
#if defined(LLMKIT_VNNI)
      const __m256i dot = _mm256_add_epi32(dot_low[r], dot_high[r]);
#else
      const __m256i dot = _mm256_madd_epi16(pairs[r], _mm256_set1_epi16(1));
#endif
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(dx[r * nb + b])), acc[r]);
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[r * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, acc[r]);
#else
  plain_tile<R>(panel, blocks, BLOCK_BYTES, qx, k, carry, out, ldo, prefetch,
                [&](float acc, const uint8_t* p, const int8_t* a, int r, int64_t b, int i) {
    int32_t dot = 0;
    for (int t = 0; t < 4; ++t)
      for (int j = 0; j < 4; ++j) {
        const uint8_t byte = p[32 * t + 4 * i + j];
        dot += (byte & 0x0f) * a[4 * t + j] + (byte >> 4) * a[16 + 4 * t + j];
      }
    uint16_t dh, mh;
    std::memcpy(&dh, p + 128 + 2 * i, 2);
    std::memcpy(&mh, p + 144 + 2 * i, 2);
    acc = std::fma(static_cast<float>(dot), fp16_to_float(dh) * dx[r * nb + b], acc);
    return std::fma(fp16_to_float(mh), sx[r * nb + b], acc);
  }, [](float acc, int) { return acc; });
#endif
}

#if defined(LLMKIT_AVX512)
// 512-bit tile: R rows against a 16-row panel, the operations of int4_tile_256's VNNI path on 16 lanes
template <int R>
inline void int4_tile_512(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx, const float* sx,
                          int64_t k, const float* carry, float* out, int64_t ldo, bool prefetch) {
  constexpr int64_t BLOCK_BYTES = INT4_ROW_BLOCK_BYTES * PANEL;
  const int64_t nb = k / QK;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = carry ? _mm512_loadu_ps(carry + r * PANEL) : _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, BLOCK_BYTES, PREFETCH_AHEAD * PANEL / HALF_PANEL);
    __m512i dot_low[R], dot_high[R];
    for (int r = 0; r < R; ++r) dot_low[r] = dot_high[r] = _mm512_setzero_si512();
    for (int t = 0; t < 4; ++t) {
      const __m512i v = _mm512_loadu_si512(p + 4 * PANEL * t);
      const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        dot_low[r] = add_dot_four(dot_low[r], lo, a + 4 * t);
        dot_high[r] = add_dot_four(dot_high[r], hi, a + 16 + 4 * t);
      }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * PANEL)));
    const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 18 * PANEL)));
    for (int r = 0; r < R; ++r) {
      const __m512i dot = _mm512_add_epi32(dot_low[r], dot_high[r]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(dx[r * nb + b])), acc[r]);
      acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx[r * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * ldo, acc[r]);
}
#endif

// ---------------------------------------------------------------------------------------------------
// int8: the weights' +128 adds 128 * sum(q_x) over the block to every row's dot product, one integer per
// activation block, subtracted before the block's scale is applied: the result is the exact integer
// <q_w, q_x>. `scales`: the panel's rows' fp32 scales, applied at the end; null: none (a chunk's carry).

template <int R>
inline void int8_tile_256(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx,
                          const int32_t* sqx, int64_t k, const float* carry, const float* scales, float* out,
                          int64_t ldo, bool prefetch) {
  constexpr int64_t BLOCK_BYTES = INT8_ROW_BLOCK_BYTES * HALF_PANEL;
  const int64_t nb = k / QK;
#if defined(__AVX2__)
  // VNNI: even and odd 4-input groups in two chains per row, rows inner: 2R independent vpdpbusd chains
  // (as int4_tile_256; one chain per row left the instruction latency-bound).
  // AVX2 without VNNI: vpmaddubsw saturates at (w + 128) * x pairs, so it takes |w| against x carrying
  // w's sign instead (llama.cpp's AVX2 q8_0 dot), and there is no offset to remove.
  // Either way weights outer, rows inner, as in int4_tile_256, so that nothing spills out of the 16 ymm
  // registers; each block's exact integer dot per row then takes the same float epilogue.
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = carry ? _mm256_loadu_ps(carry + r * HALF_PANEL) : _mm256_setzero_ps();
#if !defined(LLMKIT_VNNI)
  const __m256i ones = _mm256_set1_epi16(1), offset = _mm256_set1_epi8(static_cast<char>(0x80));
#endif
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, BLOCK_BYTES);
    __m256i dot[R];
#if defined(LLMKIT_VNNI)
    __m256i dot_odd[R];
    for (int r = 0; r < R; ++r) dot[r] = dot_odd[r] = _mm256_setzero_si256();
    for (int t = 0; t < 8; t += 2) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t + 32));
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        dot[r] = add_dot_four(dot[r], w0, a + 4 * t);
        dot_odd[r] = add_dot_four(dot_odd[r], w1, a + 4 * t + 4);
      }
    }
    for (int r = 0; r < R; ++r)
      dot[r] = _mm256_sub_epi32(_mm256_add_epi32(dot[r], dot_odd[r]), _mm256_set1_epi32(128 * sqx[r * nb + b]));
#else
    for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
    for (int t = 0; t < 8; ++t) {
      const __m256i w = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * t)), offset);
      const __m256i w_abs = _mm256_sign_epi8(w, w);
      for (int r = 0; r < R; ++r) {
        const __m256i x = _mm256_sign_epi8(broadcast_four(qx + r * k + b * QK + 4 * t), w);
        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, x), ones));
      }
    }
#endif
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(dx[r * nb + b]), acc[r]);
  }
  const __m256 s = scales ? _mm256_loadu_ps(scales) : _mm256_set1_ps(1.f);
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * ldo, scales ? _mm256_mul_ps(acc[r], s) : acc[r]);
#else
  plain_tile<R>(panel, blocks, BLOCK_BYTES, qx, k, carry, out, ldo, prefetch,
                [&](float acc, const uint8_t* p, const int8_t* a, int r, int64_t b, int i) {
    int32_t dot = 0;
    for (int t = 0; t < 8; ++t)
      for (int j = 0; j < 4; ++j) dot += (static_cast<int32_t>(p[32 * t + 4 * i + j]) - 128) * a[4 * t + j];
    return std::fma(static_cast<float>(dot), dx[r * nb + b], acc);
  }, [&](float acc, int i) { return scales ? acc * scales[i] : acc; });
#endif
}

#if defined(LLMKIT_AVX512)
template <int R>
inline void int8_tile_512(const uint8_t* panel, int64_t blocks, const int8_t* qx, const float* dx,
                          const int32_t* sqx, int64_t k, const float* carry, const float* scales, float* out,
                          int64_t ldo, bool prefetch) {
  constexpr int64_t BLOCK_BYTES = INT8_ROW_BLOCK_BYTES * PANEL;
  const int64_t nb = k / QK;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = carry ? _mm512_loadu_ps(carry + r * PANEL) : _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* p = panel + b * BLOCK_BYTES;
    if (prefetch) prefetch_ahead(p, BLOCK_BYTES, PREFETCH_AHEAD * PANEL / HALF_PANEL);
    __m512i dot[R], dot_odd[R];
    for (int r = 0; r < R; ++r) dot[r] = dot_odd[r] = _mm512_setzero_si512();
    for (int t = 0; t < 8; t += 2) {
      const __m512i w0 = _mm512_loadu_si512(p + 4 * PANEL * t);
      const __m512i w1 = _mm512_loadu_si512(p + 4 * PANEL * (t + 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* a = qx + r * k + b * QK;
        dot[r] = add_dot_four(dot[r], w0, a + 4 * t);
        dot_odd[r] = add_dot_four(dot_odd[r], w1, a + 4 * t + 4);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(dot[r], dot_odd[r]), _mm512_set1_epi32(128 * sqx[r * nb + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(dx[r * nb + b]), acc[r]);
    }
  }
  const __m512 s = scales ? _mm512_loadu_ps(scales) : _mm512_set1_ps(1.f);
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * ldo, scales ? _mm512_mul_ps(acc[r], s) : acc[r]);
}
#endif

}  // namespace
