/* Kernel-to-userspace record layouts: the one definition both sides read.
 *
 * The BPF programs include this file; agent/capture/records.py feeds it to cffi's
 * cdef.  Keep it to what cffi's parser accepts: fixed-width types, structs,
 * and `#define NAME <integer>` constants.  Other preprocessor lines are
 * skipped by the Python side.
 */
#ifndef OTEL_EBPF_EVENTS_H
#define OTEL_EBPF_EVENTS_H

/* Largest payload prefix one event can carry; the loader's capture size
 * (a load-time constant) is at most this.  A power of two: the programs
 * mask offsets with it to satisfy the verifier. */
#define MAX_CAPTURE_BYTES 8192

#define EVENT_DATA 1
#define EVENT_CLOSE 2
/* A process that had traced connections exited. */
#define EVENT_PROCESS_EXIT 3
/* A traced process called exec: it may map a TLS library worth probing. */
#define EVENT_PROCESS_EXEC 4
/* A traced process opened a file named like an OpenSSL library
 * (struct tls_library_record): probe it before the process uses it. */
#define EVENT_TLS_LIBRARY_OPEN 5

#define DIRECTION_EGRESS 0
#define DIRECTION_INGRESS 1

#define ROLE_UNKNOWN 0
#define ROLE_SERVER 1
#define ROLE_CLIENT 2

#define PROTOCOL_UNKNOWN 0
#define PROTOCOL_HTTP1 1
#define PROTOCOL_HTTP2 2
#define PROTOCOL_POSTGRES 3
#define PROTOCOL_MYSQL 4
/* Redis (RESP2/RESP3) and memcached (text and meta): bpf/cache_classify.h. */
#define PROTOCOL_REDIS 5
#define PROTOCOL_MEMCACHED 6

/* event_header.flags */
#define FLAG_TRUNCATED 1
/* The payload ends with the syscall's last SQL_TAIL_BYTES bytes instead of
 * more of its first ones: payload[0, captured - SQL_TAIL_BYTES) are the first
 * bytes, payload[captured - SQL_TAIL_BYTES, captured) the bytes at
 * [length - SQL_TAIL_BYTES, length).  Set on database connections' events
 * longer than the capture size (flat buffers only), where the end of a
 * response (PostgreSQL's CommandComplete + ReadyForQuery, MySQL's final
 * EOF/OK/ERR) says whether it succeeded and that it is over. */
#define FLAG_TAIL 2
#define SQL_TAIL_BYTES 64
/* Plaintext of a TLS connection, from the TLS library's read/write calls
 * (the socket-level ciphertext of such a connection is never copied). */
#define FLAG_TLS 4

/* Index of the per-probe statistics (probe_stats map). */
#define PROBE_READ 0
#define PROBE_WRITE 1
#define PROBE_READV 2
#define PROBE_WRITEV 3
#define PROBE_RECVFROM 4
#define PROBE_SENDTO 5
#define PROBE_RECVMSG 6
#define PROBE_SENDMSG 7
#define PROBE_SENDFILE 8
#define PROBE_CLOSE 9
#define PROBE_PROCESS_EXIT 10
#define PROBE_SSL_READ 11
#define PROBE_SSL_WRITE 12
#define PROBE_PROCESS_EXEC 13
#define PROBE_ACCEPT 14
#define PROBE_CONNECT 15
#define PROBE_TLS_LIBRARY_OPEN 16
#define PROBE_COUNT 17

/* The TLS library function a TLS uprobe sits on: its BPF cookie, set by
 * the loader (agent/capture/tls.py) when it attaches. */
#define TLS_FN_WRITE 0
#define TLS_FN_READ 1
#define TLS_FN_WRITE_EX 2
#define TLS_FN_READ_EX 3
#define TLS_FN_SET_FD 4
/* Cookies of bpf/tls_membio.h's memory-BIO uprobe (agent/capture/tls_membio.py). */
#define MEMBIO_FN_SET_BIO 0
#define MEMBIO_FN_SET0_WBIO 1
#define MEMBIO_FN_BIO_WRITE 2
/* Slots of bpf/tls_membio.h's membio_results: what became of an attempt to
 * bind an SSL to its socket (agent/capture/tls_membio.py names them). */
#define MEMBIO_BOUND 0
#define MEMBIO_NO_MATCHING_RECORD 1
#define MEMBIO_RECORD_TOO_SHORT 2
#define MEMBIO_RECORD_UNREADABLE 3
#define MEMBIO_TABLE_FULL 4
#define MEMBIO_RESULT_COUNT 5

