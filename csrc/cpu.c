/*
 * cpu.c: the instruction-set levels, which of them this CPU has, and the weight types' public description.
 *
 * A built package must run on any CPU of its architecture, so this file is compiled for the baseline; each
 * x86 or arm64 level's kernels are compiled separately with that level's flags (kernels_x86.h, kernels_arm.h)
 * and are reached only through their table, here, once the CPU has been asked whether it has the level's
 * instructions. LLM_X86_LEVELS (x86-64) and LLM_ARM_LEVELS (arm64) are defined by the build where it compiled
 * them (gcc or clang); a build for any other target has the scalar level alone.
 */
#include <stddef.h>

#include "kernels.h"

typedef struct {
    const char        *name;    /* as llm_isa_name reports it */
    const llm_kernels *kernels; /* NULL: not in this build */
    int (*cpu_has)(void);       /* whether this CPU (and its OS) runs the level's instructions */
} isa_level;

static int always(void) { return 1; }

#ifdef LLM_X86_LEVELS
#include <cpuid.h>

/* F16C from CPUID leaf 1 (clang's __builtin_cpu_supports does not know "f16c"). */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
}

static int has_avx512vnni(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* The optional x86 level's table, where the compiler could build it (bindings/build_kernel.py defines
   LLM_X86_AVX512BF16). */
#ifdef LLM_X86_AVX512BF16
#define AVX512BF16_KERNELS (&llm_kernels_avx512bf16)
/* AVX512_BF16 from CPUID leaf 7, subleaf 1, EAX bit 5 (some compilers' __builtin_cpu_supports do not know it); the
   OS's saving of the AVX-512 state is what has_avx512vnni's avx512f already asked. */
static int has_avx512bf16(void) {
    unsigned a, b, c, d;
    return has_avx512vnni() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
}
#else
#define AVX512BF16_KERNELS NULL
#define has_avx512bf16 NULL
#endif
#endif

#ifdef LLM_ARM_LEVELS
/* The optional arm64 levels' tables, where the compiler could build them (bindings/build_kernel.py defines
   LLM_ARM_<LEVEL>); neon is always built. */
#ifdef LLM_ARM_DOTPROD
#define DOTPROD_KERNELS (&llm_kernels_dotprod)
#else
#define DOTPROD_KERNELS NULL
#endif
#ifdef LLM_ARM_I8MM
#define I8MM_KERNELS (&llm_kernels_i8mm)
#else
#define I8MM_KERNELS NULL
#endif

