"""Rotating the box's broker credential on the server's command (`rotate_credentials`).

The new credential is tried before anything old is given up: it is written next to the working one
(owner-only, by an atomic rename), the MQTT session reconnects with it, and only once the broker has
let it in does it replace the old one on disk; the command's ack then leaves over that new
connection, which is what tells the server it may delete the old login or put the old certificate
on the CRL. If the broker refuses the new one, the session goes back to the old one and the ack says
why. A password arrives sealed to the box's own key (protocol/sealing.py); a certificate arrives in
clear (it is public) and is checked against the box's key, its CA and its device id first, so a
broken or foreign one is refused without ever disconnecting.

A rotated password is kept in `identity/mqtt-login.json`, laid over the config file's login, and
records which login of the config file it replaced: when the box is enrolled again (a new login in
the file), the file wins and the stale rotated login is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from polewatch.protocol.commands import RotateCredentialsArgs, SealedSecret
from polewatch.protocol.sealing import SealError, open_sealed

from ..config import AgentConfig, MqttConfig
from .downlink import CommandRefused

log = logging.getLogger("polewatch.agent.credentials")

LOGIN_FILE = "mqtt-login.json"
# Where provisioning leaves the box's own key (provisioning/identity.py; the agent does not import it).
BOX_KEY = "box.key"
# A certificate that starts this far in the future (the CA's clock ahead of the box's) is still taken.
CLOCK_SKEW = timedelta(minutes=10)


class RotationRefused(CommandRefused):
    """The new credential is not taken; the box keeps the one it has. The text says why."""


class Switcher(Protocol):
    """The MQTT session (session.Uplink): its current login, and reconnecting with another."""

    config: MqttConfig

    async def try_credential(self, candidate: MqttConfig) -> str | None:
        """Reconnect with `candidate`; None once connected with it, else why not (back on the old)."""
        ...


def write_private(path: Path, data: bytes) -> None:
    """Owner-only from creation, replaced by an atomic rename: a power cut leaves old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _login_mark(mqtt: MqttConfig) -> str:
    """Names the config file's login without holding its password."""
    password = mqtt.password.get_secret_value() if mqtt.password else ""
    return hashlib.sha256(f"{mqtt.username}\0{password}".encode()).hexdigest()


def login_file(config: AgentConfig) -> Path:
    return config.state_dir / "identity" / LOGIN_FILE


def effective_mqtt(config: AgentConfig) -> MqttConfig:
    """The broker settings to connect with: the config file's, with a rotated login laid over them."""
    path = login_file(config)
    if not path.is_file():
        return config.mqtt
    try:
        saved = json.loads(path.read_text())
        username, password, replaces = saved["username"], saved["password"], saved["replaces"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error(
            "rotated broker login unreadable; using the config file's", extra={"file": str(path), "error": str(exc)}
        )
        return config.mqtt
    if replaces != _login_mark(config.mqtt):
        log.info("the config file has a newer broker login (enrolled again); ignoring the rotated one",
                 extra={"file": str(path)})  # fmt: skip
        return config.mqtt
    return config.mqtt.model_copy(update={"username": username, "password": SecretStr(password)})


class CredentialRotator:
    """Runs `rotate_credentials` for the agent (the downlink calls `rotate`)."""

    def __init__(self, config: AgentConfig, session: Switcher) -> None:
        self.config = config
        self.session = session

    async def rotate(self, args: RotateCredentialsArgs) -> dict[str, Any]:
        if args.kind == "password":
            assert args.sealed_login is not None  # the model guarantees it
            return await self._password(args.sealed_login)
        assert args.certificate_pem is not None
        return await self._certificate(args.certificate_pem)

    def _key_file(self) -> Path:
        tls = self.session.config.tls
        if tls is not None and tls.key_file is not None:
            return tls.key_file
        return self.config.state_dir / "identity" / BOX_KEY

    def _box_key(self) -> ec.EllipticCurvePrivateKey:
        path = self._key_file()
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise RotationRefused(f"the box's key {path} cannot be read ({exc}); enrol the box again") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RotationRefused(f"the box's key {path} is a {type(key).__name__}, not an EC key")
        return key

    async def _password(self, sealed: SealedSecret) -> dict[str, Any]:
        current = self.session.config
        if current.username is None:
            raise RotationRefused("this box logs in with its client certificate; a password rotation does not apply")
        try:
            login = json.loads(open_sealed(self._box_key(), sealed, self.config.device_id))
            username, password = login["username"], login["password"]
            if not (isinstance(username, str) and isinstance(password, str) and username and password):
                raise ValueError("username and password must be non-empty strings")
        except SealError as exc:
            raise RotationRefused(f"sealed login refused: {exc}; keeping the current login") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RotationRefused(
                f"sealed login opened but is not a login ({exc}); keeping the current login"
            ) from None
        candidate = current.model_copy(update={"username": username, "password": SecretStr(password)})
        saved = json.dumps({"username": username, "password": password, "replaces": _login_mark(self.config.mqtt)})
        final = login_file(self.config)
        pending = final.with_name(f"{LOGIN_FILE}.next")
        write_private(pending, saved.encode())
        reason = await self.session.try_credential(candidate)
        if reason is not None:
            pending.unlink(missing_ok=True)
            raise RotationRefused(f"the broker refused the new login ({reason}); back on the previous login")
        os.replace(pending, final)
        log.info("broker login rotated", extra={"username": username})
        return {"kind": "password", "username": username}

    def _check_certificate(self, pem: str) -> x509.Certificate:
        tls = self.session.config.tls
        if tls is None or tls.cert_file is None:
            raise RotationRefused("this box logs in with a password; a certificate rotation does not apply")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            raise RotationRefused(f"the new certificate is not a PEM certificate ({exc})") from None
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*der) != self._box_key().public_key().public_bytes(*der):
            raise RotationRefused("the new certificate is for another key than this box's")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [self.config.device_id]:
            raise RotationRefused(f"the new certificate names {names[0].value if names else 'nobody'!r}, "
                                  f"not this box ({self.config.device_id})")  # fmt: skip
        try:
            ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError, InvalidSignature) as exc:
            raise RotationRefused(
                f"the new certificate is not signed by the broker's CA {tls.ca_file} ({exc})"
            ) from None
        now = datetime.now(timezone.utc)
        if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now + CLOCK_SKEW:
            raise RotationRefused(
                f"the new certificate is valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the box's clock reads {now:%Y-%m-%d %H:%M}"
            )
        return cert

    async def _certificate(self, pem: str) -> dict[str, Any]:
        cert = self._check_certificate(pem)
        current = self.session.config
        assert current.tls is not None and current.tls.cert_file is not None  # checked above
        final = current.tls.cert_file
        pending = final.with_name(f"{final.name}.next")
        write_private(pending, pem.encode())
        candidate = current.model_copy(update={"tls": current.tls.model_copy(update={"cert_file": pending})})
        reason = await self.session.try_credential(candidate)
        if reason is not None:
            pending.unlink(missing_ok=True)
            raise RotationRefused(f"the broker refused the new certificate ({reason}); back on the previous one")
        os.replace(pending, final)
        # Connected with the file's new content: later reconnects read it at its usual place.
        self.session.config = current
        serial = format(cert.serial_number, "x")
        log.info("client certificate rotated", extra={"serial": serial})
        return {"kind": "certificate", "serial": serial, "not_after": cert.not_valid_after_utc.isoformat()}
