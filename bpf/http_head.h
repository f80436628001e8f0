/* HTTP/1.x request and response heads parsed in the probes.  The kernel runs
 * http_head_step from bpf_loop (one verification of the body, whatever the
 * head's length), the host build from a plain loop
 * (tests/capture/test_http_head.py checks it against agent/parsers/http1.py).
 *
 * Cost is per line, not per byte or word: a step takes a field line whole
 * when it is shorter than HTTP_SCAN_WORDS words after its name (the blank
 * line that ends the head comes with the line before it), reading a word at
 * a time to the first byte that ends or spoils it (CR, LF, NUL; located
 * with word arithmetic), the name to its colon the same way.  Names are
 * compared whole-word against the few the span or the framing needs, and a
 * wanted value is copied into the record a word at a time, or decoded there
 * (a Content-Length, a common-form traceparent: bpf/http_values.h).  A
 * response's head keeps only its status line and framing fields.
 *
 * The parser is strict where userspace is lenient: it accepts the common
 * form only (CRLF line ends, no obs-fold, one traceparent and tracestate,
 * a plain Content-Length, names of at most HTTP_NAME_BYTES) and answers
 * anything else with a fallback reason, so that what it accepts userspace
 * reads the same way. */
#ifndef OTEL_EBPF_HTTP_HEAD_H
#define OTEL_EBPF_HTTP_HEAD_H

#include "classify.h"
#include "http_words.h"

/* Longest head the probes parse; a longer one goes to the payload path.
 * The buffer parsed must hold HTTP_HEAD_SCAN_BYTES + HTTP_HEAD_SLACK bytes
 * (word loads past the last byte are masked, never trusted). */
#define HTTP_HEAD_SCAN_BYTES 2048
#define HTTP_HEAD_SLACK 32
/* Longest field name read; a longer one sends the head to the payload path. */
#define HTTP_NAME_BYTES 32
#define HTTP_NAME_WORDS (HTTP_NAME_BYTES / 8)
/* Words of a target or value one step reads; a longer one goes on in the
 * next step. */
#define HTTP_SCAN_WORDS 8

#define HS_START 0          /* request or status line */
#define HS_TARGET 1
#define HS_LINE_START 2     /* a field line or the blank line */
#define HS_VALUE 3          /* scanning to the line's CR */
#define HS_DONE 4
#define HS_NAME 5           /* scanning a field name to its colon */

/* The field a value belongs to. */
#define HF_OTHER 0
#define HF_HOST 1
#define HF_USER_AGENT 2
#define HF_TRACEPARENT 3
#define HF_TRACESTATE 4
#define HF_CONTENT_LENGTH 5
#define HF_TRANSFER_ENCODING 6
#define HF_EXPECT 7
#define HF_UPGRADE 8
#define HF_REASON 9         /* a status line's reason phrase */

struct http_head_parse {
    __u32 pos;
    __u32 len;              /* bytes of head available */
    __u32 value_start;      /* the current line's value (after its colon) */
    __u32 line_start;
    __u16 status;
    __u8 state;
    __u8 field;
    __u8 result;            /* HTTP_HEAD_OK or HTTP_FALLBACK_* once state is HS_DONE */
    __u8 response;          /* parsing a status line head */
    __u8 chunked;
    __u8 expect_continue;
    __u8 version_minor;     /* a status line's HTTP/1.<minor> */
    __u8 reserved[3];
    __u32 found;            /* the last scan's stop (see settle) */
};

#define HEAD_INDEX(off) ((off) & (HTTP_HEAD_SCAN_BYTES - 1))
#ifdef OTEL_EBPF_HOST
#include <string.h>
static inline __u64 head_load(const __u8 *buf, __u32 off)
{
    __u64 w;
    memcpy(&w, buf + HEAD_INDEX(off), 8);
    return w;
}
static inline void store_word(char *dst, __u64 w)
{
    memcpy(dst, &w, 8);
}
static inline void store_u32(__u8 *dst, __u32 v)
{
    memcpy(dst, &v, 4);
}
#define HEAD_COPY(dst, n, src) memcpy(dst, src, n)
#define barrier_var(var) ((void)(var))
#else
/* x86 and arm64 BPF load and store unaligned words in map values. */
#define head_load(buf, off) (*(const __u64 *)((buf) + HEAD_INDEX(off)))
#define store_word(dst, w) (*(__u64 *)(dst) = (w))
#define store_u32(dst, v) (*(__u32 *)(dst) = (v))
#define HEAD_COPY(dst, n, src) bpf_probe_read_kernel(dst, n, src)
#endif
#define head_byte(buf, off) ((buf)[HEAD_INDEX(off)])

