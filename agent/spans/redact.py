"""Redaction of secrets in captured URLs, headers and SQL: they never leave the node.

Query parameter values under known credential keys (the OpenTelemetry
semantic conventions' list for url.query / url.full, plus common ones) and
URL userinfo are replaced by "REDACTED"; the key and the rest of the URL
stay, so the span still says which endpoint was called and how.  SQL text
has every literal replaced by ? (agent/parsers/sql.py), unless the user
asks for the raw text or for none.
"""
from __future__ import annotations

# Lowercase: keys match case-insensitively.
SECRET_QUERY_KEYS = frozenset({
    # semantic conventions (url.query, url.full)
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
    "signature", "sig", "x-goog-signature",
    # common credential parameters
    "token", "access_token", "api_key", "apikey", "password", "passwd", "secret",
})

SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
    "x-auth-token", "x-access-token", "x-csrf-token", "x-xsrf-token",
    "x-amz-security-token", "x-goog-api-key", "x-vault-token", "private-token",
})

REDACTED = "REDACTED"
# What db.query.text carries.
SQL_TEXT_MODES = ("sanitized", "raw", "off")
_FRAGMENTS = ("sig", "token", "key", "pass", "secret", "cred")


class Redactor:
    """Replaces secret values; counts[rule] says how many, per rule."""

    def __init__(self, extra_query_keys=(), sql_text: str = "sanitized"):
        if sql_text not in SQL_TEXT_MODES:
            raise ValueError(f"sql_text must be one of {', '.join(SQL_TEXT_MODES)}, not {sql_text!r}")
        self.sql_text_mode = sql_text
        self.keys = SECRET_QUERY_KEYS | {key.lower() for key in extra_query_keys}
        # Most queries hold no secret; a few substring tests on the lowered
        # query (each a C-level scan) rule that out far cheaper than parsing
        # it.  Every key contains one of these fragments.
        self._fragments = _FRAGMENTS + tuple(
            key for key in self.keys if not any(f in key for f in _FRAGMENTS))
        self.counts = {"query_param": 0, "userinfo": 0, "sql_literal": 0}

    def redact_query(self, query: str) -> str:
        """query without "?"; values of secret keys become REDACTED."""
        lowered = query.lower()
        for fragment in self._fragments:
            if fragment in lowered:
                break
        else:
            return query
        params = query.split("&")
        for i, param in enumerate(params):
            key, eq, _ = param.partition("=")
            if eq and key.lower() in self.keys:
                params[i] = key + "=" + REDACTED
                self.counts["query_param"] += 1
        return "&".join(params)

    def redact_url(self, url: str) -> str:
        """An absolute URL with userinfo and secret query values redacted."""
        scheme_end = url.find("://")
        if scheme_end > 0:
            authority_start = scheme_end + 3
            authority_end = len(url)
            for delimiter in "/?#":
                i = url.find(delimiter, authority_start)
                if 0 <= i < authority_end:
                    authority_end = i
            at = url.rfind("@", authority_start, authority_end)
            if at >= 0:
                url = f"{url[:authority_start]}{REDACTED}:{REDACTED}{url[at:]}"
                self.counts["userinfo"] += 1
        query_start = url.find("?")
        if query_start < 0:
            return url
        fragment_start = url.find("#", query_start)
        if fragment_start < 0:
            return url[:query_start + 1] + self.redact_query(url[query_start + 1:])
        return (url[:query_start + 1] + self.redact_query(url[query_start + 1:fragment_start])
                + url[fragment_start:])

    def sql_text(self, sanitized: str, raw: str) -> str | None:
        """db.query.text for a statement: the sanitised text (counted when
        it hid literals), the raw one if the user asked, or None."""
        mode = self.sql_text_mode
        if mode == "sanitized":
            if sanitized != raw:
                self.counts["sql_literal"] += 1
            return sanitized
        return raw if mode == "raw" else None
