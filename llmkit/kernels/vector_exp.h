// exp for GCC vectors of floats, shared by attention.cpp's softmax and int8_dot.cpp's SwiGLU epilogue.
#pragma once
#include <cstdint>
#include <cstring>

namespace {

// exp(x) lane by lane for -87 <= x <= 88 (the caller clamps: there 2^n below is a normal float), within
// ~2 ulp: Cody-Waite reduction by ln 2 and Cephes' degree-6 expf polynomial in vector arithmetic (libm's
// expf is a call per value). The same operations in every lane, so the same bits whatever the vector's width.
template <typename V>
inline V exp_in_range(V x) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (2^23 + 2^22)
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V poly = V{} + 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;  // 2^n
  V two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return poly * two_n;
}

}  // namespace
