"""Tables kept in insertion order whose entries age out: a dict's first
entry is its oldest, so expiring looks only at what leaves."""
from __future__ import annotations


def expire_oldest(table: dict, limit: float, time_at: int) -> None:
    """Delete, oldest first, the entries whose time (entry[time_at]) is
    not after `limit`; the first younger one ends the walk."""
    while table:
        key = next(iter(table))
        if table[key][time_at] > limit:
            return
        del table[key]