/* Go crypto/tls: the BPF cookie of a Go TLS uprobe (agent/capture/go_binaries.py)
 * is (binary index << GO_TLS_BINARY_SHIFT) | GO_TLS_FN_*, the index naming
 * the executable's entry in go_tls_binaries and go_tls_counts. */
#define GO_TLS_FN_WRITE 0
#define GO_TLS_FN_READ 1
#define GO_TLS_BINARY_SHIFT 8
#define GO_TLS_MAX_BINARIES 1024

/* Where a Go executable keeps a tls.Conn's socket, from its DWARF:
 * Conn.conn (a net.Conn interface: type word, then data word) -> the
 * *net.TCPConn's embedded net.conn.fd (*netFD) -> netFD.pfd.Sysfd.  Another
 * type behind the interface (a wrapped connection) is tied as without DWARF. */
struct go_tls_binary {
    __u64 tcp_conn_itab;    /* address of go:itab.*net.TCPConn,net.Conn: the
                               path is followed only from that type (0: the
                               executable is position-independent, not checked) */
    __u32 conn_offset;      /* crypto/tls.Conn.conn */
    __u32 fd_offset;        /* net.conn.fd within net.TCPConn */
    __u32 sysfd_offset;     /* net.netFD.pfd + internal/poll.FD.Sysfd */
    __u8 has_layout;        /* 0: no DWARF, calls are tied by their thread's socket I/O */
    __u8 reserved[3];
};

/* A Go TLS call in flight (go_tls_calls' key): userspace deletes those of
 * an exited process, whose goroutines may have been parked inside a Read. */
struct go_call_key {
    __u64 goroutine;        /* the runtime.g, R14 in Go's register ABI */
    __u32 tgid;
    __u32 reserved;
};

/* Per Go executable (go_tls_counts, by binary index). */
struct go_tls_counts {
    __u64 calls;            /* Read/Write calls that moved plaintext */
    __u64 unmapped;         /* of those, not tied to a socket: not copied */
};

/* Addresses are IPv6 or IPv4-mapped IPv6 (::ffff:a.b.c.d), ports in host
 * byte order.  "local" is the traced process's end of the connection. */
struct conn_tuple {
    __u8 local_addr[16];
    __u8 remote_addr[16];
    __u16 local_port;
    __u16 remote_port;
    __u16 family;
    __u16 reserved;
};

struct event_header {
    __u32 type;         /* EVENT_* */
    __u32 pid;          /* thread group id */
    __u32 tid;
    __u32 fd;
    __u64 conn_id;      /* unique per connection while the agent runs */
    __u64 start_ns;     /* CLOCK_MONOTONIC, syscall entry */
    __u64 end_ns;       /* CLOCK_MONOTONIC, syscall exit */
    __u32 length;       /* bytes the syscall transferred */
    __u32 captured;     /* payload bytes that follow this header */
    __u8 direction;     /* DIRECTION_* */
    __u8 role;          /* ROLE_* as known from accept/connect */
    __u8 protocol;      /* PROTOCOL_* as classified in the kernel */
    __u8 flags;         /* FLAG_* */
    __u16 probe;        /* PROBE_* */
    __u16 seq;          /* data events of this connection, 1..65535 then again 1:
                           a gap means records were lost (0: not numbered);
                           a close carries the last number given out */
    struct conn_tuple tuple;
};

/* capture_config.report_execs: none; those of traced processes (to find the
 * TLS libraries they load); every process's (to select new processes by
 * executable name as they start). */
#define EXECS_NONE 0
#define EXECS_TRACED 1
#define EXECS_ALL 2

/* capture_config.http_exchanges: whether the probes pair HTTP/1.x exchanges:
 * never, always, or while the ring fills faster than the agent drains it. */
#define HTTP_EXCHANGES_OFF 0
#define HTTP_EXCHANGES_ALWAYS 1
#define HTTP_EXCHANGES_BY_LOAD 2

/* Load-time settings the loader writes into the object's read-only data
 * before loading it (the verifier then prunes what they switch off). */
