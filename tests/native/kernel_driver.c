/* Native test driver for kernels_c, built by tests/test_kernels_native.py: cross-compiled for
 * aarch64 and run under qemu (NEON against the scalar reference), and built with
 * AddressSanitizer + UBSan and run natively (whatever ISA this CPU runs, against scalar).
 *
 * For every weight type it quantizes random rows with the library's own quantizer, and also fills
 * blocks with random bytes and with every level and scale at its extreme, then checks:
 *   - the chosen ISA's matmul against the scalar one: the same bits for the quantized types,
 *     within a relative tolerance for the float types;
 *   - a matmul over a slice of rows against the same rows of the full matmul (the thread split);
 *   - that the output cells outside the result are untouched.
 * It also runs the ops (RMSNorm, RoPE, attention, SwiGLU, log-softmax) on small inputs with sanity
 * checks, so that the sanitizers see every entry point. Prints one line per failure and a summary;
 * exits 1 on any failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qkernels.h"

static uint64_t rng = 0x9E3779B97F4A7C15u;
static int failures = 0, checks = 0;

static uint32_t next_u32(void) { /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545F4914F6CDD1Du) >> 32);
}
static float uniform(void) { return (next_u32() >> 8) * (1.0f / 16777216.0f); }
static float gauss(void) {
    const float u = uniform() + 1e-7f, v = uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

#define CHECK(cond, ...)                                                                            \
    do {                                                                                            \
        ++checks;                                                                                   \
        if (!(cond)) {                                                                              \
            ++failures;                                                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                             \
            printf(__VA_ARGS__);                                                                    \
            printf("\n");                                                                           \
        }                                                                                           \
    } while (0)

static const struct {
    int type;
    const char *name;
    int halves[2]; /* byte offsets of the fp16 fields in a block; -1 none */
} TYPES[] = {
    {QK_F32, "f32", {-1, -1}},   {QK_F16, "f16", {-1, -1}},   {QK_BF16, "bf16", {-1, -1}},
    {QK_Q4_0, "q4_0", {0, -1}},  {QK_Q4_1, "q4_1", {0, 2}},   {QK_Q5_0, "q5_0", {0, -1}},
    {QK_Q5_1, "q5_1", {0, 2}},   {QK_Q8_0, "q8_0", {0, -1}},  {QK_Q4_K, "q4_k", {0, 2}},
    {QK_Q5_K, "q5_k", {0, 2}},   {QK_Q6_K, "q6_k", {208, -1}},
};

enum { VALID, RANDOM_BYTES, EXTREME };
static const char *MODE[] = {"quantized", "random-bytes", "extreme"};

/* A finite fp16 in about [-1, 1]. */
static uint16_t small_half(void) { return (uint16_t)((next_u32() & 0x8000u) | (0x2000u + next_u32() % 0x1c00u)); }

/* Overwrite the weight bytes for the adversarial modes, keeping every fp16/bf16/f32 finite. */
static void fill_weights(int ti, int mode, uint8_t *w, int64_t bytes) {
    const int type = TYPES[ti].type;
    const int64_t bs = qk_type_size(type);
    if (mode == RANDOM_BYTES) {
        for (int64_t i = 0; i < bytes; ++i) w[i] = (uint8_t)next_u32();
    } else {
        for (int64_t i = 0; i < bytes; ++i) w[i] = 0xff;
        if (type == QK_Q8_0)
            for (int64_t b = 0; b < bytes / bs; ++b) memset(w + b * bs + 2, 0x80, 32); /* -128 */
        if (type == QK_Q6_K)
            for (int64_t b = 0; b < bytes / bs; ++b) memset(w + b * bs + 192, 0x80, 16); /* scales -128 */
    }
    for (int64_t b = 0; b < bytes / bs; ++b) {
        uint8_t *blk = w + b * bs;
        if (type == QK_F32) {
            const float f = mode == EXTREME ? 1.0f : gauss();
            memcpy(blk, &f, 4);
        } else if (type == QK_F16 || type == QK_BF16) {
            const float f = mode == EXTREME ? -1.0f : gauss();
            const uint16_t h = type == QK_F16 ? qk_fp32_to_fp16(f) : qk_fp32_to_bf16(f);
            memcpy(blk, &h, 2);
        } else {
            for (int k = 0; k < 2; ++k) {
                if (TYPES[ti].halves[k] < 0) continue;
                const uint16_t h = mode == EXTREME ? 0x3c00u : small_half();
                memcpy(blk + TYPES[ti].halves[k], &h, 2);
            }
        }
    }
}

