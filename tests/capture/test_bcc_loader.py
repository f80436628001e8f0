"""The BCC front end's source handling: map helper calls in BCC's spelling,
program sections, the tracepoint layout check and the compiler definitions.
No privilege needed: nothing is compiled or loaded, and bcc is not imported."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.capture.bcc_loader import (TranslationError, check_tracepoint_layout, compile_flags,
                              program_sections, shared_exit_programs, translate_map_calls,
                              unity_source)
from agent.capture.loader import CaptureLoadError, CaptureSettings

HELPERS = ("bpf_map_lookup_elem", "bpf_map_update_elem", "bpf_map_delete_elem",
           "bpf_ringbuf_output")
SOURCE_DIR = Path(__file__).resolve().parents[2] / "bpf"
METHODS = (".lookup(", ".update(", ".insert(", ".delete(", ".ringbuf_output(")


def real_source() -> str:
    return unity_source(SOURCE_DIR / "capture.bpf.c")


def hooked_syscalls(source: str) -> list[str]:
    return re.findall(r"^HOOK_(?:SYSCALL(?:_AT_EXIT)?|READ|WRITE)\((\w+)\)\s*$", source, re.MULTILINE)


# ---- translate_map_calls ----------------------------------------------------

@pytest.mark.parametrize("libbpf, bcc", [
    ("v = bpf_map_lookup_elem(&conns, &key);", "v = conns.lookup(&key);"),
    ("bpf_map_update_elem(&conns, &key, &info, BPF_ANY);", "conns.update(&key, &info);"),
    ("bpf_map_update_elem(&conns, &key, &info, BPF_NOEXIST);", "conns.insert(&key, &info);"),
    ("bpf_map_delete_elem(&active_io, &id);", "active_io.delete(&id);"),
    ("if (bpf_ringbuf_output(&events, record, size, 0))",
     "if (events.ringbuf_output(record, size, 0))"),
    ("bpf_map_lookup_elem( &conns ,&key )", "conns.lookup(&key)"),
], ids=["lookup", "update-any", "update-noexist-is-insert", "delete", "ringbuf-output",
        "whitespace"])
def test_each_helper_becomes_its_bcc_method(libbpf, bcc):
    assert translate_map_calls(libbpf) == bcc


def test_nested_parentheses_and_commas_stay_inside_their_argument():
    source = "bpf_map_update_elem(&m, &key, &(struct x){.a = f(1, 2)}, BPF_ANY);"
    assert translate_map_calls(source) == "m.update(&key, &(struct x){.a = f(1, 2)});"


def test_casts_calls_and_subscripts_in_arguments():
    source = ("bpf_map_lookup_elem(&ssl_fds, (struct ssl_key *)&keys[idx(a, b)]);\n"
              "bpf_ringbuf_output(&events, (void *)(buf + off(1, 2)), min(n, (__u64)4), 0);")
    assert translate_map_calls(source) == (
        "ssl_fds.lookup((struct ssl_key *)&keys[idx(a, b)]);\n"
        "events.ringbuf_output((void *)(buf + off(1, 2)), min(n, (__u64)4), 0);")


def test_arguments_spanning_lines_are_translated():
    source = "bpf_map_update_elem(&conns,\n                    &key,\n                    &info, BPF_ANY);"
    assert translate_map_calls(source) == "conns.update(&key, &info);"


def test_text_around_calls_is_left_byte_identical():
    before = "/* header */\n\tstruct x *p =  "
    between = ";\r\n  if (!p)\treturn 0; // bpf_map_lookup_elem(conns) in a comment\n    "
    after = ";\n\n#endif  \n"
    source = (before + "bpf_map_lookup_elem(&conns, &key)" + between
              + "bpf_map_delete_elem(&conns, &key)" + after)
    assert translate_map_calls(source) == before + "conns.lookup(&key)" + between + \
        "conns.delete(&key)" + after


def test_source_without_helper_calls_is_unchanged():
    source = "int f(void)\n{\n    return g(&conns, 1);\n}\n"
    assert translate_map_calls(source) == source
    assert translate_map_calls("") == ""


def test_helper_on_a_map_pointer_not_spelled_ampersand_name_is_left_alone():
    source = ("void *map = &conns;\n"
              "bpf_map_lookup_elem(map, &key);\n"
              "bpf_map_update_elem(maps[0], &key, &value, BPF_ANY);\n"
              "bpf_map_delete_elem(*mapp, &key);\n")
    assert translate_map_calls(source) == source


def test_similar_names_are_not_helpers():
    source = "my_bpf_map_lookup_elem(&conns, &key); bpf_map_lookup_elem_x(&conns, &key);"
    assert translate_map_calls(source) == source


def test_unsupported_update_flag_names_the_line():
    source = "int x;\n\nbpf_map_update_elem(&conns, &key, &info, BPF_EXIST);\n"
    with pytest.raises(TranslationError, match=r"line 3\b.*bpf_map_update_elem"):
        translate_map_calls(source)


def test_numeric_update_flag_has_no_bcc_spelling():
    with pytest.raises(TranslationError, match="line 1"):
        translate_map_calls("bpf_map_update_elem(&conns, &key, &info, 0);")


def test_wrong_argument_count_is_refused():
    with pytest.raises(TranslationError, match="line 2"):
        translate_map_calls("\nbpf_map_lookup_elem(&conns, &key, extra);")
    with pytest.raises(TranslationError):
        translate_map_calls("bpf_ringbuf_output(&events, record, size);")


def test_unbalanced_parentheses_are_refused():
    with pytest.raises(TranslationError, match="unbalanced"):
        translate_map_calls("bpf_map_lookup_elem(&conns, f(&key);\n")
    with pytest.raises(TranslationError, match="unbalanced"):
        translate_map_calls("bpf_map_update_elem(&conns, &key, &(struct x){.a = 1, BPF_ANY);")


def test_real_source_keeps_no_libbpf_map_helper_on_a_named_map():
    translated = translate_map_calls(real_source())
    for helper in HELPERS:
        assert f"{helper}(&" not in translated


def test_real_source_gets_one_method_call_per_helper_call():
    source = real_source()
    calls = len(re.findall(r"\b(?:%s)\(" % "|".join(HELPERS), source))
    assert calls > 20
    translated = translate_map_calls(source)
    methods = sum(len(re.findall(r"\b\w+" + re.escape(method), translated))
                  - len(re.findall(r"\b\w+" + re.escape(method), source)) for method in METHODS)
    assert methods == calls


def test_real_source_translation_changes_only_the_calls():
    """Same lines; a line without a helper call is untouched, and one with a
    call is untouched up to it (compiler messages keep their line numbers)."""
    source = real_source()
    translated = translate_map_calls(source)
    before, after = source.split("\n"), translated.split("\n")
    assert len(before) == len(after)
    helper = re.compile(r"\b(?:%s)\(&(\w+)" % "|".join(HELPERS))
    for old, new in zip(before, after):
        call = helper.search(old)
        if call is None:
            assert new == old
        else:
            assert new.startswith(old[:call.start()] + call.group(1) + ".")


# ---- program_sections -------------------------------------------------------

def test_every_hooked_syscall_gets_its_two_tracepoints():
    source = real_source()
    syscalls = hooked_syscalls(source)
    assert {"read", "write", "accept4", "connect", "close"} <= set(syscalls)
    sections = program_sections(source)
    for syscall in syscalls:
        assert sections[f"tp_enter_{syscall}"] == f"tracepoint/syscalls/sys_enter_{syscall}"
        assert sections[f"tp_exit_{syscall}"] == f"tracepoint/syscalls/sys_exit_{syscall}"
    assert sections["tp_enter_read"] == "tracepoint/syscalls/sys_enter_read"
    assert sections["tp_exit_accept4"] == "tracepoint/syscalls/sys_exit_accept4"


def test_reads_and_writes_share_one_exit_program_per_kind():
    """The BCC build compiles one exit program for every read and one for
    every write (bpf/frontend.h HOOK_READ, HOOK_WRITE); each exit
    tracepoint of those syscalls is attached to its kind's program."""
    source = real_source()
    shared = shared_exit_programs(source)
    assert shared["tp_exit_read"] == shared["tp_exit_recvmsg"] == "tp_exit_reads"
    assert shared["tp_exit_write"] == shared["tp_exit_sendfile64"] == "tp_exit_writes"
    assert "tp_exit_accept4" not in shared and "tp_exit_connect" not in shared
    for program in set(shared.values()):
        assert f"int {program}(struct trace_event_raw_sys_exit *ctx)" in source


