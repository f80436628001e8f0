/* Syscall numbers of the hooked syscalls, per architecture (the raw
 * tracepoints see numbers, not names), and where the number sits in the
 * user registers at syscall exit. */
#ifndef OTEL_EBPF_SYSCALLS_H
#define OTEL_EBPF_SYSCALLS_H

#if defined(__TARGET_ARCH_x86)
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile64 40
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_accept4 288
#ifndef SYSCALL_NR
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, orig_ax)
#endif
#define SYSCALL_SYMBOL(name) "__x64_sys_" #name
#elif defined(__TARGET_ARCH_arm64)
#define NR_close 57
#define NR_read 63
#define NR_write 64
#define NR_readv 65
#define NR_writev 66
#define NR_sendfile64 71
#define NR_accept 202
#define NR_connect 203
#define NR_sendto 206
#define NR_recvfrom 207
#define NR_sendmsg 211
#define NR_recvmsg 212
#define NR_accept4 242
#ifndef SYSCALL_NR
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, syscallno)
#endif
#define SYSCALL_SYMBOL(name) "__arm64_sys_" #name
#else
#error "syscall numbers for this architecture are not defined in bpf/syscalls.h"
#endif

/* A cheap first test on every syscall the raw tracepoints see. */
static __always_inline bool is_captured_syscall(long id)
{
    switch (id) {
    case NR_read: case NR_write: case NR_close: case NR_readv: case NR_writev:
    case NR_sendfile64: case NR_connect: case NR_accept: case NR_sendto:
    case NR_recvfrom: case NR_sendmsg: case NR_recvmsg: case NR_accept4:
        return true;
    }
    return false;
}

#endif
