/*
 * Bit-packed binary convolution for compactnets' packed XNOR-Net runner (loaded with ctypes; no torch headers).
 *
 * Layout. Activations are channels-last and packed along channels: one pixel is `pix_words` uint64 words, group g of
 * a convolution starts at word g * group_words, and bit b of word w of a group is channel 64 * w + b of that group.
 * A set bit means -1, a clear bit +1; bits past the group's channel count are clear in activations and weights, so
 * they never count. Weights are stored for the kernels as [group][tap * group_words + word][out channel of the group,
 * padded to a multiple of 8]: eight (AVX-512) or four (AVX2) output channels share one vector and the activation word
 * is broadcast, so no horizontal sums are needed.
 *
 * Arithmetic. For +-1 vectors, dot = K - 2 * popcount(a xor w). The float model zero-pads sign(x): padded taps add 0.
 * Here a padded tap reads an all-zero word (+1), and the tap's contribution, sum_c w[o, c, tap] = Cin_g - 2 *
 * popcount(w[o, tap]), precomputed per filter and tap (`correction`), is subtracted at border pixels only, as Larq
 * Compute Engine does. Counts are exact integers, so every instruction-set path gives the same bits and floats.
 *
 * Outputs. Either floats, alpha_j * dot[order_j] + bias_j (optionally ReLU), channels-last; or the next layer's
 * packed bits: the bit of channel j is set when NOT (sign_j * dot[order_j] >= threshold_j), where the exporter has
 * folded bias, ReLU, the next block's batch norm and the sign into (sign_j, threshold_j), and channel shuffles into
 * order_j (identity when there is no order).
 *
 * Dispatch. Each instruction-set path is a function compiled with __attribute__((target)) and chosen at run time
 * with __builtin_cpu_supports; nothing is built for the compiling machine's own CPU.
 */
#define _GNU_SOURCE /* syscall, clock_gettime under -std=c11 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <math.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define CN_X86 1
#include <immintrin.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
/* AMX intrinsics need GCC 11 / clang 12; older compilers build everything else. */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define CN_AMX 1
#endif
#endif

/* Plain loops (packing, pooling) compiled for AVX-512, AVX2 and baseline x86-64, the best picked when the library
 * loads (an ifunc): still nothing built for the compiling machine's own CPU. */
#if defined(CN_X86) && defined(__linux__) && !defined(__clang__)
#define CN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CN_CLONES
#endif

/* CN_ISA_AMX: int8 AMX tiles on +-1 bytes (CN_FMT_INT8 input) instead of xor + popcount on bits. */
enum { CN_ISA_AUTO = 0, CN_ISA_PORTABLE = 1, CN_ISA_AVX2 = 2, CN_ISA_AVX512 = 3, CN_ISA_AMX = 4 };
/* CN_OUT_INT8: the next layer's input as +-1 bytes (for an AMX layer), inside a zero border of out_pad_h/w. */
enum { CN_OUT_FLOAT = 0, CN_OUT_BITS = 1, CN_OUT_INT8 = 2 };
#define CN_LANES 8   /* output channels are padded to a multiple of this in the weight layout */
#define CN_BLOCK 32  /* output channels accumulated together */

typedef struct {
    const uint64_t *input; /* [N, H, W, in_pix_words] */
    int64_t batch, height, width, in_pix_words;
    int64_t groups, group_words, in_channels_per_group;
    const uint64_t *weight;    /* [groups, taps * group_words, out_pad] */
    const int32_t *correction; /* [groups, taps, out_per_group] */
    int64_t out_per_group, out_pad;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_height, out_width;
    int64_t mode;
    /* CN_OUT_FLOAT */
    const float *alpha, *bias;
    int64_t relu;
    float *out_float; /* [N, Ho, Wo, groups * out_per_group] */
    /* CN_OUT_BITS */
    const int32_t *threshold;
    const int32_t *threshold_sign; /* +-1 */
    const int32_t *out_order; /* bit j takes conv channel out_order[j] (a channel shuffle); NULL = identity */
    uint64_t *out_bits; /* [N, Ho, Wo, out_pix_words] */
    int64_t out_pix_words, out_groups, out_channels_per_group, out_group_words;
    /* CN_OUT_INT8: [N, Ho + 2 * out_pad_h, Wo + 2 * out_pad_w, groups * out_per_group], border left untouched */
    int8_t *out_int8;
    int64_t out_pad_h, out_pad_w;
    /* CN_ISA_AMX: `input` is int8 [N, H + 2 * pad_h, W + 2 * pad_w, groups * in_channels_per_group] with a zero
     * border (the float model's zero padding of sign(x)) and (16 * stride_w + 1) * channels + 64 readable bytes
     * after it (the rows of the last tile past the last pixel); `weight` holds int8 tiles [group][16 output
     * channels][tap][64 input channels] (binary_kernel.KernelWeights.amx_tiles). */
    /* Byte lengths of the buffers above from each pointer on, checked by cn_bconv (cn_bconv_ok). */
    int64_t input_bytes, weight_bytes, correction_bytes, alpha_bytes, bias_bytes, threshold_bytes, threshold_sign_bytes,
        out_order_bytes, out_bytes;
} cn_bconv_args;

typedef void (*block_fn)(const uint64_t *const *taps, int64_t ntaps, int64_t words, const uint64_t *weight,
                         int64_t out_pad, int64_t nvec, int32_t *acc);

/* ---------------------------------------------------------------- thread pool ------------------------------------ */

/* Persistent workers: starting threads per call cost tens of microseconds, as much as a whole small layer. A worker
 * spins for CN_SPIN_NS after a job (the next layer's call comes within microseconds), then sleeps on a condition
 * variable. One parallel call runs at a time. `job` publishes a call as (sequence << 16 | count) in one atomic
 * word, so a worker learns whether it takes part without reading fields that the next call may be rewriting.
 * The shares are claimed, not assigned: the caller and the workers take the next unclaimed share from `claim`
 * (sequence << 16 | next share) until none is left, so a worker that wakes late, or that the OS does not run
 * because another pool spins on the other core (torch's OpenMP spins for milliseconds after each op), costs
 * nothing: the caller runs that share instead. A worker of an earlier call cannot claim one (its sequence is old). */
typedef void (*cn_task_fn)(void *ctx, int index, int count);
#define CN_MAX_WORKERS 256
#define CN_SPIN_NS 100000L

static struct {
    pthread_mutex_t call, lock;
    pthread_cond_t wake;
    int started;
    atomic_long job, claim;
    atomic_int done; /* shares of this call finished */
    cn_task_fn fn;
    void *ctx;
    long first_job[CN_MAX_WORKERS];
} pool = {.call = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void cn_relax(void) {
#ifdef CN_X86
    _mm_pause();
#endif
}

static long cn_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Run unclaimed shares of call `sequence` until none is left. fn and ctx are the call's own while a share of it is
 * unfinished: the caller publishes them before `claim` and returns only once every share is done. */
static void pool_run_shares(long sequence, int count) {
    long c = atomic_load_explicit(&pool.claim, memory_order_acquire);
    while (c >> 16 == sequence && (int)(c & 0xffff) < count) {
        if (atomic_compare_exchange_weak_explicit(&pool.claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire)) {
            pool.fn(pool.ctx, (int)(c & 0xffff), count);
            atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
            c = atomic_load_explicit(&pool.claim, memory_order_acquire);
        }
    }
}

static void *pool_worker(void *arg) {
    int index = (int)(intptr_t)arg;
    long seen = pool.first_job[index];
    for (;;) {
        long start = cn_now_ns(), job;
        for (int spins = 0; (job = atomic_load_explicit(&pool.job, memory_order_acquire)) == seen; spins++) {
            cn_relax();
            if ((spins & 255) == 255 && cn_now_ns() - start > CN_SPIN_NS) {
                pthread_mutex_lock(&pool.lock);
                while ((job = atomic_load(&pool.job)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
                pthread_mutex_unlock(&pool.lock);
                break;
            }
        }
        seen = job;
        int count = (int)(job & 0xffff);
        if (index < count) pool_run_shares(job >> 16, count);
    }
    return NULL;
}

static void pool_after_fork(void) { /* the child has none of the parent's workers */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool.call = m;
    pool.lock = m;
    pool.wake = c;
    pool.started = 0;
}

static void pool_register_fork_handler(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

/* fn(ctx, i, count) for every i in [0, count), on up to count threads; the caller runs every share that no worker
 * has claimed (of workers that could not be started too), so the work is always done. */
static void cn_parallel(cn_task_fn fn, void *ctx, int count) {
    if (count > CN_MAX_WORKERS) count = CN_MAX_WORKERS;
    if (count <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pool_register_fork_handler);
    pthread_mutex_lock(&pool.call);
    while (pool.started < count - 1) {
        int index = pool.started + 1;
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.first_job[index] = atomic_load(&pool.job);
        int failed = pthread_create(&id, &attr, pool_worker, (void *)(intptr_t)index);
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool.started++;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.done, 0);
    long sequence = (atomic_load(&pool.job) >> 16) + 1;
    atomic_store_explicit(&pool.claim, sequence << 16, memory_order_release);
    pthread_mutex_lock(&pool.lock);
    atomic_store_explicit(&pool.job, sequence << 16 | count, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    pool_run_shares(sequence, count);
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < count) cn_relax();
    pthread_mutex_unlock(&pool.call);
}

/* [begin, end) of `total` items for share `index` of `count`. */
static inline void cn_share(int64_t total, int index, int count, int64_t *begin, int64_t *end) {
    *begin = total * index / count;
    *end = total * (index + 1) / count;
}

/* ---------------------------------------------------------------- portable ---------------------------------------- */

static inline uint32_t popcount64_portable(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (uint32_t)((x * 0x0101010101010101ULL) >> 56);
}

/* acc[0 .. 8 * nvec) = popcount(a xor w) summed over taps and words, for 8 * nvec output channels. */
static void block_portable(const uint64_t *const *taps, int64_t ntaps, int64_t words, const uint64_t *weight,
                           int64_t out_pad, int64_t nvec, int32_t *acc) {
    int64_t lanes = nvec * CN_LANES;
    for (int64_t l = 0; l < lanes; l++) acc[l] = 0;
    for (int64_t t = 0; t < ntaps; t++) {
        for (int64_t w = 0; w < words; w++) {
            uint64_t a = taps[t][w];
            const uint64_t *wrow = weight + (t * words + w) * out_pad;
            for (int64_t l = 0; l < lanes; l++) acc[l] += (int32_t)popcount64_portable(a ^ wrow[l]);
        }
    }
}

#ifdef CN_X86
/* ---------------------------------------------------------------- AVX2 (pshufb nibble popcount) --------------------- */

__attribute__((target("avx2"))) static void block_avx2(const uint64_t *const *taps, int64_t ntaps, int64_t words,
                                                       const uint64_t *weight, int64_t out_pad, int64_t nvec,
                                                       int32_t *acc) {
    /* Four 4-lane vectors per pass (16 output channels): byte counts grow by at most 8 per word, so they are
     * folded into 64-bit lanes with vpsadbw every 31 words, before a byte can overflow. */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    int64_t nquads = nvec * 2;
    for (int64_t q0 = 0; q0 < nquads; q0 += 4) {
        int64_t nq = nquads - q0 < 4 ? nquads - q0 : 4;
        __m256i sum[4], bytes[4];
        for (int i = 0; i < 4; i++) sum[i] = bytes[i] = zero;
        int pending = 0;
        for (int64_t t = 0; t < ntaps; t++) {
            for (int64_t w = 0; w < words; w++) {
                __m256i a = _mm256_set1_epi64x((long long)taps[t][w]);
                const uint64_t *wrow = weight + (t * words + w) * out_pad + q0 * 4;
                for (int i = 0; i < 4; i++) {
                    if (i >= nq) break;
                    __m256i x = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(wrow + 4 * i)));
                    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
                    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
                    bytes[i] = _mm256_add_epi8(bytes[i], _mm256_add_epi8(lo, hi));
                }
                if (++pending == 31) {
                    for (int i = 0; i < 4; i++) {
                        sum[i] = _mm256_add_epi64(sum[i], _mm256_sad_epu8(bytes[i], zero));
                        bytes[i] = zero;
                    }
                    pending = 0;
                }
            }
        }
        for (int i = 0; i < nq; i++) {
            sum[i] = _mm256_add_epi64(sum[i], _mm256_sad_epu8(bytes[i], zero));
            int64_t lanes[4];
            _mm256_storeu_si256((__m256i *)lanes, sum[i]);
            for (int l = 0; l < 4; l++) acc[(q0 + i) * 4 + l] = (int32_t)lanes[l];
        }
    }
}

/* ---------------------------------------------------------------- AVX-512 VPOPCNTDQ ------------------------------- */

__attribute__((target("avx512f,avx512vpopcntdq,avx512bw,avx512vl"))) static void block_avx512(const uint64_t *const *taps,
                                                                            int64_t ntaps, int64_t words,
                                                                            const uint64_t *weight, int64_t out_pad,
                                                                            int64_t nvec, int32_t *acc) {
    for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
        int64_t nv = nvec - v0 < 4 ? nvec - v0 : 4;
        __m512i sum[4];
        for (int i = 0; i < 4; i++) sum[i] = _mm512_setzero_si512();
        for (int64_t t = 0; t < ntaps; t++) {
            for (int64_t w = 0; w < words; w++) {
                __m512i a = _mm512_set1_epi64((long long)taps[t][w]);
                const uint64_t *wrow = weight + (t * words + w) * out_pad + v0 * 8;
                for (int i = 0; i < 4; i++) {
                    if (i >= nv) break;
                    __m512i x = _mm512_xor_si512(a, _mm512_loadu_si512((const void *)(wrow + 8 * i)));
                    sum[i] = _mm512_add_epi64(sum[i], _mm512_popcnt_epi64(x));
                }
            }
        }
        for (int i = 0; i < nv; i++)
            _mm256_storeu_si256((__m256i *)(acc + (v0 + i) * 8), _mm512_cvtepi64_epi32(sum[i]));
    }
}
#endif

#ifdef CN_AMX
static int amx_tiles, amx_bf16;

static void amx_probe(void) {
    unsigned eax, ebx, ecx, edx;
    int cpu = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 24 & 1) && (edx >> 25 & 1);
    /* Linux hands out the tile state on request only (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA). */
    amx_tiles = cpu && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    amx_bf16 = amx_tiles && (edx >> 22 & 1);
}

