/*
 * GroupNorm statistics and the normalise-scale-shift-SiLU pass for bf16 channels-last activations,
 * the two memory passes that follow every convolution of the U-Net at inference on the CPU.
 *
 * Memory is rows of C channels: x[n][row][c] for n < samples, row < rows (= H * W), c < channels.
 * bf16 values are the upper 16 bits of a float32. Loops over channels are written so that the
 * compiler vectorises them (-O3 -march=native); rows are split between OpenMP threads, a chunk of
 * samples at a time, each thread normalising the rows it has just summed. PyTorch's
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

/* s[c] += x[row][c], q[c] += x[row][c]^2 (float32) over one row of channels values. */
static inline void accumulate_row(const uint16_t *restrict row, float *restrict s, float *restrict q, int64_t channels) {
    for (int64_t c = 0; c < channels; c++) {
        float v = bf16_to_float(row[c]);
        s[c] += v;
        q[c] += v * v;
    }
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

/* ---------------------------------------------------------------- the whole GroupNorm, one call */

/* Bytes of input a thread's share of one chunk of samples should hold, so that the normalising pass
 * reads what the statistics pass just read from the core's L2 cache (2 MiB a core here) instead of
 * from L3 or memory: 0.5 MiB of input plus as much output (0.25 and 1 MiB ran within noise of it). */
#define CHUNK_BYTES_PER_THREAD (512 * 1024)

/* a[c], b[c] of y = a x + b for one sample from its channel sums (sum, sum_sq [C]) and the sample's
 * scale and shift rows (NULL: 0): mean and rstd per group of C / groups channels over count values. */
static void sample_coefficients(const float *sum, const float *sum_sq, int64_t C, int64_t groups, double count, float eps,
                                const float *weight, const float *bias, const float *scale, const float *shift,
                                float *a, float *b) {
    const int64_t per_group = C / groups;
    for (int64_t g = 0; g < groups; g++) {
        double s = 0.0, q = 0.0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
            s += sum[c];
            q += sum_sq[c];
        }
        double mean = s / count, var = q / count - mean * mean;
        float rstd = (float)(1.0 / __builtin_sqrt((var > 0.0 ? var : 0.0) + eps));
        for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
            float factor = scale ? 1.0f + scale[c] : 1.0f;
            float gain = (weight ? weight[c] : 1.0f) * factor;
            float offset = (bias ? bias[c] : 0.0f) * factor + (shift ? shift[c] : 0.0f);
            a[c] = rstd * gain; /* y = a x + b */
            b[c] = offset - (float)mean * rstd * gain;
        }
    }
}

/* GroupNorm over the channels of x1 (c1 a row) followed by those of x2 (c2 a row; x2 may be NULL
 * with c2 = 0), as if concatenated, written concatenated into y (c1 + c2 a row):
 * y = act(((x - mean) * rstd * weight[c] + bias[c]) * (1 + scale[n][c]) + shift[n][c]), mean and
 * rstd per sample n and group of (c1 + c2) / groups channels, act SiLU when silu != 0. weight and
 * bias [c1 + c2] may be NULL (1 and 0), scale and shift [samples][c1 + c2] too (0 and 0). y must
 * not overlap the inputs. Returns 0, or -1 if out of memory.
 *
 * The samples go in chunks (CHUNK_BYTES_PER_THREAD): for each chunk the threads sum their rows'
 * channels, one thread turns the sums into coefficients, and each thread then normalises the same
 * rows it summed (the same static split of the same loop), while they are still in its cache. */
int group_norm_act_bf16(const uint16_t *x1, int64_t c1, const uint16_t *x2, int64_t c2, int64_t samples, int64_t rows, int64_t groups,
                        float eps, const float *weight, const float *bias, const float *scale, const float *shift,
                        int silu, uint16_t *y) {
    const int64_t C = c1 + c2;
    const int threads = omp_get_max_threads();
    const int64_t sample_bytes = rows * C * (int64_t)sizeof(uint16_t);
    int64_t chunk = (CHUNK_BYTES_PER_THREAD * (int64_t)threads) / (sample_bytes > 0 ? sample_bytes : 1);
    chunk = chunk < 1 ? 1 : (chunk > samples ? samples : chunk);
    /* per chunk: each thread's sums [threads][2][chunk * C], then the chunk's sums and coefficients */
    float *partial = malloc((size_t)(2 * chunk * C * threads + 4 * chunk * C) * sizeof(float));
    if (!partial) return -1;
    float *sum = partial + 2 * chunk * C * threads, *sum_sq = sum + chunk * C, *a = sum_sq + chunk * C, *b = a + chunk * C;
    const double count = (double)(C / groups) * (double)rows;
#pragma omp parallel
    {
        const int thread = omp_get_thread_num(), team = omp_get_num_threads();
        float *s_own = partial + 2 * chunk * C * thread, *q_own = s_own + chunk * C;
#if defined(__x86_64__) || defined(__i386__)
        /* Subnormal floats take microcode assists: the vectorised SiLU ran 5x slower with them
         * (15 against 2.9 ms for 4M values). Flush them to zero here (bf16 keeps float32's exponent
         * range, so only values below 1.2e-38 change), and restore each thread's mode after. */
        unsigned int mode = _mm_getcsr();
        _mm_setcsr(mode | 0x8040); /* FTZ | DAZ */
#endif
        for (int64_t first = 0; first < samples; first += chunk) {
            const int64_t count_here = (samples - first < chunk ? samples - first : chunk), total = count_here * rows;
            memset(s_own, 0, (size_t)(2 * chunk * C) * sizeof(float));
#pragma omp for schedule(static)
            for (int64_t r = 0; r < total; r++) {
                const int64_t n = r / rows, row = (first + n) * rows + r % rows;
                accumulate_row(x1 + row * c1, s_own + n * C, q_own + n * C, c1);
                if (c2 > 0) accumulate_row(x2 + row * c2, s_own + n * C + c1, q_own + n * C + c1, c2);
            }
#pragma omp single
            {
                for (int64_t k = 0; k < count_here * C; k++) {
                    float s = 0.0f, q = 0.0f;
                    for (int i = 0; i < team; i++) {
                        s += partial[2 * chunk * C * i + k];
                        q += partial[2 * chunk * C * i + chunk * C + k];
                    }
                    sum[k] = s;
                    sum_sq[k] = q;
                }
                for (int64_t n = 0; n < count_here; n++) {
                    const int64_t m = first + n;
                    sample_coefficients(sum + n * C, sum_sq + n * C, C, groups, count, eps, weight, bias,
                                        scale ? scale + m * C : NULL, shift ? shift + m * C : NULL, a + n * C, b + n * C);
                }
            }
#pragma omp for schedule(static)
            for (int64_t r = 0; r < total; r++) {
                const int64_t n = r / rows, row = (first + n) * rows + r % rows;
                void (*act)(const uint16_t *, const float *, const float *, uint16_t *, int64_t) = silu ? silu_row : affine_row;
                act(x1 + row * c1, a + n * C, b + n * C, y + row * C, c1);
                if (c2 > 0) act(x2 + row * c2, a + n * C + c1, b + n * C + c1, y + row * C + c1, c2);
            }
        }
#if defined(__x86_64__) || defined(__i386__)
        _mm_setcsr(mode);
#endif
    }
    free(partial);
    return 0;
}
