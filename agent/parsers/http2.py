"""HTTP/2 frames (RFC 9113) and HPACK header blocks (RFC 7541), from
captured bytes, one decoder per connection direction.

    client = H2Direction(is_client_side=True)    # bytes the client sends
    server = H2Direction(is_client_side=False)   # bytes the server sends
    client.link(server)        # SETTINGS each side announces reach the other
    status, events, reason = client.feed(data, uncaptured=0)

Events are tuples, in wire order:

    ("headers", stream_id, [(name, value), ...], end_stream, partial)
    ("push_promise", stream_id, promised_stream_id, [(name, value), ...], partial)
    ("data", stream_id, length, end_stream)       # length without padding
    ("rst", stream_id, error_code)
    ("goaway", last_stream_id, error_code)

Names and values are str (names lower-case ASCII, values UTF-8 with
replacement).  DATA bodies are never kept: only frame lengths and
END_STREAM.  SETTINGS, WINDOW_UPDATE, PING, PRIORITY and unknown frame types
produce no event.

Status: PARSED when every byte fed so far belongs to a whole frame;
NEED_MORE when a frame (or the preface) is partly buffered; INVALID when
bytes of this feed could not be read as HTTP/2 and were skipped while
looking for a frame boundary (reason says why).  Events decoded in the same
feed are returned with any status.  feed() never raises.

A passive observer cannot trust what it has not seen, so the rule
throughout is: a header whose name or value cannot be known is left out,
never guessed, and its block is marked partial.  This covers
  * connections joined mid-stream: no preface, the HPACK dynamic table
    unknown.  The decoder resynchronises on a plausible frame header (two
    in a row, or one ending exactly where the captured bytes end), starts
    from an empty dynamic table and treats references beyond what it holds
    as unknown.  That is exact, not a heuristic: entries inserted since the
    decoder's table was emptied sit at the same indices in the peer's table
    (both insert at the front), so every index the decoder holds means what
    the encoder meant; placeholder entries whose name is unknown keep the
    indices aligned.  Whenever bytes that may hold a header block are lost,
    the table is emptied again.
  * captures whose tail the kernel did not copy (feed(data, uncaptured=N)):
    DATA frames are skipped by length; a truncated header block yields the
    headers decoded before the cut, partial.

The frame layer uses hyperframe for the bodies of HEADERS, CONTINUATION,
PUSH_PROMISE, SETTINGS, RST_STREAM and GOAWAY; DATA and the other frames are
handled from their 9-byte header without building objects.  hpack provides
the per-direction Decoder (its header table, static table, eviction, limits)
and the Huffman decoder.  The representation loop is local because
hpack.Decoder.decode() stops at the first unknown index and loses the whole
block, where a block from a joined connection still has decodable headers.
"""
from __future__ import annotations

import re
import struct

import hpack
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (ContinuationFrame, GoAwayFrame, HeadersFrame, PushPromiseFrame,
                              RstStreamFrame, SettingsFrame)

from agent.parsers import INVALID, NEED_MORE, PARSED

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
MAX_TABLE_SIZE = 64 * 1024      # dynamic table bytes kept, whatever the peer announces
MAX_HEADER_LIST = 64 * 1024     # decoded header list size (RFC 7541 sizing) emitted per block
DEFAULT_MAX_FRAME = 16384       # frame length plausible when resynchronising
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
               "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM",
               "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")

_HEADER = struct.Struct(">BHBBI")
_STATIC = (None,) + HeaderTable.STATIC_TABLE
_STATIC_LEN = len(HeaderTable.STATIC_TABLE)
# A name hpack decoded that does not read as an HTTP/2 field name (lower-case
# token, or a defined pseudo-header) means the block is not what it seems:
# garbage from a false resynchronisation, or corruption.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+|:(?:authority|method|path|scheme|status|protocol)")
# Candidate frame headers when resynchronising: length <= 16 KiB + 255,
# a defined frame type, reserved bit clear.  Checked fully in _plausible.
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


class _Unknown(bytes):
    """Type of the placeholder for a table entry name that is not known."""


_UNKNOWN = _Unknown()

