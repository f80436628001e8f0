/* In-kernel protocol classification: a cheap look at a payload's first
 * bytes, by each protocol's unit in turn.  Only the decision "is this a
 * protocol the agent traces" is made here; all parsing is done in userspace
 * (agent/parsers/).  Compiles for the host too (bpf/classify.h). */
#ifndef OTEL_EBPF_PROTOCOLS_H
#define OTEL_EBPF_PROTOCOLS_H

#include "classify.h"
#include "http.bpf.c"
#include "grpc.bpf.c"
#include "sql.bpf.c"
#include "cache_classify.h"

_Static_assert(CLASSIFY_BYTES == CACHE_CLASSIFY_WINDOW, "the cache classifiers read the whole head");

/* head: CLASSIFY_BYTES readable bytes, of which the first len (<=
 * CLASSIFY_BYTES) are the start of the total bytes a syscall moved.  The
 * cache protocols come last: their tests are the loosest, and a message of
 * the others never passes them (tests/parsers/test_cache_classify.py). */
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
    struct cache_view cache;
    cache_look(&cache, head, len);
    if (cache_redis_request(&cache) | cache_redis_reply(&cache))
        return PROTOCOL_REDIS;
    if (cache_memcached_request(&cache) | cache_memcached_reply(&cache))
        return PROTOCOL_MEMCACHED;
    return PROTOCOL_UNKNOWN;
}

/* The capture calls classification through this.  Under CO-RE it is a
 * global function, which the verifier checks once, on its own, and whose
 * result the caller sees as any byte.  BCC's programs have no subprograms:
 * there it is inlined into every program that copies data, which the
 * verifier affords because the cache classifiers, the largest, are
 * straight-line code (bpf/cache_classify.h). */
struct classify_head {
    __u8 bytes[CLASSIFY_BYTES];
} __attribute__((aligned(8)));  /* the cache classifiers read it in words */

#if defined(FRONTEND_BTF) && FRONTEND_BTF
__attribute__((noinline)) __u8 classify_head(const struct classify_head *head, __u32 len,
                                             __u64 total)
#else
static __always_inline __u8 classify_head(const struct classify_head *head, __u32 len,
                                          __u64 total)
#endif
{
    if (!head)
        return PROTOCOL_UNKNOWN;
    /* On the stack, as the classifiers are verified in their own test
     * (tests/kernel/test_cache_classify_kernel.py). */
    struct classify_head copy = *head;
    return classify_protocol(copy.bytes, len < CLASSIFY_BYTES ? len : CLASSIFY_BYTES, total);
}

#endif