/* int8 tiles (and, with bf16, bf16 tiles) usable by this process. */
static int amx_available(int bf16) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, amx_probe);
    return bf16 ? amx_bf16 : amx_tiles;
}
#endif

int cn_isa_supported(int isa) {
    if (isa == CN_ISA_PORTABLE) return 1;
#ifdef CN_AMX
    if (isa == CN_ISA_AMX) return amx_available(0);
#endif
#ifdef CN_X86
    __builtin_cpu_init();
    if (isa == CN_ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == CN_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return 0;
}

int cn_best_isa(void) {
    if (cn_isa_supported(CN_ISA_AVX512)) return CN_ISA_AVX512;
    if (cn_isa_supported(CN_ISA_AVX2)) return CN_ISA_AVX2;
    return CN_ISA_PORTABLE;
}

/* ---------------------------------------------------------------- driver (shared by all paths) -------------------- */

/* 64 bytes of 0/1 -> one word (bit i = byte i), eight bytes at a time. */
static inline uint64_t bytes_to_bits_portable(const uint8_t *b) {
    uint64_t word = 0;
    for (int i = 0; i < 8; i++) {
        uint64_t x;
        memcpy(&x, b + 8 * i, 8);
        word |= ((x * 0x0102040810204080ULL) >> 56) << (8 * i);
    }
    return word;
}

typedef uint64_t (*bits_fn)(const uint8_t *b);

#ifdef CN_X86
__attribute__((target("avx2"))) static inline uint64_t bytes_to_bits_avx2(const uint8_t *b) {
    __m256i lo = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)b), 7);
    __m256i hi = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)(b + 32)), 7);
    return (uint64_t)(uint32_t)_mm256_movemask_epi8(lo) | (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
}

__attribute__((target("avx512f,avx512bw"))) static inline uint64_t bytes_to_bits_avx512(const uint8_t *b) {
    return _mm512_test_epi8_mask(_mm512_loadu_si512((const void *)b), _mm512_set1_epi8(1));
}
#endif

/* Where a layer's signs go: the next layer's packed bits, or its +-1 bytes inside a zero border. */
typedef struct {
    int64_t mode; /* CN_OUT_BITS or CN_OUT_INT8 */
    int64_t channels;
    uint64_t *bits;
    int64_t pix_words, groups, channels_per_group, group_words;
    int8_t *bytes;
    int64_t height, width, pad_h, pad_w; /* of the output, border excluded */
} cn_signs_out;

/* The bytes of output pixel (n, oh, ow) inside its border. */
static inline int8_t *signs_bytes(const cn_signs_out *o, int64_t n, int64_t oh, int64_t ow) {
    return o->bytes + ((n * (o->height + 2 * o->pad_h) + oh + o->pad_h) * (o->width + 2 * o->pad_w) + ow + o->pad_w) *
                          o->channels;
}

/* Output pixel p = (n, oh, ow): channel j is -1 where negative[j] (64 readable bytes past the last channel). */
static inline __attribute__((always_inline)) void store_signs(const cn_signs_out *o, const uint8_t *negative,
                                                              int64_t p, int64_t n, int64_t oh, int64_t ow,
                                                              bits_fn to_bits) {
    if (o->mode == CN_OUT_INT8) {
        int8_t *restrict out = signs_bytes(o, n, oh, ow);
        const int64_t channels = o->channels; /* locals: a byte store could alias the struct's fields */
        for (int64_t j = 0; j < channels; j++) out[j] = (int8_t)(1 - 2 * negative[j]);
        return;
    }
    uint64_t *out = o->bits + p * o->pix_words;
    for (int64_t og = 0; og < o->groups; og++) {
        const uint8_t *neg = negative + og * o->channels_per_group;
        for (int64_t w = 0; w < o->group_words; w++) {
            uint64_t word = to_bits(neg + 64 * w);
            int64_t valid = o->channels_per_group - 64 * w; /* the bytes past this group belong to the next one */
            out[og * o->group_words + w] = valid >= 64 ? word : word & ((1ULL << valid) - 1);
        }
    }
}

static cn_signs_out signs_out(const cn_bconv_args *a) {
    cn_signs_out o = {a->mode, a->groups * a->out_per_group, a->out_bits, a->out_pix_words, a->out_groups,
                      a->out_channels_per_group, a->out_group_words, a->out_int8, a->out_height, a->out_width,
                      a->out_pad_h, a->out_pad_w};
    return o;
}

/* The epilogue of every path: output pixel p = (n, oh, ow) from its dot products. */
static inline __attribute__((always_inline)) void write_pixel(const cn_bconv_args *a, const cn_signs_out *o,
                                                              const int32_t *dot, int64_t p, int64_t n, int64_t oh,
                                                              int64_t ow, uint8_t *negative, bits_fn to_bits) {
    /* Locals: the stores below (bytes) could alias the struct's pointers, which would then be reloaded per channel
     * and keep the loops from being vectorised. */
    const int64_t cout = a->groups * a->out_per_group;
    if (a->mode == CN_OUT_FLOAT) {
        float *restrict out = a->out_float + p * cout;
        const float *restrict alpha = a->alpha, *restrict bias = a->bias;
        const int32_t *restrict order = a->out_order;
        if (order) /* a channel shuffle after the conv (alpha and bias in output order) */
            for (int64_t j = 0; j < cout; j++) {
                float v = alpha[j] * (float)dot[order[j]] + bias[j];
                out[j] = a->relu && !(v > 0.0f) ? 0.0f : v;
            }
        else if (a->relu)
            for (int64_t j = 0; j < cout; j++) {
                float v = alpha[j] * (float)dot[j] + bias[j];
                out[j] = v > 0.0f ? v : 0.0f;
            }
        else
            for (int64_t j = 0; j < cout; j++) out[j] = alpha[j] * (float)dot[j] + bias[j];
        return;
    }
    const int32_t *restrict sign = a->threshold_sign, *restrict threshold = a->threshold;
    const int32_t *restrict order = a->out_order;
    /* sign * dot for sign = +-1 (checked by cn_bconv_ok) as a conditional negation, (dot ^ m) - m with m = sign >> 1
     * (0 or -1): cheaper than a vector multiply, which set the epilogue's pace */
#define CN_SIGNED(j, d) ((((d) ^ (sign[j] >> 1)) - (sign[j] >> 1)))
    if (o->mode == CN_OUT_INT8 && !order) { /* one pass */
        int8_t *restrict out = signs_bytes(o, n, oh, ow);
        for (int64_t j = 0; j < cout; j++) out[j] = CN_SIGNED(j, dot[j]) >= threshold[j] ? 1 : -1;
        return;
    }
    uint8_t *restrict neg = negative;
    if (order)
        for (int64_t j = 0; j < cout; j++) neg[j] = CN_SIGNED(j, dot[order[j]]) < threshold[j];
    else
        for (int64_t j = 0; j < cout; j++) neg[j] = CN_SIGNED(j, dot[j]) < threshold[j];
#undef CN_SIGNED
    store_signs(o, negative, p, n, oh, ow, to_bits);
}

#ifdef CN_X86
/* Signs decided 16 channels at a time into a mask (the float conv's epilogue, fconv_signs) go straight to +-1 bytes,
 * or into a bitset (`neg_bits`, (channels + 63) / 64 + 1 words) that store_bitset then packs per group. */
#define CN_AVX512_SIGNS "avx512f,avx512bw,avx512vl"

static inline __mmask16 live16(int64_t j, int64_t channels) {
    return channels - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (channels - j)) - 1);
}

/* Channels j..j+15 (those in `live`) are -1 where `negative`. */
__attribute__((target(CN_AVX512_SIGNS))) static inline __attribute__((always_inline)) void emit_signs16(
    int8_t *restrict bytes, uint8_t *restrict neg_bits, int64_t j, __mmask16 live, __mmask16 negative) {
    if (bytes)
        _mm_mask_storeu_epi8(bytes + j, live, _mm_mask_blend_epi8(negative, _mm_set1_epi8(1), _mm_set1_epi8(-1)));
    else
        memcpy(neg_bits + j / 8, &negative, sizeof(negative)); /* j is a multiple of 16; bits past `live` are 0 */
}

/* The packed bits of output pixel p from its bitset. */
static inline void store_bitset(const cn_signs_out *o, const uint64_t *neg_bits, int64_t p) {
    uint64_t *out = o->bits + p * o->pix_words;
    for (int64_t og = 0; og < o->groups; og++)
        for (int64_t w = 0; w < o->group_words; w++) {
            const int64_t s = og * o->channels_per_group + 64 * w, k = s >> 6, r = s & 63;
            const uint64_t word = r ? neg_bits[k] >> r | neg_bits[k + 1] << (64 - r) : neg_bits[k];
            const int64_t valid = o->channels_per_group - 64 * w; /* bits past the group belong to the next one */
            out[og * o->group_words + w] = valid >= 64 ? word : word & ((1ULL << valid) - 1);
        }
}

#endif

/* A channel shuffle as an output order: out_order[j] = (j % g) * m + j / g (the exporter's form of a shuffle of g
 * groups of m channels, g dividing 64). Its signs are decided in the conv's own channel order, 16 per
 * compare against thresholds permuted to that order once per call, and moved to their shuffled places with PDEP,
 * 64 / g bits of each group per output word. Gathering each channel's dot product through the order (write_pixel)
 * had made nin_gc_xnornet's 1x1 layers with 2 groups 5x slower than nin_xnornet's of the same size. */
typedef struct {
    int64_t groups, per_group; /* g and m; groups 0: no such shuffle here (write_pixel then) */
    uint64_t spread;           /* bits 0, g, 2g, ...: where group 0's channels land in an output word */
    int32_t *cut;              /* conv order: -1 where dot < cut, unless flipped (sign -1: -dot < t <=> dot >= 1 - t) */
    uint16_t *flip;            /* per 16 channels of conv order: those whose sign is -1 */
    uint64_t *conv_bits, *bits; /* -1 bits in conv order, then shuffled: (channels + 63) / 64 + 3 words each */
} cn_shuffle;

/* The shuffle of `a`'s output order, with its thresholds in conv order; groups 0 (nothing allocated) when the
 * order is something else; -1 when memory ran out. */
static int cn_shuffle_init(const cn_bconv_args *a, cn_shuffle *sh) {
    memset(sh, 0, sizeof(*sh));
    const int64_t cout = a->groups * a->out_per_group;
    if (a->mode == CN_OUT_FLOAT || !a->out_order || cout < 2) return 0;
    const int64_t m = a->out_order[1], g = m > 0 && cout % m == 0 ? cout / m : 0;
    if (g < 2 || 64 % g) return 0;
    for (int64_t j = 0; j < cout; j++)
        if (a->out_order[j] != (j % g) * m + j / g) return 0;
    const size_t words = (size_t)((cout + 63) / 64 + 3);
    sh->cut = malloc(sizeof(int32_t) * (size_t)cout);
    sh->flip = calloc((size_t)((cout + 15) / 16), sizeof(uint16_t));
    sh->conv_bits = calloc(words, sizeof(uint64_t));
    sh->bits = calloc(words, sizeof(uint64_t));
    if (!sh->cut || !sh->flip || !sh->conv_bits || !sh->bits) return -1;
    for (int64_t j = 0; j < cout; j++) {
        const int64_t c = a->out_order[j], t = a->threshold[j], cut = a->threshold_sign[j] > 0 ? t : 1 - t;
        sh->cut[c] = (int32_t)(cut > INT32_MAX ? INT32_MAX : cut); /* |dot| <= K far inside int32 */
        sh->flip[c / 16] |= (uint16_t)((a->threshold_sign[j] < 0) << (c % 16));
    }
    for (int64_t b = 0; b < 64; b += g) sh->spread |= UINT64_C(1) << b;
    sh->groups = g;
    sh->per_group = m;
    return 1;
}

static void cn_shuffle_free(cn_shuffle *sh) {
    free(sh->cut);
    free(sh->flip);
    free(sh->conv_bits);
    free(sh->bits);
}

/* `len` (1..64) bits of bitset b from bit `at` on. */
static inline uint64_t bit_field(const uint64_t *b, int64_t at, int64_t len) {
    const int64_t k = at >> 6, r = at & 63;
    const uint64_t v = r ? b[k] >> r | b[k + 1] << (64 - r) : b[k];
    return len == 64 ? v : v & ((UINT64_C(1) << len) - 1);
}

#ifdef CN_X86
/* write_pixel for a layer with such a shuffle (cn_shuffle_init returned 1). */
__attribute__((target("avx512f,avx512bw,avx512vl,bmi2"))) static void write_shuffled(const cn_bconv_args *a,
                                                                                    const cn_signs_out *o,
                                                                                    const cn_shuffle *sh,
                                                                                    const int32_t *dot, int64_t p,
                                                                                    int64_t n, int64_t oh,
                                                                                    int64_t ow) {
    const int64_t cout = a->groups * a->out_per_group, g = sh->groups, m = sh->per_group, run = 64 / g;
    uint8_t *conv_bytes = (uint8_t *)sh->conv_bits;
    for (int64_t c = 0; c < cout; c += 16) {
        const __mmask16 live = live16(c, cout);
        const __mmask16 below = _mm512_mask_cmplt_epi32_mask(live, _mm512_maskz_loadu_epi32(live, dot + c),
                                                             _mm512_maskz_loadu_epi32(live, sh->cut + c));
        const uint16_t negative = (uint16_t)(below ^ (sh->flip[c / 16] & live));
        memcpy(conv_bytes + c / 8, &negative, sizeof(negative));
    }
    for (int64_t w = 0; w < (cout + 63) / 64; w++) {
        uint64_t word = 0; /* output channels 64w.. = (b, a) for b from 64w / g, every group a */
        for (int64_t grp = 0; grp < g; grp++)
            word |= _pdep_u64(bit_field(sh->conv_bits, grp * m + w * run, run), sh->spread << grp);
        sh->bits[w] = word;
    }
    if (o->mode == CN_OUT_BITS) {
        store_bitset(o, sh->bits, p);
        return;
    }
    int8_t *bytes = signs_bytes(o, n, oh, ow);
    for (int64_t j = 0; j < cout; j += 16)
        emit_signs16(bytes, NULL, j, live16(j, cout), (__mmask16)(sh->bits[j / 64] >> (j % 64)));
}
#endif

