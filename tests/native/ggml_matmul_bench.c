/* llama.cpp's CPU matmul on one shape, for tests/native/bench_matmul.py --vs-llamacpp: the weight
 * in the CPU_REPACK buffer where llama.cpp's loader would put it (Q4_0, Q4_K: x86 repacks them),
 * else a plain CPU buffer; activations float32, as a llama.cpp graph gets them.
 *
 *   ggml_matmul_bench TYPE N_OUT N_IN N_TOK THREADS SECONDS
 * prints "<GFLOP/s by the wall clock> <GFLOP/s per CPU-second x threads>".
 * Built against the llama.cpp tree the oracle tests use; never part of qconvert.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s TYPE N_OUT N_IN N_TOK THREADS SECONDS\n", argv[0]);
        return 2;
    }
    const enum ggml_type type = (enum ggml_type)atoi(argv[1]);
    const int n_out = atoi(argv[2]), n_in = atoi(argv[3]), n_tok = atoi(argv[4]), threads = atoi(argv[5]);
    const double seconds = atof(argv[6]);
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, threads);
    ggml_backend_dev_t dev = ggml_backend_get_device(be);
    ggml_backend_buffer_type_t wbuft = ggml_backend_cpu_buffer_type();
    ggml_backend_dev_get_extra_bufts_t extra = (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(
        ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
    if (extra && (type == GGML_TYPE_Q4_0 || type == GGML_TYPE_Q4_K))
        for (ggml_backend_buffer_type_t *b = extra(dev); b && *b; ++b)
            if (strstr(ggml_backend_buft_name(*b), "REPACK")) wbuft = *b;

    struct ggml_init_params ip = {16 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true};
    struct ggml_context *wctx = ggml_init(ip), *actx = ggml_init(ip);
    struct ggml_tensor *w = ggml_new_tensor_2d(wctx, type, n_in, n_out);
    struct ggml_tensor *x = ggml_new_tensor_2d(actx, GGML_TYPE_F32, n_in, n_tok);
    struct ggml_tensor *y = ggml_mul_mat(actx, w, x);
    struct ggml_cgraph *graph = ggml_new_graph(actx);
    ggml_build_forward_expand(graph, y);
    ggml_backend_buffer_t wb = ggml_backend_alloc_ctx_tensors_from_buft(wctx, wbuft);
    ggml_backend_buffer_set_usage(wb, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_alloc_ctx_tensors(actx, be);

    float *src = malloc(sizeof(float) * (size_t)n_in * n_out);
    for (size_t i = 0; i < (size_t)n_in * n_out; ++i) src[i] = ((rand() % 2001) - 1000) * 2e-5f;
    const size_t wbytes = ggml_row_size(type, n_in) * n_out;
    void *q = malloc(wbytes);
    ggml_quantize_chunk(type, src, q, 0, n_out, n_in, NULL);
    ggml_backend_tensor_set(w, q, 0, wbytes);
    float *xs = malloc(sizeof(float) * (size_t)n_in * n_tok);
    for (size_t i = 0; i < (size_t)n_in * n_tok; ++i) xs[i] = ((rand() % 2001) - 1000) * 1e-3f;
    ggml_backend_tensor_set(x, xs, 0, sizeof(float) * (size_t)n_in * n_tok);

    ggml_backend_graph_compute(be, graph);
    int runs = 0;
    const double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    do {
        ggml_backend_graph_compute(be, graph);
        ++runs;
    } while (now(CLOCK_MONOTONIC) - t0 < seconds);
    const double wall = now(CLOCK_MONOTONIC) - t0, cpu = now(CLOCK_PROCESS_CPUTIME_ID) - c0;
    const double gflop = 2.0 * n_tok * (double)n_in * n_out * runs / 1e9;
    printf("%.2f %.2f\n", gflop / wall, gflop / cpu * threads);
    return 0;
}
