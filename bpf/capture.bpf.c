// SPDX-License-Identifier: GPL-2.0
/* Socket capture: the one set of syscall hooks every protocol shares.
 *
 * Each hooked syscall is filtered (agent's own pid, pid and port filters,
 * TCP sockets only, excluded endpoints such as the span collector), its
 * connection is classified from the first bytes, and the data of traced
 * connections is copied, up to the capture size, into the ring buffer.
 * Userspace parses, but for the HTTP/1.x exchanges the probes pair when
 * asked to (bpf/http_exchange.h).  What is traced: bpf/selection.h.
 *
 * Every hook exists in four families (fentry, ksyscall kprobes, raw syscall
 * tracepoints, per-syscall tracepoints), all calling one dispatch table.
 * The loader turns on the best family the kernel loads and attaches.  The
 * BCC build (bpf/frontend.h) has the tracepoint families only.
 *
 * This file is the object's one compile unit for both front ends: the
 * protocol units (bpf/http.bpf.c, grpc.bpf.c, sql.bpf.c) come in through
 * bpf/protocols.h, and the front end's kernel access through capture_btf.h
 * or capture_bcc.h (docs/decisions/kernel-units.md says why one unit).
 */
#include "frontend.h"
#include "events.h"
#include "protocols.h"
#include "syscalls.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef EINPROGRESS
#define EINPROGRESS 115
#endif
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_STREAM 1
/* iovecs read per readv/writev/sendmsg/recvmsg: gRPC (C-core) writes each
 * frame header and payload slice as its own iovec, dozens per sendmsg. */
#define MAX_IOVECS 16
#define MAX_IOVEC_LOOP 1024
/* Data events a connection may carry before being dropped as not ours:
 * enough to ride out a keep-alive connection joined in the middle of a body. */
#define MAX_UNCLASSIFIED_EVENTS 32

LOAD_TIME_CONSTANTS(struct capture_config, capture_config);

struct conn_info {
    __u64 conn_id;
    __u64 seq;
    struct conn_tuple tuple;
    __u8 role;
    __u8 protocol;
    __u8 traced;
    __u8 unclassified_events;
    __u8 tls;           /* its plaintext comes from the TLS uprobes */
    __u8 http_payload;  /* HTTP_PAYLOAD_*: HTTP/1 goes to the payload path, not records */
    /* A server's request head whose first byte came in a read of its own
     * (Go's server reads one byte ahead between requests): that byte,
     * held for the read with the rest (bpf/http_exchange.h). */
    __u8 http_byte;
    __u8 http_byte_held;
    /* bpf/http_exchange.h, by role: a client's, when its response was read
     * ahead of its request's record (the request call that began before
     * then follows it to the payload path); a server's, when the byte held
     * was read (its request's start).  0: none. */
    __u64 http_mark_ns;
};

/* conn_info.http_payload: whether the connection's HTTP/1 goes to the
 * payload path instead of exchange records (bpf/http_exchange.h), and for
 * how long. */
#define HTTP_PAYLOAD_RECORDS 0
#define HTTP_PAYLOAD_FOR_GOOD 1     /* a fallback: what the probes cannot pair */
#define HTTP_PAYLOAD_QUIET 2        /* by load: until the ring fills */

/* One entry per (tgid, fd) the hooks have seen, sockets or not, so that the
 * fd table is walked once per descriptor rather than once per syscall. */
MAP(LRU_HASH, conns, __u64, struct conn_info, 65536);

#define IO_BUFFER 0
#define IO_IOVEC 1
#define IO_NONE 2

struct io_args {
    __u64 start_ns;
    __u64 buf;
    __u32 fd;
    __u32 count;
    __u32 probe;
    __u8 buffer_kind;
    __u8 direction;
};


/* What each front end's header (capture_btf.h, capture_bcc.h, included
 * before the dispatch below) provides: how a thread's call in flight is
 * kept, how a socket first seen is identified, and which syscalls are
 * followed from their entry. */
