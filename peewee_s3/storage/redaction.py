"""storage.redaction: keeps secrets out of what storage says — the credentials to blank out of
error messages, URLs without their user:password@ part, and botocore's logs without session
tokens (the filter is installed when `peewee_s3.storage` is imported).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit


def _secrets(credentials, storage_options) -> list:
    values = list((credentials or {}).values())
    secret_options = ("key", "secret", "token", "password")
    values += [v for k, v in (storage_options or {}).items() if k in secret_options]
    return [v for v in values if isinstance(v, str) and len(v) >= 8]  # shorter: no real secret


def _redact(text: str, secrets) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _safe_url(url: str) -> str:
    """The URL without any user:password@ part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


class _HideSessionTokens(logging.Filter):
    """botocore logs each signed request at DEBUG, session token included: blank it out, so
    that no log of this process shows a credential (the key id and signature are not secret)."""

    TOKEN = re.compile(r"(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^\s'\",}]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = self.TOKEN.sub(r"\1***", message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


for _name in ("botocore.auth", "botocore.endpoint", "aiobotocore.endpoint"):
    logging.getLogger(_name).addFilter(_HideSessionTokens())
