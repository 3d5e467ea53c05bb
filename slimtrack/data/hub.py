"""Is the Hugging Face hub reachable? Answered in seconds, never minutes.

Both the tokenizer loader and the dataset reader ask this before touching the hub,
so that an offline machine gets a one-line error at once instead of a retry loop.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_offline_reason(timeout_s: float = 3.0) -> str | None:
    """None when the hub (or the HTTPS proxy in front of it) accepts a TCP connection, else why not."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    host, port = _first_hop()
    return _probe_tcp(host, port, timeout_s)


def _first_hop() -> tuple[str, int]:
    """The host a hub request connects to first: the HTTPS proxy if one is set, else the endpoint."""
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(variable)
        if proxy:
            parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            return parsed.hostname or "", parsed.port or 80
    parsed = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    return parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)


def _probe_tcp(host: str, port: int, timeout_s: float) -> str | None:
    # The probe runs in a daemon thread because name resolution ignores socket
    # timeouts: a resolver that hangs must not hang the caller.
    outcome: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = str(exc) or type(exc).__name__

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "ok" in outcome:
        return None
    return f"cannot reach {host}:{port}: {outcome.get('error', f'no answer in {timeout_s:g} s')}"
