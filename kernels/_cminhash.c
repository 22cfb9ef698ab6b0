/* The compiled CPU kernel of MinHash's multiply-shift family (kernels/minhash.py), built ahead of
 * time by `pip install` (setup.py; optional: without a C compiler kernels/minhash.py uses its
 * PyTorch path, same signatures).
 *
 * Family "ms64": for 32-bit elements x and seeded 64-bit a_i, b_i,
 *     h_i(x) = min(((a_i * x + b_i) mod 2**64) >> 32, 2**32 - 2)
 *     sig[s, i] = min over x in set s of h_i(x);   empty set -> EMPTY = 2**32 - 1
 * (Dietzfelbinger's multiply-add-shift: 2-independent since 64 >= 32 + 32 - 1.)
 *
 * String tokens are hashed as kernels/hashing.py's hash_tokens does (pandas' hash_array: SipHash-2-4
 * of the UTF-8 bytes under the seed's 16-byte key, then the SplitMix64 finalizer), and the element
 * is the high 32 bits of that hash, so a set's signature here equals the one of
 * minhash_csr(tokens_to_csr(sets)).
 *
 * Speed: on x86-64 with AVX2 (checked when the module loads) eight permutations' parameters and
 * minima stay in registers while the set's elements stream through (~1.4 vector ops per hash);
 * elsewhere a portable loop computes the same values. String tokens are read in one pass and hashed
 * in a second, so the reads of many token objects overlap in memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

#define EMPTY_U32 0xFFFFFFFFu
#define MAX_HASH 0xFFFFFFFEll

/* ------------------------------------------------------------------ SipHash-2-4 (pandas') */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                   \
    do {                                                                           \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                  \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                     \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                     \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                  \
    } while (0)

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint64_t load_le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* the last inlen % 8 bytes of in[0:inlen] as a little-endian word (SipHash's final block less its
 * length byte), read without an 8-way branch: overlapping loads that stay inside the string */
static inline uint64_t tail_bytes(const uint8_t *in, size_t inlen) {
    const size_t rem = inlen & 7;
    if (rem == 0) return 0;
    if (inlen >= 8) return load_le64(in + inlen - 8) >> (64 - 8 * rem);
    if (rem >= 4) return load_le32(in) | (load_le32(in + rem - 4) << (8 * (rem - 4)));
    return (uint64_t)in[0] | ((uint64_t)in[rem / 2] << (8 * (rem / 2))) | ((uint64_t)in[rem - 1] << (8 * (rem - 1)));
}

static uint64_t siphash24(const uint8_t *in, size_t inlen, uint64_t k0, uint64_t k1) {
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    const uint8_t *end = in + inlen - (inlen % 8);
    uint64_t m, b = (((uint64_t)inlen) << 56) | tail_bytes(in, inlen);
    for (; in != end; in += 8) {
        m = load_le64(in);
        v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
    }
    v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline uint64_t finalize(uint64_t z) { /* pandas' redistribution (SplitMix64 finalizer) */
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

/* ------------------------------------------------------------------ the signature of one set */
/* With a = a_hi 2^32 + a_lo (32-bit halves) and a_lo x + b_lo < 2^64 (b_lo: b's low half),
 *     ((a x + b) mod 2^64) >> 32 = (a_hi x + ((a_lo x + b) mod 2^64 >> 32)) mod 2^32
 * (adding all of b to a_lo x carries b_hi into the high word): one 32x32->64 multiply and one
 * 32-bit multiply, in 32-bit lanes where the min of 8 lanes is one op. */
typedef struct {
    uint32_t *alo, *ahi;   /* a's 32-bit halves */
    uint64_t *b;           /* b, in perm order */
    uint64_t *b_even_odd;  /* per block of 8 perms: b of perms 0, 2, 4, 6 then of 1, 3, 5, 7 */
} ms_params;

static inline uint32_t ms_hash(const ms_params *p, Py_ssize_t i, uint32_t x) {
    const uint64_t t = (uint64_t)p->alo[i] * x + p->b[i];   /* wraps mod 2^64 */
    return p->ahi[i] * x + (uint32_t)(t >> 32);
}

/* perms [i0, k) of one set, portable C */
static void ms_set_scalar(const uint32_t *x, Py_ssize_t n, const ms_params *p, Py_ssize_t i0,
                          Py_ssize_t k, uint32_t *out) {
    for (Py_ssize_t i = i0; i < k; i++) {
        uint32_t m = EMPTY_U32;
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint32_t h = ms_hash(p, i, x[j]);
            m = h < m ? h : m;
        }
        out[i] = m;
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define MS_HAVE_AVX2 1
#include <immintrin.h>

/* blocks of 8 perms in registers, the set's tokens streamed two at a time; the rest scalar */
__attribute__((target("avx2")))
static void ms_set_avx2(const uint32_t *x, Py_ssize_t n, const ms_params *p, Py_ssize_t k, uint32_t *out) {
    Py_ssize_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256i ALO = _mm256_loadu_si256((const __m256i *)(p->alo + i));
        const __m256i ALO_O = _mm256_srli_epi64(ALO, 32);          /* odd lanes' a_lo, in even slots */
        const __m256i AHI = _mm256_loadu_si256((const __m256i *)(p->ahi + i));
        const __m256i B_E = _mm256_loadu_si256((const __m256i *)(p->b_even_odd + i));
        const __m256i B_O = _mm256_loadu_si256((const __m256i *)(p->b_even_odd + i + 4));
        __m256i A0 = _mm256_set1_epi32(-1), A1 = A0;
#define MS_STEP(ACC, XV)                                                                      \
        do {                                                                                  \
            const __m256i X = _mm256_set1_epi32((int)(XV));                                   \
            const __m256i TE = _mm256_add_epi64(_mm256_mul_epu32(ALO, X), B_E);               \
            const __m256i TO = _mm256_add_epi64(_mm256_mul_epu32(ALO_O, X), B_O);             \
            const __m256i HI = _mm256_blend_epi32(_mm256_srli_epi64(TE, 32), TO, 0xAA);       \
            const __m256i U = _mm256_add_epi32(_mm256_mullo_epi32(AHI, X), HI);               \
            ACC = _mm256_min_epu32(ACC, U);                                                   \
        } while (0)
        Py_ssize_t j = 0;
        for (; j + 2 <= n; j += 2) {
            MS_STEP(A0, x[j]);
            MS_STEP(A1, x[j + 1]);
        }
        if (j < n) MS_STEP(A0, x[j]);
#undef MS_STEP
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_min_epu32(A0, A1));
    }
    ms_set_scalar(x, n, p, i, k, out);
}
static int ms_use_avx2 = 0;
#endif

/* sig of one set into out[0:k]: min over the set, clamped to MAX_HASH; EMPTY if the set is empty */
static void ms_set(const uint32_t *x, Py_ssize_t n, const ms_params *p, Py_ssize_t k, uint32_t *out) {
    if (n == 0) {
        for (Py_ssize_t i = 0; i < k; i++) out[i] = EMPTY_U32;
        return;
    }
#ifdef MS_HAVE_AVX2
    if (ms_use_avx2) ms_set_avx2(x, n, p, k, out);
    else
#endif
        ms_set_scalar(x, n, p, 0, k, out);
    for (Py_ssize_t i = 0; i < k; i++) out[i] = out[i] < (uint32_t)MAX_HASH ? out[i] : (uint32_t)MAX_HASH;
}

/* the 32-bit halves of a and b (uint64 buffers of k values); 0 or -1 with MemoryError set */
static int ms_params_init(ms_params *p, Py_buffer *a, Py_buffer *b, Py_ssize_t k) {
    size_t n = (size_t)(k > 0 ? k : 1);
    p->alo = (uint32_t *)malloc(sizeof(uint32_t) * n); p->ahi = (uint32_t *)malloc(sizeof(uint32_t) * n);
    p->b = (uint64_t *)malloc(sizeof(uint64_t) * n); p->b_even_odd = (uint64_t *)malloc(sizeof(uint64_t) * n);
    if (!p->alo || !p->ahi || !p->b || !p->b_even_odd) { PyErr_NoMemory(); return -1; }
    const uint64_t *av = (const uint64_t *)a->buf, *bv = (const uint64_t *)b->buf;
    for (Py_ssize_t i = 0; i < k; i++) {
        p->alo[i] = (uint32_t)av[i]; p->ahi[i] = (uint32_t)(av[i] >> 32);
        p->b[i] = bv[i];
        p->b_even_odd[i] = bv[i];   /* the tail (k % 8) stays in order: the scalar loop reads b */
    }
    for (Py_ssize_t i = 0; i + 8 <= k; i += 8)
        for (int q = 0; q < 4; q++) {
            p->b_even_odd[i + q] = bv[i + 2 * q];
            p->b_even_odd[i + 4 + q] = bv[i + 2 * q + 1];
        }
    return 0;
}

static void ms_params_free(ms_params *p) {
    free(p->alo); free(p->ahi); free(p->b); free(p->b_even_odd);
}

/* ------------------------------------------------------------------ Python glue */
static int check_buffers(Py_buffer *a, Py_buffer *b, Py_ssize_t *k) {
    if (a->len != b->len || a->len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "a and b must be uint64 arrays of the same length");
        return -1;
    }
    *k = a->len / 8;
    return 0;
}

PyDoc_STRVAR(ms_csr_doc,
"ms_csr(values, offsets, a, b, out)\n\n"
"Signatures of the CSR sets values[offsets[s]:offsets[s+1]] (values uint32, offsets int64, a and b\n"
"uint64 (num_perm,), out a writable uint32 (n_sets, num_perm) buffer), family ms64. Offsets must be\n"
"checked by the caller (start 0, non-decreasing, end len(values)). Releases the GIL.");

static PyObject *ms_csr(PyObject *self, PyObject *args) {
    Py_buffer v, o, a, b, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*", &v, &o, &a, &b, &out)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t k, n_sets = o.len / 8 - 1, nnz = v.len / 4;
    ms_params prm = {NULL, NULL, NULL, NULL};
    if (check_buffers(&a, &b, &k) < 0) goto done;
    if (o.len < 8 || out.len != n_sets * k * 4) {
        PyErr_SetString(PyExc_ValueError, "offsets must hold n_sets + 1 int64 and out n_sets * num_perm uint32");
        goto done;
    }
    const int64_t *off = (const int64_t *)o.buf;
    for (Py_ssize_t s = 0; s < n_sets; s++)
        if (off[s] < 0 || off[s + 1] < off[s] || off[s + 1] > nnz) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing within [0, len(values)]");
            goto done;
        }
    if (ms_params_init(&prm, &a, &b, k) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < n_sets; s++)
        ms_set((const uint32_t *)v.buf + off[s], off[s + 1] - off[s], &prm, k, (uint32_t *)out.buf + s * k);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    ms_params_free(&prm);
    PyBuffer_Release(&v); PyBuffer_Release(&o); PyBuffer_Release(&a); PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    return ret;
}

/* token object -> its element, direct-mapped by the object's address: q = address / 16 (objects are
 * 16-byte aligned), slot (q / 4) mod 2^CACHE_BITS, and the slot keeps the rest of q as a tag, so
 * slot + tag give back the whole address (a collision overwrites: a miss, never a wrong value). One
 * 8-byte word a slot: (epoch << 57 | 1 << 56 | tag << 32 | element), 0 when empty. The slot follows the address, so
 * a vocabulary's token objects, allocated near each other, fill a compact run of the table (a
 * 200,000-word vocabulary: ~1.6 MB of it) instead of one spread over all of it, and collide only
 * when 64 MiB apart; a scrambled address cost a cache miss per lookup, slower than hashing. */
#define CACHE_BITS 20
#define ADDR_BITS 48
typedef uint64_t ms_slot;
/* The table is kept between calls (8 MiB, allocated once: a fresh calloc per call paid a page fault
 * for every page a call touched). A slot also records the call that wrote it (its epoch, bits 57-63
 * of the word, 1..127), so slots of earlier calls never hit and the table needs no clearing but
 * every 127 calls. ms_tokens holds the GIL while it uses the table and runs no Python code then;
 * ms_cache_busy guards a re-entrant call all the same (it gets a private table). */
static ms_slot *ms_cache = NULL;
static unsigned ms_epoch = 0;
static int ms_cache_busy = 0;

static inline int cacheable(PyObject *o) {
    const uint64_t p = (uint64_t)(uintptr_t)o;
    return (p & 15) == 0 && (p >> ADDR_BITS) == 0;
}
static inline size_t slot_of(PyObject *o) {
    return (size_t)(((uint64_t)(uintptr_t)o >> 6) & (((uint64_t)1 << CACHE_BITS) - 1));
}
/* the key word of a cacheable object: the address bits the slot does not give (2 low, the high
 * ones), tagged so that it is never 0 */
static inline uint64_t key_of(PyObject *o) {
    const uint64_t q = (uint64_t)(uintptr_t)o >> 4;
    return ((uint64_t)1 << 56) | (((q & 3) | ((q >> (CACHE_BITS + 2)) << 2)) << 32);
}

PyDoc_STRVAR(ms_tokens_doc,
"ms_tokens(sets, key, a, b, out) -> bool\n\n"
"Signatures of a sequence of sequences of str / bytes tokens (key: the 16-byte SipHash key of\n"
"hash_tokens), family ms64, into out (writable uint32 (len(sets), num_perm)). Returns False, with\n"
"out unspecified, when a token is neither str nor bytes or a str has no UTF-8 form: the caller then\n"
"takes the general path.");

