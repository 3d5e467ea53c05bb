"""Credentials never leave the process: URIs and messages without ``user:password@``.

No MLflow import, so the reading side (analysis.py) and the console use it freely.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")


def redact_uri(uri: str) -> str:
    """A tracking URI without credentials."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def redact_text(text: str) -> str:
    """Any ``scheme://user:password@`` inside a message loses its credentials."""
    return _CREDENTIALS.sub(lambda m: m.group("scheme"), text)
