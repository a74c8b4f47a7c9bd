/* Scale searches shared by the quantizers (reference notes 2.4-2.7).
 *
 * Bit-exact code: every sum below is accumulated sequentially in float32 in ggml's element order,
 * products are evaluated left to right ((w*l)*x, not w*(l*x)), and integer operands are converted
 * to float before the operation. Do not reorder, vectorise across elements, or fuse.
 */
#include <math.h>

#include "qkernels.h"

#define GROUP_MAX_EPS 1e-15f

/* Symmetric signed search (ggml make_qx_quants, rmse_type 1). L gets l + nmax in 0..2*nmax-1.
 * Weights: qw[i], or x[i]^2 when qw is NULL. Returns the scale (sign of the largest |x|). */
float qk_make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }  /* strict: the first of equal |x| wins */
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = qk_nearest_int(iscale * x[i]);
        l = QK_MAX(-nmax, QK_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = qk_nearest_int(iscale * x[i]);
            l = QK_MAX(-nmax, QK_MIN(nmax - 1, l));
            const float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                const int l = qk_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + QK_MAX(-nmax, QK_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Asymmetric (scale, min) search with weighted squared error: ggml make_qkx2_quants and
 * make_qkx3_quants, which agree whenever weights are given (their only other difference, the
 * degenerate test max == min vs max <= min, cannot differ: min <= x[0] <= max). n <= 32.
 * L gets 0..nmax; *the_min gets -min (>= 0, possibly -0.0). Returns the scale.
 * Note: `min` is updated when a trial wins, and later trials start from the new value. */
float qk_make_qkx_quants(int n, int nmax, const float *x, const float *w, uint8_t *L,
                         float *the_min, float rmin, float rdelta, int nstep) {
    uint8_t Laux[32];
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = qk_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)QK_MAX(0, QK_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += w[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = qk_nearest_int(iscale * (x[i] - min));
            l = QK_MAX(0, QK_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Quantize n non-negative values (sub-block scales or mins) to 0..nmax with a weighted MSE
 * search and coordinate descent (ggml make_qp_quants). L is uint8 as in ggml: a negative l
 * wraps, and the descent then reads the wrapped value. Returns the scale. */
float qk_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = QK_MAX(max, x[i]);
    if (max < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)qk_nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        const float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * is + nmax) / max;
        const float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            const int l = QK_MIN(nmax, qk_nearest_int(iscale_is * x[i]));
            const float diff = x[i] - scale_is * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = QK_MIN(nmax, qk_nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                const int new_l = QK_MIN(nmax, qk_nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* ---- four groups at a time ---------------------------------------------------------------
 * The _4 functions run four independent groups (x, w, L back to back, n values each) through the
 * scalar searches above. With GCC/Clang vector extensions, lane g of every vector runs exactly
 * the scalar operations on group g, in the same order (IEEE float32 vector arithmetic rounds like
 * scalar arithmetic), so the results are identical; branches become per-lane selects, and a lane
 * the scalar code would have left early computes values that are then discarded.
 * -DQK_NO_LANES builds the plain loops instead (to check one against the other). */
#if !defined(QK_NO_LANES) && defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9)

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f splat(float f) { return (v4f){f, f, f, f}; }
static inline v4i splat_i(int32_t i) { return (v4i){i, i, i, i}; }
static inline v4f sel(v4i mask, v4f a, v4f b) { return (v4f)((mask & (v4i)a) | (~mask & (v4i)b)); }
static inline v4i sel_i(v4i mask, v4i a, v4i b) { return (mask & a) | (~mask & b); }
static inline v4f to_float(v4i i) { return __builtin_convertvector(i, v4f); }

static inline v4i nearest_int_v(v4f f) {
    const v4f v = f + splat(12582912.0f);
    return ((v4i)v & splat_i(0x7fffff)) - splat_i(0x400000);
}

static inline v4i clamp_v(v4i l, int lo, int hi) {
    l = sel_i(l > splat_i(hi), splat_i(hi), l);
    return sel_i(l < splat_i(lo), splat_i(lo), l);
}

/* Transpose 4 groups of n (<= 32) into lanes: V[i][g] = p[n*g + i]. */
static void load_lanes(int n, const float *p, v4f *V) {
    for (int i = 0; i < n; ++i)
        for (int g = 0; g < 4; ++g) V[i][g] = p[n * g + i];
}

void qk_make_qkx_quants_4(int n, int nmax, const float *x, const float *w, uint8_t *L,
                          float *scales, float *the_mins, float rmin, float rdelta, int nstep) {
    v4f X[32] = {{0}}, W[32] = {{0}};
    v4i Lbest[32], Laux[32];
    load_lanes(n, x, X);
    load_lanes(n, w, W);
    v4f min = X[0], max = X[0];
    v4f sum_w = W[0];
    v4f sum_x = sum_w * X[0];
    for (int i = 1; i < n; ++i) {
        min = sel(X[i] < min, X[i], min);
        max = sel(X[i] > max, X[i], max);
        sum_w += W[i];
        sum_x += W[i] * X[i];
    }
    min = sel(min > splat(0), splat(0), min);
    const v4i flat = max == min;
    const v4f flat_min = min;
    v4f iscale = splat((float)nmax) / (max - min);
    v4f scale = splat(1) / iscale;
    v4f best_error = splat(0);
    for (int i = 0; i < n; ++i) {
        Lbest[i] = clamp_v(nearest_int_v(iscale * (X[i] - min)), 0, nmax);
        v4f diff = scale * to_float(Lbest[i]) + min - X[i];
        diff = diff * diff;
        best_error += W[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = splat(rmin + rdelta * is + nmax) / (max - min);
        v4f sum_l = splat(0), sum_l2 = splat(0), sum_xl = splat(0);
        for (int i = 0; i < n; ++i) {
            Laux[i] = clamp_v(nearest_int_v(iscale * (X[i] - min)), 0, nmax);
            const v4f l = to_float(Laux[i]);
            sum_l += W[i] * l;
            sum_l2 += W[i] * l * l;
            sum_xl += W[i] * l * X[i];
        }
        const v4f D = sum_w * sum_l2 - sum_l * sum_l;
        v4f this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        v4f this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        const v4i min_pos = this_min > splat(0);
        this_min = sel(min_pos, splat(0), this_min);
        this_scale = sel(min_pos, sum_xl / sum_l2, this_scale);
        v4f cur_error = splat(0);
        for (int i = 0; i < n; ++i) {
            v4f diff = this_scale * to_float(Laux[i]) + this_min - X[i];
            diff = diff * diff;
            cur_error += W[i] * diff;
        }
        const v4i win = (D > splat(0)) & (cur_error < best_error);
        for (int i = 0; i < n; ++i) Lbest[i] = sel_i(win, Laux[i], Lbest[i]);
        best_error = sel(win, cur_error, best_error);
        scale = sel(win, this_scale, scale);
        min = sel(win, this_min, min);
    }
    for (int g = 0; g < 4; ++g) {
        for (int i = 0; i < n; ++i) L[n * g + i] = flat[g] ? 0 : (uint8_t)Lbest[i][g];
        scales[g] = flat[g] ? 0.f : scale[g];
        the_mins[g] = flat[g] ? -flat_min[g] : -min[g];
    }
}

void qk_make_qx_quants_4(int n, int nmax, const float *x, int8_t *L, const float *qw, float *scales) {
    v4f X[32] = {{0}}, W[32] = {{0}};
    v4i Lbest[32], Laux[32];
    load_lanes(n, x, X);
    if (qw) load_lanes(n, qw, W);
    else for (int i = 0; i < n; ++i) W[i] = X[i] * X[i];
    v4f max = splat(0), amax = splat(0);
    for (int i = 0; i < n; ++i) {
        const v4f ax = (v4f)((v4i)X[i] & splat_i(0x7fffffff));
        const v4i bigger = ax > amax;
        amax = sel(bigger, ax, amax);
        max = sel(bigger, X[i], max);
    }
    const v4i zero = amax < splat(GROUP_MAX_EPS);
    v4f iscale = splat((float)-nmax) / max;
    v4f sumlx = splat(0), suml2 = splat(0);
    for (int i = 0; i < n; ++i) {
        Lbest[i] = clamp_v(nearest_int_v(iscale * X[i]), -nmax, nmax - 1);
        const v4f l = to_float(Lbest[i]);
        sumlx += W[i] * X[i] * l;
        suml2 += W[i] * l * l;
    }
    v4f scale = sel(suml2 != splat(0), sumlx / suml2, splat(0));
    v4f best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = splat(-(nmax + 0.1f * is)) / max;
        sumlx = suml2 = splat(0);
        for (int i = 0; i < n; ++i) {
            Laux[i] = clamp_v(nearest_int_v(iscale * X[i]), -nmax, nmax - 1);
            const v4f l = to_float(Laux[i]);
            sumlx += W[i] * X[i] * l;
            suml2 += W[i] * l * l;
        }
        const v4i win = (suml2 > splat(0)) & (sumlx * sumlx > best * suml2);
        for (int i = 0; i < n; ++i) Lbest[i] = sel_i(win, Laux[i], Lbest[i]);
        scale = sel(win, sumlx / suml2, scale);
        best = sel(win, scale * sumlx, best);
    }
    for (int g = 0; g < 4; ++g) {
        for (int i = 0; i < n; ++i) L[n * g + i] = zero[g] ? 0 : (int8_t)(Lbest[i][g] + nmax);
        scales[g] = zero[g] ? 0.f : scale[g];
    }
}

#else

void qk_make_qkx_quants_4(int n, int nmax, const float *x, const float *w, uint8_t *L,
                          float *scales, float *the_mins, float rmin, float rdelta, int nstep) {
    for (int g = 0; g < 4; ++g)
        scales[g] = qk_make_qkx_quants(n, nmax, x + n * g, w + n * g, L + n * g, the_mins + g,
                                       rmin, rdelta, nstep);
}

void qk_make_qx_quants_4(int n, int nmax, const float *x, int8_t *L, const float *qw, float *scales) {
    for (int g = 0; g < 4; ++g)
        scales[g] = qk_make_qx_quants(n, nmax, x + n * g, L + n * g, qw ? qw + n * g : NULL);
}

#endif
