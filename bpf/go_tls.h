/* Go crypto/tls plaintext: uprobes on crypto/tls.(*Conn).Read and .Write.
 *
 * Included by bpf/capture.bpf.c after the OpenSSL TLS uprobes, whose record
 * it produces: the plaintext goes through emit_data() with FLAG_TLS and the
 * ssl_read/ssl_write statistics slots, so userspace sees one kind of TLS
 * data whatever library made it.
 *
 * Attached by agent/capture/go_tls.py to each Go executable that has the
 * two functions: tls_go_enter at their entries, tls_go_exit at each of
 * their RET instructions (a uretprobe rewrites the return address on the
 * stack, and Go moves goroutine stacks: it would crash the program).  The
 * cookie names the function and the executable (events.h GO_TLS_*).
 *
 * Go's register ABI (Go >= 1.17, amd64): receiver in RAX, the []byte in
 * RBX (pointer) and RCX (length), the int result in RAX, and R14 always
 * holds the running goroutine.  A goroutine can leave its OS thread while
 * parked in the call (a Read waiting for data), so a call in flight is
 * keyed by goroutine, not by thread.
 *
 * A call's socket: from the Conn itself through the field offsets userspace
 * read from the executable's DWARF; without DWARF, from the socket I/O the
 * calling thread does inside the call (as for OpenSSL), remembered per Conn
 * for the calls that do none (served from Go's record buffer).
 *
 * Only user memory and the uprobe's saved registers are read: both front
 * ends build it (the register names are the kernel's struct pt_regs, x86-64).
 */
#ifndef OTEL_EBPF_GO_TLS_H
#define OTEL_EBPF_GO_TLS_H

#if defined(__TARGET_ARCH_x86)

#define GO_RECEIVER(ctx) ((ctx)->ax)
#define GO_SLICE_PTR(ctx) ((ctx)->bx)
#define GO_SLICE_LEN(ctx) ((ctx)->cx)
#define GO_RESULT(ctx) ((ctx)->ax)
#define GO_GOROUTINE(ctx) ((ctx)->r14)

struct go_tls_call {
    __u64 conn;         /* the *tls.Conn */
    __u64 buf;
    __u64 start_ns;
    __s32 fd;           /* -1 until known */
    __u32 binary;
    __u32 entry_tid;    /* the thread that entered: its socket I/O names fd without DWARF */
    __u8 direction;
    __u8 emitted;       /* a Write copied at its entry: its RET has nothing to do */
};

/* Calls in flight.  LRU: a goroutine that panics inside the call never
 * reaches a RET, and its entry must not stay forever. */
MAP(LRU_HASH, go_tls_calls, struct go_call_key, struct go_tls_call, 16384);
MAP(HASH, go_tls_binaries, __u32, struct go_tls_binary, GO_TLS_MAX_BINARIES);
MAP(ARRAY, go_tls_counts, __u32, struct go_tls_counts, GO_TLS_MAX_BINARIES);

/* The Conn's socket through its fields, when its net.Conn is a
 * *net.TCPConn; -1 for another type or when a read fails. */
static __always_inline __s32 go_conn_fd(__u64 conn, const struct go_tls_binary *layout)
{
    __u64 iface[2] = {};    /* an interface: its itab, then its data pointer */
    __u64 netfd = 0;
    __s64 sysfd = -1;
    if (bpf_probe_read_user(iface, sizeof(iface), (void *)(conn + layout->conn_offset)) || !iface[1])
        return -1;
    if (layout->tcp_conn_itab && iface[0] != layout->tcp_conn_itab)
        return -1;
    if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(iface[1] + layout->fd_offset)) || !netfd)
        return -1;
    if (bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + layout->sysfd_offset)))
        return -1;
    return sysfd >= 0 && sysfd < 0x7fffffff ? (__s32)sysfd : -1;
}

/* The plaintext of a call that moved n bytes, into the capture's pipeline
 * as the OpenSSL probes send theirs; counted per binary. */
static __always_inline int go_tls_emit(__u64 id, const struct go_tls_call *call, long n)
{
    if (n <= 0)
        return 0;
    __u32 probe = tls_probe(call->direction);
    __u32 binary = call->binary;
    struct go_tls_counts *counts = bpf_map_lookup_elem(&go_tls_counts, &binary);
    if (counts)
        __sync_fetch_and_add(&counts->calls, 1);
    if (call->fd < 0) {
        struct probe_stats *stats = stats_for(probe);
        if (stats)
            stats->unmapped++;
        if (counts)
            __sync_fetch_and_add(&counts->unmapped, 1);
        return 0;
    }
    struct conn_info *conn = traced_conn(id >> 32, call->fd);
    if (!conn)
        return 0;
    struct io_args a = {
        .start_ns = call->start_ns,
        .buf = call->buf,
        .fd = call->fd,
        .count = n,
        .probe = probe,
        .buffer_kind = IO_BUFFER,
        .direction = call->direction,
    };
    return emit_data(id, conn, &a, n, FLAG_TLS);
}

