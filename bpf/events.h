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
#define PROBE_COUNT 16

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

#endif
