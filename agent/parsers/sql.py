"""SQL text helpers for database spans: pure functions that never raise.

- sanitize(query) replaces every literal with ? (db.query.text must not
  carry values: they can be secrets) and drops comments.
- query_info(query) -> (db.query.summary, db.operation.name,
  db.collection.name) in one scan; summarize / operation_name /
  collection_name return one of them each.
- extract_trace_context(query) reads a sqlcommenter comment.

dialect: None (unknown: the safest reading), "postgresql" or "mysql".
They differ where the languages do: a backslash escapes a quote inside any
string for MySQL and for unknown text (so 'a\\'b' cannot leak its tail),
but only inside E'...' strings for PostgreSQL (standard_conforming_strings);
'#' starts a comment only for MySQL; "..." is an identifier except for MySQL,
whose default sql_mode (without ANSI_QUOTES) makes it a string literal.
"""
from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

MAX_SUMMARY = 255
# Results for texts up to this long are cached: applications send the same
# statement text over and over (prepared statements, ORMs), and the summary
# of a sanitised text repeats even when its literals vary.
_CACHE_TEXT = 4096
_CACHE_ENTRIES = 2048

_MARK = "\x00"  # stands for a literal until IN lists are collapsed

# The scanner matches a run of text that holds no literal (the skip group),
# then one literal or comment.  Most text goes through one tight character
# class loop; digits count as text when a word character precedes them
# (table1), quoted identifiers and $1 placeholders are skipped whole.  The
# Python callback thus runs only for literals and comments, never per
# character as an alternation would.  TRUE / FALSE are words to this
# scan: a second, cheap pass replaces them (_BOOLEAN), and a string prefix
# (E, N, X, B, U&, _charset) ends up at the end of the skip group, where
# _replace finds it.
def _skip(quoted_identifiers, hash_is_text):
    return (r"(?P<skip>(?:[^-/$'\"`#.\d]++|(?<=\w)\d++|-(?!-|[ \t\r\n]*+\.?\d)|/(?!\*)"
            r"|\.(?!\d)|\$\d++|(?<=\w)\$(?!\w*+\$)|\$(?!(?:[^\W\d]\w*+)?\$)"
            r"|`(?:[^`]++|``)*+(?:`|\Z)"
            + (r"|\"(?:[^\"]++|\"\")*+(?:\"|\Z)" if quoted_identifiers else "")
            + (r"|\#" if hash_is_text else "") + r")*+)")


_COMMON_HEAD = r"""
(?:
  (?P<line>--[^\n]*+)
| (?P<block>/\*(?:[^*]++|\*(?!/))*+(?:\*/|\Z))
| (?P<dollar>\$(?P<tag>(?:[^\W\d][\w]*+)?)\$[\s\S]*?(?:\$(?P=tag)\$|\Z))
| (?P<estr>(?<=[Ee])'(?:[^'\\]++|\\[\s\S]|\\\Z|'')*+(?:'|\Z))
"""
# A string cut short by the capture may end in a lone backslash: still a
# string, else its text would stay as it is.
_STR_BACKSLASH = r"""
| (?P<str>'(?:[^'\\]++|\\[\s\S]|\\\Z|'')*+(?:'|\Z))
"""
_STR_STANDARD = r"""
| (?P<str>'(?:[^']++|'')*+(?:'|\Z))
"""
_STR_DQ = r"""
| (?P<dqstr>"(?:[^"\\]++|\\[\s\S]|\\\Z|"")*+(?:"|\Z))
"""
# A number must not follow a word character, nor a dot that follows one
# (t1, x.5); a digit run glued to letters after it (123abc) is still
# replaced: PostgreSQL reads a number there, and a leaked digit run is worse
# than a mangled identifier.  A number's dot is never the first of two, so
# that "0..0" gives "?.?" and sanitising again changes nothing.  A literal
# ending in a word character takes the dotted digit runs glued to it (1.0.0,
# 0x1F.0, 1e5.0; booleans below): left alone, such a run follows that
# character and stays, then follows the "?" and goes on a second pass.
# A binary or octal literal takes every digit glued to it (0b12, 0o78): the
# digits it cannot hold would follow its "_" or digit and stay, then follow
# the "?" and go on a second pass.
# A character that neither the skip group nor a literal takes (the dot of
# x.5, a minus glued to a name) is text of its own (`other`): without it the
# scan would start again one character after the start of the failed match,
# inside a token it had read whole ($1, "a 1"), and read it differently.
_COMMON_TAIL = r"""
| (?P<num>(?<!\w)(?<!\w\.)(?:(?P<neg>-[ \t\r\n]*+))?(?:0[xX][0-9A-Fa-f_]++|0[bB][\d_]++|0[oO][\d_]++
     |(?:\d[\d_]*+(?:\.(?!\.)\d*+)?|\.\d++)(?:[eE][+-]?\d++)?)(?:\.\d++)*+)
| (?P<other>[\s\S])
| \Z
)
"""
_HASH = r"""
| (?P<hash>\#[^\n]*+)
"""


