"""The BCC front end: the capture's source compiled at start against kernel
headers, for kernels without BTF (bpf/frontend.h says what differs).

BCC takes one source text and rewrites map access in it and nowhere else
(not in the headers it includes), and only in its own spelling (`conns.lookup(&key)`), while the source is written for
libbpf (`bpf_map_lookup_elem(&conns, &key)`).  unity_source() makes the one text, the
capture's headers and protocol units written in where bpf/capture.bpf.c
includes them, and translate_map_calls() turns the one spelling into the
other; every other difference lives in bpf/frontend.h.
The load-time constants become compiler definitions, since BCC has no
read-only data to write them into.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from agent.capture import kernel_headers
from agent.capture.kernel_features import KernelFeatures
from agent.capture.hook_choice import HOOK_FAMILIES
from agent.capture.loader import CaptureLoadError, CaptureSettings, LoadedCapture, capture_config

DEFAULT_SOURCE_DIR = Path(__file__).resolve().parents[2] / "bpf"
SOURCE = "capture.bpf.c"
PAGE_SIZE = 4096

# `#include "file"`: the project's own headers and units (the <...> ones are BCC's).
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_MAP_CALL = re.compile(r"\b(bpf_map_lookup_elem|bpf_map_update_elem|bpf_map_delete_elem"
                       r"|bpf_ringbuf_output)\(\s*&(\w+)\s*,")
_UPDATE_METHODS = {"BPF_ANY": "update", "BPF_NOEXIST": "insert"}
_SECTION = re.compile(r'SEC\("([^"]+)"\)\s*int\s+(\w+)\s*\(')
# In the BCC build these macros hook a syscall's entry and exit; HOOK_READ
# and HOOK_WRITE's exits are the programs one kind shares (bpf/frontend.h).
_HOOKED_SYSCALL = re.compile(r"^HOOK_(?:SYSCALL(?:_AT_EXIT)?|READ|WRITE)\((\w+)\)", re.MULTILINE)
_SHARED_EXIT = re.compile(r"^HOOK_(READ|WRITE)\((\w+)\)", re.MULTILINE)
# The syscall tracepoint records bpf/frontend.h declares: (event prefix, field, offset, size).
_TRACEPOINT_LAYOUT = (("sys_enter_", "__syscall_nr", 8, 4), ("sys_exit_", "__syscall_nr", 8, 4),
                      ("sys_exit_", "ret", 16, 8))
_HEADER_FIELDS = ("common_type", "common_flags", "common_preempt_count", "common_pid",
                  "__syscall_nr")
_FORMAT_FIELD = re.compile(r"field:[^;]*?(\w+)(?:\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);")


class TranslationError(ValueError):
    pass


def _arguments(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of a call whose '(' precedes start, and
    the index of its ')'."""
    depth, begin, args = 0, start, []
    for index in range(start, len(text)):
        char = text[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                args.append(text[begin:index].strip())
                return args, index
            depth -= 1
        elif char == "," and depth == 0:
            args.append(text[begin:index].strip())
            begin = index + 1
    raise TranslationError("unbalanced parentheses after a map helper call")


def unity_source(path: Path) -> str:
    """The file at path with every `#include "..."` found beside it written
    in its place, recursively, each file once (later includes of it are
    dropped, as its include guard would drop them).  OSError if one cannot
    be read."""
    seen: set[Path] = set()

    def inline(file: Path) -> str:
        seen.add(file.resolve())

        def replace(match: re.Match) -> str:
            included = (file.parent / match.group(1)).resolve()
            if included in seen:
                return f"/* {match.group(1)}: already written in */"
            if not included.exists():   # the CO-RE build's vmlinux.h, from build/
                return match.group(0)
            return f"/* ---- {match.group(1)} */\n{inline(included)}"
        return _LOCAL_INCLUDE.sub(replace, file.read_text())

    return inline(path)


def translate_map_calls(source: str) -> str:
    """libbpf's map helper calls on named maps, in BCC's method spelling."""
    out, position = [], 0
    for match in _MAP_CALL.finditer(source):
        if match.start() < position:
            continue
        helper, name = match.groups()
        args, end = _arguments(source, match.end())
        if helper == "bpf_map_lookup_elem" and len(args) == 1:
            call = f"{name}.lookup({args[0]})"
        elif helper == "bpf_map_delete_elem" and len(args) == 1:
            call = f"{name}.delete({args[0]})"
        elif helper == "bpf_map_update_elem" and len(args) == 3 and args[2] in _UPDATE_METHODS:
            call = f"{name}.{_UPDATE_METHODS[args[2]]}({args[0]}, {args[1]})"
        elif helper == "bpf_ringbuf_output" and len(args) == 3:
            call = f"{name}.ringbuf_output({', '.join(args)})"
        else:
            line = source.count("\n", 0, match.start()) + 1
            raise TranslationError(f"line {line}: {helper} with arguments {args} has no BCC "
                                   "spelling")
        out += [source[position:match.start()], call]
        position = end + 1
    out.append(source[position:])
    return "".join(out)


def shared_exit_programs(source: str) -> dict[str, str]:
    """Per-syscall exit program name -> the program the BCC build has for
    it, where one program serves every syscall of a kind."""
    return {f"tp_exit_{syscall}": f"tp_exit_{kind.lower()}s"
            for kind, syscall in _SHARED_EXIT.findall(source)}


def program_sections(source: str) -> dict[str, str]:
    """Program name -> section (its attach point), as libbpf reads them:
    the SEC() before each program, and the tracepoints HOOK_SYSCALL makes."""
    sections = {name: section for section, name in _SECTION.findall(source)}
    for syscall in _HOOKED_SYSCALL.findall(source):
        sections[f"tp_enter_{syscall}"] = f"tracepoint/syscalls/sys_enter_{syscall}"
        sections[f"tp_exit_{syscall}"] = f"tracepoint/syscalls/sys_exit_{syscall}"
    return sections


def _format_fields(path: Path) -> dict[str, tuple[int, int]]:
    """A tracefs format file's fields, in order: name -> (offset, size)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CaptureLoadError(f"cannot read {path}: {exc.strerror}") from exc
    return {name: (int(offset), int(size)) for name, offset, size in _FORMAT_FIELD.findall(text)}


def check_tracepoint_layout(tracefs: str, syscalls: list[str]) -> None:
    """Refuse to load when a syscall tracepoint's record is not the layout
    bpf/frontend.h declares (the BCC build reads it without BTF)."""
    events = Path(tracefs) / "events" / "syscalls"
    for syscall in syscalls:
        for event in (f"sys_enter_{syscall}", f"sys_exit_{syscall}"):
            path = events / event / "format"
            fields = _format_fields(path)
            for prefix, name, offset, size in _TRACEPOINT_LAYOUT:
                if event.startswith(prefix) and fields.get(name) != (offset, size):
                    raise CaptureLoadError(
                        f"{path}: field {name} is at {fields.get(name)} (offset, size), not "
                        f"({offset}, {size}) as the BCC build assumes; use --loader core")
            if event.startswith("sys_enter_"):
                arguments = [slot for name, slot in fields.items() if name not in _HEADER_FIELDS]
                if arguments != [(16 + 8 * i, 8) for i in range(len(arguments))]:
                    raise CaptureLoadError(f"{path}: arguments are not 8-byte slots from "
                                           "offset 16; use --loader core")


def source_dir() -> Path:
    """bpf/ of a checkout, or where the image put the sources."""
    return Path(os.environ.get("OTEL_EBPF_BPF_SOURCE_DIR", DEFAULT_SOURCE_DIR))


def compile_flags(settings: CaptureSettings, family: str = "tracepoint") -> list[str]:
    """The compiler's flags for the build that attaches this hook family:
    the raw syscall tracepoints' programs are compiled only for theirs (BCC
    compiles every program of its text at start, and they are the largest)."""
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    flags = ["-DOTEL_EBPF_BCC", f"-I{source_dir()}", f"-D__TARGET_ARCH_{arch}",
             f"-DBCC_RAW_SYSCALLS={int(family == 'raw_tracepoint')}",
             f"-DRING_BUFFER_PAGES={settings.ring_buffer_bytes // PAGE_SIZE}",
             "-Wno-unused-variable", "-Wno-incompatible-pointer-types-discards-qualifiers"]
    config = capture_config(settings)
    config["http_exchanges"] = int(BccObject.pairs_http_exchanges)   # no bpf_loop: off
    flags += [f"-DCONFIG_{name}={value}" for name, value in config.items()]
    return flags


class BccObject:
    """The BCC front end's compiled module."""

    name = "bcc"
    # BCC 0.26 cannot query a ring's unread bytes: no wake-up at the fill mark.
    wakes_reader_at_fill = False
    # No bpf_loop in BCC's programs: HTTP/1.x keeps the payload path.
    pairs_http_exchanges = False

    def __init__(self, bpf, headers: kernel_headers.KernelHeaders):
        self.bpf = bpf
        self.headers = headers

    def describe(self) -> str:
        return f"bcc (kernel headers: {self.headers.describe()})"

    def map_fd(self, name: str) -> int:
        return self.bpf.get_table(name.encode()).map_fd

    def program_fd(self, name: str) -> int:
        function = self.bpf.funcs.get(name.encode())
        if function is None:
            raise KeyError(f"no program {name} loaded")
        return function.fd

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        self.headers.close()


