"""RouteNamer: configured routes and the derived low-cardinality shape."""
from __future__ import annotations

import random
import time
import uuid

import pytest

from agent.spans.routes import ID, RouteNamer, derive_route, looks_like_id


@pytest.fixture
def namer():
    return RouteNamer(["/api/users/{id}", "/api/users/{id}/orders/{order}", "/static/*",
                       "/health", "/api/*"])


@pytest.mark.parametrize("path, route", [
    ("/api/users/42", "/api/users/{id}"),
    ("/api/users/alice", "/api/users/{id}"),
    ("/api/users/42/orders/7", "/api/users/{id}/orders/{order}"),
    ("/api/users/", "/api/*"),                 # {id} needs a non-empty segment
    ("/api/users/42/extra", "/api/*"),         # first match wins, in order
    ("/static/css/site.css", "/static/*"),
    ("/static/", "/static/*"),
    ("/health", "/health"),
    ("/healthz", None),
    ("/Health", None),                         # segments are exact
    ("/", None),
    ("*", None),
    ("", None),
])
def test_route_for(namer, path, route):
    assert namer.route_for(path) == route


def test_first_pattern_wins():
    namer = RouteNamer(["/a/*", "/a/{x}"])
    assert namer.route_for("/a/b") == "/a/*"
    namer = RouteNamer(["/a/{x}", "/a/*"])
    assert namer.route_for("/a/b") == "/a/{x}"


def test_name_follows_semconv(namer):
    assert namer.name("GET", "/api/users/9") == ("GET /api/users/{id}", "/api/users/{id}")
    assert namer.name("POST", "/nowhere/9") == ("POST", None)
    assert namer.counts["route_matched"] == 1 and namer.counts["route_unmatched"] == 1


@pytest.mark.parametrize("bad", ["api/x", "/a/*/b", "/a/{x", "/a/x{y}", "/a/{}", "/a/b*"])
def test_bad_patterns(bad):
    with pytest.raises(ValueError):
        RouteNamer([bad])


@pytest.mark.parametrize("segment", [
    "42", "0", "-17", "550e8400-e29b-41d4-a716-446655440000", "550e8400e29b41d4a716446655440000",
    "DEADBEEF01", "5f1c9a0b", "a8f3k29d", "ord-2023-0042", "john.doe@example.com",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "dGhpcyBpcyBhIHRlc3QgdG9rZW4=",
    "x" * 65,
])
def test_ids(segment):
    assert looks_like_id(segment)


@pytest.mark.parametrize("segment", [
    "users", "api", "v1", "v2", "orders", "deadbeef", "my-first-post", "index.html",
    "favicon-32x32.png", "bundle.v2.js", "healthz", "search", "",
])
def test_not_ids(segment):
    assert not looks_like_id(segment)


@pytest.mark.parametrize("path, derived", [
    ("/users/123", "/users/{id}"),
    ("/users/123/orders/550e8400-e29b-41d4-a716-446655440000", "/users/{id}/orders/{id}"),
    ("/v1/items", "/v1/items"),
    ("/", "/"),
    ("", "/"),
    ("*", "*"),
    ("example.com:443", ID),
    ("/a//b/", "/a//b/"),
    ("/u/john@example.com/avatar", "/u/{id}/avatar"),
])
def test_derive(namer, path, derived):
    assert namer.derive(path) == derived
    assert derive_route(path) == derived


def test_derive_is_bounded():
    deep = "/a" * 500
    derived = derive_route(deep)
    assert derived.endswith("/*") and derived.count("/") <= 34
    long = "/" + "b" * 10000
    assert len(derive_route(long)) <= 70


def test_derive_collapses_cardinality():
    rng = random.Random(1)
    paths = []
    for _ in range(5000):
        kind = rng.randrange(4)
        if kind == 0:
            paths.append(f"/api/users/{rng.randrange(10**9)}")
        elif kind == 1:
            paths.append(f"/api/orders/{uuid.UUID(int=rng.getrandbits(128))}/items")
        elif kind == 2:
            paths.append(f"/files/{rng.getrandbits(64):016x}")
        else:
            token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
            paths.append(f"/s/{token}1")
    assert {derive_route(p) for p in paths} == {
        "/api/users/{id}", "/api/orders/{id}/items", "/files/{id}", "/s/{id}"}


def test_caches_are_bounded():
    namer = RouteNamer(["/x/{id}"], cache_size=100)
    for i in range(1000):
        namer.route_for(f"/y/{i}")
        namer.derive(f"/y/{i}")
    assert len(namer._route_cache) <= 100 and len(namer._derive_cache) <= 100
    assert namer.counts["cache_resets"] > 0


def _per_call_us(fn, paths) -> float:
    started = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - started) / len(paths) * 1e6


def test_cost_per_call(namer):
    rng = random.Random(2)
    hot = [f"/api/users/{i % 50}" for i in range(20000)]
    cold = [f"/api/orders/{rng.getrandbits(64):x}/items/{rng.randrange(10**6)}" for _ in range(20000)]
    figures = {
        "route_for hot": _per_call_us(namer.route_for, hot),
        "derive hot": _per_call_us(namer.derive, hot),
        "route_for cold": _per_call_us(RouteNamer(namer.patterns).route_for, cold),
        "derive cold": _per_call_us(RouteNamer().derive, cold),
    }
    print("routes µs/call: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    assert figures["route_for hot"] < 5 and figures["derive hot"] < 5
    assert figures["route_for cold"] < 50 and figures["derive cold"] < 50
