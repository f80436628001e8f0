/* In-kernel protocol classification: a cheap look at a payload's first bytes.
 * Only the decision "is this a protocol the agent traces" lives here; all
 * parsing is done in userspace (agent/parsers/). */
#ifndef OTEL_EBPF_PROTOCOLS_H
#define OTEL_EBPF_PROTOCOLS_H

#define CLASSIFY_BYTES 16

static __always_inline bool starts_with(const __u8 *buf, __u32 len, const char *prefix, __u32 n)
{
    if (len < n)
        return false;
    for (__u32 i = 0; i < n; i++)
        if (buf[i] != (__u8)prefix[i])
            return false;
    return true;
}

/* HTTP/1.x request methods (RFC 9110 and WebDAV's most common) and the
 * status line of a response. */
static __always_inline bool is_http1(const __u8 *b, __u32 len)
{
    return starts_with(b, len, "GET ", 4) || starts_with(b, len, "POST ", 5) ||
           starts_with(b, len, "PUT ", 4) || starts_with(b, len, "HEAD ", 5) ||
           starts_with(b, len, "DELETE ", 7) || starts_with(b, len, "PATCH ", 6) ||
           starts_with(b, len, "OPTIONS ", 8) || starts_with(b, len, "CONNECT ", 8) ||
           starts_with(b, len, "TRACE ", 6) || starts_with(b, len, "HTTP/1.", 7);
}

#include "http2.h"
#include "sql.h"

/* head: the first len (<= CLASSIFY_BYTES) of the total bytes a syscall moved. */
static __always_inline __u8 classify_protocol(const __u8 *head, __u32 len, __u64 total)
{
    if (is_http1(head, len))
        return PROTOCOL_HTTP1;
    if (is_http2_preface(head, len) || is_http2_frame(head, len))
        return PROTOCOL_HTTP2;
    if (is_postgres(head, len, total))
        return PROTOCOL_POSTGRES;
    if (is_mysql(head, len, total))
        return PROTOCOL_MYSQL;
    return PROTOCOL_UNKNOWN;
}

#endif