def test_synthesised_tracepoint_sections_match_the_hook_macro():
    """program_sections() writes out what HOOK_SYSCALL_TRACEPOINTS expands to:
    a change to the macro's names must change the loader too."""
    source = real_source()
    assert 'SEC("tracepoint/syscalls/sys_enter_" #name)' in source
    assert "int tp_enter_##name(" in source
    assert 'SEC("tracepoint/syscalls/sys_exit_" #name)' in source
    assert "int tp_exit_##name(" in source


def test_sections_written_with_sec_are_read():
    sections = program_sections(real_source())
    assert sections["common_process_exit"] == "raw_tracepoint/sched_process_exit"
    assert sections["tls_enter"] == "uprobe"
    assert sections["tls_exit"] == "uretprobe"


def test_macro_bodies_and_non_program_sections_are_not_programs():
    sections = program_sections(real_source())
    assert not any("##" in name or "#" in section for name, section in sections.items())
    assert "license" not in sections.values()
    assert ".maps" not in sections.values()
    assert all(re.fullmatch(r"\w+", name) for name in sections)


def test_sections_of_a_small_source():
    source = ('SEC("kprobe/do_sys_open")\nint  probe_open (struct pt_regs *ctx)\n{ return 0; }\n'
              "HOOK_SYSCALL(openat)\n"
              "HOOK_SYSCALL_AT_EXIT(pread64)\n"
              "    HOOK_SYSCALL(not_at_line_start)\n")
    assert program_sections(source) == {
        "probe_open": "kprobe/do_sys_open",
        "tp_enter_openat": "tracepoint/syscalls/sys_enter_openat",
        "tp_exit_openat": "tracepoint/syscalls/sys_exit_openat",
        # The CO-RE build hooks its exit only; the BCC build both ends.
        "tp_enter_pread64": "tracepoint/syscalls/sys_enter_pread64",
        "tp_exit_pread64": "tracepoint/syscalls/sys_exit_pread64",
    }


