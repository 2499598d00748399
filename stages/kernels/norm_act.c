/*
 * GroupNorm statistics and the normalise-scale-shift-SiLU pass for bf16 channels-last activations,
 * the two memory passes that follow every convolution of the U-Net at inference on the CPU.
 *
 * Memory is rows of C channels: x[n][row][c] for n < samples, row < rows (= H * W), c < channels.
 * bf16 values are the upper 16 bits of a float32. Loops over channels are written so that the
 * compiler vectorises them (-O3 -march=native); rows are split between OpenMP threads. PyTorch's
 * CPU build loads its own libgomp.so.1, and this library, linked against the same soname, shares
 * its thread pool: a pool of our own would fight PyTorch's spinning workers for the cores.
 *
 * Built and loaded at run time by stages/native.py (cc -O3 -march=native -fopenmp -shared -fPIC).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even (finite inputs). */
static inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* exp(x), relative error below 3e-6: x / ln 2 = n + f with n an integer (rounded by adding 1.5 * 2^23,
 * which leaves n in the low mantissa bits) and f in [-0.5, 0.5]; 2^f by a degree-5 polynomial, 2^n
 * built in the exponent bits. Inputs clamped to [-87, 88]. */
static inline float fast_exp(float x) {
    const float round = 12582912.0f; /* 1.5 * 2^23 */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * 1.44269504f;
    float r = t + round;
    int32_t n;
    memcpy(&n, &r, sizeof n);
    n -= 0x4B400000; /* the bits of 1.5 * 2^23 */
    float f = t - (r - round);
    float p = 1.33335581e-3f;
    p = p * f + 9.61812911e-3f;
    p = p * f + 5.55041087e-2f;
    p = p * f + 2.40226507e-1f;
    p = p * f + 6.93147181e-1f;
    p = p * f + 1.0f;
    int32_t e = (n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* ---------------------------------------------------------------- per-channel sums */

/* sum[n][c] = sum over rows of x, sum_sq[n][c] = sum of x^2 (float32). Returns 0, or -1 if out of memory. */
int channel_sums_bf16(const uint16_t *x, long samples, long rows, long channels, float *sum, float *sum_sq) {
    const long C = channels, size = samples * channels, total = samples * rows;
    const int threads = omp_get_max_threads();
    float *partial = calloc((size_t)(2 * size * threads), sizeof(float)); /* each thread's own sums */
    if (!partial) return -1;
#pragma omp parallel
    {
        float *s_all = partial + 2 * size * omp_get_thread_num(), *q_all = s_all + size;
#pragma omp for schedule(static)
        for (long r = 0; r < total; r++) {
            const uint16_t *row = x + r * C;
            float *s = s_all + (r / rows) * C, *q = q_all + (r / rows) * C;
            for (long c = 0; c < C; c++) {
                float v = bf16_to_float(row[c]);
                s[c] += v;
                q[c] += v * v;
            }
        }
    }
    for (long k = 0; k < size; k++) {
        float s = 0.0f, q = 0.0f;
        for (int i = 0; i < threads; i++) {
            s += partial[2 * size * i + k];
            q += partial[2 * size * i + size + k];
        }
        sum[k] = s;
        sum_sq[k] = q;
    }
    free(partial);
    return 0;
}

/* ---------------------------------------------------------------- x * scale + shift, then SiLU */

static void silu_row(const uint16_t *restrict in, const float *restrict a, const float *restrict b,
                     uint16_t *restrict out, long channels) {
    for (long c = 0; c < channels; c++) {
        float v = bf16_to_float(in[c]) * a[c] + b[c];
        out[c] = float_to_bf16(v / (1.0f + fast_exp(-v)));
    }
}

static void affine_row(const uint16_t *restrict in, const float *restrict a, const float *restrict b,
                       uint16_t *restrict out, long channels) {
    for (long c = 0; c < channels; c++) out[c] = float_to_bf16(bf16_to_float(in[c]) * a[c] + b[c]);
}

/* y[n][row][c] = act(x[n][row][c] * scale[n][c] + shift[n][c]), act SiLU when silu != 0, else identity.
 * y must not overlap x. */
void scale_shift_act_bf16(const uint16_t *x, const float *scale, const float *shift, uint16_t *y, long samples,
                          long rows, long channels, int silu) {
    const long C = channels, total = samples * rows;
#pragma omp parallel
    {
#if defined(__x86_64__) || defined(__i386__)
        /* Subnormal floats take microcode assists: the vectorised SiLU ran 5x slower with them
         * (15 against 2.9 ms for 4M values). Flush them to zero here (bf16 keeps float32's exponent
         * range, so only values below 1.2e-38 change), and restore each thread's mode after. */
        unsigned int mode = _mm_getcsr();
        _mm_setcsr(mode | 0x8040); /* FTZ | DAZ */
#endif
#pragma omp for schedule(static)
        for (long r = 0; r < total; r++) {
            const float *a = scale + (r / rows) * C, *b = shift + (r / rows) * C;
            (silu ? silu_row : affine_row)(x + r * C, a, b, y + r * C, C);
        }
#if defined(__x86_64__) || defined(__i386__)
        _mm_setcsr(mode);
#endif
    }
}