/* arm64: Advanced SIMD (NEON) is part of the architecture, so the baseline level needs no question. The
   optional extensions are reported by the OS, which alone knows whether it enabled them: the ELF auxiliary
   vector on Linux (and Android), sysctl on macOS. Elsewhere (e.g. Windows on ARM) only the baseline is used. */
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20) /* asm/hwcap.h, for C libraries whose headers predate it */
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
static int has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
static int has_i8mm(void) { return has_dotprod() && (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0; }
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>

static int sysctl_flag(const char *name) {
    int value = 0;
    size_t len = sizeof value;
    return sysctlbyname(name, &value, &len, NULL, 0) == 0 && value != 0;
}
static int has_dotprod(void) { return sysctl_flag("hw.optional.arm.FEAT_DotProd"); }
static int has_i8mm(void) { return has_dotprod() && sysctl_flag("hw.optional.arm.FEAT_I8MM"); }
#else
static int has_dotprod(void) { return 0; }
static int has_i8mm(void) { return 0; }
#endif
#endif

static const isa_level LEVELS[LLM_ISA_COUNT] = {
    [LLM_ISA_SCALAR] = {"scalar", &llm_kernels_scalar, always},
#ifdef LLM_X86_LEVELS
    [LLM_ISA_AVX2] = {"avx2", &llm_kernels_avx2, has_avx2},
    [LLM_ISA_AVX512VNNI] = {"avx512vnni", &llm_kernels_avx512vnni, has_avx512vnni},
    [LLM_ISA_AVX512BF16] = {"avx512bf16", AVX512BF16_KERNELS, has_avx512bf16},
#else
    [LLM_ISA_AVX2] = {"avx2", NULL, NULL},
    [LLM_ISA_AVX512VNNI] = {"avx512vnni", NULL, NULL},
    [LLM_ISA_AVX512BF16] = {"avx512bf16", NULL, NULL},
#endif
#ifdef LLM_ARM_LEVELS
    [LLM_ISA_NEON] = {"neon", &llm_kernels_neon, always},
    [LLM_ISA_DOTPROD] = {"dotprod", DOTPROD_KERNELS, has_dotprod},
    [LLM_ISA_I8MM] = {"i8mm", I8MM_KERNELS, has_i8mm},
#else
    [LLM_ISA_NEON] = {"neon", NULL, NULL},
    [LLM_ISA_DOTPROD] = {"dotprod", NULL, NULL},
    [LLM_ISA_I8MM] = {"i8mm", NULL, NULL},
#endif
};

/* The levels from the most to the least preferred: llm_isa_best takes the first this CPU has. */
static const int32_t PREFERENCE[] = {LLM_ISA_AVX512BF16, LLM_ISA_AVX512VNNI, LLM_ISA_AVX2,    LLM_ISA_I8MM,
                                     LLM_ISA_DOTPROD,    LLM_ISA_NEON,       LLM_ISA_SCALAR};
_Static_assert(sizeof PREFERENCE / sizeof PREFERENCE[0] == LLM_ISA_COUNT, "every level has a rank");

int32_t llm_isa_supported(int32_t isa) {
    if (isa < 0 || isa >= LLM_ISA_COUNT) return 0;
    const isa_level *level = &LEVELS[isa];
    return level->kernels != NULL && level->cpu_has();
}

int32_t llm_isa_best(void) {
    for (size_t i = 0; i < sizeof PREFERENCE / sizeof PREFERENCE[0]; i++)
        if (llm_isa_supported(PREFERENCE[i])) return PREFERENCE[i];
    return LLM_ISA_SCALAR;
}

const char *llm_isa_name(int32_t isa) { return isa >= 0 && isa < LLM_ISA_COUNT ? LEVELS[isa].name : NULL; }

const llm_kernels *llm_kernels_get(int32_t isa) { return llm_isa_supported(isa) ? LEVELS[isa].kernels : NULL; }

const char *llm_type_name(int32_t type) { return type >= 0 && type < LLM_TYPE_COUNT ? llm_types[type].name : NULL; }

int llm_type_layout(int32_t type, int64_t *block_elems, int64_t *block_bytes) {
    if (type < 0 || type >= LLM_TYPE_COUNT) return LLM_ERR_INVALID;
    if (block_elems) *block_elems = llm_types[type].block_elems;
    if (block_bytes) *block_bytes = (int64_t)llm_types[type].block_bytes;
    return 0;
}

int llm_ffn_activate(int32_t activation, int32_t isa, float *gate, const float *up, int64_t n) {
    const llm_kernels *kernels = llm_kernels_get(isa == LLM_ISA_AUTO ? llm_isa_best() : isa);
    if (!kernels || !gate || !up || n < 0) return LLM_ERR_INVALID;
    if (activation == LLM_FFN_SILU) kernels->vec.swiglu(gate, up, n);
    else if (activation == LLM_FFN_GELU_TANH) kernels->vec.geglu(gate, up, n);
    else return LLM_ERR_INVALID;
    return 0;
}

int llm_dequantize(int32_t type, const void *w, int64_t rows, int64_t cols, float *out) {
    if (type < 0 || type >= LLM_TYPE_COUNT || !llm_types[type].get_row || !w || !out || rows < 0 || cols < 0 ||
        cols % llm_types[type].block_elems != 0 || (llm_types[type].repacked_from >= 0 && rows % LLM_R8 != 0))
        return LLM_ERR_INVALID;
    for (int64_t r = 0; r < rows; r++) llm_types[type].get_row(out + r * cols, w, r, cols);
    return 0;
}
