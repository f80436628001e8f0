/* The capture's kernel access under BCC (bpf/frontend.h, no FRONTEND_BTF):
 * the kernel headers at hand may not match the running kernel, so no
 * kernel struct is read; sockets are learnt from the calls that make them.
 * Included by bpf/capture.bpf.c, which declares what this header provides;
 * the CO-RE build's counterpart is bpf/capture_btf.h. */
#ifndef OTEL_EBPF_CAPTURE_BCC_H
#define OTEL_EBPF_CAPTURE_BCC_H

MAP(HASH, active_io, __u64, struct io_args, 16384);

/* The calling thread's read or write in flight, from its entry to its
 * exit: false if it could not be kept (counted as untracked). */
static __always_inline bool keep_io_call(__u64 id, const struct io_args *args)
{
    return bpf_map_update_elem(&active_io, &id, args, BPF_ANY) == 0;
}

/* The calling thread's call in flight at its exit, taken out: false if
 * none was kept. */
static __always_inline bool take_io_call(__u64 id, struct io_args *out)
{
    struct io_args *args = bpf_map_lookup_elem(&active_io, &id);
    if (!args)
        return false;
    *out = *args;
    bpf_map_delete_elem(&active_io, &id);
    return true;
}

/* The thread's name: the group leader's is a kernel struct away. */
static __always_inline void read_process_name(struct traced_process *process)
{
    bpf_get_current_comm(process->comm, sizeof(process->comm));
}

/* The exec's binprm and task are kernel structs: the BCC build learns a
 * process's start from its fork (the boot clock then: the kernel stamps
 * start_boottime a moment before) and its filename from execve's argument,
 * read while the old image's memory is still there.  Processes forked
 * before the agent started have no start here: userspace reads /proc. */
MAP(LRU_HASH, forked_at, __u32, __u64, 16384);

struct exec_filename {
    char name[EXEC_PATH_BYTES];
};

MAP(LRU_HASH, exec_filenames, __u64, struct exec_filename, 1024);

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    __u32 child = args->child_pid;
    if (!process_traced(bpf_get_current_pid_tgid() >> 32))
        return 0;
    __u64 now = bpf_ktime_get_boot_ns();
    bpf_map_update_elem(&forked_at, &child, &now, BPF_ANY);
    return 0;
}

/* A thread, or a process that never called exec, leaves its start here. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    __u32 tid = bpf_get_current_pid_tgid();
    bpf_map_delete_elem(&forked_at, &tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!process_traced(id >> 32))
        return 0;
    __u32 zero = 0;
    struct process_exec_record *rec = bpf_map_lookup_elem(&scratch, &zero);
    if (!rec)
        return 0;
    if (bpf_probe_read_user_str(rec->filename, sizeof(rec->filename), args->filename) <= 0)
        return 0;
    bpf_map_update_elem(&exec_filenames, &id, rec->filename, BPF_ANY);
    return 0;
}

static __always_inline void read_exec_details(struct bpf_raw_tracepoint_args *ctx,
                                              struct process_exec_record *rec)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    __u64 *started = bpf_map_lookup_elem(&forked_at, &tgid);
    if (started) {
        rec->start_boottime_ns = *started;
        bpf_map_delete_elem(&forked_at, &tgid);
    }
    struct exec_filename *name = bpf_map_lookup_elem(&exec_filenames, &id);
    if (name) {
        bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), name->name);
        bpf_map_delete_elem(&exec_filenames, &id);
    }
}

static __always_inline struct conn_info *track_conn(__u32 tgid, __u32 fd, __u8 role)
{
    return remember_conn(tgid, fd, role, NULL);
}

/* A connection accepted with no peer address asked for (libuv's
 * accept4(fd, NULL, NULL): every Node.js server) has no tuple yet; its
 * first read places it (tcp:tcp_rcv_space_adjust below).  Marked in the
 * untraced conn_info's unclassified_events, which only traced ones count. */
#define UNPLACED_ACCEPT 0xff

/* A read in progress on an unplaced connection: thread id -> the call, kept
 * as a traced one once the read's own TCP record names both ends. */
MAP(HASH, placing_reads, __u64, struct io_args, 16384);

static __always_inline bool unplaced(__u32 tgid, __u32 fd)
{
    __u64 key = conn_key(tgid, fd);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    return conn && !conn->traced && conn->unclassified_events == UNPLACED_ACCEPT;
}

/* Reads are followed from their entry: the saved registers at their exit
 * are a kernel struct away. */
