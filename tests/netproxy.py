"""A TCP relay on 127.0.0.1 that can black-hole a connection path (for outage tests).

``blackhole()`` keeps accepting connections and keeps every socket open but
forwards nothing either way: to the client the database neither answers nor
refuses, as when a network path drops packets or a server freezes. ``restore()``
forwards again for new connections and resets the held ones (the flows of a
path that came back are gone), so clients must notice and reconnect.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Relay ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>`` (see the module docstring)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self._hold = threading.Event()
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self._srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._hold.is_set():
                with self._lock:
                    self._held.append(client)
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            t = threading.Thread(target=self._pump, args=(client, up), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self._hold.is_set():  # forward nothing; keep the sockets open
                    with self._lock:
                        self._held += [a, b]
                    return
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return self._close(a, b)
                    peers[s].sendall(data)
        except OSError:
            self._close(a, b)
        return None

    @staticmethod
    def _close(*socks: socket.socket, reset: bool = False) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    def blackhole(self) -> None:
        """Forward nothing, refuse nothing."""
        self._hold.set()

    def restore(self) -> None:
        """Forward new connections again; reset the held ones."""
        self._hold.clear()
        with self._lock:
            held, self._held = self._held, []
        self._close(*held, reset=True)

    def close(self) -> None:
        """Stop relaying and close everything."""
        self._stop.set()
        self.restore()
        self._srv.close()
        for t in self._threads:
            t.join(2)