static __always_inline bool keep_io_call(__u64 id, const struct io_args *args);
static __always_inline bool take_io_call(__u64 id, struct io_args *out);
static __always_inline struct conn_info *track_conn(__u32 tgid, __u32 fd, __u8 role);
static __always_inline void read_process_name(struct traced_process *process);
/* What the exec record carries beyond its header (start time, filename). */
static __always_inline void read_exec_details(struct bpf_raw_tracepoint_args *ctx,
                                              struct process_exec_record *rec);

/* A connect() in progress on a thread: its socket, and (BCC build) the
 * peer it asked for. */
struct connect_call {
    __u32 fd;
    __u32 reserved;
    struct conn_tuple tuple;
};

MAP(HASH, active_connect, __u64, struct connect_call, 16384);

/* Connection ids: one counter, bumped once per connection. */
MAP(ARRAY, conn_ids, __u32, __u64, 1);

RINGBUF_MAP(events);

/* Twice the largest capture so that an offset below MAX_CAPTURE_BYTES plus a
 * length of at most MAX_CAPTURE_BYTES always stays inside: the verifier can
 * see that bound. */
struct data_event {
    struct event_header hdr;
    __u8 payload[2 * MAX_CAPTURE_BYTES];
};

MAP(PERCPU_ARRAY, scratch, __u32, struct data_event, 1);

MAP(PERCPU_ARRAY, probe_stats, __u32, struct probe_stats, PROBE_COUNT);

#include "selection.h"

/* An SSL_read/SSL_write (or _ex) call in progress on a thread. */
struct ssl_call {
    __u64 ssl;
    __u64 buf;
    __u64 size_out;     /* SSL_*_ex: where the library stores the byte count */
    __u64 start_ns;
    __s32 fd;           /* the socket its nested syscall used; -1 until seen */
    __u8 direction;
    __u8 ex;
};

MAP(HASH, active_ssl, __u64, struct ssl_call, 16384);

/* SSL object -> socket, for calls served from the library's buffer with no
 * socket I/O of their own. */
struct ssl_key {
    __u64 ssl;
    __u32 tgid;
    __u32 reserved;
};

MAP(LRU_HASH, ssl_fds, struct ssl_key, __s32, 65536);

static __always_inline struct probe_stats *stats_for(__u32 probe)
{
    return bpf_map_lookup_elem(&probe_stats, &probe);
}

/* A call whose entry could not be stored is lost at its exit: count it. */
static __always_inline void count_untracked(__u32 probe)
{
    struct probe_stats *stats = stats_for(probe);
    if (stats)
        stats->untracked++;
}

#if FRONTEND_BTF
/* Until when (ns) the ring counts as filling: a record took its unread
 * bytes past the wake-up mark less than RING_FILLED_HOLD_NS ago; 0 once
 * that has passed.  Kept for --http-exchanges by-load (bpf/http_exchange.h):
 * a quiet ring costs its calls one load of this. */
#define RING_FILLED_HOLD_NS (5ULL * 1000000000ULL)
static volatile __u64 ring_filled_until;
#endif

/* Every record goes through here: written or lost, it is counted.  Most
 * are written without waking the drain, which reads the ring on its own
 * clock: a busy traced process pays no consumer wake-up per record.  The
 * few that want an answer at once (a process new to the capture, whose /proc
 * entry userspace should read before a short-lived one exits; an exec) wake
 * it, and so does the record that takes the unread bytes past the fill mark:
 * the drain then starts before its poll is due, and the agent's CPU guard
 * sees at once that the agent is falling behind.  One wake-up per crossing;
 * two records crossing together on two CPUs may both wake, or (rarely) the
 * poll's clock does. */
