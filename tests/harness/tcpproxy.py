"""A TCP forwarder on 127.0.0.1 that a test can cut, to play a network partition, or make
hold a client's bytes, to play a request delayed in the network.

Once :meth:`TcpProxy.cut` is called, bytes in either direction are swallowed and new
connections are accepted but never forwarded: the client's requests hang (no error, no
reset), the nastiest kind of partition — only its own timeouts tell it anything.

:meth:`TcpProxy.hold` keeps what clients send (from a chunk its predicate accepts, e.g. one
starting with ``PUT``) in the proxy until :meth:`TcpProxy.release`, which delivers it all: a
client that gave up waiting (its timeout) has not unsent its request, and the server still
executes it, late. The server's side of such a connection stays open after the client
left, so the late request is answered (:attr:`TcpProxy.late_answers` counts those replies).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import processes


@dataclass
class _Link:
    """One proxied connection: whether some of its client's bytes were held."""

    held: bool = False


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = processes.free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._holding: Callable[[bytes], bool] | None = None
        self._released = threading.Event()
        self._released.set()
        self._answered = threading.Condition()
        self.late_answers = 0
        """Chunks of answers the server sent on connections whose requests were held."""
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((host, self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        self._cut.set()

    def hold(self, when: Callable[[bytes], bool] = lambda data: True) -> None:
        """Keep clients' bytes from the first chunk ``when`` accepts until :meth:`release`
        (the rest of that connection's bytes queue behind it)."""
        self._released.clear()
        self._holding = when

    def release(self) -> None:
        """Deliver every held byte, in order, and stop holding."""
        self._holding = None
        self._released.set()

    def wait_late_answers(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Whether the server answered ``count`` held requests within ``timeout``."""
        with self._answered:
            return self._answered.wait_for(lambda: self.late_answers >= count, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(downstream)
            if self._cut.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            link = _Link()
            for a, b, out in ((downstream, upstream, True), (upstream, downstream, False)):
                threading.Thread(target=self._pump, args=(a, b, link, out), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, link: _Link, out: bool) -> None:
        """Relay ``source`` to ``sink``; ``out``: from the client to the server."""
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                holding = self._holding
                if out and (link.held or (holding is not None and holding(data))):
                    link.held = True
                    self._released.wait()
                if not out and link.held:
                    with self._answered:
                        self.late_answers += 1
                        self._answered.notify_all()
                if not self._cut.is_set():
                    sink.sendall(data)
        if out and link.held:
            return  # the server answers the late request, as it would over a real network
        if not self._cut.is_set():
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