# Decoder modes.
_PREFACE = 0
_FRAMES = 1
_RESYNC = 2

# What the skipped bytes (self._skip) belong to.
_SKIP_PAYLOAD = 0     # a frame whose payload does not matter (DATA, PING, ...)
_SKIP_LOST = 1        # bytes of a header frame already handled as truncated


class _Malformed(Exception):
    """Internal: the header block cannot be decoded further."""


class _Truncated(Exception):
    """Internal: the header block ends inside a representation."""


class H2Direction:
    """Decoder for one direction of one HTTP/2 connection.  See the module
    docstring for events and statuses; counters are plain ints (counters())."""

    __slots__ = (
        "is_client_side", "peer", "decoder", "max_frame_size", "_mode", "_pending", "_skip",
        "_skip_kind", "_block", "_block_sid", "_block_flags", "_block_type", "_block_promised",
        "_block_partial", "_drop_continuation", "_events", "_reason",
        # counters
        "frames", "header_blocks", "partial_blocks", "unknown_headers", "hpack_errors",
        "oversized_header_lists", "resyncs", "bytes_discarded", "sync_lost", "truncated_frames",
        "uncaptured_bytes", "bad_frames", "unknown_frames", "internal_errors", "table_resets",
    )

    def __init__(self, is_client_side: bool, midstream: bool | None = None):
        """is_client_side: this object decodes the bytes the client sends
        (they begin with the connection preface).  midstream: True when the
        connection is known to have begun before capture, False when it is
        known to begin here; None detects it (no preface, or on the server
        side a first frame that is not SETTINGS, means joined mid-stream)."""
        self.is_client_side = is_client_side
        self.peer = None
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.decoder.max_allowed_table_size = MAX_TABLE_SIZE
        self.max_frame_size = DEFAULT_MAX_FRAME
        self._pending = b""
        self._skip = 0
        self._skip_kind = _SKIP_PAYLOAD
        self._block = None
        self._block_sid = 0
        self._block_flags = 0
        self._block_type = HEADERS
        self._block_promised = 0
        self._block_partial = False
        self._drop_continuation = 0
        self._events = []
        self._reason = ""
        self.frames = self.header_blocks = self.partial_blocks = self.unknown_headers = 0
        self.hpack_errors = self.oversized_header_lists = self.resyncs = 0
        self.bytes_discarded = self.sync_lost = self.truncated_frames = 0
        self.uncaptured_bytes = self.bad_frames = self.unknown_frames = 0
        self.internal_errors = self.table_resets = 0
        if midstream:
            self._mode = _RESYNC
        elif is_client_side or midstream is None:
            # The client's preface, or the server's first SETTINGS: anything
            # else means the capture began after them.
            self._mode = _PREFACE
        else:
            self._mode = _FRAMES

    def link(self, other: "H2Direction") -> None:
        """Pair with the other direction: SETTINGS announced here set the
        limits of the other direction's decoder, and the reverse."""
        self.peer = other
        other.peer = self

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in (
            "frames", "header_blocks", "partial_blocks", "unknown_headers", "hpack_errors",
            "oversized_header_lists", "resyncs", "bytes_discarded", "sync_lost",
            "truncated_frames", "uncaptured_bytes", "bad_frames", "unknown_frames",
            "internal_errors", "table_resets")}

    @property
    def synchronised(self) -> bool:
        return self._mode == _FRAMES

    # ---------------------------------------------------------------- feed

    def feed(self, data: bytes, uncaptured: int = 0):
        """(status, events, reason) for the next captured bytes of this
        direction; uncaptured counts the bytes that followed data on the
        wire but were not captured."""
        self._events = events = []
        self._reason = ""
        try:
            if data:
                self._feed(data)
            if uncaptured > 0:
                self.uncaptured_bytes += uncaptured
                self._gap(uncaptured)
        except Exception:  # noqa: BLE001 - a bug here must not stop the agent
            self.internal_errors += 1
            self._pending = b""
            self._skip = 0
            self._block = None
            self._lose_sync("internal_error")
        if self._reason:
            return INVALID, events, self._reason
        if self._pending or self._skip or self._block is not None:
            return NEED_MORE, events, ""
        return PARSED, events, ""

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
            if mode == _FRAMES:
                pos = self._frames(buf, pos)
                if self._mode == _FRAMES:
                    return
            elif mode == _PREFACE:
                pos = self._preface(buf, pos)
                if self._mode == _PREFACE:
                    return
            else:
                pos = self._resync(buf, pos)
                if self._mode == _RESYNC:
                    return

    def _preface(self, buf: bytes, pos: int) -> int:
        """Start of the connection: the client preface, or the server's
        SETTINGS; anything else is a connection joined mid-stream."""
        rest = len(buf) - pos
        if self.is_client_side:
            if buf.startswith(PREFACE, pos):
                self._mode = _FRAMES
                return pos + len(PREFACE)
            if rest < len(PREFACE) and PREFACE.startswith(buf[pos:]):
                self._pending = buf[pos:]
                return len(buf)
        else:
            if rest < 9:
                if buf[pos] == 0 and (rest < 4 or buf[pos + 3] == SETTINGS):
                    self._pending = buf[pos:]
                    return len(buf)
            elif buf[pos + 3] == SETTINGS and self._plausible(buf, pos, True):
                self._mode = _FRAMES
                return pos
        self._mode = _RESYNC
        self._reset_table()
        return pos

    # ------------------------------------------------------------ framing

    def _frames(self, buf: bytes, pos: int) -> int:
        """Decode whole frames from buf[pos:]; returns where it stopped (the
        rest is pending or skipped) or where resynchronisation must start."""
        end = len(buf)
        events = self._events
        unpack = _HEADER.unpack_from
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
                if self._mode != _FRAMES:
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
                self._skip_kind = _SKIP_PAYLOAD
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
                    self._skip_kind = _SKIP_LOST
                    return end
                if ftype == CONTINUATION and sid != self._block_sid:
                    self._finish_block(truncated=True)
                    return self._bad_frame(pos)
                wanted = min(length, MAX_HEADER_BLOCK)
                if have < wanted:
                    self._pending = buf[pos:]
                    return end
                self._header_frame(buf, pos, length, ftype, flags, sid, wanted)
                if self._mode != _FRAMES:
                    # The block was garbage: look for a boundary after it.
                    return pos + 9 + wanted
                if length > wanted:
                    # Longer than the bound: handled as truncated, skip the rest.
                    rest = length - wanted
                    if have >= length:
                        pos += 9 + length
                        continue
                    self._skip = rest - (have - wanted)
                    self._skip_kind = _SKIP_LOST
                    return end
                pos += 9 + length
                continue
            if ftype == RST_STREAM or ftype == SETTINGS or ftype == GOAWAY:
                if not self._control_ok(ftype, flags, sid, length):
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
                self._skip_kind = _SKIP_PAYLOAD
                return end
            if ftype <= CONTINUATION:
                # PRIORITY, PING, WINDOW_UPDATE: checked, then ignored.
                if not self._control_ok(ftype, flags, sid, length):
                    return self._bad_frame(pos)
            else:
                self.unknown_frames += 1
            if have >= length:
                pos += 9 + length
                continue
            self._skip = length - have
            self._skip_kind = _SKIP_PAYLOAD
            return end
        if pos < end:
            self._pending = buf[pos:]
        return end

    @staticmethod
    def _control_ok(ftype: int, flags: int, sid: int, length: int) -> bool:
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
        if self._mode != _RESYNC:
            self.sync_lost += 1
        self._mode = _RESYNC
        self._drop_continuation = 0
        if not self._reason:
            self._reason = reason

    def _control_frame(self, buf: bytes, pos: int, ftype: int, flags: int, sid: int,
                       size: int) -> None:
        body = memoryview(buf)[pos + 9:pos + 9 + size]
        try:
            if ftype == RST_STREAM:
                frame = RstStreamFrame(sid)
                frame.parse_body(body)
                self._events.append(("rst", sid, frame.error_code))
            elif ftype == GOAWAY:
                frame = GoAwayFrame(0)
                frame.parse_body(body[:8])
                self._events.append(("goaway", frame.last_stream_id, frame.error_code))
            elif not flags & ACK:
                frame = SettingsFrame(0)
                frame.parse_body(body)
                self._apply_settings(frame.settings)
        except (HyperframeError, ValueError, struct.error):
            self.bad_frames += 1

    def _apply_settings(self, settings: dict) -> None:
        """SETTINGS sent in this direction bound what the other direction's
        encoder may do."""
        peer = self.peer
        if peer is None:
            return
        size = settings.get(SETTINGS_HEADER_TABLE_SIZE)
        if size is not None:
            peer.decoder.max_allowed_table_size = min(size, MAX_TABLE_SIZE)
        frame_size = settings.get(SETTINGS_MAX_FRAME_SIZE)
        if frame_size is not None and 16384 <= frame_size < 1 << 24:
            peer.max_frame_size = frame_size

    # ------------------------------------------------------- header blocks

    def _header_frame(self, buf: bytes, pos: int, length: int, ftype: int, flags: int, sid: int,
                      captured: int) -> None:
        """A HEADERS, PUSH_PROMISE or CONTINUATION frame of which the first
        `captured` payload bytes are in buf at pos + 9."""
        if captured == length:
            body = memoryview(buf)[pos + 9:pos + 9 + length]
            try:
                if ftype == HEADERS:
                    frame = HeadersFrame(sid)
                elif ftype == PUSH_PROMISE:
                    frame = PushPromiseFrame(sid)
                else:
                    frame = ContinuationFrame(sid)
                frame.parse_flags(flags)
                frame.parse_body(body)
            except (HyperframeError, ValueError, struct.error):
                self.bad_frames += 1
                if self._block is not None:
                    self._finish_block(truncated=True)
                else:
                    self._table_lost()
                return
            fragment = frame.data
            promised = getattr(frame, "promised_stream_id", 0)
            truncated = False
        else:
            # Cut short (capture limit or bound): the fragment's prefix.
            self.truncated_frames += 1
            payload = buf[pos + 9:pos + 9 + captured]
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
            fragment = payload[start:min(stop, captured)]
            truncated = True
        if ftype != CONTINUATION:
            self._block = bytearray(fragment)
            self._block_sid = sid
            self._block_flags = flags
            self._block_type = ftype
            self._block_promised = promised
            self._block_partial = False
        else:
            if len(self._block) + len(fragment) > MAX_HEADER_BLOCK:
                fragment = fragment[:MAX_HEADER_BLOCK - len(self._block)]
                truncated = True
            self._block += fragment
        if truncated:
            self._finish_block(truncated=True)
            if not flags & END_HEADERS:
                self._drop_continuation = sid
        elif flags & END_HEADERS:
            self._finish_block(truncated=False)

    def _finish_block(self, truncated: bool) -> None:
        block = self._block
        self._block = None
        if block is None:
            return
        block = bytes(block)
        headers, partial = self._decode(block, truncated)
        if headers is None:
            self.header_blocks += 1
            self.partial_blocks += 1
            self._lose_sync("hpack_error")
            return
        if truncated:
            # Insertions in the missing part are unknown: start afresh.
            self._table_lost()
            partial = True
        self.header_blocks += 1
        if partial:
            self.partial_blocks += 1
        if self._block_type == PUSH_PROMISE:
            self._events.append(("push_promise", self._block_sid, self._block_promised, headers,
                                 partial))
        else:
            self._events.append(("headers", self._block_sid, headers,
                                 bool(self._block_flags & END_STREAM), partial))

    def _table_lost(self) -> None:
        """Bytes that may have changed the peer's dynamic table were not
        seen: empty ours (see the module docstring for why that is exact)."""
        table = self.decoder.header_table
        if table.dynamic_entries:
            table.maxsize = 0
        # The peer's size is unknown; most use the default.  A smaller guess
        # than the peer's only evicts early (references become unknown), and
        # a size update in a later block sets it.
        table.maxsize = HeaderTable.DEFAULT_SIZE
        self.table_resets += 1

    _reset_table = _table_lost

    def _decode(self, block: bytes, truncated: bool):
        """(headers, partial) of a header block.  Unknown references are left
        out; a malformed block stops the decode and empties the table."""
        table = self.decoder.header_table
        dynamic = table.dynamic_entries
        headers = []
        partial = False
        list_size = 0
        max_list = self.decoder.max_header_list_size
        pos = 0
        end = len(block)
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:
                    # Indexed field.
                    index = byte & 0x7F
                    pos += 1
                    if index == 0x7F:
                        index, pos = _integer(block, pos, index)
                    if index <= _STATIC_LEN:
                        if index == 0:
                            raise _Malformed
                        name, value = _STATIC[index]
                    elif index - _STATIC_LEN <= len(dynamic):
                        name, value = dynamic[index - _STATIC_LEN - 1]
                        if name is _UNKNOWN:
                            self.unknown_headers += 1
                            partial = True
                            continue
                    else:
                        self.unknown_headers += 1
                        partial = True
                        continue
                elif byte & 0x20 and not byte & 0x40:
                    # Dynamic table size update (only before the first field).
                    size = byte & 0x1F
                    pos += 1
                    if size == 0x1F:
                        size, pos = _integer(block, pos, size)
                    if headers or partial:
                        raise _Malformed
                    table.maxsize = min(size, MAX_TABLE_SIZE)
                    continue
                else:
                    # Literal: with incremental indexing (01), without (0000)
                    # or never indexed (0001).
                    indexing = byte & 0x40
                    mask = 0x3F if indexing else 0x0F
                    index = byte & mask
                    pos += 1
                    if index:
                        if index == mask:
                            index, pos = _integer(block, pos, index)
                        if index <= _STATIC_LEN:
                            name = _STATIC[index][0]
                        elif index - _STATIC_LEN <= len(dynamic):
                            name = dynamic[index - _STATIC_LEN - 1][0]
                        else:
                            name = _UNKNOWN
                    else:
                        name, pos = _string(block, pos)
                        if _NAME.fullmatch(name) is None:
                            raise _Malformed
                    value, pos = _string(block, pos)
                    if indexing:
                        table.add(name, value)
                    if name is _UNKNOWN:
                        self.unknown_headers += 1
                        partial = True
                        continue
                list_size += 32 + len(name) + len(value)
                if list_size > max_list:
                    if list_size - 32 - len(name) - len(value) <= max_list:
                        self.oversized_header_lists += 1
                    partial = True
                    continue
                headers.append((name.decode("latin-1"), value.decode("utf-8", "replace")))
        except _Truncated:
            if not truncated:
                self.hpack_errors += 1
                self._table_lost()
            partial = True
        except (_Malformed, HPACKDecodingError):
            # Real encoders do not produce this: the bytes are not the block
            # they seemed (most likely a false resynchronisation), so none
            # of what decoded can be trusted.
            self.hpack_errors += 1
            self._table_lost()
            return None, True
        return headers, partial

    # ------------------------------------------------------ resynchronise

    def _plausible(self, buf: bytes, pos: int, first: bool) -> bool:
        """Whether the 9 bytes at pos read as a frame header this direction
        could send."""
        high, low, ftype, flags, sid = _HEADER.unpack_from(buf, pos)
        length = high << 16 | low
        if length > self.max_frame_size or sid & 0x80000000 or ftype > CONTINUATION:
            return False
        if flags & ~_FLAGS[ftype]:
            return False
        if ftype == DATA:
            return sid != 0 and not (flags & PADDED and length == 0)
        if ftype == HEADERS:
            return sid != 0 and (sid & 1 or not self.is_client_side)
        if ftype == CONTINUATION:
            return not first and sid != 0
        if ftype == PUSH_PROMISE:
            return not self.is_client_side and sid & 1 and length >= 4
        return self._control_ok(ftype, flags, sid, length)

    def _resync(self, buf: bytes, pos: int) -> int:
        """Find the next frame boundary in buf[pos:]: a plausible frame
        header followed by another, or ending exactly at the end of buf."""
        end = len(buf)
        start = pos
        for match in _CANDIDATE.finditer(buf, pos):
            candidate = match.start()
            if end - candidate < 9:
                break
            if not self._plausible(buf, candidate, True):
                continue
            verdict = self._chain(buf, candidate)
            if verdict is True:
                self._discard(candidate - start)
                self.resyncs += 1
                self._mode = _FRAMES
                self._reset_table()
                return candidate
            if verdict is None:
                # Cannot tell yet: keep from here until more bytes come.
                self._discard(candidate - start)
                self._pending = buf[candidate:]
                return end
        # Keep the last 8 bytes: a frame header may straddle into the next feed.
        keep = max(start, end - 8)
        self._discard(keep - start)
        self._pending = buf[keep:]
        return end

    def _chain(self, buf: bytes, pos: int):
        """Follow frame lengths from the plausible header at pos: True when
        every header up to the end of buf is plausible and either the chain
        ends exactly at the end or at least _CHAIN headers were seen; False
        on an implausible one; None when the next header is not in buf yet."""
        end = len(buf)
        seen = 0
        while True:
            seen += 1
            pos += 9 + ((buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2])
            if pos == end:
                return True
            if pos + 9 > end:
                return True if seen >= _CHAIN else None
            if not self._plausible(buf, pos, False):
                return False
            if seen >= _CHAIN_MAX:
                return True

    def _discard(self, count: int) -> None:
        if count > 0:
            self.bytes_discarded += count
            if not self._reason:
                self._reason = "resync"

    # ---------------------------------------------------------------- gaps

    def _gap(self, missing: int) -> None:
        """`missing` bytes after what was fed were not captured."""
        if self._mode != _FRAMES:
            # Still looking for a boundary: what was buffered is useless now.
            self._discard(len(self._pending))
            self._pending = b""
            if self._mode == _PREFACE:
                self._mode = _RESYNC
            self._reset_table()
            return
        if self._skip:
            if missing <= self._skip:
                self._skip -= missing
                return
            self._skip = 0
            self._lose_sync("uncaptured")
            self._pending = b""
            return
        pending = self._pending
        self._pending = b""
        if len(pending) >= 9:
            high, low, ftype, flags, sid = _HEADER.unpack_from(pending, 0)
            length = high << 16 | low
            captured = len(pending) - 9
            if ftype in (HEADERS, CONTINUATION, PUSH_PROMISE):
                self._header_frame(pending, 0, length, ftype, flags, sid, captured)
                if self._mode != _FRAMES:
                    return
            else:
                self.truncated_frames += 1
                if ftype == DATA:
                    # A PADDED DATA frame cut before its pad length.
                    self._events.append(("data", sid, max(0, length - 1),
                                         bool(flags & END_STREAM)))
            remaining = length - captured
            if missing <= remaining:
                self._skip = remaining - missing
                self._skip_kind = _SKIP_LOST
                return
            self._lose_sync("uncaptured")
            return
        # At (or within the 9 bytes of) a frame header: frames were lost.
        self._lose_sync("uncaptured")