#include "http_values.h"

/* What a scan stops at. */
#define STOP_VALUE 0        /* a value's or reason's end (CR), or what spoils it (LF, NUL) */
#define STOP_TARGET 1       /* a target's end: below 0x21, DEL */
#define STOP_NAME 2         /* a usual name's end: not a letter, digit or '-' */
#define STOP_TOKEN 3        /* a name's end: not a token character */
#define STOP_COLON 4        /* a name's colon */

/* The stop bytes of a word, the lowest of them flagged exactly. */
static __always_inline __u64 stops(__u64 w, int kind)
{
    switch (kind) {
    case STOP_VALUE:
        /* CR, LF and NUL lie below 0x0E; so do HT and the other controls a
         * value may hold, which parse_value steps over */
        return lowest_below(w, 0x0E);
    case STOP_COLON:
        return lowest_below(w ^ (ONES * ':'), 1);
    case STOP_TARGET:
        return lowest_below(w, 0x21) | lowest_below(w ^ (ONES * 0x7F), 1);
    case STOP_NAME:
        return non_name_char(w);
    default:
        return non_tchar(w);
    }
}

/* The offset of the first stop byte in the words from pos, or
 * pos + 8 * words when they have none.  The word loop ends where the line
 * does: a short line costs a word or two. */
static __always_inline __u32 scan(const __u8 *buf, __u32 pos, __u32 words, int kind)
{
    for (__u32 j = 0; j < words; j++) {
        __u64 m = stops(head_load(buf, pos + 8 * j), kind);
        if (m)
            return pos + 8 * j + first_flag(m);
    }
    return pos + 8 * words;
}

/* A scan's result, stored to the parse state and read back: the verifier
 * knows it then no better than any value read from a map, and walks what
 * follows once rather than once per word the scan may have stopped in. */
static __always_inline __u32 settle(struct http_head_parse *p, __u32 v)
{
    *(volatile __u32 *)&p->found = v;
    return *(volatile __u32 *)&p->found;
}

/* n bytes at off, lower-cased, equal the first n of want (n <= 8).  Only
 * for token characters: among them OR 0x20 lower-cases letters alone. */
static __always_inline bool word_is(const __u8 *buf, __u32 off, __u64 want, __u32 n)
{
    __u64 w = head_load(buf, off) | LOWER;
    if (n < 8)
        w &= (1ULL << (n * 8)) - 1;
    return w == want;
}

/* n bytes at off are the first n of want (n <= 8, lower case), in any
 * case: only its letters' bytes are lower-cased, so that a match proves
 * every byte a letter or want's own '-' (not a CR, which OR 0x20 makes
 * '-'): a wanted name needs no other check. */
static __always_inline bool name_is(const __u8 *buf, __u32 off, __u64 want, __u32 n)
{
    __u64 letters = (at_least(want, 'a') & ~at_least(want, 'z' + 1)) >> 2;
    __u64 w = head_load(buf, off) | letters;
    if (n < 8)
        w &= (1ULL << (n * 8)) - 1;
    return w == want;
}

/* The code of the field named by the n bytes at off (HF_OTHER: none the
 * parser wants, its bytes not checked yet). */
