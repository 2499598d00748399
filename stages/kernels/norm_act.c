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

/* sum[n * stride + c] = sum over rows of x[n][row][c], sum_sq likewise of x^2 (float32), for x of
 * channels channels a row. Returns 0, or -1 if out of memory. */
static int channel_sums_bf16(const uint16_t *x, int64_t samples, int64_t rows, int64_t channels, float *sum, float *sum_sq,
                             int64_t stride) {
    const int64_t C = channels, size = samples * channels, total = samples * rows;
    const int threads = omp_get_max_threads();
    float *partial = calloc((size_t)(2 * size * threads), sizeof(float)); /* each thread's own sums */
    if (!partial) return -1;
#pragma omp parallel
    {
        float *s_all = partial + 2 * size * omp_get_thread_num(), *q_all = s_all + size;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < total; r++) {
            const uint16_t *row = x + r * C;
            float *s = s_all + (r / rows) * C, *q = q_all + (r / rows) * C;
            for (int64_t c = 0; c < C; c++) {
                float v = bf16_to_float(row[c]);
                s[c] += v;
                q[c] += v * v;
            }
        }
    }
    for (int64_t k = 0; k < size; k++) {
        float s = 0.0f, q = 0.0f;
        for (int i = 0; i < threads; i++) {
            s += partial[2 * size * i + k];
            q += partial[2 * size * i + size + k];
        }
        sum[(k / C) * stride + k % C] = s;
        sum_sq[(k / C) * stride + k % C] = q;
    }
    free(partial);
    return 0;
}

/* ---------------------------------------------------------------- x * scale + shift, then SiLU */

static void silu_row(const uint16_t *restrict in, const float *restrict a, const float *restrict b,
                     uint16_t *restrict out, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        float v = bf16_to_float(in[c]) * a[c] + b[c];
        out[c] = float_to_bf16(v / (1.0f + fast_exp(-v)));
    }
}

static void affine_row(const uint16_t *restrict in, const float *restrict a, const float *restrict b,
                       uint16_t *restrict out, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) out[c] = float_to_bf16(bf16_to_float(in[c]) * a[c] + b[c]);
}

/* y[n][row][c] = act(x[n][row][c] * a[n * stride + c] + b[n * stride + c]) for c < channels, act SiLU
 * when silu != 0, else identity; x's rows hold channels values, y's rows y_row (y may be a column
 * offset into wider rows). y must not overlap x. */
static void scale_shift_act_bf16(const uint16_t *x, int64_t channels, const float *a, const float *b, int64_t stride,
                                 uint16_t *y, int64_t y_row, int64_t samples, int64_t rows, int silu) {
    const int64_t total = samples * rows;
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
        for (int64_t r = 0; r < total; r++) {
            const int64_t n = r / rows;
            (silu ? silu_row : affine_row)(x + r * channels, a + n * stride, b + n * stride, y + r * y_row, channels);
        }
#if defined(__x86_64__) || defined(__i386__)
        _mm_setcsr(mode);
#endif
    }
}

/* ---------------------------------------------------------------- the whole GroupNorm, one call */

/* GroupNorm over the channels of x1 (c1 a row) followed by those of x2 (c2 a row; x2 may be NULL
 * with c2 = 0), as if concatenated, written concatenated into y (c1 + c2 a row):
 * y = act(((x - mean) * rstd * weight[c] + bias[c]) * (1 + scale[n][c]) + shift[n][c]), mean and
 * rstd per sample n and group of (c1 + c2) / groups channels, act SiLU when silu != 0. weight and
 * bias [c1 + c2] may be NULL (1 and 0), scale and shift [samples][c1 + c2] too (0 and 0). y must
 * not overlap the inputs. Returns 0, or -1 if out of memory. */
int group_norm_act_bf16(const uint16_t *x1, int64_t c1, const uint16_t *x2, int64_t c2, int64_t samples, int64_t rows, int64_t groups,
                        float eps, const float *weight, const float *bias, const float *scale, const float *shift,
                        int silu, uint16_t *y) {
    const int64_t C = c1 + c2, per_group = C / groups, size = samples * C;
    float *work = malloc((size_t)(4 * size) * sizeof(float));
    if (!work) return -1;
    float *sum = work, *sum_sq = work + size, *a = work + 2 * size, *b = work + 3 * size;
    if (channel_sums_bf16(x1, samples, rows, c1, sum, sum_sq, C) != 0 ||
        (c2 > 0 && channel_sums_bf16(x2, samples, rows, c2, sum + c1, sum_sq + c1, C) != 0)) {
        free(work);
        return -1;
    }
    const double count = (double)per_group * (double)rows;
    for (int64_t n = 0; n < samples; n++) {
        for (int64_t g = 0; g < groups; g++) {
            double s = 0.0, q = 0.0;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
                s += sum[n * C + c];
                q += sum_sq[n * C + c];
            }
            double mean = s / count, var = q / count - mean * mean;
            float rstd = (float)(1.0 / __builtin_sqrt((var > 0.0 ? var : 0.0) + eps));
            for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
                float factor = scale ? 1.0f + scale[n * C + c] : 1.0f;
                float gain = (weight ? weight[c] : 1.0f) * factor;
                float offset = (bias ? bias[c] : 0.0f) * factor + (shift ? shift[n * C + c] : 0.0f);
                a[n * C + c] = rstd * gain; /* y = a x + b */
                b[n * C + c] = offset - (float)mean * rstd * gain;
            }
        }
    }
    scale_shift_act_bf16(x1, c1, a, b, C, y, C, samples, rows, silu);
    if (c2 > 0) scale_shift_act_bf16(x2, c2, a + c1, b + c1, C, y + c1, C, samples, rows, silu);
    free(work);
    return 0;
}
