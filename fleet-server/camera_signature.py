"""A health report's cameras as one short string, kept beside the report in `devices`.

`camera_id<US>connected (1/0)<US>state` per camera, joined by <RS>. The fleet roll-up reads only
this: parsing 10,000 JSON reports per request (even in SQL) was most of its time, and devices whose
cameras are in the same condition (the usual case) share one string, so they are judged once per
request, not once per device (registry_health.rollup). `Device.last_health` keeps it up to date on
every write through the ORM; migration 0070 computes the same string in SQL for older reports.
"""

from __future__ import annotations

from typing import Any

_US, _RS = "\x1f", "\x1e"


def of(cameras: Any) -> str | None:
    """The signature of a health report's `cameras` list; None when it names no camera."""
    if not isinstance(cameras, list):
        return None
    parts = []
    for camera in cameras:
        if not isinstance(camera, dict):
            continue
        camera_id, state = camera.get("camera_id"), camera.get("state")
        connected = "1" if camera.get("connected") is True else "0"
        parts.append(f"{'' if camera_id is None else camera_id}{_US}{connected}{_US}{state or ''}")
    return _RS.join(parts) or None


def parse(signature: str | None) -> list[dict[str, Any]]:
    """The cameras of a signature, as the report's camera entries (only the fields it keeps)."""
    if not signature:
        return []
    out = []
    for part in signature.split(_RS):
        camera_id, connected, state = [*part.split(_US), "", "", ""][:3]
        out.append({"camera_id": camera_id, "connected": connected in ("1", "true"), "state": state or None})
    return out