static __always_inline void output_record(struct probe_stats *stats, void *record, __u64 size,
                                          bool wake)
{
    __u64 unread = RINGBUF_UNREAD(events);
    __u64 mark = CONFIG(ring_wake_bytes);
    if (mark && unread + size >= mark) {
        if (unread < mark)
            wake = true;
#if FRONTEND_BTF
        if (CONFIG(http_exchanges) == HTTP_EXCHANGES_BY_LOAD)
            ring_filled_until = bpf_ktime_get_ns() + RING_FILLED_HOLD_NS;
#endif
    }
    if (bpf_ringbuf_output(&events, record, size, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP))
        stats->lost++;
    else
        stats->events++;
}

/* A record about the current process: it exited, or started a program. */
static __always_inline void output_process_event(__u32 type, __u32 probe, bool wake)
{
    struct probe_stats *stats = stats_for(probe);
    if (!stats)
        return;
    __u64 id = bpf_get_current_pid_tgid();
    struct event_header hdr = {};
    hdr.type = type;
    hdr.pid = id >> 32;
    hdr.tid = (__u32)id;
    hdr.start_ns = hdr.end_ns = bpf_ktime_get_ns();
    hdr.probe = probe;
    output_record(stats, &hdr, sizeof(hdr), wake);
}

static __always_inline __u64 conn_key(__u32 tgid, __u32 fd)
{
    return ((__u64)tgid << 32) | fd;
}

/* Records what fd is (tuple: its TCP connection, or NULL for anything
 * else), traced or not, under a fresh connection id. */
static __always_inline struct conn_info *remember_conn(__u32 tgid, __u32 fd, __u8 role,
                                                       const struct conn_tuple *tuple)
{
    __u64 key = conn_key(tgid, fd);
    struct conn_info info = {};
    info.role = role;
    /* by load, a connection starts on the payload path; the ring filling
     * moves it at a request head */
    if (CONFIG(http_exchanges) == HTTP_EXCHANGES_BY_LOAD)
        info.http_payload = HTTP_PAYLOAD_QUIET;
    if (tuple && tuple_traced(tuple)) {
        __u32 zero = 0;
        __u64 *next_id = bpf_map_lookup_elem(&conn_ids, &zero);
        if (next_id) {
            info.tuple = *tuple;
            info.traced = 1;
            info.conn_id = __sync_fetch_and_add(next_id, 1) + 1;
        }
    }
    bpf_map_update_elem(&conns, &key, &info, BPF_ANY);
    return bpf_map_lookup_elem(&conns, &key);
}


/* The connection whose data a socket call on fd moves, when that data is to
 * be copied: a traced process's traced TCP connection, and not one whose
 * plaintext the TLS probes copy instead.  id: the calling thread. */
static __always_inline struct conn_info *capture_target(__u64 id, __u32 fd, __u8 buffer_kind)
{
    __u32 tgid = id >> 32;
    if (!process_traced(tgid))
        return NULL;
    __u64 key = conn_key(tgid, fd);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    if (!conn)
        conn = track_conn(tgid, fd, ROLE_UNKNOWN);
    if (!conn || !conn->traced)
        return NULL;
    if (CONFIG(tls)) {
        struct ssl_call *call = bpf_map_lookup_elem(&active_ssl, &id);
        if (call) {
            /* Ciphertext moved by SSL_read/SSL_write: the call's uprobe copies
             * the plaintext, and learns its socket here. */
            call->fd = fd;
            conn->tls = 1;
            return NULL;
        }
        if (conn->tls)
            return NULL;
    }
    /* Only a classified connection's data matters for a body-only syscall. */
    if (buffer_kind == IO_NONE && conn->protocol == PROTOCOL_UNKNOWN)
        return NULL;
    return conn;
}

/* The connection of a call that is ending, if it is still traced (a close
 * on another thread, or too many unclassified events, may have ended that). */
static __always_inline struct conn_info *traced_conn(__u32 tgid, __u32 fd)
{
    __u64 key = conn_key(tgid, fd);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    return conn && conn->traced ? conn : NULL;
}