struct capture_config {
    __u32 agent_tgid;       /* never traced: the agent itself */
    __u32 capture_bytes;    /* payload prefix copied per event, <= MAX_CAPTURE_BYTES */
    __u8 filter_pids;       /* trace the pids in pid_filter ... */
    __u8 filter_cgroups;    /* ... and the processes in the cgroups in cgroup_filter */
    __u8 filter_ports;      /* trace only connections with a port in port_filter */
    __u8 report_execs;      /* EXECS_*: which execs become EVENT_PROCESS_EXEC */
    __u8 tls;               /* the TLS uprobes are loaded: watch for their calls */
    __u8 reserved[3];
    __u32 ring_wake_bytes;  /* wake the readers when the ring's unread bytes pass this */
    __u8 http_exchanges;    /* HTTP_EXCHANGES_*: pair HTTP/1 in the probes (bpf/http_exchange.h) */
    __u8 reserved2[3];
    __u32 http_shed_bytes;  /* unread ring bytes at which new exchanges are shed */
};

/* traced_processes values: what userspace still needs of a process whose
 * /proc entry is gone (a client that exited right after its request).
 * Userspace deletes an entry once it has handled the process's exit. */
#define PROCESS_NAME_BYTES 16
struct traced_process {
    char comm[PROCESS_NAME_BYTES];  /* the thread group leader's name */
};

/* Counters per probe and CPU, summed by userspace. */
struct probe_stats {
    __u64 events;       /* records written to the ring buffer */
    __u64 lost;         /* records the ring buffer had no room for */
    __u64 truncated;    /* payloads longer than the capture size */
    __u64 unclassified; /* socket data of a protocol the agent does not trace */
    __u64 unmapped;     /* TLS plaintext whose socket is unknown (no socket I/O seen
                           under the library call: a memory BIO), not copied */
    __u64 untracked;    /* calls not followed to their end: the table of calls in
                           flight (an entry per thread inside one) was full */
};

/* An EVENT_PROCESS_EXEC record: what the kernel knows of the process at
 * exec, so that a process gone before userspace reads /proc still gets its
 * complete resource.  start_boottime_ns: the process's start (its fork),
 * CLOCK_BOOTTIME, 0 when the front end cannot read it (BCC); filename: the
 * path the program was executed by (the tracepoint's filename), possibly
 * relative, truncated to EXEC_PATH_BYTES - 1 bytes. */
#define EXEC_PATH_BYTES 256
struct process_exec_record {
    struct event_header hdr;
    __u64 start_boottime_ns;
    char filename[EXEC_PATH_BYTES];
};

/* exe_filter's key: an executable's name as the kernel keeps it in the
 * task's comm after exec (its first TASK_COMM_BYTES - 1 bytes, NUL-padded). */
#define TASK_COMM_BYTES 16
struct comm_key {
    char comm[TASK_COMM_BYTES];
};

/* An EVENT_TLS_LIBRARY_OPEN record: the path as the process passed it to
 * openat (relative to its working directory when it does not start with
 * '/'), truncated to TLS_LIBRARY_PATH_BYTES - 1 bytes. */
#define TLS_LIBRARY_PATH_BYTES 256
struct tls_library_record {
    struct event_header hdr;
    char path[TLS_LIBRARY_PATH_BYTES];
};

/* ---- HTTP/1.x exchange records (bpf/http_exchange.h) ----------------------
 * One record per request/response pair the probes parsed and paired on a
 * plain socket.  A value longer than its slot keeps its first bytes and
 * sets its HTTP_TRUNC_* bit. */
#define EVENT_HTTP_EXCHANGE 6
/* A request the probes kept, handed to the payload path with its
 * connection before its response began: struct http_exchange with no
 * response fields; the payload path reads the response and pairs them. */
#define EVENT_HTTP_KEPT_REQUEST 7
/* A request sent on a client connection the payload path reads while the
 * sending thread serves an exchange the probes hold (a proxy's upstream
 * call): struct http_serving_note, ahead of that call's data record. */
#define EVENT_HTTP_SERVING 8

#define HTTP_METHOD_BYTES 16
#define HTTP_TARGET_BYTES 256
#define HTTP_HOST_BYTES 64
#define HTTP_USER_AGENT_BYTES 128
#define HTTP_TRACEPARENT_BYTES 64
#define HTTP_TRACESTATE_BYTES 128

/* http_request_head.truncated */
#define HTTP_TRUNC_TARGET 1
#define HTTP_TRUNC_HOST 2
#define HTTP_TRUNC_USER_AGENT 4
#define HTTP_TRUNC_TRACEPARENT 8
#define HTTP_TRUNC_TRACESTATE 16

