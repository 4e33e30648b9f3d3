// int8_dot.cpp's linear layers as functions: the activations' quantization, the panel drivers over the
// tiles (int8_tiles.h) and the operators' bodies. int8_dot.cpp describes the arithmetic and registers the
// operators; llama_layer.cpp builds a decoder layer and a whole batch-1 step from the same functions, so
// that both give the same bits. Every file that includes it gets its own copy (an anonymous namespace).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "int8_tiles.h"
#include "vector_exp.h"

namespace {

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

// One call's quantized activations: per row, the int8 values q and per block of 32 the scale d, the sum s
// of the float values and the sum sq of q (the int8 weights' +128 offset).
struct QuantizedActivations {
  int8_t* q;
  float *d, *s;
  int32_t* sq;
};

// A buffer for one call's quantized activations, kept by the thread that asks for it between calls (grown
// as needed, never zeroed): a batch-1 decode step makes ~150 operator calls, and four fresh vectors per call
// were four mallocs, four frees and a memset each (perf on the 2-core AVX2 EPYC: libc's allocator ~10% of
// the host thread's time in a decode step whose kernels did no work). A buffer is in use only until the
// operator returns (ActivationQuantization: each thread's own, or the calling thread's shared by all).
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
// multiply. Quantizing before the region instead ran on the calling thread alone while the others spun:
// perf of a batch-32 decode step on the AVX-512 EPYC put it at ~2.3% of the calling thread's time, and a
// 1,536-input layer paid a second fork and join for it.
// - Up to OWN_ROWS rows (decoding), every thread quantizes all of them into its own buffer. Shared, each
//   thread wrote a share of the rows into one buffer that every thread had read in the layer before: each
//   line written was a line another core held, and every store waited for that core to give it up (perf,
//   batch-32 int8 step: quantize_row 10% of the samples, ~85% of them on its stores); the arithmetic is
//   the smaller part, and a thread then waits for no other.
// - More rows (a prefill chunk): each thread claims rows a few at a time into the caller's buffer, then
//   waits until every claimed row is written (a thread waits only for rows another thread is quantizing at
//   that moment, so it cannot wait on a thread that never comes, however many threads the region gets).
class ActivationQuantization {
 public:
  static constexpr int64_t OWN_ROWS = 64;

  ActivationQuantization(const float* x, int64_t rows, int64_t k)
      : x_(x), rows_(rows), k_(k), chunk_(std::max<int64_t>(1, 4096 / k)), own_(rows <= OWN_ROWS),
        shared_(own_ ? QuantizedActivations{} : activation_buffer(rows, k)) {}

  // The quantized activations, for a thread of the region
  QuantizedActivations for_this_thread() {
    if (own_) {
      const QuantizedActivations a = activation_buffer(rows_, k_);
      for (int64_t r = 0; r < rows_; ++r) quantize(a, r);
      return a;
    }
    for (int64_t begin; (begin = next_.fetch_add(chunk_, std::memory_order_relaxed)) < rows_;) {
      const int64_t end = std::min(rows_, begin + chunk_);
      for (int64_t r = begin; r < end; ++r) quantize(shared_, r);
      done_.fetch_add(end - begin, std::memory_order_release);
    }
    while (done_.load(std::memory_order_acquire) < rows_) {
#if defined(__x86_64__)
      __builtin_ia32_pause();  // a spin-wait hint (the pause instruction)
#endif
    }
    return shared_;
  }

 private:
  void quantize(const QuantizedActivations& a, int64_t r) const {
    const int64_t nb = k_ / QK;
    quantize_row(x_ + r * k_, k_, a.q + r * k_, a.d + r * nb, a.s + r * nb, a.sq + r * nb);
  }

