/* Redis (RESP2/RESP3) and memcached (text and meta protocols) recognition
 * from the first bytes of a payload, not the port.
 *
 * Pure functions over a byte buffer: no BPF helpers, no kernel types, so
 * the same code compiles into a BPF program and natively (the unit tests
 * load it with cffi and check it against agent/parsers/redis.py and
 * memcached.py's looks_like_* functions, which follow the same rules).
 * Every read is within the window, and the code is straight-line (below
 * why), for the verifier.
 *
 * `buf` must point at CACHE_CLASSIFY_WINDOW readable bytes; only the first
 * `len` of them hold payload.  Only the first CACHE_CLASSIFY_WINDOW bytes
 * are looked at.
 *
 * Conservative: what is accepted must look like the start of a message
 * these clients and servers actually send, so that HTTP/1 (upper-case
 * methods, "HTTP/1.x"), the HTTP/2 preface and frames, PostgreSQL and MySQL
 * packets are never taken for a cache protocol.
 * - Redis requests: a RESP array header, then a bulk string holding a
 *   command word ("*3\r\n$3\r\nSET\r\n...").  Inline commands (text lines,
 *   what a person types into nc) are not recognised.
 * - Redis replies: a complete first line of a RESP2/RESP3 value.
 * - memcached requests: a lower-case command word (the server accepts no
 *   other case) and a blank and a printable byte, or a command that stands
 *   alone on its line.  "get key\r\n" is also a valid Redis inline command:
 *   it is taken for memcached, which is what sends it.
 * - memcached replies: a status word and what follows it; a bare number
 *   (the answer to incr/decr) is not recognised.
 */
#ifndef OTEL_EBPF_CACHE_CLASSIFY_H
#define OTEL_EBPF_CACHE_CLASSIFY_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* A power of two: reads are masked with it. */
#define CACHE_CLASSIFY_WINDOW 32

/* Straight-line code, for the verifier.  BCC inlines the classifiers into
 * every program that copies data (it has no BPF-to-BPF calls), and its
 * compiler (LLVM 14) keeps loops as loops: with a branch per byte on the
 * payload, the verifier walks every combination of their outcomes (the
 * Redis classifiers alone overflowed its 8,192 pending branches).  So past
 * a first-byte test nothing here branches on the payload: tests are 0/1
 * arithmetic, byte classes are tested eight bytes at a time in 64-bit
 * words, runs of a class are counted from a bit mask of the positions
 * that hold it, and the answers are combined with & and |.  The verifier
 * walks each function once, whichever compiler built it. */

/* Positions, lengths, words and 0/1 answers: 64-bit, as BPF's registers,
 * so the compiler adds no zero-extensions. */
typedef unsigned long long cache_u64;

/* Loops over the window are unrolled: kernels before 5.3 accept no loop,
 * and LLVM 14 keeps short ones. */
#if defined(__clang__)
#define CACHE_UNROLL _Pragma("unroll")
#else
#define CACHE_UNROLL _Pragma("GCC unroll 8")
#endif

/* v, as a value the compiler cannot reason about.  Each 0/1 answer passes
 * through it: LLVM recognises `(x | -x) >> 63` and the like as
 * comparisons, and `-bit & y` or `bit * y` as selects, which BPF compiles
 * into jumps. */
static __always_inline cache_u64 cache_opaque(cache_u64 v)
{
    __asm__ volatile("" : "+r"(v));
    return v;
}

/* 1 if a < b, else 0 (both below 2^63). */
static __always_inline cache_u64 cache_lt(cache_u64 a, cache_u64 b)
{
    return cache_opaque(cache_opaque(a - b) >> 63);
}

/* 1 if a == b, else 0. */
static __always_inline cache_u64 cache_eq(cache_u64 a, cache_u64 b)
{
    cache_u64 x = a ^ b;
    return cache_opaque(1 ^ (cache_opaque(x | -x) >> 63));
}

static __always_inline cache_u64 cache_not(cache_u64 bit)
{
    return bit ^ 1;
}

/* x if bit, else 0: a multiply.  Not `x & -bit`: the verifier (6.18)
 * forks its walk in two at each AND of a constant with a value it knows
 * is 0 or -1. */
