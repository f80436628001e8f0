// SPDX-License-Identifier: GPL-2.0
/* HTTP/2 and gRPC in the kernel: HTTP/2 recognition (RFC 9113 section 3.4): a cleartext connection with
 * prior knowledge (h2c) begins with the client connection preface
 * "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".  Its first CLASSIFY_BYTES (8) bytes are
 * checked on the connection's first data in either direction: the client's
 * write or the server's read.  Frames, HPACK and streams are decoded in
 * userspace (agent/parsers/http2.py).
 *
 * A connection the agent joins after its preface is recognised by a frame
 * header at the start of a syscall's bytes, of a kind both peers send often
 * and whose header fields are tightly constrained: HEADERS on a client stream,
 * SETTINGS, WINDOW_UPDATE, PING.  DATA is left out: its header is too easy to
 * mistake for other length-prefixed protocols.  Userspace checks further
 * frames before it trusts the stream (H2Direction's resync).
 *
 * A part of the capture object: bpf/capture.bpf.c includes it through
 * bpf/protocols.h (docs/decisions/kernel-units.md says why one unit). */
#ifndef OTEL_EBPF_GRPC_BPF_C
#define OTEL_EBPF_GRPC_BPF_C

#include "classify.h"

static __always_inline bool is_http2_preface(const __u8 *b, __u32 len)
{
    return starts_with(b, len, "PRI * HT", 8);
}

#define H2_DEFAULT_MAX_FRAME 16384
#define H2_HEADERS 1
#define H2_SETTINGS 4
#define H2_PING 6
#define H2_WINDOW_UPDATE 8
/* HEADERS flags: END_STREAM, END_HEADERS, PADDED, PRIORITY */
#define H2_HEADERS_FLAGS 0x2d

static __always_inline bool is_http2_frame(const __u8 *b, __u32 len)
{
    if (len < 9 || (b[5] & 0x80))
        return false;
    __u32 length = ((__u32)b[0] << 16) | ((__u32)b[1] << 8) | b[2];
    __u8 type = b[3], flags = b[4];
    __u32 stream = ((__u32)b[5] << 24) | ((__u32)b[6] << 16) | ((__u32)b[7] << 8) | b[8];
    if (length > H2_DEFAULT_MAX_FRAME)
        return false;
    switch (type) {
    case H2_HEADERS:
        return stream & 1 && length > 0 && !(flags & ~H2_HEADERS_FLAGS);
    case H2_SETTINGS:
        return stream == 0 && length % 6 == 0 && flags <= 1 && !(flags && length);
    case H2_PING:
        return stream == 0 && length == 8 && flags <= 1;
    case H2_WINDOW_UPDATE:
        return length == 4 && flags == 0;
    }
    return false;
}

#endif