static __always_inline __u8 field_code(const __u8 *buf, __u32 off, __u32 n, bool response)
{
    switch (n) {
    case 4:
        if (!response && name_is(buf, off, WORD8("host\0\0\0\0"), 4))
            return HF_HOST;
        break;
    case 6:
        if (!response && name_is(buf, off, WORD8("expect\0\0"), 6))
            return HF_EXPECT;
        break;
    case 7:
        if (name_is(buf, off, WORD8("upgrade\0"), 7))
            return HF_UPGRADE;
        break;
    case 10:
        if (response)
            break;
        if (name_is(buf, off, WORD8("user-age"), 8) && name_is(buf, off + 8, WORD8("nt\0\0\0\0\0\0"), 2))
            return HF_USER_AGENT;
        if (name_is(buf, off, WORD8("tracesta"), 8) && name_is(buf, off + 8, WORD8("te\0\0\0\0\0\0"), 2))
            return HF_TRACESTATE;
        break;
    case 11:
        if (!response && name_is(buf, off, WORD8("tracepar"), 8) &&
            name_is(buf, off + 8, WORD8("ent\0\0\0\0\0"), 3))
            return HF_TRACEPARENT;
        break;
    case 14:
        if (name_is(buf, off, WORD8("content-"), 8) &&
            name_is(buf, off + 8, WORD8("length\0\0"), 6))
            return HF_CONTENT_LENGTH;
        break;
    case 17:
        if (name_is(buf, off, WORD8("transfer"), 8) &&
            name_is(buf, off + 8, WORD8("-encodin"), 8) &&
            (head_byte(buf, off + 16) | 0x20) == 'g')
            return HF_TRANSFER_ENCODING;
        break;
    }
    return HF_OTHER;
}

static __always_inline void head_stop(struct http_head_parse *p, __u8 result)
{
    p->state = HS_DONE;
    p->result = result;
}

/* Copy a value into the record's values, truncated to its slot. */
static __always_inline bool store_value(struct http_request_head *r, const __u8 *buf, __u32 start,
                                        __u32 len, __u32 slot, __u16 *off, __u8 bit)
{
    if (len > slot)
        r->truncated |= bit;
    __u64 at = r->values_len;
    if (at > HTTP_VALUES_BYTES - slot)
        return false;
    /* The verifier's bound on the copy: clamped in a 64-bit register, then
     * kept from the compiler's rewriting. */
    __u64 n = len;
    barrier_var(n);
    if (n > slot)
        n = slot;
    barrier_var(n);
    barrier_var(at);
    if (n)
        HEAD_COPY(&r->values[at], n, &buf[HEAD_INDEX(start)]);
    *off = at;
    r->values_len = at + n;
    return true;
}

static __always_inline bool is_ows(__u8 c)
{
    return c == ' ' || c == '\t';
}

