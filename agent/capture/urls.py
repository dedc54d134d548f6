"""Camera URLs as they may be shown to people."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """Hide the password in rtsp://user:pass@host URLs before they reach a log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.split("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
