"""Why a camera cannot be opened, in words a technician can act on.

OpenCV's FFmpeg backend says only "not opened": a wrong password, a camera that is off, a typo in
the stream path and a port that never answers look the same to the agent. When an open fails, the
source asks the camera itself with one plain request (RTSP DESCRIBE, HTTP GET, a look at the device
or file) and logs the answer: `unauthorized` sends the technician to the credentials, `refused` to
the camera's power or port, `timeout` to the network. It runs once per failed open, never per frame.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .urls import redact_url


@dataclass(frozen=True)
class Diagnosis:
    reason: str  # a short stable code: unauthorized, not_found, refused, timeout, no_such_file, ...
    detail: str  # one line for the log, without credentials


HINTS = {
    "unauthorized": "the camera refused the user name or password in the URL: check the credentials",
    "not_found": "the camera answers but has no stream at this path: check the path in the URL",
    "refused": "nothing listens on the camera's port: check that the camera is on and the port is right",
    "timeout": "the camera does not answer: check the network, the address and any firewall",
    "unresolved": "the camera's host name cannot be resolved: check the address",
    "no_such_file": "the video file does not exist: check the path",
    "no_such_device": "the video device does not exist: check that the USB camera is plugged in",
    "undecodable": "the source answers but its video cannot be decoded",
    "server_error": "the camera answered with an error",
}


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without userinfo, and the (unquoted) user name and password."""
    parts = urlsplit(url)
    user = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), user, password


def _status(response: bytes) -> tuple[int, dict[str, str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    match = re.match(r"RTSP/\d\.\d (\d{3})", lines[0])
    if match is None:
        raise ValueError(f"not an RTSP response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), headers


def _digest(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    """RFC 2617 digest response (without qop, as IP cameras ask for it) to `challenge`."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()  # the protocol's hash
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}"'


def _rtsp(url: str, timeout: float) -> Diagnosis:
    plain, user, password = _split_credentials(url)
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 554
    where = redact_url(url)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return Diagnosis("unresolved", f"cannot resolve {host}")
    except ConnectionRefusedError:
        return Diagnosis("refused", f"connection to {host}:{port} refused")
    except OSError as exc:  # timeout, unreachable network
        return Diagnosis("timeout", f"no answer from {host}:{port} within {timeout:g} s ({exc})")
    with sock:
        if parts.scheme == "rtsps":  # TLS: the port answers; what is behind it is left to FFmpeg's message
            return Diagnosis("undecodable", f"{where} accepts connections, but its stream could not be opened")
        sock.settimeout(timeout)

        def describe(cseq: int, authorization: str | None) -> tuple[int, dict[str, str]]:
            request = f"DESCRIBE {plain} RTSP/1.0\r\nCSeq: {cseq}\r\nAccept: application/sdp\r\n"
            if authorization:
                request += f"Authorization: {authorization}\r\n"
            sock.sendall((request + "\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return _status(data)

        try:
            basic = None
            if user is not None:
                basic = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            code, headers = describe(1, basic)
            challenge = headers.get("www-authenticate", "")
            if code == 401 and user is not None and challenge.lower().startswith("digest"):
                code, headers = describe(2, _digest(challenge, user, password or "", "DESCRIBE", plain))
        except (OSError, ValueError) as exc:
            return Diagnosis("timeout", f"{where} did not answer an RTSP DESCRIBE ({exc})")
    if code == 401:
        given = "no credentials" if user is None else f"user {user!r}"
        return Diagnosis("unauthorized", f"{where} answered 401 Unauthorized to {given}")
    if code == 404:
        return Diagnosis("not_found", f"{where} answered 404 Not Found")
    if code >= 400:
        return Diagnosis("server_error", f"{where} answered RTSP {code}")
    return Diagnosis("undecodable", f"{where} answered RTSP {code}, but its stream could not be opened")


def _http(url: str, timeout: float) -> Diagnosis:
    plain, user, password = _split_credentials(url)
    where = redact_url(url)
    request = urllib.request.Request(plain, method="GET")  # the camera's own http(s) URL
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "?")
            return Diagnosis("undecodable", f"{where} answered HTTP {response.status} ({content_type}), not a video")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return Diagnosis("unauthorized", f"{where} answered HTTP {exc.code}")
        if exc.code == 404:
            return Diagnosis("not_found", f"{where} answered HTTP 404")
        return Diagnosis("server_error", f"{where} answered HTTP {exc.code}")
    except urllib.error.URLError as exc:
        inner = exc.reason
        if isinstance(inner, ConnectionRefusedError):
            return Diagnosis("refused", f"connection to {where} refused")
        if isinstance(inner, socket.gaierror):
            return Diagnosis("unresolved", f"cannot resolve the host of {where}")
        return Diagnosis("timeout", f"no answer from {where} ({inner})")
    except OSError as exc:  # a timeout while reading the answer
        return Diagnosis("timeout", f"no answer from {where} within {timeout:g} s ({exc})")


def diagnose(kind: str, target: str, timeout: float = 3.0) -> Diagnosis:
    """Why the source of `kind` (rtsp, http, file, v4l2) at `target` (URL, path or device) did not open."""
    if kind == "rtsp":
        return _rtsp(target, timeout)
    if kind == "http":
        return _http(target, timeout)
    if kind == "v4l2":
        if not Path(target).exists():
            return Diagnosis("no_such_device", f"{target} does not exist")
        return Diagnosis("undecodable", f"{target} exists but cannot be opened as a video device (busy? not a camera?)")
    if not Path(target).exists():
        return Diagnosis("no_such_file", f"{target} does not exist")
    return Diagnosis("undecodable", f"{target} exists but has no video OpenCV can decode")
