"""HTTP/2 framing (RFC 9113 section 4), as a passive observer reads it from
captured bytes: the frame constants and bounds, the checks that decide
whether 9 bytes can be a frame header, the search for a frame boundary in a
connection joined mid-stream, and FrameStream, the per-direction state
machine that cuts a byte stream into frames.

hyperframe parses the bodies of HEADERS, CONTINUATION, PUSH_PROMISE,
SETTINGS, RST_STREAM and GOAWAY; DATA and the other frames are handled from
their 9-byte header without building objects.  What header and control
frames mean is left to the subclass (agent.parsers.http2.H2Direction)."""
from __future__ import annotations

import re
import struct

from hyperframe.exceptions import HyperframeError
from hyperframe.frame import ContinuationFrame, HeadersFrame, PushPromiseFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_MAX_FRAME_SIZE = 0x5

# Bounds.  A frame's length field allows up to 16 MiB - 1; DATA and frames
# the decoder ignores are skipped by count whatever their size, so only
# header blocks and small control frames are ever buffered.
MAX_HEADER_BLOCK = 256 * 1024   # HEADERS/PUSH_PROMISE + CONTINUATION bytes kept
MAX_CONTROL_FRAME = 16 * 1024   # SETTINGS/GOAWAY payload bytes read (rest skipped)
DEFAULT_MAX_FRAME = 16384       # frame length plausible when resynchronising
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
               "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
# What hyperframe raises on a body it cannot parse.
FRAME_ERRORS = (HyperframeError, ValueError, struct.error)

FRAME_HEADER = struct.Struct(">BHBBI")
# Candidate frame headers when resynchronising: length <= 16 KiB + 255,
# a defined frame type, reserved bit clear.  Checked fully in plausible().
_CANDIDATE = re.compile(rb"(?=\x00[\x00-\x40][\x00-\xff][\x00-\x09][\x00-\xff][\x00-\x7f])",
                        re.DOTALL)
# Resynchronisation needs this many plausible frame headers in a row (or a
# chain ending exactly at the end of the captured bytes); chains are
# followed up to _CHAIN_MAX headers.
_CHAIN = 3
_CHAIN_MAX = 32
# Allowed flag bits per frame type.
_FLAGS = (END_STREAM | PADDED, END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG, 0, 0, ACK,
          END_HEADERS | PADDED, ACK, 0, 0, END_HEADERS)
_HEADER_FRAMES = {HEADERS: HeadersFrame, PUSH_PROMISE: PushPromiseFrame,
                  CONTINUATION: ContinuationFrame}


def error_name(code: int) -> str:
    """RFC 9113 section 7 name of an error code."""
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else "0x%x" % code


def control_ok(ftype: int, flags: int, sid: int, length: int) -> bool:
    """Whether a control frame's header obeys RFC 9113's size and stream rules."""
    if ftype == RST_STREAM:
        return sid != 0 and length == 4
    if ftype == SETTINGS:
        return sid == 0 and length % 6 == 0 and not (flags & ACK and length)
    if ftype == GOAWAY:
        return sid == 0 and length >= 8
    if ftype == PING:
        return sid == 0 and length == 8
    if ftype == WINDOW_UPDATE:
        return length == 4
    if ftype == PRIORITY:
        return sid != 0 and length == 5
    return True


def plausible(buf: bytes, pos: int, first: bool, is_client_side: bool,
              max_frame_size: int) -> bool:
    """Whether the 9 bytes at pos read as a frame header this direction
    could send (first: no frame before it is known)."""
    high, low, ftype, flags, sid = FRAME_HEADER.unpack_from(buf, pos)
    length = high << 16 | low
    if length > max_frame_size or sid & 0x80000000 or ftype > CONTINUATION:
        return False
    if flags & ~_FLAGS[ftype]:
        return False
    if ftype == DATA:
        return sid != 0 and not (flags & PADDED and length == 0)
    if ftype == HEADERS:
        return sid != 0 and (sid & 1 or not is_client_side)
    if ftype == CONTINUATION:
        return not first and sid != 0
    if ftype == PUSH_PROMISE:
        return not is_client_side and sid & 1 and length >= 4
    return control_ok(ftype, flags, sid, length)