typedef struct {
    const cn_bconv_args *a;
    atomic_int status;
} cn_call;

/* The popcount pixel loop, written once and specialised per path (always_inline into each target function below,
 * so that the block kernel is called directly and the epilogue is vectorised with that path's instructions). */
typedef void (*shuffled_fn)(const cn_bconv_args *a, const cn_signs_out *o, const cn_shuffle *sh, const int32_t *dot,
                            int64_t p, int64_t n, int64_t oh, int64_t ow);

/* `shuffled`: the epilogue of a layer whose output order is a channel shuffle (NULL: write_pixel's gather). */
static inline __attribute__((always_inline)) void pixel_loop(cn_call *call, int index, int count, block_fn block,
                                                             bits_fn to_bits, shuffled_fn shuffled) {
    const cn_bconv_args *a = call->a;
    const cn_signs_out o = signs_out(a);
    int64_t begin, end;
    cn_share(a->batch * a->out_height * a->out_width, index, count, &begin, &end);
    if (begin >= end) return;
    const int64_t ntaps = a->kernel_h * a->kernel_w;
    const int64_t cout = a->groups * a->out_per_group;
    const int64_t nvec = a->out_pad / CN_LANES;
    const int32_t full_k = (int32_t)(ntaps * a->in_channels_per_group);
    const uint64_t **taps = malloc(sizeof(*taps) * (size_t)ntaps);
    const uint64_t **gtaps = malloc(sizeof(*gtaps) * (size_t)ntaps);
    uint64_t *zeros = calloc((size_t)a->in_pix_words, sizeof(uint64_t));
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(a->groups * a->out_pad));
    int32_t *dot = malloc(sizeof(int32_t) * (size_t)cout);
    uint8_t *negative = calloc((size_t)(cout + 64), 1); /* + 64: whole words read past the last channel */
    unsigned char *padded = malloc((size_t)ntaps);
    cn_shuffle sh = {0};
    const int shuffle = shuffled ? cn_shuffle_init(a, &sh) : 0;
    if (!taps || !gtaps || !zeros || !acc || !dot || !negative || !padded || shuffle < 0) {
        atomic_store(&call->status, -1);
        goto done;
    }
    /* (n, oh, ow) of the first pixel, then stepped: no divisions per pixel */
    int64_t ow = begin % a->out_width, oh = (begin / a->out_width) % a->out_height;
    int64_t n = begin / (a->out_width * a->out_height);
    for (int64_t p = begin; p < end; p++, ow++) {
        if (ow == a->out_width) {
            ow = 0;
            if (++oh == a->out_height) {
                oh = 0;
                n++;
            }
        }
        int border = 0;
        for (int64_t kh = 0; kh < a->kernel_h; kh++) {
            int64_t ih = oh * a->stride_h - a->pad_h + kh * a->dilation_h;
            for (int64_t kw = 0; kw < a->kernel_w; kw++) {
                int64_t iw = ow * a->stride_w - a->pad_w + kw * a->dilation_w;
                int64_t t = kh * a->kernel_w + kw;
                int inside = ih >= 0 && ih < a->height && iw >= 0 && iw < a->width;
                taps[t] = inside ? a->input + ((n * a->height + ih) * a->width + iw) * a->in_pix_words : zeros;
                padded[t] = (unsigned char)!inside;
                border |= !inside;
            }
        }
        for (int64_t g = 0; g < a->groups; g++) {
            for (int64_t t = 0; t < ntaps; t++) gtaps[t] = padded[t] ? zeros : taps[t] + g * a->group_words;
            block(gtaps, ntaps, a->group_words, a->weight + g * ntaps * a->group_words * a->out_pad, a->out_pad, nvec,
                  acc + g * a->out_pad);
            int32_t *d = dot + g * a->out_per_group;
            const int32_t *c = acc + g * a->out_pad;
            for (int64_t o = 0; o < a->out_per_group; o++) d[o] = full_k - 2 * c[o];
            if (border) /* zero-padding correction: remove what the +1 read at each padded tap added */
                for (int64_t t = 0; t < ntaps; t++) {
                    if (!padded[t]) continue;
                    const int32_t *corr = a->correction + (g * ntaps + t) * a->out_per_group;
                    for (int64_t o = 0; o < a->out_per_group; o++) d[o] -= corr[o];
                }
        }
        if (shuffle)
            shuffled(a, &o, &sh, dot, p, n, oh, ow);
        else
            write_pixel(a, &o, dot, p, n, oh, ow, negative, to_bits);
    }
done:
    cn_shuffle_free(&sh);
    free(taps);
    free(gtaps);
    free(zeros);
    free(acc);
    free(dot);
    free(negative);
    free(padded);
}

static void task_portable(void *call, int index, int count) {
    pixel_loop((cn_call *)call, index, count, block_portable, bytes_to_bits_portable, NULL);
}
#ifdef CN_X86
__attribute__((target("avx2"))) static void task_avx2(void *call, int index, int count) {
    pixel_loop((cn_call *)call, index, count, block_avx2, bytes_to_bits_avx2, NULL);
}
__attribute__((target("avx512f,avx512vpopcntdq,avx512bw,avx512vl"))) static void task_avx512(void *call, int index,
                                                                                            int count) {
    pixel_loop((cn_call *)call, index, count, block_avx512, bytes_to_bits_avx512, write_shuffled);
}
#endif

#ifdef CN_AMX
/* ---------------------------------------------------------------- AMX (int8 tiles on +-1 bytes) ------------------ */

/* +-1 products summed in int32 are exact, so a dot product of +-1 bytes gives the popcount paths' integers. A tile
 * multiply (TDPBSSD) adds a 16 x 64 block of input bytes (16 output pixels, 64 input channels of one tap) times a
 * 64 x 16 block of weights into 16 x 16 int32 sums. Padded taps read the zero border of the input buffer: 0, as in
 * the float model, so no correction is needed. Four accumulators: 2 pixel tiles x 2 channel tiles. */
typedef struct __attribute__((packed)) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} cn_tilecfg;

/* Tiles along a conv's output: rows of M consecutive output pixels of one output row (their inputs lie stride_w
 * pixels apart), or, for a 1x1 conv with stride 1 and no padding, 16 consecutive pixels of the whole batch. Rows
 * past the end of a row or of the batch are computed from whatever follows in the buffer and dropped. */
typedef struct {
    int flat;
    int64_t m, per_row, count, row_stride; /* rows per tile, tiles per output row, tiles, bytes between rows */
} cn_tiling;

static cn_tiling amx_tiling(const cn_bconv_args *a, int64_t pixel_bytes) {
    cn_tiling t;
    t.flat = a->kernel_h == 1 && a->kernel_w == 1 && a->stride_h == 1 && a->stride_w == 1 && a->pad_h == 0 &&
             a->pad_w == 0;
    if (t.flat) {
        t.m = 16;
        t.per_row = 0;
        t.count = (a->batch * a->out_height * a->out_width + 15) / 16;
        t.row_stride = pixel_bytes;
    } else {
        t.m = a->out_width < 16 ? a->out_width : 16;
        t.per_row = (a->out_width + t.m - 1) / t.m;
        t.count = a->batch * a->out_height * t.per_row;
        t.row_stride = a->stride_w * pixel_bytes;
    }
    return t;
}

/* First output pixel (n, oh, ow) of tile i and the offset of its window's first input pixel (in pixels). */
static inline void tile_origin(const cn_tiling *t, const cn_bconv_args *a, int64_t i, int64_t *n, int64_t *oh,
                               int64_t *ow, int64_t *in_pixel) {
    const int64_t hp = a->height + 2 * a->pad_h, wp = a->width + 2 * a->pad_w;
    if (t->flat) {
        int64_t q = i * 16;
        *ow = q % a->out_width;
        *oh = (q / a->out_width) % a->out_height;
        *n = q / (a->out_width * a->out_height);
        *in_pixel = q;
    } else {
        int64_t r = i / t->per_row;
        *ow = (i % t->per_row) * t->m;
        *oh = r % a->out_height;
        *n = r / a->out_height;
        *in_pixel = (*n * hp + *oh * a->stride_h) * wp + *ow * a->stride_w;
    }
}

/* The output pixels of tile i: the first one's (n, oh, ow) and flat index p, and how many of its rows exist; the
 * others follow in order (next_pixel), with no division per pixel. */
static inline int64_t tile_pixels(const cn_tiling *t, const cn_bconv_args *a, int64_t i, int64_t *n, int64_t *oh,
                                  int64_t *ow, int64_t *p) {
    int64_t in_pixel, rows;
    if (t->flat) {
        int64_t q = i * 16, total = a->batch * a->out_height * a->out_width;
        *ow = q % a->out_width;
        *oh = (q / a->out_width) % a->out_height;
        *n = q / (a->out_width * a->out_height);
        rows = total - q < 16 ? total - q : 16;
    } else {
        tile_origin(t, a, i, n, oh, ow, &in_pixel);
        rows = a->out_width - *ow < t->m ? a->out_width - *ow : t->m;
    }
    *p = (*n * a->out_height + *oh) * a->out_width + *ow;
    return rows;
}

static inline void next_pixel(const cn_bconv_args *a, int64_t *n, int64_t *oh, int64_t *ow, int64_t *p) {
    ++*p;
    if (++*ow == a->out_width) {
        *ow = 0;
        if (++*oh == a->out_height) {
            *oh = 0;
            ++*n;
        }
    }
}

/* Units of two pixel tiles are taken in blocks whose sums fit in L2 (CN_AMX_BLOCK_BYTES); per block, each pair of
 * output-channel tiles runs over all of the block's pixels while its weights stay in L1, then the epilogue. */
#define CN_AMX_BLOCK_BYTES (128 * 1024)

static int64_t amx_block_units(int64_t unit_pixels, int64_t sums_width) {
    int64_t units = CN_AMX_BLOCK_BYTES / (unit_pixels * sums_width * 4);
    return units < 1 ? 1 : units > 64 ? 64 : units;
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq"))) static void task_amx(void *c,
                                                                                                   int index,
                                                                                                   int count) {
    cn_call *call = c;
    const cn_bconv_args *a = call->a;
    const cn_signs_out o = signs_out(a);
    const int64_t channels = a->groups * a->in_channels_per_group; /* bytes per input pixel */
    const cn_tiling t = amx_tiling(a, channels);
    int64_t begin, end;
    cn_share((t.count + 1) / 2, index, count, &begin, &end);
    if (begin >= end) return;
    const int64_t ntaps = a->kernel_h * a->kernel_w, kblocks = (a->in_channels_per_group + 63) / 64;
    const int64_t nblocks = (a->out_per_group + 15) / 16, cout = a->groups * a->out_per_group;
    const int64_t sums_width = a->groups * nblocks * 16; /* int32 per pixel row of `sums` */
    const int64_t unit_pixels = 2 * t.m, block_units = amx_block_units(unit_pixels, sums_width);
    const int64_t wp = a->width + 2 * a->pad_w;
    const int8_t *input = (const int8_t *)a->input, *weight = (const int8_t *)a->weight;
    int64_t *tap_offset = malloc(sizeof(int64_t) * (size_t)ntaps);
    int64_t *origin = malloc(sizeof(int64_t) * (size_t)(2 * block_units));
    int32_t *sums = aligned_alloc(64, sizeof(int32_t) * (size_t)(block_units * unit_pixels * sums_width));
    int32_t *dot = malloc(sizeof(int32_t) * (size_t)cout);
    uint8_t *negative = calloc((size_t)(cout + 64), 1);
    cn_shuffle sh;
    const int shuffle = cn_shuffle_init(a, &sh);
    if (!tap_offset || !origin || !sums || !dot || !negative || shuffle < 0) {
        atomic_store(&call->status, -1);
        goto done;
    }
    for (int64_t kh = 0; kh < a->kernel_h; kh++)
        for (int64_t kw = 0; kw < a->kernel_w; kw++)
            tap_offset[kh * a->kernel_w + kw] = (kh * a->dilation_h * wp + kw * a->dilation_w) * channels;
    cn_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = (uint8_t)(i < 6 ? t.m : 16); /* tmm0-3 sums, tmm4-5 inputs: m rows; tmm6-7 weights: 16 */
    }
    _tile_loadconfig(&cfg);
    const int64_t wtile = 1024, wblock = ntaps * kblocks * wtile; /* bytes per tile, per 16 output channels */
    const size_t sums_stride = sizeof(int32_t) * (size_t)sums_width;
    const int dense = a->groups == 1 || a->out_per_group % 16 == 0; /* sums rows are the dot products as they are */
    for (int64_t b0 = begin; b0 < end; b0 += block_units) {
        const int64_t b1 = b0 + block_units < end ? b0 + block_units : end;
        for (int64_t u = b0; u < b1; u++)
            for (int64_t i = 0; i < 2 && 2 * u + i < t.count; i++) {
                int64_t n, oh, ow;
                tile_origin(&t, a, 2 * u + i, &n, &oh, &ow, &origin[2 * (u - b0) + i]);
            }
        for (int64_t g = 0; g < a->groups; g++)
            for (int64_t nb = 0; nb < nblocks; nb += 2) {
                const int two_ch = nb + 1 < nblocks;
                const int8_t *w0 = weight + (g * nblocks + nb) * wblock;
                for (int64_t u = b0; u < b1; u++) {
                    const int two = 2 * u + 1 < t.count;
                    const int8_t *base0 = input + origin[2 * (u - b0)] * channels + g * a->in_channels_per_group;
                    const int8_t *base1 = input + origin[2 * (u - b0) + two] * channels + g * a->in_channels_per_group;
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int64_t tap = 0; tap < ntaps; tap++)
                        for (int64_t kb = 0; kb < kblocks; kb++) {
                            const int64_t off = tap_offset[tap] + kb * 64;
                            const int8_t *w = w0 + (tap * kblocks + kb) * wtile;
                            _tile_loadd(4, base0 + off, t.row_stride);
                            _tile_loadd(6, w, 64);
                            _tile_dpbssd(0, 4, 6);
                            if (two_ch) {
                                _tile_loadd(7, w + wblock, 64);
                                _tile_dpbssd(1, 4, 7);
                            }
                            if (two) {
                                _tile_loadd(5, base1 + off, t.row_stride);
                                _tile_dpbssd(2, 5, 6);
                                if (two_ch) _tile_dpbssd(3, 5, 7);
                            }
                        }
                    int32_t *s0 = sums + (u - b0) * unit_pixels * sums_width + (g * nblocks + nb) * 16;
                    int32_t *s1 = s0 + t.m * sums_width;
                    _tile_stored(0, s0, sums_stride);
                    if (two_ch) _tile_stored(1, s0 + 16, sums_stride);
                    if (two) {
                        _tile_stored(2, s1, sums_stride);
                        if (two_ch) _tile_stored(3, s1 + 16, sums_stride);
                    }
                }
            }
        for (int64_t u = b0; u < b1; u++)
            for (int64_t i = 0; i < 2 && 2 * u + i < t.count; i++) {
                int64_t n, oh, ow, p, rows = tile_pixels(&t, a, 2 * u + i, &n, &oh, &ow, &p);
                for (int64_t r = 0; r < rows; r++, next_pixel(a, &n, &oh, &ow, &p)) {
                    const int32_t *row = sums + ((u - b0) * unit_pixels + i * t.m + r) * sums_width;
                    if (!dense)
                        for (int64_t g = 0; g < a->groups; g++)
                            memcpy(dot + g * a->out_per_group, row + g * nblocks * 16,
                                   sizeof(int32_t) * (size_t)a->out_per_group);
                    if (shuffle)
                        write_shuffled(a, &o, &sh, dense ? row : dot, p, n, oh, ow);
                    else
                        write_pixel(a, &o, dense ? row : dot, p, n, oh, ow, negative, bytes_to_bits_avx512);
                }
            }
    }
    _tile_release();
