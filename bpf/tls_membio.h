/* ---- TLS over memory BIOs (Node.js, Python asyncio) ----------------------
 * Included by bpf/capture.bpf.c after the TLS maps.  These programs call
 * SSL_read/SSL_write on an SSL whose BIOs are memory buffers: the library
 * writes TLS records into the write BIO, and the program moves them to the
 * socket later, outside any SSL call, so the TLS probes cannot learn the
 * socket from a nested syscall.  The binding is made by content instead:
 * - SSL_set_bio / SSL_set0_wbio name each SSL's write BIO;
 * - BIO_write on such a BIO remembers the first MEMBIO_KEY_BYTES of the
 *   record(s) written (a ClientHello's or ServerHello's random, or an
 *   encrypted record's ciphertext, makes them unique);
 * - the first socket write whose buffer starts with those bytes names the
 *   connection: the SSL is bound to it in ssl_fds, which the TLS probes
 *   already consult when an SSL call makes no socket call of its own.
 * Never "the thread's last socket": on an event loop that is a guess.
 * Attached by agent/capture/tls_membio.py; cookies MEMBIO_FN_* (events.h). */

#define MEMBIO_KEY_BYTES 24

struct membio_bio_key {
    __u64 bio;
    __u32 tgid;
    __u32 reserved;
};

/* Write BIO -> its SSL, until the SSL is bound to a socket. */
MAP(LRU_HASH, membio_wbios, struct membio_bio_key, __u64, 16384);

struct membio_record_key {
    __u32 tgid;
    __u32 reserved;
    __u8 head[MEMBIO_KEY_BYTES];
};

struct membio_writer {
    __u64 ssl;
    __u64 bio;
};

/* The first bytes of a record written to an unbound write BIO -> its SSL
 * and that BIO.  Records never seen on a socket age out (LRU). */
MAP(LRU_HASH, membio_records, struct membio_record_key, struct membio_writer, 16384);

/* Processes that gave an SSL a BIO: only their socket writes are compared. */
MAP(LRU_HASH, membio_processes, __u32, __u8, 4096);

/* What became of each attempt to bind (MEMBIO_* slots in events.h),
 * exported as otel_ebpf_kernel_tls_membio_bindings_total{result}. */
MAP(PERCPU_ARRAY, membio_results, __u32, __u64, MEMBIO_RESULT_COUNT);

static __always_inline void count_membio(__u32 result)
{
    __u64 *count = bpf_map_lookup_elem(&membio_results, &result);
    if (count)
        (*count)++;
}

/* conn_info.tls of a connection that carried TLS records no remembered
 * record matched (counted once): its ciphertext is not copied, and a
 * later record may still bind it. */
#define CONN_TLS_UNBOUND 2

/* The first bytes of a TLS record: content type 20-23 (change cipher
 * spec, alert, handshake, application data), then version 3.x. */
static __always_inline bool looks_like_tls_record(const __u8 *head)
{
    return head[0] >= 20 && head[0] <= 23 && head[1] == 3 && head[2] <= 4;
}

