/* HTTP/1.x exchanges paired in the probes: a request head parsed from the
 * call that carried it, kept per connection until its response ends, then
 * one EVENT_HTTP_EXCHANGE record (struct http_exchange, bpf/events.h)
 * instead of a data record per syscall.  The request is parsed straight
 * into its connection's slot (http_pending), which stays its own, idle,
 * between exchanges: an exchange costs one array index, no insert, copy or
 * delete.
 *
 * Only what is certain is paired here: a head contained in one call (or,
 * a server's request, in one call after a read of its first byte alone), a
 * request body and a response body of announced length (or none).  Anything
 * else (bpf/events.h's HTTP_FALLBACK_* reasons) turns the connection over to
 * the payload path for good, counted by reason in http_fallbacks.  A switch
 * at a request head loses nothing: that call is copied as today.  A switch
 * after the request was kept (a response of unknown length, a pipelined
 * request) drops the kept request, also counted.
 *
 * Part of the capture object: bpf/capture.bpf.c includes it before its copy
 * path, whose connection table, scratch buffer and ring output it uses.
 * Load-time switch: capture_config.http_exchanges (the BCC build has no
 * bpf_loop and keeps it off). */
#ifndef OTEL_EBPF_HTTP_EXCHANGE_H
#define OTEL_EBPF_HTTP_EXCHANGE_H

#include "http_head.h"

#define HTTP_PHASE_IDLE 0           /* between exchanges */
#define HTTP_PHASE_REQUEST_BODY 1
#define HTTP_PHASE_AWAIT_RESPONSE 2
#define HTTP_PHASE_RESPONSE_BODY 3

struct http_pending {
    __u8 phase;             /* first: userspace counts the slots held by it */
    __u8 request_direction;
    __u8 head_request;      /* a HEAD request: its response has no body */
    __u8 shed;              /* followed to its end, but not written */
    __u8 reserved[4];
    __u64 body_remaining;
    struct http_exchange record;
};

/* Exchanges in progress, a connection's in the slot at its id modulo
 * HTTP_PENDING_SLOTS: found with one array index, where a hash lookup cost
 * more than the rest of the pairing.  A slot is the connection's that
 * record.hdr.conn_id names; idle (between exchanges, or its connection
 * closed), it goes to the next connection that needs it.  Busy with another
 * connection's exchange, the newcomer goes to the payload path (no_slot);
 * held longer than HTTP_PENDING_STALE_NS (a process that died mid-exchange
 * without close()), it is taken back and its request counted as dropped. */
#define HTTP_PENDING_SLOTS 16384
#define HTTP_PENDING_STALE_NS (300ULL * 1000000000ULL)

MAP(ARRAY, http_pending, __u32, struct http_pending, HTTP_PENDING_SLOTS);

static __always_inline struct http_pending *http_slot(__u64 conn_id)
{
    __u32 index = conn_id & (HTTP_PENDING_SLOTS - 1);
    return bpf_map_lookup_elem(&http_pending, &index);
}

/* The connection's own entry (idle, or holding its exchange), or NULL. */
static __always_inline struct http_pending *http_pending_of(__u64 conn_id)
{
    struct http_pending *p = http_slot(conn_id);
    return p && p->record.hdr.conn_id == conn_id ? p : NULL;
}

/* The connection holds no exchange any more (closed, or on the payload
 * path): its slot is idle. */
static __always_inline void http_release(__u64 conn_id)
{
    struct http_pending *p = http_pending_of(conn_id);
    if (p)
        p->phase = HTTP_PHASE_IDLE;
}

/* Per-CPU room for a head being parsed and a response head's framing
 * fields (too large for the BPF stack). */
struct http_work {
    struct http_head_parse parse;
    struct http_request_head response;
};

MAP(PERCPU_ARRAY, http_work, __u32, struct http_work, 1);

/* The server request a thread last read: a client request it sends while
 * that one is still unanswered names it (a proxy's upstream call), as the
 * payload path's linker links by thread.  Kept with the thread (task
 * storage: set with one store, gone with the thread) and never cleared: a
 * client request checks that the exchange named is still the one on its
 * way (answered, turned over to the payload path or shed, it is not).  The
 * BCC build has no task storage, and runs no exchanges. */
struct http_serving {
    __u64 conn_id;
    __u64 start_ns;         /* the request's start: which exchange on conn_id */
};

#if FRONTEND_BTF
struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct http_serving);
} http_serving SEC(".maps");

