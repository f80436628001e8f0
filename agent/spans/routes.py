"""The span-name cardinality guard: routes for URL paths.

Raw paths carry ids (/users/8231, /orders/5f1c...) and would make one span
name or metric series per request.  Two tools keep that bounded:

- route_for(path): the first configured pattern that matches, for example
  "/api/users/{id}" (a {name} segment matches exactly one non-empty segment)
  or "/static/*" (a trailing * matches the rest of the path, including
  nothing).  This is a *known* route: it may become http.route and the span
  name "{method} {route}".
- derive(path): when no pattern matches, a low-cardinality shape of the path
  with id-like segments collapsed to "{id}".  It is a guess, so the semantic
  conventions do not allow it as http.route: use it for naming or metric
  labels only.

Both are called per span, so results are cached in bounded LRU-ish dicts
(cleared wholesale when full: cheap, and a workload's hot paths refill it).
"""
from __future__ import annotations

import re

ID = "{id}"

# Segment shapes that are ids, not route parts.
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z")
_HEX = re.compile(r"[0-9a-fA-F]{8,}\Z")
_EMAIL = re.compile(r"[^@/]+@[^@/]+\.[^@/]+\Z")
_BASE64ISH = re.compile(r"[A-Za-z0-9_\-+=.~%]{21,}\Z")
_HAS_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d{4,}")
_ALNUM_TOKEN = re.compile(r"[A-Za-z0-9_\-.~%]+\Z")
# A long token with a digit in it: "a8f3k29d", "ord-2023-0042".
_MIN_MIXED = 8

_MAX_PATH = 2048        # longer paths are cut before deriving (bounded work)
_MAX_SEGMENTS = 32      # deeper paths end in "/*" in the derived route
_MAX_SEGMENT = 64       # any longer segment is an id (free text, blobs)


def looks_like_id(segment: str) -> bool:
    """Whether one path segment is an identifier rather than a route part."""
    if not segment:
        return False
    if segment.isdigit():
        return True
    n = len(segment)
    if n >= 8:
        if _HEX.match(segment) and _HAS_DIGIT.search(segment):
            # "deadbeef" alone is a word; hex ids nearly always hold a digit.
            return True
        if n in (32, 36) and _UUID.match(segment):
            return True
        if n >= _MIN_MIXED and _HAS_DIGIT.search(segment) and _ALNUM_TOKEN.match(segment) \
                and not _is_versionish(segment):
            return True
        if n > 20 and _BASE64ISH.match(segment):
            return True
    if "@" in segment and _EMAIL.match(segment):
        return True
    if segment[0] == "-" and segment[1:].isdigit():
        return True
    return n > _MAX_SEGMENT


def _is_versionish(segment: str) -> bool:
    """File names with a digit, like "bundle.v2.js" or "favicon-32x32.png":
    a name with a short alphabetic extension and no long digit run stays."""
    base, dot, ext = segment.rpartition(".")
    return bool(dot) and ext.isalpha() and len(ext) <= 5 and _DIGIT_RUN.search(base) is None


class RouteNamer:
    """route_for(path) from configured patterns; derive(path) otherwise."""

    def __init__(self, patterns=(), cache_size: int = 4096):
        self.patterns: list[str] = []
        # (segments without the trailing *, has_star, pattern), in order.
        self._compiled: list[tuple[tuple, bool, str]] = []
        for pattern in patterns:
            self.add(pattern)
        self.cache_size = cache_size
        self._route_cache: dict[str, str | None] = {}
        self._derive_cache: dict[str, str] = {}
        self.counts = {"route_matched": 0, "route_unmatched": 0, "cache_resets": 0}

    def add(self, pattern: str) -> None:
        pattern = pattern.strip()
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern {pattern!r} must start with '/'")
        segments = pattern.split("/")[1:]
        star = segments[-1] == "*"
        if star:
            segments = segments[:-1]
        for segment in segments:
            if "*" in segment:
                raise ValueError(f"route pattern {pattern!r}: '*' is only allowed as the last segment")
            if ("{" in segment or "}" in segment) and not (
                    segment.startswith("{") and segment.endswith("}") and len(segment) > 2
                    and "{" not in segment[1:-1] and "}" not in segment[1:-1]):
                raise ValueError(f"route pattern {pattern!r}: a parameter must be a whole "
                                 f"segment like {{id}}")
        compiled = tuple(None if s.startswith("{") else s for s in segments)
        self.patterns.append(pattern)
        self._compiled.append((compiled, star, pattern))
        if hasattr(self, "_route_cache"):
            self._route_cache.clear()

    def route_for(self, path: str) -> str | None:
        """The first configured pattern matching path (without query), or None."""
        cache = self._route_cache
        try:
            route = cache[path]
        except KeyError:
            route = self._match(path)
            if len(cache) >= self.cache_size:
                cache.clear()
                self.counts["cache_resets"] += 1
            cache[path] = route
        if route is None:
            self.counts["route_unmatched"] += 1
        else:
            self.counts["route_matched"] += 1
        return route

    def _match(self, path: str) -> str | None:
        if not self._compiled or not path.startswith("/"):
            return None
        segments = path.split("/")[1:]
        n = len(segments)
        for compiled, star, pattern in self._compiled:
            m = len(compiled)
            if star:
                if n < m:
                    continue
            elif n != m:
                continue
            for want, got in zip(compiled, segments):
                if want is None:
                    if not got:
                        break
                elif want != got:
                    break
            else:
                return pattern
        return None

    def derive(self, path: str) -> str:
        """path with id-like segments as {id}: low cardinality, for names
        and metric labels (never http.route)."""
        cache = self._derive_cache
        try:
            return cache[path]
        except KeyError:
            pass
        derived = derive_route(path)
        if len(cache) >= self.cache_size:
            cache.clear()
            self.counts["cache_resets"] += 1
        cache[path] = derived
        return derived

    def name(self, method: str, path: str) -> tuple[str, str | None]:
        """(span name, http.route or None): "{method} {route}" when a
        configured route matches, else just the method (the semantic
        conventions' rule)."""
        route = self.route_for(path)
        return (f"{method} {route}" if route is not None else method), route


def derive_route(path: str) -> str:
    if not path:
        return "/"
    if path[0] != "/":
        # asterisk-form ("*") or authority-form ("host:443"): no path.
        return path if path == "*" else ID
    if len(path) > _MAX_PATH:
        path = path[:_MAX_PATH] + "/*"
    segments = path.split("/")
    changed = False
    if len(segments) > _MAX_SEGMENTS + 1:
        segments = segments[:_MAX_SEGMENTS + 1] + ["*"]
        changed = True
    for i in range(1, len(segments)):
        segment = segments[i]
        if segment and looks_like_id(segment):
            segments[i] = ID
            changed = True
    return "/".join(segments) if changed else path