# ---- check_tracepoint_layout ------------------------------------------------

# Verbatim from /sys/kernel/tracing/events/syscalls/*/format (Linux 6.18, x86_64).
COMMON_FIELDS = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
    "\n"
    "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
)

SYS_ENTER_READ = (
    "name: sys_enter_read\n"
    "ID: 842\n"
    "format:\n"
    + COMMON_FIELDS +
    "\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;\n"
    "\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;\n"
    "\n"
    'print fmt: "fd: 0x%08lx, buf: 0x%08lx, count: 0x%08lx", ((unsigned long)(REC->fd)), '
    "((unsigned long)(REC->buf)), ((unsigned long)(REC->count))\n"
)

SYS_EXIT_READ = (
    "name: sys_exit_read\n"
    "ID: 841\n"
    "format:\n"
    + COMMON_FIELDS +
    "\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n"
    "\n"
    'print fmt: "0x%lx", REC->ret\n'
)

SYS_ENTER_CLOSE = (
    "name: sys_enter_close\n"
    "ID: 776\n"
    "format:\n"
    + COMMON_FIELDS +
    "\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\n"
    'print fmt: "fd: 0x%08lx", ((unsigned long)(REC->fd))\n'
)


def write_format(tracefs: Path, event: str, text: str) -> Path:
    path = tracefs / "events" / "syscalls" / event / "format"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("sys_enter_read", event).replace("sys_exit_read", event))
    return path


def fake_tracefs(root: Path, syscalls: list[str], enter: str = SYS_ENTER_READ,
                 exit_: str = SYS_EXIT_READ) -> Path:
    for syscall in syscalls:
        write_format(root, f"sys_enter_{syscall}", enter)
        write_format(root, f"sys_exit_{syscall}", exit_)
    return root


def test_kernel_layout_passes_for_every_hooked_syscall(tmp_path):
    syscalls = hooked_syscalls(real_source())
    tracefs = fake_tracefs(tmp_path, syscalls)
    check_tracepoint_layout(str(tracefs), syscalls)


def test_syscall_with_fewer_arguments_passes(tmp_path):
    tracefs = fake_tracefs(tmp_path, ["close"], enter=SYS_ENTER_CLOSE)
    check_tracepoint_layout(str(tracefs), ["close"])


def test_no_syscalls_checks_nothing(tmp_path):
    check_tracepoint_layout(str(tmp_path / "no-tracefs"), [])


