#include <stdint.h>
#include <stdlib.h>
/* Loops over large tensors are split between torch's OpenMP threads: the library is linked against the
   libgomp torch has already loaded, so they share its thread pool and torch.set_num_threads. */
static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* out = x * mask, mask = scale where kept, 0 where dropped; n elements, contiguous float32. */
void lt_dropout_f32(const float *x, float *out, float *mask, int64_t n, uint64_t seed,
                    uint32_t threshold, float scale) {
    const uint64_t gamma = 0x9e3779b97f4a7c15ULL;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n / 2; i++) {
        uint64_t r = mix(seed + (uint64_t)(i + 1) * gamma);
        float m0 = (uint32_t)r >= threshold ? scale : 0.0f;
        float m1 = (uint32_t)(r >> 32) >= threshold ? scale : 0.0f;
        mask[2 * i] = m0; mask[2 * i + 1] = m1;
        out[2 * i] = x[2 * i] * m0; out[2 * i + 1] = x[2 * i + 1] * m1;
    }
    if (n & 1) {
        uint64_t r = mix(seed + (uint64_t)(n / 2 + 1) * gamma);
        float m0 = (uint32_t)r >= threshold ? scale : 0.0f;
        mask[n - 1] = m0; out[n - 1] = x[n - 1] * m0;
    }
}
/* exp(-q) for q >= 0: Cephes' range reduction and polynomial (~1 ulp). q is capped at 86 with an integer
   min of its bits (for q >= 0 they order as the floats do), because a float comparison here stops gcc
   from vectorizing the loop; at and beyond the cap the result is 0. */
static inline __attribute__((always_inline)) float exp_neg(float q) {
    const int32_t cap = 0x42ac0000; /* 86.0f: exp(-86) is still a normal float */
    int32_t qb;
    __builtin_memcpy(&qb, &q, 4);
    const int32_t keep = -(int32_t)(qb < cap); /* all ones below the cap, else 0 */
    qb = qb < cap ? qb : cap;
    __builtin_memcpy(&q, &qb, 4);
    float x = -q;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f); /* round(x / ln 2), x <= 0 */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    __builtin_memcpy(&bits, &p, 4);
    bits = (bits + ((int32_t)n << 23)) & keep; /* p * 2^n, or 0 beyond the cap */
    __builtin_memcpy(&p, &bits, 4);
    return p;
}
/* y = gelu(x) = x * Phi(x) and d = gelu'(x) = Phi(x) + x * phi(x), in one pass; erf(z) as torch's CPU
   kernels compute it (Abramowitz-Stegun 7.1.26), whose exp(-z^2) is also the density's exp(-x^2 / 2). */
static void gelu_chunk(const float *restrict x, float *restrict y, float *restrict d, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float z = v * 0.70710678118654752440f;
        float t = 1.0f / (0.3275911f * __builtin_fabsf(z) + 1.0f);
        float r = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
        float e = exp_neg(z * z);
        float cdf = 0.5f * (1.0f + __builtin_copysignf(1.0f - r * t * e, z));
        y[i] = v * cdf;
        d[i] = cdf + v * (0.39894228040143267794f * e);
    }
}
void lt_gelu_f32(const float *x, float *y, float *d, int64_t n) {
    const int64_t chunk = 4096, chunks = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        gelu_chunk(x + lo, y + lo, d + lo, len);
    }
}
/* The sum of the squares of every element of `count` float32 arrays, in double precision.
   The work is cut into chunks of SUMSQ_CHUNK elements (a chunk never spans two arrays), each chunk summed by
   one thread into 64 partial sums (so that gcc vectorizes them into independent registers: one accumulator
   waits on each addition's latency; 64 measured 1.2-2x faster than 32 on a Xeon, AVX2 or AVX-512 code), and
   the chunks' sums added in order at the end: the result does not depend on the number of threads, and one
   call covers every gradient (one thread team, not one per tensor). A float's square is exact in double,
   so only the additions round. */
#define SUMSQ_CHUNK 65536
static double sumsq_chunk(const float *x, int64_t n) {
    double acc[64] = {0};
    const int64_t blocks = n / 64;
    for (int64_t b = 0; b < blocks; b++)
        for (int j = 0; j < 64; j++) acc[j] += (double)x[64 * b + j] * x[64 * b + j];
    for (int64_t i = 64 * blocks; i < n; i++) acc[i - 64 * blocks] += (double)x[i] * x[i];
    for (int w = 32; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}
/* -1 (no sum of squares is negative) when there is no memory for the chunk table: the caller sums in torch. */
double lt_sumsq_many(const float *const *xs, const int64_t *ns, int64_t count) {
    int64_t chunks = 0, total = 0;
    for (int64_t t = 0; t < count; t++) { chunks += (ns[t] + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK; total += ns[t]; }
    double *sums = malloc(chunks * sizeof(double));
    const float **at = malloc(chunks * sizeof(float *));
    int64_t *len = malloc(chunks * sizeof(int64_t));
    double s = -1.0;
    if (chunks == 0) {
        s = 0.0;
    } else if (sums && at && len) {
        int64_t c = 0;
        for (int64_t t = 0; t < count; t++)
            for (int64_t lo = 0; lo < ns[t]; lo += SUMSQ_CHUNK, c++) {
                at[c] = xs[t] + lo;
                len[c] = ns[t] - lo < SUMSQ_CHUNK ? ns[t] - lo : SUMSQ_CHUNK;
            }
        #pragma omp parallel for schedule(static) if (total > 65536)
        for (int64_t k = 0; k < chunks; k++) sums[k] = sumsq_chunk(at[k], len[k]);
        s = 0.0;
        for (int64_t k = 0; k < chunks; k++) s += sums[k];
    }
    free(sums); free(at); free(len);
    return s;
}