def _compile(*parts):
    return re.compile("".join(parts), re.VERBOSE)


_SCANNERS = {
    None: _compile(_skip(True, True), _COMMON_HEAD, _STR_BACKSLASH, _COMMON_TAIL),
    "postgresql": _compile(_skip(True, True), _COMMON_HEAD, _STR_STANDARD, _COMMON_TAIL),
    "mysql": _compile(_skip(False, False), _COMMON_HEAD, _HASH, _STR_BACKSLASH, _STR_DQ,
                      _COMMON_TAIL),
}
_SCANNERS["postgres"] = _SCANNERS["postgresql"]
_SCANNERS["mariadb"] = _SCANNERS["mysql"]

_SPACE = " \t\r\n"
_PREFIX = re.compile(r"(?<![\w$])(?:[EeNnBbXx]|[Uu]&|_[A-Za-z0-9]++)\Z")
_BOOLEAN = re.compile(r"(?<![\w$.\"`])(?:TRUE|FALSE|[Tt]rue|[Ff]alse)(?:\.\d++)*+(?![\w$\"`])")
# Characters after which a '-' before a number is a sign, not a minus.
_VALUE_END = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$)'\"`?]")
_KEYWORDS_BEFORE_SIGN = frozenset((
    "SELECT", "WHERE", "AND", "OR", "NOT", "THEN", "ELSE", "WHEN", "VALUES", "SET", "BY",
    "LIMIT", "OFFSET", "RETURN", "IN", "IS", "BETWEEN", "LIKE", "CASE", "ON", "HAVING"))


def _replace(m):
    group = m.lastgroup
    if group == "skip" or group == "other" or group is None:
        return m.group()
    skip = m.group("skip")
    if group == "str" or group == "estr" or group == "dqstr":
        # Drop a string prefix: N'..', X'..', B'..', U&'..', _utf8'..', E'..'.
        if skip:
            prefix = _PREFIX.search(skip)
            if prefix is not None:
                skip = skip[:prefix.start()]
        return skip + _MARK
    if group == "num":
        neg = m.group("neg")
        if neg:
            # A binary minus when a value ends right before it: keep it.
            s = m.string
            i = m.start("num") - 1
            while i >= 0 and s[i] in _SPACE:
                i -= 1
            if i >= 0 and s[i] in _VALUE_END:
                j = i
                while j >= 0 and (s[j].isalnum() or s[j] == "_"):
                    j -= 1
                if s[j + 1:i + 1].upper() not in _KEYWORDS_BEFORE_SIGN:
                    return skip + neg + _MARK
        return skip + _MARK
    if group in ("line", "block", "hash"):
        # A comment: nothing, or one space where it separated two tokens.
        s = m.string
        start, end = m.start(group), m.end()
        if start and end < len(s) and s[start - 1] not in _SPACE and s[end] not in _SPACE:
            return skip + " "
        return skip
    return skip + _MARK  # strings, dollar quotes, E strings, booleans