def _import_bcc():
    try:
        import bcc
    except ImportError as exc:
        raise CaptureLoadError(
            "the BCC loader needs BCC's Python module: install python3-bpfcc (Debian/Ubuntu; "
            "PyPI's `bcc` is another project), and for a virtualenv make it visible "
            "(`make setup` links it into .venv)") from exc
    return bcc


# The hook families the BCC build has, in the order of HOOK_FAMILIES (see
# there why): the per-syscall tracepoints, then the raw syscall tracepoints
# (x86-64, where the saved user registers are ABI).
BCC_FAMILIES = ("tracepoint", "raw_tracepoint")


def _compile(bcc, source: str, settings: CaptureSettings, family: str):
    try:
        headers = kernel_headers.find(settings.kernel_headers)
    except kernel_headers.KernelHeadersError as exc:
        raise CaptureLoadError(str(exc)) from exc
    previous = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    try:
        return BccObject(bcc.BPF(text=translate_map_calls(source).encode(),
                                 cflags=compile_flags(settings, family)), headers)
    except Exception as exc:
        headers.close()
        raise CaptureLoadError(f"BCC could not compile {SOURCE} against the kernel headers at "
                               f"{headers.describe()}: {exc} (the compiler's messages are "
                               "above)") from exc
    finally:
        if previous is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = previous