done:
    free(tap_offset);
    free(origin);
    free(sums);
    free(dot);
    free(negative);
    cn_shuffle_free(&sh);
}

#endif

/* ---------------------------------------------------------------- argument checks -------------------------------- */

/* Every entry point checks its sizes against the byte lengths of the buffers it is handed (`*_bytes`: readable, or
 * writable, from the pointer on) and returns -3 where they do not fit: whatever its arguments, no call reads or
 * writes outside its buffers. The packed runner checks its files first (packed_format.py); these checks keep the
 * native code safe when it is called wrongly. At most O(channels) per call, before the pixel loops. */
#define CN_MAX_SIZE (INT64_C(1) << 24) /* any one size, channel count or geometry value */
#define CN_COUNT(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define CN_ALL_IN(low, ...) cn_all_in(CN_COUNT(__VA_ARGS__), (const int64_t[]){__VA_ARGS__}, low)
#define CN_PRODUCT(...) cn_product(CN_COUNT(__VA_ARGS__), (const int64_t[]){__VA_ARGS__})

static inline int cn_in(int64_t v, int64_t low) { return v >= low && v <= CN_MAX_SIZE; }

static int cn_all_in(int n, const int64_t *values, int64_t low) {
    for (int i = 0; i < n; i++)
        if (!cn_in(values[i], low)) return 0;
    return 1;
}

/* The product of n factors; -1 when one is negative or the product overflows. */
static int64_t cn_product(int n, const int64_t *factors) {
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        if (factors[i] < 0 || __builtin_mul_overflow(p, factors[i], &p)) return -1;
    return p;
}

/* `need` bytes (negative: the size overflowed) fit in a buffer of `have`. */
static inline int cn_fits(int64_t need, int64_t have) { return need >= 0 && need <= have; }

/* A window's output size (PyTorch's floor rule; 0 when it does not fit), for arguments within CN_MAX_SIZE. */
static inline int64_t cn_window(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

/* `batch` images of signs (bits or bytes inside their border) fit a buffer of `bytes`. */
static int cn_signs_ok(const cn_signs_out *o, int64_t batch, int64_t bytes) {
    if (!cn_in(batch, 0) || !CN_ALL_IN(1, o->channels, o->height, o->width)) return 0;
    if (o->mode == CN_OUT_INT8)
        return o->bytes && CN_ALL_IN(0, o->pad_h, o->pad_w) &&
               cn_fits(CN_PRODUCT(batch, o->height + 2 * o->pad_h, o->width + 2 * o->pad_w, o->channels), bytes);
    return o->mode == CN_OUT_BITS && o->bits && CN_ALL_IN(1, o->groups, o->channels_per_group) &&
           o->groups * o->channels_per_group == o->channels && o->group_words == (o->channels_per_group + 63) / 64 &&
           cn_in(o->pix_words, o->groups * o->group_words) &&
           cn_fits(CN_PRODUCT(batch, o->height, o->width, o->pix_words, 8), bytes);
}

/* cn_bconv's arguments against the byte lengths of its buffers. */
static int cn_bconv_ok(const cn_bconv_args *a, int isa) {
    if (!a->input || !a->weight || !cn_in(a->batch, 0) || !CN_ALL_IN(0, a->pad_h, a->pad_w) ||
        !CN_ALL_IN(1, a->height, a->width, a->groups, a->in_channels_per_group, a->out_per_group, a->kernel_h,
                   a->kernel_w, a->stride_h, a->stride_w, a->dilation_h, a->dilation_w, a->out_height, a->out_width))
        return 0;
    if (a->out_height != cn_window(a->height, a->kernel_h, a->stride_h, a->pad_h, a->dilation_h) ||
        a->out_width != cn_window(a->width, a->kernel_w, a->stride_w, a->pad_w, a->dilation_w))
        return 0;
    const int64_t taps = a->kernel_h * a->kernel_w, cout = a->groups * a->out_per_group;
    const int64_t channels = a->groups * a->in_channels_per_group;
    if (taps > CN_MAX_SIZE || taps * a->in_channels_per_group > CN_MAX_SIZE) return 0; /* sums far inside int32 */
    if (isa == CN_ISA_AMX) { /* bytes inside the padding border, then the slack of the last tile's rows */
        int64_t image = CN_PRODUCT(a->batch, a->height + 2 * a->pad_h, a->width + 2 * a->pad_w, channels);
        if (image < 0 || !cn_fits(image + (16 * a->stride_w + 1) * channels + 64, a->input_bytes) ||
            !cn_fits(CN_PRODUCT(a->groups, (a->out_per_group + 15) / 16, taps, (a->in_channels_per_group + 63) / 64,
                                1024),
                     a->weight_bytes))
            return 0;
    } else if (!a->correction || a->group_words != (a->in_channels_per_group + 63) / 64 ||
               !cn_in(a->in_pix_words, a->groups * a->group_words) || a->out_pad % CN_LANES ||
               !cn_in(a->out_pad, a->out_per_group) ||
               !cn_fits(CN_PRODUCT(a->batch, a->height, a->width, a->in_pix_words, 8), a->input_bytes) ||
               !cn_fits(CN_PRODUCT(a->groups, taps, a->group_words, a->out_pad, 8), a->weight_bytes) ||
               !cn_fits(CN_PRODUCT(a->groups, taps, a->out_per_group, 4), a->correction_bytes)) {
        return 0;
    }
    if (a->out_order) {
        if (!cn_fits(4 * cout, a->out_order_bytes)) return 0;
        for (int64_t j = 0; j < cout; j++)
            if (a->out_order[j] < 0 || a->out_order[j] >= cout) return 0;
    }
    if (a->mode == CN_OUT_FLOAT)
        return a->alpha && a->bias && a->out_float && cn_fits(4 * cout, a->alpha_bytes) &&
               cn_fits(4 * cout, a->bias_bytes) &&
               cn_fits(CN_PRODUCT(a->batch, a->out_height, a->out_width, cout, 4), a->out_bytes);
    const cn_signs_out o = signs_out(a);
    if (!a->threshold || !a->threshold_sign || !cn_fits(4 * cout, a->threshold_bytes) ||
        !cn_fits(4 * cout, a->threshold_sign_bytes) || !cn_signs_ok(&o, a->batch, a->out_bytes))
        return 0;
    for (int64_t j = 0; j < cout; j++) /* +-1: sign * dot cannot overflow */
        if (a->threshold_sign[j] != 1 && a->threshold_sign[j] != -1) return 0;
    return 1;
}

typedef void (*task_fn)(void *, int, int);

static task_fn select_task(int isa) {
#ifdef CN_X86
    if (isa == CN_ISA_AVX512) return task_avx512;
    if (isa == CN_ISA_AVX2) return task_avx2;
#endif
#ifdef CN_AMX
    if (isa == CN_ISA_AMX) return task_amx;
#endif
    return task_portable;
}

/* Returns 0 on success, -1 when memory ran out, -2 for an instruction set this CPU lacks, -3 for bad arguments. */
int cn_bconv(const cn_bconv_args *a, int isa, int threads) {
    if (isa == CN_ISA_AUTO) isa = cn_best_isa();
    if (!cn_isa_supported(isa)) return -2;
    if (!cn_bconv_ok(a, isa)) return -3;
    if (isa != CN_ISA_AMX && (a->out_pad % CN_LANES || a->out_pad < a->out_per_group)) return -3;
    if (a->mode == CN_OUT_BITS && a->out_groups * a->out_channels_per_group != a->groups * a->out_per_group) return -3;
    if (a->mode == CN_OUT_INT8 && (a->out_pad_h < 0 || a->out_pad_w < 0)) return -3;
    int64_t total = a->batch * a->out_height * a->out_width;
    if (threads < 1) threads = 1;
    if (threads > total) threads = (int)(total > 0 ? total : 1);
    cn_call call = {a, 0};
    cn_parallel(select_task(isa), &call, threads);
    return atomic_load(&call.status);
}

/* ---------------------------------------------------------------- packing and pooling on bits ------------------- */

/* n floats -> ceil(n / 64) words. Without thresholds a bit is set where !(x > 0) (sign(0) = 0 has no bit: it
 * becomes -1, which the float model counts as 0; see docs/binary-inference.md). With them, where
 * !(sign[c] * x >= threshold[c]): the per-channel ops between x and the sign (batch norm, ReLU), folded. */
static inline __attribute__((always_inline)) void pack_row_scalar(const float *x, const float *sign, const float *thr,
                                                                  int64_t n, uint64_t *out) {
    for (int64_t w = 0; w * 64 < n; w++) {
        uint64_t word = 0;
        int64_t m = n - 64 * w < 64 ? n - 64 * w : 64;
        for (int64_t b = 0; b < m; b++) {
            int64_t c = 64 * w + b;
            int negative = thr ? !(sign[c] * x[c] >= thr[c]) : !(x[c] > 0.0f);
            word |= (uint64_t)negative << b;
        }
        out[w] = word;
    }
}

typedef void (*pack_fn)(const float *x, const float *sign, const float *thr, int64_t n, uint64_t *out);

static void pack_row_portable(const float *x, const float *sign, const float *thr, int64_t n, uint64_t *out) {
    pack_row_scalar(x, sign, thr, n, out);
}

#ifdef CN_X86
__attribute__((target("avx2"))) static void pack_row_avx2(const float *x, const float *sign, const float *thr,
                                                          int64_t n, uint64_t *out) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t full = n / 64;
    for (int64_t w = 0; w < full; w++) {
        uint64_t word = 0;
        for (int i = 0; i < 8; i++) {
            int64_t c = 64 * w + 8 * i;
            __m256 v = _mm256_loadu_ps(x + c);
            __m256 negative = thr ? _mm256_cmp_ps(_mm256_mul_ps(v, _mm256_loadu_ps(sign + c)),
                                                  _mm256_loadu_ps(thr + c), _CMP_NGE_UQ)
                                  : _mm256_cmp_ps(v, zero, _CMP_NGT_UQ);
            word |= (uint64_t)(uint32_t)_mm256_movemask_ps(negative) << (8 * i);
        }
        out[w] = word;
    }
    if (n > 64 * full)
        pack_row_scalar(x + 64 * full, thr ? sign + 64 * full : NULL, thr ? thr + 64 * full : NULL, n - 64 * full,
                        out + full);
}

__attribute__((target("avx512f"))) static void pack_row_avx512(const float *x, const float *sign, const float *thr,
                                                               int64_t n, uint64_t *out) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t w = 0; w * 64 < n; w++) {
        uint64_t word = 0;
        for (int i = 0; i < 4; i++) {
            int64_t c = 64 * w + 16 * i, m = n - c;
            if (m <= 0) break;
            __mmask16 valid = m >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << m) - 1);
            __m512 v = _mm512_maskz_loadu_ps(valid, x + c);
            __mmask16 negative =
                thr ? _mm512_cmp_ps_mask(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(valid, sign + c)),
                                         _mm512_maskz_loadu_ps(valid, thr + c), _CMP_NGE_UQ)
                    : _mm512_cmp_ps_mask(v, zero, _CMP_NGT_UQ);
            word |= (uint64_t)(negative & valid) << (16 * i);
        }
        out[w] = word;
    }
}
#endif

/* Channels-last floats [npix, groups * channels_per_group] -> packed bits [npix, pix_words]; `sign` and `threshold`
 * ([channels], floats) may be NULL. The `*_bytes`: the buffers' byte lengths. */
