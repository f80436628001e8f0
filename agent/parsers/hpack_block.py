"""HPACK header blocks (RFC 7541) of one connection direction, decoded by a
passive observer that may have missed part of the dynamic table's history.

hpack provides the Decoder (its header table, static table, eviction and
limits) and the Huffman decoder.  The representation loop is local because
hpack.Decoder.decode() stops at the first unknown index and loses the whole
block, where a block from a joined connection still has decodable headers:
a header whose name or value cannot be known is left out, never guessed, and
its block is marked partial.  Emptying the table whenever bytes that may
have changed it were lost is exact, not a heuristic: entries inserted since
sit at the same indices in the peer's table (both insert at the front).
"""
from __future__ import annotations

import re

import hpack
from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

MAX_TABLE_SIZE = 64 * 1024      # dynamic table bytes kept, whatever the peer announces
MAX_HEADER_LIST = 64 * 1024     # decoded header list size (RFC 7541 sizing) emitted per block

_STATIC = (None,) + HeaderTable.STATIC_TABLE
_STATIC_LEN = len(HeaderTable.STATIC_TABLE)
# A name hpack decoded that does not read as an HTTP/2 field name (lower-case
# token, or a defined pseudo-header) means the block is not what it seems:
# garbage from a false resynchronisation, or corruption.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+|:(?:authority|method|path|scheme|status|protocol)")


class _Unknown(bytes):
    """Type of the placeholder for a table entry name that is not known."""


_UNKNOWN = _Unknown()


class _Malformed(Exception):
    """Internal: the header block cannot be decoded further."""


class _Truncated(Exception):
    """Internal: the header block ends inside a representation."""


class HpackBlockDecoder:
    """The dynamic table of one direction and the decode of its blocks;
    counters are plain ints (counters())."""

    __slots__ = ("decoder", "unknown_headers", "hpack_errors", "oversized_header_lists",
                 "table_resets")
    COUNTERS = ("unknown_headers", "hpack_errors", "oversized_header_lists", "table_resets")

    def __init__(self):
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.decoder.max_allowed_table_size = MAX_TABLE_SIZE
        self.unknown_headers = self.hpack_errors = self.oversized_header_lists = 0
        self.table_resets = 0

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in self.COUNTERS}

    def limit_table(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: what this encoder may use."""
        self.decoder.max_allowed_table_size = min(size, MAX_TABLE_SIZE)

    def table_lost(self) -> None:
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

    def decode(self, block: bytes, truncated: bool):
        """(headers, partial) of a header block, or (None, True) when it is
        malformed.  Unknown references are left out; a malformed block stops
        the decode and empties the table."""
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
                self.table_lost()
            partial = True
        except (_Malformed, HPACKDecodingError):
            # Real encoders do not produce this: the bytes are not the block
            # they seemed (most likely a false resynchronisation), so none
            # of what decoded can be trusted.
            self.hpack_errors += 1
            self.table_lost()
            return None, True
        return headers, partial


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