/* A wanted field line is complete (its CR at end): trim and take its value. */
static __always_inline void end_value(struct http_head_parse *p, struct http_request_head *r,
                                      const __u8 *buf, __u32 end)
{
    /* One SP or HT may lead; more, or any trailing, is left to userspace. */
    __u32 start = p->value_start, stop = end;
    if (start < stop && is_ows(head_byte(buf, start)))
        start++;
    if (start < stop && (is_ows(head_byte(buf, start)) || is_ows(head_byte(buf, stop - 1))))
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    __u32 len = stop - start;
    __u16 off = 0;
    switch (p->field) {
    case HF_HOST:
        if ((r->present & HTTP_HAS_HOST) ||
            !store_value(r, buf, start, len, HTTP_HOST_BYTES, &off, HTTP_TRUNC_HOST))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_HOST;
        r->host_off = off;
        r->host_len = r->values_len - off;
        break;
    case HF_USER_AGENT:
        if ((r->present & HTTP_HAS_USER_AGENT) ||
            !store_value(r, buf, start, len, HTTP_USER_AGENT_BYTES, &off, HTTP_TRUNC_USER_AGENT))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_USER_AGENT;
        r->user_agent_off = off;
        r->user_agent_len = r->values_len - off;
        break;
    case HF_TRACEPARENT:
        if (r->present & (HTTP_HAS_TRACEPARENT | HTTP_HAS_TRACE_IDS))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        if (len == 55 && decode_traceparent(r, buf, start)) {
            r->present |= HTTP_HAS_TRACE_IDS;
            break;
        }
        if (!store_value(r, buf, start, len, HTTP_TRACEPARENT_BYTES, &off, HTTP_TRUNC_TRACEPARENT))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_TRACEPARENT;
        r->traceparent_off = off;
        r->traceparent_len = r->values_len - off;
        break;
    case HF_TRACESTATE:
        if ((r->present & HTTP_HAS_TRACESTATE) ||
            !store_value(r, buf, start, len, HTTP_TRACESTATE_BYTES, &off, HTTP_TRUNC_TRACESTATE))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_TRACESTATE;
        r->tracestate_off = off;
        r->tracestate_len = r->values_len - off;
        break;
    case HF_CONTENT_LENGTH: {
        __u64 number = 0;
        if ((r->present & HTTP_HAS_CONTENT_LENGTH) || !parse_length(buf, start, len, &number))
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_CONTENT_LENGTH;
        r->content_length = number;
        break;
    }
    case HF_TRANSFER_ENCODING:
        if (p->response && len == 7 && word_is(buf, start, WORD8("chunked\0"), 7))
            p->chunked = 1;
        else
            return head_stop(p, p->response ? HTTP_FALLBACK_RESPONSE_END
                                            : HTTP_FALLBACK_REQUEST_BODY);
        break;
    case HF_EXPECT:
        /* "100-continue": its digits and hyphen survive the OR 0x20 */
        if (len == 12 && word_is(buf, start, WORD8("100-cont"), 8) &&
            word_is(buf, start + 8, WORD8("inue\0\0\0\0"), 4))
            p->expect_continue = 1;
        break;
    case HF_UPGRADE:
        return head_stop(p, HTTP_FALLBACK_UPGRADE);
    }
}

/* The request line's method, at the head's start. */
static __always_inline void parse_method(struct http_head_parse *p, struct http_request_head *r,
                                         const __u8 *buf)
{
    __u64 w0 = head_load(buf, 0), w1 = head_load(buf, 8);
    __u64 v0 = valid_bytes(0, p->len), v1 = p->len > 8 ? valid_bytes(8, p->len) : 0;
    __u64 sp0 = bytes_equal(w0, ' ') & v0, sp1 = bytes_equal(w1, ' ') & v1;
    __u64 bad0 = non_tchar(w0) & v0 & ~sp0, bad1 = non_tchar(w1) & v1 & ~sp1;
    __u32 n;
    if (sp0) {
        n = first_flag(sp0);
        bad0 &= (sp0 & -sp0) - 1;
        bad1 = 0;
    } else if (sp1) {
        n = 8 + first_flag(sp1);
        bad1 &= (sp1 & -sp1) - 1;
    } else {
        return head_stop(p, bad0 | bad1 || p->len >= HTTP_METHOD_BYTES
                                ? HTTP_FALLBACK_UNUSUAL_HEAD : HTTP_FALLBACK_SPLIT_HEAD);
    }
    if (n == 0 || (bad0 | bad1) || n >= HTTP_METHOD_BYTES)
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    store_word(&r->values[0], w0);
    store_word(&r->values[8], w1);
    r->method_len = n;
    r->values_len = n;
    p->pos = p->value_start = n + 1;
    p->state = HS_TARGET;
}

/* "HTTP/1.<digit>" at off; the digit, or -1. */
static __always_inline int version_at(const __u8 *buf, __u32 off)
{
    __u64 w = head_load(buf, off);
    __u8 minor = w >> 56;
    if ((w & 0x00FFFFFFFFFFFFFFULL) != (WORD8("HTTP/1.\0") & 0x00FFFFFFFFFFFFFFULL) ||
        !is_digit(minor))
        return -1;
    return minor - '0';
}