#include "tls_membio.h"

static __always_inline int on_io_enter(__u32 fd, __u64 buf, __u32 count, __u32 probe,
                                       __u8 buffer_kind, __u8 direction)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (CONFIG(tls))
        membio_bind_socket(id, fd, buf, buffer_kind, direction);
    if (!capture_target(id, fd, buffer_kind))
        return 0;
    struct io_args args = {
        .start_ns = bpf_ktime_get_ns(),
        .buf = buf,
        .fd = fd,
        .count = count,
        .probe = probe,
        .buffer_kind = buffer_kind,
        .direction = direction,
    };
    if (!keep_io_call(id, &args))
        count_untracked(probe);
    return 0;
}

/* sendmsg/recvmsg: the iovec array sits behind a user msghdr.  False if
 * the msghdr cannot be read. */
static __always_inline bool msg_iovecs(__u64 msg, __u64 *iov, __u32 *iovcnt)
{
    struct user_msghdr hdr = {};
    if (bpf_probe_read_user(&hdr, sizeof(hdr), (void *)msg))
        return false;
    *iov = (__u64)hdr.msg_iov;
    *iovcnt = hdr.msg_iovlen;
    return true;
}

static __always_inline int on_msg_enter(__u32 fd, __u64 msg, __u32 probe, __u8 direction)
{
    __u64 iov;
    __u32 iovcnt;
    if (!msg_iovecs(msg, &iov, &iovcnt))
        return 0;
    return on_io_enter(fd, iov, iovcnt, probe, IO_IOVEC, direction);
}

struct iov_copy {
    __u64 iov_ptr;
    __u64 want;
    __u32 iovcnt;
    __u32 copied;
};

/* One iovec per bpf_loop step: the verifier checks the body once, so a
 * sendmsg of many slices (gRPC writes each frame header and payload as its
 * own iovec) is copied up to MAX_IOVEC_LOOP iovecs.  BCC's programs have no
 * subprograms for bpf_loop to call: there a bounded loop copies MAX_IOVECS. */
static __always_inline long copy_one_iovec(__u32 i, void *data)
{
    struct iov_copy *c = data;
    if (i >= c->iovcnt || c->copied >= c->want)
        return 1;
    struct iovec iov;
    if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(c->iov_ptr + i * sizeof(iov))))
        return 1;
    __u32 zero = 0;
    struct data_event *ev = bpf_map_lookup_elem(&scratch, &zero);
    if (!ev)
        return 1;
    __u64 n = iov.iov_len;
    if (n > c->want - c->copied)
        n = c->want - c->copied;
    if (n > MAX_CAPTURE_BYTES)
        n = MAX_CAPTURE_BYTES;
    barrier_var(n);
    __u32 offset = c->copied & (MAX_CAPTURE_BYTES - 1);
    if (bpf_probe_read_user(&ev->payload[offset], n, iov.iov_base))
        return 1;
    c->copied += n;
    return 0;
}

static __always_inline __u32 copy_iovecs(__u8 *payload, __u64 iov_ptr, __u32 iovcnt, __u64 want)
{
    struct iov_copy c = { .iov_ptr = iov_ptr, .want = want, .iovcnt = iovcnt, .copied = 0 };
    BOUNDED_LOOP(FRONTEND_LOOP_STEPS(MAX_IOVEC_LOOP, MAX_IOVECS), copy_one_iovec, &c);
    return c.copied;
}

static __always_inline __u64 first_user_buffer(const struct io_args *args)
{
    if (args->buffer_kind == IO_BUFFER)
        return args->buf;
    struct iovec iov = {};
    for (int i = 0; i < MAX_IOVECS; i++) {
        if (i >= args->count)
            break;
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(args->buf + i * sizeof(iov))))
            return 0;
        if (iov.iov_len)
            return (__u64)iov.iov_base;
    }
    return 0;
}

#include "http_exchange.h"