int cn_pack_signs(const float *x, int64_t npix, int64_t groups, int64_t channels_per_group, int64_t group_words,
                  int64_t pix_words, const float *sign, const float *threshold, uint64_t *out, int isa,
                  int64_t x_bytes, int64_t sign_bytes, int64_t threshold_bytes, int64_t out_bytes) {
    if (isa == CN_ISA_AUTO) isa = cn_best_isa();
    if (!cn_isa_supported(isa)) return -2;
    if (!sign != !threshold) return -3;
    if (!x || !out || npix < 0 || !CN_ALL_IN(1, groups, channels_per_group) ||
        group_words != (channels_per_group + 63) / 64 || !cn_in(pix_words, groups * group_words) ||
        !cn_fits(CN_PRODUCT(npix, groups, channels_per_group, 4), x_bytes) ||
        !cn_fits(CN_PRODUCT(npix, pix_words, 8), out_bytes) ||
        (threshold && (!cn_fits(4 * groups * channels_per_group, sign_bytes) ||
                       !cn_fits(4 * groups * channels_per_group, threshold_bytes))))
        return -3;
    pack_fn pack = pack_row_portable;
#ifdef CN_X86
    if (isa == CN_ISA_AVX512) pack = pack_row_avx512;
    if (isa == CN_ISA_AVX2) pack = pack_row_avx2;
#endif
    const int64_t channels = groups * channels_per_group;
    for (int64_t p = 0; p < npix; p++) {
        uint64_t *o = out + p * pix_words;
        memset(o, 0, sizeof(uint64_t) * (size_t)pix_words);
        for (int64_t g = 0; g < groups; g++) {
            int64_t first = g * channels_per_group;
            pack(x + p * channels + first, sign ? sign + first : NULL, threshold ? threshold + first : NULL,
                 channels_per_group, o + g * group_words);
        }
    }
    return 0;
}

/* Max pooling of the values behind packed bits. When the ops between the pool and the sign are non-decreasing in a
 * channel (the usual case: batch norm with a positive scale), sign(max v) is +1 if any sign is +1: the -1 bit is the
 * AND of the window's bits; when they are non-increasing it is the OR. `and_mask` sets, per word, the channels of the
 * first kind. Padded positions never win a max and are skipped. */
int cn_bit_maxpool(const uint64_t *in, int64_t batch, int64_t height, int64_t width, int64_t pix_words,
                   const uint64_t *and_mask, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                   int64_t pad_h, int64_t pad_w, int64_t out_height, int64_t out_width, uint64_t *out,
                   int64_t in_bytes, int64_t and_mask_bytes, int64_t out_bytes) {
    if (!in || !and_mask || !out || !CN_ALL_IN(0, batch, pad_h, pad_w) ||
        !CN_ALL_IN(1, height, width, pix_words, kernel_h, kernel_w, stride_h, stride_w) ||
        out_height != cn_window(height, kernel_h, stride_h, pad_h, 1) ||
        out_width != cn_window(width, kernel_w, stride_w, pad_w, 1) ||
        !cn_fits(CN_PRODUCT(batch, height, width, pix_words, 8), in_bytes) || !cn_fits(8 * pix_words, and_mask_bytes) ||
        !cn_fits(CN_PRODUCT(batch, out_height, out_width, pix_words, 8), out_bytes))
        return -3;
    for (int64_t n = 0; n < batch; n++)
        for (int64_t oh = 0; oh < out_height; oh++)
            for (int64_t ow = 0; ow < out_width; ow++) {
                uint64_t *o = out + ((n * out_height + oh) * out_width + ow) * pix_words;
                for (int64_t w = 0; w < pix_words; w++) o[w] = 0;
                for (int64_t kh = 0; kh < kernel_h; kh++) {
                    int64_t ih = oh * stride_h - pad_h + kh;
                    if (ih < 0 || ih >= height) continue;
                    for (int64_t kw = 0; kw < kernel_w; kw++) {
                        int64_t iw = ow * stride_w - pad_w + kw;
                        if (iw < 0 || iw >= width) continue;
                        const uint64_t *i = in + ((n * height + ih) * width + iw) * pix_words;
                        for (int64_t w = 0; w < pix_words; w++) o[w] |= i[w] ^ and_mask[w];
                    }
                }
                for (int64_t w = 0; w < pix_words; w++) o[w] ^= and_mask[w];
            }
    return 0;
}

/* ---------------------------------------------------------------- +-1 bytes (inputs of the AMX path) ------------- */

typedef struct {
    const float *x;
    int64_t npix, channels;
    const float *sign, *threshold;
    cn_signs_out out;
} cn_pack_call;

CN_CLONES static void task_pack_int8(void *c, int index, int count) {
    const cn_pack_call *k = c;
    const cn_signs_out *o = &k->out;
    int64_t begin, end;
    cn_share(k->npix, index, count, &begin, &end);
    /* locals: a byte store could alias the struct's fields (no vectorisation, reloads per channel) */
    const int64_t channels = k->channels;
    const float *restrict sign = k->sign, *restrict threshold = k->threshold;
    for (int64_t p = begin; p < end; p++) {
        const float *restrict x = k->x + p * channels;
        int64_t ow = p % o->width, oh = (p / o->width) % o->height, n = p / (o->width * o->height);
        int8_t *restrict out = signs_bytes(o, n, oh, ow);
        if (threshold)
            for (int64_t j = 0; j < channels; j++) out[j] = sign[j] * x[j] >= threshold[j] ? 1 : -1;
        else
            for (int64_t j = 0; j < channels; j++) out[j] = x[j] > 0.0f ? 1 : -1;
    }
}

/* Channels-last floats [N, H, W, C] -> +-1 bytes [N, H + 2 * pad_h, W + 2 * pad_w, C] (the border is not written),
 * -1 where !(x > 0), or with per-channel `sign` and `threshold`, where !(sign * x >= threshold), as cn_pack_signs. */
int cn_pack_signs_int8(const float *x, int64_t batch, int64_t height, int64_t width, int64_t channels,
                       const float *sign, const float *threshold, int8_t *out, int64_t pad_h, int64_t pad_w,
                       int threads, int64_t x_bytes, int64_t sign_bytes, int64_t threshold_bytes, int64_t out_bytes) {
    if (!sign != !threshold || pad_h < 0 || pad_w < 0) return -3;
    if (!x || !out || !CN_ALL_IN(0, batch, pad_h, pad_w) || !CN_ALL_IN(1, height, width, channels) ||
        !cn_fits(CN_PRODUCT(batch, height, width, channels, 4), x_bytes) ||
        !cn_fits(CN_PRODUCT(batch, height + 2 * pad_h, width + 2 * pad_w, channels), out_bytes) ||
        (threshold && (!cn_fits(4 * channels, sign_bytes) || !cn_fits(4 * channels, threshold_bytes))))
        return -3;
    cn_pack_call k = {x, batch * height * width, channels, sign, threshold,
                      {CN_OUT_INT8, channels, NULL, 0, 0, 0, 0, out, height, width, pad_h, pad_w}};
    cn_parallel(task_pack_int8, &k, threads < 1 ? 1 : threads);
    return 0;
}

CN_CLONES static void maxpool_int8_loop(const uint8_t *src, int64_t batch, int64_t height, int64_t width,
                                        int64_t channels, const uint8_t *restrict m, int64_t kernel_h, int64_t kernel_w,
                                        int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                        int64_t out_height, int64_t out_width, uint8_t *out, int64_t out_pad_h,
                                        int64_t out_pad_w) {
    /* restrict: input, mask and output bytes do not overlap (vectorised) */
    for (int64_t n = 0; n < batch; n++)
        for (int64_t oh = 0; oh < out_height; oh++)
            for (int64_t ow = 0; ow < out_width; ow++) {
                uint8_t *restrict o = out + ((n * (out_height + 2 * out_pad_h) + oh + out_pad_h) *
                                                 (out_width + 2 * out_pad_w) + ow + out_pad_w) * channels;
                for (int64_t c = 0; c < channels; c++) o[c] = 0;
                for (int64_t kh = 0; kh < kernel_h; kh++) {
                    int64_t ih = oh * stride_h - pad_h + kh;
                    if (ih < 0 || ih >= height) continue;
                    for (int64_t kw = 0; kw < kernel_w; kw++) {
                        int64_t iw = ow * stride_w - pad_w + kw;
                        if (iw < 0 || iw >= width) continue;
                        const uint8_t *restrict i = src + ((n * height + ih) * width + iw) * channels;
                        for (int64_t c = 0; c < channels; c++) o[c] |= i[c] ^ m[c];
                    }
                }
                for (int64_t c = 0; c < channels; c++) o[c] ^= m[c];
            }
}

/* Max pooling of +-1 bytes, as cn_bit_maxpool on bits: channel c is the max of its window where mask[c] is 0xfe
 * (the ops up to the next sign are non-decreasing there) and the min where it is 0, computed as the OR of
 * (x ^ mask), ^ mask: +1 (0x01) and -1 (0xff) differ in bits 1-7 only. Padded positions are skipped. The output
 * goes inside a zero border of out_pad_h/w (the next conv's padding). */
typedef struct {
    const uint8_t *in, *mask;
    int64_t batch, height, width, channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    int64_t out_height, out_width, out_pad_h, out_pad_w;
    uint8_t *out;
} cn_maxpool_call;

static void task_maxpool_int8(void *c, int index, int count) { /* images [begin, end) */
    const cn_maxpool_call *k = c;
    int64_t begin, end;
    cn_share(k->batch, index, count, &begin, &end);
    const int64_t image = k->height * k->width * k->channels;
    const int64_t out_image = (k->out_height + 2 * k->out_pad_h) * (k->out_width + 2 * k->out_pad_w) * k->channels;
    if (begin < end)
        maxpool_int8_loop(k->in + begin * image, end - begin, k->height, k->width, k->channels, k->mask, k->kernel_h,
                          k->kernel_w, k->stride_h, k->stride_w, k->pad_h, k->pad_w, k->out_height, k->out_width,
                          k->out + begin * out_image, k->out_pad_h, k->out_pad_w);
}

int cn_maxpool_int8(const int8_t *in, int64_t batch, int64_t height, int64_t width, int64_t channels,
                    const uint8_t *mask, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                    int64_t pad_h, int64_t pad_w, int64_t out_height, int64_t out_width, int8_t *out,
                    int64_t out_pad_h, int64_t out_pad_w, int64_t in_bytes, int64_t mask_bytes, int64_t out_bytes,
                    int threads) {
    if (!in || !mask || !out || !CN_ALL_IN(0, batch, pad_h, pad_w, out_pad_h, out_pad_w) ||
        !CN_ALL_IN(1, height, width, channels, kernel_h, kernel_w, stride_h, stride_w) ||
        out_height != cn_window(height, kernel_h, stride_h, pad_h, 1) ||
        out_width != cn_window(width, kernel_w, stride_w, pad_w, 1) ||
        !cn_fits(CN_PRODUCT(batch, height, width, channels), in_bytes) || !cn_fits(channels, mask_bytes) ||
        !cn_fits(CN_PRODUCT(batch, out_height + 2 * out_pad_h, out_width + 2 * out_pad_w, channels), out_bytes))
        return -3;
    cn_maxpool_call k = {(const uint8_t *)in, mask, batch, height, width, channels, kernel_h, kernel_w, stride_h,
                         stride_w, pad_h, pad_w, out_height, out_width, out_pad_h, out_pad_w, (uint8_t *)out};
    cn_parallel(task_maxpool_int8, &k, threads < 1 ? 1 : threads);
    return 0;
}

/* ---------------------------------------------------------------- average pooling into signs ------------------- */

typedef struct {
    const float *x;
    int64_t batch, height, width, channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    int64_t count_include_pad, divisor_override;
    const float *sign, *threshold;
    cn_signs_out out;
    atomic_int status;
} cn_avgpool_call;

CN_CLONES static void task_avgpool_pack(void *c, int index, int count) {
    cn_avgpool_call *k = c;
    const cn_signs_out *o = &k->out;
    int64_t begin, end;
    cn_share(k->batch * o->height * o->width, index, count, &begin, &end);
    float *sum = malloc(sizeof(float) * (size_t)k->channels);
    uint8_t *negative = calloc((size_t)(k->channels + 64), 1);
    if (!sum || !negative) {
        atomic_store(&k->status, -1);
        goto done;
    }
    for (int64_t p = begin; p < end; p++) {
        int64_t ow = p % o->width, oh = (p / o->width) % o->height, n = p / (o->width * o->height);
        /* torch's avg_pool2d: the window clipped to the padded input gives pool_size, then to the input */
        int64_t h0 = oh * k->stride_h - k->pad_h, w0 = ow * k->stride_w - k->pad_w;
        int64_t h1 = h0 + k->kernel_h < k->height + k->pad_h ? h0 + k->kernel_h : k->height + k->pad_h;
        int64_t w1 = w0 + k->kernel_w < k->width + k->pad_w ? w0 + k->kernel_w : k->width + k->pad_w;
        int64_t pool_size = (h1 - h0) * (w1 - w0);
        h0 = h0 > 0 ? h0 : 0;
        w0 = w0 > 0 ? w0 : 0;
        h1 = h1 < k->height ? h1 : k->height;
        w1 = w1 < k->width ? w1 : k->width;
        int64_t divide = k->divisor_override ? k->divisor_override
                                             : (k->count_include_pad ? pool_size : (h1 - h0) * (w1 - w0));
        const int64_t channels = k->channels; /* locals: the byte stores below could alias the struct */
        const float *restrict sign = k->sign, *restrict threshold = k->threshold;
        float *restrict total = sum;
        uint8_t *restrict neg = negative;
        for (int64_t j = 0; j < channels; j++) total[j] = 0.0f;
        for (int64_t ih = h0; ih < h1; ih++)
            for (int64_t iw = w0; iw < w1; iw++) {
                const float *restrict x = k->x + ((n * k->height + ih) * k->width + iw) * channels;
                for (int64_t j = 0; j < channels; j++) total[j] += x[j];
            }
        for (int64_t j = 0; j < channels; j++) neg[j] = !(sign[j] * (total[j] / (float)divide) >= threshold[j]);
        store_signs(o, negative, p, n, oh, ow, bytes_to_bits_portable);
    }
done:
    free(sum);
    free(negative);
}

