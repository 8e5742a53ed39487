// vec_math_constants.h: the numbers of the vector math at every width (avx2_math.h, avx512_math.h): range
// reductions and Taylor coefficients, kept once so that every ISA level computes the same values.
#pragma once

namespace qt {
namespace vec_math {

// exp: x = n ln2 + r with n = round(x log2(e)); ln 2 = LN2_HI + LN2_LO, where n * LN2_HI is exact.
constexpr float LOG2_E = 1.44269504088896341f;
constexpr float LN2_HI = 0.693145751953125f;
constexpr float LN2_LO = 1.42860682030941723212e-6f;
constexpr float EXP_LIMIT = 88.0f;  // |x| above this is clamped (no overflow to inf)

// 1 / k! for k = 8 down to 0, highest power first (Horner's order): e^r to r^7 takes the last 8, expm1(r) / r^2
// to r^8 the first 7.
constexpr float INV_FACTORIAL[9] = {1.0f / 40320, 1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24,
                                    1.0f / 6,     0.5f,        1.0f,       1.0f};

// sin: x = n pi + r with n = round(x / pi); pi = PI_1 + PI_2 + PI_3, the products with n exact for |x| < 2e5.
constexpr float INV_PI = 0.318309886183790671538f;
constexpr float PI_1 = 3.140625f;
constexpr float PI_2 = 9.67502593994140625e-4f;
constexpr float PI_3 = 1.509957990978376432e-7f;
// sin(r) = r + r^3 * P(r^2), P's coefficients (+-1 / (2k + 1)!, k = 6 down to 1) highest power first.
constexpr float SIN_TAYLOR[6] = {1.0f / 6227020800.0f, -1.0f / 39916800.0f, 1.0f / 362880.0f,
                                 -1.0f / 5040.0f,      1.0f / 120.0f,       -1.0f / 6.0f};

}  // namespace vec_math
}  // namespace qt