/* Classify the connection if needed and copy the bytes a completed call
 * moved (a socket syscall, or a TLS library call's plaintext). */
static __always_inline int emit_data(__u64 id, struct conn_info *conn, const struct io_args *args,
                                     long ret, __u8 flags)
{
    struct io_args a = *args;
    __u32 tgid = id >> 32;
    struct probe_stats *stats = stats_for(a.probe);
    if (!stats)
        return 0;

    bool new_process = false;
    if (conn->protocol == PROTOCOL_UNKNOWN) {
        struct classify_head head = {};
        __u64 src = first_user_buffer(&a);
        /* Only the bytes moved: a short buffer near the end of its page
         * must not make the read fail. */
        __u64 head_len = ret < CLASSIFY_BYTES ? ret : CLASSIFY_BYTES;
        barrier_var(head_len);
        if (src && head_len <= CLASSIFY_BYTES)
            bpf_probe_read_user(head.bytes, head_len, (void *)src);
        __u8 protocol = classify_head(&head, head_len, ret);
        if (protocol == PROTOCOL_UNKNOWN) {
            stats->unclassified++;
            if (++conn->unclassified_events >= MAX_UNCLASSIFIED_EVENTS)
                conn->traced = 0;
            return 0;
        }
        conn->protocol = protocol;
        struct traced_process process = {};
        read_process_name(&process);
        new_process = !bpf_map_lookup_elem(&traced_processes, &tgid);
        bpf_map_update_elem(&traced_processes, &tgid, &process, BPF_ANY);
    }

    bool exchanges = CONFIG(http_exchanges) && conn->protocol == PROTOCOL_HTTP1 &&
                     !conn->http_payload;
    struct http_pending *pending = NULL;
    __u8 held = 0;      /* a request head's first byte, held from the read before */
    if (exchanges) {
        pending = http_pending_of(conn->conn_id);
        if (CONFIG(http_exchanges) == HTTP_EXCHANGES_BY_LOAD)
            exchanges = !http_quiet_move(conn, &a, pending);
    }
    if (exchanges) {
        if (pending && http_body_call(conn, pending, &a, ret, stats))
            return 0;
        if (http_hold_byte(conn, &a, ret, pending))
            return 0;
        held = http_take_byte(conn, &a);
        if (!conn->http_payload && a.buffer_kind == IO_NONE)
            http_give_up(stats, conn, pending, HTTP_FALLBACK_MID_STREAM);
        exchanges = !conn->http_payload;
    }
    /* (a connection moved by a quiet ring: only while records may be on
     * their way can its thread serve one) */
    if (CONFIG(http_exchanges) && conn->protocol == PROTOCOL_HTTP1 && conn->http_payload &&
        conn->role == ROLE_CLIENT && a.direction == DIRECTION_EGRESS &&
        (conn->http_payload == HTTP_PAYLOAD_FOR_GOOD || http_recently_busy()))
        http_note_serving(stats, conn, a.start_ns, a.fd, a.probe);

    __u32 zero = 0;
    struct data_event *ev = bpf_map_lookup_elem(&scratch, &zero);
    if (!ev)
        return 0;
    __u64 want = ret;
    __u32 limit = CONFIG(capture_bytes);
    if (limit > MAX_CAPTURE_BYTES)
        limit = MAX_CAPTURE_BYTES;
    if (want > limit)
        want = limit;
    __u32 captured = 0;
    __u64 total = ret + held;
    if (held) {
        /* the held byte first, the read's bytes after it */
        __u64 n = want;
        if (n > MAX_CAPTURE_BYTES - 1)
            n = MAX_CAPTURE_BYTES - 1;
        barrier_var(n);
        if (!bpf_probe_read_user(ev->payload + 1, n, (void *)a.buf))
            captured = n + 1;
        ev->payload[0] = conn->http_byte;
    } else if (a.buffer_kind == IO_BUFFER) {
        __u64 n = want;
        bool tail = sql_keeps_tail(conn->protocol, ret, want);
        if (tail)
            n -= SQL_TAIL_BYTES;
        if (n > MAX_CAPTURE_BYTES)
            n = MAX_CAPTURE_BYTES;
        barrier_var(n);
        if (!bpf_probe_read_user(ev->payload, n, (void *)a.buf))
            captured = n;
        if (tail && captured &&
            !bpf_probe_read_user(ev->payload + (captured & (MAX_CAPTURE_BYTES - 1)),
                                 SQL_TAIL_BYTES, (void *)(a.buf + ret - SQL_TAIL_BYTES))) {
            captured += SQL_TAIL_BYTES;
            flags |= FLAG_TAIL;
        }
    } else if (a.buffer_kind == IO_IOVEC) {
        captured = copy_iovecs(ev->payload, a.buf, a.count, want);
    }
    /* A request whose first byte was held was received when that byte's
     * read returned. */
    __u64 held_ns = 0;
    if (held) {
        held_ns = conn->http_mark_ns;
        conn->http_mark_ns = 0;
    }
    if (!exchanges && conn->http_payload == HTTP_PAYLOAD_QUIET &&
        http_busy_move(conn, &a, ev->payload, captured)) {
        exchanges = true;
        pending = http_pending_of(conn->conn_id);
    }
    if (exchanges &&
        http_head_call(id, conn, pending, &a, total, captured,
                       held ? held_ns : http_call_time(&a), flags, stats))
        return 0;

    ev->hdr.type = EVENT_DATA;
    ev->hdr.pid = tgid;
    ev->hdr.tid = (__u32)id;
    ev->hdr.fd = a.fd;
    ev->hdr.conn_id = conn->conn_id;
    ev->hdr.end_ns = held ? held_ns : bpf_ktime_get_ns();
    /* A read hooked at its exit only is stamped there (it counts as
     * received when it returns, whenever it began). */
    ev->hdr.start_ns = a.start_ns && !held ? a.start_ns : ev->hdr.end_ns;
    ev->hdr.length = total;
    ev->hdr.captured = captured;
    ev->hdr.direction = a.direction;
    ev->hdr.role = conn->role;
    ev->hdr.protocol = conn->protocol;
    ev->hdr.flags = flags | (total > captured ? FLAG_TRUNCATED : 0);
    ev->hdr.probe = a.probe;
    /* Numbered before the ring write: a record the ring drops leaves a gap. */
    ev->hdr.seq = (__sync_fetch_and_add(&conn->seq, 1) % 65535) + 1;
    ev->hdr.tuple = conn->tuple;
    if (ev->hdr.flags & FLAG_TRUNCATED)
        stats->truncated++;

    __u64 size = sizeof(struct event_header) + captured;
    if (size > sizeof(struct event_header) + MAX_CAPTURE_BYTES)
        size = sizeof(struct event_header) + MAX_CAPTURE_BYTES;
    barrier_var(size);
    output_record(stats, ev, size, new_process);
    return 0;
}