static PyObject *ms_tokens(PyObject *self, PyObject *args) {
    PyObject *sets;
    Py_buffer key, a, b, out;
    if (!PyArg_ParseTuple(args, "Oy*y*y*w*", &sets, &key, &a, &b, &out)) return NULL;
    PyObject *ret = NULL, *seq = NULL;
    Py_ssize_t k, cap = 0;
    uint32_t *xs = NULL;
    const char **ptrs = NULL;
    Py_ssize_t *lens = NULL, *miss = NULL;
    ms_params prm = {NULL, NULL, NULL, NULL};
    ms_slot *cache = NULL, *own_cache = NULL;
    int use_cache = 1, took_shared = 0;
    size_t lookups = 0, hits = 0;
    if (check_buffers(&a, &b, &k) < 0) goto done;
    if (key.len != 16) { PyErr_SetString(PyExc_ValueError, "key must be 16 bytes"); goto done; }
    /* a tuple of its own: Python code run below (a set given as a generator) cannot shrink it */
    seq = PySequence_Tuple(sets);
    if (!seq) goto done;
    Py_ssize_t n_sets = PySequence_Fast_GET_SIZE(seq);
    if (out.len != n_sets * k * 4) { PyErr_SetString(PyExc_ValueError, "out must hold len(sets) * num_perm uint32"); goto done; }
    const uint64_t k0 = load_le64((const uint8_t *)key.buf), k1 = load_le64((const uint8_t *)key.buf + 8);
    if (ms_params_init(&prm, &a, &b, k) < 0) goto done;
    uint64_t ep = (uint64_t)1 << 57;
    if (!ms_cache_busy) {
        if (!ms_cache) ms_cache = (ms_slot *)calloc((size_t)1 << CACHE_BITS, sizeof(ms_slot));
        if (!ms_cache) { PyErr_NoMemory(); goto done; }
        if (++ms_epoch == 128) {
            memset(ms_cache, 0, sizeof(ms_slot) << CACHE_BITS);
            ms_epoch = 1;
        }
        ep = (uint64_t)ms_epoch << 57;
        cache = ms_cache;
        ms_cache_busy = took_shared = 1;
    } else {
        cache = own_cache = (ms_slot *)calloc((size_t)1 << CACHE_BITS, sizeof(ms_slot));
        if (!cache) { PyErr_NoMemory(); goto done; }
    }
    int ok = 1;
    for (Py_ssize_t s = 0; s < n_sets && ok; s++) {
        PyObject *items = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, s), "each set must be iterable");
        if (!items) goto done;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
        if (n > cap) {
            free(xs); free((void *)ptrs); free(lens); free(miss);
            xs = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)n);
            miss = (Py_ssize_t *)malloc(sizeof(Py_ssize_t) * (size_t)n);
            ptrs = (const char **)malloc(sizeof(char *) * (size_t)n);
            lens = (Py_ssize_t *)malloc(sizeof(Py_ssize_t) * (size_t)n);
            if (!xs || !ptrs || !lens || !miss) { Py_DECREF(items); PyErr_NoMemory(); goto done; }
            cap = n;
        }
        PyObject **it = PySequence_Fast_ITEMS(items);
        /* a list or tuple keeps its tokens alive for the whole call (the GIL is held), so a token
         * object seen before has the element computed then: each distinct object is hashed once */
        /* (a list or tuple the caller passed: any other iterable ran Python code to become a list,
         * which may have freed tokens of earlier sets whose addresses can come back as other
         * strings, and its own tokens may die with it, so from there on the cache is not used) */
        PyObject *orig = PySequence_Fast_GET_ITEM(seq, s);
        if (!(PyList_CheckExact(orig) || PyTuple_CheckExact(orig))) use_cache = 0;
        ms_slot *c = use_cache ? cache : NULL;
        /* pass 1: look every token up in the cache, listing the misses; pass 2: each missed
         * token's bytes, its object prefetched a few misses ahead (the loads of many scattered
         * token objects overlap here, where the hashing would serialize them); pass 3: hash them */
        Py_ssize_t nm = 0;
        if (c) {
            for (Py_ssize_t j = 0; j < n; j++) {
                PyObject *obj = it[j];
                if (j + 32 < n) PREFETCH(&c[slot_of(it[j + 32])]);   /* ~32 lookups in flight */
                const ms_slot e = c[slot_of(obj)];
                if ((e & ~(uint64_t)0xFFFFFFFFu) == (key_of(obj) | ep) && cacheable(obj)) xs[j] = (uint32_t)e;
                else miss[nm++] = j;
            }
            lookups += (size_t)n;
            hits += (size_t)(n - nm);
        } else {
            for (Py_ssize_t j = 0; j < n; j++) miss[j] = j;
            nm = n;
        }
        for (Py_ssize_t m = 0; m < nm; m++) {
            if (m + 16 < nm) {
                const char *ahead = (const char *)it[miss[m + 16]];
                PREFETCH(ahead);
                PREFETCH(ahead + 64);
            }
            PyObject *obj = it[miss[m]];
            if (PyUnicode_Check(obj)) {
                if (PyUnicode_IS_COMPACT_ASCII(obj)) {
                    ptrs[m] = (const char *)PyUnicode_DATA(obj);
                    lens[m] = PyUnicode_GET_LENGTH(obj);
                } else {
                    ptrs[m] = PyUnicode_AsUTF8AndSize(obj, &lens[m]);
                    if (!ptrs[m]) { PyErr_Clear(); ok = 0; break; }
                }
            } else if (PyBytes_Check(obj)) {
                ptrs[m] = PyBytes_AS_STRING(obj);
                lens[m] = PyBytes_GET_SIZE(obj);
            } else { ok = 0; break; }
        }
        if (ok)
            for (Py_ssize_t m = 0; m < nm; m++) {
                const Py_ssize_t j = miss[m];
                xs[j] = (uint32_t)(finalize(siphash24((const uint8_t *)ptrs[m], (size_t)lens[m], k0, k1)) >> 32);
                if (c && cacheable(it[j])) c[slot_of(it[j])] = key_of(it[j]) | ep | xs[j];
            }
        Py_DECREF(items);
        if (ok) ms_set(xs, n, &prm, k, (uint32_t *)out.buf + s * k);
        /* tokens that are new objects each time (e.g. fresh from str.split) never hit: after 65,536
         * lookups with under 1 in 16 hits, stop paying the table's memory traffic (a shared
         * vocabulary warms up slowly: 200,000 words drawn uniformly hit ~15% of the first 65,536
         * lookups, 2% of the first 8,192, where the old cut-off turned the cache off for good) */
        if (use_cache && lookups >= 65536 && hits * 16 < lookups) use_cache = 0;
    }
    ret = PyBool_FromLong(ok);
done:
    Py_XDECREF(seq);
    free(xs); free((void *)ptrs); free(lens); free(miss); free(own_cache);
    if (took_shared) ms_cache_busy = 0;
    ms_params_free(&prm);
    PyBuffer_Release(&key); PyBuffer_Release(&a); PyBuffer_Release(&b); PyBuffer_Release(&out);
    return ret;
}

/* ------------------------------------------------------------------ ASCII word tokens */
/* The word tokens of ASCII strings stored back to back (an Arrow string array's data and offsets):
 * maximal runs of [0-9A-Za-z_] inside one value, lower-cased, each hashed as hash_tokens does
 * (SipHash-2-4 of the bytes under the seed's key, then the SplitMix64 finalizer). The same tokens,
 * rows and hashes as engine/quantize.py's NumPy tokenizer followed by hash_tokens, in one pass. */
static const uint8_t *lower_table(void) {     /* ASCII lower case of every byte (others as they are) */
    static uint8_t t[256];
    static int init = 0;
    if (!init) {
        for (int c = 0; c < 256; c++) t[c] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        init = 1;
    }
    return t;
}

static const uint8_t *word_table(void) {
    static uint8_t t[256];
    static int init = 0;
    if (!init) {
        for (int c = 0; c < 256; c++)
            t[c] = (uint8_t)((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_');
        init = 1;
    }
    return t;
}

static int check_offsets(Py_buffer *data, Py_buffer *offs, Py_ssize_t *n) {
    if (offs->len % 8 || offs->len < 8) { PyErr_SetString(PyExc_ValueError, "offsets must be int64, n + 1 of them"); return -1; }
    *n = offs->len / 8 - 1;
    const int64_t *o = (const int64_t *)offs->buf;
    for (Py_ssize_t i = 0; i < *n; i++)
        if (o[i] < 0 || o[i] > o[i + 1]) { PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and >= 0"); return -1; }
    if (o[*n] > data->len) { PyErr_SetString(PyExc_ValueError, "offsets run past the data"); return -1; }
    return 0;
}

PyDoc_STRVAR(count_ascii_tokens_doc,
"count_ascii_tokens(data, offsets) -> int\n\n"
"How many word tokens ([0-9A-Za-z_] runs within a value) the values data[offsets[i]:offsets[i+1]] hold.");

static PyObject *count_ascii_tokens(PyObject *self, PyObject *args) {
    Py_buffer data, offs;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offs)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n;
    if (check_offsets(&data, &offs, &n) < 0) goto done;
    const uint8_t *w = word_table(), *b = (const uint8_t *)data.buf;
    const int64_t *o = (const int64_t *)offs.buf;
    long long count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int prev = 0;
        for (int64_t j = o[i]; j < o[i + 1]; j++) {
            const int cur = w[b[j]];
            count += cur & !prev;
            prev = cur;
        }
    }
    ret = PyLong_FromLongLong(count);
done:
    PyBuffer_Release(&data); PyBuffer_Release(&offs);
    return ret;
}

PyDoc_STRVAR(ascii_tokens_doc,
"ascii_tokens(data, offsets, key, rows, hashes) -> int\n\n"
"The word tokens of the values data[offsets[i]:offsets[i+1]] (ASCII), lower-cased, in value then\n"
"text order: each token's value index into rows (writable int64) and its hash_tokens hash under\n"
"the 16-byte SipHash key into hashes (writable uint64), both sized by count_ascii_tokens. Returns\n"
"the number of tokens written.");

#define TOKEN_CACHE_BITS 12   /* slots of ascii_tokens' cache of short tokens' hashes */

static PyObject *ascii_tokens(PyObject *self, PyObject *args) {
    Py_buffer data, offs, key, rows, hashes;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &data, &offs, &key, &rows, &hashes)) return NULL;
    PyObject *ret = NULL;
    uint8_t *buf = NULL;
    void *tc = NULL;
    Py_ssize_t n;
    if (check_offsets(&data, &offs, &n) < 0) goto done;
    if (key.len != 16) { PyErr_SetString(PyExc_ValueError, "key must be 16 bytes"); goto done; }
    const uint64_t k0 = load_le64((const uint8_t *)key.buf), k1 = load_le64((const uint8_t *)key.buf + 8);
    const uint8_t *w = word_table(), *b = (const uint8_t *)data.buf, *low = lower_table();
    const int64_t *o = (const int64_t *)offs.buf;
    const Py_ssize_t cap = rows.len / 8;
    if (hashes.len / 8 < cap) { PyErr_SetString(PyExc_ValueError, "hashes must hold as many as rows"); goto done; }
    int64_t *r = (int64_t *)rows.buf;
    uint64_t *h = (uint64_t *)hashes.buf;
    int64_t longest = 0;
    for (Py_ssize_t i = 0; i < n; i++) longest = o[i + 1] - o[i] > longest ? o[i + 1] - o[i] : longest;
    buf = (uint8_t *)malloc((size_t)longest + 8);
    tc = calloc((size_t)1 << TOKEN_CACHE_BITS, 3 * sizeof(uint64_t) + 1);
    if (!buf || !tc) { PyErr_NoMemory(); goto done; }
    uint64_t *tc_w0 = (uint64_t *)tc, *tc_w1 = tc_w0 + ((size_t)1 << TOKEN_CACHE_BITS);
    uint64_t *tc_h = tc_w1 + ((size_t)1 << TOKEN_CACHE_BITS);
    uint8_t *tc_len = (uint8_t *)(tc_h + ((size_t)1 << TOKEN_CACHE_BITS));   /* 0: an empty slot */
    Py_ssize_t t = 0;
    int full = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !full; i++) {
        int64_t j = o[i];
        const int64_t end = o[i + 1];
        while (j < end) {
            while (j < end && !w[b[j]]) j++;
            if (j == end) break;
            const int64_t s0 = j;
            while (j < end && w[b[j]]) j++;
            const size_t len = (size_t)(j - s0);
            if (t >= cap) { full = 1; break; }
            r[t] = (int64_t)i;
            if (len <= 16) {
                /* tokens of up to 16 bytes: a direct-mapped cache of their hashes, keyed by the
                 * whole token (its length and lower-cased bytes, zero-padded): a hit is the same
                 * token, exact; the bytes lower-cased only into the two words of the key */
                uint8_t k16[16] = {0};
                for (size_t q = 0; q < len; q++) k16[q] = low[b[s0 + (int64_t)q]];
                uint64_t w0, w1;
                memcpy(&w0, k16, 8);
                memcpy(&w1, k16 + 8, 8);
                const size_t slot = (size_t)(((w0 * 0x9E3779B97F4A7C15ull) ^ (w1 * 0xC2B2AE3D27D4EB4Full)
                                              ^ (uint64_t)len) >> (64 - TOKEN_CACHE_BITS));
                if (tc_len[slot] == len && tc_w0[slot] == w0 && tc_w1[slot] == w1) {
                    h[t] = tc_h[slot];
                } else {
                    h[t] = finalize(siphash24(k16, len, k0, k1));
                    tc_len[slot] = (uint8_t)len; tc_w0[slot] = w0; tc_w1[slot] = w1; tc_h[slot] = h[t];
                }
            } else {
                for (size_t q = 0; q < len; q++) buf[q] = low[b[s0 + (int64_t)q]];
                h[t] = finalize(siphash24(buf, len, k0, k1));
            }
            t++;
        }
    }
    Py_END_ALLOW_THREADS
    if (full) { PyErr_SetString(PyExc_ValueError, "rows / hashes too small: size them by count_ascii_tokens"); goto done; }
    ret = PyLong_FromSsize_t(t);
done:
    free(buf);
    free(tc);
    PyBuffer_Release(&data); PyBuffer_Release(&offs); PyBuffer_Release(&key);
    PyBuffer_Release(&rows); PyBuffer_Release(&hashes);
    return ret;
}

/* ------------------------------------------------------------------ coverage row codes (kernels/rowcodes.py) */
PyDoc_STRVAR(center_f32_doc,
"center_f32(X, center, Z, n, d)\n\n"
"Z[i, j] = float32(X[i, j] - center[j]) (the float64 difference rounded once, beyond float32 -> +-inf),\n"
"0 where that is NaN: X (n, d) float64, center (d,) float64, Z (n, d) float32 writable, C order.\n"
"What NumPy's np.subtract(X, c, out=Z, casting='unsafe') then np.copyto(Z, 0, where=isnan(Z)) gives.");

