"""Publishing to the boxes' down branches (config documents, commands).

A short MQTT connection of its own per batch, rather than the ingest's session: the ingest's
persistent session must never be held up (or torn down) by a publish, and changes are rare. Each
message is QoS 1 and this returns only after the broker acknowledged every one, so "published" in
the database means the broker has it (retained, for config documents).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import aiomqtt

from .settings import Settings

PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool


class PublishError(Exception):
    """The broker could not be reached or did not acknowledge: nothing is known to be published."""


async def publish(settings: Settings, messages: list[Outgoing]) -> None:
    if not messages:
        return
    try:
        async with aiomqtt.Client(
            settings.mqtt_host,
            settings.mqtt_port,
            username=settings.mqtt_username,
            password=settings.mqtt_password_value(),
            # Unique per call: two replicas (or two requests) publishing at once must not take
            # over each other's connection.
            identifier=f"{settings.mqtt_client_id[:40]}-down-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            tls_context=settings.mqtt_tls_context(),
            timeout=PUBLISH_TIMEOUT_S,
        ) as client:
            for m in messages:
                await client.publish(m.topic, m.payload, qos=1, retain=m.retain, timeout=PUBLISH_TIMEOUT_S)
    except aiomqtt.MqttError as exc:
        raise PublishError(f"broker {settings.mqtt_host}:{settings.mqtt_port}: {exc}") from exc