/* http_request_head.present: which optional fields the head had */
#define HTTP_HAS_HOST 1
#define HTTP_HAS_USER_AGENT 2
#define HTTP_HAS_TRACEPARENT 4
#define HTTP_HAS_TRACESTATE 8
#define HTTP_HAS_CONTENT_LENGTH 16
/* a traceparent in its common form (version 00, lowercase hex, ids not
 * zero), decoded into trace_id, parent_id and trace_flags instead of kept
 * as a value (HTTP_HAS_TRACEPARENT: kept as text, for userspace to judge) */
#define HTTP_HAS_TRACE_IDS 32

/* What the head parser concluded: HTTP_HEAD_OK, or why the connection's
 * HTTP/1 goes to the payload path instead (also the index of the
 * http_fallbacks counters). */
#define HTTP_HEAD_OK 0
/* the head did not end inside one call */
#define HTTP_FALLBACK_SPLIT_HEAD 1
/* bare LF, obs-fold, repeated trace fields, odd lengths */
#define HTTP_FALLBACK_UNUSUAL_HEAD 2
/* CONNECT, Upgrade */
#define HTTP_FALLBACK_UPGRADE 3
/* Expect: 100-continue */
#define HTTP_FALLBACK_CONTINUE 4
/* chunked request body */
#define HTTP_FALLBACK_REQUEST_BODY 5
/* more bytes than the request announced */
#define HTTP_FALLBACK_PIPELINED 6
/* joined a connection mid-body, or a response with no request */
#define HTTP_FALLBACK_MID_STREAM 7
/* response end not certain (chunked, until close) */
#define HTTP_FALLBACK_RESPONSE_END 8
/* no room to hold the request: its slot holds another connection's exchange */
#define HTTP_FALLBACK_NO_SLOT 9
/* a client's response read before its request's call ended (a client that
 * reads on another thread than it writes, as Go's does, preempted in its
 * write; a server answering before the request's body is in): that one
 * exchange goes to the payload path, the connection goes on with records */
#define HTTP_FALLBACK_RESPONSE_FIRST 10
#define HTTP_FALLBACK_COUNT 11

/* Why the probes shed an exchange (decided at its request: neither side is
 * written), the index of the http_shed counters. */
/* the ring's unread bytes had passed capture_config.http_shed_bytes */
#define HTTP_SHED_RING_FILL 0
#define HTTP_SHED_COUNT 1

/* The request's values, packed in the order the head carried them (each
 * at its *_off, *_len bytes long, at most its HTTP_*_BYTES slot): the record
 * carries only the bytes they take (values_len). */
#define HTTP_VALUES_BYTES 656

struct http_request_head {
    __u8 trace_id[16];          /* valid with HTTP_HAS_TRACE_IDS */
    __u8 parent_id[8];
    __u64 content_length;       /* valid with HTTP_HAS_CONTENT_LENGTH */
    __u16 header_bytes;         /* start line to blank line, inclusive */
    __u8 trace_flags;           /* valid with HTTP_HAS_TRACE_IDS */
    __u8 reserved;
    /* From here to the values' end, two requests alike (but for their
     * trace ids) have the same bytes: userspace shares what it makes of
     * them. */
    __u16 values_len;           /* bytes of values[] in use */
    __u16 target_off;
    __u16 target_len;
    __u16 host_off;
    __u16 user_agent_off;
    __u16 traceparent_off;
    __u16 tracestate_off;
    __u8 method_len;            /* the method is at values[0] */
    __u8 host_len;
    __u8 user_agent_len;
    __u8 traceparent_len;
    __u8 tracestate_len;
    __u8 version_minor;         /* HTTP/1.<minor> */
    __u8 truncated;             /* HTTP_TRUNC_* */
    __u8 present;               /* HTTP_HAS_* */
    char values[HTTP_VALUES_BYTES];
};

/* Variable length: the ring record ends values_len bytes into
 * request.values. */
struct http_exchange {
    struct event_header hdr;    /* start_ns: request start; end_ns: response end;
                                   direction: the request's */
    __u64 response_start_ns;
    __u64 request_bytes;
    __u64 response_bytes;
    /* A client request's: the server request its thread was serving when
     * it was sent (conn id, 0: none), for proxy linking in userspace. */
    __u64 serving_conn_id;
    __u16 status;
    __u8 response_version_minor;
    __u8 reserved[5];
    struct http_request_head request;
};

/* EVENT_HTTP_SERVING: userspace routes the client connection's records
 * after the served exchange's record, as the payload path would have read
 * the served request first. */
struct http_serving_note {
    struct event_header hdr;    /* the client connection's, the call's times */
    __u64 serving_conn_id;
};

#endif