/* The status line: "HTTP/1.<digit> <[1-9]dd>" then SP or CRLF. */
static __always_inline void parse_status_line(struct http_head_parse *p, const __u8 *buf)
{
    if (p->len < 14)
        return head_stop(p, HTTP_FALLBACK_SPLIT_HEAD);
    int minor = version_at(buf, 0);
    __u8 d0 = head_byte(buf, 9), d1 = head_byte(buf, 10), d2 = head_byte(buf, 11);
    __u8 after = head_byte(buf, 12);
    if (minor < 0 || head_byte(buf, 8) != ' ' || d0 < '1' || d0 > '9' || !is_digit(d1) ||
        !is_digit(d2))
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    p->version_minor = minor;
    p->status = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
    if (after == ' ') {
        p->field = HF_REASON;
        p->pos = p->value_start = 13;
        p->state = HS_VALUE;
    } else if (after == '\r' && head_byte(buf, 13) == '\n') {
        p->pos = 14;
        p->state = HS_LINE_START;
    } else {
        head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    }
}

/* The request target and version: the target's words to its end, up to
 * HTTP_SCAN_WORDS a step. */
static __always_inline void parse_target(struct http_head_parse *p, struct http_request_head *r,
                                         const __u8 *buf)
{
    __u32 pos = p->pos;
    __u32 end = settle(p, scan(buf, pos, HTTP_SCAN_WORDS, STOP_TARGET));
    if (end >= p->len || end - pos >= 8 * HTTP_SCAN_WORDS) {
        /* no end among the bytes: the next step's, or they ran out */
        p->pos = end < p->len ? end : p->len;
        return;
    }
    __u32 start = p->value_start;
    __u16 off = 0;
    if (head_byte(buf, end) != ' ' || end == start)
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    if (!store_value(r, buf, start, end - start, HTTP_TARGET_BYTES, &off, HTTP_TRUNC_TARGET))
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    r->target_off = off;
    r->target_len = r->values_len - off;
    if (end + 11 > p->len) {
        p->pos = p->len;
        return;
    }
    int minor = version_at(buf, end + 1);
    if (minor < 0 || head_byte(buf, end + 9) != '\r' || head_byte(buf, end + 10) != '\n')
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    r->version_minor = minor;
    p->pos = end + 11;
    p->state = HS_LINE_START;
}

/* A field line's start: the blank line, or a name to scan. */
static __always_inline void parse_line_start(struct http_head_parse *p,
                                             struct http_request_head *r, const __u8 *buf)
{
    __u32 pos = p->pos;
    if (pos + 2 > p->len) {
        p->pos = p->len;
        return;
    }
    if (head_byte(buf, pos) == '\r') {
        if (head_byte(buf, pos + 1) != '\n')
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->header_bytes = pos + 2;
        return head_stop(p, p->expect_continue ? HTTP_FALLBACK_CONTINUE : HTTP_HEAD_OK);
    }
    p->line_start = pos;
    p->state = HS_NAME;
}

/* A field name to its colon; then which field it is.  The colon first: a
 * wanted name compares whole, which proves its bytes too; any other name's
 * bytes are checked by class. */
static __always_inline void parse_name(struct http_head_parse *p, const __u8 *buf)
{
    __u32 pos = p->pos;
    __u32 end = settle(p, scan(buf, pos, HTTP_NAME_WORDS, STOP_COLON));
    __u8 field = HF_OTHER;
    if (end < p->len && end - pos < HTTP_NAME_BYTES)
        field = field_code(buf, pos, end - pos, p->response);
    if (field == HF_OTHER) {
        /* the first byte not a letter, digit or '-' must be the colon */
        end = settle(p, scan(buf, pos, HTTP_NAME_WORDS, STOP_NAME));
        if (end < p->len && end - pos < HTTP_NAME_BYTES && head_byte(buf, end) != ':')
            end = settle(p, scan(buf, pos, HTTP_NAME_WORDS, STOP_TOKEN));
    }
    if (end >= p->len) {
        /* no colon among the bytes */
        if (p->len - pos >= HTTP_NAME_BYTES)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        p->pos = p->len;
        return;
    }
    __u32 n = end - pos;
    if (n == 0 || n >= HTTP_NAME_BYTES || head_byte(buf, end) != ':')
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    p->field = field;
    p->pos = p->value_start = end + 1;
    p->state = HS_VALUE;
}

/* A field value or reason phrase: its words to its CR, up to
 * HTTP_SCAN_WORDS a step. */