static __always_inline int on_read_enter(__u32 fd, __u64 buf, __u32 count, __u32 probe,
                                         __u8 buffer_kind, bool msg)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (unplaced(id >> 32, fd) && process_traced(id >> 32)) {
        struct io_args args = { .start_ns = bpf_ktime_get_ns(), .buf = buf, .fd = fd,
                                .count = count, .probe = probe, .buffer_kind = buffer_kind,
                                .direction = DIRECTION_INGRESS };
        __u64 iov;
        __u32 iovcnt;
        if (msg) {
            if (!msg_iovecs(buf, &iov, &iovcnt))
                return 0;
            args.buf = iov;
            args.count = iovcnt;
            args.buffer_kind = IO_IOVEC;
        }
        if (bpf_map_update_elem(&placing_reads, &id, &args, BPF_ANY))
            count_untracked(probe);
        return 0;
    }
    if (msg)
        return on_msg_enter(fd, buf, probe, DIRECTION_INGRESS);
    return on_io_enter(fd, buf, count, probe, buffer_kind, DIRECTION_INGRESS);
}

static __always_inline int on_read_exit(long ret, __u32 probe, __u8 buffer_kind, bool msg)
{
    __u64 id = bpf_get_current_pid_tgid();
    /* Not placed (a Unix socket, an empty read): nothing kept. */
    bpf_map_delete_elem(&placing_reads, &id);
    return on_io_exit(ret);
}

/* ---- Sockets without BTF (BCC build) ---------------------------------------
 * A socket is known from the calls that make it.  Its peer comes from the
 * sockaddr the process passes to connect() or gets back from accept() (user
 * memory, the syscall ABI); its local end from sock:inet_sock_set_state,
 * whose record the kernel lays out itself (BCC reads its tracefs format).
 * Sockets made before the agent started are not seen; accept() calls that
 * ask for no peer address are placed by their first read (below). */

/* accept() calls in progress: where the caller wants the peer's address. */
MAP(HASH, active_accept, __u64, __u64, 16384);
/* Connections the kernel completed and the process has not accepted yet:
 * peer -> local end. */
MAP(LRU_HASH, passive_ends, struct endpoint, struct endpoint, 16384);
/* Client sockets between SYN sent and established: sock address -> conn key. */
MAP(LRU_HASH, connecting_socks, __u64, __u64, 16384);

#define SOCK_STATE_ESTABLISHED 1
#define SOCK_STATE_SYN_SENT 2
#define SOCK_STATE_SYN_RECV 3
#define PROTOCOL_NUMBER_TCP 6

/* struct sockaddr_in, and the head of struct sockaddr_in6 (user ABI). */
struct user_sockaddr {
    __u16 family;
    __u16 port;         /* network order */
    __u8 addr4[4];      /* sockaddr_in6: flowinfo; its address follows */
};

/* An address as struct conn_tuple keeps it: IPv4 mapped into IPv6. */
static __always_inline void store_address(__u8 *out, __u16 family, const __u8 *addr4,
                                          const __u8 *addr6)
{
    if (family == AF_INET) {
        out[10] = out[11] = 0xff;
        __builtin_memcpy(&out[12], addr4, 4);
    } else {
        __builtin_memcpy(out, addr6, 16);
    }
}

/* The peer a user sockaddr names, as t's remote end; false unless IPv4/IPv6. */
static __always_inline bool read_peer(__u64 uaddr, struct conn_tuple *t)
{
    struct user_sockaddr sa = {};
    __u8 addr6[16] = {};
    if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr))
        return false;
    if (sa.family == AF_INET6 &&
        bpf_probe_read_user(addr6, sizeof(addr6), (void *)(uaddr + sizeof(sa))))
        return false;
    if (sa.family != AF_INET && sa.family != AF_INET6)
        return false;
    t->family = sa.family;
    store_address(t->remote_addr, sa.family, sa.addr4, addr6);
    t->remote_port = bpf_ntohs(sa.port);
    return true;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTOCOL_NUMBER_TCP)
        return 0;
    __u64 sk = (__u64)args->skaddr;
    if (args->newstate == SOCK_STATE_SYN_SENT) {
        /* Still inside connect(): the connecting thread is the current one. */
        __u64 id = bpf_get_current_pid_tgid();
        struct connect_call *call = bpf_map_lookup_elem(&active_connect, &id);
        if (!call)
            return 0;
        __u64 key = conn_key(id >> 32, call->fd);
        remember_conn(id >> 32, call->fd, ROLE_CLIENT, &call->tuple);
        bpf_map_update_elem(&connecting_socks, &sk, &key, BPF_ANY);
        return 0;
    }
    if (args->newstate != SOCK_STATE_ESTABLISHED)
        return 0;
    struct endpoint local = {};
    store_address(local.addr, args->family, args->saddr, args->saddr_v6);
    local.port = args->sport;
    if (args->oldstate == SOCK_STATE_SYN_RECV) {
        struct endpoint peer = {};
        store_address(peer.addr, args->family, args->daddr, args->daddr_v6);
        peer.port = args->dport;
        bpf_map_update_elem(&passive_ends, &peer, &local, BPF_ANY);
        return 0;
    }
    __u64 *found = bpf_map_lookup_elem(&connecting_socks, &sk);
    if (!found)
        return 0;
    __u64 key = *found;
    bpf_map_delete_elem(&connecting_socks, &sk);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    if (conn && conn->traced) {
        __builtin_memcpy(conn->tuple.local_addr, local.addr, 16);
        conn->tuple.local_port = local.port;
        if (!tuple_traced(&conn->tuple))
            conn->traced = 0;
    }
    return 0;
}
/* Inside a read on a connection accepted with no peer address: the TCP
 * record of the socket being read, in the reading thread, names both ends.
 * The peer must be one the kernel completed passively and nobody accepted
 * with an address (passive_ends), so a record from another socket (a
 * softirq on this CPU) places nothing. */