static int same_bits(float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, 4);
    memcpy(&ub, &b, 4);
    return ua == ub || (isnan(a) && isnan(b));
}

static void test_matmul(int isa, int ti, int mode, int64_t n_rows, int64_t n_in, int64_t n_tok) {
    const int type = TYPES[ti].type;
    const int is_float = type == QK_F32 || type == QK_F16 || type == QK_BF16;
    const int64_t row_bytes = n_in / qk_block_size(type) * qk_type_size(type);
    float *src = malloc(sizeof(float) * n_rows * n_in), *x = malloc(sizeof(float) * n_tok * n_in);
    uint8_t *w = malloc(row_bytes * n_rows);
    for (int64_t i = 0; i < n_rows * n_in; ++i) src[i] = 0.02f * gauss();
    /* extreme activations: every Q8 level at +-127, all of one sign in most tokens (the int16 sums
     * of the kernels peak there), mixed in every third */
    for (int64_t i = 0; i < n_tok * n_in; ++i) {
        const int64_t t = i / n_in;
        x[i] = mode != EXTREME ? gauss() : t % 3 == 0 ? 1.0f : t % 3 == 1 ? -1.0f : (i % 3 ? 1.0f : -1.0f);
    }
    CHECK(qk_quantize(type, src, n_rows, n_in, NULL, w, row_bytes * n_rows) == row_bytes * n_rows, "quantize %s",
          TYPES[ti].name);
    if (mode != VALID) fill_weights(ti, mode, w, row_bytes * n_rows);

    const int64_t act_bytes = qk_act_bytes(type, n_tok, n_in);
    uint8_t *act = malloc(act_bytes);
    CHECK(qk_quantize_act(type, x, n_tok, n_in, act, act_bytes) == act_bytes, "quantize_act %s", TYPES[ti].name);

    const int64_t scratch_bytes = qk_matmul_scratch_bytes(type, n_in);
    uint8_t *scratch = aligned_alloc(32, (size_t)(scratch_bytes + 31) / 32 * 32);
    const int64_t ld = n_rows + 3; /* columns n_rows..ld-1 must stay untouched */
    float *ref = malloc(sizeof(float) * n_tok * ld), *got = malloc(sizeof(float) * n_tok * ld);
    for (int64_t i = 0; i < n_tok * ld; ++i) ref[i] = got[i] = 12345.0f;
    CHECK(qk_matmul(QK_ISA_SCALAR, type, w, n_rows, row_bytes, act, act_bytes, n_tok, n_in, ref, ld, scratch, scratch_bytes) ==
              n_rows * n_tok,
          "scalar matmul %s", TYPES[ti].name);
    /* the chosen ISA, in two slices of rows as two threads would run it; the second slice with
     * scratch for 8 unpacked rows only, so it runs in several tiles */
    qk_urow_layout L;
    CHECK(qk_urow_layout_for(type, n_in, &L) == 0, "layout %s", TYPES[ti].name);
    const int64_t cut = n_rows / 3;
    CHECK(qk_matmul(isa, type, w, cut, row_bytes, act, act_bytes, n_tok, n_in, got, ld, scratch, scratch_bytes) == cut * n_tok, "matmul %s",
          TYPES[ti].name);
    CHECK(qk_matmul(isa, type, w + cut * row_bytes, n_rows - cut, row_bytes, act, act_bytes, n_tok, n_in, got + cut, ld,
                    scratch, 2 * QK_ROWS * L.size + 31) ==
              (n_rows - cut) * n_tok,
          "matmul %s", TYPES[ti].name);

    int bad = 0;
    for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t r = 0; r < ld; ++r) {
            const float a = ref[t * ld + r], b = got[t * ld + r];
            int ok;
            if (r >= n_rows) {
                ok = a == 12345.0f && b == 12345.0f;
            } else if (!is_float) {
                ok = same_bits(a, b);
            } else { /* FMA and another summation order: relative to sum |w| |x| */
                float mag = 0;
                const float *xt = x + t * n_in;
                for (int64_t j = 0; j < n_in; ++j) {
                    float wj;
                    qk_dequantize(type, w + r * row_bytes + j * qk_type_size(type), 1, 1, &wj, 1);
                    mag += fabsf(wj * xt[j]);
                }
                ok = fabsf(a - b) <= 1e-5f * mag + 1e-30f;
            }
            if (!ok && bad++ < 3)
                printf("  %s %s n_in=%lld tok %lld row %lld: scalar %.9g, isa %d %.9g\n", TYPES[ti].name, MODE[mode],
                       (long long)n_in, (long long)t, (long long)r, a, isa, b);
        }
    }
    CHECK(!bad, "%s %s: %d outputs differ from scalar", TYPES[ti].name, MODE[mode], bad);
    free(src), free(x), free(w), free(act), free(ref), free(got), free(scratch);
}