static PyObject *center_f32(PyObject *self, PyObject *args) {
    Py_buffer X, c, Z;
    Py_ssize_t n, d;
    if (!PyArg_ParseTuple(args, "y*y*w*nn", &X, &c, &Z, &n, &d)) return NULL;
    PyObject *ret = NULL;
    if (n < 0 || d < 0 || (d && n > PY_SSIZE_T_MAX / 8 / d) || X.len < n * d * 8 || c.len < d * 8 || Z.len < n * d * 4) {
        PyErr_SetString(PyExc_ValueError, "center_f32: X must hold n*d float64, center d float64, Z n*d float32");
        goto done;
    }
    const double *x = (const double *)X.buf, *cc = (const double *)c.buf;
    float *z = (float *)Z.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *xr = x + i * d;
        float *zr = z + i * d;
        for (Py_ssize_t j = 0; j < d; j++) {
            const float v = (float)(xr[j] - cc[j]);
            zr[j] = v != v ? 0.0f : v;
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&X); PyBuffer_Release(&c); PyBuffer_Release(&Z);
    return ret;
}

PyDoc_STRVAR(sign_codes_doc,
"sign_codes(proj, out, T, B, m, n, start)\n\n"
"out[t, start + i] |= sum_j [proj[t * B + j, i] > 0] << j for i < m: proj (T * B, m) float32, out\n"
"(T, n) int32 writable, C order; B <= 30. The sign bits of a block of rows' projections packed into\n"
"their codes (what comparing and OR-ing each of the T * B rows of proj with NumPy gives).");

static PyObject *sign_codes(PyObject *self, PyObject *args) {
    Py_buffer P, O;
    Py_ssize_t T, B, m, n, start;
    if (!PyArg_ParseTuple(args, "y*w*nnnnn", &P, &O, &T, &B, &m, &n, &start)) return NULL;
    PyObject *ret = NULL;
    if (T < 0 || B < 0 || B > 30 || m < 0 || n < 0 || start < 0 || start + m > n || (T && B && m > PY_SSIZE_T_MAX / 4 / T / B)
        || P.len < T * B * m * 4 || O.len < T * n * 4) {
        PyErr_SetString(PyExc_ValueError, "sign_codes: proj must hold T*B*m float32, out T*n int32, start + m <= n, B <= 30");
        goto done;
    }
    const float *p = (const float *)P.buf;
    int32_t *o = (int32_t *)O.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < T; t++) {
        int32_t *ot = o + t * n + start;
        for (Py_ssize_t j = 0; j < B; j++) {
            const float *pr = p + (t * B + j) * m;
            for (Py_ssize_t i = 0; i < m; i++) ot[i] |= (int32_t)(pr[i] > 0.0f) << j;
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&P); PyBuffer_Release(&O);
    return ret;
}

PyDoc_STRVAR(sign_mul_col_doc,
"sign_mul_col(v, t, X, m, d, col, start)\n\n"
"X[start + i, col] = sign(v[i]) * t[i] for i < m (NumPy's sign: 1, -1, 0 for +-0, NaN for NaN): v, t\n"
"(m,) float64, X (rows, d) float64 writable, C order. A numeric column's coverage transform written\n"
"into its column of the row matrix (t = log1p(min(|v|, 1e300)) from NumPy).");

static PyObject *sign_mul_col(PyObject *self, PyObject *args) {
    Py_buffer V, Tb, Xb;
    Py_ssize_t m, d, col, start;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnn", &V, &Tb, &Xb, &m, &d, &col, &start)) return NULL;
    PyObject *ret = NULL;
    if (m < 0 || d < 1 || col < 0 || col >= d || start < 0 || V.len < m * 8 || Tb.len < m * 8
        || start + m > Xb.len / 8 / d) {
        PyErr_SetString(PyExc_ValueError, "sign_mul_col: v and t must hold m float64, X (start + m) rows of d float64, col < d");
        goto done;
    }
    const double *v = (const double *)V.buf, *t = (const double *)Tb.buf;
    double *x = (double *)Xb.buf + start * d + col;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++) {
        const double a = v[i];
        const double sg = a > 0 ? 1.0 : (a < 0 ? -1.0 : (a == 0 ? 0.0 : a));
        x[i * d] = sg * t[i];
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&V); PyBuffer_Release(&Tb); PyBuffer_Release(&Xb);
    return ret;
}

/* ------------------------------------------------------------------ numeric buckets (engine/quantize.py) */
PyDoc_STRVAR(numeric_buckets_doc,
"numeric_buckets(v, la, lg_fine, lg_coarse, min_abs, bias, nan_key, pos_inf_key, neg_inf_key, coarse, fines) -> int\n\n"
"quantize.numeric_keys_at's keys of the float64 values v, given la = np.log(np.abs(v)): for |v| > min_abs\n"
"and finite, +-(bias + ceil(la / lg)) computed in float64 (the sign of v), 0 for |v| <= min_abs, the\n"
"special keys for NaN / +inf / -inf. The keys at lg_coarse go to coarse (int32, one per value); the\n"
"distinct keys at lg_fine of the non-NaN values to fines (int64, unordered). Returns how many.");

/* ceil(q) without a libm call where the baseline ISA has no rounding instruction: exact for
 * |q| < 2**52 (q is then an integer or its truncation is exact); the sign of a zero result may
 * differ from ceil's, which adding the bias erases */
static inline double ceil_exact(double q) {
    if (!(q < 4503599627370496.0 && q > -4503599627370496.0)) return ceil(q);
    double c = (double)(int64_t)q;
    return c < q ? c + 1.0 : c;
}

static PyObject *numeric_buckets_c(PyObject *self, PyObject *args) {
    Py_buffer V, L, C, F;
    double lgf, lgc, min_abs, bias;
    long long nan_key, pinf_key, ninf_key;
    if (!PyArg_ParseTuple(args, "y*y*ddddLLLw*w*", &V, &L, &lgf, &lgc, &min_abs, &bias, &nan_key, &pinf_key,
                          &ninf_key, &C, &F)) return NULL;
    PyObject *ret = NULL;
    int64_t *set = NULL;
    const Py_ssize_t n = V.len / 8;
    if (V.len % 8 || L.len != V.len || C.len < n * 4 || F.len < n * 8) {
        PyErr_SetString(PyExc_ValueError, "numeric_buckets: v, la float64 of one length n; coarse n int32, fines n int64");
        goto done;
    }
    size_t cap = 1024;
    while (cap < 64) cap <<= 1;
    set = (int64_t *)malloc(cap * sizeof(int64_t));
    if (!set) { PyErr_NoMemory(); goto done; }
    const int64_t EMPTY_SLOT = INT64_MIN;
    for (size_t k = 0; k < cap; k++) set[k] = EMPTY_SLOT;
    const double *v = (const double *)V.buf, *la = (const double *)L.buf;
    int32_t *coarse = (int32_t *)C.buf;
    int64_t *fines = (int64_t *)F.buf;
    Py_ssize_t m = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double x = v[i];
        int64_t kf, kc;
        if (x != x) { coarse[i] = (int32_t)nan_key; continue; }
        const double a = x < 0 ? -x : x;
        if (a == HUGE_VAL) { kf = kc = x > 0 ? pinf_key : ninf_key; }
        else if (!(a > min_abs)) { kf = kc = 0; }
        else {
            const double sg = x > 0 ? 1.0 : -1.0;
            double t = ceil_exact(la[i] / lgf); t += bias; t *= sg; kf = (int64_t)t;
            t = ceil_exact(la[i] / lgc); t += bias; t *= sg; kc = (int64_t)t;
        }
        coarse[i] = (int32_t)kc;
        /* the distinct fine keys: an open-addressing set, grown at half full */
        uint64_t hsh = (uint64_t)kf * 0x9E3779B97F4A7C15ull;
        size_t pos = (size_t)(hsh >> 20) & (cap - 1);
        while (set[pos] != EMPTY_SLOT && set[pos] != kf) pos = (pos + 1) & (cap - 1);
        if (set[pos] == kf) continue;
        set[pos] = kf;
        fines[m++] = kf;
        if ((size_t)m * 2 > cap) {
            size_t ncap = cap * 2;
            int64_t *ns = (int64_t *)malloc(ncap * sizeof(int64_t));
            if (!ns) { nomem = 1; break; }
            for (size_t k = 0; k < ncap; k++) ns[k] = EMPTY_SLOT;
            for (Py_ssize_t j = 0; j < m; j++) {
                uint64_t h2 = (uint64_t)fines[j] * 0x9E3779B97F4A7C15ull;
                size_t p2 = (size_t)(h2 >> 20) & (ncap - 1);
                while (ns[p2] != EMPTY_SLOT) p2 = (p2 + 1) & (ncap - 1);
                ns[p2] = fines[j];
            }
            free(set);
            set = ns;
            cap = ncap;
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) { PyErr_NoMemory(); goto done; }
    ret = PyLong_FromSsize_t(m);
done:
    free(set);
    PyBuffer_Release(&V); PyBuffer_Release(&L); PyBuffer_Release(&C); PyBuffer_Release(&F);
    return ret;
}

PyDoc_STRVAR(hashed_rows_doc,
"hashed_rows(rows, h, out, n)\n\n"
"A string column's coverage transform (engine/coverage.py column_block): out (n, 8) float64 writable\n"
"gets, per row, the sum over its tokens t (rows[t] == row) of +-1 (- where bit 63 of h[t] is set) in\n"
"dimension h[t] % 8, in token order, then each row divided by its L2 norm, NaN where the norm is 0.");

/* hashed_rows / hashed_rows_at's body (no GIL): rows of 8 dimensions, ``stride`` doubles apart from o,
   zeroed, the tokens' +-1 added in token order, each row divided by its L2 norm (NaN where it is 0) */
static void hashed_norm(double *x) {
    double ss = 0.0;
    for (int j = 0; j < 8; j++) ss += x[j] * x[j];          /* integers: exact in any order */
    const double norm = sqrt(ss);
    if (norm == 0) { for (int j = 0; j < 8; j++) x[j] = NAN; return; }
    const double den = norm > 1e-12 ? norm : 1e-12;
    for (int j = 0; j < 8; j++) x[j] /= den;
}

static void hashed_fill(const int64_t *r, const uint64_t *h, Py_ssize_t m, double *o, Py_ssize_t n, Py_ssize_t stride) {
    int sorted = 1;
    for (Py_ssize_t t = 1; t < m && sorted; t++) sorted = r[t - 1] <= r[t];
    if (sorted) {
        /* items in row order (a tokenizer's output): each row summed in registers and written once,
         * the same additions in the same order as below */
        Py_ssize_t t = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (; t < m && r[t] == i; t++) x[h[t] & 7u] += (h[t] >> 63) ? -1.0 : 1.0;
            hashed_norm(x);
            memcpy(o + i * stride, x, sizeof x);
        }
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++) memset(o + i * stride, 0, 64);
    for (Py_ssize_t t = 0; t < m; t++)
        o[r[t] * stride + (Py_ssize_t)(h[t] & 7u)] += (h[t] >> 63) ? -1.0 : 1.0;
    for (Py_ssize_t i = 0; i < n; i++) hashed_norm(o + i * stride);
}

static PyObject *hashed_rows(PyObject *self, PyObject *args) {
    Py_buffer R, H, O;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*n", &R, &H, &O, &n)) return NULL;
    PyObject *ret = NULL;
    const Py_ssize_t m = R.len / 8;
    if (R.len % 8 || H.len != R.len || n < 0 || n > PY_SSIZE_T_MAX / 64 || O.len < n * 64) {
        PyErr_SetString(PyExc_ValueError, "hashed_rows: rows int64 and h uint64 of one length, out n*8 float64");
        goto done;
    }
    const int64_t *r = (const int64_t *)R.buf;
    const uint64_t *h = (const uint64_t *)H.buf;
    double *o = (double *)O.buf;
    for (Py_ssize_t t = 0; t < m; t++)
        if (r[t] < 0 || r[t] >= n) { PyErr_SetString(PyExc_ValueError, "hashed_rows: a row is out of range"); goto done; }
    Py_BEGIN_ALLOW_THREADS
    hashed_fill(r, h, m, o, n, 8);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&R); PyBuffer_Release(&H); PyBuffer_Release(&O);
    return ret;
}

PyDoc_STRVAR(nan_col_sums_doc,
"nan_col_sums(X, n, d, sums, counts)\n\n"
"Column sums and non-NaN counts of X (n, d) float64, C order: sums (d,) float64 and counts (d,) int64\n"
"writable. sums[j] is what np.where(isnan(X), 0.0, X).sum(axis=0) gives for d >= 2 (NumPy adds the\n"
"rows one after another to +0.0; NaN adds 0.0), counts[j] = (~isnan(X)).sum(axis=0).");

static PyObject *nan_col_sums(PyObject *self, PyObject *args) {
    Py_buffer Xb, Sb, Cb;
    Py_ssize_t n, d;
    if (!PyArg_ParseTuple(args, "y*nnw*w*", &Xb, &n, &d, &Sb, &Cb)) return NULL;
    PyObject *ret = NULL;
    if (n < 0 || d < 1 || d > PY_SSIZE_T_MAX / 8 || (n && d > PY_SSIZE_T_MAX / 8 / n) || Xb.len < n * d * 8 || Sb.len < d * 8 || Cb.len < d * 8) {
        PyErr_SetString(PyExc_ValueError, "nan_col_sums: X must hold n*d float64, sums d float64, counts d int64");
        goto done;
    }
    const double *x = (const double *)Xb.buf;
    double *s = (double *)Sb.buf;
    int64_t *c = (int64_t *)Cb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < d; j++) { s[j] = 0.0; c[j] = 0; }   /* from +0.0, as NumPy's sum here */
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *r = x + i * d;
        for (Py_ssize_t j = 0; j < d; j++) {
            const double v = r[j];
            s[j] += v != v ? 0.0 : v;
            c[j] += v == v;
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&Xb); PyBuffer_Release(&Sb); PyBuffer_Release(&Cb);
    return ret;
}

/* ------------------------------------------------------------------ ingest passes (engine/quantize.py,
 * engine/coverage.py, engine/sketch.py): one pass over each column, no column-sized temporaries.
 * Logarithms are libm's log / log1p, the functions NumPy's float64 loops call where no SIMD
 * implementation of its own replaces them; engine/quantize.py uses these kernels only after
 * checking (libm_apply on a probe of values) that they give NumPy's results bit for bit here. */