  const float* x_;
  const int64_t rows_, k_, chunk_;
  const bool own_;
  const QuantizedActivations shared_;
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

// One panel's outputs for every activation row: `tile(R, r, first_block, count, carry, dst, ld, final,
// prefetch)` for tiles of R = 4 rows, then R = 1 for the rest (R as a std::integral_constant, a template
// argument for the tile). A single tile (1 or 4 rows: a batch-1 step) runs over all k / 32 blocks at once,
// prefetching as it goes. With more, the rows go in groups of ROW_GROUP and the blocks in chunks of
// CHUNK_BLOCKS: every tile of a group takes a chunk before any takes the next, its accumulators carried
// between chunks in `partial` (exact float stores and loads: the same operations in the same order, every
// output bit-identical to one pass), and each tile of the first group prefetches its share of the next
// chunk.
// Why: a panel comes from memory once a step (a model's weights are far larger than the caches). When a
// panel's first tile ran over all of k alone, it waited on memory while the core's multipliers idled, and
// the other tiles then found the panel in the cache: at 32 rows, layers whose weights came from memory
// took 1.1-1.4x the time of the same layers with warm weights on most shapes. Chunked, the panel is read
// at the pace of all the group's tiles, a chunk ahead of them. Operators at 32 rows, weights from memory,
// against one pass (AVX-512 EPYC, in-process, 2 threads; BENCHMARKS.md, 2026-12-05): chunks of 9 blocks,
// prefetched one ahead, 1.18x int4 and 1.20x int8 (the layers of a step, weighted), warm 1.03-1.04x; 4 blocks
// two ahead 1.11x / 1.17x (warm 0.99x / 0.98x: more carried accumulators); 16 blocks 1.05x / 1.08x;
// 4 blocks prefetched by the first tile alone, inside its loop, 1.11x / 1.11x (warm 0.99x / 0.92x).
constexpr int64_t ROW_GROUP = 32, CHUNK_BLOCKS = 9, PREFETCH_CHUNKS = 1;

template <class Tile>
void each_row_tile(int64_t rows, int64_t blocks, int64_t lanes, const uint8_t* panel, int64_t block_bytes,
                   float* out, int64_t ldo, const Tile& tile) {
  constexpr std::integral_constant<int, 4> four;
  constexpr std::integral_constant<int, 1> one;
  if (rows == 1 || rows == 4) {
    if (rows == 4) tile(four, 0, 0, blocks, nullptr, out, ldo, true, true);
    else tile(one, 0, 0, blocks, nullptr, out, ldo, true, true);
    return;
  }
  alignas(64) float partial[ROW_GROUP * PANEL];
  const int64_t chunk_lines = CHUNK_BLOCKS * block_bytes / 64;
  for (int64_t group = 0; group < rows; group += ROW_GROUP) {
    const int64_t group_end = std::min(rows, group + ROW_GROUP);
    const int64_t tiles = (group_end - group) / 4 + (group_end - group) % 4;
    for (int64_t b = 0; b < blocks; b += CHUNK_BLOCKS) {
      const int64_t count = std::min(CHUNK_BLOCKS, blocks - b);
      const bool final = b + count == blocks;
      const uint8_t* ahead = panel + (b + PREFETCH_CHUNKS * CHUNK_BLOCKS) * block_bytes;
      int64_t index = 0;
      const auto run = [&](auto R, int64_t r) {
        if (group == 0)
          for (int64_t line = index * chunk_lines / tiles; line < (index + 1) * chunk_lines / tiles; ++line)
            __builtin_prefetch(ahead + 64 * line, 0, 3);
        ++index;
        float* own = partial + (r - group) * lanes;
        tile(R, r, b, count, b == 0 ? nullptr : own, final ? out + r * ldo : own, final ? ldo : lanes, final,
             false);
      };
      int64_t r = group;
      for (; r + 4 <= group_end; r += 4) run(four, r);
      for (; r < group_end; ++r) run(one, r);
    }
  }
}

void int4_panel(const uint8_t* p, int64_t panel_rows, const QuantizedActivations& a, int64_t rows, int64_t k,
                float* o, int64_t ldo) {
  const int64_t blocks = k / QK;
  each_row_tile(rows, blocks, panel_rows, p, INT4_ROW_BLOCK_BYTES * panel_rows, o, ldo,
                [&](auto R, int64_t r, int64_t b, int64_t count, const float* carry, float* dst, int64_t ld, bool,
                    bool prefetch) {
    const uint8_t* chunk = p + b * INT4_ROW_BLOCK_BYTES * panel_rows;
    const int8_t* q = a.q + r * k + b * QK;
    const float *d = a.d + r * blocks + b, *s = a.s + r * blocks + b;
#if defined(LLMKIT_AVX512)
    if (panel_rows == PANEL) return int4_tile_512<R>(chunk, count, q, d, s, k, carry, dst, ld, prefetch);
#endif
    int4_tile_256<R>(chunk, count, q, d, s, k, carry, dst, ld, prefetch);
  });
}

void int8_panel(const uint8_t* p, int64_t panel_rows, const QuantizedActivations& a, int64_t rows, int64_t k,
                const float* scales, float* o, int64_t ldo) {
  const int64_t blocks = k / QK;
  each_row_tile(rows, blocks, panel_rows, p, INT8_ROW_BLOCK_BYTES * panel_rows, o, ldo,
                [&](auto R, int64_t r, int64_t b, int64_t count, const float* carry, float* dst, int64_t ld,
                    bool final, bool prefetch) {
    const uint8_t* chunk = p + b * INT8_ROW_BLOCK_BYTES * panel_rows;
    const int8_t* q = a.q + r * k + b * QK;
    const float* d = a.d + r * blocks + b;
    const int32_t* sq = a.sq + r * blocks + b;
    const float* s = final ? scales : nullptr;  // the rows' scales once, after the last chunk
#if defined(LLMKIT_AVX512)
    if (panel_rows == PANEL) return int8_tile_512<R>(chunk, count, q, d, sq, k, carry, s, dst, ld, prefetch);
#endif
    int8_tile_256<R>(chunk, count, q, d, sq, k, carry, s, dst, ld, prefetch);
  });
}

// The panels of n outputs: n / PANEL of PANEL rows, then one of 8 where n is 8 more than a multiple of 16.
int64_t panels_of(int64_t n) { return (n + PANEL - 1) / PANEL; }

// The weights an int4 operator takes (x's checks are as_rows'): panels for k inputs, outputs a multiple of 8
void check_int4_weight(const at::Tensor& weight, int64_t k, const char* op) {
  TORCH_CHECK(weight.dtype() == at::kByte && weight.dim() == 2 && weight.is_contiguous(),
              op, ": the weight must be a contiguous 2-D uint8 tensor");
  TORCH_CHECK(weight.size(1) == k / QK * 20, op, ": a weight row has ", weight.size(1), " bytes; ", k,
              " inputs need ", k / QK * 20);
  TORCH_CHECK(weight.size(0) % HALF_PANEL == 0, op, ": the outputs (", weight.size(0), ") must be a multiple of 8");
}

// The same for an int8 operator, and its per-output scales
void check_int8_weight(const at::Tensor& weight, const at::Tensor& scales, const char* op) {
  TORCH_CHECK(weight.dtype() == at::kByte && weight.dim() == 2 && weight.is_contiguous(),
              op, ": the weight must be a contiguous 2-D uint8 tensor (int8 panels)");
  const int64_t n = weight.size(0);
  TORCH_CHECK(n % HALF_PANEL == 0, op, ": the outputs (", n, ") must be a multiple of 8");
  TORCH_CHECK(scales.dtype() == at::kFloat && scales.numel() == n && scales.is_contiguous(),
              op, ": scales must be ", n, " contiguous float32 values");
}

// x (..., k) float or bf16; weight (n, k / 32 * 20) uint8: the panels described in int8_tiles.h.
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, int64_t k) {
  check_int4_weight(weight, k, "int4_linear");
  const at::Tensor x2 = as_rows(x, k, "int4_linear");
  const int64_t rows = x2.numel() / k, n = weight.size(0), blocks = k / QK;
  ActivationQuantization quantization(x2.data_ptr<float>(), rows, k);
  at::Tensor out2 = new_output(x, n);
  float* out = out2.data_ptr<float>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  at::parallel_for(0, panels_of(n), 1, [&](int64_t begin, int64_t end) {
    const QuantizedActivations activations = quantization.for_this_thread();
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t first = panel * PANEL;  // every panel before this one has PANEL rows
      int4_panel(w + first * blocks * INT4_ROW_BLOCK_BYTES, std::min(PANEL, n - first), activations,
                 rows, k, out + first, n);
    }
  });
  return in_dtype_of(x, out2);
}

