/* Redis (RESP2/RESP3) and memcached (text and meta protocols) recognition
 * from the first bytes of a payload, not the port.
 *
 * Pure functions over a byte buffer: no BPF helpers, no kernel types, so
 * the same code compiles into a BPF program and natively (the unit tests
 * load it with cffi and check it against agent/parsers/redis.py and
 * memcached.py's looks_like_* functions, which follow the same rules).
 * Every loop has a constant bound and every read is masked into the
 * window, for the verifier.
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

static __always_inline unsigned char cache_at(const unsigned char *buf, unsigned i)
{
    /* The index is opaque to the compiler on both sides of the mask:
     * before it, or the compiler drops a mask it proves redundant (which
     * the verifier cannot prove); after it, or with a buffer it knows is
     * 32-byte aligned (BCC's stack arrays) it adds the index with an OR,
     * which the verifier refuses on a pointer. */
    unsigned masked = i;
    __asm__ volatile("" : "+r"(masked));
    masked &= CACHE_CLASSIFY_WINDOW - 1;
    __asm__ volatile("" : "+r"(masked));
    return buf[masked];
}

static __always_inline unsigned cache_window(unsigned len)
{
    return len < CACHE_CLASSIFY_WINDOW ? len : CACHE_CLASSIFY_WINDOW;
}

/* Character classes without branches (1 or 0): BPF has no set-on-condition
 * instruction, so `a && b` on bytes becomes jumps, and the verifier walks
 * every one of them per byte of the word loops below. */
static __always_inline int cache_in(unsigned char c, int lo, int hi)
{
    long long v = c;
    return (int)(1 ^ ((unsigned long long)((v - lo) | (hi - v)) >> 63));
}

static __always_inline int cache_digit(unsigned char c)
{
    return cache_in(c, '0', '9');
}

static __always_inline int cache_upper(unsigned char c)
{
    return cache_in(c, 'A', 'Z');
}

static __always_inline int cache_letter(unsigned char c)
{
    return cache_in(c | 0x20, 'a', 'z');
}

/* buf[i, i+2) is CRLF within the n bytes looked at. */
static __always_inline int cache_crlf(const unsigned char *buf, unsigned n, unsigned i)
{
    return i + 2 <= n && cache_at(buf, i) == '\r' && cache_at(buf, i + 1) == '\n';
}

/* ------------------------------------------------------------------ Redis */

static __always_inline int is_redis_request(const unsigned char *buf, unsigned len)
{
    unsigned n = cache_window(len);
    if (n < 2 || cache_at(buf, 0) != '*' || cache_at(buf, 1) < '1' || cache_at(buf, 1) > '9')
        return 0;
    /* The element count: up to 7 digits. */
    unsigned i = 2;
    for (int k = 0; k < 6; k++) {
        if (i < n && cache_digit(cache_at(buf, i)))
            i++;
        else
            break;
    }
    if (!cache_crlf(buf, n, i) || i + 3 >= n || cache_at(buf, i + 2) != '$')
        return 0;
    i += 3;
    /* The command word's size: 1 to 99. */
    unsigned char d = cache_at(buf, i);
    if (d < '1' || d > '9')
        return 0;
    unsigned size = d - '0';
    i++;
    if (i < n && cache_digit(cache_at(buf, i))) {
        size = size * 10 + (cache_at(buf, i) - '0');
        i++;
    }
    if (!cache_crlf(buf, n, i) || i + 2 >= n || !cache_letter(cache_at(buf, i + 2)))
        return 0;
    i += 2;
    unsigned start = i;
    /* The word: letters, digits, '.', '_' ("GET", "JSON.GET"), up to the
     * end of the window. */
    for (int k = 0; k < CACHE_CLASSIFY_WINDOW; k++) {
        if (i >= n)
            break;
        unsigned char c = cache_at(buf, i);
        if (!(cache_letter(c) | cache_digit(c) | cache_in(c, '.', '.') | cache_in(c, '_', '_')))
            break;
        i++;
    }
    unsigned word = i - start;
    if (word > size)
        return 0;
    if (word < size)
        return i == n;          /* the word runs to the end of what is seen */
    /* What follows the word, as far as it is seen, is its CRLF. */
    if (i < n && cache_at(buf, i) != '\r')
        return 0;
    if (i + 1 < n && cache_at(buf, i + 1) != '\n')
        return 0;
    return 1;
}

