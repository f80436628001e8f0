// SPDX-License-Identifier: GPL-2.0
/* PostgreSQL and MySQL/MariaDB in the kernel: recognition from the wire protocol, not the
 * port.  `total` is the byte count of the whole syscall: these protocols
 * length-prefix their messages, and a connection's opening message is sent
 * (and, by the buffered readers of libpq, the servers and the usual client
 * libraries, read) with one syscall, so its declared length must match.
 *
 * PostgreSQL: the client's StartupMessage (protocol 3.0) or SSLRequest /
 * GSSENCRequest; on a connection the agent joins later, a Query, Parse or
 * Bind message at the start of a syscall's bytes.
 * MySQL/MariaDB: the server's greeting (packet 0, protocol 10, a version
 * string), whole or its payload alone; on a joined connection a command
 * packet (sequence 0) whose length is the syscall's, of a command an
 * application sends.
 *
 * Messages are framed and decoded in userspace (agent/parsers/postgres.py,
 * agent/parsers/mysql.py).  Beside recognition, the tail rule: which part of
 * a long database response is copied.
 *
 * A part of the capture object: bpf/capture.bpf.c includes it through
 * bpf/protocols.h (docs/decisions/kernel-units.md says why one unit). */
#ifndef OTEL_EBPF_SQL_BPF_C
#define OTEL_EBPF_SQL_BPF_C

#include "classify.h"
#include "cache_classify.h"

#define PG_PROTOCOL_3 0x00030000
#define PG_SSL_REQUEST 80877103
#define PG_GSSENC_REQUEST 80877104
/* The server rejects a longer startup packet (MAX_STARTUP_PACKET_LENGTH). */
#define PG_MAX_STARTUP 10000
#define PG_MIN_PARSE 8
#define PG_MIN_BIND 12

#define MYSQL_PROTOCOL_10 10
#define MYSQL_COM_INIT_DB 0x02
#define MYSQL_COM_QUERY 0x03
#define MYSQL_COM_PING 0x0e
#define MYSQL_COM_STMT_PREPARE 0x16
#define MYSQL_COM_STMT_EXECUTE 0x17
#define MYSQL_COM_STMT_CLOSE 0x19

/* The first byte of SQL text: a keyword, a parenthesis, a comment, blanks. */
static __always_inline bool sql_text_start(__u8 c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == ' ' || c == '\t' ||
           c == '\r' || c == '\n' || c == '(' || c == '/' || c == '-';
}

/* A StartupMessage's first parameter name (libpq sends "user" first), in
 * the bytes seen (8 to CLASSIFY_BYTES, zero past the data): not empty, and
 * ASCII up to its NUL, as userspace's looks_like_postgres_startup reads
 * it.  With bpf/cache_classify.h's straight-line primitives: no branch on
 * the bytes for BCC's verifier to walk in every combination. */
static __always_inline bool pg_first_name(const __u8 *b)
{
    cache_u64 bad = 0, before_nul = 1;
    CACHE_UNROLL
    for (int k = 1; k < CACHE_CLASSIFY_WINDOW / 8; k++) {
        cache_u64 w = cache_word(b, k);
        cache_u64 nul = cache_bytes_in(w, 0, 0);
        /* the high bits of the bytes below the word's first NUL (all of
         * them when it has none) */
        cache_u64 high = w & cache_bytes(0x80) & ((nul & -nul) - 1);
        bad |= cache_if(before_nul, cache_not(cache_eq(high, 0)));
        before_nul &= cache_eq(nul, 0);
    }
    return cache_not(cache_eq(b[8], 0)) & cache_not(bad);
}

static __always_inline bool is_postgres(const __u8 *b, __u32 len, __u64 total)
{
    if (len < 8)
        return false;
    __u32 length = be32(b);
    if (length == total && b[0] == 0) {
        __u32 code = be32(b + 4);
        if (length == 8 && (code == PG_SSL_REQUEST || code == PG_GSSENC_REQUEST))
            return true;
        if (code == PG_PROTOCOL_3 && length > 8 && length <= PG_MAX_STARTUP && pg_first_name(b))
            return true;
    }
    __u8 type = b[0];
    if (type != 'Q' && type != 'P' && type != 'B')
        return false;
    length = be32(b + 1);
    /* Under 16 MiB, and the message fits in this syscall's bytes. */
    if (b[1] != 0 || length < 5 || (__u64)length + 1 > total)
        return false;
    if (type == 'Q')
        return (__u64)length + 1 == total && sql_text_start(b[5]);
    /* The shortest well-formed ones: Parse "" "" with no parameter types;
     * Bind "" "" with no formats, parameters or result formats. */
    if (length < (type == 'P' ? PG_MIN_PARSE : PG_MIN_BIND))
        return false;
    /* Parse / Bind start with a statement or portal name, "" or text. */
    return b[5] == 0 || sql_text_start(b[5]) || (b[5] >= '0' && b[5] <= '9') || b[5] == '_';
}

static __always_inline bool is_mysql(const __u8 *b, __u32 len, __u64 total)
{
    if (len < 6)
        return false;
    /* A greeting's payload read apart from its 4-byte header (Connector/Python
     * reads each packet with two calls): protocol 10 and a version "N.N" or "NN.N". */
    if (b[0] == MYSQL_PROTOCOL_10 && total >= 40 && total < 1024 && b[1] >= '1' && b[1] <= '9' &&
        (b[2] == '.' || (is_digit(b[2]) && b[3] == '.')))
        return true;
    __u32 length = (__u32)b[0] | ((__u32)b[1] << 8) | ((__u32)b[2] << 16);
    if ((__u64)length + 4 != total || b[3] != 0)
        return false;
    switch (b[4]) {
    case MYSQL_PROTOCOL_10:
        /* The greeting: a version string such as "8.0.36" or "5.5.5-10.11.6-MariaDB". */
        return length >= 40 && length < 1024 && b[5] >= '1' && b[5] <= '9';
    case MYSQL_COM_QUERY:
    case MYSQL_COM_STMT_PREPARE:
        return length >= 2 && sql_text_start(b[5]);
    case MYSQL_COM_STMT_EXECUTE:
        return length >= 10;
    case MYSQL_COM_INIT_DB:
        return length >= 2;
    case MYSQL_COM_PING:
        return length == 1;
    case MYSQL_COM_STMT_CLOSE:
        return length == 5;
    }
    return false;
}

/* A database response's end says how it went (PostgreSQL's CommandComplete
 * and ReadyForQuery, MySQL's final EOF/OK/ERR), and the replies pipelined
 * behind a large Redis or memcached value sit there: of a flat buffer of
 * total bytes of which want are copied, the last SQL_TAIL_BYTES take the
 * place of the first bytes' end (FLAG_TAIL, bpf/events.h). */
static __always_inline bool sql_keeps_tail(__u8 protocol, __u64 total, __u64 want)
{
    return total > want && want > 2 * SQL_TAIL_BYTES &&
           (protocol == PROTOCOL_POSTGRES || protocol == PROTOCOL_MYSQL ||
            protocol == PROTOCOL_REDIS || protocol == PROTOCOL_MEMCACHED);
}

#endif
