"""Alerts as OASIS CAP 1.2 messages (the Common Alerting Protocol), for agencies that take CAP.

Only the elements CAP requires plus what an agency needs to act: what (event, description), where
(the pole, as areaDesc), when (sent, onset), and a link back to the alert. Element order follows
the CAP 1.2 schema, which is a sequence: validators reject elements out of order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime

from .models import Agency, Alert

NS = "urn:oasis:names:tc:emergency:cap:1.2"
SENDER = "polewatch@command-centre"

# event_type prefix -> (CAP category, severity)
_KIND = {
    "camera": ("Infra", "Minor"),
    "detection": ("Safety", "Moderate"),
    "zone": ("Safety", "Moderate"),
    "loiter": ("Security", "Moderate"),
    "line": ("Safety", "Minor"),
    "left_behind": ("Env", "Moderate"),  # littering: the city's environment service
}


def cap_time(value: datetime) -> str:
    """CAP's dateTime: seconds precision with an explicit offset, never 'Z' (CAP 1.2, 3.3.2)."""
    text = value.replace(microsecond=0).isoformat()
    return text.replace("+00:00", "-00:00") if text.endswith("+00:00") else text


def _sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{NS}}}{tag}")
    element.text = text
    return element


def alert_xml(alert: Alert, agency: Agency, sent: datetime) -> bytes:
    ET.register_namespace("", NS)
    root = ET.Element(f"{{{NS}}}alert")
    _sub(root, "identifier", f"polewatch-alert-{alert.id}")
    _sub(root, "sender", SENDER)
    _sub(root, "sent", cap_time(sent))
    _sub(root, "status", "Actual")
    _sub(root, "msgType", "Alert")
    _sub(root, "scope", "Private")
    _sub(root, "addresses", agency.name if " " not in agency.name else f'"{agency.name}"')
    info = ET.SubElement(root, f"{{{NS}}}info")
    category, severity = _KIND.get(alert.event_type.split(":", 1)[0], ("Other", "Unknown"))
    _sub(info, "language", "en-US")
    _sub(info, "category", category)
    _sub(info, "event", alert.event_type)
    _sub(info, "urgency", "Immediate")
    _sub(info, "severity", severity)
    _sub(info, "certainty", "Observed")
    _sub(info, "onset", cap_time(alert.occurred_at))
    _sub(info, "senderName", "Polewatch command centre")
    _sub(info, "headline", f"{alert.event_type} at {alert.device_id} camera {alert.camera_id}")
    what = f"{alert.label} " if alert.label else ""
    rule = f" (rule {alert.rule_id})" if alert.rule_id else ""
    _sub(info, "description", f"{what}{alert.event_type}{rule} seen by {alert.device_id}/{alert.camera_id}.")
    for name, value in (("polewatchAlertId", str(alert.id)), ("deviceId", alert.device_id)):
        parameter = ET.SubElement(info, f"{{{NS}}}parameter")
        _sub(parameter, "valueName", name)
        _sub(parameter, "value", value)
    area = ET.SubElement(info, f"{{{NS}}}area")
    _sub(area, "areaDesc", f"pole {alert.device_id}")
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document