// x (..., k); weight (n, k) uint8: the panels described in int8_tiles.h; scales (n) float32.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  check_int8_weight(weight, scales, "int8_linear");
  const int64_t n = weight.size(0), k = weight.size(1), blocks = k / QK;
  const at::Tensor x2 = as_rows(x, k, "int8_linear");
  const int64_t rows = x2.numel() / k;
  ActivationQuantization quantization(x2.data_ptr<float>(), rows, k);
  at::Tensor out2 = new_output(x, n);
  float* out = out2.data_ptr<float>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  at::parallel_for(0, panels_of(n), 1, [&](int64_t begin, int64_t end) {
    const QuantizedActivations activations = quantization.for_this_thread();
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t first = panel * PANEL;
      int8_panel(w + first * blocks * INT8_ROW_BLOCK_BYTES, std::min(PANEL, n - first), activations,
                 rows, k, s + first, out + first, n);
    }
  });
  return in_dtype_of(x, out2);
}

// SwiGLU's gate and up layers in one weight (llmkit.model.MLP's gate_up: gate outputs [0, n / 2), up
// outputs [n / 2, n)), and silu(gate) * up computed as the outputs are: a thread takes gate panel p and up
// panel p + n / 2 / PANEL, their outputs for all rows go to two small buffers of its own, and only the
// (rows, n / 2) product is written. Unfused, the compiled step wrote the (rows, n) outputs and a pointwise
// kernel read them back and wrote the product (at batch 32 on SmolLM2-135M, 23 us a layer, ~3% of the
// step); fused, batch-32 decode ran 1.08-1.10x, batch 1 the same (BENCHMARKS.md, 2026-12-06). The layout
// is the plain one: no weight is packed differently.
// GCC vectors of a panel's width: 16 floats (one AVX-512 register) where panels have 16 rows, else 8. Every
// lane takes the same operations, so the width changes no bit; on AVX-512, 8 lanes a vector took twice the
// instructions (the 3072 x 576 int8 gate/up operator at 32 rows: 1.025x with 16, outputs bit-identical).
typedef float panel_floats __attribute__((vector_size(PANEL * sizeof(float))));

