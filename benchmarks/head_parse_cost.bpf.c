// SPDX-License-Identifier: GPL-2.0
/* The probes' HTTP/1.x head parser (bpf/http_head.h) alone, timed in the
 * kernel: a syscall program, run with BPF_PROG_TEST_RUN, parses the head in
 * its map value `iters` times as the capture does (one bpf_loop step per
 * line) and stores the time taken.  Built and driven by
 * benchmarks/head_parse_cost.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "http_head.h"

char LICENSE[] SEC("license") = "GPL";

struct bench {
    struct http_head_parse parse;
    struct http_request_head request;
    __u8 head[2 * HTTP_HEAD_SCAN_BYTES];
    __u32 len;
    __u32 iters;
    __u64 ns;           /* out: time of the iters parses */
    __u32 steps;        /* out: bpf_loop steps of the last parse */
    __u8 response;
    __u8 verdict;       /* out: HTTP_HEAD_OK or a fallback reason */
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct bench);
} bench SEC(".maps");

struct bench_ctx {
    struct bench *b;
};

static long parse_step(__u32 i, void *ctx)
{
    struct bench *b = ((struct bench_ctx *)ctx)->b;
    if (!b || b->parse.state == HS_DONE || b->parse.pos >= b->parse.len)
        return 1;
    b->steps++;
    http_head_step(&b->parse, &b->request, b->head);
    return 0;
}

static long parse_once(__u32 i, void *ctx)
{
    struct bench *b = ((struct bench_ctx *)ctx)->b;
    if (!b)
        return 1;
    b->steps = 0;
    http_head_begin(&b->parse, &b->request, b->len, b->response);
    bpf_loop(HTTP_HEAD_SCAN_BYTES / 4, parse_step, ctx, 0);
    b->verdict = http_head_result(&b->parse, &b->request);
    return 0;
}

SEC("syscall")
int run(void *ctx)
{
    __u32 zero = 0;
    struct bench_ctx c = { .b = bpf_map_lookup_elem(&bench, &zero) };
    if (!c.b)
        return 0;
    __u64 start = bpf_ktime_get_ns();
    bpf_loop(c.b->iters, parse_once, &c, 0);
    c.b->ns = bpf_ktime_get_ns() - start;
    return 0;
}
