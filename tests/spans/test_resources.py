"""Process resources read from /proc, with real processes."""
from __future__ import annotations

import datetime
import shutil
import subprocess
import time

from agent.spans.resources import ResourceCache, process_environment


def _started_sleep(env: dict | None = None) -> subprocess.Popen:
    """sleep, once its new image is in place.  Popen returns at exec's point
    of no return, before the kernel has set up the new image's environment
    (/proc/PID/environ reads empty until then); the agent reads it at the
    kernel's exec event, which comes after."""
    proc = subprocess.Popen([shutil.which("sleep"), "30"], env=env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            if f.read(1):
                break
        time.sleep(0.001)
    return proc


def _gone_process(cache: ResourceCache | None = None, env: dict | None = None) -> int:
    """A process that exists long enough for cache.exec_seen, then exits."""
    proc = _started_sleep(env)
    if cache is not None:
        cache.exec_seen([proc.pid])
    proc.kill()
    proc.wait()
    return proc.pid


def test_a_process_gone_before_its_resource_is_read_keeps_the_name_read_at_exec():
    cache = ResourceCache(host_attributes=[])
    pid = _gone_process(cache)
    attributes = dict(cache.attributes_of(pid))
    assert attributes["process.executable.name"] == "sleep"
    assert attributes["process.executable.path"].endswith("/sleep")
    assert attributes["service.name"] == "unknown_service:sleep"
    # Without the exec-time read, only the kernel's name (or none) is left.
    cache.exited(pid)
    assert dict(cache.attributes_of(pid))["process.executable.name"] == f"pid-{pid}"
    other = _gone_process()
    assert dict(ResourceCache(host_attributes=[], exited_name=lambda p: "sleep-kept")
                .attributes_of(other))["process.executable.name"] == "sleep-kept"


def test_a_process_gone_before_its_resource_is_read_keeps_its_declared_service():
    cache = ResourceCache(host_attributes=[])
    pid = _gone_process(cache, env={"OTEL_SERVICE_NAME": "nightly-report",
                                    "OTEL_RESOURCE_ATTRIBUTES": "team=billing",
                                    "SECRET_TOKEN": "not-kept"})
    attributes = dict(cache.attributes_of(pid))
    assert attributes["service.name"] == "nightly-report"
    assert attributes["team"] == "billing"
    assert "not-kept" not in repr(cache._at_exec)
    cache.exited(pid)
    assert dict(cache.attributes_of(pid))["service.name"] == f"unknown_service:pid-{pid}"


def test_exec_time_reads_are_bounded():
    cache = ResourceCache(host_attributes=[], max_entries=2)
    procs = [subprocess.Popen([shutil.which("sleep"), "30"]) for _ in range(4)]
    try:
        cache.exec_seen([p.pid for p in procs] + [999_999_999])
        assert len(cache._at_exec) == 2
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_only_otel_variables_are_read_whole():
    proc = _started_sleep({
        "A": "1", "OTEL_SERVICE_NAME": "svc=with=equals", "XOTEL_SERVICE_NAME": "no",
        "OTEL_EMPTY": "", "PATH_OTEL_": "no", "OTEL_RESOURCE_ATTRIBUTES": "a=b,c=d"})
    try:
        assert process_environment(proc.pid) == {
            "OTEL_SERVICE_NAME": "svc=with=equals", "OTEL_EMPTY": "",
            "OTEL_RESOURCE_ATTRIBUTES": "a=b,c=d"}
    finally:
        proc.kill()
        proc.wait()
    assert process_environment(proc.pid) == {}


def _exec_record(pid: int, start_boottime_ns: int, filename: bytes) -> bytes:
    from agent.capture.exec_record import RECORD_SIZE
    from agent.capture.records import C, ffi
    record = ffi.new("struct process_exec_record *")
    record.hdr.type = C["EVENT_PROCESS_EXEC"]
    record.hdr.pid = pid
    record.start_boottime_ns = start_boottime_ns
    record.filename = filename
    return bytes(ffi.buffer(record, RECORD_SIZE))


def test_a_process_gone_before_exec_seen_keeps_what_its_exec_record_said():
    from agent.capture.exec_record import parse_exec_record
    cache = ResourceCache(host_attributes=[])
    pid = _gone_process()
    started_boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 2_000_000_000
    cache.exec_recorded([parse_exec_record(_exec_record(pid, started_boot_ns, b"/usr/bin/curl"))])
    cache.exec_seen([pid])   # /proc is gone: what the record said stays
    attributes = dict(cache.attributes_of(pid))
    assert attributes["process.executable.path"] == "/usr/bin/curl"
    assert attributes["process.executable.name"] == "curl"
    created = datetime.datetime.fromisoformat(attributes["process.creation.time"]).timestamp()
    assert abs(created - (time.time() - 2.0)) < 0.5


def test_an_exec_record_without_a_start_or_an_absolute_path_adds_nothing():
    from agent.capture.exec_record import parse_exec_record
    cache = ResourceCache(host_attributes=[])
    pid = _gone_process()
    cache.exec_recorded([parse_exec_record(_exec_record(pid, 0, b"./relative")),
                         parse_exec_record(b"\0" * 16)])
    attributes = dict(cache.attributes_of(pid))
    assert "process.creation.time" not in attributes
    assert "process.executable.path" not in attributes
