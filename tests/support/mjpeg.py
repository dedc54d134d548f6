"""A real HTTP MJPEG camera for the tests: multipart/x-mixed-replace JPEG frames from the sample clip.

Cheap IP cameras and many NVR "substreams" serve exactly this. The server runs in the test process
(a threaded HTTP server on a random loopback port) and can be stopped and started again on the same
port (a camera rebooting), paused with its connections left open (a hung camera), switched to frames
of another size (a resolution change), and guarded by HTTP basic authentication.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2

from .footage import SAMPLE_CLIP, read_frames
from .ports import free_port

BOUNDARY = "polewatchframe"
PATH = "/stream.mjpg"


def jpeg_frames(clip: Path = SAMPLE_CLIP, *, count: int = 50, size: tuple[int, int] | None = None) -> list[bytes]:
    """The first `count` frames of `clip` as JPEG, resized to `size` (width, height) if given."""
    images = read_frames(clip)[:count]
    out = []
    for image in images:
        if size is not None:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError("OpenCV cannot encode JPEG")
        out.append(data.tobytes())
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        pass  # the tests read the agent's log, not the camera's

    def do_GET(self) -> None:
        camera = self.server.camera
        camera.requests += 1
        if camera.credentials is not None:
            expected = "Basic " + base64.b64encode(camera.credentials.encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if self.path != PATH:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        camera.clients.add(self.connection)
        try:
            index = 0
            next_due = time.monotonic()
            while not camera.stopping.is_set():
                camera.running.wait()
                if camera.stopping.is_set():
                    return
                frames = camera.frames
                data = frames[index % len(frames)]
                index += 1
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                self.wfile.flush()
                next_due += 1.0 / camera.fps
                time.sleep(max(0.0, next_due - time.monotonic()))
        except OSError:
            return  # the client went away
        finally:
            camera.clients.discard(self.connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], camera: MjpegCamera) -> None:
        self.camera = camera
        super().__init__(address, _Handler)


class MjpegCamera:
    """An MJPEG-over-HTTP camera on 127.0.0.1:`port` (random when not given)."""

    def __init__(
        self,
        frames: Sequence[bytes],
        *,
        fps: float = 10.0,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.frames = list(frames)
        self.fps = fps
        self.port = port or free_port()
        self.username = username
        self.password = password
        self.credentials = None if username is None else f"{username}:{password or ''}"
        self.requests = 0
        self.clients: set[socket.socket] = set()
        self.running = threading.Event()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def url_with(self, username: str | None = None, password: str | None = None, path: str = PATH) -> str:
        userinfo = "" if username is None else f"{username}:{password or ''}@"
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    @property
    def url(self) -> str:
        return self.url_with(self.username, self.password)

    def start(self) -> None:
        self.stopping.clear()
        self.running.set()
        self._server = _Server(("127.0.0.1", self.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="mjpeg-camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The camera goes away: the listening socket and every open stream are closed."""
        self.stopping.set()
        self.running.set()  # wake paused handlers so that they see `stopping`
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for client in list(self.clients):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def pause(self) -> None:
        """Frames stop; the connections stay open (a hung camera)."""
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def set_frames(self, frames: Sequence[bytes]) -> None:
        """From the next frame on, serve these (e.g. another resolution)."""
        self.frames = list(frames)