static void test_statuses(void) {
    float x[256] = {0}, out[4];
    uint8_t w[256], act[4096], scratch[8192];
    CHECK(qk_act_bytes(QK_Q4_K, 4, 255) == QK_ERR_SHAPE, "shape");
    CHECK(qk_act_bytes(12345, 4, 256) == QK_ERR_TYPE, "type");
    CHECK(qk_quantize_act(QK_Q4_K, x, 1, 256, act, 10) == QK_ERR_CAPACITY, "capacity");
    CHECK(qk_quantize_act(QK_Q4_K, NULL, 1, 256, act, sizeof act) == QK_ERR_NULL, "null");
    CHECK(qk_matmul(99, QK_Q4_K, w, 1, 144, act, sizeof act, 1, 256, out, 1, scratch, sizeof scratch) == QK_ERR_ISA, "isa");
    CHECK(qk_matmul(QK_ISA_SCALAR, QK_Q4_K, w, 1, 100, act, sizeof act, 1, 256, out, 1, scratch, sizeof scratch) ==
              QK_ERR_SHAPE, "stride");
    CHECK(qk_matmul(QK_ISA_SCALAR, QK_Q4_K, w, 1, 144, act, 10, 1, 256, out, 1, scratch, sizeof scratch) == QK_ERR_CAPACITY,
          "act bytes");
    CHECK(qk_matmul(QK_ISA_SCALAR, QK_Q4_K, w, 1, 144, act, sizeof act, 1, 256, out, 1, scratch, 100) == QK_ERR_CAPACITY,
          "scratch bytes");
}

