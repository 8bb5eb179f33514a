/*
 * tests/arm/driver.c: the arm64 kernels against the scalar reference, run under qemu-aarch64 (run_emulated.sh).
 *
 * Linked with the library's C sources, cross-compiled for aarch64. For every ARM level this CPU model has
 * (llm_isa_supported: the run under each -cpu model covers the levels that model reports) and every weight
 * type, it compares llm_matmul at that level with llm_matmul at LLM_ISA_SCALAR, for one token and batches,
 * odd shapes included; then the 8-bit activation quantizer, the feed-forward activations and a whole forward
 * pass of a tiny random model. Tolerances:
 * - the block types (Q8_0 ... IQ4_XS): bit-identical. The NEON kernels compute each block's integer dot
 *   product exactly and accumulate in the reference's order (kernels_arm_int8.c, kernels_arm_kquants.c); the
 *   types not yet ported (Q3_K) run the reference itself.
 * - F32, F16, BF16: |got - ref| <= 2e-5 * sum |w_i x_i| + 1e-30 per output (the kernels sum in another order
 *   with fused multiply-adds; the bound is ~100 ulps of the sum of magnitudes for these shapes, where the
 *   typical difference of two orders is a few ulps).
 * - every type, every level: token t of a batch is bit-identical to the same token alone (issue 16).
 * - the forward pass: quantized weights bit-identical logits; float weights max |diff| <= 1e-4 * max |logit|
 *   and the same greedy tokens.
 * Prints one line per failure and a summary; the exit status is the number of failures (capped at 100).
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "llmrun.h"

static const int32_t ARM_LEVELS[] = {LLM_ISA_NEON, LLM_ISA_DOTPROD, LLM_ISA_I8MM};
enum { N_ARM = sizeof ARM_LEVELS / sizeof ARM_LEVELS[0] };

typedef struct {
    int failures, checks;
} tally;

static void fail(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(tally *t, const char *fmt, ...) {
    t->failures++;
    va_list args;
    va_start(args, fmt);
    printf("FAIL ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
}

/* xorshift64*: the same inputs on every run. */
static uint64_t next_u64(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static float uniform(uint64_t *s) { return (float)((next_u64(s) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f; }

static void fill(float *x, int64_t n, uint64_t *s) {
    for (int64_t i = 0; i < n; i++) x[i] = uniform(s);
}

/* f32 to IEEE half, truncating (any half is a valid weight; these only need to be finite). */
static uint16_t to_f16(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    uint32_t sign = (b >> 16) & 0x8000;
    int32_t exp = (int32_t)((b >> 23) & 0xff) - 127 + 15;
    if (exp <= 0) return (uint16_t)sign;
    if (exp >= 31) return (uint16_t)(sign | 0x7bff);
    return (uint16_t)(sign | (uint32_t)exp << 10 | ((b >> 13) & 0x3ff));
}

static uint16_t to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (uint16_t)(b >> 16);
}

/* rows x cols weights of `type` from the floats w; NULL on failure. */
static void *make_weights(int32_t type, const float *w, int64_t rows, int64_t cols) {
    int64_t be, bb;
    if (llm_type_layout(type, &be, &bb) != 0) return NULL;
    size_t bytes = (size_t)(rows * cols / be * bb);
    uint8_t *out = malloc(bytes ? bytes : 1);
    if (!out) return NULL;
    if (type == LLM_F32) memcpy(out, w, bytes);
    else if (type == LLM_F16 || type == LLM_BF16)
        for (int64_t i = 0; i < rows * cols; i++) {
            uint16_t h = type == LLM_F16 ? to_f16(w[i]) : to_bf16(w[i]);
            memcpy(out + 2 * i, &h, 2);
        }
    else if (llm_types[type].repacked_from >= 0) { /* a repacked form: the source type's blocks, repacked */
        uint8_t *source = make_weights(llm_types[type].repacked_from, w, rows, cols);
        int32_t got_type;
        int rc = source ? llm_repack(llm_types[type].repacked_from, source, rows, cols, out, &got_type) : -1;
        free(source);
        if (rc != 0 || got_type != type) {
            free(out);
            return NULL;
        }
    } else if (llm_quantize(type, w, rows, cols, out) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static int is_float(int32_t type) { return type == LLM_F32 || type == LLM_F16 || type == LLM_BF16; }

/* One (type, rows, cols, n) case at every ARM level this CPU has. */
static void check_product(tally *t, int32_t type, int64_t rows, int64_t cols, int64_t n, uint64_t *seed) {
    float *wf = malloc(sizeof(float) * (size_t)(rows * cols)), *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *deq = malloc(sizeof(float) * (size_t)(rows * cols));
    float *ref = malloc(sizeof(float) * (size_t)(n * rows)), *got = malloc(sizeof(float) * (size_t)(n * rows));
    float *one = malloc(sizeof(float) * (size_t)rows);
    void *w = NULL;
    const char *tn = llm_type_name(type);
    if (!wf || !x || !deq || !ref || !got || !one) goto oom;
    fill(wf, rows * cols, seed);
    fill(x, n * cols, seed);
    if (cols >= 64) memset(x, 0, 32 * sizeof(float)); /* an all-zero activation block (d = 0) */
    if (!(w = make_weights(type, wf, rows, cols)) || llm_dequantize(type, w, rows, cols, deq) != 0) goto oom;
    if (llm_matmul(type, LLM_ISA_SCALAR, w, rows, cols, x, n, ref) != 0) {
        fail(t, "%s scalar llm_matmul refused rows=%ld cols=%ld n=%ld", tn, (long)rows, (long)cols, (long)n);
        goto done;
    }
    for (int l = 0; l < N_ARM; l++) {
        int32_t isa = ARM_LEVELS[l];
        if (!llm_isa_supported(isa)) continue;
        const char *in = llm_isa_name(isa);
        t->checks++;
        if (llm_matmul(type, isa, w, rows, cols, x, n, got) != 0) {
            fail(t, "%s %s llm_matmul refused rows=%ld cols=%ld n=%ld", tn, in, (long)rows, (long)cols, (long)n);
            continue;
        }
        for (int64_t k = 0; k < n; k++)
            for (int64_t r = 0; r < rows; r++) {
                float g = got[k * rows + r], e = ref[k * rows + r];
                int ok;
                if (is_float(type)) {
                    double mag = 0;
                    for (int64_t i = 0; i < cols; i++) mag += fabs((double)deq[r * cols + i] * x[k * cols + i]);
                    ok = fabs((double)g - e) <= 2e-5 * mag + 1e-30;
                } else {
                    ok = memcmp(&g, &e, sizeof g) == 0;
                }
                if (!ok) {
                    fail(t, "%s %s vs scalar: rows=%ld cols=%ld n=%ld token %ld row %ld: %.9g vs %.9g", tn, in,
                         (long)rows, (long)cols, (long)n, (long)k, (long)r, (double)g, (double)e);
                    goto next_level;
                }
            }
        for (int64_t k = 0; n > 1 && k < n; k++) { /* a token's result does not depend on its batch */
            if (llm_matmul(type, isa, w, rows, cols, x + k * cols, 1, one) != 0 ||
                memcmp(one, got + k * rows, sizeof(float) * (size_t)rows) != 0) {
                fail(t, "%s %s batch of %ld differs from one token: token %ld rows=%ld cols=%ld", tn, in, (long)n,
                     (long)k, (long)rows, (long)cols);
                break;
            }
        }
    next_level:;
    }
    goto done;
oom:
    fail(t, "%s out of memory or bad type rows=%ld cols=%ld n=%ld", tn, (long)rows, (long)cols, (long)n);
done:
    free(wf), free(x), free(deq), free(ref), free(got), free(one), free(w);
}

static void check_products(tally *t) {
    static const int64_t rows_list[] = {1, 5, 7, 13}, n_list[] = {1, 2, 3, 6, 8, 9}; /* i8mm: 4+2+1 rows, 4+2 tokens */
    static const int64_t float_cols[] = {7, 37, 100}, block_cols[] = {32, 96, 288}, k_cols[] = {256, 512};
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int32_t type = 0; type < LLM_TYPE_COUNT; type++) {
        int64_t be;
        llm_type_layout(type, &be, NULL);
        const int64_t *cols = be == 1 ? float_cols : be == QK ? block_cols : k_cols;
        int n_cols = be == QK_K ? 2 : 3;
        for (int c = 0; c < n_cols; c++)
            for (size_t r = 0; r < sizeof rows_list / sizeof rows_list[0]; r++)
                for (size_t k = 0; k < sizeof n_list / sizeof n_list[0]; k++)
                    check_product(t, type, llm_types[type].repacked_from >= 0 ? (rows_list[r] + 7) / 8 * 8 /* whole
                                  groups of 8 rows */ : rows_list[r], cols[c], n_list[k], &seed);
    }
}

/* The 8-bit activation quantizers of every level against the scalar one, byte for byte (including the
   f32 scales and sums), on blocks of every kind: ordinary, all zero, tiny, with an inf, with a NaN. */
static void check_quantizers(tally *t) {
    enum { COLS = 768 }; /* three Q8K blocks: finite, with an inf, with a NaN */
    float x[COLS];
    uint64_t seed = 42;
    fill(x, COLS, &seed);
    memset(x + 32, 0, 32 * sizeof(float));
    for (int i = 64; i < 96; i++) x[i] *= 1e-38f;
    x[300] = INFINITY;
    x[600] = NAN;
    for (int i = 160; i < 192; i++) x[i] = (float)(i - 176) * 0.5f; /* exact halves: rounding ties */
    const llm_kernels *scalar = llm_kernels_get(LLM_ISA_SCALAR);
    for (int32_t act = LLM_ACT_Q8; act < LLM_ACT_COUNT; act++) {
        size_t bytes = llm_act_bytes(act, COLS);
        uint8_t *ref = calloc(1, bytes), *got = calloc(1, bytes);
        if (!ref || !got) {
            fail(t, "quantizer: out of memory");
            free(ref), free(got);
            return;
        }
        scalar->quantize[act](ref, x, COLS);
        for (int l = 0; l < N_ARM; l++) {
            const llm_kernels *k = llm_kernels_get(ARM_LEVELS[l]);
            if (!k) continue;
            t->checks++;
            memset(got, 0xa5, bytes);
            k->quantize[act](got, x, COLS);
            if (memcmp(ref, got, bytes) != 0)
                fail(t, "quantizer %s act %s differs from scalar", llm_isa_name(ARM_LEVELS[l]),
                     act == LLM_ACT_Q8 ? "q8" : "q8k");
        }
        free(ref), free(got);
    }
}

static void check_activations(tally *t) {
    enum { N = 203 };
    float gate[N], up[N], ref[N], got[N];
    uint64_t seed = 7;
    fill(gate, N, &seed);
    fill(up, N, &seed);
    for (int32_t act = LLM_FFN_SILU; act <= LLM_FFN_GELU_TANH; act++) {
        memcpy(ref, gate, sizeof ref);
        llm_ffn_activate(act, LLM_ISA_SCALAR, ref, up, N);
        for (int l = 0; l < N_ARM; l++) {
            if (!llm_isa_supported(ARM_LEVELS[l])) continue;
            t->checks++;
            memcpy(got, gate, sizeof got);
            if (llm_ffn_activate(act, ARM_LEVELS[l], got, up, N) != 0 || memcmp(ref, got, sizeof got) != 0)
                fail(t, "ffn activation %s %s differs from scalar", llm_isa_name(ARM_LEVELS[l]),
                     act == LLM_FFN_SILU ? "silu" : "gelu");
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* A tiny random model: the forward pass at each level against the scalar level. */

/* every matrix's cols a multiple of 256, so that every weight type fits */
enum { DIM = 256, HIDDEN = 512, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 64, VOCAB = 96, PROMPT = 7, GEN = 4 };

typedef struct {
    void *mem[LAYERS * 7 + 1];
    int n_mem;
    float norms[2 * LAYERS + 1][DIM];
    float *embd;
    llm_layer layers[LAYERS];
    llm_weights w;
} tiny_model;

static llm_tensor random_matrix(tiny_model *m, int32_t type, int64_t rows, int64_t cols, uint64_t *seed, int *ok) {
    float *f = malloc(sizeof(float) * (size_t)(rows * cols));
    void *data = NULL;
    if (f) {
        fill(f, rows * cols, seed);
        for (int64_t i = 0; i < rows * cols; i++) f[i] *= 0.3f;
        data = make_weights(type, f, rows, cols);
    }
    free(f);
    if (!data) *ok = 0;
    else m->mem[m->n_mem++] = data;
    return (llm_tensor){data, type, rows, cols};
}

static int tiny_model_init(tiny_model *m, int32_t type) {
    memset(m, 0, sizeof *m);
    uint64_t seed = 1234;
    int ok = 1;
    for (int i = 0; i < 2 * LAYERS + 1; i++)
        for (int j = 0; j < DIM; j++) m->norms[i][j] = 1.0f + 0.1f * uniform(&seed);
    m->embd = malloc(sizeof(float) * VOCAB * DIM);
    if (!m->embd) return 0;
    fill(m->embd, VOCAB * DIM, &seed);
    for (int l = 0; l < LAYERS; l++) {
        llm_layer *y = &m->layers[l];
        y->attn_norm = (llm_tensor){m->norms[2 * l], LLM_F32, 1, DIM};
        y->ffn_norm = (llm_tensor){m->norms[2 * l + 1], LLM_F32, 1, DIM};
        y->wq = random_matrix(m, type, HEADS * HEAD_DIM, DIM, &seed, &ok);
        y->wk = random_matrix(m, type, KV_HEADS * HEAD_DIM, DIM, &seed, &ok);
        y->wv = random_matrix(m, type, KV_HEADS * HEAD_DIM, DIM, &seed, &ok);
        y->wo = random_matrix(m, type, DIM, HEADS * HEAD_DIM, &seed, &ok);
        y->w_gate = random_matrix(m, type, HIDDEN, DIM, &seed, &ok);
        y->w_down = random_matrix(m, type, DIM, HIDDEN, &seed, &ok);
        y->w_up = random_matrix(m, type, HIDDEN, DIM, &seed, &ok);
    }
    m->w = (llm_weights){.token_embd = {m->embd, LLM_F32, VOCAB, DIM},
                         .output_norm = {m->norms[2 * LAYERS], LLM_F32, 1, DIM},
                         .output = random_matrix(m, type, VOCAB, DIM, &seed, &ok),
                         .layers = m->layers};
    return ok;
}

static void tiny_model_free(tiny_model *m) {
    for (int i = 0; i < m->n_mem; i++) free(m->mem[i]);
    free(m->embd);
}

/* Prompt then greedy decoding at one level: all logits of the prompt and of each generated token. */
static int run_model(const tiny_model *m, int32_t isa, float logits[PROMPT + GEN][VOCAB],
                     int32_t tokens[PROMPT + GEN]) {
    llm_config cfg = {.dim = DIM, .hidden_dim = HIDDEN, .n_layers = LAYERS, .n_heads = HEADS, .n_kv_heads = KV_HEADS,
                      .head_dim = HEAD_DIM, .vocab_size = VOCAB, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                      .rope_style = LLM_ROPE_INTERLEAVED};
    llm_ctx_params sizes = {.n_ctx = 64, .n_seq = 1, .n_batch = 16, .n_threads = 2, .isa = isa};
    char err[256];
    llm_ctx *ctx;
    if (llm_create(&cfg, &m->w, &sizes, &ctx, err, sizeof err) != 0) {
        printf("llm_create (%s): %s\n", llm_isa_name(isa), err);
        return -1;
    }
    for (int i = 0; i < PROMPT; i++) tokens[i] = (i * 37 + 5) % VOCAB;
    int rc = llm_forward(ctx, tokens, PROMPT, 0, &logits[0][0], 1);
    for (int g = 0; rc == 0 && g < GEN; g++) {
        const float *last = logits[PROMPT + g - 1];
        int32_t best = 0;
        for (int32_t v = 1; v < VOCAB; v++)
            if (last[v] > last[best]) best = v;
        tokens[PROMPT + g] = best;
        rc = llm_forward(ctx, &tokens[PROMPT + g], 1, PROMPT + g, logits[PROMPT + g], 0);
    }
    if (rc != 0) printf("llm_forward (%s): %s\n", llm_isa_name(isa), llm_last_error(ctx));
    llm_free(ctx);
    return rc;
}

static void check_forward(tally *t) {
    static float ref[PROMPT + GEN][VOCAB], got[PROMPT + GEN][VOCAB];
    int32_t ref_tokens[PROMPT + GEN], got_tokens[PROMPT + GEN];
    for (int32_t type = 0; type < LLM_TYPE_COUNT; type++) {
        const char *tn = llm_type_name(type);
        tiny_model m;
        if (!tiny_model_init(&m, type)) {
            fail(t, "forward %s: model out of memory", tn);
            tiny_model_free(&m);
            continue;
        }
        if (run_model(&m, LLM_ISA_SCALAR, ref, ref_tokens) != 0) {
            fail(t, "forward %s scalar failed", tn);
            tiny_model_free(&m);
            continue;
        }
        for (int l = 0; l < N_ARM; l++) {
            int32_t isa = ARM_LEVELS[l];
            if (!llm_isa_supported(isa)) continue;
            const char *in = llm_isa_name(isa);
            t->checks++;
            if (run_model(&m, isa, got, got_tokens) != 0) {
                fail(t, "forward %s %s failed", tn, in);
                continue;
            }
            double maxdiff = 0, maxabs = 0;
            for (int p = 0; p < PROMPT + GEN; p++)
                for (int v = 0; v < VOCAB; v++) {
                    /* plain comparisons, not fmax: gcc 12's vectorizer crashes (ICE) on the fmax reduction */
                    double diff = fabs((double)got[p][v] - ref[p][v]), mag = fabs((double)ref[p][v]);
                    if (diff > maxdiff || diff != diff) maxdiff = diff;
                    if (mag > maxabs) maxabs = mag;
                }
            int same_tokens = memcmp(ref_tokens, got_tokens, sizeof ref_tokens) == 0;
            int ok = is_float(type) ? maxdiff <= 1e-4 * maxabs : memcmp(ref, got, sizeof ref) == 0;
            if (!ok || !same_tokens)
                fail(t, "forward %s %s: max |logit diff| %.3g (max |logit| %.3g), greedy tokens %s", tn, in, maxdiff,
                     maxabs, same_tokens ? "identical" : "differ");
            else
                printf("forward %-6s %-8s max |logit diff| %.3g (max |logit| %.3g), greedy tokens identical\n", tn,
                       in, maxdiff, maxabs);
        }
        tiny_model_free(&m);
    }
}

/* argv[1], if given: the level llm_isa_best must pick on this CPU (model), which checks its feature detection. */
int main(int argc, char **argv) {
    tally t = {0, 0};
    printf("levels this CPU has:");
    for (int32_t isa = 0; isa < LLM_ISA_COUNT; isa++)
        if (llm_isa_supported(isa)) printf(" %s", llm_isa_name(isa));
    printf(" (best: %s)\n", llm_isa_name(llm_isa_best()));
    if (!llm_isa_supported(LLM_ISA_NEON)) {
        printf("FAIL the neon level is missing from this build\n");
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], llm_isa_name(llm_isa_best())) != 0)
        fail(&t, "this CPU's best level is %s, expected %s", llm_isa_name(llm_isa_best()), argv[1]);
    check_quantizers(&t);
    check_activations(&t);
    check_products(&t);
    check_forward(&t);
    printf("%d checks, %d failures\n", t.checks, t.failures);
    return t.failures > 100 ? 100 : t.failures;
}