def starts_with_settings(data: bytes) -> bool:
    """Whether data begins with a SETTINGS frame that is not an ACK: the
    first frame a server sends on a new connection, which it may write
    before it reads the client's preface (RFC 9113 section 3.4)."""
    return len(data) >= 9 and data[3] == SETTINGS and not data[4] & ACK \
        and plausible(data, 0, True, False, DEFAULT_MAX_FRAME)


def find_boundary(buf: bytes, pos: int, is_client_side: bool, max_frame_size: int):
    """The next frame boundary in buf[pos:]: (position, True) for a
    plausible frame header followed by others, or ending exactly at the end
    of buf; (position, None) when the bytes after a plausible header are
    not in buf yet; (-1, False) when there is none.

    A candidate that cannot be decided yet does not end the search: bytes
    inside a frame can read as a header of a long frame (a SETTINGS
    frame's tail, say, when the capture began after its header), and
    waiting for that frame's end would hold every frame after it, for as
    long as a quiet connection takes to send that many bytes.  A later
    candidate proven by two headers or more wins over it."""
    end = len(buf)
    undecided = -1
    for match in _CANDIDATE.finditer(buf, pos):
        candidate = match.start()
        if end - candidate < 9:
            break
        if not plausible(buf, candidate, True, is_client_side, max_frame_size):
            continue
        verdict, headers = _chain(buf, candidate, is_client_side, max_frame_size)
        if verdict is None:
            if undecided < 0:
                undecided = candidate
        elif verdict and (undecided < 0 or headers >= 2):
            return candidate, True
    return (undecided, None) if undecided >= 0 else (-1, False)


def _chain(buf: bytes, pos: int, is_client_side: bool, max_frame_size: int):
    """Follow frame lengths from the plausible header at pos: (True, headers
    seen) when every header up to the end of buf is plausible and either
    the chain ends exactly at the end or at least _CHAIN headers were seen;
    False on an implausible one; None when the next header is not in buf
    yet."""
    end = len(buf)
    seen = 0
    while True:
        seen += 1
        pos += 9 + ((buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2])
        if pos == end:
            return True, seen
        if pos + 9 > end:
            return (True if seen >= _CHAIN else None), seen
        if not plausible(buf, pos, False, is_client_side, max_frame_size):
            return False, seen
        if seen >= _CHAIN_MAX:
            return True, seen


def header_fragment(buf: bytes, pos: int, length: int, ftype: int, flags: int, sid: int):
    """(fragment, promised stream id) of a whole HEADERS, PUSH_PROMISE or
    CONTINUATION frame at pos; raises one of FRAME_ERRORS when malformed."""
    frame = _HEADER_FRAMES[ftype](sid)
    frame.parse_flags(flags)
    frame.parse_body(memoryview(buf)[pos + 9:pos + 9 + length])
    return frame.data, getattr(frame, "promised_stream_id", 0)


def truncated_fragment(payload: bytes, length: int, ftype: int, flags: int):
    """(fragment prefix, promised stream id or 0) of a header frame of
    `length` payload bytes of which only `payload` was captured."""
    captured = len(payload)
    start = 0
    stop = length
    if ftype != CONTINUATION and flags & PADDED:
        if not payload:
            stop = 0
        else:
            stop = length - payload[0]
            start = 1
    if ftype == HEADERS and flags & PRIORITY_FLAG:
        start += 5
    promised = 0
    if ftype == PUSH_PROMISE:
        if len(payload) >= start + 4:
            promised = int.from_bytes(payload[start:start + 4], "big") & 0x7FFFFFFF
        start += 4
    return payload[start:min(stop, captured)], promised


# FrameStream modes.
PREFACE_MODE = 0
FRAMES_MODE = 1
RESYNC_MODE = 2

# What the skipped bytes (self._skip) belong to.
SKIP_PAYLOAD = 0     # a frame whose payload does not matter (DATA, PING, ...)
SKIP_LOST = 1        # bytes of a header frame already handled as truncated


