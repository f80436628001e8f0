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

Three layers, one module each: agent.parsers.h2_frames cuts the bytes into
frames (FrameStream: preface, frames skipped by length, resynchronisation),
agent.parsers.hpack_block decodes header blocks against the dynamic table
(HpackBlockDecoder), and H2Direction here assembles header blocks from
HEADERS, PUSH_PROMISE and CONTINUATION frames, applies SETTINGS, handles
capture gaps and turns frames into events.  The names other modules use
(PREFACE, MAX_HEADER_BLOCK, error_name, H2Direction) are importable from
here.
"""
from __future__ import annotations

from hyperframe.frame import GoAwayFrame, RstStreamFrame, SettingsFrame

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.h2_frames import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM,
                                     ERROR_NAMES, FRAME_ERRORS, FRAME_HEADER, FRAMES_MODE, GOAWAY,
                                     HEADERS, MAX_CONTROL_FRAME, MAX_HEADER_BLOCK, PREFACE,
                                     PREFACE_MODE, PUSH_PROMISE, RESYNC_MODE, RST_STREAM,
                                     SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE,
                                     SKIP_LOST, FrameStream, error_name, header_fragment,
                                     truncated_fragment)
from agent.parsers.hpack_block import MAX_HEADER_LIST, MAX_TABLE_SIZE, HpackBlockDecoder

__all__ = ["ERROR_NAMES", "MAX_CONTROL_FRAME", "MAX_HEADER_BLOCK", "MAX_HEADER_LIST",
           "MAX_TABLE_SIZE", "PREFACE", "H2Direction", "error_name"]


class H2Direction(FrameStream):
    """Decoder for one direction of one HTTP/2 connection.  See the module
    docstring for events and statuses; counters are plain ints (counters())."""

    __slots__ = ("peer", "hpack", "_block_flags", "_block_type", "_block_promised",
                 "header_blocks", "partial_blocks")

    def __init__(self, is_client_side: bool, midstream: bool | None = None):
        """is_client_side: this object decodes the bytes the client sends
        (they begin with the connection preface).  midstream: True when the
        connection is known to have begun before capture, False when it is
        known to begin here; None detects it (no preface, or on the server
        side a first frame that is not SETTINGS, means joined mid-stream)."""
        super().__init__(is_client_side, midstream)
        self.peer = None
        self.hpack = HpackBlockDecoder()
        self._block_flags = 0
        self._block_type = HEADERS
        self._block_promised = 0
        self.header_blocks = self.partial_blocks = 0

    def link(self, other: "H2Direction") -> None:
        """Pair with the other direction: SETTINGS announced here set the
        limits of the other direction's decoder, and the reverse."""
        self.peer = other
        other.peer = self

    def counters(self) -> dict:
        hpack = self.hpack
        return {"frames": self.frames, "header_blocks": self.header_blocks,
                "partial_blocks": self.partial_blocks, **hpack.counters(),
                "resyncs": self.resyncs, "bytes_discarded": self.bytes_discarded,
                "sync_lost": self.sync_lost, "truncated_frames": self.truncated_frames,
                "uncaptured_bytes": self.uncaptured_bytes, "bad_frames": self.bad_frames,
                "unknown_frames": self.unknown_frames, "internal_errors": self.internal_errors}

    @property
    def decoder(self):
        """hpack's Decoder: the dynamic table and its limits."""
        return self.hpack.decoder

    @property
    def unknown_headers(self) -> int:
        return self.hpack.unknown_headers

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

    # ------------------------------------------------------ control frames

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
        except FRAME_ERRORS:
            self.bad_frames += 1

    def _apply_settings(self, settings: dict) -> None:
        """SETTINGS sent in this direction bound what the other direction's
        encoder may do."""
        peer = self.peer
        if peer is None:
            return
        size = settings.get(SETTINGS_HEADER_TABLE_SIZE)
        if size is not None:
            peer.hpack.limit_table(size)
        frame_size = settings.get(SETTINGS_MAX_FRAME_SIZE)
        if frame_size is not None and 16384 <= frame_size < 1 << 24:
            peer.max_frame_size = frame_size

    # ------------------------------------------------------- header blocks

    def _header_frame(self, buf: bytes, pos: int, length: int, ftype: int, flags: int, sid: int,
                      captured: int) -> None:
        """A HEADERS, PUSH_PROMISE or CONTINUATION frame of which the first
        `captured` payload bytes are in buf at pos + 9."""
        if captured == length:
            try:
                fragment, promised = header_fragment(buf, pos, length, ftype, flags, sid)
            except FRAME_ERRORS:
                self.bad_frames += 1
                if self._block is not None:
                    self._finish_block(truncated=True)
                else:
                    self._table_lost()
                return
            truncated = False
        else:
            # Cut short (capture limit or bound): the fragment's prefix.
            self.truncated_frames += 1
            fragment, promised = truncated_fragment(buf[pos + 9:pos + 9 + captured], length,
                                                    ftype, flags)
            truncated = True
        if ftype != CONTINUATION:
            self._block = bytearray(fragment)
            self._block_sid = sid
            self._block_flags = flags
            self._block_type = ftype
            self._block_promised = promised
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
        headers, partial = self.hpack.decode(bytes(block), truncated)
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
        self.hpack.table_lost()

    # ---------------------------------------------------------------- gaps

    def _gap(self, missing: int) -> None:
        """`missing` bytes after what was fed were not captured."""
        if self._mode != FRAMES_MODE:
            # Still looking for a boundary: what was buffered is useless now.
            self._discard(len(self._pending))
            self._pending = b""
            if self._mode == PREFACE_MODE:
                self._mode = RESYNC_MODE
            self._table_lost()
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
            high, low, ftype, flags, sid = FRAME_HEADER.unpack_from(pending, 0)
            length = high << 16 | low
            captured = len(pending) - 9
            if ftype in (HEADERS, CONTINUATION, PUSH_PROMISE):
                self._header_frame(pending, 0, length, ftype, flags, sid, captured)
                if self._mode != FRAMES_MODE:
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
                self._skip_kind = SKIP_LOST
                return
            self._lose_sync("uncaptured")
            return
        # At (or within the 9 bytes of) a frame header: frames were lost.
        self._lose_sync("uncaptured")