@pytest.mark.parametrize("event, old, new, words", [
    ("sys_exit_read", "field:long ret;\toffset:16;", "field:long ret;\toffset:24;", ["ret"]),
    ("sys_exit_read", "field:long ret;\toffset:16;\tsize:8;", "field:int ret;\toffset:16;\tsize:4;",
     ["ret"]),
    # A kernel whose common header grew (e.g. PREEMPT_RT's extra fields).
    ("sys_enter_read", "__syscall_nr;\toffset:8;", "__syscall_nr;\toffset:12;", ["__syscall_nr"]),
    # Packed arguments: a 4-byte fd slot.
    ("sys_enter_read", "field:unsigned int fd;\toffset:16;\tsize:8;",
     "field:unsigned int fd;\toffset:16;\tsize:4;", ["8-byte slots"]),
    # Arguments starting after a padded header.
    ("sys_enter_read", "fd;\toffset:16;", "fd;\toffset:24;", ["8-byte slots"]),
    # A gap between two slots.
    ("sys_enter_read", "count;\toffset:32;", "count;\toffset:40;", ["8-byte slots"]),
], ids=["ret moved", "ret narrower", "syscall number moved", "4-byte slot",
        "first slot at 24", "gap"])
def test_a_layout_other_than_the_build_assumes_is_refused(tmp_path, event, old, new, words):
    original = SYS_EXIT_READ if event == "sys_exit_read" else SYS_ENTER_READ
    changed = original.replace(old, new)
    assert changed != original
    tracefs = fake_tracefs(tmp_path, ["read"], **({"exit_": changed} if event == "sys_exit_read"
                                                  else {"enter": changed}))
    with pytest.raises(CaptureLoadError) as raised:
        check_tracepoint_layout(str(tracefs), ["read"])
    message = str(raised.value)
    for word in [str(tracefs / "events" / "syscalls" / event / "format"), "--loader core", *words]:
        assert word in message


def test_only_the_bad_syscall_is_named(tmp_path):
    tracefs = fake_tracefs(tmp_path, ["read", "write"])
    moved = SYS_EXIT_READ.replace("offset:16;\tsize:8;\tsigned:1;\n\n",
                                  "offset:20;\tsize:8;\tsigned:1;\n\n")
    write_format(tracefs, "sys_exit_write", moved)
    with pytest.raises(CaptureLoadError, match="sys_exit_write/format"):
        check_tracepoint_layout(str(tracefs), ["read", "write"])


@pytest.mark.parametrize("missing", ["sys_enter_read", "sys_exit_read"])
def test_missing_format_file_is_refused(tmp_path, missing):
    tracefs = fake_tracefs(tmp_path, ["read"])
    path = tracefs / "events" / "syscalls" / missing / "format"
    path.unlink()
    with pytest.raises(CaptureLoadError) as raised:
        check_tracepoint_layout(str(tracefs), ["read"])
    assert str(path) in str(raised.value)


def test_syscall_without_tracepoints_is_refused(tmp_path):
    tracefs = fake_tracefs(tmp_path, ["read"])
    with pytest.raises(CaptureLoadError, match="sys_enter_sendfile64"):
        check_tracepoint_layout(str(tracefs), ["read", "sendfile64"])


def test_this_kernels_tracepoints_have_the_layout():
    tracefs = "/sys/kernel/tracing"
    if not os.access(f"{tracefs}/events/syscalls/sys_enter_read/format", os.R_OK):
        pytest.skip("tracefs is not mounted or not readable here")
    check_tracepoint_layout(tracefs, hooked_syscalls(real_source()))


# ---- compile_flags ----------------------------------------------------------

def definitions(flags: list[str]) -> dict[str, str]:
    found = {}
    for flag in flags:
        if flag.startswith("-D"):
            name, _, value = flag[2:].partition("=")
            found[name] = value
    return found


def config_fields_used() -> set[str]:
    """Every CONFIG(field) the BPF sources read (frontend.h defines the macro)."""
    used = set()
    for path in SOURCE_DIR.glob("*.[ch]"):
        if path.name != "frontend.h":
            used |= set(re.findall(r"\bCONFIG\((\w+)\)", path.read_text()))
    return used


def test_every_config_field_the_source_reads_is_defined():
    used = config_fields_used()
    assert {"agent_tgid", "capture_bytes", "filter_ports", "tls"} <= used
    defined = definitions(compile_flags(CaptureSettings()))
    missing = {name for name in used if f"CONFIG_{name}" not in defined}
    assert not missing, f"CONFIG() fields the BCC build would not get: {sorted(missing)}"