// silu(g) * u = g * u / (1 + exp(-g)), lane by lane (the same bits at any batch), exp by vector_exp.h
// (within ~2 ulp) with -g clamped to [-87, 88] (beyond, the product is g * u or ~0 anyway). A NaN gate
// gives NaN: the clamp maps it to -87, and g * u stays NaN.
inline panel_floats silu_times(panel_floats g, panel_floats u) {
  panel_floats x = -g;
  x = x > -87.0f ? x : panel_floats{} - 87.0f;
  x = x < 88.0f ? x : panel_floats{} + 88.0f;
  return g * u / (exp_in_range(x) + 1.0f);
}

// x's rows through a gate/up weight of n outputs: `panel(activations, first_output, out, ldo)` writes one full
// panel's outputs for every row into out (rows, ldo).
template <class Panel>
at::Tensor swiglu_of_panels(const at::Tensor& x, const at::Tensor& x2, int64_t k, int64_t n, const char* op,
                            const Panel& panel) {
  TORCH_CHECK(n % (2 * PANEL) == 0, op, ": the gate and up halves (", n / 2, " outputs each) must be a multiple of ",
              PANEL, " outputs (this build's panel)");
  const int64_t half = n / 2, rows = x2.numel() / k;
  ActivationQuantization quantization(x2.data_ptr<float>(), rows, k);
  at::Tensor out2 = new_output(x, half);
  float* out = out2.data_ptr<float>();
  // Runs of `span` panels: the run's gate panels, then its up panels, then the products. Alternating gate
  // and up panel by panel, each thread switched between two weight streams every panel, and a batch-1
  // gate/up layer (3072 x 576 int8, weights from memory) took 56.9 us against 49.3 for the plain operator: a
  // stream's first blocks come unprefetched. A decode step's run is the thread's whole range (2 switches);
  // a prefill chunk's runs are shorter, to keep the buffers (rows x span x PANEL floats) near 0.5 MB.
  const int64_t span = std::clamp<int64_t>(8192 / std::max<int64_t>(rows, 1), 1, half / PANEL);
  at::parallel_for(0, half / PANEL, 1, [&](int64_t begin, int64_t end) {
    const QuantizedActivations activations = quantization.for_this_thread();
    thread_local std::vector<float> gate, up;  // grown as needed, like activation_buffer
    const size_t size = static_cast<size_t>(span * rows * PANEL);
    if (gate.size() < size) gate.resize(size), up.resize(size);
    for (int64_t run = begin; run < end; run += span) {
      const int64_t panels = std::min(span, end - run);
      for (int64_t i = 0; i < panels; ++i) panel(activations, (run + i) * PANEL, gate.data() + i * rows * PANEL, PANEL);
      for (int64_t i = 0; i < panels; ++i)
        panel(activations, half + (run + i) * PANEL, up.data() + i * rows * PANEL, PANEL);
      for (int64_t i = 0; i < panels; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          panel_floats g, u;
          std::memcpy(&g, gate.data() + (i * rows + r) * PANEL, sizeof g);
          std::memcpy(&u, up.data() + (i * rows + r) * PANEL, sizeof u);
          const panel_floats y = silu_times(g, u);
          std::memcpy(out + r * half + (run + i) * PANEL, &y, sizeof y);
        }
    }
  });
  return in_dtype_of(x, out2);
}