/* avg_pool2d (torch's arithmetic: sum over the window in row order, then one division) of channels-last floats,
 * then pack_signs with per-channel `sign` and `threshold`, into bits or +-1 bytes (`out`). */
int cn_avgpool_pack(const float *x, int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t kernel_h,
                    int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                    int64_t count_include_pad, int64_t divisor_override, const float *sign, const float *threshold,
                    const cn_signs_out *out, int threads, int64_t x_bytes, int64_t sign_bytes,
                    int64_t threshold_bytes, int64_t out_bytes) {
    if (out->channels != channels || (out->mode != CN_OUT_BITS && out->mode != CN_OUT_INT8)) return -3;
    if (!x || !sign || !threshold || !CN_ALL_IN(0, batch, pad_h, pad_w, divisor_override) ||
        !CN_ALL_IN(1, height, width, channels, kernel_h, kernel_w, stride_h, stride_w) || 2 * pad_h > kernel_h ||
        2 * pad_w > kernel_w || out->height != cn_window(height, kernel_h, stride_h, pad_h, 1) ||
        out->width != cn_window(width, kernel_w, stride_w, pad_w, 1) ||
        !cn_fits(CN_PRODUCT(batch, height, width, channels, 4), x_bytes) || !cn_fits(4 * channels, sign_bytes) ||
        !cn_fits(4 * channels, threshold_bytes) || !cn_signs_ok(out, batch, out_bytes))
        return -3;
    cn_avgpool_call k = {x, batch, height, width, channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                         count_include_pad, divisor_override, sign, threshold, *out, 0};
    cn_parallel(task_avgpool_pack, &k, threads < 1 ? 1 : threads);
    return atomic_load(&k.status);
}

/* ---------------------------------------------------------------- float conv into signs (AMX bf16) -------------- */

/* A full-precision conv followed by pack_signs (the first layer of an XNOR net), in bfloat16 with float32 sums:
 * TDPBF16PS multiplies a 16 x K block of inputs (16 output pixels, K = chunk_k consecutive elements of their windows)
 * by a K x 16 block of weights. The input is first converted to bf16, channels-last, inside a zero border of the
 * conv's padding; a window row of kernel_w pixels is then contiguous (dilation 1), so a chunk is one tile load.
 * Chunk elements past a run have zero weights.
 *
 * Three bf16 products per term: x = x_hi + x_lo and w = w_hi + w_lo (hi = bf16(v), lo = bf16(v - hi)), and
 * x * w ~ x_hi w_hi + x_lo w_hi + x_hi w_lo, which leaves out at most 3 * 2**-18 |x| |w| (x_lo w_lo and what bf16
 * lo parts cannot hold). A pixel holds its C hi parts, then its C lo parts, so one chunk of inputs meets two weight
 * tiles: `weight` (w_hi against both) and `weight_lo` (w_lo against the hi parts, 0 against the lo ones). The float32
 * sums of those 2K products add at most (2K + 4) * 2**-24 * sum |x| |w|. One bf16 product alone moved outputs by up
 * to 2**-8 of that: on a trained nin_xnornet it flipped 0.05 % of the first layer's signs and 15 % of the
 * predictions. The signs are float32's: sum |x| |w| <= |w_c|_1 * max |x| over the window's rows (`l1`, `row_max`),
 * and a sign whose value lies within that bound (x 1.25) of its threshold is recomputed in float32 from the float
 * input and `weight32`. */
typedef struct {
    const float *input; /* [N, C, H, W] at the given element strides */
    int64_t batch, channels, height, width, stride_n, stride_c, stride_y, stride_x;
    uint16_t *padded; /* bf16 [N, H + 2 * pad_h, W + 2 * pad_w, 2C] (hi, lo), zero border, then readable slack */
    const uint16_t *weight; /* [16 output channels][chunk] tiles of chunk_k / 2 rows x 16 x 2 bf16 */
    const float *bias;
    int64_t out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_height, out_width, chunks, chunk_k;
    const int64_t *chunk_offset; /* elements from the window's first element */
    const float *sign, *threshold;
    cn_signs_out out;
    /* Byte lengths of the buffers above from each pointer on, checked by cn_fconv_pack (cn_fconv_ok). */
    int64_t input_bytes, padded_bytes, weight_bytes, bias_bytes, chunk_offset_bytes, sign_bytes, threshold_bytes,
        out_bytes;
    /* the float32 check: weights [out][kh][kw][C], their L1 norms [out], max |x| per input row [N * H] (written
     * here), and those buffers' byte lengths */
    const float *weight32, *l1;
    float *row_max;
    int64_t weight32_bytes, l1_bytes, row_max_bytes;
    /* the second weight tiles, laid out as `weight` */
    const uint16_t *weight_lo;
    int64_t weight_lo_bytes;
} cn_fconv_args;

typedef struct {
    const void *a; /* cn_fconv_args or cn_fconv32_args */
    atomic_int status;
} cn_fconv_call;

/* A fused float conv's two passes over the pool's threads: the input copied (and converted), then the conv. */
static int fconv_run(cn_task_fn copy, cn_task_fn conv, const void *args, int threads) {
    cn_fconv_call call = {args, 0};
    if (threads < 1) threads = 1;
    cn_parallel(copy, &call, threads);
    cn_parallel(conv, &call, threads);
    return atomic_load(&call.status);
}

static inline float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch's float -> bfloat16 (finite f) */
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

#ifdef CN_AMX
CN_CLONES static void task_to_bf16(void *c, int index, int count) {
    const cn_fconv_args *a = ((cn_fconv_call *)c)->a;
    const int64_t wp = a->width + 2 * a->pad_w, hp = a->height + 2 * a->pad_h;
    int64_t begin, end;
    cn_share(a->batch * a->height, index, count, &begin, &end);
    for (int64_t r = begin; r < end; r++) {
        int64_t n = r / a->height, y = r % a->height;
        uint16_t *out = a->padded + ((n * hp + y + a->pad_h) * wp + a->pad_w) * 2 * a->channels;
        const float *in = a->input + n * a->stride_n + y * a->stride_y;
        float largest = 0.0f;
        for (int64_t x = 0; x < a->width; x++)
            for (int64_t ch = 0; ch < a->channels; ch++) {
                float v = in[x * a->stride_x + ch * a->stride_c];
                uint16_t hi = to_bf16(v);
                out[x * 2 * a->channels + ch] = hi;
                out[(x * 2 + 1) * a->channels + ch] = to_bf16(v - from_bf16(hi));
                largest = fabsf(v) > largest ? fabsf(v) : largest;
            }
        a->row_max[r] = largest;
    }
}
#endif

/* Whether output pixel (n, oh, ow) of channel c is -1, from the float32 sum of its window. */
static int fconv_negative(const cn_fconv_args *a, int64_t c, int64_t n, int64_t oh, int64_t ow) {
    float exact = 0.0f; /* taps in (kh, kw, channel) order */
    const float *w = a->weight32 + c * a->kernel_h * a->kernel_w * a->channels;
    for (int64_t kh = 0; kh < a->kernel_h; kh++) {
        int64_t ih = oh * a->stride_h - a->pad_h + kh * a->dilation_h;
        for (int64_t kw = 0; kw < a->kernel_w; kw++, w += a->channels) {
            int64_t iw = ow * a->stride_w - a->pad_w + kw * a->dilation_w;
            if (ih < 0 || ih >= a->height || iw < 0 || iw >= a->width) continue;
            const float *x = a->input + n * a->stride_n + ih * a->stride_y + iw * a->stride_x;
            for (int64_t ch = 0; ch < a->channels; ch++) exact += x[ch * a->stride_c] * w[ch];
        }
    }
    return !(a->sign[c] * (exact + a->bias[c]) >= a->threshold[c]);
}

/* max |x| over the input rows of output row oh's windows */
static inline float fconv_window_max(const cn_fconv_args *a, int64_t n, int64_t oh) {
    float largest = 0.0f;
    for (int64_t kh = 0; kh < a->kernel_h; kh++) {
        int64_t ih = oh * a->stride_h - a->pad_h + kh * a->dilation_h;
        if (ih >= 0 && ih < a->height && a->row_max[n * a->height + ih] > largest)
            largest = a->row_max[n * a->height + ih];
    }
    return largest;
}

#ifdef CN_AMX
/* Where the sums of one output row decide their signs: channel j's threshold moved to the sum's side (sign_j * (s +
 * bias_j) >= threshold_j  <=>  s >= cut_j for sign +1, s <= cut_j for sign -1; cut_j = sign_j * threshold_j -
 * bias_j), widened by the bf16x3 rounding bound of the row's windows (see cn_fconv_args) and by float32's rounding
 * of bias, threshold and cut. A sum below lo_j or above hi_j decides; one in between is recomputed in float32. Per
 * pixel this leaves two compares per 16 channels (the bound computed per channel and pixel made nin_xnornet's first
 * conv 15 % slower: 0.145 vs 0.125 ms at batch 1, 9.6 vs 7.9 ms at batch 64, 1 thread). */
typedef struct {
    int64_t row;    /* n * out_height + oh of lo and hi; -1: none yet */
    float *lo, *hi; /* [out_channels] */
    float *cut, *slack; /* [out_channels]: the cut, and the part of the margin that is the same for every row */
    __mmask16 *flip; /* per 16 channels: those whose sign is -1 (a sum above hi is then -1) */
    uint8_t *bits;   /* the bitset of emit_signs16 (out_channels + 64 bytes) */
} cn_fconv_epilogue;

/* A task's epilogue state, with what every row shares; 0 when memory ran out (free_fconv_epilogue frees what was
 * taken either way). */
static int alloc_fconv_epilogue(const cn_fconv_args *a, cn_fconv_epilogue *e) {
    const int64_t cout = a->out_channels;
    e->row = -1;
    e->lo = malloc(sizeof(float) * (size_t)cout);
    e->hi = malloc(sizeof(float) * (size_t)cout);
    e->cut = malloc(sizeof(float) * (size_t)cout);
    e->slack = malloc(sizeof(float) * (size_t)cout);
    e->flip = calloc((size_t)((cout + 15) / 16), sizeof(__mmask16));
    e->bits = calloc((size_t)(cout + 64), 1);
    if (!e->lo || !e->hi || !e->cut || !e->slack || !e->flip || !e->bits) return 0;
    for (int64_t j = 0; j < cout; j++) {
        /* an infinite threshold (a channel whose sign never changes) leaves lo = hi = cut infinite: decided */
        const float t = fabsf(a->threshold[j]) < 0x1p100f ? fabsf(a->threshold[j]) : 0x1p100f;
        e->slack[j] = 0x1p-20f * (t + fabsf(a->bias[j])) + 0x1p-100f;
        e->cut[j] = a->sign[j] * a->threshold[j] - a->bias[j];
        e->flip[j / 16] |= (__mmask16)((a->sign[j] < 0.0f) << (j % 16));
    }
    return 1;
}

static void free_fconv_epilogue(cn_fconv_epilogue *e) {
    free(e->lo);
    free(e->hi);
    free(e->cut);
    free(e->slack);
    free(e->flip);
    free(e->bits);
}

/* lo and hi of output row (n, oh): the margin is the row's rounding bound plus the slack. */
__attribute__((target(CN_AVX512_SIGNS))) static void fconv_cuts(const cn_fconv_args *a, int64_t n, int64_t oh,
                                                                 cn_fconv_epilogue *e) {
    const int64_t terms = 2 * a->chunks * a->chunk_k;
    const __m512 scale =
        _mm512_set1_ps(1.25f * (3.0f * 0x1p-18f + (float)(terms + 4) * 0x1p-24f) * fconv_window_max(a, n, oh));
    for (int64_t j = 0; j < a->out_channels; j += 16) {
        const __mmask16 live = live16(j, a->out_channels);
        const __m512 margin = _mm512_add_ps(_mm512_mul_ps(scale, _mm512_maskz_loadu_ps(live, a->l1 + j)),
                                            _mm512_maskz_loadu_ps(live, e->slack + j));
        const __m512 cut = _mm512_maskz_loadu_ps(live, e->cut + j);
        _mm512_mask_storeu_ps(e->lo + j, live, _mm512_sub_ps(cut, margin));
        _mm512_mask_storeu_ps(e->hi + j, live, _mm512_add_ps(cut, margin));
    }
    e->row = n * a->out_height + oh;
}

/* The signs of output pixel p = (n, oh, ow) from its bf16x3 sums `row` [out_channels], 16 channels per compare. */
__attribute__((target(CN_AVX512_SIGNS))) static inline __attribute__((always_inline)) void fconv_signs(
    const cn_fconv_args *a, cn_fconv_epilogue *e, const float *restrict row, int64_t n, int64_t oh, int64_t ow,
    int64_t p) {
    if (e->row != n * a->out_height + oh) fconv_cuts(a, n, oh, e);
    const int64_t cout = a->out_channels;
    int8_t *bytes = a->out.mode == CN_OUT_INT8 ? signs_bytes(&a->out, n, oh, ow) : NULL;
    for (int64_t j = 0; j < cout; j += 16) {
        const __mmask16 live = live16(j, cout), flip = e->flip[j / 16];
        const __m512 s = _mm512_maskz_loadu_ps(live, row + j);
        const __mmask16 below = _mm512_mask_cmp_ps_mask(live, s, _mm512_maskz_loadu_ps(live, e->lo + j), _CMP_LT_OQ);
        const __mmask16 above = _mm512_mask_cmp_ps_mask(live, s, _mm512_maskz_loadu_ps(live, e->hi + j), _CMP_GT_OQ);
        __mmask16 negative = (below & (__mmask16)~flip) | (above & flip);
        for (__mmask16 unsure = live & (__mmask16)~(below | above); unsure; unsure &= (__mmask16)(unsure - 1)) {
            const int bit = __builtin_ctz(unsure);
            negative = (__mmask16)((negative & ~(1u << bit)) | (unsigned)fconv_negative(a, j + bit, n, oh, ow) << bit);
        }
        emit_signs16(bytes, e->bits, j, live, negative);
    }
    if (!bytes) store_bitset(&a->out, (const uint64_t *)(const void *)e->bits, p);
}