# A parenthesised list of literals only; _in_list keeps it when IN comes
# before it.  Starting the pattern with "(" lets the engine search fast.
_IN_LIST = re.compile(r"\([ \t\r\n]*+\x00(?:[ \t\r\n]*+,[ \t\r\n]*+\x00)++[ \t\r\n]*+\)")


def _in_list(m):
    s = m.string
    i = m.start() - 1
    while i >= 0 and s[i] in _SPACE:
        i -= 1
    if i >= 1 and s[i - 1:i + 1] in ("IN", "in", "In", "iN") and (
            i == 1 or not (s[i - 2].isalnum() or s[i - 2] in "_$")):
        return "(\x00)"
    return m.group()


def sanitize(query: str, dialect: str | None = None) -> str:
    """query with every literal replaced by ?, comments removed, and IN
    lists of literals collapsed to IN (?).  Placeholders ($1, ?, :name, %s,
    %(name)s) and quoted identifiers stay.  An unterminated string or
    comment runs to the end of the text (it becomes ? or disappears).
    A scanner defect raises: the caller counts it and masks the whole text
    (agent/protocols/sql_base.py)."""
    if len(query) <= _CACHE_TEXT:
        return _sanitize_cached(query, dialect)
    return _sanitize(query, dialect)


def _sanitize(query, dialect):
    scanner = _SCANNERS.get(dialect) or _SCANNERS[None]
    if _MARK in query:
        query = query.replace(_MARK, "")
    out = scanner.sub(_replace, query)
    if "rue" in out or "RUE" in out or "alse" in out or "ALSE" in out:
        out = _BOOLEAN.sub(_MARK, out)
    if "\x00," in out or "\x00 ," in out:
        out = _IN_LIST.sub(_in_list, out)
    out = out.replace(_MARK, "?")
    return out.strip()


_sanitize_cached = lru_cache(maxsize=_CACHE_ENTRIES)(_sanitize)


# ------------------------------------------------------------------ summary

# Tokens for the summary scan: literals and comments are matched only to be
# skipped; words keep their dotted qualification ("public.orders").
_TOKENS = re.compile(r"""
  --[^\n]*+
| /\*(?:[^*]++|\*(?!/))*+(?:\*/|\Z)
| \$(?P<tag>(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*+)?)\$[\s\S]*?(?:\$(?P=tag)\$|\Z)
| '(?:[^'\\]++|\\[\s\S]|'')*+(?:'|\Z)
| (?P<name>(?:[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*+|"(?:[^"]++|"")*+"|`(?:[^`]++|``)*+`)
           (?:[ \t]*+\.[ \t]*+(?:[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*+|"(?:[^"]++|"")*+"
                                |`(?:[^`]++|``)*+`|\*))*+)
| (?P<punct>[(),;])
""", re.VERBOSE)

# Operations that take a table right after a keyword.
_SIMPLE_OPS = frozenset((
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "TRUNCATE",
    "BEGIN", "COMMIT", "ROLLBACK", "START", "SAVEPOINT", "RELEASE", "END", "ABORT", "SET",
    "SHOW", "USE", "CALL", "EXPLAIN", "VACUUM", "ANALYZE", "COPY", "LOCK", "GRANT", "REVOKE",
    "PREPARE", "EXECUTE", "DEALLOCATE", "DECLARE", "FETCH", "CLOSE", "LISTEN", "NOTIFY",
    "UNLISTEN", "DISCARD", "RESET", "REINDEX", "CLUSTER", "REFRESH", "COMMENT", "DO",
    "VALUES", "WITH", "LOAD", "HANDLER", "DESCRIBE", "DESC", "OPTIMIZE", "CHECKPOINT",
    "XA", "KILL", "FLUSH", "RENAME",
))
_DDL_OPS = frozenset(("CREATE", "DROP", "ALTER"))
_DDL_SKIP = frozenset(("OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL",
                       "UNIQUE", "MATERIALIZED", "RECURSIVE", "IF", "NOT", "EXISTS",
                       "CONCURRENTLY", "ONLY", "DEFINER", "SQL", "SECURITY", "ALGORITHM",
                       "ONLINE", "IGNORE", "FOREIGN", "EXTERNAL"))
