"""A real RTSP server started by the tests on a random loopback port, serving the sample clip in a loop.

The server is GStreamer's RTSP server (Debian's libgstrtspserver), driven through GObject
introspection by the *system* Python (`/usr/bin/python3` with python3-gi): the project's venv does not
carry, and must not need, PyGObject. This module is both the tests' handle and the server itself:

    /usr/bin/python3 -m support.rtsp --port 8554 --clip polewatch/samples/vtest-clip.mp4   (PYTHONPATH=tests)

The clip's H.264 access units are read once and replayed forever without re-encoding, with their
timestamps shifted by one clip length per loop; the media pipeline is not live, so its sinks pace
the stream in real time (10 fps for the sample clip). Every client gets its own pipeline, starting at
the first (key) frame. RTP goes over TCP (interleaved) or UDP, as the client asks; with a user name
and password the server requires RTSP basic authentication.

Only the standard library may be imported at the top of this module: the system Python that runs the
server has neither pytest nor the project installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .ports import free_port

SYSTEM_PYTHON = "/usr/bin/python3"
TESTS_DIR = Path(__file__).resolve().parents[1]
SAMPLE_CLIP = TESTS_DIR.parent / "polewatch" / "samples" / "vtest-clip.mp4"
MOUNT = "/clip"
# What Debian needs for the server (bookworm names): PyGObject for the system Python, the RTSP server's
# introspection data (it pulls libgstrtspserver-1.0-0, which itself depends on plugins base, good and
# bad), appsrc + appsink (base), qtdemux + rtph264pay + rtpjpegpay + rtpbin + udp (good), jpegparse (bad,
# pulled by the RTSP server library) for the motion-JPEG mode. No encoder: no ugly/libav.
APT_PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
)
APT_HINT = "apt-get install --no-install-recommends " + " ".join(APT_PACKAGES)
TRANSPORTS = ("any", "tcp", "udp")  # what the server offers: RTP interleaved in RTSP's TCP connection, UDP, either
ELEMENTS = (
    "filesrc",
    "qtdemux",
    "appsrc",
    "appsink",
    "rtph264pay",
    "jpegparse",
    "rtpjpegpay",
    "rtpbin",
    "multiudpsink",
    "udpsrc",
)


@dataclass
class RtspServer:
    """An RTSP server child process that a test can stop, kill, freeze and start again on the same port."""

    workdir: Path
    port: int
    clip: Path = SAMPLE_CLIP
    username: str | None = None
    password: str | None = None
    transport: str = "any"
    end_after_frames: int | None = None
    frames_dir: Path | None = None
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    _paused: bool = field(default=False, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "rtsp-server.log"

    @property
    def url(self) -> str:
        """The stream's URL, with the server's credentials when it requires them."""
        if self.username is None:
            return self.url_with()
        return self.url_with(self.username, self.password or "")

    def url_with(self, username: str | None = None, password: str | None = None) -> str:
        """The stream's URL with the given credentials (none: no userinfo part), e.g. wrong ones."""
        userinfo = ""
        if username is not None:
            userinfo = quote(username, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"
        return f"rtsp://{userinfo}{self.host}:{self.port}{MOUNT}"

    @property
    def command(self) -> list[str]:
        command = [
            SYSTEM_PYTHON,
            "-m",
            "support.rtsp",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--clip",
            str(self.clip),
            "--transport",
            self.transport,
        ]
        if self.end_after_frames is not None:
            command += ["--end-after-frames", str(self.end_after_frames)]
        if self.frames_dir is not None:
            command += ["--frames-dir", str(self.frames_dir)]
        if self.username is not None:
            command += ["--username", self.username, "--password", self.password or ""]
        return command

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            raise RuntimeError("the RTSP server is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(TESTS_DIR), PYTHONDONTWRITEBYTECODE="1")
        with self.log_path.open("ab") as log:
            # stdin is a pipe the server watches: when the test process dies, the server follows.
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        self._paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close()
                raise RuntimeError(f"the RTSP server exited with {code} while starting:\n{self.log_tail()}")
            if _listening(self.host, self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"the RTSP server did not listen on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: the camera dies; the kernel drops its connections, no RTSP TEARDOWN or RTCP BYE."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server does not go within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            if self._paused:
                self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close()

    def restart(self) -> None:
        """Stop and start again on the same port (and so the same URL)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the stream stalls with its connections still open (a frozen camera)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("the RTSP server is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self._paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc = None
        self._paused = False


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@functools.lru_cache(maxsize=1)
def _probe_system_gstreamer() -> str | None:
    """None when the system Python can run the server, else what is missing."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR), PYTHONDONTWRITEBYTECODE="1")
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-m", "support.rtsp", "--check"], capture_output=True, text=True, env=env, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "the GStreamer check did not finish within 60 s"
    if result.returncode == 0:
        return None
    output = (result.stdout + result.stderr).strip()
    return output.splitlines()[-1] if output else f"the GStreamer check exited with {result.returncode}"


def start_rtsp_server(
    workdir: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    clip: Path = SAMPLE_CLIP,
    transport: str = "any",
    end_after_frames: int | None = None,
    port: int | None = None,
    frames_dir: Path | None = None,
) -> RtspServer:
    """Start a server on a free loopback port; skip the test (fail under POLEWATCH_REQUIRE_ALL=1) without GStreamer."""
    from .required import STRICT  # pytest is imported there: not for the server's own (system) Python

    missing = _probe_system_gstreamer()
    if missing is not None:
        import pytest

        message = f"the RTSP test server cannot run ({missing}): install Debian's packages ({APT_HINT})"
        if STRICT:
            pytest.fail(message + " (POLEWATCH_REQUIRE_ALL=1: missing parts fail in CI)")
        pytest.skip(message)
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    server = RtspServer(
        workdir=workdir,
        port=port or free_port(),
        clip=clip,
        username=username,
        password=password,
        transport=transport,
        end_after_frames=end_after_frames,
        frames_dir=frames_dir,
    )
    server.start()
    return server


# ------------------------------------------------------------------------------------------------
# The server itself, run by the system Python.


@dataclass(frozen=True)
class _AccessUnit:
    data: bytes
    pts: int
    dts: int
    duration: int
    delta: bool


def _load_clip(gst: Any, clip: Path) -> tuple[str, list[_AccessUnit], int]:
    """The clip's caps, H.264 access units (stream-format avc, as in the file) and loop period in ns."""
    pipeline = gst.parse_launch(
        "filesrc name=file ! qtdemux ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", str(clip))
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(gst.State.PLAYING)
    caps = ""
    units: list[_AccessUnit] = []
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = caps or sample.get_caps().to_string()
        buf = sample.get_buffer()
        ok, info = buf.map(gst.MapFlags.READ)
        if not ok:
            raise RuntimeError("cannot map a buffer of the clip")
        data = bytes(info.data)
        buf.unmap(info)
        units.append(_AccessUnit(data, buf.pts, buf.dts, buf.duration, buf.has_flags(gst.BufferFlags.DELTA_UNIT)))
    pipeline.set_state(gst.State.NULL)
    if not units:
        raise RuntimeError(f"no H.264 video in {clip}")
    start = min(u.dts for u in units)
    last = max(units, key=lambda u: u.dts)
    period = last.dts + (last.duration if last.duration != gst.CLOCK_TIME_NONE else 0) - start
    return caps, units, period


def _load_jpegs(gst: Any, folder: Path, fps: int = 10) -> tuple[str, list[_AccessUnit], int]:
    """JPEG files of `folder` in name order as a 10 fps motion-JPEG stream (RTP/JPEG, RFC 2435):
    every frame carries its own size, so frames of another size are a resolution change."""
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise RuntimeError(f"no .jpg files in {folder}")
    step = 1_000_000_000 // fps
    units = [_AccessUnit(f.read_bytes(), i * step, i * step, step, False) for i, f in enumerate(files)]
    return f"image/jpeg,framerate={fps}/1", units, len(units) * step


def _serve(args: argparse.Namespace) -> int:
    import gi  # type: ignore[import-not-found]

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # type: ignore[import-not-found]

    Gst.init(None)
    if args.frames_dir:
        caps, units, period = _load_jpegs(Gst, Path(args.frames_dir))
        payloader = "jpegparse ! rtpjpegpay name=pay0 pt=26"
    else:
        caps, units, period = _load_clip(Gst, Path(args.clip))
        payloader = "rtph264pay name=pay0 pt=96 config-interval=-1"
    print(f"clip: {len(units)} access units, loop every {period / 1e9:.2f} s, caps {caps}", flush=True)

    def push_next(appsrc: Any, _length: int, state: dict[str, int]) -> None:
        i = state["next"]
        if args.end_after_frames is not None and i >= args.end_after_frames:
            appsrc.emit("end-of-stream")
            return
        unit = units[i % len(units)]
        shift = (i // len(units)) * period
        buf = Gst.Buffer.new_wrapped(unit.data)
        buf.pts = unit.pts + shift
        buf.dts = unit.dts + shift
        buf.duration = unit.duration
        if unit.delta:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        state["next"] = i + 1
        appsrc.emit("push-buffer", buf)

    class LoopingClip(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
        def do_create_element(self, _url: Any) -> Any:
            element = Gst.parse_launch(
                f"( appsrc name=src format=time stream-type=stream max-bytes=500000 ! {payloader} )"
            )
            src = element.get_by_name("src")
            src.set_property("caps", Gst.Caps.from_string(caps))
            src.connect("need-data", push_next, {"next": 0})
            return element

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = LoopingClip()
    factory.set_shared(False)
    lower = GstRtsp.RTSPLowerTrans
    factory.set_protocols({"tcp": lower.TCP, "udp": lower.UDP, "any": lower.TCP | lower.UDP}[args.transport])
    if args.username is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.username, args.password), token)
        server.set_auth(auth)
        role, _ = Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(role)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", flush=True)
        return 1
    print(f"serving rtsp://{args.host}:{args.port}{MOUNT}", flush=True)

    main_loop = GLib.MainLoop()

    def follow_parent() -> None:
        # The test process holds our stdin; EOF means it is gone, and a test server must not outlive it.
        sys.stdin.buffer.read()
        GLib.idle_add(main_loop.quit)

    threading.Thread(target=follow_parent, daemon=True).start()
    main_loop.run()
    return 0


def _check() -> int:
    """Exit 0 when PyGObject, the RTSP server's introspection data and the needed elements are present."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtsp, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as exc:
        print(f"PyGObject or GStreamer's RTSP server introspection data is missing: {exc}")
        return 1
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"GStreamer elements missing: {', '.join(missing)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RTSP test server: the sample clip in a loop")
    parser.add_argument("--check", action="store_true", help="only check that the server can run")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--clip", default=str(SAMPLE_CLIP))
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="any",
        help="the RTP transports offered: interleaved in the RTSP connection (tcp) and/or udp",
    )
    parser.add_argument(
        "--end-after-frames",
        type=int,
        metavar="N",
        help="end each session's stream after N frames (default: loop forever)",
    )
    parser.add_argument("--frames-dir", help="serve the .jpg files of this folder as motion JPEG instead of the clip")
    parser.add_argument("--username")
    parser.add_argument("--password", default="")
    args = parser.parse_args(argv)
    if args.check:
        return _check()
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
