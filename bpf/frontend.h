/* The two ways the capture is built, behind one set of names.
 *
 * CO-RE (the default): clang compiles the programs ahead of time against the
 * running kernel's BTF (build/vmlinux.h) and libbpf loads them; kernel structs
 * are read with relocations, so their offsets are always right.
 *
 * BCC (--loader bcc, for kernels without BTF): libbcc compiles the same source
 * at start against whatever kernel headers the agent finds.  Those headers may
 * not match the running kernel, so the BCC build reads no kernel struct: only
 * tracepoint arguments (laid out by the kernel's own tracefs format) and user
 * memory (the syscall ABI, the saved user registers included).
 * agent/capture/bcc_loader.py turns the libbpf map helper
 * calls into BCC's map methods; every other difference is a helper below,
 * spelled once per front end (as libbpf-tools' compat.bpf.h does), and
 * FRONTEND_BTF chooses the capture's kernel access (bpf/capture_btf.h or
 * bpf/capture_bcc.h).  No program body tests which front end builds it.
 *
 * The HOOK_* macros that make a syscall's programs expect syscall_enter()
 * and syscall_exit() (bpf/capture.bpf.c) where they are used.
 */
#ifndef OTEL_EBPF_FRONTEND_H
#define OTEL_EBPF_FRONTEND_H

#ifdef OTEL_EBPF_BCC

/* BCC has already included its helpers and linux/bpf.h.  Only user-ABI types
 * come from the kernel headers below. */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/uio.h>
#include <linux/socket.h>

/* Program sections are BCC's business: it names and loads functions itself. */
#define SEC(name)

#define BCC_TABLE_HASH "hash"
#define BCC_TABLE_LRU_HASH "lru_hash"
#define BCC_TABLE_ARRAY "array"
#define BCC_TABLE_PERCPU_ARRAY "percpu_array"
#define MAP(kind, name, key_type, value_type, entries) \
    BPF_TABLE(BCC_TABLE_##kind, key_type, value_type, name, entries)
/* RING_BUFFER_PAGES comes from the loader (-D): BCC sizes the ring at compile time. */
#define RINGBUF_MAP(name) BPF_RINGBUF_OUTPUT(name, RING_BUFFER_PAGES)
/* BCC 0.26 (Debian 12) has no ringbuf_query method: the fill mark never
 * wakes the readers, whose polls and the CPU guard's clock serve instead. */
#define RINGBUF_UNREAD(name) 0

/* BCC has no read-only data section: the load-time constants are compiler
 * definitions the loader passes (-DCONFIG_<field>=value), which the compiler
 * folds exactly as the verifier folds the CO-RE build's .rodata. */
#define CONFIG(field) (CONFIG_##field)
#define LOAD_TIME_CONSTANTS(type, name) _Static_assert(1, #name " are -D definitions")

/* Kernel structs are out of reach (bpf/capture_bcc.h). */
#define FRONTEND_BTF 0

/* BCC's programs have no subprograms for bpf_loop to call: a loop of at
 * most bcc_steps steps, unrolled. */
#define FRONTEND_LOOP_STEPS(core_steps, bcc_steps) (bcc_steps)
#define BOUNDED_LOOP(steps, step, ctx)             \
    for (__u32 i_ = 0; i_ < (steps); i_++)          \
        if (step(i_, ctx))                          \
            break

/* The syscall tracepoints' records: the common header, the syscall number,
 * then six argument slots (enter) or the return value (exit).  The loader
 * checks this layout against the kernel's tracefs format before loading. */
struct trace_event_raw_sys_enter {
    __u64 common;
    long id;
    unsigned long args[6];
};

struct trace_event_raw_sys_exit {
    __u64 common;
    long id;
    long ret;
};

#if defined(__TARGET_ARCH_x86)
/* The raw syscall tracepoints hand over struct pt_regs, the frame in which
 * the entry code saves the user's registers.  On x86-64 that layout is user
 * ABI (what ptrace's PTRACE_GETREGS returns, uapi asm/ptrace.h), the same on
 * every kernel, unlike the kernel's own structs: the BCC build reads it.
 * Elsewhere (arm64 keeps the syscall number outside the ABI part) the BCC
 * build has the per-syscall tracepoints only.  The loader compiles these
 * programs only when it tries their family (BCC_RAW_SYSCALLS): every
 * program is compiled at start, and these are the largest. */
#if BCC_RAW_SYSCALLS
#define SYSCALL_FRAME 1
#endif
static __always_inline unsigned long syscall_frame_read(const unsigned long *slot)
{
    unsigned long value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), slot);
    return value;
}
#define PT_REGS_PARM1_CORE_SYSCALL(regs) syscall_frame_read(&(regs)->di)
#define PT_REGS_PARM2_CORE_SYSCALL(regs) syscall_frame_read(&(regs)->si)
#define PT_REGS_PARM3_CORE_SYSCALL(regs) syscall_frame_read(&(regs)->dx)
#define SYSCALL_NR(regs) ((long)syscall_frame_read(&(regs)->orig_ax))
#endif

#define barrier_var(var) asm volatile("" : "+r"(var))
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpf_ntohs(x) ((__u16)__builtin_bswap16(x))
#else
#define bpf_ntohs(x) ((__u16)(x))
#endif


/* The BCC build has the tracepoints only, and follows every hooked syscall
 * from its entry to its exit. */
