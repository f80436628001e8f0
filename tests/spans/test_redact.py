"""Secrets in URLs are replaced before anything leaves the node."""
from __future__ import annotations

import pytest

from agent.spans.redact import SECRET_QUERY_KEYS, SENSITIVE_HEADERS, Redactor


@pytest.mark.parametrize("query, expected", [
    ("id=7&token=s3cr3t", "id=7&token=REDACTED"),
    ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=ab12"
     "&X-Amz-Security-Token=tok",
     "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
     "&X-Amz-Security-Token=REDACTED"),
    ("AWSAccessKeyId=AKIA&Signature=xyz&Expires=1", "AWSAccessKeyId=REDACTED&Signature=REDACTED"
     "&Expires=1"),
    ("sig=abc&sv=2020", "sig=REDACTED&sv=2020"),
    ("X-Goog-Signature=00ff", "X-Goog-Signature=REDACTED"),
    ("API_KEY=1&apikey=2&Password=3&passwd=4&SECRET=5&access_token=6",
     "API_KEY=REDACTED&apikey=REDACTED&Password=REDACTED&passwd=REDACTED&SECRET=REDACTED"
     "&access_token=REDACTED"),
    ("token=", "token=REDACTED"),
    ("token", "token"),
    ("mytoken=1&token_type=bearer&signed=1", "mytoken=1&token_type=bearer&signed=1"),
    ("q=token%3Dabc", "q=token%3Dabc"),
    ("", ""),
])
def test_redact_query(query, expected):
    assert Redactor().redact_query(query) == expected


def test_counts_per_rule():
    redactor = Redactor()
    assert redactor.counts == {"query_param": 0, "userinfo": 0, "sql_literal": 0}
    redactor.redact_query("token=a&sig=b&q=c")
    redactor.redact_url("https://u:p@example.com/x?password=1")
    redactor.sql_text("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = 1")
    redactor.sql_text("SELECT * FROM t WHERE a = $1", "SELECT * FROM t WHERE a = $1")
    assert redactor.counts == {"query_param": 3, "userinfo": 1, "sql_literal": 1}


@pytest.mark.parametrize("mode, expected", [
    ("sanitized", "SELECT * FROM t WHERE a = ?"),
    ("raw", "SELECT * FROM t WHERE a = 1"),
    ("off", None),
])
def test_sql_text_modes(mode, expected):
    redactor = Redactor(sql_text=mode)
    assert redactor.sql_text("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = 1") == expected


def test_unknown_sql_text_mode_is_refused():
    with pytest.raises(ValueError, match="sanitized, raw, off"):
        Redactor(sql_text="plain")


def test_extra_keys_case_insensitive():
    redactor = Redactor(extra_query_keys=["Session", "otp"])
    assert redactor.redact_query("SESSION=1&otp=2&other=3") == \
        "SESSION=REDACTED&otp=REDACTED&other=3"


@pytest.mark.parametrize("url, expected", [
    ("https://user:pass@example.com/p?q=1", "https://REDACTED:REDACTED@example.com/p?q=1"),
    ("http://user@example.com:8080/", "http://REDACTED:REDACTED@example.com:8080/"),
    ("http://a:b@example.com?token=x#frag", "http://REDACTED:REDACTED@example.com?token=REDACTED"
     "#frag"),
    ("http://example.com/p?token=x#sig=y", "http://example.com/p?token=REDACTED#sig=y"),
    ("http://example.com/user@host?a=1", "http://example.com/user@host?a=1"),
    ("http://example.com/p", "http://example.com/p"),
    ("/relative?api_key=k", "/relative?api_key=REDACTED"),
])
def test_redact_url(url, expected):
    assert Redactor().redact_url(url) == expected


def test_key_lists():
    assert {"x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
            "signature", "sig", "x-goog-signature", "token", "access_token", "api_key",
            "apikey", "password", "passwd", "secret"} <= SECRET_QUERY_KEYS
    assert {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
            "x-auth-token"} <= SENSITIVE_HEADERS
    assert all(name == name.lower() for name in SENSITIVE_HEADERS | SECRET_QUERY_KEYS)
