"""Secrets and remote text kept out of what people and logs see.

- Credentials in a URL (`https://user:password@host/...`) become `https://***@host/...` wherever a
  URL is shown: errors, job events, /status, logs (`redact_url`, `redact_text`).
- What a remote system answered is quoted only as a short excerpt on one line, without control
  characters or terminal escapes, so a hostile answer cannot forge log lines or run escapes in a
  terminal (`excerpt`).
- `SecretFilter` removes the values of credential headers (Authorization, Cookie, Set-Cookie,
  DSpace's and Koha's CSRF tokens) and URL credentials from log records; `install_log_filter`
  puts it where logging is configured (`--debug`, `serve`, `worker`) and keeps httpcore, whose
  DEBUG trace prints every response header (DSpace's bearer token, Koha's session cookie), at
  INFO.
"""

from __future__ import annotations

import logging
import re

#: the most characters of a remote answer an error quotes
EXCERPT = 200
#: headers whose values are credentials
SECRET_HEADERS = (
    "proxy-authorization",
    "authorization",
    "set-cookie",
    "cookie",
    "dspace-xsrf-token",
    "x-xsrf-token",
    "x-csrf-token",
    "csrf-token",
)
REDACTED = "[redacted]"

# scheme://userinfo@ : userinfo runs to the last "@" before the path, query or fragment
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s]*@")
_UNPRINTABLE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b.?|[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")
_NAMES = "|".join(re.escape(name) for name in SECRET_HEADERS)
# ('Authorization', 'value'), (b'Set-Cookie', b'value'), {'cookie': 'value'}
_QUOTED_HEADER = re.compile(
    rf"""(?i)(b?(['"])(?:{_NAMES})\2\s*[,:]\s*b?)(['"])((?:\\.|(?!\3).)*)\3"""
)
# Authorization: value   (a header line)
_HEADER_LINE = re.compile(rf"(?im)^(\s*(?:{_NAMES})\s*:\s*)(\S.*)$")
# Bearer <token> / Basic <credentials>, wherever they appear
_SCHEME_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")


def redact_url(url: str) -> str:
    """The URL without the credentials in its userinfo part."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***`."""
    return _USERINFO.sub(r"\1***@", text)


def excerpt(text: str | bytes | None, limit: int = EXCERPT) -> str:
    """A remote answer as an error may quote it: one line, no control characters or terminal
    escapes, white space collapsed, URL credentials removed, at most `limit` characters."""
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    flat = _SPACES.sub(" ", _UNPRINTABLE.sub(" ", text[: limit * 4])).strip()
    flat = redact_text(flat)
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def redact_secrets(text: str) -> str:
    """`text` without credential header values, bearer/basic credentials or URL credentials."""
    text = _QUOTED_HEADER.sub(rf"\1\3{REDACTED}\3", text)
    text = _HEADER_LINE.sub(rf"\1{REDACTED}", text)
    text = _SCHEME_VALUE.sub(rf"\1 {REDACTED}", text)
    return redact_text(text)


class SecretFilter(logging.Filter):
    """Rewrites a log record's message without secrets; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit: leave it to the handler
            return True
        cleaned = redact_secrets(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


#: loggers of the HTTP clients, filtered at the source too (a framework such as Celery may
#: replace the root logger's handlers)
HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.http11", "httpcore.http2", "httpcore.connection")


def install_log_filter() -> None:
    """Filter secrets out of every record the root logger's handlers and the HTTP clients'
    loggers pass, and keep httpcore's header dumps (DEBUG) out of the log. Idempotent."""
    logging.getLogger("httpcore").setLevel(logging.INFO)
    targets: list[logging.Filterer] = list(logging.getLogger().handlers)
    targets += [logging.getLogger(name) for name in HTTP_LOGGERS]
    for target in targets:
        if not any(isinstance(f, SecretFilter) for f in target.filters):
            target.addFilter(SecretFilter())
