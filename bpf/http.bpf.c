// SPDX-License-Identifier: GPL-2.0
/* HTTP/1.x in the kernel: recognising a connection from the first bytes a
 * syscall moves.  Requests and responses are parsed in userspace
 * (agent/parsers/http1.py).
 *
 * A part of the capture object: bpf/capture.bpf.c includes it through
 * bpf/protocols.h (docs/decisions/kernel-units.md says why one unit). */
#ifndef OTEL_EBPF_HTTP_BPF_C
#define OTEL_EBPF_HTTP_BPF_C

#include "classify.h"

/* HTTP/1.x request methods (RFC 9110 and WebDAV's most common). */
static __always_inline bool is_http1_request(const __u8 *b, __u32 len)
{
    return starts_with(b, len, "GET ", 4) || starts_with(b, len, "POST ", 5) ||
           starts_with(b, len, "PUT ", 4) || starts_with(b, len, "HEAD ", 5) ||
           starts_with(b, len, "DELETE ", 7) || starts_with(b, len, "PATCH ", 6) ||
           starts_with(b, len, "OPTIONS ", 8) || starts_with(b, len, "CONNECT ", 8) ||
           starts_with(b, len, "TRACE ", 6);
}

/* A request, or the status line of a response. */
static __always_inline bool is_http1(const __u8 *b, __u32 len)
{
    return is_http1_request(b, len) || starts_with(b, len, "HTTP/1.", 7);
}

#endif
