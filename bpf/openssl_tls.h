/* OpenSSL plaintext: uprobes on the TLS library (libssl, or an executable
 * that links OpenSSL statically).
 *
 * Included by bpf/capture.bpf.c after its socket path, whose maps
 * (active_ssl, ssl_fds) and record (emit_data() with FLAG_TLS) it uses;
 * bpf/go_tls.h and bpf/tls_membio.h share them.
 *
 * Attached by userspace (agent/capture/tls.py) to each distinct libssl
 * file, and to executables that link OpenSSL statically: tls_enter on the
 * functions' entries, tls_exit on the returns of the four that move data,
 * each attachment's cookie saying which function it sits on (TLS_FN_*).
 * SSL_read/SSL_write(ssl, buf, num) return the byte count;
 * SSL_read_ex/SSL_write_ex(ssl, buf, num, size_t *done) return 1 and store it.
 */
#ifndef OTEL_EBPF_OPENSSL_TLS_H
#define OTEL_EBPF_OPENSSL_TLS_H

static __always_inline int on_ssl_set_fd(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    int fd = PT_REGS_PARM2(ctx);
    if (!process_traced(id >> 32) || fd < 0)
        return 0;
    struct ssl_key key = { .ssl = PT_REGS_PARM1(ctx), .tgid = id >> 32 };
    __s32 value = fd;
    bpf_map_update_elem(&ssl_fds, &key, &value, BPF_ANY);
    return 0;
}

/* The statistics slot of a TLS library call, by the way its bytes go. */
static __always_inline __u32 tls_probe(__u8 direction)
{
    return direction == DIRECTION_EGRESS ? PROBE_SSL_WRITE : PROBE_SSL_READ;
}

SEC("uprobe")
int tls_enter(struct pt_regs *ctx)
{
    __u64 fn = bpf_get_attach_cookie(ctx);
    if (fn == TLS_FN_SET_FD)
        return on_ssl_set_fd(ctx);
    __u64 id = bpf_get_current_pid_tgid();
    if (!process_traced(id >> 32))
        return 0;
    __u8 ex = fn == TLS_FN_WRITE_EX || fn == TLS_FN_READ_EX;
    struct ssl_call call = {
        .ssl = PT_REGS_PARM1(ctx),
        .buf = PT_REGS_PARM2(ctx),
        .size_out = ex ? PT_REGS_PARM4(ctx) : 0,
        .start_ns = bpf_ktime_get_ns(),
        .fd = -1,
        .direction = fn == TLS_FN_WRITE || fn == TLS_FN_WRITE_EX ? DIRECTION_EGRESS
                                                                  : DIRECTION_INGRESS,
        .ex = ex,
    };
    if (bpf_map_update_elem(&active_ssl, &id, &call, BPF_ANY))
        count_untracked(tls_probe(call.direction));
    return 0;
}

SEC("uretprobe")
int tls_exit(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct ssl_call *found = bpf_map_lookup_elem(&active_ssl, &id);
    if (!found)
        return 0;
    struct ssl_call call = *found;
    bpf_map_delete_elem(&active_ssl, &id);
    __u32 probe = tls_probe(call.direction);
    /* The functions return int: the upper half of the register is not theirs. */
    int ret = (int)PT_REGS_RC(ctx);
    long n = ret;
    if (call.ex) {
        __u64 done = 0;
        if (ret != 1 || bpf_probe_read_user(&done, sizeof(done), (void *)call.size_out))
            return 0;
        n = done;
    }
    if (n <= 0)
        return 0;
    struct ssl_key key = { .ssl = call.ssl, .tgid = id >> 32 };
    if (call.fd >= 0) {
        bpf_map_update_elem(&ssl_fds, &key, &call.fd, BPF_ANY);
    } else {
        __s32 *fd = bpf_map_lookup_elem(&ssl_fds, &key);
        if (!fd) {
            struct probe_stats *stats = stats_for(probe);
            if (stats)
                stats->unmapped++;
            membio_note_unmapped(id >> 32);
            return 0;
        }
        call.fd = *fd;
    }
    struct io_args a = {
        .start_ns = call.start_ns,
        .buf = call.buf,
        .fd = call.fd,
        .count = n,
        .probe = probe,
        .buffer_kind = IO_BUFFER,
        .direction = call.direction,
    };
    struct conn_info *conn = traced_conn(id >> 32, call.fd);
    if (!conn)
        return 0;
    return emit_data(id, conn, &a, n, FLAG_TLS);
}

#endif