#define HOOK_ENTER(name) HOOK_ENTER_TRACEPOINT(name)
#define HOOK_EXIT(name) HOOK_EXIT_TRACEPOINT(name)
#define HOOK_SYSCALL_AT_EXIT(name) HOOK_ENTER(name) HOOK_EXIT(name)
/* A read's or a write's kind is kept at its entry (struct io_args), so
 * their exits all run the same code: one program serves the exit
 * tracepoints of every read (tp_exit_reads, bpf/capture.bpf.c) and one
 * those of every write (tp_exit_writes); the loader attaches each to all of
 * them.  BCC compiles, and the kernel verifies, each program at start, and
 * the data path is the largest. */
#define HOOK_READ(name) HOOK_ENTER(name)
#define HOOK_WRITE(name) HOOK_ENTER(name)
#define SHARED_DATA_EXITS 1

#else /* CO-RE */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define MAP(kind, name, key_type, value_type, entries) \
    struct {                                           \
        __uint(type, BPF_MAP_TYPE_##kind);             \
        __uint(max_entries, entries);                  \
        __type(key, key_type);                         \
        __type(value, value_type);                     \
    } name SEC(".maps")
/* Resized by the loader before loading. */
#define RINGBUF_MAP(name)                     \
    struct {                                  \
        __uint(type, BPF_MAP_TYPE_RINGBUF);   \
        __uint(max_entries, 16 << 20);        \
    } name SEC(".maps")
#define RINGBUF_UNREAD(name) bpf_ringbuf_query(&name, BPF_RB_AVAIL_DATA)

#define CONFIG(field) (capture_config.field)
/* Load-time constants, written by the loader into .rodata before loading:
 * the verifier prunes what they switch off. */
#define LOAD_TIME_CONSTANTS(type, name) const volatile type name = {}

/* Kernel structs are read with CO-RE relocations (bpf/capture_btf.h). */
#define FRONTEND_BTF 1

/* One step per bpf_loop call (Linux 5.17+): the verifier checks the step
 * once, however many times it runs. */
#define FRONTEND_LOOP_STEPS(core_steps, bcc_steps) (core_steps)
#define BOUNDED_LOOP(steps, step, ctx) bpf_loop(steps, step, ctx, 0)
/* The raw syscall tracepoints' register frame, read with CO-RE relocations. */
#define SYSCALL_FRAME 1

char LICENSE[] SEC("license") = "GPL";

extern bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;

/* With a syscall wrapper the kprobe sees the wrapper's pt_regs, whose first
 * argument points at the user-space registers. */
static __always_inline struct pt_regs *syscall_regs(struct pt_regs *ctx)
{
    if (LINUX_HAS_SYSCALL_WRAPPER)
        return (struct pt_regs *)PT_REGS_PARM1(ctx);
    return ctx;
}

/* Per-syscall hooks: the tracepoints, fentry/fexit on the syscall
 * functions, and the ksyscall kprobes.  The syscall functions take the user
 * registers as their one argument. */
#define HOOK_ENTER(name)                                                            \
    HOOK_ENTER_TRACEPOINT(name)                                                     \
    SEC("fentry/" SYSCALL_SYMBOL(name))                                             \
    int BPF_PROG(fe_enter_##name, struct pt_regs *regs)                             \
    {                                                                               \
        return syscall_enter(NR_##name, PT_REGS_PARM1_CORE_SYSCALL(regs),           \
                             PT_REGS_PARM2_CORE_SYSCALL(regs),                      \
                             PT_REGS_PARM3_CORE_SYSCALL(regs));                     \
    }                                                                               \
    SEC("ksyscall/" #name)                                                          \
    int ks_enter_##name(struct pt_regs *ctx)                                        \
    {                                                                               \
        struct pt_regs *regs = syscall_regs(ctx);                                   \
        return syscall_enter(NR_##name, PT_REGS_PARM1_CORE_SYSCALL(regs),           \
                             PT_REGS_PARM2_CORE_SYSCALL(regs),                      \
                             PT_REGS_PARM3_CORE_SYSCALL(regs));                     \
    }
#define HOOK_EXIT(name)                                                             \
    HOOK_EXIT_TRACEPOINT(name)                                                      \
    SEC("fexit/" SYSCALL_SYMBOL(name))                                              \
    int BPF_PROG(fe_exit_##name, struct pt_regs *regs, long ret)                    \
    {                                                                               \
        return syscall_exit(NR_##name, ret);                                        \
    }                                                                               \
    SEC("kretsyscall/" #name)                                                       \
    int ks_exit_##name(struct pt_regs *ctx)                                         \
    {                                                                               \
        return syscall_exit(NR_##name, PT_REGS_RC(ctx));                            \
    }

/* Syscalls the CO-RE build hooks at their exit only: reads (on_read_exit),
 * and accept, whose result is all it needs. */
#define HOOK_SYSCALL_AT_EXIT(name) HOOK_EXIT(name)
#define HOOK_READ(name) HOOK_SYSCALL_AT_EXIT(name)
#define HOOK_WRITE(name) HOOK_SYSCALL(name)

#endif

/* Per-syscall tracepoints: the hook family every build and every kernel
 * with tracefs has. */
#define HOOK_ENTER_TRACEPOINT(name)                                                 \
    SEC("tracepoint/syscalls/sys_enter_" #name)                                     \
    int tp_enter_##name(struct trace_event_raw_sys_enter *ctx)                      \
    {                                                                               \
        return syscall_enter(NR_##name, ctx->args[0], ctx->args[1], ctx->args[2]);  \
    }
#define HOOK_EXIT_TRACEPOINT(name)                                                  \
    SEC("tracepoint/syscalls/sys_exit_" #name)                                      \
    int tp_exit_##name(struct trace_event_raw_sys_exit *ctx)                        \
    {                                                                               \
        return syscall_exit(NR_##name, ctx->ret);                                   \
    }

#define HOOK_SYSCALL(name) HOOK_ENTER(name) HOOK_EXIT(name)

#endif
