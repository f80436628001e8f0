/* The capture's kernel access under CO-RE (bpf/frontend.h, FRONTEND_BTF):
 * what it reads of the kernel's own structs, with relocations, to know a
 * socket and a process the first time it sees them.  Included by
 * bpf/capture.bpf.c, which declares what this header provides; the BCC
 * build's counterpart is bpf/capture_bcc.h. */
#ifndef OTEL_EBPF_CAPTURE_BTF_H
#define OTEL_EBPF_CAPTURE_BTF_H

/* A write in flight, kept with its thread (task storage): no shared table
 * to hash into, lock and fill up, and nothing left behind when the thread
 * dies.  An entry is empty once its exit has taken it (start_ns 0). */
struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct io_args);
} active_io SEC(".maps");

/* The calling thread's write in flight, from its entry to its exit: false
 * if it could not be kept (counted as untracked). */
static __always_inline bool keep_io_call(__u64 id, const struct io_args *args)
{
    struct io_args *slot = bpf_task_storage_get(&active_io, bpf_get_current_task_btf(), 0,
                                                BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!slot)
        return false;
    *slot = *args;
    return true;
}

/* The calling thread's call in flight at its exit, taken out: false if
 * none was kept. */
static __always_inline bool take_io_call(__u64 id, struct io_args *out)
{
    struct io_args *slot = bpf_task_storage_get(&active_io, bpf_get_current_task_btf(), 0, 0);
    if (!slot || !slot->start_ns)
        return false;
    *out = *slot;
    slot->start_ns = 0;
    return true;
}

/* CO-RE walk from the current task's fd table to the socket behind fd.
 * Fills the tuple and returns true only for IPv4/IPv6 stream sockets. */
static __always_inline bool read_socket_tuple(__u32 fd, struct conn_tuple *t)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
    if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
        return false;
    struct file **fd_array = BPF_CORE_READ(fdt, fd);
    struct file *file = NULL;
    bpf_probe_read_kernel(&file, sizeof(file), &fd_array[fd]);
    if (!file)
        return false;
    if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
        return false;
    struct socket *sock = BPF_CORE_READ(file, private_data);
    if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
        return false;
    struct sock *sk = BPF_CORE_READ(sock, sk);
    if (!sk)
        return false;
    __u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    if (family == AF_INET) {
        __u32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
        __u32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);
        t->local_addr[10] = t->local_addr[11] = 0xff;
        t->remote_addr[10] = t->remote_addr[11] = 0xff;
        __builtin_memcpy(&t->local_addr[12], &local, 4);
        __builtin_memcpy(&t->remote_addr[12], &remote, 4);
    } else if (family == AF_INET6) {
        BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
        BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    } else {
        return false;
    }
    t->family = family;
    t->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
    t->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    return true;
}

static __always_inline void read_process_name(struct traced_process *process)
{
    struct task_struct *task = bpf_get_current_task_btf();
    BPF_CORE_READ_STR_INTO(&process->comm, task, group_leader, comm);
}

/* sched_process_exec's raw arguments: (task, old pid, binprm).  The start
 * time is the thread group's (exec keeps the leader's), on the boot clock;
 * kernels before 5.5 name the field real_start_time. */
static __always_inline void read_exec_details(struct bpf_raw_tracepoint_args *ctx,
                                              struct process_exec_record *rec)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct task_struct *leader = BPF_CORE_READ(task, group_leader);
    if (bpf_core_field_exists(leader->start_boottime))
        rec->start_boottime_ns = BPF_CORE_READ(leader, start_boottime);
    struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
    const char *filename = BPF_CORE_READ(bprm, filename);
    if (filename)
        bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), filename);
}

static __always_inline struct conn_info *track_conn(__u32 tgid, __u32 fd, __u8 role)
{
    struct conn_tuple tuple = {};
    return remember_conn(tgid, fd, role, read_socket_tuple(fd, &tuple) ? &tuple : NULL);
}

/* Reads are followed from their exit alone (on_read_exit), accepts too. */
static __always_inline int on_read_enter(__u32 fd, __u64 buf, __u32 count, __u32 probe,
                                         __u8 buffer_kind, bool msg)
{
    return 0;
}

/* A read needs no entry hook: at its exit the kernel still holds the user
 * registers it saved at entry, arguments included (only the return value's
 * register has changed).  That spares every read a program run at entry and
 * an active_io entry stored and deleted, half the capture's map work for a
 * request a server reads in one call.  Reads count at their end anyway.
 * (BCC reads no kernel struct, so the saved registers are out of its reach.) */
static __always_inline int on_read_exit(long ret, __u32 probe, __u8 buffer_kind, bool msg)
{
    if (ret <= 0)
        return 0;
    __u64 id = bpf_get_current_pid_tgid();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    __u32 fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
    struct conn_info *conn = capture_target(id, fd, buffer_kind);
    if (!conn)
        return 0;
    struct io_args a = {
        .buf = PT_REGS_PARM2_CORE_SYSCALL(regs),
        .fd = fd,
        .count = PT_REGS_PARM3_CORE_SYSCALL(regs),
        .probe = probe,
        .buffer_kind = buffer_kind,
        .direction = DIRECTION_INGRESS,
    };
    if (msg && !msg_iovecs(a.buf, &a.buf, &a.count))
        return 0;
    return emit_data(id, conn, &a, ret, 0);
}

static __always_inline int on_accept_enter(__u64 peer_addr)
{
    return 0;
}

static __always_inline int on_accept_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (ret < 0 || !process_traced(tgid))
        return 0;
    track_conn(tgid, ret, ROLE_SERVER);
    return 0;
}

static __always_inline int on_connect_enter(__u32 fd, __u64 uaddr)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!process_traced(id >> 32))
        return 0;
    struct connect_call call = { .fd = fd };
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
    __u32 fd = call->fd;
    bpf_map_delete_elem(&active_connect, &id);
    if (ret == 0 || ret == -EINPROGRESS)
        track_conn(id >> 32, fd, ROLE_CLIENT);
    return 0;
}

#endif