SEC("uprobe")
int tls_membio_enter(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (!process_traced(tgid))
        return 0;
    __u64 fn = bpf_get_attach_cookie(ctx);
    if (fn == MEMBIO_FN_SET_BIO || fn == MEMBIO_FN_SET0_WBIO) {
        /* SSL_set_bio(ssl, rbio, wbio); SSL_set0_wbio(ssl, wbio). */
        __u64 ssl = PT_REGS_PARM1(ctx);
        /* Both read before choosing: the verifier refuses a context offset
         * picked at run time. */
        __u64 second = PT_REGS_PARM2(ctx), third = PT_REGS_PARM3(ctx);
        barrier_var(second);
        barrier_var(third);
        struct membio_bio_key key = {
            .bio = fn == MEMBIO_FN_SET_BIO ? third : second,
            .tgid = tgid,
        };
        if (!key.bio)
            return 0;
        __u8 one = 1;
        /* A new SSL at a freed one's address must not inherit its socket. */
        struct ssl_key old = { .ssl = ssl, .tgid = tgid };
        bpf_map_delete_elem(&ssl_fds, &old);
        if (bpf_map_update_elem(&membio_wbios, &key, &ssl, BPF_ANY) ||
            bpf_map_update_elem(&membio_processes, &tgid, &one, BPF_ANY))
            count_membio(MEMBIO_TABLE_FULL);
        return 0;
    }
    /* BIO_write(bio, data, len) and BIO_write_ex(bio, data, len, written). */
    struct membio_bio_key key = { .bio = PT_REGS_PARM1(ctx), .tgid = tgid };
    __u64 *ssl = bpf_map_lookup_elem(&membio_wbios, &key);
    if (!ssl)
        return 0;
    /* Bound already (a BIO over a socket, whose SSL call made the socket
     * call itself): nothing to remember. */
    struct ssl_key bound = { .ssl = *ssl, .tgid = tgid };
    if (bpf_map_lookup_elem(&ssl_fds, &bound)) {
        bpf_map_delete_elem(&membio_wbios, &key);
        return 0;
    }
    if (PT_REGS_PARM3(ctx) < MEMBIO_KEY_BYTES) {
        count_membio(MEMBIO_RECORD_TOO_SHORT);
        return 0;
    }
    struct membio_writer owner = { .ssl = *ssl, .bio = key.bio };
    struct membio_record_key record = { .tgid = tgid };
    if (bpf_probe_read_user(record.head, sizeof(record.head), (void *)PT_REGS_PARM2(ctx))) {
        count_membio(MEMBIO_RECORD_UNREADABLE);
        return 0;
    }
    if (bpf_map_update_elem(&membio_records, &record, &owner, BPF_ANY))
        count_membio(MEMBIO_TABLE_FULL);
    return 0;
}

/* An SSL call with no socket known for its SSL: the process moves TLS
 * records itself (its SSL got its BIOs before the agent started), so its
 * socket writes are compared too, and counted when nothing matches. */
static __always_inline void membio_note_unmapped(__u32 tgid)
{
    __u8 one = 1;
    bpf_map_update_elem(&membio_processes, &tgid, &one, BPF_ANY);
}

/* A socket write outside any SSL call, by a memory-BIO process on a
 * connection not yet known as TLS: if its first bytes are a record an
 * unbound SSL wrote, that SSL's plaintext belongs to this connection. */
static __always_inline void membio_bind_socket(__u64 id, __u32 fd, __u64 buf,
                                               __u8 buffer_kind, __u8 direction)
{
    __u32 tgid = id >> 32;
    if (direction != DIRECTION_EGRESS || buffer_kind == IO_NONE ||
        !bpf_map_lookup_elem(&membio_processes, &tgid) ||
        bpf_map_lookup_elem(&active_ssl, &id))
        return;
    __u64 key = conn_key(tgid, fd);
    struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
    if (!conn || !conn->traced || (conn->tls && conn->tls != CONN_TLS_UNBOUND))
        return;
    __u64 data = buf;
    if (buffer_kind == IO_IOVEC) {
        struct iovec first = {};
        if (bpf_probe_read_user(&first, sizeof(first), (void *)buf) ||
            first.iov_len < MEMBIO_KEY_BYTES)
            return;
        data = (__u64)first.iov_base;
    }
    struct membio_record_key record = { .tgid = tgid };
    if (bpf_probe_read_user(record.head, sizeof(record.head), (void *)data))
        return;
    struct membio_writer *found = bpf_map_lookup_elem(&membio_records, &record);
    if (!found) {
        /* Its SSL got its BIO before the agent started, or its records
         * were pushed out of the table or were too short to remember. */
        if (!conn->tls && looks_like_tls_record(record.head)) {
            conn->tls = CONN_TLS_UNBOUND;
            count_membio(MEMBIO_NO_MATCHING_RECORD);
        }
        return;
    }
    struct membio_writer writer = *found;
    struct ssl_key bound = { .ssl = writer.ssl, .tgid = tgid };
    __s32 socket_fd = fd;
    if (bpf_map_update_elem(&ssl_fds, &bound, &socket_fd, BPF_ANY)) {
        count_membio(MEMBIO_TABLE_FULL);
        return;
    }
    count_membio(MEMBIO_BOUND);
    /* Bound: its later records need no remembering. */
    struct membio_bio_key wbio = { .bio = writer.bio, .tgid = tgid };
    bpf_map_delete_elem(&membio_wbios, &wbio);
    bpf_map_delete_elem(&membio_records, &record);
    conn->tls = 1;
}