def _integer(data: bytes, pos: int, value: int):
    """Continuation bytes of an HPACK integer whose prefix was all ones."""
    shift = 0
    while True:
        if pos >= len(data):
            raise _Truncated
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise _Malformed


def _string(data: bytes, pos: int):
    if pos >= len(data):
        raise _Truncated
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(data, pos, length)
    end = pos + length
    if end > len(data):
        raise _Truncated
    if byte & 0x80:
        raw = data[pos:end]
        if length > _HUFFMAN_CACHE_KEY:
            return decode_huffman(raw), end
        text = _huffman_cache.get(raw)
        if text is None:
            text = decode_huffman(raw)
            if len(_huffman_cache) >= _HUFFMAN_CACHE_SIZE:
                _huffman_cache.clear()
            _huffman_cache[raw] = text
        return text, end
    return data[pos:end], end


# Peers repeat the same Huffman-coded strings (nginx sends server, dates,
# content types as literals on every response); Huffman decoding is the
# costliest step in pure Python, so short strings are memoised.  Bounded:
# cleared when full.
_HUFFMAN_CACHE_KEY = 128
_HUFFMAN_CACHE_SIZE = 1024
_huffman_cache: dict = {}


def error_name(code: int) -> str:
    """RFC 9113 section 7 name of an error code."""
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else "0x%x" % code