def load(settings: CaptureSettings, features: KernelFeatures, uprobe_multi: bool) -> LoadedCapture:
    """Compile the capture with BCC, load it and attach the best hook family
    the BCC build has."""
    wanted = [name for name in BCC_FAMILIES if settings.hooks in ("auto", name)]
    if not wanted:
        raise CaptureLoadError(f"--hooks {settings.hooks}: the BCC loader has "
                               f"{' and '.join(BCC_FAMILIES)} hooks; use one of them, or "
                               "--loader core")
    if not features.tracefs_mounted:
        raise CaptureLoadError("the BCC loader attaches tracepoints by their tracefs ids: "
                               + HOOK_FAMILIES["tracepoint"].unavailable_reason(features))
    path = source_dir() / SOURCE
    try:
        source = unity_source(path)
    except OSError as exc:
        raise CaptureLoadError(f"the BCC loader compiles {path} at start and cannot read it: "
                               f"{exc.strerror} (set OTEL_EBPF_BPF_SOURCE_DIR)") from exc
    bcc = _import_bcc()
    skipped = [(name, "not in the BCC build") for name in HOOK_FAMILIES
               if name not in BCC_FAMILIES]
    sections = program_sections(source)
    shared = shared_exit_programs(source)
    for name in wanted:
        family = HOOK_FAMILIES[name]
        if name == "tracepoint":
            try:
                check_tracepoint_layout(features.tracefs_path, _HOOKED_SYSCALL.findall(source))
            except CaptureLoadError as exc:
                skipped.append((name, str(exc)))
                continue
        # Compiled for this family: a family that fails costs a compile more.
        front_end = _compile(bcc, source, settings, name)
        bpf = front_end.bpf
        programs = {program: section for program, section in sections.items()
                    if program.startswith(family.program_prefix)
                    and bcc.libbcc.lib.bpf_function_start(
                        bpf.module, shared.get(program, program).encode())}
        if not programs:
            skipped.append((name, "the BCC build reads the saved syscall registers on x86-64 "
                                  "only"))
            front_end.close()
            continue
        # What BCC attached by itself (its TRACEPOINT_PROBE programs).
        detachers = [functools.partial(bpf.detach_tracepoint, tp)
                     for tp in list(bpf.tracepoint_fds)]
        try:
            _attach(bcc, bpf, programs, settings, uprobe_multi, detachers, shared)
        except Exception as exc:
            skipped.append((name, str(exc)))
            front_end.close()       # detaches what was attached
            continue
        common = {program: section for program, section in sections.items()
                  if not program.startswith(tuple(HOOK_FAMILIES[f].program_prefix
                                                  for f in BCC_FAMILIES))}
        try:
            _attach(bcc, bpf, common, settings, uprobe_multi, detachers, shared)
        except Exception as exc:
            front_end.close()
            raise CaptureLoadError(f"BCC could not load or attach the capture: {exc}") from exc
        return LoadedCapture(front_end, detachers, family, settings, skipped, uprobe_multi)
    lines = "\n".join(f"  - {name}: {why}" for name, why in skipped)
    raise CaptureLoadError(f"no hook family of the BCC build could be attached:\n{lines}")


def _attach(bcc, bpf, sections: dict[str, str], settings: CaptureSettings,
            uprobe_multi: bool, detachers: list, shared: dict[str, str]) -> None:
    """Attach these programs at the attach points their sections name (a
    name in shared, through the program that serves it); what undoes each
    attachment goes to detachers as it is made."""
    from agent.capture import libbpf
    for name, section in sections.items():
        program = shared.get(name, name).encode()
        if not bcc.libbcc.lib.bpf_function_start(bpf.module, program):
            continue
        kind, _, target = section.partition("/")
        if kind == "tracepoint":
            tracepoint = target.replace("/", ":").encode()
            bpf.attach_tracepoint(tp=tracepoint, fn_name=program)
            detachers.append(functools.partial(bpf.detach_tracepoint, tracepoint))
        elif kind == "raw_tracepoint":
            bpf.attach_raw_tracepoint(tp=target.encode(), fn_name=program)
            detachers.append(functools.partial(bpf.detach_raw_tracepoint, target.encode()))
        elif kind in ("uprobe", "uretprobe") and settings.tls:
            # Attached per TLS library by agent/capture/tls.py, through program_fd().
            bpf.load_func(program, bcc.BPF.KPROBE,
                          attach_type=libbpf.BPF_TRACE_UPROBE_MULTI if uprobe_multi else -1)