PyDoc_STRVAR(libm_apply_doc,
"libm_apply(x, out, which)\n\n"
"out[i] = log(x[i]) (which 0) or log1p(x[i]) (which 1), libm's functions: x float64, out float64\n"
"writable of the same length. What the ingest kernels compute, for comparing with NumPy.");

static PyObject *libm_apply(PyObject *self, PyObject *args) {
    Py_buffer X, O;
    int which;
    if (!PyArg_ParseTuple(args, "y*w*i", &X, &O, &which)) return NULL;
    PyObject *ret = NULL;
    if (X.len % 8 || O.len != X.len || (which != 0 && which != 1)) {
        PyErr_SetString(PyExc_ValueError, "libm_apply: x and out float64 of one length, which 0 (log) or 1 (log1p)");
        goto done;
    }
    const Py_ssize_t n = X.len / 8;
    const double *x = (const double *)X.buf;
    double *o = (double *)O.buf;
    if (which == 0) for (Py_ssize_t i = 0; i < n; i++) o[i] = log(x[i]);
    else for (Py_ssize_t i = 0; i < n; i++) o[i] = log1p(x[i]);
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&X); PyBuffer_Release(&O);
    return ret;
}

/* a set of int64 keys (open addressing, linear probing, grown at a quarter full); 0 or -1 (no memory) */
typedef struct { int64_t *slot; size_t cap, used; } i64set;
#define I64SET_EMPTY INT64_MIN

static int i64set_init(i64set *s, size_t cap) {
    s->cap = cap; s->used = 0;
    s->slot = (int64_t *)malloc(cap * sizeof(int64_t));
    if (!s->slot) return -1;
    for (size_t k = 0; k < cap; k++) s->slot[k] = I64SET_EMPTY;
    return 0;
}

static inline size_t i64_hash(int64_t key, size_t cap) {
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

/* 1 if key was new (and is now in), 0 if it was in, -1 on no memory; key != I64SET_EMPTY */
static int i64set_add(i64set *s, int64_t key) {
    size_t pos = i64_hash(key, s->cap);
    while (s->slot[pos] != I64SET_EMPTY) {
        if (s->slot[pos] == key) return 0;
        pos = (pos + 1) & (s->cap - 1);
    }
    s->slot[pos] = key;
    if (++s->used * 4 > s->cap) {
        i64set g;
        if (i64set_init(&g, s->cap * 2) < 0) return -1;
        for (size_t k = 0; k < s->cap; k++)
            if (s->slot[k] != I64SET_EMPTY) {
                size_t p = i64_hash(s->slot[k], g.cap);
                while (g.slot[p] != I64SET_EMPTY) p = (p + 1) & (g.cap - 1);
                g.slot[p] = s->slot[k];
            }
        g.used = s->used;
        free(s->slot);
        *s = g;
    }
    return 1;
}

#define NB_WIN 32768     /* fine buckets k in [-NB_WIN, NB_WIN) are recorded in a bitmap per sign */

PyDoc_STRVAR(numeric_quantize_doc,
"numeric_quantize(v, lg_fine, lg_coarse, min_abs, bias, nan_key, pos_inf_key, neg_inf_key, coarse, fines)\n"
"    -> (m, n_nan, n_finite)\n\n"
"numeric_buckets with the logarithm taken here (libm's log of |v|) in the same pass: the coarse keys\n"
"(int32, one per value) and the m distinct fine keys of the non-NaN values (int64, unordered) of the\n"
"float64 values v, and how many values are NaN and how many finite.");

static PyObject *numeric_quantize(PyObject *self, PyObject *args) {
    Py_buffer V, C, F;
    double lgf, lgc, min_abs, bias;
    long long nan_key, pinf_key, ninf_key;
    if (!PyArg_ParseTuple(args, "y*ddddLLLw*w*", &V, &lgf, &lgc, &min_abs, &bias, &nan_key, &pinf_key,
                          &ninf_key, &C, &F)) return NULL;
    PyObject *ret = NULL;
    uint64_t *bits = NULL;
    i64set other = {NULL, 0, 0};
    const Py_ssize_t n = V.len / 8;
    if (V.len % 8 || C.len < n * 4 || F.len < n * 8 || !(lgf > 0) || !(lgc > 0)) {
        PyErr_SetString(PyExc_ValueError, "numeric_quantize: v float64 (n), coarse n int32, fines n int64, lg > 0");
        goto done;
    }
    bits = (uint64_t *)calloc(2 * (2 * NB_WIN / 64), sizeof(uint64_t));    /* [sign][k + NB_WIN] */
    if (!bits || i64set_init(&other, 64) < 0) { PyErr_NoMemory(); goto done; }
    const double *v = (const double *)V.buf;
    int32_t *coarse = (int32_t *)C.buf;
    int64_t *fines = (int64_t *)F.buf;
    Py_ssize_t m = 0, n_nan = 0, n_fin = 0;
    int nomem = 0;
    /* distinct fine keys: those with |key| in [lo, lo + 2 NB_WIN) (+-(bias + k) for |k| < NB_WIN: the
     * buckets of data) in a bitmap per sign, every other key in the set; by the key's value, so a key
     * reached from either sign or a special value is one key */
    const int64_t lo = fabs(bias) < 4e18 ? (int64_t)bias - NB_WIN : INT64_MAX;
    int seen_min = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double x = v[i];
        if (x != x) { coarse[i] = (int32_t)nan_key; n_nan++; continue; }
        const double a = fabs(x);
        int64_t kf;
        if (a == HUGE_VAL) {
            kf = x > 0 ? pinf_key : ninf_key;
            coarse[i] = (int32_t)kf;
        } else if (!(a > min_abs)) {
            n_fin++;
            kf = 0;
            coarse[i] = 0;
        } else {
            n_fin++;
            /* quantize.numeric_keys_at's float64 steps: t = ceil(la / lg); t += bias; t *= sign */
            const double la = log(a), sg = x > 0 ? 1.0 : -1.0;
            double t = ceil_exact(la / lgc); t += bias; t *= sg;
            coarse[i] = (int32_t)(int64_t)t;
            t = ceil_exact(la / lgf); t += bias; t *= sg;
            kf = (int64_t)t;
        }
        if (kf == INT64_MIN) {                 /* the set's empty slot (a key beyond int64): a flag */
            if (!seen_min) { seen_min = 1; fines[m++] = kf; }
            continue;
        }
        const uint64_t off = (uint64_t)(kf < 0 ? -kf : kf) - (uint64_t)lo;     /* wraps above for |key| < lo */
        if (off < 2 * NB_WIN) {
            const size_t b = (size_t)off + (kf < 0 ? 2 * NB_WIN : 0);
            const uint64_t bit = (uint64_t)1 << (b & 63);
            if (!(bits[b >> 6] & bit)) { bits[b >> 6] |= bit; fines[m++] = kf; }
            continue;
        }
        const int r = i64set_add(&other, kf);
        if (r < 0) { nomem = 1; break; }
        if (r) fines[m++] = kf;
    }
    Py_END_ALLOW_THREADS
    if (nomem) { PyErr_NoMemory(); goto done; }
    ret = Py_BuildValue("nnn", m, n_nan, n_fin);
done:
    free(bits);
    free(other.slot);
    PyBuffer_Release(&V); PyBuffer_Release(&C); PyBuffer_Release(&F);
    return ret;
}

PyDoc_STRVAR(numeric_rows_doc,
"numeric_rows(columns, cols, X, n, d)\n\n"
"The coverage transform of numeric columns written into their columns of the row matrix:\n"
"X[i, cols[j]] = sign(v) * log1p(min(|v|, 1e300)) for v = columns[j][i], i < n (NumPy's sign: 1, -1,\n"
"0 for +-0; NaN stays NaN), with libm's log1p. columns: a sequence of float64 buffers of n values,\n"
"cols: int64 (len(columns),) in [0, d), X (n, d) float64 writable, C order. Rows in blocks, every\n"
"column of a block before the next, so each block of X is written while it is in cache.");

#define NR_BLOCK 512

static PyObject *numeric_rows(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_buffer Cb, Xb;
    Py_ssize_t n, d;
    if (!PyArg_ParseTuple(args, "Oy*w*nn", &seq, &Cb, &Xb, &n, &d)) return NULL;
    PyObject *ret = NULL, *fast = NULL;
    Py_buffer *bufs = NULL;
    Py_ssize_t k = 0, got = 0;
    const int64_t *cols = (const int64_t *)Cb.buf;
    if (n < 0 || d < 1 || n > PY_SSIZE_T_MAX / 8 / d || Xb.len < n * d * 8 || Cb.len % 8) {
        PyErr_SetString(PyExc_ValueError, "numeric_rows: X must hold n*d float64, cols int64");
        goto done;
    }
    fast = PySequence_Fast(seq, "numeric_rows: columns must be a sequence of buffers");
    if (!fast) goto done;
    k = PySequence_Fast_GET_SIZE(fast);
    if (Cb.len / 8 != k) { PyErr_SetString(PyExc_ValueError, "numeric_rows: one cols entry per column"); goto done; }
    bufs = (Py_buffer *)calloc((size_t)(k ? k : 1), sizeof(Py_buffer));
    if (!bufs) { PyErr_NoMemory(); goto done; }
    for (; got < k; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &bufs[got], PyBUF_SIMPLE) < 0) goto done;
        if (bufs[got].len < n * 8 || cols[got] < 0 || cols[got] >= d) {
            got++;
            PyErr_SetString(PyExc_ValueError, "numeric_rows: each column must hold n float64, its cols entry in [0, d)");
            goto done;
        }
    }
    double *X = (double *)Xb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < n; s += NR_BLOCK) {
        const Py_ssize_t e = s + NR_BLOCK < n ? s + NR_BLOCK : n;
        for (Py_ssize_t j = 0; j < k; j++) {
            const double *v = (const double *)bufs[j].buf;
            double *x = X + cols[j];
            for (Py_ssize_t i = s; i < e; i++) {
                const double a = v[i];
                if (a != a) { x[i * d] = a; continue; }
                double t = fabs(a);
                t = t > 1e300 ? 1e300 : t;
                const double sg = a > 0 ? 1.0 : (a < 0 ? -1.0 : 0.0);
                x[i * d] = sg * log1p(t);
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    for (Py_ssize_t j = 0; j < got; j++) PyBuffer_Release(&bufs[j]);
    free(bufs);
    Py_XDECREF(fast);
    PyBuffer_Release(&Cb); PyBuffer_Release(&Xb);
    return ret;
}

PyDoc_STRVAR(hashed_rows_at_doc,
"hashed_rows_at(rows, h, X, n, d, col)\n\n"
"hashed_rows written into columns col .. col + 7 of X (n, d) float64 writable, C order, instead of\n"
"an (n, 8) array of its own.");

static PyObject *hashed_rows_at(PyObject *self, PyObject *args) {
    Py_buffer R, H, O;
    Py_ssize_t n, d, col;
    if (!PyArg_ParseTuple(args, "y*y*w*nnn", &R, &H, &O, &n, &d, &col)) return NULL;
    PyObject *ret = NULL;
    const Py_ssize_t m = R.len / 8;
    if (R.len % 8 || H.len != R.len || n < 0 || d < 8 || col < 0 || col > d - 8 || n > PY_SSIZE_T_MAX / 8 / d
        || O.len < n * d * 8) {
        PyErr_SetString(PyExc_ValueError, "hashed_rows_at: rows int64 and h uint64 of one length, X n*d float64, col + 8 <= d");
        goto done;
    }
    const int64_t *r = (const int64_t *)R.buf;
    const uint64_t *h = (const uint64_t *)H.buf;
    double *o = (double *)O.buf + col;
    for (Py_ssize_t t = 0; t < m; t++)
        if (r[t] < 0 || r[t] >= n) { PyErr_SetString(PyExc_ValueError, "hashed_rows_at: a row is out of range"); goto done; }
    Py_BEGIN_ALLOW_THREADS
    hashed_fill(r, h, m, o, n, d);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&R); PyBuffer_Release(&H); PyBuffer_Release(&O);
    return ret;
}

PyDoc_STRVAR(take_rows_at_doc,
"take_rows_at(table, codes, X, n, d, col, width)\n\n"
"X[i, col:col + width] = table[codes[i]] for i < n: table (k, width) float64 C order, codes int64 in\n"
"[-1, k) with -1 meaning the last row (np.take's mode='wrap' for -1), X (n, d) float64 writable, C\n"
"order. What X[:, col:col + width] = np.take(table, codes, axis=0, mode='wrap') gives, without the\n"
"(n, width) temporary.");

static PyObject *take_rows_at(PyObject *self, PyObject *args) {
    Py_buffer Tb, Cb, O;
    Py_ssize_t n, d, col, width;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnn", &Tb, &Cb, &O, &n, &d, &col, &width)) return NULL;
    PyObject *ret = NULL;
    if (Cb.len % 8 || n < 0 || Cb.len / 8 != n || width < 1 || d < width || col < 0 || col > d - width
        || Tb.len % (8 * width) || Tb.len == 0 || (n > 0 && n > PY_SSIZE_T_MAX / 8 / d) || O.len < n * d * 8) {
        PyErr_SetString(PyExc_ValueError, "take_rows_at: table (k, width) float64 with k >= 1, codes n int64, "
                        "X n*d float64, col + width <= d");
        goto done;
    }
    const Py_ssize_t k = Tb.len / (8 * width);
    const int64_t *c = (const int64_t *)Cb.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (c[i] < -1 || c[i] >= k) { PyErr_SetString(PyExc_ValueError, "take_rows_at: a code is out of range"); goto done; }
    const double *t = (const double *)Tb.buf;
    double *o = (double *)O.buf + col;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *src = t + (size_t)(c[i] < 0 ? k - 1 : c[i]) * (size_t)width;
        double *dst = o + (size_t)i * (size_t)d;
        for (Py_ssize_t j = 0; j < width; j++) dst[j] = src[j];
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&Tb); PyBuffer_Release(&Cb); PyBuffer_Release(&O);
    return ret;
}