SEC("uprobe")
int tls_go_enter(struct pt_regs *ctx)
{
    /* The registers first: the verifier refuses a context pointer the
     * compiler has moved to reach a later field. */
    __u64 receiver = GO_RECEIVER(ctx), buf = GO_SLICE_PTR(ctx), len = GO_SLICE_LEN(ctx);
    __u64 goroutine = GO_GOROUTINE(ctx);
    barrier_var(receiver);
    barrier_var(buf);
    barrier_var(len);
    barrier_var(goroutine);
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (!process_traced(tgid))
        return 0;
    __u64 cookie = bpf_get_attach_cookie(ctx);
    struct go_call_key key = { .goroutine = goroutine, .tgid = tgid };
    struct go_tls_call *running = bpf_map_lookup_elem(&go_tls_calls, &key);
    /* The same call again: its prologue grew the goroutine's stack
     * (runtime.morestack) and restarted the function. */
    if (running && running->conn == receiver && running->buf == buf)
        return 0;
    struct go_tls_call call = {
        .conn = receiver,
        .buf = buf,
        .start_ns = bpf_ktime_get_ns(),
        .fd = -1,
        .binary = cookie >> GO_TLS_BINARY_SHIFT,
        .entry_tid = (__u32)id,
        .direction = (cookie & 0xff) == GO_TLS_FN_WRITE ? DIRECTION_EGRESS : DIRECTION_INGRESS,
    };
    struct go_tls_binary *layout = bpf_map_lookup_elem(&go_tls_binaries, &call.binary);
    if (layout && layout->has_layout) {
        call.fd = go_conn_fd(call.conn, layout);
    } else {
        /* The socket this Conn was tied to, while that connection is still
         * open as TLS: a Conn freed and another allocated at its address
         * must not inherit a closed socket's number. */
        struct ssl_key known_key = { .ssl = call.conn, .tgid = tgid };
        __s32 *known = bpf_map_lookup_elem(&ssl_fds, &known_key);
        if (known) {
            struct conn_info *bound = traced_conn(tgid, *known);
            if (bound && bound->tls)
                call.fd = *known;
        }
    }
    if (call.fd >= 0) {
        /* The socket's own bytes are ciphertext from now on: not copied. */
        struct conn_info *conn = traced_conn(tgid, call.fd);
        if (!conn)
            conn = track_conn(tgid, call.fd, ROLE_UNKNOWN);
        if (conn && conn->traced)
            conn->tls = 1;
    } else {
        /* No DWARF: the socket call this thread makes inside names it
         * (capture_target() fills the entry in and marks the connection). */
        struct ssl_call by_thread = {
            .ssl = call.conn, .buf = call.buf, .start_ns = call.start_ns, .fd = -1,
            .direction = call.direction,
        };
        bpf_map_update_elem(&active_ssl, &id, &by_thread, BPF_ANY);
    }
    /* A Write whose socket is known is copied now, before its bytes can
     * reach the peer: the answer, read on another goroutine and thread, must
     * not enter the pipeline ahead of the request.  Go's Write writes all of
     * b or fails. */
    if (call.direction == DIRECTION_EGRESS && call.fd >= 0) {
        go_tls_emit(id, &call, len);
        call.emitted = 1;
    }
    if (bpf_map_update_elem(&go_tls_calls, &key, &call, BPF_ANY) && !call.emitted)
        count_untracked(tls_probe(call.direction));
    return 0;
}

/* The socket a call without DWARF offsets used: the one its entry thread
 * did I/O on inside the call, if the goroutine came back to that thread
 * (else another goroutine's I/O may have run there), else the one this
 * Conn was last tied to while that connection is still open as TLS. */
static __always_inline __s32 go_call_fd_by_thread(__u64 id, const struct go_tls_call *call)
{
    __u64 entry_id = (id & 0xffffffff00000000ULL) | call->entry_tid;
    struct ssl_call *by_thread = bpf_map_lookup_elem(&active_ssl, &entry_id);
    __s32 fd = -1;
    if (by_thread && by_thread->ssl == call->conn) {
        if (entry_id == id)
            fd = by_thread->fd;
        bpf_map_delete_elem(&active_ssl, &entry_id);
    }
    struct ssl_key key = { .ssl = call->conn, .tgid = id >> 32 };
    if (fd >= 0) {
        bpf_map_update_elem(&ssl_fds, &key, &fd, BPF_ANY);
        return fd;
    }
    __s32 *known = bpf_map_lookup_elem(&ssl_fds, &key);
    if (!known)
        return -1;
    struct conn_info *bound = traced_conn(id >> 32, *known);
    return bound && bound->tls ? *known : -1;
}

SEC("uprobe")
int tls_go_exit(struct pt_regs *ctx)
{
    __u64 result = GO_RESULT(ctx), goroutine = GO_GOROUTINE(ctx);
    barrier_var(result);
    barrier_var(goroutine);
    __u64 id = bpf_get_current_pid_tgid();
    struct go_call_key key = { .goroutine = goroutine, .tgid = id >> 32 };
    struct go_tls_call *found = bpf_map_lookup_elem(&go_tls_calls, &key);
    if (!found)
        return 0;
    struct go_tls_call call = *found;
    bpf_map_delete_elem(&go_tls_calls, &key);
    if (!call.emitted && call.fd < 0)
        call.fd = go_call_fd_by_thread(id, &call);
    if (call.emitted)
        return 0;
    return go_tls_emit(id, &call, (long)result);
}

#endif /* x86-64 */

#endif