static __always_inline int on_io_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct io_args a;
    if (!take_io_call(id, &a))
        return 0;
    if (ret <= 0)
        return 0;
    struct conn_info *conn = traced_conn(id >> 32, a.fd);
    if (!conn)
        return 0;
    return emit_data(id, conn, &a, ret, 0);
}

static __always_inline int on_close_enter(__u32 fd)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (!process_traced(tgid))
        return 0;
    __u64 key = conn_key(tgid, fd);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    if (!conn)
        return 0;
    if (conn->traced && conn->protocol != PROTOCOL_UNKNOWN) {
        struct event_header hdr = {};
        hdr.type = EVENT_CLOSE;
        hdr.pid = tgid;
        hdr.tid = (__u32)id;
        hdr.fd = fd;
        hdr.conn_id = conn->conn_id;
        hdr.start_ns = hdr.end_ns = bpf_ktime_get_ns();
        hdr.role = conn->role;
        hdr.protocol = conn->protocol;
        hdr.probe = PROBE_CLOSE;
        /* The last number given out: a loss just before the close shows. */
        hdr.seq = conn->seq ? ((conn->seq - 1) % 65535) + 1 : 0;
        hdr.tuple = conn->tuple;
        struct probe_stats *stats = stats_for(PROBE_CLOSE);
        if (stats)
            output_record(stats, &hdr, sizeof(hdr), false);
    }
    if (CONFIG(http_exchanges)) {
        http_release(conn->conn_id);
        if (conn->http_byte_held)   /* a request's first byte, the rest never came */
            http_count_fallback(HTTP_FALLBACK_SPLIT_HEAD, 0, 1);
    }
    bpf_map_delete_elem(&conns, &key);
    return 0;
}