/* ------------------------------------------------------------------ partition histograms (engine/sketch.py) */
PyDoc_STRVAR(pair_counts_doc,
"pair_counts(part, rows, bucket, n_parts, max_cells) -> (part, bucket, count) or None\n\n"
"sketch.partition_counts: occurrences per distinct (partition, bucket), sorted by (partition, bucket):\n"
"part int64 (partition of each row), rows int64 (the row of each occurrence) or None (occurrence i\n"
"is row i), bucket int32 (one per occurrence). Returns three bytearrays (int32, int32, uint32 values),\n"
"or None when n_parts x distinct buckets exceeds max_cells (the caller counts by sorting).");

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static PyObject *pair_counts(PyObject *self, PyObject *args) {
    Py_buffer P, Rb = {0}, B;
    PyObject *rows_obj;
    Py_ssize_t n_parts, max_cells;
    if (!PyArg_ParseTuple(args, "y*Oy*nn", &P, &rows_obj, &B, &n_parts, &max_cells)) return NULL;
    PyObject *ret = NULL, *op = NULL, *ob = NULL, *oc = NULL;
    int have_rows = rows_obj != Py_None;
    int32_t *slot_key = NULL, *rank = NULL, *uniq = NULL;
    uint32_t *sid = NULL, *cnt = NULL;
    uint8_t *used = NULL;
    if (have_rows && PyObject_GetBuffer(rows_obj, &Rb, PyBUF_SIMPLE) < 0) { have_rows = 0; goto done; }
    const Py_ssize_t n_rows = P.len / 8, m = B.len / 4;
    if (P.len % 8 || B.len % 4 || (have_rows ? Rb.len != m * 8 : n_rows != m) || n_parts < 1 || max_cells < 0
        || m > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "pair_counts: part int64 per row, rows int64 per occurrence (or None: one per row), "
                                          "bucket int32 per occurrence, n_parts >= 1");
        goto done;
    }
    const int64_t *part = (const int64_t *)P.buf, *rr = have_rows ? (const int64_t *)Rb.buf : NULL;
    const int32_t *bk = (const int32_t *)B.buf;
    for (Py_ssize_t i = 0; i < n_rows; i++)
        if (part[i] < 0 || part[i] >= n_parts) { PyErr_SetString(PyExc_ValueError, "pair_counts: a partition is out of range"); goto done; }
    if (have_rows)
        for (Py_ssize_t i = 0; i < m; i++)
            if (rr[i] < 0 || rr[i] >= n_rows) { PyErr_SetString(PyExc_ValueError, "pair_counts: a row is out of range"); goto done; }
    /* the distinct buckets: a hash set of int32 keys; each occurrence's slot kept for the count pass */
    size_t cap = 256;
    slot_key = (int32_t *)malloc(cap * sizeof(int32_t));
    sid = (uint32_t *)malloc((size_t)(m ? m : 1) * sizeof(uint32_t));
    used = (uint8_t *)calloc(cap, 1);
    if (!slot_key || !sid || !used) { PyErr_NoMemory(); goto done; }
    size_t nb = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < m; i++) {
        const int32_t key = bk[i];
        size_t pos = (size_t)(((uint32_t)key * 0x9E3779B1u) >> 8) & (cap - 1);
        while (used[pos] && slot_key[pos] != key) pos = (pos + 1) & (cap - 1);
        if (!used[pos]) {
            used[pos] = 1; slot_key[pos] = key;
            if (++nb * 4 > cap) {             /* grow: rehash and renumber the slots seen so far */
                const size_t ncap = cap * 4;
                int32_t *nk = (int32_t *)malloc(ncap * sizeof(int32_t));
                uint8_t *nu = (uint8_t *)calloc(ncap, 1);
                uint32_t *move = (uint32_t *)malloc(cap * sizeof(uint32_t));
                if (!nk || !nu || !move) { free(nk); free(nu); free(move); nomem = 1; break; }
                for (size_t s = 0; s < cap; s++) {
                    if (!used[s]) continue;
                    size_t p2 = (size_t)(((uint32_t)slot_key[s] * 0x9E3779B1u) >> 8) & (ncap - 1);
                    while (nu[p2]) p2 = (p2 + 1) & (ncap - 1);
                    nu[p2] = 1; nk[p2] = slot_key[s]; move[s] = (uint32_t)p2;
                }
                for (Py_ssize_t j = 0; j < i; j++) sid[j] = move[sid[j]];
                pos = move[pos];
                free(slot_key); free(used); free(move);
                slot_key = nk; used = nu; cap = ncap;
            }
        }
        sid[i] = (uint32_t)pos;
    }
    Py_END_ALLOW_THREADS
    if (nomem) { PyErr_NoMemory(); goto done; }
    if ((size_t)n_parts > (size_t)max_cells / (nb ? nb : 1) || n_parts * (Py_ssize_t)nb > max_cells) {
        Py_INCREF(Py_None);
        ret = Py_None;
        goto done;
    }
    const size_t cells = (size_t)n_parts * nb;
    uniq = (int32_t *)malloc((nb ? nb : 1) * sizeof(int32_t));
    rank = (int32_t *)malloc(cap * sizeof(int32_t));
    cnt = (uint32_t *)calloc(cells ? cells : 1, sizeof(uint32_t));
    if (!uniq || !rank || !cnt) { PyErr_NoMemory(); goto done; }
    size_t q = 0;
    for (size_t s = 0; s < cap; s++) if (used[s]) uniq[q++] = slot_key[s];
    qsort(uniq, nb, sizeof(int32_t), cmp_i32);
    for (size_t s = 0; s < cap; s++) {
        if (!used[s]) continue;
        size_t lo = 0, hi = nb;                /* slot_key[s] is in uniq: its index */
        while (hi - lo > 1) { const size_t mid = (lo + hi) / 2; if (uniq[mid] <= slot_key[s]) lo = mid; else hi = mid; }
        rank[s] = (int32_t)lo;
    }
    size_t nnz = 0;
    Py_BEGIN_ALLOW_THREADS
    if (rr) for (Py_ssize_t i = 0; i < m; i++) cnt[(size_t)part[rr[i]] * nb + (size_t)rank[sid[i]]]++;
    else for (Py_ssize_t i = 0; i < m; i++) cnt[(size_t)part[i] * nb + (size_t)rank[sid[i]]]++;
    for (size_t c = 0; c < cells; c++) nnz += cnt[c] != 0;
    Py_END_ALLOW_THREADS
    op = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(nnz * 4));
    ob = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(nnz * 4));
    oc = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(nnz * 4));
    if (!op || !ob || !oc) goto done;
    int32_t *wp = (int32_t *)PyByteArray_AS_STRING(op), *wb = (int32_t *)PyByteArray_AS_STRING(ob);
    uint32_t *wc = (uint32_t *)PyByteArray_AS_STRING(oc);
    size_t o = 0;
    for (Py_ssize_t p = 0; p < n_parts; p++) {
        const uint32_t *row = cnt + (size_t)p * nb;
        for (size_t r = 0; r < nb; r++)
            if (row[r]) { wp[o] = (int32_t)p; wb[o] = uniq[r]; wc[o] = row[r]; o++; }
    }
    ret = PyTuple_Pack(3, op, ob, oc);
done:
    Py_XDECREF(op); Py_XDECREF(ob); Py_XDECREF(oc);
    free(slot_key); free(used); free(rank); free(uniq); free(sid); free(cnt);
    if (have_rows) PyBuffer_Release(&Rb);
    PyBuffer_Release(&P); PyBuffer_Release(&B);
    return ret;
}

/* ------------------------------------------------------------------ signature dictionaries (engine/signature_records.py) */
PyDoc_STRVAR(sig_dictionary_doc,
"sig_dictionary(sig, n_f, n_p, sn, si, width) -> (sd, max_sn)\n\n"
"signature_records.dictionary's format-2 record of the (n_f, n_p) uint32 matrix sig (C order): per\n"
"permutation j, sn[j] = its number of distinct values, sd = every permutation's distinct values\n"
"ascending, concatenated (a bytearray of uint32 values), si[j, f] = the index of sig[f, j] among\n"
"permutation j's values. sn (n_p) and si (n_p, n_f, C order): writable unsigned integers of width\n"
"bytes (1, 2, 4 or 8) holding n_f; n_f < 2**30. Returns sd and the largest sn (0 without values).");

/* One permutation at a time. Up to SD_HASHED features: its values are numbered in order of first
 * appearance with a hash table (a slot holds (permutation + 1) << 32 | value, so it is cleared once a
 * call), then ranked: up to SD_SMALL distinct values (~2-24 a permutation on real data) by counting
 * the smaller ones, more by an LSD radix sort of value << 32 | number. A feature's index is its
 * number's rank. Nothing branches on whether a value is new or on comparisons of values (on varied
 * data those branches were mispredicted: twice the time); the probe loop runs only on a collision.
 * More features: a radix sort of value << 32 | feature, then one pass (a crafted matrix whose values
 * collide in the table costs O(SD_HASHED) a feature at most). */
#define SD_SMALL 64
#define SD_HASHED 256

static void sd_radix_sort(uint64_t *a, uint64_t *tmp, size_t n) {   /* by the high 32 bits, stable */
    size_t cnt[4][256];
    memset(cnt, 0, sizeof cnt);
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) cnt[b][(a[i] >> (32 + 8 * b)) & 0xFF]++;
    uint64_t *src = a, *dst = tmp;
    for (int b = 0; b < 4; b++) {
        const int sh = 32 + 8 * b;
        if (n == 0 || cnt[b][(src[0] >> sh) & 0xFF] == n) continue;    /* every key has this byte */
        size_t pos = 0;
        for (int v = 0; v < 256; v++) { const size_t c = cnt[b][v]; cnt[b][v] = pos; pos += c; }
        for (size_t i = 0; i < n; i++) dst[cnt[b][(src[i] >> sh) & 0xFF]++] = src[i];
        uint64_t *t = src; src = dst; dst = t;
    }
    if (src != a) memcpy(a, src, n * sizeof(uint64_t));
}

typedef struct {              /* one call's scratch, for nf features */
    uint64_t *slot;           /* (cap) the hash table: (permutation + 1) << 32 | value, 0 when never used */
    uint32_t *snum;           /* (cap) a slot's number */
    int32_t *vals;            /* (nf + 4) the distinct values by number, x ^ 2**31 (signed order = unsigned) */
    uint32_t *num;            /* (nf) each feature's number */
    uint32_t *rank;           /* (nf) each number's rank; each feature's index past SD_HASHED features */
    uint64_t *keys, *tmp;     /* (nf) the keys to sort */
    uint64_t mask;
    int shift;                /* 32 - log2(cap) */
} sd_scratch;

/* permutation j of sig (stamp: its slots' high 32 bits, 1 .. 2**32 - 1): num and rank of sc, its distinct values ascending into out;
 * returns how many */
static uint32_t sd_column(const uint32_t *sig, size_t nf, size_t n_p, size_t j, uint64_t stamp, sd_scratch *sc,
                          uint32_t *out) {
    uint64_t *slot = sc->slot;
    uint32_t *snum = sc->snum, *num = sc->num, *rank = sc->rank;
    int32_t *vals = sc->vals;
    uint32_t d = 0;
    if (nf > SD_HASHED) {                       /* sorted by value, each feature's rank: the count of new values before it */
        for (size_t f = 0; f < nf; f++) sc->keys[f] = (uint64_t)sig[f * n_p + j] << 32 | f;
        sd_radix_sort(sc->keys, sc->tmp, nf);
        uint32_t prev = (uint32_t)(sc->keys[0] >> 32);
        for (size_t i = 0; i < nf; i++) {
            const uint32_t x = (uint32_t)(sc->keys[i] >> 32);
            d += x != prev;
            prev = x;
            out[d] = x;
            rank[(uint32_t)sc->keys[i]] = d;
        }
        return d + 1;
    }
    for (size_t f = 0; f < nf; f++) {
        const uint32_t x = sig[f * n_p + j];
        const uint64_t want = stamp << 32 | x;
        uint64_t h = (uint32_t)(x * 0x9E3779B1u) >> sc->shift;     /* Fibonacci hashing: the product's top bits */
        while ((slot[h] ^ want) - 1 < 0xFFFFFFFFu) h = (h + 1) & sc->mask;  /* this permutation's, another value */
        const uint32_t fresh = slot[h] != want, old = snum[h];
        const uint32_t k = old ^ ((old ^ d) & (0u - fresh));                    /* fresh ? d : old */
        slot[h] = want; snum[h] = k;
        vals[d] = (int32_t)(x ^ 0x80000000u);   /* kept where it is new */
        num[f] = k;
        d += fresh;
    }
    if (d <= SD_SMALL) {                        /* a value's rank: how many are smaller (signed compares of x ^ 2**31:
                                                 * SSE2 compares 4 at once, signed only) */
        const uint32_t d4 = (d + 3) & ~3u;
        vals[d] = vals[d + 1] = vals[d + 2] = INT32_MAX;     /* smaller than none */
        for (uint32_t p = 0; p < d; p++) {
            const int32_t x = vals[p];
            uint32_t r = 0;
            for (uint32_t q = 0; q < d4; q++) r += vals[q] < x;
            rank[p] = r;
            out[r] = (uint32_t)x ^ 0x80000000u;
        }
    } else {
        for (uint32_t p = 0; p < d; p++) sc->keys[p] = (uint64_t)((uint32_t)vals[p] ^ 0x80000000u) << 32 | p;
        sd_radix_sort(sc->keys, sc->tmp, d);
        for (uint32_t p = 0; p < d; p++) { out[p] = (uint32_t)(sc->keys[p] >> 32); rank[(uint32_t)sc->keys[p]] = p; }
    }
    return d;
}

#define SD_ROW(T) do { T *o = (T *)I.buf + (size_t)j * nf;                                              \
                       if (nf > SD_HASHED) for (size_t f = 0; f < nf; f++) o[f] = (T)sc.rank[f];              \
                       else for (size_t f = 0; f < nf; f++) o[f] = (T)sc.rank[sc.num[f]];                     \
                       ((T *)N.buf)[j] = (T)d; } while (0)

