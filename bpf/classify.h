/* What the protocol classifiers (bpf/http.bpf.c, bpf/grpc.bpf.c,
 * bpf/sql.bpf.c) build on: byte tests that need nothing from the kernel, so
 * that the classifiers compile for BPF and for the host alike.
 * tests/capture/test_classifiers.py builds them natively (OTEL_EBPF_HOST)
 * and checks them against agent/parsers' looks_like_* functions. */
#ifndef OTEL_EBPF_CLASSIFY_H
#define OTEL_EBPF_CLASSIFY_H

#ifdef OTEL_EBPF_HOST
/* A host build has no BPF headers: the kernel's integer names come from
 * its user API headers, the inline marker from the C library's. */
#include <linux/types.h>
#include <stdbool.h>
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#endif

#include "events.h"

/* Bytes of a syscall's data the classifiers look at: the cache
 * classifiers' window (bpf/cache_classify.h reads all of it, masked). */
#define CLASSIFY_BYTES 32

static __always_inline bool starts_with(const __u8 *buf, __u32 len, const char *prefix, __u32 n)
{
    if (len < n)
        return false;
    for (__u32 i = 0; i < n; i++)
        if (buf[i] != (__u8)prefix[i])
            return false;
    return true;
}

static __always_inline __u32 be32(const __u8 *b)
{
    return ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3];
}

static __always_inline bool is_digit(__u8 c)
{
    return c >= '0' && c <= '9';
}

#endif