__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq"))) static void task_fconv(void *c,
                                                                                                     int index,
                                                                                                     int count) {
    cn_fconv_call *call = c;
    const cn_fconv_args *a = call->a;
    /* the tiling of the int8 conv, over an input of bf16 pixels */
    cn_bconv_args geometry = {0};
    geometry.batch = a->batch, geometry.height = a->height, geometry.width = a->width;
    geometry.kernel_h = a->kernel_h, geometry.kernel_w = a->kernel_w, geometry.stride_h = a->stride_h;
    geometry.stride_w = a->stride_w, geometry.pad_h = a->pad_h, geometry.pad_w = a->pad_w;
    geometry.out_height = a->out_height, geometry.out_width = a->out_width;
    const cn_tiling t = amx_tiling(&geometry, 4 * a->channels); /* bytes per pixel: 2C bf16 */
    int64_t begin, end;
    cn_share((t.count + 1) / 2, index, count, &begin, &end);
    if (begin >= end) return;
    const int64_t nblocks = (a->out_channels + 15) / 16, sums_width = nblocks * 16;
    const int64_t wtile = a->chunk_k * 32, wblock = a->chunks * wtile; /* bytes */
    const int64_t unit_pixels = 2 * t.m, block_units = amx_block_units(unit_pixels, sums_width);
    float *sums = aligned_alloc(64, sizeof(float) * (size_t)(block_units * unit_pixels * sums_width));
    int64_t *origin = malloc(sizeof(int64_t) * (size_t)(2 * block_units));
    cn_fconv_epilogue epilogue;
    const int epilogue_ok = alloc_fconv_epilogue(a, &epilogue);
    if (!sums || !origin || !epilogue_ok) {
        atomic_store(&call->status, -1);
        goto done;
    }
    cn_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = (uint16_t)(i == 4 || i == 5 ? 2 * a->chunk_k : 64);
        cfg.rows[i] = (uint8_t)(i < 6 ? t.m : a->chunk_k / 2);
    }
    _tile_loadconfig(&cfg);
    const char *input = (const char *)a->padded, *weight = (const char *)a->weight;
    const int64_t lo_weight = (const char *)a->weight_lo - weight;
    const size_t sums_stride = sizeof(float) * (size_t)sums_width;
    for (int64_t b0 = begin; b0 < end; b0 += block_units) { /* as task_amx: weights stay in L1 over a block */
        const int64_t b1 = b0 + block_units < end ? b0 + block_units : end;
        for (int64_t u = b0; u < b1; u++)
            for (int64_t i = 0; i < 2 && 2 * u + i < t.count; i++) {
                int64_t n, oh, ow;
                tile_origin(&t, &geometry, 2 * u + i, &n, &oh, &ow, &origin[2 * (u - b0) + i]);
            }
        for (int64_t nb = 0; nb < nblocks; nb += 2) {
            const int two_ch = nb + 1 < nblocks;
            const char *w0 = weight + nb * wblock;
            for (int64_t u = b0; u < b1; u++) {
                const int two = 2 * u + 1 < t.count;
                const char *base0 = input + origin[2 * (u - b0)] * 4 * a->channels;
                const char *base1 = input + origin[2 * (u - b0) + two] * 4 * a->channels;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t k = 0; k < a->chunks; k++) {
                    const int64_t off = 2 * a->chunk_offset[k];
                    _tile_loadd(4, base0 + off, t.row_stride);
                    if (two) _tile_loadd(5, base1 + off, t.row_stride);
                    for (int part = 0; part < 2; part++) { /* (x_hi, x_lo) w_hi, then x_hi w_lo */
                        const char *w = w0 + (part ? lo_weight : 0) + k * wtile;
                        _tile_loadd(6, w, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        if (two_ch) {
                            _tile_loadd(7, w + wblock, 64);
                            _tile_dpbf16ps(1, 4, 7);
                        }
                        if (two) {
                            _tile_dpbf16ps(2, 5, 6);
                            if (two_ch) _tile_dpbf16ps(3, 5, 7);
                        }
                    }
                }
                float *s0 = sums + (u - b0) * unit_pixels * sums_width + nb * 16, *s1 = s0 + t.m * sums_width;
                _tile_stored(0, s0, sums_stride);
                if (two_ch) _tile_stored(1, s0 + 16, sums_stride);
                if (two) {
                    _tile_stored(2, s1, sums_stride);
                    if (two_ch) _tile_stored(3, s1 + 16, sums_stride);
                }
            }
        }
        for (int64_t u = b0; u < b1; u++)
            for (int64_t i = 0; i < 2 && 2 * u + i < t.count; i++) {
                int64_t n, oh, ow, p, rows = tile_pixels(&t, &geometry, 2 * u + i, &n, &oh, &ow, &p);
                for (int64_t r = 0; r < rows; r++, next_pixel(&geometry, &n, &oh, &ow, &p)) {
                    const float *restrict row = sums + ((u - b0) * unit_pixels + i * t.m + r) * sums_width;
                    fconv_signs(a, &epilogue, row, n, oh, ow, p);
                }
            }
    }
    _tile_release();
done:
    free(sums);
    free(origin);
    free_fconv_epilogue(&epilogue);
}
#endif

/* A float conv's sizes and geometry (what cn_fconv_pack and cn_fconv32_pack share), and its signs' buffer. */
static int cn_fconv_shape_ok(int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t out_channels,
                             int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                             int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t out_height,
                             int64_t out_width, const cn_signs_out *out, int64_t out_bytes) {
    return CN_ALL_IN(0, batch, pad_h, pad_w) &&
           CN_ALL_IN(1, channels, height, width, out_channels, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
                     dilation_w) &&
           out_height == cn_window(height, kernel_h, stride_h, pad_h, dilation_h) &&
           out_width == cn_window(width, kernel_w, stride_w, pad_w, dilation_w) && out->channels == out_channels &&
           out->height == out_height && out->width == out_width && cn_signs_ok(out, batch, out_bytes);
}

/* Whether the floats of an [N, C, H, W] input read at these element strides lie within `bytes`. */
static int cn_strided_fits(int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t stride_n,
                           int64_t stride_c, int64_t stride_y, int64_t stride_x, int64_t bytes) {
    if (stride_n < 0 || stride_c < 0 || stride_y < 0 || stride_x < 0) return 0;
    int64_t last = 0, term;
    const int64_t index[4][2] = {{batch, stride_n}, {height, stride_y}, {width, stride_x}, {channels, stride_c}};
    for (int i = 0; i < 4 && batch > 0; i++)
        if (__builtin_mul_overflow(index[i][0] - 1, index[i][1], &term) || __builtin_add_overflow(last, term, &last))
            return 0;
    return batch == 0 || cn_fits(CN_PRODUCT(last + 1, 4), bytes);
}

/* What cn_fconv_ok and cn_fconv32_ok check alike, of arguments whose structs name these fields alike. */
#define CN_FCONV_COMMON_OK(a)                                                                                          \
    (cn_fconv_shape_ok((a)->batch, (a)->channels, (a)->height, (a)->width, (a)->out_channels, (a)->kernel_h,           \
                       (a)->kernel_w, (a)->stride_h, (a)->stride_w, (a)->pad_h, (a)->pad_w, (a)->dilation_h,           \
                       (a)->dilation_w, (a)->out_height, (a)->out_width, &(a)->out, (a)->out_bytes) &&                 \
     cn_strided_fits((a)->batch, (a)->channels, (a)->height, (a)->width, (a)->stride_n, (a)->stride_c, (a)->stride_y, \
                     (a)->stride_x, (a)->input_bytes))

#ifdef CN_AMX
/* cn_fconv_pack's arguments against the byte lengths of its buffers. */
static int cn_fconv_ok(const cn_fconv_args *a) {
    if (!a->input || !a->padded || !a->weight || !a->bias || !a->chunk_offset || !a->sign || !a->threshold ||
        !cn_in(a->chunks, 1) ||
        !CN_FCONV_COMMON_OK(a))
        return 0;
    const int64_t c = a->channels, wp = a->width + 2 * a->pad_w, cout = a->out_channels;
    /* bf16 pixels (2C elements: hi and lo parts) inside the padding border; a chunk starts inside a window and runs
     * at most 32 elements past its end (zero weights there), so the last tile's rows need 15 * stride_w pixels + 32
     * elements of slack */
    const int64_t pe = 2 * c;
    const int64_t window = ((a->kernel_h - 1) * a->dilation_h * wp + (a->kernel_w - 1) * a->dilation_w + 1) * pe;
    const int64_t image = CN_PRODUCT(a->batch, a->height + 2 * a->pad_h, wp, pe);
    if (image < 0 || !cn_fits(2 * (image + 15 * a->stride_w * pe + 32), a->padded_bytes) ||
        !cn_fits(CN_PRODUCT((cout + 15) / 16, a->chunks, a->chunk_k, 32), a->weight_bytes) ||
        !cn_fits(4 * cout, a->bias_bytes) || !cn_fits(4 * cout, a->sign_bytes) ||
        !cn_fits(4 * cout, a->threshold_bytes) || !cn_fits(8 * a->chunks, a->chunk_offset_bytes))
        return 0;
    for (int64_t k = 0; k < a->chunks; k++)
        if (a->chunk_offset[k] < 0 || a->chunk_offset[k] + a->chunk_k > window + 32) return 0;
    return 1;
}
#endif

#ifdef CN_AMX
/* The same conv with AVX512-BF16 (VDPBF16PS) for CPUs without AMX tiles: the weight tiles are its operands as they
 * are (a row: 16 output channels x one pair of elements), each input pair broadcast. Two pixels x up to 96 output
 * channels accumulate together. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void task_fconv_avx512(void *c, int index,
                                                                                             int count) {
    cn_fconv_call *call = c;
    const cn_fconv_args *a = call->a;
    const int64_t hp = a->height + 2 * a->pad_h, wp = a->width + 2 * a->pad_w, ch = a->channels;
    const int64_t cout = a->out_channels, nblocks = (cout + 15) / 16, pairs = a->chunk_k / 2;
    const int64_t total = a->batch * a->out_height * a->out_width;
    int64_t begin, end;
    cn_share(total, index, count, &begin, &end);
    if (begin >= end) return;
    float *sums = aligned_alloc(64, sizeof(float) * (size_t)(2 * nblocks * 16));
    cn_fconv_epilogue epilogue;
    const int epilogue_ok = alloc_fconv_epilogue(a, &epilogue);
    if (!sums || !epilogue_ok) {
        atomic_store(&call->status, -1);
        goto done;
    }
    for (int64_t p0 = begin; p0 < end; p0 += 2) {
        const int two = p0 + 1 < end;
        int64_t n[2], oh[2], ow[2];
        const uint16_t *in[2];
        for (int j = 0; j <= two; j++) {
            int64_t p = p0 + j;
            ow[j] = p % a->out_width;
            oh[j] = (p / a->out_width) % a->out_height;
            n[j] = p / (a->out_width * a->out_height);
            in[j] = a->padded + ((n[j] * hp + oh[j] * a->stride_h) * wp + ow[j] * a->stride_w) * 2 * ch;
        }
        for (int64_t nb0 = 0; nb0 < nblocks; nb0 += 6) {
            const int64_t group = nblocks - nb0 < 6 ? nblocks - nb0 : 6;
            __m512 acc0[6], acc1[6];
            for (int q = 0; q < 6; q++) acc0[q] = acc1[q] = _mm512_setzero_ps();
            for (int64_t k = 0; k < a->chunks; k++) {
                const int64_t off = a->chunk_offset[k];
                for (int64_t r = 0; r < pairs; r++) {
                    int32_t pair0, pair1 = 0; /* a pair of elements, against both weight tiles (as the AMX path) */
                    memcpy(&pair0, in[0] + off + 2 * r, sizeof(pair0));
                    if (two) memcpy(&pair1, in[1] + off + 2 * r, sizeof(pair1));
                    const __m512bh x0 = (__m512bh)_mm512_set1_epi32(pair0), x1 = (__m512bh)_mm512_set1_epi32(pair1);
                    const int64_t w_at = ((nb0 * a->chunks + k) * pairs + r) * 32;
                    for (int q = 0; q < group; q++) {
                        const int64_t wq = w_at + q * a->chunks * pairs * 32;
                        const __m512bh wh = (__m512bh)_mm512_loadu_si512((const void *)(a->weight + wq));
                        const __m512bh wl = (__m512bh)_mm512_loadu_si512((const void *)(a->weight_lo + wq));
                        acc0[q] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc0[q], x0, wh), x0, wl);
                        acc1[q] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc1[q], x1, wh), x1, wl);
                    }
                }
            }
            for (int q = 0; q < group; q++) {
                _mm512_store_ps(sums + (nb0 + q) * 16, acc0[q]);
                _mm512_store_ps(sums + (nblocks + nb0 + q) * 16, acc1[q]);
            }
        }
        for (int j = 0; j <= two; j++)
            fconv_signs(a, &epilogue, sums + j * nblocks * 16, n[j], oh[j], ow[j], p0 + j);
    }
done:
    free(sums);
    free_fconv_epilogue(&epilogue);
}

static int avx512_bf16_available(void) {
    unsigned eax, ebx, ecx, edx;
    return cn_isa_supported(CN_ISA_AVX512) && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax >> 5 & 1);
}
#endif

/* Whether cn_fconv_pack runs `isa` here: CN_ISA_AMX (bf16 tiles, and the process may use them) or CN_ISA_AVX512
 * (AVX512-BF16). */