/* From i: an optional sign (with_sign) and 1..max_digits digits, then CRLF. */
static __always_inline int cache_number_line(const unsigned char *buf, unsigned n, unsigned i,
                                             int with_sign, int max_digits)
{
    if (with_sign && i < n && cache_at(buf, i) == '-')
        i++;
    unsigned start = i;
    for (int k = 0; k < 20; k++) {
        if (k < max_digits && i < n && cache_digit(cache_at(buf, i)))
            i++;
        else
            break;
    }
    return i > start && cache_crlf(buf, n, i);
}

static __always_inline int is_redis_reply(const unsigned char *buf, unsigned len)
{
    unsigned n = cache_window(len);
    if (n < 3)
        return 0;
    unsigned char t = cache_at(buf, 0);
    unsigned i = 1;
    switch (t) {
    case '+':
    case '-': {
        /* "+OK\r\n", "+FULLRESYNC ..."; "-ERR ...", "-WRONGTYPE ..." */
        for (int k = 0; k < CACHE_CLASSIFY_WINDOW; k++) {
            if (i >= n)
                break;
            unsigned char c = cache_at(buf, i);
            if (!(t == '+' ? cache_letter(c) : cache_upper(c)))
                break;
            i++;
        }
        if (i < (t == '+' ? 2u : 3u))
            return 0;
        return cache_crlf(buf, n, i) || (i < n && cache_at(buf, i) == ' ');
    }
    case ':':
    case '(':
        return cache_number_line(buf, n, 1, 1, 20);
    case '$':
    case '*':
        if (cache_at(buf, 1) == '-')
            return n >= 5 && cache_at(buf, 2) == '1' && cache_crlf(buf, n, 3);
        /* fall through */
    case '%':
    case '~':
    case '>':
    case '=':
    case '!':
    case '|':
        if (cache_at(buf, 1) == '0')
            return cache_crlf(buf, n, 2);
        return cache_number_line(buf, n, 1, 0, 10);
    case '_':
        return cache_crlf(buf, n, 1);
    case '#':
        return (cache_at(buf, 1) == 't' || cache_at(buf, 1) == 'f') && cache_crlf(buf, n, 2);
    case ',': {
        /* A double: digits, '.', sign, exponent, "inf", "nan". */
        for (int k = 0; k < 24; k++) {
            if (i >= n)
                break;
            unsigned char c = cache_at(buf, i);
            if (!(cache_digit(c) | cache_in(c, 'a', 'z') | cache_in(c, '.', '.') |
                  cache_in(c, '+', '+') | cache_in(c, '-', '-')))
                break;
            i++;
        }
        return i > 1 && cache_crlf(buf, n, i);
    }
    }
    return 0;
}

/* -------------------------------------------------------------- memcached */

/* The first 16 bytes as two little-endian words: the word tests below
 * compare them with masks, one branch per word, instead of one per byte
 * (the verifier walks every branch; inlined into the capture's programs,
 * byte-by-byte tests of thirty words overflow its jump stack). */
struct cache_words {
    unsigned long long w0, w1;
    unsigned n;     /* bytes seen: cache_window(len) */
};

static __always_inline struct cache_words cache_load(const unsigned char *buf, unsigned len)
{
    struct cache_words w = { 0, 0, cache_window(len) };
    for (int k = 0; k < 8; k++) {
        w.w0 |= (unsigned long long)cache_at(buf, k) << (8 * k);
        w.w1 |= (unsigned long long)cache_at(buf, 8 + k) << (8 * k);
    }
    return w;
}

/* The bytes [from, from + 8) of the n-byte word, packed like cache_load's. */
static __always_inline unsigned long long cache_pack(const char *word, unsigned from, unsigned n)
{
    unsigned long long v = 0;
    for (unsigned k = 0; k < 8; k++)
        if (from + k < n)
            v |= (unsigned long long)(unsigned char)word[from + k] << (8 * k);
    return v;
}

static __always_inline unsigned long long cache_mask(unsigned from, unsigned n)
{
    if (n <= from)
        return 0;
    return n - from >= 8 ? ~0ULL : (1ULL << (8 * (n - from))) - 1;
}

/* The payload starts with the n (<= 16) bytes of word. */
static __always_inline int cache_starts(const struct cache_words *w, const char *word, unsigned n)
{
    return w->n >= n && (((w->w0 ^ cache_pack(word, 0, n)) & cache_mask(0, n)) |
                         ((w->w1 ^ cache_pack(word, 8, n)) & cache_mask(8, n))) == 0;
}

