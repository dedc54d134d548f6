"""Finding the ONVIF cameras beside the box with a WS-Discovery Probe (SOAP-over-UDP).

The technician often does not know the camera's address: it came from the installer with DHCP or
a factory default. ONVIF cameras answer a WS-Discovery Probe for `dn:NetworkVideoTransmitter`,
multicast to 239.255.255.250:3702, with a ProbeMatch that names their ONVIF service (XAddrs) and
describes them in scopes (name, hardware, location). Only the standard library is used: one
datagram out, a few in, and a tolerant reader; the maintained Python WS-Discovery packages bring a
threaded publish/subscribe service for a job that is one request.

Anything on the LAN may answer, so replies are untrusted: a reply that is not XML, carries a
DOCTYPE (entity tricks), is truncated, or does not relate to our Probe's MessageID is dropped with
a debug log, never an exception. Cameras often answer more than once (one per interface, or to
each repeat of the Probe); answers are merged by endpoint reference.
"""

from __future__ import annotations

import logging
import select
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

MULTICAST_GROUP = ("239.255.255.250", 3702)
MAX_DATAGRAM = 65535
REPEAT_AFTER_S = 0.25  # SOAP-over-UDP sends a multicast message twice: one lost datagram must not hide a camera

PROBE_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
            xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"
            xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
  <s:Header>
    <a:Action s:mustUnderstand="1">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>
    <a:MessageID>{message_id}</a:MessageID>
    <a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>
    <a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>
  </s:Header>
  <s:Body>
    <d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe>
  </s:Body>
</s:Envelope>
"""


class DiscoveryError(RuntimeError):
    """Discovery could not even be attempted (no socket, bad target); the text says what to do."""


@dataclass
class DiscoveredCamera:
    endpoint: str
    xaddrs: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    source: str = ""

    def _scope(self, kind: str) -> str | None:
        prefix = f"onvif://www.onvif.org/{kind}/"
        values = [unquote(s[len(prefix) :]) for s in self.scopes if s.lower().startswith(prefix.lower())]
        return " / ".join(v for v in values if v) or None

    @property
    def name(self) -> str | None:
        return self._scope("name")

    @property
    def hardware(self) -> str | None:
        return self._scope("hardware")

    @property
    def location(self) -> str | None:
        return self._scope("location")

    @property
    def address(self) -> str:
        """The camera's IPv4 address when it gives one (IPv6 link-local XAddrs are of no use in a config)."""
        for xaddr in self.xaddrs:
            host = urlsplit(xaddr).hostname
            if host and ":" not in host:
                return host
        return self.source

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "address": self.address,
            "name": self.name,
            "hardware": self.hardware,
            "location": self.location,
            "xaddrs": self.xaddrs,
            "scopes": self.scopes,
            "types": self.types,
            "source": self.source,
        }


def probe_message(message_id: str) -> bytes:
    return PROBE_TEMPLATE.format(message_id=message_id).encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _bare_id(text: str) -> str:
    """`urn:uuid:X`, `uuid:X` and `X` are the same MessageID: cameras echo it back in all three forms."""
    text = text.strip().lower()
    for prefix in ("urn:", "uuid:"):
        text = text.removeprefix(prefix)
    return text


def parse_probe_matches(data: bytes, message_id: str, source: str) -> list[DiscoveredCamera]:
    """The cameras in one reply to our Probe; [] (with a debug log) for anything else."""
    if b"<!DOCTYPE" in data[:1024].upper():
        log.debug("ignored a reply from %s: it carries a DOCTYPE", source)
        return []
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        log.debug("ignored a reply from %s: not XML (%s)", source, exc)
        return []
    relates_to = next((e.text or "" for e in root.iter() if _local(e.tag) == "RelatesTo"), None)
    if relates_to is None or _bare_id(relates_to) != _bare_id(message_id):
        log.debug("ignored a reply from %s: RelatesTo %r is not our Probe %s", source, relates_to, message_id)
        return []
    cameras = []
    for match in (e for e in root.iter() if _local(e.tag) == "ProbeMatch"):
        fields: dict[str, str] = {}
        for child in match.iter():
            name = _local(child.tag)
            if name in ("Address", "XAddrs", "Scopes", "Types") and name not in fields:
                fields[name] = (child.text or "").strip()
        endpoint = fields.get("Address", "")
        if not endpoint:
            log.debug("ignored a ProbeMatch from %s without an endpoint reference", source)
            continue
        cameras.append(
            DiscoveredCamera(
                endpoint=endpoint,
                xaddrs=fields.get("XAddrs", "").split(),
                scopes=fields.get("Scopes", "").split(),
                types=fields.get("Types", "").split(),
                source=source,
            )
        )
    if not cameras:
        log.debug("ignored a reply from %s: no ProbeMatch in it", source)
    return cameras


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DiscoveryError(f"--target {text!r}: expected HOST:PORT, e.g. 192.168.1.64:3702")
    return host.strip("[]"), int(port)


def discover_cameras(
    timeout_s: float = 3.0, *, target: tuple[str, int] | None = None, interface: str | None = None
) -> list[DiscoveredCamera]:
    """Probe (multicast, or unicast to `target`) and collect answers until `timeout_s` has passed.

    Waits the whole timeout: a Probe has no "last answer", and cameras delay their replies by a
    random time of up to a few hundred milliseconds on purpose, so they do not all answer at once.
    """
    message_id = f"urn:uuid:{uuid.uuid4()}"
    message = probe_message(message_id)
    destination = target or MULTICAST_GROUP
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        raise DiscoveryError(f"cannot open a UDP socket: {exc}") from exc
    found: dict[str, DiscoveredCamera] = {}
    with sock:
        try:
            if target is None:
                # TTL 1: the Probe stays on the pole's own network segment, as WS-Discovery intends.
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                if interface:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            sock.bind(("0.0.0.0", 0))
            sock.sendto(message, destination)
        except OSError as exc:
            where = f"{destination[0]}:{destination[1]}"
            raise DiscoveryError(
                f"cannot send the ONVIF Probe to {where}: {exc}; check that this box has a network interface up"
                + (f" with address {interface}" if interface else "")
            ) from exc
        started = time.monotonic()
        deadline = started + timeout_s
        repeated = False
        while (now := time.monotonic()) < deadline:
            if not repeated and now - started >= REPEAT_AFTER_S:
                repeated = True
                try:
                    sock.sendto(message, destination)
                except OSError as exc:  # the first Probe went out; answers to it still count
                    log.debug("repeat of the Probe failed: %s", exc)
            wait = min(deadline - now, REPEAT_AFTER_S) if not repeated else deadline - now
            readable, _, _ = select.select([sock], [], [], max(wait, 0))
            if not readable:
                continue
            try:
                data, (host, _port) = sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:  # e.g. ICMP port unreachable from a unicast target: nobody there
                log.debug("receive failed: %s", exc)
                continue
            for camera in parse_probe_matches(data, message_id, host):
                known = found.get(camera.endpoint)
                if known is None:
                    found[camera.endpoint] = camera
                    continue
                known.xaddrs += [x for x in camera.xaddrs if x not in known.xaddrs]
                known.scopes += [s for s in camera.scopes if s not in known.scopes]
    return sorted(found.values(), key=lambda c: (c.address, c.endpoint))