class FrameStream:
    """One direction's captured bytes cut into frames, across feeds and
    capture gaps: the preface, whole frames, frames skipped by length, and
    resynchronisation after lost bytes.  DATA frames become events here;
    the subclass gives the other frames their meaning: _header_frame (a
    HEADERS, PUSH_PROMISE or CONTINUATION frame), _finish_block (end the
    header block in progress), _control_frame (RST_STREAM, GOAWAY,
    SETTINGS) and _table_lost (bytes that may hold a header block were
    lost)."""

    __slots__ = (
        "is_client_side", "max_frame_size", "_mode", "_pending", "_skip", "_skip_kind",
        "_block", "_block_sid", "_drop_continuation", "_events", "_reason",
        # counters
        "frames", "resyncs", "bytes_discarded", "sync_lost", "truncated_frames",
        "uncaptured_bytes", "bad_frames", "unknown_frames", "internal_errors",
    )

    def __init__(self, is_client_side: bool, midstream: bool | None):
        self.is_client_side = is_client_side
        self.max_frame_size = DEFAULT_MAX_FRAME
        self._pending = b""
        self._skip = 0
        self._skip_kind = SKIP_PAYLOAD
        self._block = None            # the header block being assembled
        self._block_sid = 0
        self._drop_continuation = 0   # stream whose CONTINUATIONs belong to a lost block
        self._events = []
        self._reason = ""
        self.frames = self.resyncs = self.bytes_discarded = self.sync_lost = 0
        self.truncated_frames = self.uncaptured_bytes = self.bad_frames = 0
        self.unknown_frames = self.internal_errors = 0
        if midstream:
            self._mode = RESYNC_MODE
        elif is_client_side or midstream is None:
            # The client's preface, or the server's first SETTINGS: anything
            # else means the capture began after them.
            self._mode = PREFACE_MODE
        else:
            self._mode = FRAMES_MODE

    @property
    def synchronised(self) -> bool:
        return self._mode == FRAMES_MODE

    @property
    def unsynced_bytes(self) -> int:
        """Bytes held while looking for a frame boundary: lost if the
        connection ends first."""
        return len(self._pending) if self._mode == RESYNC_MODE else 0

    def _feed(self, data: bytes) -> None:
        pos = 0
        if self._skip:
            pos = min(self._skip, len(data))
            self._skip -= pos
            if pos == len(data):
                return
        if self._pending:
            buf = self._pending + data[pos:]
            self._pending = b""
            pos = 0
        else:
            buf = data
        while pos < len(buf):
            mode = self._mode
            if mode == FRAMES_MODE:
                pos = self._frames(buf, pos)
                if self._mode == FRAMES_MODE:
                    return
            elif mode == PREFACE_MODE:
                pos = self._preface(buf, pos)
                if self._mode == PREFACE_MODE:
                    return
            else:
                pos = self._resync(buf, pos)
                if self._mode == RESYNC_MODE:
                    return

    def _preface(self, buf: bytes, pos: int) -> int:
        """Start of the connection: the client preface, or the server's
        SETTINGS; anything else is a connection joined mid-stream."""
        rest = len(buf) - pos
        if self.is_client_side:
            if buf.startswith(PREFACE, pos):
                self._mode = FRAMES_MODE
                return pos + len(PREFACE)
            if rest < len(PREFACE) and PREFACE.startswith(buf[pos:]):
                self._pending = buf[pos:]
                return len(buf)
        else:
            if rest < 9:
                if buf[pos] == 0 and (rest < 4 or buf[pos + 3] == SETTINGS):
                    self._pending = buf[pos:]
                    return len(buf)
            elif buf[pos + 3] == SETTINGS and plausible(buf, pos, True, False,
                                                        self.max_frame_size):
                self._mode = FRAMES_MODE
                return pos
        self._mode = RESYNC_MODE
        self._table_lost()
        return pos

    def _frames(self, buf: bytes, pos: int) -> int:
        """Decode whole frames from buf[pos:]; returns where it stopped (the
        rest is pending or skipped) or where resynchronisation must start."""
        end = len(buf)
        events = self._events
        unpack = FRAME_HEADER.unpack_from
        while end - pos >= 9:
            high, low, ftype, flags, sid = unpack(buf, pos)
            length = high << 16 | low
            sid &= 0x7FFFFFFF
            have = end - pos - 9
            self.frames += 1
            if self._block is not None and ftype != CONTINUATION:
                # RFC 9113 6.10: only CONTINUATION may follow an unfinished
                # header block.  The rest of the block is lost.
                self.bad_frames += 1
                self._finish_block(truncated=True)
                if self._mode != FRAMES_MODE:
                    self.frames -= 1
                    return pos
            if ftype == DATA:
                if sid == 0 or (flags & PADDED and (length == 0 or (have and buf[pos + 9] >= length))):
                    return self._bad_frame(pos)
                size = length
                if flags & PADDED:
                    if not have:
                        self._pending = buf[pos:]   # wait for the pad length
                        return end
                    size = length - 1 - buf[pos + 9]
                events.append(("data", sid, size, bool(flags & END_STREAM)))
                if have >= length:
                    pos += 9 + length
                    continue
                self._skip = length - have
                self._skip_kind = SKIP_PAYLOAD
                return end
            if ftype == HEADERS or ftype == CONTINUATION or ftype == PUSH_PROMISE:
                if sid == 0 or (ftype == PUSH_PROMISE and self.is_client_side):
                    return self._bad_frame(pos)
                if ftype == CONTINUATION and self._block is None:
                    if sid != self._drop_continuation:
                        return self._bad_frame(pos)
                    # The rest of a header block already emitted as partial.
                    if flags & END_HEADERS:
                        self._drop_continuation = 0
                    if have >= length:
                        pos += 9 + length
                        continue
                    self._skip = length - have
                    self._skip_kind = SKIP_LOST
                    return end
                if ftype == CONTINUATION and sid != self._block_sid:
                    self._finish_block(truncated=True)
                    return self._bad_frame(pos)
                wanted = min(length, MAX_HEADER_BLOCK)
                if have < wanted:
                    self._pending = buf[pos:]
                    return end
                self._header_frame(buf, pos, length, ftype, flags, sid, wanted)
                if self._mode != FRAMES_MODE:
                    # The block was garbage: look for a boundary after it.
                    return pos + 9 + wanted
                if length > wanted:
                    # Longer than the bound: handled as truncated, skip the rest.
                    rest = length - wanted
                    if have >= length:
                        pos += 9 + length
                        continue
                    self._skip = rest - (have - wanted)
                    self._skip_kind = SKIP_LOST
                    return end
                pos += 9 + length
                continue
            if ftype == RST_STREAM or ftype == SETTINGS or ftype == GOAWAY:
                if not control_ok(ftype, flags, sid, length):
                    return self._bad_frame(pos)
                wanted = min(length, MAX_CONTROL_FRAME)
                if have < wanted:
                    self._pending = buf[pos:]
                    return end
                self._control_frame(buf, pos, ftype, flags, sid, wanted)
                if have >= length:
                    pos += 9 + length
                    continue
                self._skip = length - have
                self._skip_kind = SKIP_PAYLOAD
                return end
            if ftype <= CONTINUATION:
                # PRIORITY, PING, WINDOW_UPDATE: checked, then ignored.
                if not control_ok(ftype, flags, sid, length):
                    return self._bad_frame(pos)
            else:
                self.unknown_frames += 1
            if have >= length:
                pos += 9 + length
                continue
            self._skip = length - have
            self._skip_kind = SKIP_PAYLOAD
            return end
        if pos < end:
            self._pending = buf[pos:]
        return end

    def _bad_frame(self, pos: int) -> int:
        """A frame header that cannot be right: the stream is not where we
        thought.  Resynchronise from the next byte."""
        self.bad_frames += 1
        self.frames -= 1
        self._lose_sync("bad_frame")
        return pos + 1

    def _lose_sync(self, reason: str) -> None:
        if self._block is not None:
            self._finish_block(truncated=True)
        if self._mode != RESYNC_MODE:
            self.sync_lost += 1
        self._mode = RESYNC_MODE
        self._drop_continuation = 0
        if not self._reason:
            self._reason = reason

    def _resync(self, buf: bytes, pos: int) -> int:
        """Find the next frame boundary in buf[pos:]: a plausible frame
        header followed by another, or ending exactly at the end of buf."""
        end = len(buf)
        candidate, verdict = find_boundary(buf, pos, self.is_client_side, self.max_frame_size)
        if verdict:
            self._discard(candidate - pos)
            self.resyncs += 1
            self._mode = FRAMES_MODE
            self._table_lost()
            return candidate
        if verdict is None:
            # Cannot tell yet: keep from here until more bytes come.
            self._discard(candidate - pos)
            self._pending = buf[candidate:]
            return end
        # Keep the last 8 bytes: a frame header may straddle into the next feed.
        keep = max(pos, end - 8)
        self._discard(keep - pos)
        self._pending = buf[keep:]
        return end

    def _discard(self, count: int) -> None:
        if count > 0:
            self.bytes_discarded += count
            if not self._reason:
                self._reason = "resync"