/* The exiting task is the thread group leader: the process ends.  Its
 * sockets close without close() calls, so userspace hears it here. */
SEC("raw_tracepoint/sched_process_exit")
int common_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if ((__u32)id != tgid || !bpf_map_lookup_elem(&traced_processes, &tgid))
        return 0;
    output_process_event(EVENT_PROCESS_EXIT, PROBE_PROCESS_EXIT, false);
    return 0;
}

/* ---- TLS plaintext: uprobes on the TLS libraries ---------------------- */

#include "openssl_tls.h"

#include "go_tls.h"

#include "tls_library_watch.h"

/* A new program image: userspace looks for TLS libraries it has not probed,
 * and at the executable's name when it selects processes by it. */
SEC("raw_tracepoint/sched_process_exec")
int common_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (CONFIG(filter_pids) && tgid != CONFIG(agent_tgid)) {
        struct comm_key name = {};
        bpf_get_current_comm(name.comm, sizeof(name.comm));
        if (bpf_map_lookup_elem(&exe_filter, &name)) {
            __u8 one = 1;
            bpf_map_update_elem(&pid_filter, &tgid, &one, BPF_ANY);
        }
    }
    __u8 report = CONFIG(report_execs);
    if (report == EXECS_NONE || tgid == CONFIG(agent_tgid) ||
        (report == EXECS_TRACED && !process_traced(tgid)))
        return 0;
    struct probe_stats *stats = stats_for(PROBE_PROCESS_EXEC);
    __u32 zero = 0;
    struct process_exec_record *rec = bpf_map_lookup_elem(&scratch, &zero);
    if (!stats || !rec)
        return 0;
    __builtin_memset(&rec->hdr, 0, sizeof(rec->hdr));
    rec->hdr.type = EVENT_PROCESS_EXEC;
    rec->hdr.pid = tgid;
    rec->hdr.tid = (__u32)id;
    rec->hdr.start_ns = rec->hdr.end_ns = bpf_ktime_get_ns();
    rec->hdr.probe = PROBE_PROCESS_EXEC;
    rec->start_boottime_ns = 0;
    rec->filename[0] = 0;
    read_exec_details(ctx, rec);
    output_record(stats, rec, sizeof(*rec), true);
    return 0;
}

/* ---- What the front end's kernel access decides -------------------------- */
#if FRONTEND_BTF
#include "capture_btf.h"
#else
#include "capture_bcc.h"
#endif

/* ---- Dispatch --------------------------------------------------------- */

/* What each hooked syscall means to the capture: one table for every hook
 * family.  With a constant id (per-syscall hooks) the compiler folds the
 * switch away; the raw tracepoints switch on the live syscall number. */