def test_every_capture_config_struct_field_is_defined():
    """A field added to struct capture_config (bpf/events.h) reaches the BCC build."""
    events = (SOURCE_DIR / "events.h").read_text()
    body = re.search(r"struct capture_config \{(.*?)\};", events, re.DOTALL).group(1)
    fields = set(re.findall(r"^\s*__\w+\s+(\w+)\s*;", body, re.MULTILINE))
    assert {"agent_tgid", "tls"} <= fields
    defined = definitions(compile_flags(CaptureSettings()))
    assert {f"CONFIG_{name}" for name in fields} <= set(defined)


def test_definitions_follow_the_settings():
    settings = CaptureSettings(ports={80}, capture_bytes=512, tls=False, pids={1, 2},
                               agent_pid=4242)
    defined = definitions(compile_flags(settings))
    assert defined["CONFIG_filter_ports"] == "1"
    assert defined["CONFIG_filter_pids"] == "1"
    assert defined["CONFIG_filter_cgroups"] == "0"
    assert defined["CONFIG_capture_bytes"] == "512"
    assert defined["CONFIG_tls"] == "0"
    assert defined["CONFIG_agent_tgid"] == "4242"


def test_default_settings_filter_nothing_and_load_tls():
    defined = definitions(compile_flags(CaptureSettings()))
    assert defined["CONFIG_filter_ports"] == "0"
    assert defined["CONFIG_filter_pids"] == "0"
    assert defined["CONFIG_filter_cgroups"] == "0"
    assert defined["CONFIG_tls"] == "1"
    assert defined["CONFIG_capture_bytes"] == "2048"
    assert defined["CONFIG_agent_tgid"] == str(os.getpid())


def test_ring_buffer_pages_are_the_ring_size_in_pages():
    for size in (65536, 1 << 20, 16 << 20):
        defined = definitions(compile_flags(CaptureSettings(ring_buffer_bytes=size)))
        assert defined["RING_BUFFER_PAGES"] == str(size // 4096)


def test_flags_select_the_bcc_build_and_find_its_headers(monkeypatch):
    monkeypatch.delenv("OTEL_EBPF_BPF_SOURCE_DIR", raising=False)
    flags = compile_flags(CaptureSettings())
    assert "-DOTEL_EBPF_BCC" in flags
    includes = [Path(flag[2:]) for flag in flags if flag.startswith("-I")]
    assert SOURCE_DIR in includes
    assert (SOURCE_DIR / "frontend.h").exists()
    assert any(re.fullmatch(r"-D__TARGET_ARCH_\w+", flag) for flag in flags)
    if os.uname().machine == "x86_64":
        assert "-D__TARGET_ARCH_x86" in flags


def test_installed_sources_are_included_from_where_the_image_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_EBPF_BPF_SOURCE_DIR", str(tmp_path))
    assert f"-I{tmp_path}" in compile_flags(CaptureSettings())


# ---- unity_source -----------------------------------------------------------

def test_unity_source_writes_each_local_include_in_once(tmp_path):
    (tmp_path / "main.bpf.c").write_text('#include "a.h"\n#include "b.h"\n#include <linux/bpf.h>\n'
                                         '#include "vmlinux.h"\nint main_body;\n')
    (tmp_path / "a.h").write_text('#include "b.h"\nint a = bpf_map_lookup_elem(&m, &k);\n')
    (tmp_path / "b.h").write_text("int b;\n")
    text = unity_source(tmp_path / "main.bpf.c")
    assert text.count("int b;") == 1 and text.index("int b;") < text.index("int a")
    # Headers the compiler finds elsewhere stay includes.
    assert '#include <linux/bpf.h>' in text and '#include "vmlinux.h"' in text
    assert translate_map_calls(text).count("m.lookup(&k)") == 1


def test_the_capture_reaches_bcc_as_one_text():
    """No project header is left for BCC to include, where it would not
    rewrite map calls (vmlinux.h belongs to the CO-RE build only)."""
    assert not re.search(r'^\s*#\s*include\s+"(?!vmlinux\.h)', real_source(), re.MULTILINE)


def test_raw_syscall_programs_are_compiled_for_their_family_only():
    """BCC compiles every program of its text at start; the raw syscall
    tracepoints' are the largest, and the tracepoint family needs none."""
    assert definitions(compile_flags(CaptureSettings()))["BCC_RAW_SYSCALLS"] == "0"
    assert definitions(compile_flags(CaptureSettings(), "tracepoint"))["BCC_RAW_SYSCALLS"] == "0"
    assert definitions(compile_flags(CaptureSettings(), "raw_tracepoint"))["BCC_RAW_SYSCALLS"] == "1"