static PyObject *sig_dictionary(PyObject *self, PyObject *args) {
    Py_buffer S, N, I;
    Py_ssize_t n_f, n_p;
    int width;
    if (!PyArg_ParseTuple(args, "y*nnw*w*i", &S, &n_f, &n_p, &N, &I, &width)) return NULL;
    PyObject *ret = NULL, *sd = NULL;
    void *mem = NULL;
    if (n_f < 0 || n_p < 0 || n_f >= ((Py_ssize_t)1 << 30) || (width != 1 && width != 2 && width != 4 && width != 8)
        || (width < 8 && ((uint64_t)n_f >> (8 * width)) != 0) || (n_f > 0 && n_p > PY_SSIZE_T_MAX / 8 / n_f)
        || S.len != n_f * n_p * 4 || N.len != n_p * width || I.len != n_f * n_p * width) {
        PyErr_SetString(PyExc_ValueError, "sig_dictionary: sig (n_f, n_p) uint32 with n_f < 2**30, sn n_p and si "
                                          "n_p * n_f unsigned integers of width 1, 2, 4 or 8 bytes holding n_f");
        goto done;
    }
    const size_t nf = (size_t)n_f;
    size_t cap = 16;
    int shift = 28;
    while (cap < 2 * nf && cap < 2 * SD_HASHED) { cap *= 2; shift--; }    /* at most half full */
    sd = PyByteArray_FromStringAndSize(NULL, n_f * n_p * 4);
    if (!sd) goto done;
    mem = calloc(1, cap * 12 + nf * 28 + 16);
    if (!mem) { PyErr_NoMemory(); goto done; }
    sd_scratch sc;
    sc.slot = (uint64_t *)mem; sc.keys = sc.slot + cap; sc.tmp = sc.keys + nf;
    sc.snum = (uint32_t *)(sc.tmp + nf); sc.vals = (int32_t *)(sc.snum + cap); sc.num = (uint32_t *)(sc.vals + nf + 4);
    sc.rank = sc.num + nf;
    sc.mask = cap - 1; sc.shift = shift;
    const uint32_t *sig = (const uint32_t *)S.buf;
    uint32_t *out = (uint32_t *)PyByteArray_AS_STRING(sd);
    size_t total = 0, top = 0;
    uint64_t stamp = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n_p; j++) {
        if (++stamp >> 32) { memset(sc.slot, 0, cap * 8); stamp = 1; }        /* 1 .. 2**32 - 1 */
        const uint32_t d = nf ? sd_column(sig, nf, (size_t)n_p, (size_t)j, stamp, &sc, out + total) : 0;
        switch (width) {
        case 1: SD_ROW(uint8_t); break;
        case 2: SD_ROW(uint16_t); break;
        case 4: SD_ROW(uint32_t); break;
        default: SD_ROW(uint64_t);
        }
        total += d;
        if (d > top) top = d;
    }
    Py_END_ALLOW_THREADS
    if (PyByteArray_Resize(sd, (Py_ssize_t)(total * 4)) < 0) goto done;
    ret = Py_BuildValue("(On)", sd, (Py_ssize_t)top);
done:
    Py_XDECREF(sd);
    free(mem);
    PyBuffer_Release(&S); PyBuffer_Release(&N); PyBuffer_Release(&I);
    return ret;
}
#undef SD_ROW

/* ------------------------------------------------------------------ fused row codes (kernels/rowcodes.py) */
PyDoc_STRVAR(fma_codes_doc,
"fma_codes(X, center, At, out, n, d, T, B, R8, ntotal, start, f64, scalar=False)\n\n"
"The SimHash codes of rows, the projections never written out: for each row i < n, z = X[i] (f64 = 1:\n"
"float64 rows, z[k] = float32(X[i, k] - center[k]), 0 where NaN, as center_f32; f64 = 0: float32 rows\n"
"used as they are), p[r] = the float32 dot product of z with hyperplane r accumulated as BLAS's sgemm\n"
"does on this machine's kernels (acc = 0; acc = fma(At[k, r], z[k], acc) for k = 0 .. d - 1), and\n"
"out[t, start + i] = sum_j [p[t * B + j] > 0] << j. At (d, R8) float32, the T * B hyperplanes as columns\n"
"(R8 >= T * B, a multiple of 8, zero past T * B); out (T, ntotal) int32 writable; B <= 30. scalar: the\n"
"portable loop (fmaf) even where the AVX2 one runs: the same bits (a fused multiply-add is exact).");

#define FC_MAXV 12                    /* 8-lane accumulators per group: 96 projections a pass over z */

static inline void fc_pack(const uint8_t *bit, Py_ssize_t T, Py_ssize_t B, int32_t *o, Py_ssize_t ntotal) {
    for (Py_ssize_t t = 0; t < T; t++) {
        int32_t c = 0;
        const uint8_t *bt = bit + t * B;
        for (Py_ssize_t j = 0; j < B; j++) c |= (int32_t)bt[j] << j;
        o[t * ntotal] = c;
    }
}

/* row i of X into z as float32: centred float64 (NaN -> 0) or float32 as it is */
static inline void fc_row(const void *Xv, const double *cc, Py_ssize_t i, Py_ssize_t d, int f64, float *z) {
    if (f64) {
        const double *xr = (const double *)Xv + i * d;
        for (Py_ssize_t k = 0; k < d; k++) { const float v = (float)(xr[k] - cc[k]); z[k] = v != v ? 0.0f : v; }
    } else {
        memcpy(z, (const float *)Xv + i * d, (size_t)d * sizeof(float));
    }
}

static void fc_rows_scalar(const void *Xv, const double *cc, const float *At, int32_t *o, Py_ssize_t n, Py_ssize_t d,
                           Py_ssize_t T, Py_ssize_t B, Py_ssize_t R8, Py_ssize_t ntotal, int f64, float *z, uint8_t *bit) {
    const Py_ssize_t R = T * B;
    for (Py_ssize_t i = 0; i < n; i++) {
        fc_row(Xv, cc, i, d, f64, z);
        for (Py_ssize_t r = 0; r < R; r++) {
            float acc = 0.0f;
            for (Py_ssize_t k = 0; k < d; k++) acc = fmaf(At[k * R8 + r], z[k], acc);
            bit[r] = acc > 0.0f;
        }
        fc_pack(bit, T, B, o + i, ntotal);
    }
}

#ifdef MS_HAVE_AVX2
static int fc_use_fma = -1;

__attribute__((target("avx2,fma")))
static void fc_rows_avx2(const void *Xv, const double *cc, const float *At, int32_t *o, Py_ssize_t n, Py_ssize_t d,
                         Py_ssize_t T, Py_ssize_t B, Py_ssize_t R8, Py_ssize_t ntotal, int f64, float *z, uint64_t *w) {
    const Py_ssize_t nv = R8 / 8, nw = R8 / 64 + 1;      /* w: nw zeroed words */
    for (Py_ssize_t i = 0; i < n; i++) {
        fc_row(Xv, cc, i, d, f64, z);
        for (Py_ssize_t v0 = 0; v0 < nv; v0 += FC_MAXV) {
            const Py_ssize_t g = nv - v0 < FC_MAXV ? nv - v0 : FC_MAXV;
            __m256 acc[FC_MAXV];
            for (int v = 0; v < FC_MAXV; v++) acc[v] = _mm256_setzero_ps();
            const float *a = At + v0 * 8;
            if (g == FC_MAXV) {
                for (Py_ssize_t k = 0; k < d; k++) {
                    const __m256 zk = _mm256_set1_ps(z[k]);
                    const float *ak = a + k * R8;
                    for (int v = 0; v < FC_MAXV; v++) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(ak + 8 * v), zk, acc[v]);
                }
            } else {
                for (Py_ssize_t k = 0; k < d; k++) {
                    const __m256 zk = _mm256_set1_ps(z[k]);
                    const float *ak = a + k * R8;
                    for (Py_ssize_t v = 0; v < g; v++) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(ak + 8 * v), zk, acc[v]);
                }
            }
            for (Py_ssize_t v = 0; v < g; v++) {      /* 8 sign bits a vector, into 64-bit words */
                const uint64_t m = (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(acc[v], _mm256_setzero_ps(), _CMP_GT_OQ));
                const Py_ssize_t r = (v0 + v) * 8;
                w[r >> 6] |= m << (r & 63);
            }
        }
        for (Py_ssize_t t = 0; t < T; t++) {          /* table t: bits t * B .. t * B + B - 1 */
            const Py_ssize_t p = t * B, q = p >> 6, sh = p & 63;
            uint64_t x = w[q] >> sh;
            if (sh + B > 64) x |= w[q + 1] << (64 - sh);
            o[i + t * ntotal] = (int32_t)(x & (((uint64_t)1 << B) - 1));
        }
        memset(w, 0, (size_t)nw * 8);
    }
}
#endif

static PyObject *fma_codes(PyObject *self, PyObject *args) {
    Py_buffer X, c, A, O;
    Py_ssize_t n, d, T, B, R8, ntotal, start;
    int f64, scalar = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*w*nnnnnnnp|p", &X, &c, &A, &O, &n, &d, &T, &B, &R8, &ntotal, &start, &f64, &scalar))
        return NULL;
    PyObject *ret = NULL;
    float *z = NULL;
    uint8_t *bit = NULL;
    const size_t es = f64 ? 8 : 4;
    if (n < 0 || d < 0 || T < 0 || B < 0 || B > 30 || R8 < 0 || R8 % 8 || (T && B > R8 / T) || start < 0 || ntotal < 0
        || n > ntotal - start || d > PY_SSIZE_T_MAX / 8 || (d && n > PY_SSIZE_T_MAX / 8 / d) || (d && R8 > PY_SSIZE_T_MAX / 4 / d)
        || (T && ntotal > PY_SSIZE_T_MAX / 4 / T) || X.len < (Py_ssize_t)(n * d * es) || (f64 && c.len < d * 8)
        || A.len < d * R8 * 4 || O.len < T * ntotal * 4) {
        PyErr_SetString(PyExc_ValueError, "fma_codes: X n*d rows (float64 with center d float64, or float32), At d*R8 "
                        "float32 (R8 a multiple of 8, >= T*B), out T*ntotal int32, start + n <= ntotal, B <= 30");
        goto done;
    }
    z = (float *)malloc(sizeof(float) * (size_t)(d ? d : 1));
    bit = (uint8_t *)calloc((size_t)R8 + 16, 1);     /* R8 flags (scalar) or R8 / 64 + 1 zeroed words */
    if (!z || !bit) { PyErr_NoMemory(); goto done; }
#ifdef MS_HAVE_AVX2
    if (fc_use_fma < 0) fc_use_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");   /* GIL held */
#endif
    Py_BEGIN_ALLOW_THREADS
#ifdef MS_HAVE_AVX2
    if (fc_use_fma && !scalar)
        fc_rows_avx2(X.buf, (const double *)c.buf, (const float *)A.buf, (int32_t *)O.buf + start, n, d, T, B, R8, ntotal,
                     f64, z, (uint64_t *)bit);
    else
#endif
        fc_rows_scalar(X.buf, (const double *)c.buf, (const float *)A.buf, (int32_t *)O.buf + start, n, d, T, B, R8, ntotal,
                       f64, z, bit);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    free(z); free(bit);
    PyBuffer_Release(&X); PyBuffer_Release(&c); PyBuffer_Release(&A); PyBuffer_Release(&O);
    return ret;
}

/* ------------------------------------------------------------------ sketch histogram check (engine/sketch.py) */
PyDoc_STRVAR(hist_check_doc,
"hist_check(part, feat, bucket, count, n, n_partitions, n_features) -> int\n\n"
"check_sketch's histogram tests in one pass over the COO arrays (part, feat, bucket int32, count uint32,\n"
"n each): bit 1 set when a part is outside [0, n_partitions) or a feat outside [0, n_features), bit 2 when\n"
"a count is 0, bit 4 when (part, feat, bucket) does not strictly increase from one non-zero to the next.");

static PyObject *hist_check(PyObject *self, PyObject *args) {
    Py_buffer P, F, B, C;
    Py_ssize_t n;
    long long n_parts, n_feats;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nLL", &P, &F, &B, &C, &n, &n_parts, &n_feats)) return NULL;
    PyObject *ret = NULL;
    if (n < 0 || P.len != n * 4 || F.len != n * 4 || B.len != n * 4 || C.len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "hist_check: part, feat, bucket int32 and count uint32, n each");
        goto done;
    }
    const int32_t *p = (const int32_t *)P.buf, *f = (const int32_t *)F.buf, *b = (const int32_t *)B.buf;
    const uint32_t *c = (const uint32_t *)C.buf;
    int range = 0, zero = 0, order = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        range |= (p[i] < 0) | ((long long)p[i] >= n_parts) | (f[i] < 0) | ((long long)f[i] >= n_feats);
        zero |= c[i] == 0;
    }
    for (Py_ssize_t i = 1; i < n; i++)
        order |= !(p[i] > p[i - 1] || (p[i] == p[i - 1] && (f[i] > f[i - 1] || (f[i] == f[i - 1] && b[i] > b[i - 1]))));
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLong((long)(range | (zero << 1) | (order << 2)));
done:
    PyBuffer_Release(&P); PyBuffer_Release(&F); PyBuffer_Release(&B); PyBuffer_Release(&C);
    return ret;
}

/* ------------------------------------------------------------------ sparse projections (engine/profiles.py) */
PyDoc_STRVAR(csr_proj_doc,
"csr_proj(indptr, indices, data, A, out, n_rows, n_cols, h)\n\n"
"out = M @ A for the CSR matrix M (n_rows x n_cols: indptr int64 n_rows + 1, indices int64, data float32) and\n"
"A float32 (n_cols, h) C-contiguous, into out float32 (n_rows, h): each out[i, k] summed in float32 over row\n"
"i's non-zeros in their order, one multiply and one add a term (no fused multiply-add), from 0 -- scipy's\n"
"csr_matvecs, bit for bit. The row's outputs are held in registers, 64 columns at a time, while its non-zeros\n"
"stream by. ValueError on indices or indptr out of range.");

#define CP_BLOCK 16   /* non-zeros a block (16 A rows of 512 floats: 32 KiB) */
#if defined(__GNUC__) && !defined(__clang__)
#define CP_NOCONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define CP_NOCONTRACT
#endif

