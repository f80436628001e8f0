"""bpf/cache_classify.h inside the kernel: a tracepoint program on
write(2) classifies the bytes this test writes to /dev/null with the
header's four functions; the verifier must accept it, and for every
message start of the recorded Redis and memcached traffic and of the
other protocols' fixtures, the kernel's answer must be the Python
classifiers' answer.  Built twice: by clang for libbpf (the CO-RE
build's compiler) and by BCC (its own LLVM, which inlines the header into
every capture program of the BCC build)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from agent.capture import kernel_headers, libbpf
from agent.capture.bcc_loader import translate_map_calls
from agent.capture.kernel_features import ensure_tracefs
from agent.capture.libbpf import check_ptr, check_ret, ffi
from agent.parsers.memcached import looks_like_memcached_reply, looks_like_memcached_request
from agent.parsers.redis import looks_like_redis_reply, looks_like_redis_request

from conftest import ROOT, skip_reason

sys.path.insert(0, str(ROOT / "tests"))
from fuzzing import fixture_files  # noqa: E402

pytestmark = pytest.mark.kernel

LIBBPF_PREAMBLE = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} cache_test SEC(".maps");
"""

# BCC has its helpers included already and names programs itself; the
# program's libbpf map calls are translated as the BCC loader translates
# the capture's.
BCC_PREAMBLE = r"""
#define SEC(name)
BPF_ARRAY(cache_test, __u64, 4);
"""

# cache_test: [0] tgid, [1] fd to watch; [2] answer, [3] writes seen.
PROGRAM = r"""
#include "cache_classify.h"

/* syscalls/sys_enter_write's record: the common header, the syscall
 * number, then fd, buf, count. */
struct write_args {
    __u64 common;
    __s32 nr;
    __u32 pad;
    __u64 fd;
    __u64 buf;
    __u64 count;
};

SEC("tracepoint/syscalls/sys_enter_write")
int classify_write(struct write_args *ctx)
{
    __u32 k0 = 0, k1 = 1, k2 = 2, k3 = 3;
    __u64 *tgid = bpf_map_lookup_elem(&cache_test, &k0);
    __u64 *fd = bpf_map_lookup_elem(&cache_test, &k1);
    __u64 *answer = bpf_map_lookup_elem(&cache_test, &k2);
    __u64 *seen = bpf_map_lookup_elem(&cache_test, &k3);
    if (!tgid || !fd || !answer || !seen)
        return 0;
    if ((bpf_get_current_pid_tgid() >> 32) != *tgid || ctx->fd != *fd)
        return 0;
    unsigned char buf[CACHE_CLASSIFY_WINDOW] = {};
    __u64 len = ctx->count;
    if (len > CACHE_CLASSIFY_WINDOW)
        len = CACHE_CLASSIFY_WINDOW;
    if (len && bpf_probe_read_user(buf, len & (CACHE_CLASSIFY_WINDOW * 2 - 1), (void *)ctx->buf))
        return 0;
    unsigned n = (unsigned)ctx->count;
    *answer = is_redis_request(buf, n) | is_redis_reply(buf, n) << 1 |
              is_memcached_request(buf, n) << 2 | is_memcached_reply(buf, n) << 3;
    __sync_fetch_and_add(seen, 1);
    return 0;
}
"""


def _python_answer(data: bytes) -> int:
    return (looks_like_redis_request(data) | looks_like_redis_reply(data) << 1
            | looks_like_memcached_request(data) << 2 | looks_like_memcached_reply(data) << 3)


