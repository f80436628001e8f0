/* HTTP/1.x request and response heads parsed in the probes, one byte per
 * step so that the kernel can run the step from bpf_loop (one verification
 * of the body, whatever the head's length) and the host build from a plain
 * loop (tests/capture/test_http_head.py checks it against
 * agent/parsers/http1.py).
 *
 * The parser is strict where userspace is lenient: it accepts the common
 * form only (CRLF line ends, no obs-fold, one traceparent and tracestate,
 * a plain Content-Length) and answers anything else with a fallback reason,
 * so that what it accepts userspace reads the same way. */
#ifndef OTEL_EBPF_HTTP_HEAD_H
#define OTEL_EBPF_HTTP_HEAD_H

#include "classify.h"

/* Longest head the probes parse; a longer one goes to the payload path. */
#define HTTP_HEAD_SCAN_BYTES 2048
/* Longest field name worth comparing ("transfer-encoding"). */
#define HTTP_NAME_BYTES 32
#define HTTP_MAX_LENGTH_DIGITS 18

#define HS_METHOD 0
#define HS_TARGET 1
#define HS_VERSION 2
#define HS_LINE_END 3      /* after CR, expecting LF */
#define HS_NAME_START 4    /* a field line or the blank line */
#define HS_NAME 5
#define HS_VALUE_START 6
#define HS_VALUE 7
#define HS_BLANK_LF 8      /* blank line's CR seen */
#define HS_DONE 9
#define HS_STATUS_VERSION 10
#define HS_STATUS_CODE 11
#define HS_REASON 12

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

struct http_head_parse {
    __u32 pos;
    __u8 state;
    __u8 field;
    __u8 name_len;
    __u8 result;            /* HTTP_HEAD_OK or HTTP_FALLBACK_* once state is HS_DONE */
    __u32 value_len;        /* value bytes seen, leading OWS skipped */
    __u32 value_end;        /* value_len after its last non-OWS byte */
    __u64 number;           /* Content-Length digits */
    __u8 expect_continue;
    __u8 chunked;
    __u8 response;          /* parsing a status line head */
    __u8 version_minor;     /* a status line's HTTP/1.<minor> */
    __u16 status;
    __u16 reserved;
    char name[HTTP_NAME_BYTES];
    char value_head[16];    /* a value's first bytes, for Expect and Transfer-Encoding */
};

static __always_inline bool is_tchar(__u8 c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return true;
    }
    return false;
}

