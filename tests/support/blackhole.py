"""A TCP proxy that can stop forwarding without closing anything: a network cut as a pole sees it.

A fibre cut or a dead LTE cell does not close TCP connections: packets simply stop arriving, and
each side finds out only from its own keepalive. Killing the broker or closing a socket is a
different, friendlier failure (the peer sees FIN or RST at once). While `cut` is on, this proxy
neither reads nor writes any socket, so nothing is delivered, acknowledged or closed; connections
opened meanwhile are accepted by the kernel and left hanging. `resume` forwards again: connections
one side gave up on meanwhile are then closed on the other side too.

Two finer faults for tests that need a connection in one exact state: `reply_limit` forwards only
that many bytes from the server to each client and drops the rest (say, MQTT's 4-byte CONNACK, and
no acknowledgement after it), and `drop_all()` closes every connection at once, as a server that dies does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

from .ports import free_port


class TcpBlackhole:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` blackholes every connection, `resume()` ends it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.host = "127.0.0.1"
        self._listener = socket.create_server((self.host, self.port))
        self._listener.setblocking(False)
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._waiting: list[socket.socket] = []  # accepted while cut, not yet connected upstream
        self._sel: selectors.BaseSelector | None = None
        self._registered: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._run, name="tcp-blackhole", daemon=True)
        self._drop_all = threading.Event()
        self._replied: dict[socket.socket, int] = {}  # upstream socket -> bytes forwarded to its client
        self.reply_limit: int | None = None
        self.connections = 0

    def start(self) -> None:
        self._thread.start()

    def cut(self) -> None:
        self._cut.set()

    def resume(self) -> None:
        self._cut.clear()

    def drop_all(self) -> None:
        """Close every connection (both sides), as a server that dies would; new ones still work."""
        self._drop_all.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [self._listener, *self._peers, *self._waiting]:
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def _run(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            if self._drop_all.is_set():
                for client in [sock for sock in self._peers if sock not in self._replied]:
                    self._drop(client, self._peers[client])
                self._drop_all.clear()
            cut = self._cut.is_set()
            if not cut:
                for client in self._waiting:
                    self._connect(client)
                self._waiting.clear()
            # While cut, no socket but the listener is watched: nothing is read, so nothing moves.
            wanted = set() if cut else set(self._peers)
            for sock in self._registered - wanted:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.unregister(sock)
            for sock in wanted - self._registered:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.register(sock, selectors.EVENT_READ)
            self._registered = wanted
            for key, _ in sel.select(timeout=0.05):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sock = ready
                if sock is self._listener:
                    with contextlib.suppress(BlockingIOError, OSError):
                        client, _ = self._listener.accept()
                        self.connections += 1
                        if self._cut.is_set():
                            self._waiting.append(client)
                        else:
                            self._connect(client)
                    continue
                if self._cut.is_set() or sock not in self._peers:
                    continue
                self._forward(sock)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        client.setblocking(True)
        upstream.setblocking(True)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._replied[upstream] = 0

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                if sock in self._replied and self.reply_limit is not None:
                    data = data[: max(0, self.reply_limit - self._replied[sock])]  # the rest is dropped, never sent
                    self._replied[sock] += len(data)
                if data:
                    peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock, peer)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            self._peers.pop(sock, None)
            self._replied.pop(sock, None)
            if sock in self._registered and self._sel is not None:
                self._registered.discard(sock)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def blackhole_proxy(target_host: str, target_port: int) -> Iterator[TcpBlackhole]:
    proxy = TcpBlackhole(target_host, target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
