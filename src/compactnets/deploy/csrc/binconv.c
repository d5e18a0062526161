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
 * Outputs. Either floats, alpha * dot + bias (optionally ReLU), channels-last; or the next layer's packed bits: the
 * bit of channel j is set when NOT (sign_j * dot[order_j] >= threshold_j), where the exporter has folded bias, ReLU,
 * the next block's batch norm and the sign into (sign_j, threshold_j), and channel shuffles into order_j.
 *
 * Dispatch. Each instruction-set path is a function compiled with __attribute__((target)) and chosen at run time
 * with __builtin_cpu_supports; nothing is built for the compiling machine's own CPU.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define CN_X86 1
#include <immintrin.h>
#endif

enum { CN_ISA_AUTO = 0, CN_ISA_PORTABLE = 1, CN_ISA_AVX2 = 2, CN_ISA_AVX512 = 3 };
enum { CN_OUT_FLOAT = 0, CN_OUT_BITS = 1 };
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
} cn_bconv_args;

typedef void (*block_fn)(const uint64_t *const *taps, int64_t ntaps, int64_t words, const uint64_t *weight,
                         int64_t out_pad, int64_t nvec, int32_t *acc);

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

int cn_isa_supported(int isa) {
    if (isa == CN_ISA_PORTABLE) return 1;
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

typedef struct {
    const cn_bconv_args *a;
    int64_t begin, end; /* output pixels, flattened over (n, oh, ow) */
    int status;
} cn_work;

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

/* The pixel loop, written once and specialised per path (always_inline into each target function below, so that
 * the block kernel is called directly and the per-channel epilogue is vectorised with that path's instructions). */
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

static inline __attribute__((always_inline)) void pixel_loop(cn_work *work, block_fn block, bits_fn to_bits) {
    const cn_bconv_args *a = work->a;
    const int64_t ntaps = a->kernel_h * a->kernel_w;
    const int64_t cout = a->groups * a->out_per_group;
    const int64_t nvec = a->out_pad / CN_LANES;
    const int32_t full_k = (int32_t)(ntaps * a->in_channels_per_group);
    const int64_t cpg = a->out_channels_per_group;
    const uint64_t **taps = malloc(sizeof(*taps) * (size_t)ntaps);
    const uint64_t **gtaps = malloc(sizeof(*gtaps) * (size_t)ntaps);
    uint64_t *zeros = calloc((size_t)a->in_pix_words, sizeof(uint64_t));
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(a->groups * a->out_pad));
    int32_t *dot = malloc(sizeof(int32_t) * (size_t)cout);
    uint8_t *negative = calloc((size_t)(cout + 64), 1); /* + 64: whole words read past the last channel */
    unsigned char *padded = malloc((size_t)ntaps);
    if (!taps || !gtaps || !zeros || !acc || !dot || !negative || !padded) {
        work->status = -1;
        goto done;
    }
    /* (n, oh, ow) of the first pixel, then stepped: no divisions per pixel */
    int64_t ow = work->begin % a->out_width, oh = (work->begin / a->out_width) % a->out_height;
    int64_t n = work->begin / (a->out_width * a->out_height);
    for (int64_t p = work->begin; p < work->end; p++, ow++) {
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
        if (a->mode == CN_OUT_FLOAT) {
            float *out = a->out_float + p * cout;
            for (int64_t j = 0; j < cout; j++) {
                float v = a->alpha[j] * (float)dot[j] + a->bias[j];
                out[j] = a->relu && !(v > 0.0f) ? 0.0f : v;
            }
        } else {
            if (a->out_order)
                for (int64_t j = 0; j < cout; j++)
                    negative[j] = a->threshold_sign[j] * dot[a->out_order[j]] < a->threshold[j];
            else
                for (int64_t j = 0; j < cout; j++) negative[j] = a->threshold_sign[j] * dot[j] < a->threshold[j];
            uint64_t *out = a->out_bits + p * a->out_pix_words;
            for (int64_t og = 0; og < a->out_groups; og++) {
                const uint8_t *neg = negative + og * cpg;
                for (int64_t w = 0; w < a->out_group_words; w++) {
                    uint64_t word = to_bits(neg + 64 * w);
                    int64_t valid = cpg - 64 * w; /* the bytes past this group belong to the next one */
                    out[og * a->out_group_words + w] = valid >= 64 ? word : word & ((1ULL << valid) - 1);
                }
            }
        }
    }
done:
    free(taps);
    free(gtaps);
    free(zeros);
    free(acc);
    free(dot);
    free(negative);
    free(padded);
}

static void *run_portable(void *w) {
    pixel_loop((cn_work *)w, block_portable, bytes_to_bits_portable);
    return NULL;
}
#ifdef CN_X86
__attribute__((target("avx2"))) static void *run_avx2(void *w) {
    pixel_loop((cn_work *)w, block_avx2, bytes_to_bits_avx2);
    return NULL;
}
__attribute__((target("avx512f,avx512vpopcntdq,avx512bw,avx512vl"))) static void *run_avx512(void *w) {
    pixel_loop((cn_work *)w, block_avx512, bytes_to_bits_avx512);
    return NULL;
}
#endif

typedef void *(*run_fn)(void *);

static run_fn select_run(int isa) {
#ifdef CN_X86
    if (isa == CN_ISA_AVX512) return run_avx512;
    if (isa == CN_ISA_AVX2) return run_avx2;
#endif
    return run_portable;
}

/* Returns 0 on success, -1 when memory ran out, -2 for an instruction set this CPU lacks, -3 for bad arguments,
 * -4 when a thread could not be started. */
int cn_bconv(const cn_bconv_args *a, int isa, int threads) {
    if (isa == CN_ISA_AUTO) isa = cn_best_isa();
    if (!cn_isa_supported(isa)) return -2;
    if (a->out_pad % CN_LANES || a->out_pad < a->out_per_group) return -3;
    if (a->mode == CN_OUT_BITS && a->out_groups * a->out_channels_per_group != a->groups * a->out_per_group) return -3;
    int64_t total = a->batch * a->out_height * a->out_width;
    if (threads < 1) threads = 1;
    if (threads > total) threads = (int)(total > 0 ? total : 1);
    cn_work *works = calloc((size_t)threads, sizeof(cn_work));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    if (!works || !ids) {
        free(works);
        free(ids);
        return -1;
    }
    run_fn run = select_run(isa);
    for (int i = 0; i < threads; i++) {
        works[i].a = a;
        works[i].begin = total * i / threads;
        works[i].end = total * (i + 1) / threads;
    }
    int status = 0, started = 0;
    for (int i = 1; i < threads; i++, started++)
        if (pthread_create(&ids[i], NULL, run, &works[i]) != 0) {
            status = -4;
            break;
        }
    run(&works[0]);
    for (int i = 1; i <= started; i++) pthread_join(ids[i], NULL);
    for (int i = 0; i < threads && !status; i++) status = works[i].status;
    free(works);
    free(ids);
    return status;
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
 * ([channels], floats) may be NULL. */
int cn_pack_signs(const float *x, int64_t npix, int64_t groups, int64_t channels_per_group, int64_t group_words,
                  int64_t pix_words, const float *sign, const float *threshold, uint64_t *out, int isa) {
    if (isa == CN_ISA_AUTO) isa = cn_best_isa();
    if (!cn_isa_supported(isa)) return -2;
    if (!sign != !threshold) return -3;
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
                   int64_t pad_h, int64_t pad_w, int64_t out_height, int64_t out_width, uint64_t *out) {
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
