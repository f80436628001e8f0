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

/* Redis and memcached are recognised where classification is a function
 * of its own (CO-RE, and the host build of the tests): BCC inlines it
 * into every program, and there the cache classifiers' branches overflow
 * the verifier's jump stack.  The BCC build leaves them out. */
#if defined(FRONTEND_BTF) && !FRONTEND_BTF
#define CACHE_CLASSIFY 0
#else
#define CACHE_CLASSIFY 1
#endif

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
#if CACHE_CLASSIFY
    if (is_redis_request(head, len) || is_redis_reply(head, len))
        return PROTOCOL_REDIS;
    if (is_memcached_request(head, len) || is_memcached_reply(head, len))
        return PROTOCOL_MEMCACHED;
#endif
    return PROTOCOL_UNKNOWN;
}

/* The capture calls classification through this.  Under CO-RE it is a
 * global function, which the verifier checks once, on its own, and whose
 * result the caller sees as any byte: inlined into every program that
 * copies data, the classifiers' many branches (the cache protocols' above
 * all) multiply the paths the verifier walks after them past its
 * instruction limit.  BCC's programs have no subprograms: inlined there. */
struct classify_head {
    __u8 bytes[CLASSIFY_BYTES];
};

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