static __always_inline int syscall_enter(long id, __u64 a0, __u64 a1, __u64 a2)
{
    switch (id) {
    case NR_read: return on_read_enter(a0, a1, a2, PROBE_READ, IO_BUFFER, false);
    case NR_readv: return on_read_enter(a0, a1, a2, PROBE_READV, IO_IOVEC, false);
    case NR_recvfrom: return on_read_enter(a0, a1, a2, PROBE_RECVFROM, IO_BUFFER, false);
    case NR_recvmsg: return on_read_enter(a0, a1, a2, PROBE_RECVMSG, IO_IOVEC, true);
    case NR_accept: case NR_accept4: return on_accept_enter(a1);
    case NR_write: return on_io_enter(a0, a1, a2, PROBE_WRITE, IO_BUFFER, DIRECTION_EGRESS);
    case NR_writev: return on_io_enter(a0, a1, a2, PROBE_WRITEV, IO_IOVEC, DIRECTION_EGRESS);
    case NR_sendto: return on_io_enter(a0, a1, a2, PROBE_SENDTO, IO_BUFFER, DIRECTION_EGRESS);
    case NR_sendmsg: return on_msg_enter(a0, a1, PROBE_SENDMSG, DIRECTION_EGRESS);
    /* sendfile carries response bodies (nginx): its length keeps message framing right. */
    case NR_sendfile64: return on_io_enter(a0, 0, a2, PROBE_SENDFILE, IO_NONE, DIRECTION_EGRESS);
    case NR_connect: return on_connect_enter(a0, a1);
    case NR_close: return on_close_enter(a0);
    }
    return 0;
}

static __always_inline int syscall_exit(long id, long ret)
{
    switch (id) {
    case NR_read: return on_read_exit(ret, PROBE_READ, IO_BUFFER, false);
    case NR_readv: return on_read_exit(ret, PROBE_READV, IO_IOVEC, false);
    case NR_recvfrom: return on_read_exit(ret, PROBE_RECVFROM, IO_BUFFER, false);
    case NR_recvmsg: return on_read_exit(ret, PROBE_RECVMSG, IO_IOVEC, true);
    case NR_write: case NR_writev: case NR_sendto: case NR_sendmsg: case NR_sendfile64:
        return on_io_exit(ret);
    case NR_accept: case NR_accept4:
        return on_accept_exit(ret);
    case NR_connect:
        return on_connect_exit(ret);
    }
    return 0;
}

/* ---- Attachments ------------------------------------------------------ */

#ifdef SYSCALL_FRAME
/* Raw syscall tracepoints: two links for every syscall the capture needs. */
SEC("raw_tracepoint/sys_enter")
int rtp_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long id = ctx->args[1];
    if (!is_captured_syscall(id))
        return 0;
    return syscall_enter(id, PT_REGS_PARM1_CORE_SYSCALL(regs), PT_REGS_PARM2_CORE_SYSCALL(regs),
                         PT_REGS_PARM3_CORE_SYSCALL(regs));
}

SEC("raw_tracepoint/sys_exit")
int rtp_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long id = SYSCALL_NR(regs);
    if (!is_captured_syscall(id))
        return 0;
    return syscall_exit(id, ctx->args[1]);
}
#endif

HOOK_READ(read)
HOOK_WRITE(write)
HOOK_READ(readv)
HOOK_WRITE(writev)
HOOK_READ(recvfrom)
HOOK_WRITE(sendto)
HOOK_READ(recvmsg)
HOOK_WRITE(sendmsg)
HOOK_WRITE(sendfile64)
HOOK_SYSCALL_AT_EXIT(accept)
HOOK_SYSCALL_AT_EXIT(accept4)
HOOK_SYSCALL(connect)
HOOK_SYSCALL(close)

#ifdef SHARED_DATA_EXITS
/* Every read's exit tracepoint (bpf/frontend.h): the call's kind was kept
 * at its entry, so the constants passed here are not read. */
int tp_exit_reads(struct trace_event_raw_sys_exit *ctx)
{
    return on_read_exit(ctx->ret, PROBE_READ, IO_BUFFER, false);
}

/* Every write's exit tracepoint. */
int tp_exit_writes(struct trace_event_raw_sys_exit *ctx)
{
    return on_io_exit(ctx->ret);
}
#endif
