/* Field values the HTTP/1.x head parser (bpf/http_head.h) decodes in the
 * probes with word arithmetic, eight bytes at a time and no per-byte branch
 * for the verifier to walk: a Content-Length, and a traceparent of the
 * common form.  Included by http_head.h after its buffer access
 * (head_load, head_byte, store_u32); built for BPF and for the host alike
 * (tests/capture/test_http_head.py checks both against userspace). */
#ifndef OTEL_EBPF_HTTP_VALUES_H
#define OTEL_EBPF_HTTP_VALUES_H

/* Longest Content-Length read (one word); a longer one (100 MB and up)
 * sends the head to the payload path. */
#define HTTP_MAX_LENGTH_DIGITS 8

/* A Content-Length of 1 to HTTP_MAX_LENGTH_DIGITS digits, converted eight
 * at a time with word arithmetic (no per-digit branch for the verifier to
 * walk). */
static __always_inline bool parse_length(const __u8 *buf, __u32 start, __u32 len, __u64 *out)
{
    if (len == 0 || len > HTTP_MAX_LENGTH_DIGITS)
        return false;
    __u64 w = head_load(buf, start);
    __u32 pad = (8 - len) * 8;
    __u64 ascii = w & LOW7;
    __u64 non_digit = (w & HIGH) | (~at_least(ascii, '0') & HIGH) | at_least(ascii, '9' + 1);
    if (non_digit & (HIGH >> pad))
        return false;
    /* the digits to the word's top, '0's below: the first digit is the
     * most significant */
    __u64 v = w << pad;
    if (pad)
        v |= (ONES * '0') >> (64 - pad);
    v -= ONES * '0';
    v = (v * 10 + (v >> 8)) & 0x00FF00FF00FF00FFULL;
    v = (v * 100 + (v >> 16)) & 0x0000FFFF0000FFFFULL;
    v = (v * 10000 + (v >> 32)) & 0xFFFFFFFFULL;
    *out = v;
    return true;
}

/* Eight lowercase hex digits -> their four bytes (the first digit the
 * high nibble of the first byte).  Any byte not such a digit sets bits in
 * *bad: decoded, then written back as a digit, it does not come back the
 * same. */
static __always_inline __u32 hex_word(__u64 w, __u64 *bad)
{
    /* a digit's value is its low nibble, a letter's its low nibble + 9
     * (bit 6 tells them apart); any other byte decodes to 0..24 */
    __u64 n = (w & 0x0F0F0F0F0F0F0F0FULL) + ((w >> 6) & ONES) * 9;
    __u64 ten_up = at_least(n, 10);
    __u64 sixteen_up = at_least(n, 16);
    *bad |= ((n + ONES * '0' + (ten_up >> 7) * ('a' - '0' - 10)) ^ w) | sixteen_up;
    n = ((n & 0x00FF00FF00FF00FFULL) << 4) | ((n >> 8) & 0x00FF00FF00FF00FFULL);
    n = (n | (n >> 8)) & 0x0000FFFF0000FFFFULL;
    return (__u32)(n | (n >> 16));
}

#ifdef __clang__
#define HTTP_NO_UNROLL _Pragma("clang loop unroll(disable)")
#else
#define HTTP_NO_UNROLL
#endif

/* A traceparent value of 55 bytes at start, in its common form (version
 * 00, lowercase hex, ids not zero), decoded into r: userspace then reads
 * ids, not text.  Any other value is left as text for userspace to judge
 * by the spec's rules (which also take later versions and reject the rest
 * with a reason).  A loop: unrolled, it is some 230 instructions longer
 * and no faster. */
static __always_inline bool decode_traceparent(struct http_request_head *r, const __u8 *buf,
                                               __u32 start)
{
    if ((head_load(buf, start) & 0xFFFFFF) != (WORD8("00-\0\0\0\0\0") & 0xFFFFFF) ||
        head_byte(buf, start + 35) != '-' || head_byte(buf, start + 52) != '-')
        return false;
    /* trace_id's 32 digits eight at a time, then parent_id's 16 (past the
     * dash at 35), into the four bytes each that parent_id follows in r */
    __u8 *ids = (__u8 *)r + __builtin_offsetof(struct http_request_head, trace_id);
    __u64 bad = 0;
    __u32 trace = 0, parent = 0;
    HTTP_NO_UNROLL
    for (__u32 i = 0; i < 6; i++) {
        __u32 v = hex_word(head_load(buf, start + 3 + 8 * i + (i >= 4)), &bad);
        store_u32(ids + 4 * i, v);
        if (i < 4)
            trace |= v;
        else
            parent |= v;
    }
    /* the flags' two digits, then six '0's to fill the word */
    __u64 flag_digits = (head_load(buf, start + 47) >> 48) | ((ONES * '0') & ~0xFFFFULL);
    r->trace_flags = hex_word(flag_digits, &bad);
    return !bad && trace && parent;
}

#endif