static __always_inline cache_u64 cache_if(cache_u64 bit, cache_u64 x)
{
    return x * bit;
}

/* 1 if lo <= c <= hi, else 0. */
static __always_inline cache_u64 cache_in(unsigned char c, int lo, int hi)
{
    long long v = c;
    return cache_opaque(1 ^ (cache_opaque((v - lo) | (hi - v)) >> 63));
}

static __always_inline cache_u64 cache_digit(unsigned char c)
{
    return cache_in(c, '0', '9');
}

static __always_inline cache_u64 cache_upper(unsigned char c)
{
    return cache_in(c, 'A', 'Z');
}

static __always_inline cache_u64 cache_lower(unsigned char c)
{
    return cache_in(c, 'a', 'z');
}

static __always_inline cache_u64 cache_letter(unsigned char c)
{
    return cache_lower(c | 0x20);
}

static __always_inline unsigned char cache_at(const unsigned char *buf, cache_u64 i)
{
    /* The index is opaque to the compiler on both sides of the mask:
     * before it, or the compiler drops a mask it proves redundant (which
     * the verifier cannot prove); after it, or with a buffer it knows is
     * 32-byte aligned (BCC's stack arrays) it adds the index with an OR,
     * which the verifier refuses on a pointer. */
    cache_u64 masked = i;
    __asm__ volatile("" : "+r"(masked));
    masked &= CACHE_CLASSIFY_WINDOW - 1;
    __asm__ volatile("" : "+r"(masked));
    return buf[masked];
}

/* min(len, CACHE_CLASSIFY_WINDOW), without a select. */
static __always_inline cache_u64 cache_window(unsigned len)
{
    cache_u64 n = len;
    return n - cache_if(cache_lt(CACHE_CLASSIFY_WINDOW, n), n - CACHE_CLASSIFY_WINDOW);
}

/* ------------------------------------------------------- words of bytes */

/* Bytes 8k to 8k+7 of the window as a little-endian word. */
static __always_inline cache_u64 cache_word(const unsigned char *buf, int k)
{
    cache_u64 v = 0;
    CACHE_UNROLL
    for (int j = 0; j < 8; j++)
        v |= (cache_u64)buf[8 * k + j] << (8 * j);
    /* Opaque, or LLVM keeps a masked copy of the word for each width it
     * is compared at (and spills them). */
    return cache_opaque(v);
}

/* Byte b in each byte of a word. */
static __always_inline cache_u64 cache_bytes(cache_u64 b)
{
    return 0x0101010101010101ULL * b;
}

/* The high bit of each byte of x that lies in [lo, hi] (lo <= 0x80,
 * hi < 0x80): the low seven bits compared with both bounds at once, no
 * carry crossing a byte; bytes from 0x80 up are in no range. */
static __always_inline cache_u64 cache_bytes_in(cache_u64 x, cache_u64 lo, cache_u64 hi)
{
    cache_u64 low7 = x & cache_bytes(0x7f);
    return (low7 + cache_bytes(0x80 - lo)) & (cache_bytes(0x80 + hi) - low7) & ~x &
           cache_bytes(0x80);
}

/* The bytes' high bits (from cache_bytes_in) of word k as bits 8k to 8k+7
 * of a position mask: a multiply gathers the eight bits into one byte. */
static __always_inline cache_u64 cache_positions(cache_u64 highs, int k)
{
    return (((highs >> 7) * 0x0102040810204080ULL) >> 56) << (8 * k);
}

/* 1 if bit i (< 64) of mask is set. */
static __always_inline cache_u64 cache_bit(cache_u64 mask, cache_u64 i)
{
    return (mask >> (i & 63)) & 1;
}

