/* Which processes and connections the capture traces: the selectors
 * userspace fills (pids, executables, cgroups, ports; agent/capture/selection.py)
 * and the endpoints never traced.  Part of bpf/capture.bpf.c, included
 * where its maps belong in the object's map order; uses its capture_config. */
#ifndef OTEL_EBPF_SELECTION_H
#define OTEL_EBPF_SELECTION_H

MAP(HASH, pid_filter, __u32, __u8, 4096);
/* Executables selected by name (--exe): a process that execs one joins
 * pid_filter in the kernel, so it is traced from its first syscall, not
 * only once userspace has read the exec's record (a short client such as
 * curl would be done by then). */
MAP(HASH, exe_filter, struct comm_key, __u8, 256);

/* Processes with a classified connection: their exit is worth an event,
 * and their name outlives them until userspace has handled it. */
MAP(LRU_HASH, traced_processes, __u32, struct traced_process, 16384);

/* cgroup v2 ids (the cgroup directory's inode number) of selected cgroups
 * and their descendants, kept up to date by userspace. */
MAP(HASH, cgroup_filter, __u64, __u8, 4096);

MAP(HASH, port_filter, __u16, __u8, 1024);

/* Endpoints never traced (the collector the agent exports to); an all-zero
 * address matches any address on that port. */
struct endpoint {
    __u8 addr[16];
    __u16 port;
    __u16 reserved;
};

MAP(HASH, excluded_endpoints, struct endpoint, __u8, 64);

static __always_inline bool process_traced(__u32 tgid)
{
    if (tgid == CONFIG(agent_tgid))
        return false;
    if (!CONFIG(filter_pids) && !CONFIG(filter_cgroups))
        return true;
    /* Selectors add up: a process is traced when any of them picks it. */
    if (CONFIG(filter_pids) && bpf_map_lookup_elem(&pid_filter, &tgid))
        return true;
    if (CONFIG(filter_cgroups)) {
        __u64 cgroup = bpf_get_current_cgroup_id();
        if (bpf_map_lookup_elem(&cgroup_filter, &cgroup))
            return true;
    }
    return false;
}

static __always_inline bool endpoint_excluded(const __u8 *addr, __u16 port)
{
    struct endpoint ep = {};
    __builtin_memcpy(ep.addr, addr, 16);
    ep.port = port;
    if (bpf_map_lookup_elem(&excluded_endpoints, &ep))
        return true;
    __builtin_memset(ep.addr, 0, 16);
    return bpf_map_lookup_elem(&excluded_endpoints, &ep) != NULL;
}

static __always_inline bool tuple_traced(const struct conn_tuple *t)
{
    if (CONFIG(filter_ports) && !bpf_map_lookup_elem(&port_filter, &t->local_port) &&
        !bpf_map_lookup_elem(&port_filter, &t->remote_port))
        return false;
    return !endpoint_excluded(t->local_addr, t->local_port) &&
           !endpoint_excluded(t->remote_addr, t->remote_port);
}

#endif