int cn_fconv_supported(int isa) {
#ifdef CN_AMX
    if (isa == CN_ISA_AMX) return amx_available(1);
    if (isa == CN_ISA_AVX512) return avx512_bf16_available();
#endif
    (void)isa;
    return 0;
}

/* Returns 0, -1 when memory ran out, -2 when this CPU lacks `isa` (see cn_fconv_supported), -3 for bad arguments. */
int cn_fconv_pack(const cn_fconv_args *a, int isa, int threads) {
    if (!cn_fconv_supported(isa)) return -2;
#ifdef CN_AMX
    if (!cn_fconv_ok(a)) return -3;
    if (a->out.channels != a->out_channels || a->chunk_k % 2 || a->chunk_k < 2 || a->chunk_k > 32) return -3;
    if (!a->weight32 || !a->l1 || !a->row_max ||
        !cn_fits(CN_PRODUCT(a->out_channels, a->kernel_h, a->kernel_w, a->channels, 4), a->weight32_bytes) ||
        !cn_fits(CN_PRODUCT(a->out_channels, 4), a->l1_bytes) ||
        !cn_fits(CN_PRODUCT(a->batch, a->height, 4), a->row_max_bytes) || !a->weight_lo ||
        a->weight_lo_bytes < a->weight_bytes)
        return -3;
    return fconv_run(task_to_bf16, isa == CN_ISA_AMX ? task_fconv : task_fconv_avx512, a, threads);
#else
    (void)a;
    (void)threads;
    return -2;
#endif
}

/* ---------------------------------------------------------------- float conv into signs (float32, AVX2) --------- */

/* The same fusion in float32 with AVX2 and FMA (for CPUs without a bf16 path above all): no rounding bound and no
 * recompute, the sums are float32's, each over its window in (kh, kw, channel) order, then +bias, and a sign is
 * decided as pack_signs decides it: -1 where !(sign * value >= threshold). It differs from torch's float32 conv by
 * summation order only, as torch's own algorithms differ from each other. Eight output channels per vector; four
 * output pixels of a row times 24 channels accumulate together (12 registers), each weight vector loaded once for
 * the four pixels and each input element broadcast once for three vectors. The input is first copied channels-last
 * inside a zero border, so that a window is a few runs of contiguous floats. */
typedef struct {
    const float *input; /* [N, C, H, W] at the given element strides */
    int64_t batch, channels, height, width, stride_n, stride_c, stride_y, stride_x;
    float *padded;       /* [N, H + 2 * pad_h, W + 2 * pad_w, C]: the border zero as allocated, the rest written here */
    const float *weight; /* [blocks][kernel_h * kernel_w * C][24], blocks = ceil(out_channels / 24), 0 past them */
    int64_t out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_height, out_width;
    const float *bias, *sign, *threshold; /* [blocks * 24] each (what is past out_channels is not read into a sign) */
    cn_signs_out out;
    /* Byte lengths of the buffers above from each pointer on, checked by cn_fconv32_pack (cn_fconv32_ok). */
    int64_t input_bytes, padded_bytes, weight_bytes, bias_bytes, sign_bytes, threshold_bytes, out_bytes;
} cn_fconv32_args;

#define CN_F32_PIXELS 4
#define CN_F32_BLOCK 24 /* output channels per block: 3 vectors */

#ifdef CN_X86
CN_CLONES static void task_to_f32(void *c, int index, int count) {
    const cn_fconv32_args *a = ((cn_fconv_call *)c)->a;
    const int64_t wp = a->width + 2 * a->pad_w, hp = a->height + 2 * a->pad_h, ch = a->channels;
    int64_t begin, end;
    cn_share(a->batch * a->height, index, count, &begin, &end);
    for (int64_t r = begin; r < end; r++) {
        const int64_t n = r / a->height, y = r % a->height;
        float *restrict out = a->padded + ((n * hp + y + a->pad_h) * wp + a->pad_w) * ch;
        const float *in = a->input + n * a->stride_n + y * a->stride_y;
        for (int64_t x = 0; x < a->width; x++)
            for (int64_t k = 0; k < ch; k++) out[x * ch + k] = in[x * a->stride_x + k * a->stride_c];
    }
}

/* Sums of `np` (1 or CN_F32_PIXELS) pixels of a row, `pixel` floats apart in `in`, for 24 channels of weights `w`,
 * decided into the pixels' -1 bitsets (`bits` + i * bits_stride) at channel j. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void fconv32_block(
    const cn_fconv32_args *a, const float *in, int64_t pixel, const float *restrict w, int64_t j, int np,
    uint8_t *bits, int64_t bits_stride) {
    const int64_t ch = a->channels, wp = a->width + 2 * a->pad_w;
    __m256 acc[CN_F32_PIXELS][3];
    for (int i = 0; i < CN_F32_PIXELS; i++) acc[i][0] = acc[i][1] = acc[i][2] = _mm256_setzero_ps();
    for (int64_t kh = 0; kh < a->kernel_h; kh++)
        for (int64_t kw = 0; kw < a->kernel_w; kw++) {
            const float *x = in + (kh * a->dilation_h * wp + kw * a->dilation_w) * ch;
            for (int64_t k = 0; k < ch; k++, w += CN_F32_BLOCK) {
                const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8), w2 = _mm256_loadu_ps(w + 16);
                for (int i = 0; i < np; i++) {
                    const __m256 v = _mm256_broadcast_ss(x + i * pixel + k);
                    acc[i][0] = _mm256_fmadd_ps(v, w0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(v, w1, acc[i][1]);
                    acc[i][2] = _mm256_fmadd_ps(v, w2, acc[i][2]);
                }
            }
        }
    const int64_t live = a->out_channels - j; /* channels of this block that exist */
    for (int q = 0; q < 3 && 8 * q < live; q++) {
        const int64_t at = j + 8 * q;
        const unsigned keep = live - 8 * q >= 8 ? 0xffu : (1u << (live - 8 * q)) - 1;
        const __m256 bias = _mm256_loadu_ps(a->bias + at), sign = _mm256_loadu_ps(a->sign + at);
        const __m256 threshold = _mm256_loadu_ps(a->threshold + at);
        for (int i = 0; i < np; i++) {
            const __m256 value = _mm256_mul_ps(sign, _mm256_add_ps(acc[i][q], bias));
            const unsigned kept = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(value, threshold, _CMP_GE_OQ));
            bits[i * bits_stride + at / 8] = (uint8_t)(~kept & keep);
        }
    }
}

static void fconv32_store(const cn_fconv32_args *a, const uint8_t *bits, int64_t n, int64_t oh, int64_t ow,
                          int64_t p) {
    if (a->out.mode == CN_OUT_INT8) {
        int8_t *restrict out = signs_bytes(&a->out, n, oh, ow);
        for (int64_t j = 0; j < a->out_channels; j++) out[j] = (int8_t)(1 - 2 * (bits[j / 8] >> (j % 8) & 1));
    } else
        store_bitset(&a->out, (const uint64_t *)(const void *)bits, p);
}

__attribute__((target("avx2,fma"))) static void task_fconv32(void *c, int index, int count) {
    cn_fconv_call *call = c;
    const cn_fconv32_args *a = call->a;
    const int64_t ch = a->channels, wp = a->width + 2 * a->pad_w, hp = a->height + 2 * a->pad_h;
    const int64_t blocks = (a->out_channels + CN_F32_BLOCK - 1) / CN_F32_BLOCK;
    const int64_t terms = a->kernel_h * a->kernel_w * ch, pixel = a->stride_w * ch;
    const int64_t bits_stride = 8 * ((a->out_channels + 63) / 64 + 1); /* bytes: store_bitset reads a word past */
    int64_t begin, end;
    cn_share(a->batch * a->out_height, index, count, &begin, &end);
    if (begin >= end) return;
    uint8_t *bits = calloc((size_t)(CN_F32_PIXELS * bits_stride), 1); /* bytes past the channels stay 0 */
    if (!bits) {
        atomic_store(&call->status, -1);
        return;
    }
    for (int64_t r = begin; r < end; r++) {
        const int64_t n = r / a->out_height, oh = r % a->out_height;
        const float *row = a->padded + (n * hp + oh * a->stride_h) * wp * ch;
        for (int64_t ow = 0, np; ow < a->out_width; ow += np) {
            np = a->out_width - ow >= CN_F32_PIXELS ? CN_F32_PIXELS : 1; /* the row's tail one pixel at a time */
            const float *in = row + ow * pixel;
            for (int64_t b = 0; b < blocks; b++) {
                const float *w = a->weight + b * terms * CN_F32_BLOCK;
                if (np == CN_F32_PIXELS)
                    fconv32_block(a, in, pixel, w, b * CN_F32_BLOCK, CN_F32_PIXELS, bits, bits_stride);
                else
                    fconv32_block(a, in, pixel, w, b * CN_F32_BLOCK, 1, bits, bits_stride);
            }
            for (int64_t i = 0; i < np; i++)
                fconv32_store(a, bits + i * bits_stride, n, oh, ow + i, r * a->out_width + ow + i);
        }
    }
    free(bits);
}

/* cn_fconv32_pack's arguments against the byte lengths of its buffers. */
static int cn_fconv32_ok(const cn_fconv32_args *a) {
    if (!a->input || !a->padded || !a->weight || !a->bias || !a->sign || !a->threshold ||
        !CN_FCONV_COMMON_OK(a))
        return 0;
    const int64_t blocks = (a->out_channels + CN_F32_BLOCK - 1) / CN_F32_BLOCK;
    const int64_t padded = CN_PRODUCT(a->batch, a->height + 2 * a->pad_h, a->width + 2 * a->pad_w, a->channels, 4);
    const int64_t weight = CN_PRODUCT(blocks, a->kernel_h, a->kernel_w, a->channels, CN_F32_BLOCK, 4);
    const int64_t per_channel = CN_PRODUCT(blocks, CN_F32_BLOCK, 4);
    return cn_fits(padded, a->padded_bytes) && cn_fits(weight, a->weight_bytes) &&
           cn_fits(per_channel, a->bias_bytes) && cn_fits(per_channel, a->sign_bytes) &&
           cn_fits(per_channel, a->threshold_bytes);
}
#endif

/* Whether cn_fconv32_pack runs here (AVX2 and FMA). */
int cn_fconv32_supported(void) {
#ifdef CN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Returns 0, -1 when memory ran out, -2 when this CPU lacks AVX2 or FMA, -3 for bad arguments. */
int cn_fconv32_pack(const cn_fconv32_args *a, int threads) {
    if (!cn_fconv32_supported()) return -2;
#ifdef CN_X86
    if (!cn_fconv32_ok(a)) return -3;
    return fconv_run(task_to_f32, task_fconv32, a, threads);
#else
    (void)a;
    (void)threads;
    return -2;
#endif
}

/* ---------------------------------------------------------------- classifier head ------------------------------- */

CN_CLONES static void head_loop(const float *x, int64_t batch, int64_t pixels, int64_t channels,
                                const float *restrict weight, const float *restrict bias, int64_t classes, int64_t relu,
                                float *restrict out) {
    /* Each logit as 16 partial sums over channels c = l (mod 16), then added up: vector lanes, a fixed order. */
    const int64_t full = channels / 16 * 16;
    for (int64_t n = 0; n < batch; n++) {
        for (int64_t k = 0; k < classes; k++) out[n * classes + k] = 0.0f;
        for (int64_t p = 0; p < pixels; p++) {
            const float *restrict v = x + (n * pixels + p) * channels;
            for (int64_t k = 0; k < classes; k++) {
                const float *restrict w = weight + k * channels;
                float part[16] = {0};
                for (int64_t c = 0; c < full; c += 16)
                    for (int l = 0; l < 16; l++) part[l] += v[c + l] * w[c + l];
                float y = 0.0f;
                for (int l = 0; l < 16; l++) y += part[l];
                for (int64_t c = full; c < channels; c++) y += v[c] * w[c];
                y += bias[k];
                out[n * classes + k] += relu && !(y > 0.0f) ? 0.0f : y;
            }
        }
        for (int64_t k = 0; k < classes; k++) out[n * classes + k] /= (float)pixels;
    }
}

/* A 1x1 conv (groups 1, `weight` [classes, C]) over channels-last floats [N, P, C], an optional ReLU,
 * then the mean over the P pixels (a global average pool): [N, classes]. One pass instead of four torch calls, each
 * of which costs more than this arithmetic on a classifier's small tensors. Returns 0, or -3 for bad arguments. */
typedef struct {
    const float *x, *weight, *bias;
    int64_t batch, pixels, channels, classes, relu;
    float *out;
} cn_head_call;

static void task_head(void *c, int index, int count) { /* images [begin, end) */
    const cn_head_call *k = c;
    int64_t begin, end;
    cn_share(k->batch, index, count, &begin, &end);
    if (begin < end)
        head_loop(k->x + begin * k->pixels * k->channels, end - begin, k->pixels, k->channels, k->weight, k->bias,
                  k->classes, k->relu, k->out + begin * k->classes);
}

int cn_head(const float *x, int64_t batch, int64_t pixels, int64_t channels, const float *weight, const float *bias,
            int64_t classes, int64_t relu, float *out, int64_t x_bytes, int64_t weight_bytes, int64_t bias_bytes,
            int64_t out_bytes, int threads) {
    if (!x || !weight || !bias || !out || !cn_in(batch, 0) || !CN_ALL_IN(1, pixels, channels, classes) ||
        !cn_fits(CN_PRODUCT(batch, pixels, channels, 4), x_bytes) ||
        !cn_fits(CN_PRODUCT(classes, channels, 4), weight_bytes) || !cn_fits(CN_PRODUCT(classes, 4), bias_bytes) ||
        !cn_fits(CN_PRODUCT(batch, classes, 4), out_bytes))
        return -3;
    cn_head_call k = {x, weight, bias, batch, pixels, channels, classes, relu, out};
    cn_parallel(task_head, &k, threads < 1 ? 1 : threads);
    return 0;
}