/* How many consecutive bits of mask are set from bit 0 (mask < 2^63). */
static __always_inline cache_u64 cache_ones(cache_u64 mask)
{
    cache_u64 x = ~mask;
    x = cache_opaque((x & -x) - 1);     /* the bits below the lowest clear one */
    x -= (x >> 1) & 0x5555555555555555ULL;
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

/* What the tests below read, made once per payload: the bytes seen and
 * where a CRLF starts.  The window's words are read again where they are
 * used (one load each from a buffer aligned to 8, as the capture's is):
 * kept, they would be spilled to the stack. */
struct cache_view {
    const unsigned char *buf;
    cache_u64 n;        /* bytes seen: min(len, CACHE_CLASSIFY_WINDOW) */
    cache_u64 seen;     /* bit i: byte i is seen */
    cache_u64 crlf;     /* bit i: bytes i and i + 1 are seen and are CRLF */
};

static __always_inline void cache_look(struct cache_view *v, const unsigned char *buf,
                                       unsigned len)
{
    cache_u64 cr = 0, lf = 0;
    v->buf = buf;
    v->n = cache_window(len);
    v->seen = (1ULL << v->n) - 1;
    CACHE_UNROLL
    for (int k = 0; k < CACHE_CLASSIFY_WINDOW / 8; k++) {
        cache_u64 x = cache_word(buf, k);
        cr |= cache_positions(cache_bytes_in(x, '\r', '\r'), k);
        lf |= cache_positions(cache_bytes_in(x, '\n', '\n'), k);
    }
    v->crlf = cr & (lf >> 1) & (v->seen >> 1);
}

/* ------------------------------------------------------------------ Redis */

/* A command word's bytes: letters, digits, '.', '_' ("GET", "JSON.GET"). */
static __always_inline cache_u64 cache_command_bytes(cache_u64 x)
{
    return cache_bytes_in(x | cache_bytes(0x20), 'a', 'z') | cache_bytes_in(x, '0', '9') |
           cache_bytes_in(x, '.', '.') | cache_bytes_in(x, '_', '_');
}

static __always_inline cache_u64 cache_redis_request(const struct cache_view *v)
{
    const unsigned char *buf = v->buf;
    if (buf[0] != '*')
        return 0;
    cache_u64 n = v->n;
    /* The element count: 1 to 7 digits, the first not 0. */
    cache_u64 digits = cache_positions(cache_bytes_in(cache_word(buf, 0), '0', '9'), 0) & v->seen;
    cache_u64 count = cache_ones(digits >> 1);
    cache_u64 ok = cache_not(cache_eq(buf[1], '0')) & cache_lt(0, count);
    cache_u64 i = 1 + count;
    ok &= cache_bit(v->crlf, i) & cache_lt(i + 3, n) & cache_eq(cache_at(buf, i + 2), '$');
    i += 3;
    /* The command word's size: 1 to 99. */
    unsigned char d = cache_at(buf, i);
    ok &= cache_in(d, '1', '9');
    cache_u64 size = d - '0';
    i++;
    unsigned char d2 = cache_at(buf, i);
    cache_u64 two = cache_lt(i, n) & cache_digit(d2);
    size += cache_if(two, size * 9 + d2 - '0');
    i += two;
    ok &= cache_bit(v->crlf, i) & cache_lt(i + 2, n) & cache_letter(cache_at(buf, i + 2));
    i += 2;
    /* The word, up to the end of what is seen.  It starts at 8 at the
     * earliest ("*1\r\n$3\r\n"): the positions from 8 on are looked at. */
    cache_u64 word_bytes = 0;
    CACHE_UNROLL
    for (int k = 1; k < CACHE_CLASSIFY_WINDOW / 8; k++)
        word_bytes = cache_opaque(word_bytes |
                                  cache_positions(cache_command_bytes(cache_word(buf, k)), k));
    cache_u64 word = cache_ones((word_bytes & v->seen) >> (i & (CACHE_CLASSIFY_WINDOW - 1)));
    i += word;
    cache_u64 longer = cache_lt(size, word);
    cache_u64 shorter = cache_lt(word, size);
    /* Shorter: the word runs to the end of what is seen.  As long: what
     * follows it, as far as it is seen, is its CRLF. */
    cache_u64 ends_seen = cache_eq(i, n);
    cache_u64 crlf_follows = (cache_not(cache_lt(i, n)) | cache_eq(cache_at(buf, i), '\r')) &
                             (cache_not(cache_lt(i + 1, n)) | cache_eq(cache_at(buf, i + 1), '\n'));
    return ok & cache_not(longer) & ((shorter & ends_seen) | (cache_not(shorter) & crlf_follows));
}

/* What a reply's type byte says, as bits of one word (one register, where
 * eight flags would be spilled to the stack). */
#define CACHE_RESP_SIMPLE 0     /* + */
#define CACHE_RESP_ERROR 1      /* - */
#define CACHE_RESP_NUMBER 2     /* : ( */
#define CACHE_RESP_BULK 3       /* $ * */
#define CACHE_RESP_SIZED 4      /* $ * % ~ > = ! | (a size or a count) */
#define CACHE_RESP_NULL 5       /* _ */
#define CACHE_RESP_BOOLEAN 6    /* # */
#define CACHE_RESP_DOUBLE 7     /* , */

static __always_inline cache_u64 cache_resp_kind(unsigned char t)
{
    cache_u64 bulk = cache_eq(t, '$') | cache_eq(t, '*');
    cache_u64 sized = bulk | cache_eq(t, '%') | cache_eq(t, '~') | cache_eq(t, '>') |
                      cache_eq(t, '=') | cache_eq(t, '!') | cache_eq(t, '|');
    return cache_eq(t, '+') << CACHE_RESP_SIMPLE | cache_eq(t, '-') << CACHE_RESP_ERROR |
           (cache_eq(t, ':') | cache_eq(t, '(')) << CACHE_RESP_NUMBER |
           bulk << CACHE_RESP_BULK | sized << CACHE_RESP_SIZED |
           cache_eq(t, '_') << CACHE_RESP_NULL | cache_eq(t, '#') << CACHE_RESP_BOOLEAN |
           cache_eq(t, ',') << CACHE_RESP_DOUBLE;
}

/* 1 if the kind has that bit. */
static __always_inline cache_u64 cache_is(cache_u64 kind, int bit)
{
    return (cache_opaque(kind) >> bit) & 1;
}

static __always_inline cache_u64 cache_redis_reply(const struct cache_view *v)
{
    const unsigned char *buf = v->buf;
    cache_u64 kind = cache_resp_kind(buf[0]);
    cache_u64 n = v->n;
    if (!(cache_lt(2, n) & cache_not(cache_eq(kind, 0))))
        return 0;
    /* The run of the type's bytes from 1 (after a number's sign): letters
     * ('+'), capitals ('-'), digits, or a double's characters (digits,
     * '.', sign, exponent, "inf", "nan").  One range (letters folded to
     * lower case for '+'), and a double's second range and signs. */
    cache_u64 simple = cache_is(kind, CACHE_RESP_SIMPLE), error = cache_is(kind, CACHE_RESP_ERROR);
    cache_u64 dbl = cache_is(kind, CACHE_RESP_DOUBLE);
    cache_u64 fold = cache_if(simple, cache_bytes(0x20));
    cache_u64 lo = '0' + cache_if(simple, 'a' - '0') + cache_if(error, 'A' - '0');
    cache_u64 hi = '9' + cache_if(simple, 'z' - '9') + cache_if(error, 'Z' - '9');
    cache_u64 hi2 = 'a' - 1 + cache_if(dbl, 26);
    cache_u64 run_bytes = 0;
    CACHE_UNROLL
    for (int k = 0; k < CACHE_CLASSIFY_WINDOW / 8; k++) {
        cache_u64 x = cache_word(buf, k);
        cache_u64 in_run = cache_bytes_in(x | fold, lo, hi) | cache_bytes_in(x, 'a', hi2) |
                           cache_if(dbl, cache_bytes_in(x, '+', '+') | cache_bytes_in(x, '-', '.'));
        run_bytes = cache_opaque(run_bytes | cache_positions(in_run, k));
    }
    unsigned char b1 = buf[1];
    cache_u64 start = 1 + (cache_is(kind, CACHE_RESP_NUMBER) & cache_eq(b1, '-'));
    cache_u64 run = cache_ones((run_bytes & v->seen) >> start);
    cache_u64 i = start + run;
    cache_u64 line = cache_bit(v->crlf, i);
    cache_u64 some = cache_lt(0, run);
    /* "+OK\r\n", "+FULLRESYNC ..."; "-ERR ...", "-WRONGTYPE ...". */
    cache_u64 found = ((some & cache_is(kind, CACHE_RESP_SIMPLE)) |
                       (cache_lt(1, run) & cache_is(kind, CACHE_RESP_ERROR))) &
                      (line | (cache_lt(i, n) & cache_eq(cache_at(buf, i), ' ')));
    /* ":-12\r\n": up to 20 digits; "*3\r\n": up to 10, no leading zero. */
    cache_u64 counted = some & line &
                        ((cache_is(kind, CACHE_RESP_NUMBER) & cache_lt(run, 21)) |
                         (cache_is(kind, CACHE_RESP_SIZED) & cache_lt(run, 11)));
    found = cache_opaque(found | (cache_is(kind, CACHE_RESP_NUMBER) & counted));
    /* "$-1\r\n"; "*0\r\n"; "%2\r\n". */
    cache_u64 zero = cache_bit(v->crlf, 2);
    cache_u64 is_zero = cache_eq(b1, '0');
    cache_u64 minus_one = cache_eq(b1, '-') & cache_is(kind, CACHE_RESP_BULK);
    found = cache_opaque(found | (minus_one & cache_eq(buf[2], '1') & cache_bit(v->crlf, 3)));
    found = cache_opaque(found | (cache_is(kind, CACHE_RESP_SIZED) & cache_not(minus_one) &
                                  ((is_zero & zero) | (cache_not(is_zero) & counted))));
    /* "_\r\n"; "#t\r\n"; ",1.5e+10\r\n": up to 24 characters. */
    found = cache_opaque(found | (cache_is(kind, CACHE_RESP_NULL) & cache_bit(v->crlf, 1)));
    found = cache_opaque(found | (cache_is(kind, CACHE_RESP_BOOLEAN) &
                                  (cache_eq(b1, 't') | cache_eq(b1, 'f')) & zero));
    return found | (cache_is(kind, CACHE_RESP_DOUBLE) & some & cache_lt(run, 25) & line);
}

/* -------------------------------------------------------------- memcached */

/* The bytes [from, from + 8) of the n-byte word, packed like cache_word's. */
static __always_inline cache_u64 cache_pack(const char *word, cache_u64 from, cache_u64 n)
{
    cache_u64 v = 0;
    for (cache_u64 k = 0; k < 8; k++)
        if (from + k < n)
            v |= (cache_u64)(unsigned char)word[from + k] << (8 * k);
    return v;
}

static __always_inline cache_u64 cache_mask(cache_u64 from, cache_u64 n)
{
    if (n <= from)
        return 0;
    return n - from >= 8 ? ~0ULL : (1ULL << (8 * (n - from))) - 1;
}

/* The first 16 bytes as two words (each word test is two masked compares),
 * which of their positions are seen, which hold a printable byte, and the
 * answer so far. */
struct cache_words {
    cache_u64 w0, w1, seen, printable;
    cache_u64 found;    /* 1 once a word tried matched */
};

static __always_inline struct cache_words cache_words_of(const struct cache_view *v)
{
    cache_u64 w0 = cache_word(v->buf, 0), w1 = cache_word(v->buf, 1);
    cache_u64 printable = cache_positions(cache_bytes_in(w0, 0x21, 0x7e), 0) |
                          cache_positions(cache_bytes_in(w1, 0x21, 0x7e), 1);
    struct cache_words w = { w0, w1, v->seen, printable & v->seen, 0 };
    return w;
}

/* 1 if the payload starts with the n (1 to 16) bytes of word. */
static __always_inline cache_u64 cache_starts(const struct cache_words *w, const char *word,
                                              cache_u64 n)
{
    /* The words opaque again here: each comparison is then computed when
     * its turn comes, not all of them at the start (spilled). */
    cache_u64 w0 = cache_opaque(w->w0), w1 = cache_opaque(w->w1);
    return cache_bit(w->seen, n - 1) &
           cache_eq(((w0 ^ cache_pack(word, 0, n)) & cache_mask(0, n)) |
                    ((w1 ^ cache_pack(word, 8, n)) & cache_mask(8, n)), 0);
}

/* Whether the payload starts with the n bytes of word, into w->found.
 * One word at a time, each answer folded in at once: LLVM 14 would keep
 * every word's answer in a register (or the stack) until the last. */
static __always_inline void cache_try(struct cache_words *w, const char *word, cache_u64 n)
{
    w->found = cache_opaque(w->found | cache_starts(w, word, n));
}

/* Whether the payload is "word " (n bytes with the blank) and a printable
 * byte, into w->found. */
static __always_inline void cache_try_arg(struct cache_words *w, const char *word, cache_u64 n)
{
    w->found = cache_opaque(w->found | (cache_starts(w, word, n) & cache_bit(w->printable, n)));
}

/* In the lists below: "word " and a printable byte; a word that stands
 * alone on its line (or a reply's status and what follows it). */
#define CACHE_ARG(word) cache_try_arg(&w, word, sizeof(word) - 1);
#define CACHE_WORD(word) cache_try(&w, word, sizeof(word) - 1);

static __always_inline cache_u64 cache_memcached_request(const struct cache_view *v)
{
    if (!(cache_lt(3, v->n) & cache_lower(v->buf[0])))
        return 0;
    struct cache_words w = cache_words_of(v);
    CACHE_ARG("get ") CACHE_ARG("gets ") CACHE_ARG("gat ") CACHE_ARG("gats ") CACHE_ARG("set ")
    CACHE_ARG("add ") CACHE_ARG("replace ") CACHE_ARG("append ") CACHE_ARG("prepend ")
    CACHE_ARG("cas ") CACHE_ARG("delete ") CACHE_ARG("incr ") CACHE_ARG("decr ")
    CACHE_ARG("touch ") CACHE_ARG("mg ") CACHE_ARG("ms ") CACHE_ARG("md ") CACHE_ARG("ma ")
    CACHE_ARG("me ") CACHE_ARG("verbosity ") CACHE_ARG("flush_all ") CACHE_ARG("stats ")
    CACHE_WORD("version\r\n") CACHE_WORD("stats\r\n") CACHE_WORD("flush_all\r\n")
    CACHE_WORD("mn\r\n") CACHE_WORD("quit\r\n")
    return w.found;
}

static __always_inline cache_u64 cache_memcached_reply(const struct cache_view *v)
{
    if (!(cache_lt(2, v->n) & cache_upper(v->buf[0])))
        return 0;
    struct cache_words w = cache_words_of(v);
    CACHE_WORD("VALUE ") CACHE_WORD("END\r\n") CACHE_WORD("STORED\r\n")
    CACHE_WORD("NOT_STORED\r\n") CACHE_WORD("EXISTS\r\n") CACHE_WORD("NOT_FOUND\r\n")
    CACHE_WORD("DELETED\r\n") CACHE_WORD("TOUCHED\r\n") CACHE_WORD("OK\r\n")
    CACHE_WORD("ERROR\r\n") CACHE_WORD("CLIENT_ERROR ") CACHE_WORD("SERVER_ERROR ")
    CACHE_WORD("VERSION ") CACHE_WORD("STAT ") CACHE_WORD("RESET\r\n") CACHE_WORD("HD\r\n")
    CACHE_WORD("HD ") CACHE_WORD("VA ") CACHE_WORD("EN\r\n") CACHE_WORD("NF\r\n")
    CACHE_WORD("NF ") CACHE_WORD("NS\r\n") CACHE_WORD("NS ") CACHE_WORD("EX\r\n")
    CACHE_WORD("EX ") CACHE_WORD("MN\r\n") CACHE_WORD("ME ")
    return w.found;
}

/* ------------------------------------------------------------ the tests */

/* is_redis_request, is_redis_reply, is_memcached_request and
 * is_memcached_reply (buf, len): `buf` holds CACHE_CLASSIFY_WINDOW readable
 * bytes, the first `len` of them payload.  Each builds its own view; a
 * caller that asks several of them about one payload builds one view and
 * asks the cache_* forms (bpf/protocols.h does). */
#define CACHE_TEST(name)                                                         \
    static __always_inline int is_##name(const unsigned char *buf, unsigned len) \
    {                                                                            \
        struct cache_view v;                                                     \
        cache_look(&v, buf, len);                                                \
        return (int)cache_##name(&v);                                            \
    }

CACHE_TEST(redis_request)
CACHE_TEST(redis_reply)
CACHE_TEST(memcached_request)
CACHE_TEST(memcached_reply)

#endif
