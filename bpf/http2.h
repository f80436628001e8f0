/* HTTP/2 recognition (RFC 9113 section 3.4): a cleartext connection with
 * prior knowledge (h2c) begins with the client connection preface
 * "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".  Its first CLASSIFY_BYTES (8) bytes are
 * checked on the connection's first data in either direction: the client's
 * write or the server's read.  Frames, HPACK and streams are decoded in
 * userspace (agent/parsers/http2.py); a connection joined after its preface
 * stays unclassified (counted in probe_stats.unclassified).
 *
 * Included from protocols.h, after starts_with(): the one capture object and
 * its one set of syscall hooks serve every protocol. */
#ifndef OTEL_EBPF_HTTP2_H
#define OTEL_EBPF_HTTP2_H

static __always_inline bool is_http2_preface(const __u8 *b, __u32 len)
{
    return starts_with(b, len, "PRI * HT", 8);
}

#endif