/* The calling thread serves this exchange now (conn_id 0: none to name). */
static __always_inline void http_serving_set(__u64 conn_id, __u64 start_ns)
{
    struct http_serving *s = bpf_task_storage_get(&http_serving, bpf_get_current_task_btf(), 0,
                                                  BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (s) {
        s->conn_id = conn_id;
        s->start_ns = start_ns;
    }
}

/* The server exchange the calling thread serves, still on its way, or 0. */
static __always_inline __u64 http_serving_now(void)
{
    struct http_serving *s = bpf_task_storage_get(&http_serving, bpf_get_current_task_btf(), 0, 0);
    if (!s || !s->conn_id)
        return 0;
    __u64 conn_id = s->conn_id;
    struct http_pending *p = http_pending_of(conn_id);
    if (!p || p->phase == HTTP_PHASE_IDLE || p->shed || p->record.hdr.start_ns != s->start_ns)
        return 0;
    return conn_id;
}
#else
static __always_inline void http_serving_set(__u64 conn_id, __u64 start_ns)
{
}

static __always_inline __u64 http_serving_now(void)
{
    return 0;
}
#endif

/* Connections turned over to the payload path, and requests kept but then
 * dropped, by HTTP_FALLBACK_* reason. */
struct http_fallback_stats {
    __u64 connections;
    __u64 requests_dropped;
};

MAP(PERCPU_ARRAY, http_fallbacks, __u32, struct http_fallback_stats, HTTP_FALLBACK_COUNT);

/* Exchanges shed whole under load, by HTTP_SHED_* reason. */
MAP(PERCPU_ARRAY, http_shed, __u32, __u64, HTTP_SHED_COUNT);

/* Overload sheds whole exchanges: past the fill mark a new request is
 * still followed (its response must be recognised and consumed) but neither
 * side is written, so that the ring's remaining room goes to exchanges
 * already started and no exported span lacks its other half. */
static __always_inline bool http_should_shed(void)
{
    __u32 mark = CONFIG(http_shed_bytes);
    return mark && RINGBUF_UNREAD(events) >= mark;
}

/* A call's time as the spans count it: sent when the write begins,
 * received when the read returns. */
static __always_inline __u64 http_call_time(const struct io_args *a)
{
    if (a->direction == DIRECTION_INGRESS || !a->start_ns)
        return bpf_ktime_get_ns();
    return a->start_ns;
}

static __always_inline void http_count_fallback(__u8 reason, __u64 connections, __u64 dropped)
{
    __u32 key = reason;
    struct http_fallback_stats *stats = bpf_map_lookup_elem(&http_fallbacks, &key);
    if (stats) {
        stats->connections += connections;
        stats->requests_dropped += dropped;
    }
}

static __always_inline void http_fall_back(struct conn_info *conn, __u8 reason, bool dropped)
{
    http_count_fallback(reason, 1, dropped);
    conn->http_payload = HTTP_PAYLOAD_FOR_GOOD;
    http_release(conn->conn_id);
}

/* The loop's context: the buffers, looked up once per head. */
struct http_loop {
    struct data_event *ev;
    struct http_work *w;
    struct http_request_head *r;
};

static long http_head_loop_step(__u32 i, void *ctx)
{
    struct http_loop *l = ctx;
    struct data_event *ev = l->ev;
    struct http_work *w = l->w;
    struct http_request_head *r = l->r;
    if (!ev || !w || !r || w->parse.state == HS_DONE || w->parse.pos >= w->parse.len)
        return 1;
    http_head_step(&w->parse, r, ev->payload);
    return 0;
}

/* Steps a head can take: a line takes at least 4 bytes, and a step moves
 * on by a line or by HTTP_SCAN_WORDS words. */
#define HTTP_HEAD_STEPS (HTTP_HEAD_SCAN_BYTES / 4)

/* Parse the head at the start of the captured bytes (scratch's payload)
 * into r (a request: its exchange's entry; a response: the work area).
 * Under CO-RE a global function: the verifier checks it once per program,
 * not once for every state its callers reach it in.  (BCC's programs have
 * no subprograms; there it is inlined, and never runs.) */
#if FRONTEND_BTF
__noinline __u8 http_parse_captured(struct http_work *w, struct http_request_head *r,
                                    __u32 captured, __u32 response)
#else
static __always_inline __u8 http_parse_captured(struct http_work *w, struct http_request_head *r,
                                                __u32 captured, __u32 response)
#endif
{
    __u32 zero = 0;
    if (!w || !r)
        return HTTP_FALLBACK_SPLIT_HEAD;
    http_head_begin(&w->parse, r, captured, response);
    struct http_loop l = { .ev = bpf_map_lookup_elem(&scratch, &zero), .w = w, .r = r };
    BOUNDED_LOOP(FRONTEND_LOOP_STEPS(HTTP_HEAD_STEPS, 0), http_head_loop_step, &l);
    return http_head_result(&w->parse, r);
}

/* A request on its way (its head seen, its response not yet ended). */
static __always_inline bool http_in_exchange(const struct http_pending *p)
{
    return p && p->phase != HTTP_PHASE_IDLE;
}

/* By load (HTTP_EXCHANGES_BY_LOAD): exchanges are paired here only while
 * the ring's unread bytes pass the drain's wake-up mark, and for
 * RING_FILLED_HOLD_NS after they last did; otherwise calls are copied.  A
 * connection moves at a request head: to the payload path at one that
 * begins while its slot is idle, to records at one whose bytes begin with
 * a method (what the probes cannot tell from a body that happens to start
 * so, userspace can: agent/protocols/http1_records.py). */
/* Moves between the paths, by direction (0: to records, 1: to the payload path). */
MAP(PERCPU_ARRAY, http_moves, __u32, __u64, 2);

#if FRONTEND_BTF
/* The ring has been filling (capture.bpf.c's ring_filled_until, set as
 * records are written). */
static __always_inline bool http_busy(void)
{
    __u64 until = ring_filled_until;
    if (!until)
        return false;
    if (bpf_ktime_get_ns() < until)
        return true;
    ring_filled_until = 0;
    return false;
}

/* Records may be on their way: the ring filled within the hold. */
static __always_inline bool http_recently_busy(void)
{
    return ring_filled_until != 0;
}
#else
/* The BCC build pairs no exchanges. */
static __always_inline bool http_busy(void)
{
    return false;
}

static __always_inline bool http_recently_busy(void)
{
    return false;
}
#endif

static __always_inline void http_count_move(__u32 to_payload)
{
    __u64 *moves = bpf_map_lookup_elem(&http_moves, &to_payload);
    if (moves)
        *moves += 1;
}

/* The call could start the connection's next request: it moves the request
 * side's bytes (for a connection whose role is unknown, either side's). */
static __always_inline bool http_request_side(const struct conn_info *conn,
                                              const struct io_args *a)
{
    if (a->buffer_kind != IO_BUFFER)
        return false;
    if (conn->role == ROLE_SERVER)
        return a->direction == DIRECTION_INGRESS;
    if (conn->role == ROLE_CLIENT)
        return a->direction == DIRECTION_EGRESS;
    return true;
}

/* A records connection between exchanges (p: its entry) while the agent
 * keeps up: to the payload path, this call included (its slot is idle
 * already).  True when it moved. */
static __always_inline bool http_quiet_move(struct conn_info *conn, const struct io_args *a,
                                            const struct http_pending *p)
{
    if (conn->http_byte_held || conn->http_mark_ns || !http_request_side(conn, a) ||
        http_in_exchange(p) || http_busy())
        return false;
    conn->http_payload = HTTP_PAYLOAD_QUIET;
    http_count_move(1);
    return true;
}

/* A payload-path connection moved there by a quiet ring, at a call whose
 * captured bytes begin with a method while the ring fills: to records,
 * this call's head first.  True when it moved. */
static __always_inline bool http_busy_move(struct conn_info *conn, const struct io_args *a,
                                           const __u8 *bytes, __u32 captured)
{
    if (!http_request_side(conn, a) || !http_busy() || !is_http1_request(bytes, captured))
        return false;
    conn->http_payload = HTTP_PAYLOAD_RECORDS;
    http_count_move(0);
    return true;
}

/* Go's HTTP server reads one byte ahead between requests (to notice a
 * client that went away while a handler runs): the next request's head
 * then comes as that byte and a read with the rest.  A server's read of
 * one byte that can begin a method, between exchanges, is held on the
 * connection (no record) and put back before the next read's bytes. */
static __always_inline bool http_hold_byte(struct conn_info *conn, const struct io_args *a,
                                           long ret, struct http_pending *p)
{
    if (ret != 1 || conn->role != ROLE_SERVER || a->direction != DIRECTION_INGRESS ||
        a->buffer_kind != IO_BUFFER || conn->http_byte_held || http_in_exchange(p))
        return false;
    __u8 byte = 0;
    if (bpf_probe_read_user(&byte, 1, (void *)a->buf) || byte < 'A' || byte > 'Z')
        return false;
    conn->http_byte = byte;
    conn->http_byte_held = 1;
    conn->http_mark_ns = bpf_ktime_get_ns();
    return true;
}

/* The byte held for this call, if it is the server's next read: 1, or 0
 * (a held byte another kind of call follows is dropped, counted). */
static __always_inline __u8 http_take_byte(struct conn_info *conn, const struct io_args *a)
{
    if (!conn->http_byte_held)
        return 0;
    conn->http_byte_held = 0;
    if (a->direction == DIRECTION_INGRESS && a->buffer_kind == IO_BUFFER)
        return 1;
    conn->http_mark_ns = 0;
    http_count_fallback(HTTP_FALLBACK_SPLIT_HEAD, 0, 1);
    return 0;
}

/* The held record, as far as its values go. */
static __always_inline void http_write(struct probe_stats *stats, struct http_pending *p)
{
    __u64 size = __builtin_offsetof(struct http_exchange, request.values) +
                 p->record.request.values_len;
    if (size > sizeof(p->record))
        size = sizeof(p->record);
    barrier_var(size);
    output_record(stats, &p->record, size, false);
}

static __always_inline void http_emit(struct probe_stats *stats, struct http_pending *p,
                                      __u64 end_ns, __u64 bytes)
{
    if (p->shed) {
        __u32 key = HTTP_SHED_RING_FILL;
        __u64 *shed = bpf_map_lookup_elem(&http_shed, &key);
        if (shed)
            (*shed)++;
        return;
    }
    p->record.hdr.end_ns = end_ns;
    p->record.response_bytes += bytes;
    http_write(stats, p);
}

/* The connection goes to the payload path with an exchange on its way (or
 * none: p NULL or idle).  A request whose response has not begun is handed
 * over whole (EVENT_HTTP_KEPT_REQUEST, ahead of this call's data record):
 * the payload path reads the response and pairs them as if it had read the
 * request too.  Once a response head was taken here, or a request body is
 * still coming, the payload path could not frame the rest: that exchange
 * is dropped, counted.  A shed exchange writes nothing either way.
 * Under CO-RE a global function, like http_parse_captured: its callers are
 * many, and each would have the verifier walk it again. */
#if FRONTEND_BTF
__noinline int http_give_up(struct probe_stats *stats, struct conn_info *conn,
                            struct http_pending *p, __u32 reason)
#else
static __always_inline int http_give_up(struct probe_stats *stats, struct conn_info *conn,
                                        struct http_pending *p, __u32 reason)
#endif
{
    if (!conn)
        return 0;
    bool handed_over = stats && p && p->phase == HTTP_PHASE_AWAIT_RESPONSE && !p->shed;
    if (handed_over) {
        p->record.hdr.type = EVENT_HTTP_KEPT_REQUEST;
        http_write(stats, p);
    }
    http_fall_back(conn, reason, http_in_exchange(p) && !handed_over);
    return 0;
}

/* A call sending on a client connection the payload path reads (its
 * HTTP/1 turned over earlier) while the thread serves an exchange held here:
 * a note ahead of its data record, so that userspace decides the request
 * after the one it serves, as the payload path reads them (a proxy's
 * upstream call on a kept-alive connection).  Global under CO-RE, as above. */
#if FRONTEND_BTF
__noinline int http_note_serving(struct probe_stats *stats, struct conn_info *conn,
                                 __u64 start_ns, __u32 fd, __u32 probe)
#else
static __always_inline int http_note_serving(struct probe_stats *stats, struct conn_info *conn,
                                             __u64 start_ns, __u32 fd, __u32 probe)
#endif
{
    if (!stats || !conn)
        return 0;
    __u64 serving = http_serving_now();
    if (!serving)
        return 0;
    __u64 id = bpf_get_current_pid_tgid();   /* the sending thread: the caller's */
    struct http_serving_note note = {};
    struct event_header *h = &note.hdr;
    h->type = EVENT_HTTP_SERVING;
    h->pid = id >> 32;
    h->tid = (__u32)id;
    h->fd = fd;
    h->conn_id = conn->conn_id;
    h->start_ns = start_ns;
    h->direction = DIRECTION_EGRESS;
    h->role = ROLE_CLIENT;
    h->protocol = PROTOCOL_HTTP1;
    h->probe = probe;
    h->tuple = conn->tuple;
    note.serving_conn_id = serving;
    output_record(stats, &note, sizeof(note), false);
    return 0;
}

/* Body bytes of the pending exchange (no copy needed).  True when the call
 * was taken here. */
static __always_inline bool http_body_call(struct conn_info *conn, struct http_pending *p,
                                           const struct io_args *a, __u64 n,
                                           struct probe_stats *stats)
{
    bool request_side = a->direction == p->request_direction;
    if (p->phase == HTTP_PHASE_REQUEST_BODY && request_side) {
        if (n > p->body_remaining) {
            http_give_up(stats, conn, p, HTTP_FALLBACK_PIPELINED);
            return false;
        }
        p->body_remaining -= n;
        p->record.request_bytes += n;
        if (!p->body_remaining)
            p->phase = HTTP_PHASE_AWAIT_RESPONSE;
        return true;
    }
    if (p->phase == HTTP_PHASE_RESPONSE_BODY) {
        if (request_side || n > p->body_remaining) {
            http_give_up(stats, conn, p, HTTP_FALLBACK_PIPELINED);
            return false;
        }
        p->body_remaining -= n;
        if (!p->body_remaining) {
            http_emit(stats, p, http_call_time(a), n);
            p->phase = HTTP_PHASE_IDLE;
        } else {
            p->record.response_bytes += n;
        }
        return true;
    }
    return false;
}

/* The connection's entry for a new request: its own, idle, or its slot
 * taken over (idle, or stale: that request counted as dropped).  NULL when
 * another connection's exchange holds the slot. */
static __always_inline struct http_pending *http_entry(struct conn_info *conn,
                                                       struct http_pending *p, __u64 at)
{
    if (p)
        return p;
    p = http_slot(conn->conn_id);
    if (!p)
        return NULL;
    if (p->phase != HTTP_PHASE_IDLE) {
        /* (an exchange another CPU started since this call began is not stale) */
        if (p->record.hdr.start_ns + HTTP_PENDING_STALE_NS > at)
            return NULL;
        __u32 key = HTTP_FALLBACK_NO_SLOT;
        struct http_fallback_stats *stats = bpf_map_lookup_elem(&http_fallbacks, &key);
        if (stats)
            stats->requests_dropped++;
    }
    p->phase = HTTP_PHASE_IDLE;
    p->record.hdr.conn_id = conn->conn_id;
    return p;
}

/* A request head on a connection with no exchange on its way: parsed into
 * the connection's entry.  True when taken (no data record). */
static __always_inline bool http_request_call(__u64 id, struct conn_info *conn,
                                              struct http_pending *p, struct http_work *w,
                                              const struct io_args *a, __u64 n, __u32 captured,
                                              __u64 at, __u8 flags)
{
    __u8 expected = conn->role == ROLE_SERVER ? DIRECTION_INGRESS : DIRECTION_EGRESS;
    if (conn->role != ROLE_UNKNOWN && a->direction != expected) {
        if (conn->role == ROLE_CLIENT && !conn->http_mark_ns) {
            /* A response ahead of its request's record: a write is copied
             * as its call ends, and a client reading on another thread can
             * have the answer first.  The two go to the payload path, which
             * pairs them (or counts the response, if no request was on its
             * way: a connection joined mid-exchange). */
            conn->http_mark_ns = at;
            http_count_fallback(HTTP_FALLBACK_RESPONSE_FIRST, 1, 0);
            return false;
        }
        http_fall_back(conn, HTTP_FALLBACK_MID_STREAM, false);
        return false;
    }
    if (conn->role == ROLE_CLIENT && conn->http_mark_ns) {
        __u64 early = conn->http_mark_ns;
        conn->http_mark_ns = 0;
        /* the request that was on its way when its response came (or a
         * call with no start to tell: the payload path decides); a later
         * one begins a new exchange here */
        if (!a->start_ns || at < early)
            return false;
    }
    p = http_entry(conn, p, at);
    if (!p) {
        http_fall_back(conn, HTTP_FALLBACK_NO_SLOT, false);
        return false;
    }
    struct http_request_head *r = &p->record.request;
    __u8 verdict = http_parse_captured(w, r, captured, false);
    if (verdict != HTTP_HEAD_OK) {
        http_fall_back(conn, verdict, false);
        return false;
    }
    __u64 after = n - r->header_bytes;
    __u64 body = (r->present & HTTP_HAS_CONTENT_LENGTH) ? r->content_length : 0;
    if (after > body) {
        http_fall_back(conn, HTTP_FALLBACK_PIPELINED, false);
        return false;
    }
    p->body_remaining = body - after;
    p->phase = p->body_remaining ? HTTP_PHASE_REQUEST_BODY : HTTP_PHASE_AWAIT_RESPONSE;
    p->request_direction = a->direction;
    p->shed = http_should_shed();
    p->head_request = r->method_len == 4 && starts_with((const __u8 *)r->values, 4, "HEAD", 4);
    struct event_header *h = &p->record.hdr;
    h->type = EVENT_HTTP_EXCHANGE;
    h->pid = id >> 32;
    h->tid = (__u32)id;
    h->fd = a->fd;
    h->conn_id = conn->conn_id;
    h->start_ns = at;
    h->end_ns = 0;
    h->length = n;
    h->captured = 0;
    h->direction = a->direction;
    h->role = conn->role;
    h->protocol = PROTOCOL_HTTP1;
    h->flags = flags;       /* FLAG_TLS: the plaintext of a TLS library's calls */
    h->probe = a->probe;
    /* A shed exchange takes no number: no record, no gap. */
    h->seq = p->shed ? 0 : (__sync_fetch_and_add(&conn->seq, 1) % 65535) + 1;
    h->tuple = conn->tuple;
    p->record.response_start_ns = 0;
    p->record.request_bytes = n;
    p->record.response_bytes = 0;
    p->record.status = 0;
    p->record.response_version_minor = 0;
    p->record.serving_conn_id = 0;
    if (a->direction == DIRECTION_INGRESS)
        /* a shed request's upstream calls must not wait for a record
         * never written */
        http_serving_set(p->shed ? 0 : conn->conn_id, h->start_ns);
    else
        p->record.serving_conn_id = http_serving_now();
    return true;
}

/* A call the body path did not take, its first bytes captured in scratch:
 * a request head on an idle connection, or the response head.  at: the
 * call's time (http_call_time, or the held byte's).  True when taken (no
 * data record). */
static __always_inline bool http_head_call(__u64 id, struct conn_info *conn,
                                           struct http_pending *p, const struct io_args *a,
                                           __u64 n, __u32 captured, __u64 at, __u8 flags,
                                           struct probe_stats *stats)
{
    __u32 zero = 0;
    struct http_work *w = bpf_map_lookup_elem(&http_work, &zero);
    if (!w)
        return false;
    if (!http_in_exchange(p))
        return http_request_call(id, conn, p, w, a, n, captured, at, flags);
    if (p->phase == HTTP_PHASE_RESPONSE_BODY || a->direction == p->request_direction) {
        /* A second request before the first one's response. */
        http_give_up(stats, conn, p, HTTP_FALLBACK_PIPELINED);
        return false;
    }
    /* The response head: parsed into the work area, the kept request
     * stays where it is. */
    struct http_request_head *r = &w->response;
    __u8 verdict = http_parse_captured(w, r, captured, true);
    __u16 status = w->parse.status;
    if (verdict == HTTP_HEAD_OK && status < 200)
        verdict = status == 101 ? HTTP_FALLBACK_UPGRADE : HTTP_FALLBACK_CONTINUE;
    if (verdict != HTTP_HEAD_OK) {
        http_give_up(stats, conn, p, verdict);
        return false;
    }
    bool bodyless = p->head_request || status == 204 || status == 304;
    __u64 after = n - r->header_bytes;
    __u64 body = 0;
    if (!bodyless) {
        if (w->parse.chunked || !(r->present & HTTP_HAS_CONTENT_LENGTH)) {
            http_give_up(stats, conn, p, HTTP_FALLBACK_RESPONSE_END);
            return false;
        }
        body = r->content_length;
    }
    if (after > body) {
        http_give_up(stats, conn, p, HTTP_FALLBACK_PIPELINED);
        return false;
    }
    p->record.response_start_ns = at;
    p->record.status = status;
    p->record.response_version_minor = w->parse.version_minor;
    if (after == body) {
        http_emit(stats, p, at, n);
        p->phase = HTTP_PHASE_IDLE;
    } else {
        p->record.response_bytes = n;
        p->body_remaining = body - after;
        p->phase = HTTP_PHASE_RESPONSE_BODY;
    }
    return true;
}

#endif
