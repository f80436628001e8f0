/* OpenSSL copies that a traced process opens after its exec: a wheel's
 * private libssl loaded by an import, a library dlopen()ed on first use.
 *
 * The exec rescans (agent/capture/tls.py) read a process's maps a few times
 * after its exec; a short process that maps a new libssl between two of
 * them and uses it at once would give no TLS spans.  Here the openat() of a
 * file whose name starts with "libssl" becomes a record that wakes the
 * reader at once; userspace probes the file before the dynamic loader has
 * even mapped it, and a uprobe on a file covers every process mapping it.
 *
 * Per-syscall tracepoints in both front ends: they need tracefs, and where
 * it is missing the programs stay unattached and the rescans remain.
 */
#ifndef OTEL_EBPF_TLS_LIBRARY_WATCH_H
#define OTEL_EBPF_TLS_LIBRARY_WATCH_H

/* Opens in progress of files named like libssl, by thread. */
MAP(LRU_HASH, ssl_lib_opens, __u64, struct tls_library_record, 1024);

/* Longest file name looked at: "libssl-6a9b88ec.so.3" (a wheel's copy) is 20. */
#define TLS_LIBRARY_NAME_BYTES 48

/* Whether the path's last component starts with "libssl": "/libssl" is
 * looked for where each name length up to TLS_LIBRARY_NAME_BYTES would
 * put it.  Each step either returns or goes on in the same state, which
 * keeps the verifier's work linear (a loop that remembers the last '/'
 * branches its state at every byte). */
static __always_inline bool names_libssl(const char *path, long len)
{
    for (int name_len = 6; name_len < TLS_LIBRARY_NAME_BYTES; name_len++) {
        long slash = len - name_len - 1;
        if (slash < 0)
            return false;
        const char *p = path + (slash & (TLS_LIBRARY_PATH_BYTES - 1));
        if (p[0] == '/' && p[1] == 'l' && p[2] == 'i' && p[3] == 'b' && p[4] == 's' &&
            p[5] == 's' && p[6] == 'l')
            return true;
    }
    return false;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int watch_lib_enter(struct trace_event_raw_sys_enter *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!CONFIG(tls) || !process_traced(id >> 32))
        return 0;
    __u32 zero = 0;
    struct tls_library_record *rec = bpf_map_lookup_elem(&scratch, &zero);
    if (!rec)
        return 0;
    long len = bpf_probe_read_user_str(rec->path, sizeof(rec->path), (void *)ctx->args[1]);
    if (len <= 0 || !names_libssl(rec->path, len - 1))
        return 0;
    __builtin_memset(&rec->hdr, 0, sizeof(rec->hdr));
    rec->hdr.start_ns = bpf_ktime_get_ns();
    bpf_map_update_elem(&ssl_lib_opens, &id, rec, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int watch_lib_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct tls_library_record *rec = bpf_map_lookup_elem(&ssl_lib_opens, &id);
    if (!rec)
        return 0;
    struct probe_stats *stats = stats_for(PROBE_TLS_LIBRARY_OPEN);
    if (ctx->ret >= 0 && stats) {
        rec->hdr.type = EVENT_TLS_LIBRARY_OPEN;
        rec->hdr.pid = id >> 32;
        rec->hdr.tid = (__u32)id;
        rec->hdr.fd = ctx->ret;
        rec->hdr.end_ns = bpf_ktime_get_ns();
        rec->hdr.probe = PROBE_TLS_LIBRARY_OPEN;
        output_record(stats, rec, sizeof(*rec), true);
    }
    bpf_map_delete_elem(&ssl_lib_opens, &id);
    return 0;
}

#endif