static __always_inline void parse_value(struct http_head_parse *p, struct http_request_head *r,
                                        const __u8 *buf)
{
    __u32 pos = p->pos;
    __u32 end = settle(p, scan(buf, pos, HTTP_SCAN_WORDS, STOP_VALUE));
    if (end >= p->len || end - pos >= 8 * HTTP_SCAN_WORDS) {
        p->pos = end < p->len ? end : p->len;
        return;
    }
    __u8 stop = head_byte(buf, end);
    if (stop != '\r') {
        /* a bare LF or NUL before the CR */
        if (stop == '\n' || stop == 0)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        /* HT or another control a value may hold: go on after it */
        p->pos = end + 1;
        return;
    }
    if (end + 1 >= p->len) {
        p->pos = p->len;
        return;
    }
    if (head_byte(buf, end + 1) != '\n')
        return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
    if (p->field != HF_OTHER && p->field != HF_REASON) {
        end_value(p, r, buf, end);
        if (p->state == HS_DONE)
            return;
    }
    p->pos = end + 2;
    p->state = HS_LINE_START;
}

/* One step of a head: a line (the start line, or a field line and the
 * start of the next), or HTTP_SCAN_WORDS words of a long one.  p->state
 * becomes HS_DONE when the head ends or the parser gives up; p->pos reaches
 * p->len when the bytes ran out first.  r receives the request's fields (a
 * response's: Content-Length and header_bytes; its status and version land
 * in p). */
static __always_inline void http_head_step(struct http_head_parse *p, struct http_request_head *r,
                                           const __u8 *buf)
{
    if (p->state == HS_START) {
        if (p->response)
            parse_status_line(p, buf);
        else
            parse_method(p, r, buf);
    }
    if (p->state == HS_TARGET)
        parse_target(p, r, buf);
    if (p->state == HS_NAME)
        parse_name(p, buf);
    if (p->state == HS_VALUE)
        parse_value(p, r, buf);
    if (p->state == HS_LINE_START)
        parse_line_start(p, r, buf);
}

/* Ready a parse of len bytes of a request head (response: of a status line
 * head).  Only the record's fixed part is cleared: values_len says which
 * value bytes are written. */
static __always_inline void http_head_begin(struct http_head_parse *p,
                                            struct http_request_head *r, __u32 len,
                                            bool response)
{
    __builtin_memset(p, 0, sizeof(*p));
    __builtin_memset(r, 0, __builtin_offsetof(struct http_request_head, values));
    p->response = response;
    p->len = len < HTTP_HEAD_SCAN_BYTES ? len : HTTP_HEAD_SCAN_BYTES;
}

/* The verdict once the steps ended: a head still open is split, and a
 * CONNECT tunnels rather than exchanges. */
static __always_inline __u8 http_head_result(const struct http_head_parse *p,
                                             const struct http_request_head *r)
{
    if (p->state != HS_DONE)
        return HTTP_FALLBACK_SPLIT_HEAD;
    if (p->result == HTTP_HEAD_OK && !p->response && r->method_len == 7 &&
        starts_with((const __u8 *)r->values, 7, "CONNECT", 7))
        return HTTP_FALLBACK_UPGRADE;
    return p->result;
}

#ifdef OTEL_EBPF_HOST
/* The host build's driver: the kernel's runs the step from bpf_loop. */
static inline __u8 http_parse_head(const __u8 *buf, __u32 len, bool response,
                                   struct http_request_head *r, struct http_head_parse *p)
{
    static __u8 padded[HTTP_HEAD_SCAN_BYTES + HTTP_HEAD_SLACK];
    memset(padded, 0xAA, sizeof(padded));
    memcpy(padded, buf, len < HTTP_HEAD_SCAN_BYTES ? len : HTTP_HEAD_SCAN_BYTES);
    http_head_begin(p, r, len, response);
    for (__u32 i = 0; i < HTTP_HEAD_SCAN_BYTES && p->state != HS_DONE && p->pos < p->len; i++)
        http_head_step(p, r, padded);
    return http_head_result(p, r);
}
#endif

#endif