/* The byte at i (< 16) of the loaded words. */
static __always_inline unsigned char cache_byte(const struct cache_words *w, unsigned i)
{
    return (unsigned char)((i < 8 ? w->w0 : w->w1) >> (8 * (i & 7)));
}

/* "word " (n bytes with the blank) and a printable byte. */
static __always_inline int cache_word_arg(const struct cache_words *w, const char *word,
                                          unsigned n)
{
    if (!cache_starts(w, word, n) || w->n < n + 1)
        return 0;
    unsigned char c = cache_byte(w, n);
    return c >= 0x21 && c <= 0x7e;
}

static __always_inline int is_memcached_request(const unsigned char *buf, unsigned len)
{
    if (cache_window(len) < 4)
        return 0;
    unsigned char c = cache_at(buf, 0);
    if (c < 'a' || c > 'z')
        return 0;
    struct cache_words w = cache_load(buf, len);
    return cache_word_arg(&w, "get ", 4) || cache_word_arg(&w, "gets ", 5) ||
           cache_word_arg(&w, "gat ", 4) || cache_word_arg(&w, "gats ", 5) ||
           cache_word_arg(&w, "set ", 4) || cache_word_arg(&w, "add ", 4) ||
           cache_word_arg(&w, "replace ", 8) || cache_word_arg(&w, "append ", 7) ||
           cache_word_arg(&w, "prepend ", 8) || cache_word_arg(&w, "cas ", 4) ||
           cache_word_arg(&w, "delete ", 7) || cache_word_arg(&w, "incr ", 5) ||
           cache_word_arg(&w, "decr ", 5) || cache_word_arg(&w, "touch ", 6) ||
           cache_word_arg(&w, "mg ", 3) || cache_word_arg(&w, "ms ", 3) ||
           cache_word_arg(&w, "md ", 3) || cache_word_arg(&w, "ma ", 3) ||
           cache_word_arg(&w, "me ", 3) || cache_word_arg(&w, "verbosity ", 10) ||
           cache_word_arg(&w, "flush_all ", 10) || cache_word_arg(&w, "stats ", 6) ||
           cache_starts(&w, "version\r\n", 9) || cache_starts(&w, "stats\r\n", 7) ||
           cache_starts(&w, "flush_all\r\n", 11) || cache_starts(&w, "mn\r\n", 4) ||
           cache_starts(&w, "quit\r\n", 6);
}

static __always_inline int is_memcached_reply(const unsigned char *buf, unsigned len)
{
    if (cache_window(len) < 3)
        return 0;
    unsigned char c = cache_at(buf, 0);
    if (c < 'A' || c > 'Z')
        return 0;
    struct cache_words w = cache_load(buf, len);
    return cache_starts(&w, "VALUE ", 6) || cache_starts(&w, "END\r\n", 5) ||
           cache_starts(&w, "STORED\r\n", 8) || cache_starts(&w, "NOT_STORED\r\n", 12) ||
           cache_starts(&w, "EXISTS\r\n", 8) || cache_starts(&w, "NOT_FOUND\r\n", 11) ||
           cache_starts(&w, "DELETED\r\n", 9) || cache_starts(&w, "TOUCHED\r\n", 9) ||
           cache_starts(&w, "OK\r\n", 4) || cache_starts(&w, "ERROR\r\n", 7) ||
           cache_starts(&w, "CLIENT_ERROR ", 13) || cache_starts(&w, "SERVER_ERROR ", 13) ||
           cache_starts(&w, "VERSION ", 8) || cache_starts(&w, "STAT ", 5) ||
           cache_starts(&w, "RESET\r\n", 7) || cache_starts(&w, "HD\r\n", 4) ||
           cache_starts(&w, "HD ", 3) || cache_starts(&w, "VA ", 3) ||
           cache_starts(&w, "EN\r\n", 4) || cache_starts(&w, "NF\r\n", 4) ||
           cache_starts(&w, "NF ", 3) || cache_starts(&w, "NS\r\n", 4) ||
           cache_starts(&w, "NS ", 3) || cache_starts(&w, "EX\r\n", 4) ||
           cache_starts(&w, "EX ", 3) || cache_starts(&w, "MN\r\n", 4) ||
           cache_starts(&w, "ME ", 3);
}

#endif
