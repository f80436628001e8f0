/* Byte classes a word (8 bytes) at a time, for the HTTP/1.x head parser
 * (bpf/http_head.h): each function flags the bytes of a word that are in a
 * class, in their high bits (0x80), with a few operations, so that a scan
 * costs a handful of instructions per 8 bytes and the verifier has no path
 * per byte to walk.  Built for BPF and for the host alike. */
#ifndef OTEL_EBPF_HTTP_WORDS_H
#define OTEL_EBPF_HTTP_WORDS_H

#define ONES 0x0101010101010101ULL
#define LOW7 0x7F7F7F7F7F7F7F7FULL
#define HIGH 0x8080808080808080ULL
#define LOWER 0x2020202020202020ULL

/* 0x80 in each byte of w equal to zero, exactly (no borrow between bytes). */
static __always_inline __u64 zero_bytes(__u64 w)
{
    return ~(((w & LOW7) + LOW7) | w | LOW7);
}

static __always_inline __u64 bytes_equal(__u64 w, __u8 c)
{
    return zero_bytes(w ^ (ONES * c));
}

/* Index of the lowest flagged byte of m (flags in the bytes' high bits),
 * 8 when none: arithmetic, no branch for the verifier to walk. */
static __always_inline __u32 first_flag(__u64 m)
{
    __u64 below = (m & -m) - 1;
    return (((below >> 7) & ONES) * ONES) >> 56;
}

/* 0x80 in each byte of w (all below 0x80) at or above c. */
static __always_inline __u64 at_least(__u64 w, __u8 c)
{
    return ((w & LOW7) + ONES * (0x80 - c)) & HIGH;
}

/* 0x80 in each byte of w that is not a token character (RFC 9110 tchar). */
static __always_inline __u64 non_tchar(__u64 w)
{
    __u64 high = w & HIGH;                       /* 0x80 and above */
    __u64 ascii = w & LOW7;
    __u64 ctl = ~at_least(ascii, 0x21) & HIGH;   /* controls and SP */
    __u64 seps = bytes_equal(ascii, 0x7F) | bytes_equal(ascii, '"') | bytes_equal(ascii, ',') |
                 bytes_equal(ascii, '/') | bytes_equal(ascii, '{') | bytes_equal(ascii, '}') |
                 (at_least(ascii, '(') & ~at_least(ascii, ')' + 1)) |
                 (at_least(ascii, ':') & ~at_least(ascii, '@' + 1)) |
                 (at_least(ascii, '[') & ~at_least(ascii, ']' + 1));
    return high | ctl | (seps & HIGH);
}

/* 0x80 in each byte of w that is not a letter, digit or '-': the first
 * such byte of a usual field name is its colon. */
static __always_inline __u64 non_name_char(__u64 w)
{
    __u64 lower = w | LOWER;
    __u64 letter = at_least(lower, 'a') & ~at_least(lower, 'z' + 1);
    __u64 digit = at_least(w, '0') & ~at_least(w, '9' + 1);
    return ~((letter | digit | bytes_equal(w, '-')) & ~w) & HIGH;
}

/* 0x80 in the lowest byte of w below c (c <= 0x80), and maybe in bytes
 * above it (a borrow): only the lowest flag is exact, which is all a scan
 * needs, at three operations a word. */
static __always_inline __u64 lowest_below(__u64 w, __u8 c)
{
    return (w - ONES * c) & ~w & HIGH;
}

/* The high bits of the bytes of a word that lie before len. */
static __always_inline __u64 valid_bytes(__u32 pos, __u32 len)
{
    __u32 left = len - pos;
    return left >= 8 ? HIGH : HIGH & ((1ULL << (left * 8)) - 1);
}

/* Eight characters as a little-endian word (a string literal of 8). */
#define WORD8(s) ((__u64)(__u8)(s)[0] | (__u64)(__u8)(s)[1] << 8 | (__u64)(__u8)(s)[2] << 16 | \
                  (__u64)(__u8)(s)[3] << 24 | (__u64)(__u8)(s)[4] << 32 |                     \
                  (__u64)(__u8)(s)[5] << 40 | (__u64)(__u8)(s)[6] << 48 |                     \
                  (__u64)(__u8)(s)[7] << 56)

#endif
