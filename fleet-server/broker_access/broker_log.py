"""Refused and suspicious attempts, read from the broker's own log topic ($SYS/broker/log/...).

Mosquitto 2.0 says at notice level when it refuses a connection ("Client <unknown> disconnected, not
authorised.", right after the "New connection from ADDRESS" line of that socket) and when a client id
already connected is used again ("Client X already connected, closing old connection."). It does not
log a refused subscription (with `log_type subscribe` it logs only granted ones: we still compare those
with what a box may subscribe to, which would reveal a hole in the rules) nor, below debug level, a
refused publish (acknowledged and dropped, as MQTT 3.1.1 prescribes): those attempts fail at the
broker without a trace the server can read; docs/broker-access.md says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from polewatch.protocol import topics

from .policy import device_may_subscribe

_STAMP = re.compile(r"^(?P<ts>\d+): (?P<text>.*)$")
_NEW_CONNECTION = re.compile(r"^New connection from (?P<address>\S+) on port (?P<port>\d+)\.$")
_CONNECTED = re.compile(
    r"^New client connected from (?P<address>\S+) as (?P<client>\S+) \(.*?(?:u'(?P<user>[^']*)')?\)\.$"
)
_NOT_AUTHORISED = re.compile(r"^Client (?P<client>\S+) disconnected, not authori[sz]ed\.$")
# A certificate the broker would not accept (revoked in the CRL, expired, from another CA): the TLS
# handshake fails before any MQTT, so the line names no client, only the socket's "New connection".
# Mosquitto words it two ways, depending on whether the handshake failed while accepting the socket
# (which then names the address) or on the first read after it.
_TLS_REFUSED = re.compile(
    r"^(?:OpenSSL Error\[\d+\]|Client connection from (?P<address>\S+) failed): "
    r".*(?P<why>certificate (?:verify failed|revoked|expired))"
)
_TAKEOVER = re.compile(r"^Client (?P<client>\S+) already connected, closing old connection\.$")
_SUBSCRIBE = re.compile(r"^(?P<client>\S+) (?P<qos>[0-2]) (?P<filter>\S+)$")


@dataclass(frozen=True)
class SecurityEvent:
    """One attempt worth an operator's attention, as the broker reported it."""

    at: datetime
    kind: str  # connect_refused | certificate_refused | session_takeover | subscribe_outside_branch
    client_id: str | None
    address: str | None
    topic: str | None
    detail: str


class BrokerLogReader:
    """Turns log lines into security events; keeps the little state the log format needs.

    `is_device` tells a box's client id from the server's own (the server may subscribe widely).
    """

    def __init__(self, is_device: Callable[[str], bool] | None = None) -> None:
        self._pending_address: str | None = None
        self._is_device = is_device or _looks_like_device

    def feed(self, level_topic: str, line: str) -> SecurityEvent | None:
        match = _STAMP.match(line.strip())
        if match is None:
            return None
        at = datetime.fromtimestamp(int(match["ts"]), timezone.utc)
        text = match["text"]
        if m := _NEW_CONNECTION.match(text):
            self._pending_address = m["address"]
            return None
        if _CONNECTED.match(text):
            self._pending_address = None
            return None
        if m := _NOT_AUTHORISED.match(text):
            address, self._pending_address = self._pending_address, None
            client = None if m["client"] == "<unknown>" else m["client"]
            return SecurityEvent(
                at,
                "connect_refused",
                client,
                address,
                None,
                "the broker refused the connection: wrong or revoked credentials, or a client "
                "id that does not belong to the account",
            )
        if m := _TLS_REFUSED.match(text):
            address, self._pending_address = m["address"] or self._pending_address, None
            return SecurityEvent(
                at,
                "certificate_refused",
                None,
                address,
                None,
                f"the broker refused a client certificate at the TLS handshake ({m['why']}): revoked, expired "
                "or not from this fleet's CA",
            )
        if m := _TAKEOVER.match(text):
            return SecurityEvent(
                at,
                "session_takeover",
                m["client"],
                self._pending_address,
                None,
                "a second connection used a client id that was already connected",
            )
        if level_topic.endswith("/subscribe") and (m := _SUBSCRIBE.match(text)):
            client, topic_filter = m["client"], m["filter"]
            if self._is_device(client) and not device_may_subscribe(client, topic_filter):
                return SecurityEvent(
                    at,
                    "subscribe_outside_branch",
                    client,
                    None,
                    topic_filter,
                    f"{client} asked to subscribe to {topic_filter!r}, outside its down branch (the broker refuses it)",
                )
        return None


def _looks_like_device(client_id: str) -> bool:
    try:
        topics.check_device_id(client_id)
    except ValueError:
        return False
    return not client_id.startswith("polewatch-")
