"""Evidence packages: one alert, everything known about it, in one zip that can be checked later.

For the littering-sanction process the city must show what the camera saw and that nothing was
changed since. The zip holds `alert.json` (the alert, every step with who and when, the device as
last heard from, the rule), `images/<snapshot id>.jpg` (the pictures exactly as the pole sent them,
already redacted at the edge), and `SHA256SUMS` in the format `sha256sum -c` reads, covering every
other file; its own hash goes in the audit entry of the export, so a package can be matched to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from .alert_schemas import AlertOut, StepOut
from .models import Alert, AlertSnapshot, AlertStep, Device
from .schemas import DeviceOut


def snapshots_of(session: Session, alert: Alert) -> list[AlertSnapshot]:
    """The pictures of the alert's event (detections and rule events carry the track id)."""
    if alert.event_id is None:
        return []
    return list(
        session.scalars(
            select(AlertSnapshot)
            .where(AlertSnapshot.device_id == alert.device_id, AlertSnapshot.camera_id == alert.camera_id,
                   AlertSnapshot.event_id == alert.event_id)
            .order_by(AlertSnapshot.id)
        )
    )  # fmt: skip


def snapshot_meta(s: AlertSnapshot) -> dict[str, object]:
    return {
        "id": s.id, "message_id": s.message_id, "phase": s.phase, "label": s.label, "score": s.score,
        "box": s.box, "width": s.width, "height": s.height, "redactions": s.redactions, "sha256": s.sha256,
        "bytes": len(s.jpeg), "frame_time": s.frame_time.isoformat(), "received_at": s.received_at.isoformat(),
        "file": f"images/{s.id}.jpg",
    }  # fmt: skip


def package(session: Session, alert: Alert, exported_by: str) -> tuple[bytes, str]:
    """The zip and its SHA-256."""
    steps = session.scalars(select(AlertStep).where(AlertStep.alert_id == alert.id).order_by(AlertStep.id))
    device = session.get(Device, alert.device_id)
    pictures = snapshots_of(session, alert)
    document = {
        "alert": AlertOut.of(alert).model_dump(mode="json"),
        "steps": [StepOut.of(s).model_dump(mode="json") for s in steps],
        "device": DeviceOut.of(device).model_dump(mode="json") if device else None,
        "rule": {"rule_id": alert.rule_id, "event_type": alert.event_type},
        "snapshots": [snapshot_meta(p) for p in pictures],
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "exported_by": exported_by,
    }
    files: dict[str, bytes] = {"alert.json": json.dumps(document, indent=2, sort_keys=True).encode()}
    for p in pictures:
        files[f"images/{p.id}.jpg"] = p.jpeg
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("SHA256SUMS", sums)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()