_TABLE_KEYWORDS = frozenset(("FROM", "JOIN", "INTO", "UPDATE", "TABLE"))
# A word after one of these is not an operation (ON DELETE CASCADE, FOR
# UPDATE, DO UPDATE, ON DUPLICATE KEY UPDATE, IS DISTINCT FROM...).
_NOT_OP_AFTER = frozenset(("ON", "FOR", "DO", "KEY", "BEFORE", "AFTER", "OF", "INSTEAD",
                           "GRANT", "REVOKE", "TO", "WITH", "PRIVILEGES"))
_TABLE_SKIP = frozenset(("ONLY", "LATERAL", "IGNORE", "LOW_PRIORITY", "DELAYED",
                         "HIGH_PRIORITY", "QUICK", "TABLE", "STRAIGHT_JOIN"))
_NOT_TABLE = frozenset(("SELECT", "VALUES", "WITH", "SET", "WHERE", "DEFAULT", "UNNEST",
                        "GENERATE_SERIES", "JSON_TABLE", "DUAL"))
_LIST_END = frozenset(("WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "ON", "USING", "JOIN",
                       "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "UNION",
                       "WINDOW", "FOR", "RETURNING", "SET", "VALUES", "OFFSET", "FETCH",
                       "EXCEPT", "INTERSECT", "AS", "SELECT", "OUTER"))


def _target(name: str) -> str:
    return name.replace(" ", "").replace("\t", "")


def query_info(query: str):
    """(db.query.summary, db.operation.name, db.collection.name) of query;
    the summary is operations and their target tables in order ("INSERT
    shipping_details SELECT orders"), at most 255 characters; None for what
    cannot be told.  Literals and comments never reach the result, so
    query_info(sanitize(q)) == query_info(q); calling it on the sanitised
    text makes its cache hit when only literals vary."""
    if len(query) <= _CACHE_TEXT:
        return _query_info_cached(query)
    return _query_info(query)


