"""The CPU's byte dot-product instruction at full rate: how many multiply-adds a second the int8-activation
kernels (llmkit/kernels/int8_dot.cpp) could reach at most, and how many independent chains it takes.

A batch-32 decode step or a prefill chunk is bound by the int4/int8 tiles' arithmetic, not by reading
the weights, so its ceiling is this instruction's rate: `vpdpbusd` (AVX-512 VNNI / AVX-VNNI: 32 byte
products into 8 int32 a 256-bit instruction) or, on AVX2, `vpmaddubsw` (32 byte products into 16 int16
pair sums; the tile then needs adds to widen them). Each is timed in a loop of N independent chains
(acc_i = op(acc_i, u, s)): with fewer chains than latency x issue rate the loop waits on its own results,
which is what one chain per activation row did to the VNNI tiles until 2026-12-05 (BENCHMARKS.md). Also
the core clock (a chain of dependent integer adds, one a cycle), so the rate reads as instructions a cycle.

    python benchmarks/dot_product_peak.py [--threads 2]

Reports per chain count the instructions a cycle and GMAC/s on one core and on --threads cores at once,
and SmolLM2-135M's ceiling in tokens a second at that rate (its ~134.5M multiply-adds a token, head
included); then, on one core, the rate of 8 chains with 0-8 independent fp32 FMAs beside them (what the
tiles' per-block float epilogue costs where the two share pipes). Prints two tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

MACS_PER_TOKEN = 134.5e6  # SmolLM2-135M: 30 layers x 3.54M + the 49,152 x 576 head
CHAINS = (1, 2, 4, 8, 12, 16)

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <chrono>

// One step of a chain: the byte dot product, accumulated (vpdpbusd) or, on AVX2, vpmaddubsw with the last
// result as its unsigned bytes.
inline __m256i dot_step(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_maddubs_epi16(acc, s);
#endif
}

// Seconds for `iterations` rounds of `chains` independent byte dot products on each of `threads` threads.
template <int CHAINS>
double timed(int64_t iterations, int64_t threads) {
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      __m256i acc[CHAINS];
      for (int c = 0; c < CHAINS; ++c) acc[c] = _mm256_set1_epi32(c + t);
      const __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(1);
      for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 16
        for (int c = 0; c < CHAINS; ++c) acc[c] = dot_step(acc[c], u, s);
      }
      int32_t sink = 0;
      for (int c = 0; c < CHAINS; ++c) sink += _mm256_extract_epi32(acc[c], 0);
      asm volatile("" : : "r"(sink));
    }
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Seconds for `iterations` rounds of 8 independent byte dot products plus EXTRA independent fp32 FMAs on
// one thread: what a tile's per-block float epilogue (int32 -> float, scale, accumulate) costs the dot
// products when the two share execution pipes.
template <int EXTRA>
double timed_with_fma(int64_t iterations) {
  __m256i acc[8];
  __m256 f[EXTRA > 0 ? EXTRA : 1];
  for (int c = 0; c < 8; ++c) acc[c] = _mm256_set1_epi32(c);
  for (int e = 0; e < EXTRA; ++e) f[e] = _mm256_set1_ps(e);
  __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(1);
  __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.25f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) acc[c] = dot_step(acc[c], u, s);
#pragma GCC unroll 8
    for (int e = 0; e < EXTRA; ++e) f[e] = _mm256_fmadd_ps(f[e], a, b);
    asm volatile("" : "+x"(u), "+x"(a));  // keeps the loop from being folded
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int32_t sink = 0;
  for (int c = 0; c < 8; ++c) sink += _mm256_extract_epi32(acc[c], 0);
  for (int e = 0; e < EXTRA; ++e) sink += static_cast<int32_t>(_mm256_cvtss_f32(f[e]));
  asm volatile("" : : "r"(sink));
  return seconds;
}

double with_fma(int64_t extra, int64_t iterations) {
  switch (extra) {
    case 0: return timed_with_fma<0>(iterations);
    case 1: return timed_with_fma<1>(iterations);
    case 2: return timed_with_fma<2>(iterations);
    case 3: return timed_with_fma<3>(iterations);
    case 4: return timed_with_fma<4>(iterations);
    case 8: return timed_with_fma<8>(iterations);
  }
  TORCH_CHECK(false, "extra FMAs: 0, 1, 2, 3, 4 or 8");
}

double chains(int64_t count, int64_t iterations, int64_t threads) {
  switch (count) {
    case 1: return timed<1>(iterations, threads);
    case 2: return timed<2>(iterations, threads);
    case 4: return timed<4>(iterations, threads);
    case 8: return timed<8>(iterations, threads);
    case 12: return timed<12>(iterations, threads);
    case 16: return timed<16>(iterations, threads);
  }
  TORCH_CHECK(false, "chains: 1, 2, 4, 8, 12 or 16");
}

// The core clock in GHz: four dependent integer adds an iteration, one a cycle.
double clock_ghz() {
  const int64_t iterations = 500000000;
  int64_t x = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t n = 0; n < iterations; ++n) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  return 4.0 * iterations / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 1e9;
}

std::string instruction() {
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
  return "vpdpbusd";
#else
  return "vpmaddubsw";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("chains", &chains);
  m.def("with_fma", &with_fma);
  m.def("clock_ghz", &clock_ghz);
  m.def("instruction", &instruction);
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        sys.exit("this measures x86 byte dot-product instructions: the CPU has no AVX2")
    torch.set_num_threads(args.threads)
    from torch.utils import cpp_extension
    from machine import cpu_report
    probe = cpp_extension.load_inline("llmkit_dot_product_peak", cpp_sources=SOURCE,
                                      extra_cflags=["-O2", "-march=native", "-fopenmp"], verbose=False)
    machine = {**cpu_report(), "threads": args.threads}
    ghz = probe.clock_ghz()
    name = probe.instruction()
    iterations = 20_000_000
    print(f"CPU: {machine['cpu']}; ISA: {', '.join(machine['isa'])}; clock {ghz:.2f} GHz; {name}")
    print(f"| chains | {name} a cycle, 1 core | GMAC/s, 1 core | GMAC/s, {args.threads} cores | "
          f"SmolLM2-135M ceiling, tok/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for count in CHAINS:
        one = min(probe.chains(count, iterations, 1) for _ in range(3))
        every = min(probe.chains(count, iterations, args.threads) for _ in range(3))
        per_cycle = count * iterations / one / (ghz * 1e9)
        gmacs_one = 32 * count * iterations / one / 1e9
        gmacs_all = 32 * count * iterations * args.threads / every / 1e9
        print(f"| {count} | {per_cycle:.2f} | {gmacs_one:.0f} | {gmacs_all:.0f} | {gmacs_all * 1e9 / MACS_PER_TOKEN:,.0f} |")
        rows.append({"chains": count, "per_cycle": per_cycle, "gmacs_one_core": gmacs_one, "gmacs_all": gmacs_all})
    # The tiles' float epilogue: per activation row and block of 32 inputs, the int4 tile issues 8 byte dot
    # products and 3 float multiplies or FMAs (the weight scale times the activation scale, then two
    # accumulations: the scaled dot and the min term), the int8 tile 8 and 1. Where the FMAs share the dot
    # product's pipes, the int4 tile can run no faster than the 3-FMA row however the rest is tuned.
    print()
    print(f"| extra FMAs per 8 {name} | {name} a cycle, 1 core | GMAC/s, 1 core | of the 8-chain rate |")
    print("| ---: | ---: | ---: | ---: |")
    epilogue = []
    base = None
    for extra in (0, 1, 2, 3, 4, 8):
        seconds = min(probe.with_fma(extra, iterations) for _ in range(3))
        per_cycle = 8 * iterations / seconds / (ghz * 1e9)
        gmacs = 32 * 8 * iterations / seconds / 1e9
        base = base or gmacs
        print(f"| {extra} | {per_cycle:.2f} | {gmacs:.0f} | {gmacs / base:.0%} |")
        epilogue.append({"extra_fma": extra, "per_cycle": per_cycle, "gmacs_one_core": gmacs})
    print(json.dumps({"benchmark": "dot_product_peak", "machine": machine, "clock_ghz": ghz, "instruction": name,
                      "threads": args.threads, "rows": rows, "epilogue": epilogue}))


if __name__ == "__main__":
    main()
