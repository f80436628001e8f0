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
    return buf[i & (CACHE_CLASSIFY_WINDOW - 1)];
}

static __always_inline unsigned cache_window(unsigned len)
{
    return len < CACHE_CLASSIFY_WINDOW ? len : CACHE_CLASSIFY_WINDOW;
}

static __always_inline int cache_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static __always_inline int cache_upper(unsigned char c)
{
    return c >= 'A' && c <= 'Z';
}

static __always_inline int cache_letter(unsigned char c)
{
    return cache_upper(c) || (c >= 'a' && c <= 'z');
}

/* buf[i, i+2) is CRLF within the n bytes looked at. */
static __always_inline int cache_crlf(const unsigned char *buf, unsigned n, unsigned i)
{
    return i + 2 <= n && cache_at(buf, i) == '\r' && cache_at(buf, i + 1) == '\n';
}

/* buf starts with the n bytes of prefix, all within len. */
static __always_inline int cache_prefix(const unsigned char *buf, unsigned len, const char *prefix,
                                        unsigned n)
{
    if (cache_window(len) < n)
        return 0;
    for (unsigned i = 0; i < n && i < CACHE_CLASSIFY_WINDOW; i++)
        if (cache_at(buf, i) != (unsigned char)prefix[i])
            return 0;
    return 1;
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
        if (!(cache_letter(c) || cache_digit(c) || c == '.' || c == '_'))
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
            if (!(cache_digit(c) || (c >= 'a' && c <= 'z') || c == '.' || c == '+' || c == '-'))
                break;
            i++;
        }
        return i > 1 && cache_crlf(buf, n, i);
    }
    }
    return 0;
}

/* -------------------------------------------------------------- memcached */

/* The word, a blank and a printable byte. */
static __always_inline int cache_word_arg(const unsigned char *buf, unsigned len, const char *word,
                                          unsigned n)
{
    if (!cache_prefix(buf, len, word, n) || cache_window(len) < n + 2 || cache_at(buf, n) != ' ')
        return 0;
    unsigned char c = cache_at(buf, n + 1);
    return c >= 0x21 && c <= 0x7e;
}

/* The word alone on its line. */
static __always_inline int cache_word_line(const unsigned char *buf, unsigned len, const char *word,
                                           unsigned n)
{
    return cache_prefix(buf, len, word, n) && cache_crlf(buf, cache_window(len), n);
}

static __always_inline int is_memcached_request(const unsigned char *buf, unsigned len)
{
    if (cache_window(len) < 4)
        return 0;
    unsigned char c = cache_at(buf, 0);
    if (c < 'a' || c > 'z')
        return 0;
    return cache_word_arg(buf, len, "get", 3) || cache_word_arg(buf, len, "gets", 4) ||
           cache_word_arg(buf, len, "gat", 3) || cache_word_arg(buf, len, "gats", 4) ||
           cache_word_arg(buf, len, "set", 3) || cache_word_arg(buf, len, "add", 3) ||
           cache_word_arg(buf, len, "replace", 7) || cache_word_arg(buf, len, "append", 6) ||
           cache_word_arg(buf, len, "prepend", 7) || cache_word_arg(buf, len, "cas", 3) ||
           cache_word_arg(buf, len, "delete", 6) || cache_word_arg(buf, len, "incr", 4) ||
           cache_word_arg(buf, len, "decr", 4) || cache_word_arg(buf, len, "touch", 5) ||
           cache_word_arg(buf, len, "mg", 2) || cache_word_arg(buf, len, "ms", 2) ||
           cache_word_arg(buf, len, "md", 2) || cache_word_arg(buf, len, "ma", 2) ||
           cache_word_arg(buf, len, "me", 2) || cache_word_arg(buf, len, "verbosity", 9) ||
           cache_word_arg(buf, len, "flush_all", 9) || cache_word_arg(buf, len, "stats", 5) ||
           cache_word_line(buf, len, "version", 7) || cache_word_line(buf, len, "stats", 5) ||
           cache_word_line(buf, len, "flush_all", 9) || cache_word_line(buf, len, "mn", 2) ||
           cache_word_line(buf, len, "quit", 4);
}

static __always_inline int is_memcached_reply(const unsigned char *buf, unsigned len)
{
    if (cache_window(len) < 3)
        return 0;
    unsigned char c = cache_at(buf, 0);
    if (c < 'A' || c > 'Z')
        return 0;
    return cache_prefix(buf, len, "VALUE ", 6) || cache_prefix(buf, len, "END\r\n", 5) ||
           cache_prefix(buf, len, "STORED\r\n", 8) || cache_prefix(buf, len, "NOT_STORED\r\n", 12) ||
           cache_prefix(buf, len, "EXISTS\r\n", 8) || cache_prefix(buf, len, "NOT_FOUND\r\n", 11) ||
           cache_prefix(buf, len, "DELETED\r\n", 9) || cache_prefix(buf, len, "TOUCHED\r\n", 9) ||
           cache_prefix(buf, len, "OK\r\n", 4) || cache_prefix(buf, len, "ERROR\r\n", 7) ||
           cache_prefix(buf, len, "CLIENT_ERROR ", 13) ||
           cache_prefix(buf, len, "SERVER_ERROR ", 13) || cache_prefix(buf, len, "VERSION ", 8) ||
           cache_prefix(buf, len, "STAT ", 5) || cache_prefix(buf, len, "RESET\r\n", 7) ||
           cache_prefix(buf, len, "HD\r\n", 4) || cache_prefix(buf, len, "HD ", 3) ||
           cache_prefix(buf, len, "VA ", 3) || cache_prefix(buf, len, "EN\r\n", 4) ||
           cache_prefix(buf, len, "NF\r\n", 4) || cache_prefix(buf, len, "NF ", 3) ||
           cache_prefix(buf, len, "NS\r\n", 4) || cache_prefix(buf, len, "NS ", 3) ||
           cache_prefix(buf, len, "EX\r\n", 4) || cache_prefix(buf, len, "EX ", 3) ||
           cache_prefix(buf, len, "MN\r\n", 4) || cache_prefix(buf, len, "ME ", 3);
}

#endif