def _query_info(query):
    parts = []
    first_op = first_table = None
    expect_table = False      # the next name is a table
    table_list = False        # in a FROM list: ", name" adds a table
    ddl = None                # CREATE/DROP/ALTER awaiting its object type
    ddl_object = False        # the next name names the DDL object
    prev = ""
    depth = 0
    list_depth = -1
    size = 0
    for m in _TOKENS.finditer(query):
        name = m.group("name")
        if name is None:
            punct = m.group("punct")
            if punct is None:
                continue            # a literal or a comment
            if punct == "(":
                depth += 1
                expect_table = False
            elif punct == ")":
                depth -= 1
                if depth < list_depth:
                    table_list = False
            elif punct == ",":
                if table_list and depth == list_depth:
                    expect_table = True
            else:                   # ';' ends a statement
                expect_table = table_list = False
                ddl = None
                ddl_object = False
            prev = punct
            continue
        upper = name.upper() if name[0] not in "\"`" else ""
        if ddl is not None:
            if upper in _DDL_SKIP:
                prev = upper
                continue
            op = ddl + " " + upper if upper else ddl
            parts.append(op)
            size += len(op) + 1
            if first_op is None:
                first_op = op
            ddl = None
            ddl_object = upper in ("TABLE", "VIEW", "INDEX", "SEQUENCE", "SCHEMA", "DATABASE",
                                   "FUNCTION", "PROCEDURE", "TRIGGER", "TYPE", "EXTENSION")
            prev = upper
            continue
        if ddl_object:
            if upper in _DDL_SKIP:
                prev = upper
                continue
            ddl_object = False
            if upper != "ON":
                target = _target(name)
                parts.append(target)
                size += len(target) + 1
                if first_table is None:
                    first_table = target
            prev = upper
            expect_table = upper == "ON"
            continue
        if upper in _DDL_OPS and prev not in _NOT_OP_AFTER:
            ddl = upper
            expect_table = table_list = False
            prev = upper
            continue
        if expect_table:
            if upper in _TABLE_SKIP:
                prev = upper
                continue
            expect_table = False
            if upper not in _NOT_TABLE and upper not in _SIMPLE_OPS:
                target = _target(name)
                parts.append(target)
                size += len(target) + 1
                if first_table is None:
                    first_table = target
                prev = upper
                if size > MAX_SUMMARY:
                    break
                continue
        if upper in _SIMPLE_OPS and prev not in _NOT_OP_AFTER and not (
                upper in ("SET", "VALUES", "END", "DO", "CLOSE", "DESC", "WITH",
                          "REPLACE", "COMMENT", "LOAD", "FETCH", "RESET", "KILL", "START",
                          "ANALYZE", "LOCK", "COPY", "DECLARE", "EXECUTE", "BEGIN",
                          "RENAME", "FLUSH", "USE", "CALL", "TRUNCATE")
                and prev not in ("", ";", "(")):
            if upper == "START" or upper == "BEGIN" and prev in ("", ";"):
                op = "START TRANSACTION" if upper == "START" else "BEGIN"
            else:
                op = upper
            if not (upper == "WITH" or upper == "VALUES" and prev == "("):
                parts.append(op)
                size += len(op) + 1
                if first_op is None:
                    first_op = op
            expect_table = upper in ("UPDATE", "TRUNCATE", "COPY", "LOCK", "CALL",
                                     "REPLACE", "ANALYZE", "VACUUM", "DESCRIBE", "DESC",
                                     "OPTIMIZE", "REINDEX", "CLUSTER")
            if upper == "START":
                # START TRANSACTION: swallow the next word.
                prev = "START"
                continue
            prev = upper
            if size > MAX_SUMMARY:
                break
            continue
        if upper in _TABLE_KEYWORDS and not (upper == "TABLE" and prev not in (
                "LOCK", "TRUNCATE", "ANALYZE", "OPTIMIZE")):
            expect_table = True
            if upper == "FROM" or upper == "JOIN":
                table_list = upper == "FROM"
                list_depth = depth
        elif table_list and upper in _LIST_END:
            table_list = False
        prev = upper
    if first_op is None:
        return None, None, first_table
    summary = " ".join(p for p in parts if p not in ("TRANSACTION", "WORK"))
    if len(summary) > MAX_SUMMARY:
        cut = summary.rfind(" ", 0, MAX_SUMMARY + 1)
        summary = summary[:cut if cut > 0 else MAX_SUMMARY]
    return summary or None, first_op, first_table


_query_info_cached = lru_cache(maxsize=_CACHE_ENTRIES)(_query_info)


def summarize(query: str):
    """db.query.summary, or None."""
    return query_info(query)[0]


def operation_name(query: str):
    """db.operation.name: the first operation, or None."""
    return query_info(query)[1]


def collection_name(query: str):
    """db.collection.name: the first table, or None."""
    return query_info(query)[2]


# ------------------------------------------------------------ sqlcommenter

_COMMENT = re.compile(r"/\*((?:[^*]++|\*(?!/))*+)\*/")
_PAIR = re.compile(r"([A-Za-z0-9_%.\-]++)\s*+=\s*+'((?:[^'\\]++|\\.)*+)'")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")


def extract_trace_context(query: str):
    """(traceparent, tracestate) from a sqlcommenter comment, each None
    when absent; values are unescaped and URL-decoded.  A traceparent that
    is not well formed comes back as None."""
    if "traceparent" not in query:
        return None, None
    for m in _COMMENT.finditer(query):
        body = m.group(1)
        if "traceparent" not in body:
            continue
        traceparent = tracestate = None
        for key, value in _PAIR.findall(body):
            key = unquote(key)
            value = unquote(value.replace("\\'", "'"))
            if key == "traceparent":
                traceparent = value.strip()
            elif key == "tracestate":
                tracestate = value.strip()
        if traceparent is not None:
            if not _TRACEPARENT.match(traceparent) or traceparent.startswith("ff"):
                traceparent = None
            return traceparent, tracestate
    return None, None
