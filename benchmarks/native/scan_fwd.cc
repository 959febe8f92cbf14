// A fused, compiled selective-scan forward for CPUs: a measuring stick for benchmarks/scan.py, NOT part of
// mambavl (whose "torch" backend is pure PyTorch; see docs/benchmarks.md).
//
// It answers one question: how fast can a forward be on this CPU when every step is fused into one pass
// that keeps the state on the core (registers and L1 cache), as mamba-ssm's CUDA kernel does on a GPU? benchmarks/scan.py compiles
// it at run time with the system C++ compiler (`c++ -O3 -march=native -fopenmp`), loads it with ctypes and
// times it beside the library's backends.
//
// Semantics: those of mambavl.ops.selective_scan / mamba-ssm's selective_scan_fn, float32 only:
//   dt = softplus(delta + delta_bias)   (bias and softplus optional)
//   h_t = exp(dt_t * A) h_{t-1} + dt_t B_t u_t,   y_t = C_t . h_t + D u_t,   out = y * silu(z)   (D, z optional)
// Layouts (contiguous): u, delta, z, out: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d); last: (b, d, n).
//
// Algorithm: one OpenMP task per (batch, tile of W = 16 channels); the channels are the vector lanes (GCC/Clang
// vector extensions: one AVX-512 register, or two AVX2 ones). For each block of TT time steps the tile's rows of
// delta, u, z are copied transposed into (TT, W) buffers (and B, C into (TT, n)); then every step does, per state
// k, h[k] = 2^(dt * A[k] log2 e) h[k] + dt u B[k] and y += C[k] h[k]; the state h (n x W floats) never leaves
// the core. exp2, softplus and silu use polynomial approximations with relative errors of about 2e-7.
#include <cstdint>

namespace {

constexpr int W = 16;      // channels per task = vector lanes
constexpr int TT = 64;     // time steps per transposed block
constexpr int NMAX = 64;   // largest state size n
constexpr float LOG2E = 1.4426950408889634f;

typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf splat(float x) { return vf{} + x; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }

// 2^x with x clamped to [-126, 126]: 2^round(x) (exponent bits) times the degree-6 Taylor polynomial of 2^f on
// [-1/2, 1/2] (truncation error < 2e-7 relative). Below 2^-126 the result is 2^-126 (absolute error < 1.2e-38).
inline vf exp2v(vf x) {
  x = vmin(vmax(x, splat(-126.f)), splat(126.f));
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: (x + magic) - magic rounds x to the nearest integer
  const vf k = (x + magic) - magic;
  const vf f = x - k;
  vf p = splat(1.5403530393381606e-04f);  // ln(2)^k / k!, k = 6 .. 0
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
  const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  return p * (vf)bits;
}

// log(1 + e) for e in [0, 1]: e * q(e), q a degree-8 least-squares fit of log1p(e) / e (relative error 2e-7).
inline vf log1p01(vf e) {
  vf q = splat(5.2534577967e-03f);
  q = q * e - 2.9588507392e-02f;
  q = q * e + 7.8361668018e-02f;
  q = q * e - 1.3674769706e-01f;
  q = q * e + 1.9111431081e-01f;
  q = q * e - 2.4844369892e-01f;
  q = q * e + 3.3319271343e-01f;
  q = q * e - 4.9999501517e-01f;
  q = q * e + 9.9999997054e-01f;
  return e * q;
}

// softplus(x) = max(x, 0) + log(1 + exp(-|x|))
inline vf softplus(vf x) { return vmax(x, splat(0.f)) + log1p01(exp2v(vmax(x, -x) * -LOG2E)); }

inline vf silu(vf z) { return z / (1.f + exp2v(z * -LOG2E)); }

}  // namespace

// Returns 0, or 1 when n exceeds NMAX (nothing is written then).
extern "C" int mambavl_scan_fwd(const float* u, const float* delta, const float* A, const float* B, const float* C,
                                const float* D, const float* z, const float* delta_bias, int delta_softplus,
                                float* out, float* last, int64_t b, int64_t d, int64_t L, int64_t n, int threads) {
  if (n > NMAX) return 1;
  const int64_t tiles = (d + W - 1) / W;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t job = 0; job < b * tiles; ++job) {
    const int64_t bi = job / tiles, d0 = (job % tiles) * W;
    const int w = d - d0 < W ? static_cast<int>(d - d0) : W;  // lanes in use (idle lanes stay 0)
    vf a2[NMAX], h[NMAX], bias = splat(0.f), Dv = splat(0.f);
    vf dtb[TT] = {}, ub[TT] = {}, zb[TT] = {}, yb[TT];
    float Bt[TT][NMAX], Ct[TT][NMAX];
    for (int64_t k = 0; k < n; ++k) {
      a2[k] = splat(0.f);
      for (int l = 0; l < w; ++l) a2[k][l] = A[(d0 + l) * n + k] * LOG2E;
      h[k] = splat(0.f);
    }
    for (int l = 0; l < w; ++l) {
      if (delta_bias) bias[l] = delta_bias[d0 + l];
      if (D) Dv[l] = D[d0 + l];
    }
    const int64_t row0 = (bi * d + d0) * L;
    const float *Bb = B + bi * n * L, *Cb = C + bi * n * L;
    for (int64_t t0 = 0; t0 < L; t0 += TT) {
      const int64_t m = L - t0 < TT ? L - t0 : TT;
      for (int l = 0; l < w; ++l) {
        const int64_t r = row0 + l * L + t0;
        for (int64_t i = 0; i < m; ++i) {
          dtb[i][l] = delta[r + i];
          ub[i][l] = u[r + i];
          if (z) zb[i][l] = z[r + i];
        }
      }
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < m; ++i) {
          Bt[i][k] = Bb[k * L + t0 + i];
          Ct[i][k] = Cb[k * L + t0 + i];
        }
      for (int64_t i = 0; i < m; ++i) {
        const vf dt = delta_softplus ? softplus(dtb[i] + bias) : dtb[i] + bias;
        const vf dtu = dt * ub[i];
        vf y0 = Dv * ub[i], y1 = splat(0.f);  // two accumulators: half the dependent-add chain
        int64_t k = 0;
        for (; k + 1 < n; k += 2) {
          h[k] = exp2v(dt * a2[k]) * h[k] + dtu * Bt[i][k];
          y0 += h[k] * Ct[i][k];
          h[k + 1] = exp2v(dt * a2[k + 1]) * h[k + 1] + dtu * Bt[i][k + 1];
          y1 += h[k + 1] * Ct[i][k + 1];
        }
        if (k < n) {
          h[k] = exp2v(dt * a2[k]) * h[k] + dtu * Bt[i][k];
          y0 += h[k] * Ct[i][k];
        }
        yb[i] = z ? (y0 + y1) * silu(zb[i]) : y0 + y1;
      }
      for (int l = 0; l < w; ++l) {
        float* o = out + row0 + l * L + t0;
        for (int64_t i = 0; i < m; ++i) o[i] = yb[i][l];
      }
    }
    for (int64_t k = 0; k < n; ++k)
      for (int l = 0; l < w; ++l) last[(bi * d + d0 + l) * n + k] = h[k][l];
  }
  return 0;
}