CP_NOCONTRACT
static void cp_scalar(const int64_t *ip, const int64_t *ix, const float *v, const float *A, float *out,
                      Py_ssize_t n_rows, Py_ssize_t h, Py_ssize_t k0) {
    for (Py_ssize_t i = 0; i < n_rows; i++) {
        float *y = out + i * h;
        for (Py_ssize_t k = k0; k < h; k++) y[k] = 0.0f;
        for (int64_t jj = ip[i]; jj < ip[i + 1]; jj++) {
            const float a = v[jj];
            const float *x = A + ix[jj] * h;
            for (Py_ssize_t k = k0; k < h; k++) {
                const float t = a * x[k];
                y[k] = y[k] + t;
            }
        }
    }
}

#ifdef MS_HAVE_AVX2
__attribute__((target("avx2")))
static Py_ssize_t cp_avx2(const int64_t *ip, const int64_t *ix, const float *v, const float *A, float *out,
                          Py_ssize_t n_rows, Py_ssize_t h) {
    const Py_ssize_t hb = h - h % 64;     /* columns done here; the rest by cp_scalar */
    for (Py_ssize_t i = 0; i < n_rows; i++) {
        /* the row's non-zeros CP_BLOCK at a time (their A rows stay in cache across the column tiles), each
           tile's 64 sums in registers over the block: every sum still takes its terms in the row's order */
        for (int64_t b0 = ip[i]; b0 < ip[i + 1] || b0 == ip[i]; b0 += CP_BLOCK) {
            const int64_t b1 = b0 + CP_BLOCK < ip[i + 1] ? b0 + CP_BLOCK : ip[i + 1];
            for (Py_ssize_t t = 0; t < hb; t += 64) {
                float *y = out + i * h + t;
                __m256 y0, y1, y2, y3, y4, y5, y6, y7;
                if (b0 == ip[i]) {
                    y0 = _mm256_setzero_ps(); y1 = y0; y2 = y0; y3 = y0; y4 = y0; y5 = y0; y6 = y0; y7 = y0;
                } else {
                    y0 = _mm256_loadu_ps(y); y1 = _mm256_loadu_ps(y + 8); y2 = _mm256_loadu_ps(y + 16);
                    y3 = _mm256_loadu_ps(y + 24); y4 = _mm256_loadu_ps(y + 32); y5 = _mm256_loadu_ps(y + 40);
                    y6 = _mm256_loadu_ps(y + 48); y7 = _mm256_loadu_ps(y + 56);
                }
                for (int64_t jj = b0; jj < b1; jj++) {
                    const __m256 a = _mm256_set1_ps(v[jj]);
                    const float *x = A + ix[jj] * h + t;
                    y0 = _mm256_add_ps(y0, _mm256_mul_ps(a, _mm256_loadu_ps(x)));
                    y1 = _mm256_add_ps(y1, _mm256_mul_ps(a, _mm256_loadu_ps(x + 8)));
                    y2 = _mm256_add_ps(y2, _mm256_mul_ps(a, _mm256_loadu_ps(x + 16)));
                    y3 = _mm256_add_ps(y3, _mm256_mul_ps(a, _mm256_loadu_ps(x + 24)));
                    y4 = _mm256_add_ps(y4, _mm256_mul_ps(a, _mm256_loadu_ps(x + 32)));
                    y5 = _mm256_add_ps(y5, _mm256_mul_ps(a, _mm256_loadu_ps(x + 40)));
                    y6 = _mm256_add_ps(y6, _mm256_mul_ps(a, _mm256_loadu_ps(x + 48)));
                    y7 = _mm256_add_ps(y7, _mm256_mul_ps(a, _mm256_loadu_ps(x + 56)));
                }
                _mm256_storeu_ps(y, y0); _mm256_storeu_ps(y + 8, y1); _mm256_storeu_ps(y + 16, y2);
                _mm256_storeu_ps(y + 24, y3); _mm256_storeu_ps(y + 32, y4); _mm256_storeu_ps(y + 40, y5);
                _mm256_storeu_ps(y + 48, y6); _mm256_storeu_ps(y + 56, y7);
            }
            if (b1 == ip[i + 1]) break;
        }
    }
    return hb;
}
#endif

static PyObject *csr_proj(PyObject *self, PyObject *args) {
    Py_buffer IP, IX, V, A, O;
    Py_ssize_t n_rows, n_cols, h;
    int scalar = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*nnn|p", &IP, &IX, &V, &A, &O, &n_rows, &n_cols, &h, &scalar)) return NULL;
    PyObject *ret = NULL;
    const int64_t *ip = (const int64_t *)IP.buf, *ix = (const int64_t *)IX.buf;
    if (n_rows < 0 || n_cols < 0 || h < 0 || (h > 0 && n_cols > PY_SSIZE_T_MAX / 4 / h)
        || (h > 0 && n_rows > PY_SSIZE_T_MAX / 4 / h) || IP.len != (n_rows + 1) * 8 || A.len != n_cols * h * 4
        || O.len != n_rows * h * 4 || IX.len % 8 || V.len != IX.len / 2) {
        PyErr_SetString(PyExc_ValueError, "csr_proj: indptr int64 n_rows + 1, indices int64 and data float32 of one "
                                          "length, A float32 (n_cols, h), out float32 (n_rows, h)");
        goto done;
    }
    const Py_ssize_t nnz = IX.len / 8;
    int bad = ip[0] != 0 || ip[n_rows] != nnz;
    for (Py_ssize_t i = 0; i < n_rows && !bad; i++) bad = ip[i + 1] < ip[i];
    for (Py_ssize_t j = 0; j < nnz && !bad; j++) bad = ix[j] < 0 || ix[j] >= n_cols;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "csr_proj: indptr must rise from 0 to len(indices), indices lie in [0, n_cols)");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t k0 = 0;
#ifdef MS_HAVE_AVX2
    if (ms_use_avx2 && !scalar) k0 = cp_avx2(ip, ix, (const float *)V.buf, (const float *)A.buf, (float *)O.buf, n_rows, h);
#endif
    if (k0 < h) cp_scalar(ip, ix, (const float *)V.buf, (const float *)A.buf, (float *)O.buf, n_rows, h, k0);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&IP); PyBuffer_Release(&IX); PyBuffer_Release(&V); PyBuffer_Release(&A); PyBuffer_Release(&O);
    return ret;
}

/* ------------------------------------------------------------------ a batch's dataset-level cells (engine/profiles.py) */
PyDoc_STRVAR(agg_cells_doc,
"agg_cells(lens, feat, bucket, count, d_of, ukey, d_count, m, n) -> n_unique\n\n"
"profiles._aggregate's dataset-level cells of m sketches' histograms (n non-zeros concatenated, lens[i] of\n"
"sketch i; feat, bucket int64, count float64): each sketch's keys feat << 32 | (bucket + 2**31) sorted stably\n"
"(a natural merge sort: a sketch's partitions are sorted runs), the distinct ones written to ukey as\n"
"i << 48 | key (int64, ascending), d_of[j] = the index of non-zero j's key in ukey, d_count[u] = the sum of\n"
"the counts of key u in that stable order (float64, as np.bincount sums them). ValueError where a feat is\n"
"outside [0, 2**16), a bucket outside int32, m > 2**15 or the lengths do not add up to n.");

typedef struct { uint64_t key; int64_t idx; } ac_pair;

/* stable natural merge sort of a[0:n] by key (tmp: n pairs of scratch); returns the sorted array (a or tmp) */
static ac_pair *ac_sort(ac_pair *a, ac_pair *tmp, Py_ssize_t n, Py_ssize_t *runs) {
    Py_ssize_t r = 0;
    runs[r++] = 0;
    for (Py_ssize_t i = 1; i < n; i++)
        if (a[i].key < a[i - 1].key) runs[r++] = i;
    runs[r] = n;
    while (r > 1) {
        Py_ssize_t w = 0;
        for (Py_ssize_t k = 0; k < r; k += 2) {
            const Py_ssize_t lo = runs[k], mid = runs[k + 1], hi = k + 2 <= r ? runs[k + 2] : mid;
            Py_ssize_t i = lo, j = mid, o = lo;
            if (k + 1 == r) {             /* an odd run out: copied as it is */
                memcpy(tmp + lo, a + lo, (size_t)(mid - lo) * sizeof(ac_pair));
            } else {
                while (i < mid && j < hi) tmp[o++] = a[j].key < a[i].key ? a[j++] : a[i++];   /* ties: the left run */
                while (i < mid) tmp[o++] = a[i++];
                while (j < hi) tmp[o++] = a[j++];
            }
            runs[w++] = lo;
        }
        runs[w] = n;
        r = w;
        ac_pair *t = a; a = tmp; tmp = t;
    }
    return a;
}

static PyObject *agg_cells(PyObject *self, PyObject *args) {
    Py_buffer L, F, B, C, D, U, S;
    Py_ssize_t m, n;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*w*nn", &L, &F, &B, &C, &D, &U, &S, &m, &n)) return NULL;
    PyObject *ret = NULL;
    ac_pair *mem = NULL;
    Py_ssize_t *runs = NULL;
    const int64_t *lens = (const int64_t *)L.buf, *feat = (const int64_t *)F.buf, *bucket = (const int64_t *)B.buf;
    const double *count = (const double *)C.buf;
    int64_t *d_of = (int64_t *)D.buf, *ukey = (int64_t *)U.buf;
    double *d_count = (double *)S.buf;
    if (m < 0 || m > (1 << 15) || n < 0 || L.len != m * 8 || F.len != n * 8 || B.len != n * 8 || C.len != n * 8
        || D.len != n * 8 || U.len != n * 8 || S.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "agg_cells: lens int64 m <= 2**15; feat, bucket int64, count float64 and "
                                          "d_of, ukey int64, d_count float64 outputs of n");
        goto done;
    }
    Py_ssize_t total = 0, longest = 0;
    int bad = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        bad |= lens[i] < 0;
        total += lens[i];
        if (lens[i] > longest) longest = lens[i];
    }
    for (Py_ssize_t j = 0; j < n && !bad; j++)
        bad = feat[j] < 0 || feat[j] >= (1 << 16) || bucket[j] < -((int64_t)1 << 31) || bucket[j] >= ((int64_t)1 << 31);
    if (bad || total != n) {
        PyErr_SetString(PyExc_ValueError, "agg_cells: lens must be >= 0 and add up to n, feat in [0, 2**16), bucket int32");
        goto done;
    }
    mem = (ac_pair *)malloc((size_t)(2 * longest + 1) * sizeof(ac_pair));
    runs = (Py_ssize_t *)malloc((size_t)(longest + 2) * sizeof(Py_ssize_t));
    if (!mem || !runs) { PyErr_NoMemory(); goto done; }
    Py_ssize_t u = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t lo = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        const Py_ssize_t len = lens[i];
        ac_pair *a = mem, *tmp = mem + longest;
        for (Py_ssize_t j = 0; j < len; j++) {
            a[j].key = (uint64_t)feat[lo + j] << 32 | (uint64_t)(bucket[lo + j] + ((int64_t)1 << 31));
            a[j].idx = lo + j;
        }
        const ac_pair *sorted = len ? ac_sort(a, tmp, len, runs) : a;
        for (Py_ssize_t j = 0; j < len; j++) {
            if (j == 0 || sorted[j].key != sorted[j - 1].key) {
                ukey[u] = (int64_t)((uint64_t)i << 48 | sorted[j].key);
                d_count[u] = 0.0;
                u++;
            }
            d_of[sorted[j].idx] = u - 1;
            d_count[u - 1] += count[sorted[j].idx];
        }
        lo += len;
    }
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(u);
done:
    free(mem); free(runs);
    PyBuffer_Release(&L); PyBuffer_Release(&F); PyBuffer_Release(&B); PyBuffer_Release(&C);
    PyBuffer_Release(&D); PyBuffer_Release(&U); PyBuffer_Release(&S);
    return ret;
}

PyDoc_STRVAR(part_shares_doc,
"part_shares(prow, feat, count, e, nf, out, n, m)\n\n"
"profiles.records' partition-level values: for non-zeros sorted so that each (prow, feat) group is contiguous,\n"
"out[j] = count[j] / (the group's counts summed in order, from 0) / nf[e[j]] (float64, divided in that order:\n"
"np.bincount's sums and NumPy's two divisions, bit for bit). prow, feat, e int64 and count, out float64 of n;\n"
"nf float64 of m. ValueError where an e is outside [0, m).");

static PyObject *part_shares(PyObject *self, PyObject *args) {
    Py_buffer P, F, C, E, N, O;
    Py_ssize_t n, m;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*nn", &P, &F, &C, &E, &N, &O, &n, &m)) return NULL;
    PyObject *ret = NULL;
    const int64_t *prow = (const int64_t *)P.buf, *feat = (const int64_t *)F.buf, *e = (const int64_t *)E.buf;
    const double *count = (const double *)C.buf, *nf = (const double *)N.buf;
    double *out = (double *)O.buf;
    if (n < 0 || m < 0 || P.len != n * 8 || F.len != n * 8 || C.len != n * 8 || E.len != n * 8 || O.len != n * 8
        || N.len != m * 8) {
        PyErr_SetString(PyExc_ValueError, "part_shares: prow, feat, e int64, count and out float64 of n, nf float64 of m");
        goto done;
    }
    int bad = 0;
    for (Py_ssize_t j = 0; j < n && !bad; j++) bad = e[j] < 0 || e[j] >= m;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "part_shares: e must lie in [0, m)");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t lo = 0;
    while (lo < n) {
        Py_ssize_t hi = lo + 1;
        while (hi < n && prow[hi] == prow[lo] && feat[hi] == feat[lo]) hi++;
        double total = 0.0;
        for (Py_ssize_t j = lo; j < hi; j++) total += count[j];
        for (Py_ssize_t j = lo; j < hi; j++) out[j] = count[j] / total / nf[e[j]];
        lo = hi;
    }
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&P); PyBuffer_Release(&F); PyBuffer_Release(&C); PyBuffer_Release(&E); PyBuffer_Release(&N);
    PyBuffer_Release(&O);
    return ret;
}

