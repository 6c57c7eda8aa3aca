"""A TCP forwarder on 127.0.0.1 that a test can cut, to play a network partition.

Once :meth:`TcpProxy.cut` is called, bytes in either direction are swallowed and new
connections are accepted but never forwarded: the client's requests hang (no error, no
reset), the nastiest kind of partition — only its own timeouts tell it anything.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from . import processes


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = processes.free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((host, self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        self._cut.set()

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
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if not self._cut.is_set():
                    sink.sendall(data)
        if not self._cut.is_set():
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