static void test_ops(int isa) {
    enum { T = 7, H = 4, KV = 2, D = 16 };
    float q[T * H * D], k[T * KV * D], v[T * KV * D], o[T * H * D], scratch[(D + 8) * 8 + 2 * 8 * 16];
    const int64_t need = qk_attention_scratch_count(T, D);
    CHECK(need > 0 && need <= (int64_t)(sizeof scratch / sizeof scratch[0]), "attention scratch %lld", (long long)need);
    for (int i = 0; i < T * H * D; ++i) q[i] = gauss();
    for (int i = 0; i < T * KV * D; ++i) k[i] = gauss(), v[i] = gauss();
    /* heads in two calls, as two threads */
    CHECK(qk_attention(isa, q, k, v, o, T, T, H, KV, D, KV * D, D, 0, 1, 0.25f, scratch, need) == T, "attention");
    CHECK(qk_attention(isa, q, k, v, o, T, T, H, KV, D, KV * D, D, 1, H, 0.25f, scratch, need) == T * (H - 1), "attention");
    for (int h = 0; h < H; ++h) /* the first query sees only key 0: its output is v[0] of its kv head */
        for (int d = 0; d < D; ++d)
            CHECK(fabsf(o[h * D + d] - v[(h / (H / KV)) * D + d]) < 1e-6f, "attention first row h %d", h);
    /* the scalar reference agrees; and queries may be the last few of a longer cache */
    float o2[T * H * D];
    CHECK(qk_attention(QK_ISA_SCALAR, q, k, v, o2, T, T, H, KV, D, KV * D, D, 0, H, 0.25f, scratch, need) == T * H, "attention");
    for (int i = 0; i < T * H * D; ++i) CHECK(fabsf(o[i] - o2[i]) < 1e-5f, "attention isa %d vs scalar at %d", isa, i);
    CHECK(qk_attention(isa, q, k, v, o, 3, T, H, KV, D, KV * D, D, 0, H, 0.25f, scratch, need) == 3 * H, "attention tail");
    CHECK(qk_attention(QK_ISA_SCALAR, q, k, v, o2, 3, T, H, KV, D, KV * D, D, 0, H, 0.25f, scratch, need) == 3 * H, "attention");
    for (int i = 0; i < 3 * H * D; ++i) CHECK(fabsf(o[i] - o2[i]) < 1e-5f, "attention tail isa %d vs scalar at %d", isa, i);
    CHECK(qk_attention(isa, q, k, v, o, T, T, H, KV, D, KV * D, D, 0, H, 0.25f, scratch, need - 1) == QK_ERR_CAPACITY, "attention scratch");
    CHECK(qk_attention(isa, q, k, v, o, T, T, H, 3, D, 3 * D, D, 0, H, 0.25f, scratch, need) == QK_ERR_SHAPE, "attention groups");

    float x[3 * 40], y[3 * 40], w[40];
    for (int i = 0; i < 3 * 40; ++i) x[i] = gauss();
    for (int i = 0; i < 40; ++i) w[i] = 1.0f;
    CHECK(qk_rms_norm(x, 3, 40, w, 1e-6f, y) == 120, "rms_norm");
    double ss = 0;
    for (int i = 0; i < 40; ++i) ss += (double)y[i] * y[i];
    CHECK(fabs(ss / 40 - 1) < 1e-4, "rms_norm scale %g", ss / 40);
    CHECK(qk_rms_norm(x, 3, 40, NULL, 1e-6f, x) == 120, "rms_norm in place");

    int32_t pos[T];
    for (int t = 0; t < T; ++t) pos[t] = t;
    for (int mode = 0; mode <= 2; mode += 2) {
        float r[T * H * D];
        memcpy(r, q, sizeof r);
        CHECK(qk_rope(r, T, H, D, D, pos, 10000.0f, 1.0f, NULL, mode) == T * H, "rope");
        for (int t = 0; t < T; ++t) { /* a rotation keeps each head's norm */
            double a = 0, b = 0;
            for (int d = 0; d < D; ++d) a += (double)q[t * H * D + d] * q[t * H * D + d], b += (double)r[t * H * D + d] * r[t * H * D + d];
            CHECK(fabs(a - b) < 1e-4 * a, "rope norm t %d mode %d", t, mode);
        }
    }
    CHECK(qk_rope(q, T, H, D, D - 1, pos, 10000.0f, 1.0f, NULL, 0) == QK_ERR_SHAPE, "rope odd dims");

    /* exp-based ops: the same bits on every ISA (n = 37 covers the vector bodies and their tails) */
    float g[37], u[37], s[37], s2[37];
    for (int i = 0; i < 37; ++i) g[i] = 30.0f * gauss(), u[i] = gauss();
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f;
    CHECK(qk_swiglu(isa, g, u, 37, s) == 37, "swiglu");
    CHECK(qk_swiglu(QK_ISA_SCALAR, g, u, 37, s2) == 37, "swiglu");
    for (int i = 0; i < 37; ++i) {
        const float want = g[i] / (1.0f + expf(-g[i])) * u[i];
        CHECK(fabsf(s[i] - want) <= 1e-6f * fabsf(want) + 1e-30f, "swiglu %d: %g != %g", i, s[i], want);
        CHECK(same_bits(s[i], s2[i]), "swiglu isa %d vs scalar at %d: %g != %g", isa, i, s[i], s2[i]);
    }
    float ls[2 * 50], ls2[2 * 50];
    CHECK(qk_log_softmax(isa, x, 2, 50, ls) == 100, "log_softmax");
    CHECK(qk_log_softmax(QK_ISA_SCALAR, x, 2, 50, ls2) == 100, "log_softmax");
    for (int i = 0; i < 100; ++i) CHECK(same_bits(ls[i], ls2[i]), "log_softmax isa %d vs scalar at %d", isa, i);
    double p = 0;
    for (int i = 0; i < 50; ++i) p += exp(ls[i]);
    CHECK(fabs(p - 1) < 1e-5, "log_softmax sums to %g", p);
}

int main(void) {
    const int isa = qk_best_isa();
    const char *isa_name = isa == QK_ISA_AVX2 ? "avx2" : isa == QK_ISA_NEON ? "neon" : "scalar";
    const int64_t shapes[][3] = {{13, 256, 5}, {9, 512, 8}, {6, 1024, 1}, {5, 768, 11}};
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ++ti)
        for (int mode = VALID; mode <= EXTREME; ++mode)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s)
                test_matmul(isa, (int)ti, mode, shapes[s][0], shapes[s][1], shapes[s][2]);
    /* float weights also take rows that are not a multiple of the vector width */
    test_matmul(isa, 0, VALID, 7, 37, 6);
    test_matmul(isa, 1, VALID, 7, 45, 3);
    test_matmul(isa, 2, RANDOM_BYTES, 7, 23, 2);
    test_statuses();
    test_ops(isa);
    printf("isa %s: %d checks, %d failures\n", isa_name, checks, failures);
    return failures ? 1 : 0;
}