/* ------------------------------------------------------------------ an entry's distinct LSH band keys (engine/parts.py) */
PyDoc_STRVAR(band_runs_doc,
"band_runs(sig, lo, k, l, out_keys, out_feat, out_n) -> total\n\n"
"parts.Bands' distinct band keys of m entries: sig uint32 (N, k * l) C-contiguous (the entries' signature rows\n"
"concatenated, entry i's rows lo[i] .. lo[i + 1], lo int64 m + 1), each row whose first value is not 0xFFFFFFFF\n"
"(a non-empty feature) giving l band keys as minhash.feature_band_keys does (key = mix64(band); then k times\n"
"key = mix64(key ^ value), SplitMix64 over uint64). Entry i's distinct keys are written ascending to out_keys\n"
"(uint64) from sum(out_n[:i]), each with the entry-local row of its first occurrence in (row, band) order to\n"
"out_feat (uint32) -- np.unique(..., return_index=True)'s first -- and their count to out_n[i] (int64).\n"
"Returns the sum of out_n. ValueError on shapes or bounds that do not fit.");

static inline uint64_t br_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27; z *= 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static PyObject *band_runs(PyObject *self, PyObject *args) {
    Py_buffer S, LO, K, F, NO;
    Py_ssize_t k, l;
    if (!PyArg_ParseTuple(args, "y*y*nnw*w*w*", &S, &LO, &k, &l, &K, &F, &NO)) return NULL;
    PyObject *ret = NULL;
    uint64_t *pk = NULL, *tk = NULL;
    uint32_t *pp = NULL, *tp = NULL;
    Py_ssize_t *cnt = NULL;
    const Py_ssize_t w = k * l, m = LO.len / 8 - 1;
    const int64_t *lo = (const int64_t *)LO.buf;
    if (k < 1 || l < 1 || k > (1 << 20) || l > (1 << 20) || LO.len % 8 || m < 0 || S.len % (w * 4)
        || lo[0] != 0 || lo[m] != S.len / (w * 4) || K.len != (S.len / (w * 4)) * l * 8
        || F.len != (S.len / (w * 4)) * l * 4 || NO.len != m * 8) {
        PyErr_SetString(PyExc_ValueError, "band_runs: sig uint32 (N, k * l), lo int64 m + 1 from 0 to N, out_keys uint64 "
                                          "and out_feat uint32 of N * l, out_n int64 m");
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++)
        if (lo[i + 1] < lo[i] || lo[i + 1] - lo[i] > 0xFFFFFFFFll) {
            PyErr_SetString(PyExc_ValueError, "band_runs: lo must not decrease, an entry under 2**32 rows");
            goto done;
        }
    Py_ssize_t most = 0;
    for (Py_ssize_t i = 0; i < m; i++) if (lo[i + 1] - lo[i] > most) most = lo[i + 1] - lo[i];
    const Py_ssize_t cap = most * l;
    pk = PyMem_Malloc((size_t)(cap + 1) * 8); tk = PyMem_Malloc((size_t)(cap + 1) * 8);
    pp = PyMem_Malloc((size_t)(cap + 1) * 4); tp = PyMem_Malloc((size_t)(cap + 1) * 4);
    cnt = PyMem_Malloc(2049 * sizeof(Py_ssize_t));
    if (!pk || !tk || !pp || !tp || !cnt) { PyErr_NoMemory(); goto done; }
    const uint32_t *sig = (const uint32_t *)S.buf;
    uint64_t *ok = (uint64_t *)K.buf;
    uint32_t *of = (uint32_t *)F.buf;
    int64_t *on = (int64_t *)NO.buf;
    Py_ssize_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t e = 0; e < m; e++) {
        /* the entry's keys in (row, band) order, with their row */
        Py_ssize_t n = 0;
        for (int64_t r = lo[e]; r < lo[e + 1]; r++) {
            const uint32_t *row = sig + r * w;
            if (row[0] == 0xFFFFFFFFu) continue;
            for (Py_ssize_t b = 0; b < l; b++) {
                uint64_t key = br_mix((uint64_t)b);
                for (Py_ssize_t i = 0; i < k; i++) key = br_mix(key ^ (uint64_t)row[b * k + i]);
                pk[n] = key; pp[n] = (uint32_t)(r - lo[e]); n++;
            }
        }
        /* sorted by key, stably (a counting sort on the top 11 bits, then an insertion sort within each
           bucket, which keeps the (row, band) order of equal keys): the first of equal keys is the first in
           that order */
        const int shift = 64 - 11;
        memset(cnt, 0, 2049 * sizeof(Py_ssize_t));
        for (Py_ssize_t j = 0; j < n; j++) cnt[(pk[j] >> shift) + 1]++;
        for (int d = 0; d < 2048; d++) cnt[d + 1] += cnt[d];
        for (Py_ssize_t j = 0; j < n; j++) {
            const Py_ssize_t at = cnt[pk[j] >> shift]++;
            tk[at] = pk[j]; tp[at] = pp[j];
        }
        for (Py_ssize_t j = 1; j < n; j++) {          /* buckets are contiguous and ordered: one insertion sort */
            const uint64_t x = tk[j];
            const uint32_t y = tp[j];
            Py_ssize_t i = j;
            while (i > 0 && tk[i - 1] > x) { tk[i] = tk[i - 1]; tp[i] = tp[i - 1]; i--; }
            tk[i] = x; tp[i] = y;
        }
        Py_ssize_t u = 0;
        for (Py_ssize_t j = 0; j < n; j++)
            if (j == 0 || tk[j] != tk[j - 1]) { ok[total + u] = tk[j]; of[total + u] = tp[j]; u++; }
        on[e] = u;
        total += u;
    }
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(total);
done:
    PyMem_Free(pk); PyMem_Free(tk); PyMem_Free(pp); PyMem_Free(tp); PyMem_Free(cnt);
    PyBuffer_Release(&S); PyBuffer_Release(&LO); PyBuffer_Release(&K); PyBuffer_Release(&F); PyBuffer_Release(&NO);
    return ret;
}

/* ------------------------------------------------------------------ a batch's packed histograms (engine/partitions.py) */
PyDoc_STRVAR(hist_runs_doc,
"hist_runs(e, part, feat, bucket, count, n_f, c_off, n_all, b0, g8, gxi, gxv, c8, cxi, cxv, offs) -> (S, G, GX, CX)\n\n"
"partitions.pack_hists' arrays of m sketches' histograms concatenated in one pass (e, part, feat, bucket int64 and\n"
"count float64, N non-zeros, e ascending in [0, m); n_f int64 m; c_off int64 m + 1, sketch i's cells\n"
"c_off[i] .. c_off[i + 1]): n_all[c_off[e] + part * n_f[e] + feat] += 1 (n_all int64, zeroed by the caller); each\n"
"cell's first bucket to b0 (S of them); every other non-zero's gap to the bucket before to g8 (G; 255 where the\n"
"gap is 255 or more, the gap's index within its sketch's gaps and its value to gxi / gxv, GX of them); each\n"
"count (as int64) to c8 (255 from 255 on, its index within the sketch and value to cxi / cxv, CX of them);\n"
"offs int64 (5, m + 1): each sketch's first non-zero, first start, first gap, first gap and count exception.\n"
"ValueError where e is not ascending in [0, m), a cell falls outside its sketch or a count is not in [0, 2**63).");

static PyObject *hist_runs(PyObject *self, PyObject *args) {
    Py_buffer E_, P_, F_, B_, C_, NF, CO, NA, B0, G8, GXI, GXV, C8, CXI, CXV, OF;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*w*w*w*w*w*w*w*", &E_, &P_, &F_, &B_, &C_, &NF, &CO, &NA, &B0, &G8,
                          &GXI, &GXV, &C8, &CXI, &CXV, &OF)) return NULL;
    PyObject *ret = NULL;
    const Py_ssize_t n = E_.len / 8, m = NF.len / 8;
    const int64_t *e = E_.buf, *part = P_.buf, *feat = F_.buf, *bucket = B_.buf, *nf = NF.buf, *co = CO.buf;
    const double *count = C_.buf;
    int64_t *na = NA.buf, *b0 = B0.buf, *gxi = GXI.buf, *gxv = GXV.buf, *cxi = CXI.buf, *cxv = CXV.buf, *of = OF.buf;
    uint8_t *g8 = G8.buf, *c8 = C8.buf;
    if (E_.len % 8 || P_.len != E_.len || F_.len != E_.len || B_.len != E_.len || C_.len != E_.len || NF.len % 8
        || CO.len != (m + 1) * 8 || co[0] != 0 || NA.len != co[m] * 8 || B0.len != n * 8 || G8.len != n || GXI.len != n * 8
        || GXV.len != n * 8 || C8.len != n || CXI.len != n * 8 || CXV.len != n * 8 || OF.len != 5 * (m + 1) * 8) {
        PyErr_SetString(PyExc_ValueError, "hist_runs: arrays of N (e, part, feat, bucket int64, count float64), n_f int64 m, "
                                          "c_off int64 m + 1 from 0, n_all int64 c_off[m], outputs of N, offs int64 (5, m + 1)");
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++)
        if (co[i + 1] < co[i]) { PyErr_SetString(PyExc_ValueError, "hist_runs: c_off must not decrease"); goto done; }
    int bad = 0;
    Py_ssize_t S = 0, G = 0, GX = 0, CX = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t cur = -1, prev_cell = 0, g_lo = 0;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        const int64_t ei = e[i];
        if (ei < cur || ei >= m) { bad = 1; break; }
        const int start_entry = ei != cur;
        if (start_entry) {           /* the offsets of every sketch up to this one (those without non-zeros too) */
            for (int64_t j = cur + 1; j <= ei; j++) {
                of[j] = i; of[(m + 1) + j] = S; of[2 * (m + 1) + j] = G; of[3 * (m + 1) + j] = GX; of[4 * (m + 1) + j] = CX;
            }
            cur = ei;
            g_lo = G;
        }
        const int64_t cell = part[i] * nf[ei] + feat[i];
        if (part[i] < 0 || feat[i] < 0 || feat[i] >= nf[ei] || cell < 0 || cell >= co[ei + 1] - co[ei]) { bad = 2; break; }
        na[co[ei] + cell] += 1;
        if (start_entry || cell != prev_cell) {
            b0[S++] = bucket[i];
        } else {
            const int64_t gap = (int64_t)((uint64_t)bucket[i] - (uint64_t)bucket[i - 1]);
            if (gap >= 255) { g8[G] = 255; gxi[GX] = G - g_lo; gxv[GX] = gap; GX++; }
            else g8[G] = (uint8_t)gap;
            G++;
        }
        prev_cell = cell;
        const double cd = count[i];
        if (!(cd >= 0.0 && cd < 9223372036854775808.0)) { bad = 3; break; }
        const int64_t c = (int64_t)cd;
        if (c >= 255) { c8[i] = 255; cxi[CX] = i - of[ei]; cxv[CX] = c; CX++; }
        else c8[i] = (uint8_t)c;
    }
    if (!bad)
        for (int64_t j = cur + 1; j <= m; j++) {
            of[j] = n; of[(m + 1) + j] = S; of[2 * (m + 1) + j] = G; of[3 * (m + 1) + j] = GX; of[4 * (m + 1) + j] = CX;
        }
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad == 1 ? "hist_runs: e must be ascending in [0, m)" : bad == 2
                        ? "hist_runs: a cell lies outside its sketch's partitions x features"
                        : "hist_runs: counts must lie in [0, 2**63)");
        goto done;
    }
    ret = Py_BuildValue("nnnn", S, G, GX, CX);
done:
    PyBuffer_Release(&E_); PyBuffer_Release(&P_); PyBuffer_Release(&F_); PyBuffer_Release(&B_); PyBuffer_Release(&C_);
    PyBuffer_Release(&NF); PyBuffer_Release(&CO); PyBuffer_Release(&NA); PyBuffer_Release(&B0); PyBuffer_Release(&G8);
    PyBuffer_Release(&GXI); PyBuffer_Release(&GXV); PyBuffer_Release(&C8); PyBuffer_Release(&CXI); PyBuffer_Release(&CXV);
    PyBuffer_Release(&OF);
    return ret;
}

static PyMethodDef methods[] = {
    {"ms_csr", ms_csr, METH_VARARGS, ms_csr_doc},
    {"ms_tokens", ms_tokens, METH_VARARGS, ms_tokens_doc},
    {"count_ascii_tokens", count_ascii_tokens, METH_VARARGS, count_ascii_tokens_doc},
    {"ascii_tokens", ascii_tokens, METH_VARARGS, ascii_tokens_doc},
    {"center_f32", center_f32, METH_VARARGS, center_f32_doc},
    {"sign_codes", sign_codes, METH_VARARGS, sign_codes_doc},
    {"sign_mul_col", sign_mul_col, METH_VARARGS, sign_mul_col_doc},
    {"numeric_buckets", numeric_buckets_c, METH_VARARGS, numeric_buckets_doc},
    {"hashed_rows", hashed_rows, METH_VARARGS, hashed_rows_doc},
    {"nan_col_sums", nan_col_sums, METH_VARARGS, nan_col_sums_doc},
    {"libm_apply", libm_apply, METH_VARARGS, libm_apply_doc},
    {"numeric_quantize", numeric_quantize, METH_VARARGS, numeric_quantize_doc},
    {"numeric_rows", numeric_rows, METH_VARARGS, numeric_rows_doc},
    {"hashed_rows_at", hashed_rows_at, METH_VARARGS, hashed_rows_at_doc},
    {"take_rows_at", take_rows_at, METH_VARARGS, take_rows_at_doc},
    {"pair_counts", pair_counts, METH_VARARGS, pair_counts_doc},
    {"sig_dictionary", sig_dictionary, METH_VARARGS, sig_dictionary_doc},
    {"fma_codes", fma_codes, METH_VARARGS, fma_codes_doc},
    {"hist_check", hist_check, METH_VARARGS, hist_check_doc},
    {"csr_proj", csr_proj, METH_VARARGS, csr_proj_doc},
    {"agg_cells", agg_cells, METH_VARARGS, agg_cells_doc},
    {"part_shares", part_shares, METH_VARARGS, part_shares_doc},
    {"band_runs", band_runs, METH_VARARGS, band_runs_doc},
    {"hist_runs", hist_runs, METH_VARARGS, hist_runs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cminhash",
                                    "MinHash (multiply-shift family) compiled for the CPU.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cminhash(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
#ifdef MS_HAVE_AVX2
    __builtin_cpu_init();
    ms_use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (PyModule_AddIntConstant(m, "AVX2", ms_use_avx2) < 0) { Py_DECREF(m); return NULL; }
#else
    if (PyModule_AddIntConstant(m, "AVX2", 0) < 0) { Py_DECREF(m); return NULL; }
#endif
    return m;
}