// int4_linear and int8_linear (their weights, their checks) with the SwiGLU epilogue: (..., n / 2) outputs
at::Tensor int4_linear_swiglu(const at::Tensor& x, const at::Tensor& weight, int64_t k) {
  check_int4_weight(weight, k, "int4_linear_swiglu");
  const at::Tensor x2 = as_rows(x, k, "int4_linear_swiglu");
  const int64_t rows = x2.numel() / k, blocks = k / QK;
  const uint8_t* w = weight.data_ptr<uint8_t>();
  return swiglu_of_panels(x, x2, k, weight.size(0), "int4_linear_swiglu",
                          [&](const QuantizedActivations& a, int64_t first, float* o, int64_t ldo) {
    int4_panel(w + first * blocks * INT4_ROW_BLOCK_BYTES, PANEL, a, rows, k, o, ldo);
  });
}

at::Tensor int8_linear_swiglu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  check_int8_weight(weight, scales, "int8_linear_swiglu");
  const int64_t n = weight.size(0), k = weight.size(1), blocks = k / QK;
  const at::Tensor x2 = as_rows(x, k, "int8_linear_swiglu");
  const int64_t rows = x2.numel() / k;
  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  return swiglu_of_panels(x, x2, k, n, "int8_linear_swiglu",
                          [&](const QuantizedActivations& a, int64_t first, float* o, int64_t ldo) {
    int8_panel(w + first * blocks * INT8_ROW_BLOCK_BYTES, PANEL, a, rows, k, s + first, o, ldo);
  });
}

// One quantized row through a layer, split between the threads of a parallel region that runs a whole decode
// token (llama_layer.cpp's TokenStep, benchmarks/weight_stream.cpp): the layer as the kernels hold it, panels and
// an int8 layer's row scales (null for int4).
struct Linear {
  const uint8_t* w;
  const float* s;
  int64_t n, k;
};

// Thread t's share of a layer's panels for one quantized row
inline void run_panels(const Linear& l, const QuantizedActivations& a, float* o, int t, int threads) {
  const int64_t blocks = l.k / QK, count = panels_of(l.n);
  for (int64_t panel = t * count / threads; panel < (t + 1) * count / threads; ++panel) {
    const int64_t first = panel * PANEL, rows = std::min(PANEL, l.n - first);
    if (l.s) int8_panel(l.w + first * blocks * INT8_ROW_BLOCK_BYTES, rows, a, 1, l.k, l.s + first, o + first, l.n);
    else int4_panel(l.w + first * blocks * INT4_ROW_BLOCK_BYTES, rows, a, 1, l.k, o + first, l.n);
  }
}

// Thread t's share of gate/up panel pairs, silu(gate) * up into act: swiglu_of_panels' arithmetic for a row
inline void run_swiglu(const Linear& l, const QuantizedActivations& a, float* act, int t, int threads) {
  const int64_t blocks = l.k / QK, half = l.n / 2, count = half / PANEL;
  alignas(64) float g[PANEL], u[PANEL];
  for (int64_t panel = t * count / threads; panel < (t + 1) * count / threads; ++panel) {
    const int64_t first = panel * PANEL, up = half + first;
    if (l.s) {
      int8_panel(l.w + first * blocks * INT8_ROW_BLOCK_BYTES, PANEL, a, 1, l.k, l.s + first, g, PANEL);
      int8_panel(l.w + up * blocks * INT8_ROW_BLOCK_BYTES, PANEL, a, 1, l.k, l.s + up, u, PANEL);
    } else {
      int4_panel(l.w + first * blocks * INT4_ROW_BLOCK_BYTES, PANEL, a, 1, l.k, g, PANEL);
      int4_panel(l.w + up * blocks * INT4_ROW_BLOCK_BYTES, PANEL, a, 1, l.k, u, PANEL);
    }
    panel_floats gv, uv;
    std::memcpy(&gv, g, sizeof gv);
    std::memcpy(&uv, u, sizeof uv);
    const panel_floats y = silu_times(gv, uv);
    std::memcpy(act + first, &y, sizeof y);
  }
}

}  // namespace