TRACEPOINT_PROBE(tcp, tcp_rcv_space_adjust)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct io_args *pending = bpf_map_lookup_elem(&placing_reads, &id);
    if (!pending)
        return 0;
    struct io_args call = *pending;
    bpf_map_delete_elem(&placing_reads, &id);
    if (!unplaced(id >> 32, call.fd))
        return 0;
    struct endpoint peer = {};
    store_address(peer.addr, args->family, args->daddr, args->daddr_v6);
    peer.port = args->dport;
    struct endpoint *local = bpf_map_lookup_elem(&passive_ends, &peer);
    if (!local || local->port != args->sport)
        return 0;
    struct conn_tuple tuple = { .family = args->family, .local_port = args->sport,
                                .remote_port = args->dport };
    __builtin_memcpy(tuple.local_addr, local->addr, 16);
    __builtin_memcpy(tuple.remote_addr, peer.addr, 16);
    bpf_map_delete_elem(&passive_ends, &peer);
    struct conn_info *conn = remember_conn(id >> 32, call.fd, ROLE_SERVER, &tuple);
    if (conn && conn->traced && !keep_io_call(id, &call))
        count_untracked(call.probe);
    return 0;
}

static __always_inline int on_accept_enter(__u64 peer_addr)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (process_traced(id >> 32) &&
        bpf_map_update_elem(&active_accept, &id, &peer_addr, BPF_ANY))
        count_untracked(PROBE_ACCEPT);
    return 0;
}

static __always_inline int on_accept_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    __u64 *peer_addr = bpf_map_lookup_elem(&active_accept, &id);
    if (!peer_addr)
        return 0;
    __u64 uaddr = *peer_addr;
    bpf_map_delete_elem(&active_accept, &id);
    struct conn_tuple tuple = {};
    if (ret >= 0 && !uaddr) {
        struct conn_info *conn = remember_conn(tgid, ret, ROLE_SERVER, NULL);
        if (conn)
            conn->unclassified_events = UNPLACED_ACCEPT;
        return 0;
    }
    if (ret < 0 || !read_peer(uaddr, &tuple))
        return 0;
    struct endpoint peer = {};
    __builtin_memcpy(peer.addr, tuple.remote_addr, 16);
    peer.port = tuple.remote_port;
    struct endpoint *local = bpf_map_lookup_elem(&passive_ends, &peer);
    if (local) {
        __builtin_memcpy(tuple.local_addr, local->addr, 16);
        tuple.local_port = local->port;
        bpf_map_delete_elem(&passive_ends, &peer);
    }
    remember_conn(tgid, ret, ROLE_SERVER, &tuple);
    return 0;
}

static __always_inline int on_connect_enter(__u32 fd, __u64 uaddr)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!process_traced(id >> 32))
        return 0;
    struct connect_call call = { .fd = fd };
    if (!read_peer(uaddr, &call.tuple))
        return 0;
    if (bpf_map_update_elem(&active_connect, &id, &call, BPF_ANY))
        count_untracked(PROBE_CONNECT);
    return 0;
}

static __always_inline int on_connect_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct connect_call *call = bpf_map_lookup_elem(&active_connect, &id);
    if (!call)
        return 0;
    bpf_map_delete_elem(&active_connect, &id);
    /* The BCC build recorded the connection when its SYN left (above). */
    return 0;
}

#endif
