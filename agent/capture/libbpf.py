"""cffi (ABI mode) bindings to the system's libbpf.so.1.

Only what the loader uses.  libbpf 1.x reports errors as NULL plus errno or
as a negative errno; both become LibbpfError here with the log lines libbpf
printed (verifier output included) attached.
"""
from __future__ import annotations

import errno
import os
import threading

import cffi

ffi = cffi.FFI()
ffi.cdef("""
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct btf;

struct btf_type {
    uint32_t name_off;
    uint32_t info;
    uint32_t size_or_type;
};
struct btf_var_secinfo {
    uint32_t type;
    uint32_t offset;
    uint32_t size;
};

/* va_list travels as a pointer on x86-64 and arm64; cffi has no va_list. */
typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *args);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
int vsnprintf(char *str, size_t size, const char *format, void *args);

struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
bool bpf_program__autoload(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
/* BPF_LINK_CREATE for uprobe_multi links, which libbpf 1.1 predates. */
struct uprobe_multi_link_attr {
    uint32_t prog_fd;
    uint32_t target_fd;
    uint32_t attach_type;
    uint32_t flags;
    uint64_t path;
    uint64_t offsets;
    uint64_t ref_ctr_offsets;
    uint64_t cookies;
    uint32_t cnt;
    uint32_t multi_flags;
    uint32_t pid;
    uint32_t pad;
};
/* BPF_LINK_CREATE of a perf-event link with its BPF cookie.  Made here
 * rather than by libbpf so that programs BCC loaded attach the same way. */
struct perf_event_link_attr {
    uint32_t prog_fd;
    uint32_t target_fd;
    uint32_t attach_type;
    uint32_t flags;
    uint64_t bpf_cookie;
};
/* struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1), as a probe
 * PMU reads it: config1 is the file's path, config2 the offset in it. */
struct perf_event_attr_probe {
    uint32_t type;
    uint32_t size;
    uint64_t config;
    uint64_t sample_period;
    uint64_t sample_type;
    uint64_t read_format;
    uint64_t flags;
    uint32_t wakeup_events;
    uint32_t bp_type;
    uint64_t probe_path;
    uint64_t probe_offset;
};
long syscall(long number, ...);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_program__set_expected_attach_type(struct bpf_program *prog, int type);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_link__destroy(struct bpf_link *link);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);
void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);

int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

int btf__find_by_name_kind(const struct btf *btf, const char *type_name, uint32_t kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, uint32_t id);
const char *btf__name_by_offset(const struct btf *btf, uint32_t offset);

int libbpf_num_possible_cpus(void);
int libbpf_probe_bpf_prog_type(int prog_type, const void *opts);
int libbpf_probe_bpf_map_type(int map_type, const void *opts);
int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts);
""")

BTF_KIND_DATASEC = 15
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_FUNC_LOOP = 181
BPF_LINK_CREATE = 28
BPF_PERF_EVENT = 41
BPF_TRACE_UPROBE_MULTI = 48
BPF_F_UPROBE_MULTI_RETURN = 1
SYS_BPF = {"x86_64": 321, "aarch64": 280}
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PERF_FLAG_FD_CLOEXEC = 8

_lib = None
_libc = ffi.dlopen(None)


def libc():
    """The C library, for the raw bpf() calls libbpf 1.1 cannot make."""
    return _libc


def _syscall(numbers: dict[str, int], *args) -> int:
    number = numbers.get(os.uname().machine)
    if number is None:
        return -errno.ENOSYS
    return _libc.syscall(ffi.cast("long", number), *args)


def bpf_syscall(cmd: int, attr, size: int) -> int:
    """bpf(cmd, attr, size): its result, negative on failure."""
    return _syscall(SYS_BPF, ffi.cast("long", cmd), attr, ffi.cast("unsigned long", size))


def perf_event_open(attr, pid: int, cpu: int) -> int:
    return _syscall(SYS_PERF_EVENT_OPEN, attr, ffi.cast("int", pid), ffi.cast("int", cpu),
                    ffi.cast("int", -1), ffi.cast("unsigned long", PERF_FLAG_FD_CLOEXEC))
_log_lock = threading.Lock()
_log_lines: list[str] = []
_LOG_KEEP = 400


class LibbpfError(OSError):
    """A libbpf call failed; .log holds what libbpf printed just before."""

    def __init__(self, err: int, what: str, log: list[str]):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.log = log


@ffi.callback("int(int, const char *, void *)")
def _print(level, fmt, args):
    buf = ffi.new("char[2048]")
    _libc.vsnprintf(buf, 2048, fmt, args)
    with _log_lock:
        _log_lines.append(ffi.string(buf).decode(errors="replace").rstrip("\n"))
        del _log_lines[:-_LOG_KEEP]
    return 0


def lib():
    """The loaded library, with its log captured instead of printed."""
    global _lib
    if _lib is None:
        try:
            _lib = ffi.dlopen("libbpf.so.1")
        except OSError as exc:
            raise OSError(errno.ENOENT, "libbpf.so.1 not found: install libbpf1 "
                          "(Debian: apt-get install libbpf1)") from exc
        _lib.libbpf_set_print(_print)
    return _lib


def take_log() -> list[str]:
    with _log_lock:
        lines = list(_log_lines)
        _log_lines.clear()
    return lines


def check_ptr(ptr, what: str):
    if ptr == ffi.NULL:
        raise LibbpfError(ffi.errno or errno.EINVAL, what, take_log())
    return ptr


def check_ret(ret: int, what: str) -> int:
    if ret < 0:
        raise LibbpfError(-ret, what, take_log())
    return ret