static __always_inline __u8 lower(__u8 c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static __always_inline bool name_is(const struct http_head_parse *p, const char *name, __u32 n)
{
    if (p->name_len != n)
        return false;
    for (__u32 i = 0; i < n && i < HTTP_NAME_BYTES; i++)
        if (p->name[i] != name[i])
            return false;
    return true;
}

static __always_inline __u8 field_code(const struct http_head_parse *p)
{
    if (name_is(p, "host", 4))
        return HF_HOST;
    if (name_is(p, "user-agent", 10))
        return HF_USER_AGENT;
    if (name_is(p, "traceparent", 11))
        return HF_TRACEPARENT;
    if (name_is(p, "tracestate", 10))
        return HF_TRACESTATE;
    if (name_is(p, "content-length", 14))
        return HF_CONTENT_LENGTH;
    if (name_is(p, "transfer-encoding", 17))
        return HF_TRANSFER_ENCODING;
    if (name_is(p, "expect", 6))
        return HF_EXPECT;
    if (name_is(p, "upgrade", 7))
        return HF_UPGRADE;
    return HF_OTHER;
}

static __always_inline void head_stop(struct http_head_parse *p, __u8 result)
{
    p->state = HS_DONE;
    p->result = result;
}

/* A value's slot in the record, and the bits that describe it. */
static __always_inline void store_value_byte(struct http_head_parse *p, struct http_request_head *r,
                                             __u8 c)
{
    __u32 i = p->value_len;
    switch (p->field) {
    case HF_HOST:
        if (i < HTTP_HOST_BYTES)
            r->host[i & (HTTP_HOST_BYTES - 1)] = c;
        break;
    case HF_USER_AGENT:
        if (i < HTTP_USER_AGENT_BYTES)
            r->user_agent[i & (HTTP_USER_AGENT_BYTES - 1)] = c;
        break;
    case HF_TRACEPARENT:
        if (i < HTTP_TRACEPARENT_BYTES)
            r->traceparent[i & (HTTP_TRACEPARENT_BYTES - 1)] = c;
        break;
    case HF_TRACESTATE:
        if (i < HTTP_TRACESTATE_BYTES)
            r->tracestate[i & (HTTP_TRACESTATE_BYTES - 1)] = c;
        break;
    case HF_CONTENT_LENGTH:
        if (!is_digit(c) || i >= HTTP_MAX_LENGTH_DIGITS)
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        else
            p->number = p->number * 10 + (c - '0');
        break;
    default:
        if (i < sizeof(p->value_head))
            p->value_head[i & (sizeof(p->value_head) - 1)] = lower(c);
    }
}

static __always_inline __u32 slot_len(__u32 len, __u32 slot, __u8 *truncated, __u8 bit)
{
    if (len > slot) {
        *truncated |= bit;
        return slot;
    }
    return len;
}

static __always_inline bool value_head_is(const struct http_head_parse *p, const char *s, __u32 n)
{
    if (p->value_end != n)
        return false;
    for (__u32 i = 0; i < n && i < sizeof(p->value_head); i++)
        if (p->value_head[i] != s[i])
            return false;
    return true;
}

/* The end of a field line: its value is complete. */
static __always_inline void end_value(struct http_head_parse *p, struct http_request_head *r)
{
    __u32 len = p->value_end;
    switch (p->field) {
    case HF_HOST:
        if (r->present & HTTP_HAS_HOST)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_HOST;
        r->host_len = slot_len(len, HTTP_HOST_BYTES, &r->truncated, HTTP_TRUNC_HOST);
        break;
    case HF_USER_AGENT:
        if (r->present & HTTP_HAS_USER_AGENT)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_USER_AGENT;
        r->user_agent_len = slot_len(len, HTTP_USER_AGENT_BYTES, &r->truncated,
                                     HTTP_TRUNC_USER_AGENT);
        break;
    case HF_TRACEPARENT:
        if (r->present & HTTP_HAS_TRACEPARENT)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_TRACEPARENT;
        r->traceparent_len = slot_len(len, HTTP_TRACEPARENT_BYTES, &r->truncated,
                                      HTTP_TRUNC_TRACEPARENT);
        break;
    case HF_TRACESTATE:
        if (r->present & HTTP_HAS_TRACESTATE)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_TRACESTATE;
        r->tracestate_len = slot_len(len, HTTP_TRACESTATE_BYTES, &r->truncated,
                                     HTTP_TRUNC_TRACESTATE);
        break;
    case HF_CONTENT_LENGTH:
        if ((r->present & HTTP_HAS_CONTENT_LENGTH) || len == 0 || len != p->value_len)
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->present |= HTTP_HAS_CONTENT_LENGTH;
        r->content_length = p->number;
        break;
    case HF_TRANSFER_ENCODING:
        if (p->response && value_head_is(p, "chunked", 7))
            p->chunked = 1;
        else
            return head_stop(p, p->response ? HTTP_FALLBACK_RESPONSE_END
                                            : HTTP_FALLBACK_REQUEST_BODY);
        break;
    case HF_EXPECT:
        if (value_head_is(p, "100-continue", 12))
            p->expect_continue = 1;
        break;
    case HF_UPGRADE:
        return head_stop(p, HTTP_FALLBACK_UPGRADE);
    }
}

/* One byte of a head; p->state becomes HS_DONE when the head ends or the
 * parser gives up.  r receives the fields (a response's: its
 * Content-Length; its status and version land in p). */
static __always_inline void http_head_step(struct http_head_parse *p, struct http_request_head *r,
                                           __u8 c)
{
    __u32 pos = p->pos++;
    switch (p->state) {
    case HS_METHOD:
        if (c == ' ' && pos > 0) {
            r->method_len = pos;
            p->state = HS_TARGET;
        } else if (!is_tchar(c) || pos >= HTTP_METHOD_BYTES) {
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        } else {
            r->method[pos & (HTTP_METHOD_BYTES - 1)] = c;
        }
        break;
    case HS_TARGET:
        if (c == ' ' && p->value_len > 0) {
            r->target_len = slot_len(p->value_len, HTTP_TARGET_BYTES, &r->truncated,
                                     HTTP_TRUNC_TARGET);
            p->value_len = 0;
            p->state = HS_VERSION;
        } else if (c <= 0x20 || c == 0x7F) {
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        } else {
            if (p->value_len < HTTP_TARGET_BYTES)
                r->target[p->value_len & (HTTP_TARGET_BYTES - 1)] = c;
            p->value_len++;
        }
        break;
    case HS_VERSION: {
        /* "HTTP/1.<digit>" then CR */
        __u32 i = p->value_len++;
        const char *version = "HTTP/1.";
        if (i < 7 && c == (__u8)version[i & 7])
            break;
        if (i == 7 && is_digit(c)) {
            r->version_minor = c - '0';
            break;
        }
        if (i == 8 && c == '\r') {
            p->state = HS_LINE_END;
            break;
        }
        head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        break;
    }
    case HS_STATUS_VERSION: {
        const char *version = "HTTP/1.";
        __u32 i = pos;
        if (i < 7 && c == (__u8)version[i & 7])
            break;
        if (i == 7 && is_digit(c)) {
            p->version_minor = c - '0';
            break;
        }
        if (i == 8 && c == ' ') {
            p->state = HS_STATUS_CODE;
            break;
        }
        head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        break;
    }
    case HS_STATUS_CODE:
        /* three digits, the first 1-9, then SP or CR */
        if (pos < 12 && is_digit(c) && !(pos == 9 && c == '0')) {
            p->status = p->status * 10 + (c - '0');
        } else if (pos == 12 && c == ' ') {
            p->state = HS_REASON;
        } else if (pos == 12 && c == '\r') {
            p->state = HS_LINE_END;
        } else {
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        }
        break;
    case HS_REASON:
        if (c == '\r')
            p->state = HS_LINE_END;
        else if (c == '\n')
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        break;
    case HS_LINE_END:
        if (c != '\n')
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        p->state = HS_NAME_START;
        break;
    case HS_NAME_START:
        if (c == '\r') {
            p->state = HS_BLANK_LF;
            break;
        }
        p->name_len = 0;
        p->state = HS_NAME;
        /* fall through: the byte is the name's first */
    case HS_NAME:
        if (c == ':' && p->name_len > 0) {
            p->field = p->name_len <= HTTP_NAME_BYTES ? field_code(p) : HF_OTHER;
            p->value_len = p->value_end = 0;
            __builtin_memset(p->value_head, 0, sizeof(p->value_head));
            p->number = 0;
            p->state = HS_VALUE_START;
        } else if (!is_tchar(c)) {
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        } else {
            if (p->name_len < HTTP_NAME_BYTES)
                p->name[p->name_len & (HTTP_NAME_BYTES - 1)] = lower(c);
            if (p->name_len < 255)
                p->name_len++;
        }
        break;
    case HS_VALUE_START:
        if (c == ' ' || c == '\t')
            break;
        p->state = HS_VALUE;
        /* fall through */
    case HS_VALUE:
        if (c == '\r') {
            end_value(p, r);
            if (p->state != HS_DONE)
                p->state = HS_LINE_END;
        } else if (c == '\n' || c == 0) {
            head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        } else {
            store_value_byte(p, r, c);
            if (p->state == HS_DONE)
                break;
            p->value_len++;
            if (c != ' ' && c != '\t')
                p->value_end = p->value_len;
        }
        break;
    case HS_BLANK_LF:
        if (c != '\n')
            return head_stop(p, HTTP_FALLBACK_UNUSUAL_HEAD);
        r->header_bytes = p->pos;
        if (p->expect_continue)
            return head_stop(p, HTTP_FALLBACK_CONTINUE);
        head_stop(p, HTTP_HEAD_OK);
        break;
    }
}

/* Ready a parse of a request head (response: of a status line head). */
static __always_inline void http_head_begin(struct http_head_parse *p, bool response)
{
    __builtin_memset(p, 0, sizeof(*p));
    p->response = response;
    p->state = response ? HS_STATUS_VERSION : HS_METHOD;
}

/* The verdict once the bytes ran out: a head still open is split, and a
 * CONNECT tunnels rather than exchanges. */
static __always_inline __u8 http_head_result(const struct http_head_parse *p,
                                             const struct http_request_head *r)
{
    if (p->state != HS_DONE)
        return HTTP_FALLBACK_SPLIT_HEAD;
    if (p->result == HTTP_HEAD_OK && !p->response && r->method_len == 7 &&
        starts_with((const __u8 *)r->method, 7, "CONNECT", 7))
        return HTTP_FALLBACK_UPGRADE;
    return p->result;
}

#ifdef OTEL_EBPF_HOST
/* The host build's driver: the kernel's runs the step from bpf_loop. */
static inline __u8 http_parse_head(const __u8 *buf, __u32 len, bool response,
                                   struct http_request_head *r, struct http_head_parse *p)
{
    http_head_begin(p, response);
    __builtin_memset(r, 0, sizeof(*r));
    for (__u32 i = 0; i < len && i < HTTP_HEAD_SCAN_BYTES && p->state != HS_DONE; i++)
        http_head_step(p, r, buf[i]);
    return http_head_result(p, r);
}
#endif

#endif