def _libbpf_program(tmp_path_factory):
    """The program built by clang and loaded with libbpf: (the map's
    lookup and update functions, the closer)."""
    clang = shutil.which("clang-19") or shutil.which("clang")
    if clang is None:
        pytest.skip("no clang for the BPF target")
    tmp = tmp_path_factory.mktemp("cache_kernel")
    (tmp / "prog.bpf.c").write_text(LIBBPF_PREAMBLE + PROGRAM +
                                    'char LICENSE[] SEC("license") = "GPL";\n')
    obj = tmp / "prog.bpf.o"
    subprocess.run([clang, "-target", "bpf", "-g", "-O2", "-Wall", "-I", str(ROOT / "bpf"),
                    "-I", "/usr/include/x86_64-linux-gnu", "-c", str(tmp / "prog.bpf.c"),
                    "-o", str(obj)], check=True)
    lib = libbpf.lib()
    bpf_obj = check_ptr(lib.bpf_object__open_file(str(obj).encode(), ffi.NULL), "open")
    link = ffi.NULL

    def close() -> None:
        if link != ffi.NULL:
            lib.bpf_link__destroy(link)
        lib.bpf_object__close(bpf_obj)
    try:
        check_ret(lib.bpf_object__load(bpf_obj), "load (verifier)")
        prog = check_ptr(lib.bpf_object__find_program_by_name(bpf_obj, b"classify_write"), "program")
        link = check_ptr(lib.bpf_program__attach(prog), "attach sys_enter_write")
    except BaseException:
        close()
        raise
    map_fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(bpf_obj, b"cache_test"))

    def put(index: int, value: int) -> None:
        check_ret(lib.bpf_map_update_elem(map_fd, ffi.new("uint32_t *", index),
                                          ffi.new("uint64_t *", value), 0), "update")

    def get(index: int) -> int:
        out = ffi.new("uint64_t *")
        check_ret(lib.bpf_map_lookup_elem(map_fd, ffi.new("uint32_t *", index), out), "lookup")
        return out[0]
    return get, put, close


def _bcc_program():
    """The program compiled by BCC against the kernel headers it finds."""
    reason = skip_reason("bcc")
    if reason:
        pytest.skip(reason)
    ensure_tracefs()
    import ctypes

    from bcc import BPF
    headers = kernel_headers.find(None)
    previous = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    try:
        bpf = BPF(text=translate_map_calls(BCC_PREAMBLE + PROGRAM).encode(),
                  cflags=[f"-I{ROOT / 'bpf'}"])
        bpf.attach_tracepoint(tp=b"syscalls:sys_enter_write", fn_name=b"classify_write")
    except BaseException:
        headers.close()
        raise
    finally:
        if previous is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = previous
    table = bpf[b"cache_test"]

    def put(index: int, value: int) -> None:
        table[ctypes.c_int(index)] = ctypes.c_uint64(value)

    def get(index: int) -> int:
        return table[ctypes.c_int(index)].value

    def close() -> None:
        bpf.cleanup()
        headers.close()
    return get, put, close


@pytest.fixture(scope="module", params=["clang", "bcc"])
def classifier(request, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (CAP_BPF)")
    if request.param == "clang":
        get, put, close = _libbpf_program(tmp_path_factory)
    else:
        get, put, close = _bcc_program()
    try:
        with open(os.devnull, "wb", buffering=0) as sink:
            put(0, os.getpid())
            put(1, sink.fileno())

            def classify(data: bytes) -> int:
                before = get(3)
                os.write(sink.fileno(), data)
                assert get(3) == before + 1, "the program did not see the write"
                return get(2)
            yield classify
    finally:
        close()


def _message_starts():
    """Every 'interesting' start: each fixture stream's beginning and its
    first bytes cut short, plus the starts of the recorded cache traffic
    found by a cheap scan for the first byte of a message."""
    for sub in ("redis", "memcached", "http1", "http2", "postgres", "mysql"):
        for name, data in fixture_files(sub):
            for i in (1, 3, 5, 8, 16, 31, 32, 64):
                yield data[:i]
            if sub in ("redis", "memcached"):
                for i in range(0, min(len(data), 4096)):
                    if i == 0 or data[i - 1] == 0x0A:
                        yield data[i:i + 64]


def test_kernel_answers_match_python(classifier):
    checked = 0
    recognised = 0
    for data in _message_starts():
        if not data:
            continue
        want = _python_answer(data)
        assert classifier(data) == want, data[:32]
        checked += 1
        recognised += bool(want)
    assert checked > 500 and recognised > 200
