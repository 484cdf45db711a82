"""A loopback TCP proxy whose connections a test can cut: a network drop between a plugin and its
server, made without touching either. Standard library only (it runs in the main venv and in
Blender's). No test lives here.

    proxy = TcpProxy(server_port)           # the plugin connects to ws://127.0.0.1:{proxy.port}
    ...
    proxy.cut()                             # every open connection drops at once, both ways
    proxy.retarget(other_port)              # later connections go to another server
    proxy.close()
"""
from __future__ import annotations

import socket
import threading
import time

#: Bytes read per recv; a bound, not a tuning claim.
CHUNK = 256 * 1024


class TcpProxy:
    """Forwards each accepted connection to ``127.0.0.1:target_port`` on two threads. ``cut()``
    shuts both sockets of every open pair, so the client sees its connection end without a
    websocket close frame (as on a network failure) and the server sees its client vanish."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        #: Connections accepted so far, and the time bytes last went from a server to a client.
        self.accepted = 0
        self.last_downstream = time.monotonic()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def retarget(self, port: int) -> None:
        """Connections accepted from now on go to ``port``."""
        self.target_port = port

    def cut(self) -> int:
        """Drop every open connection, both sides. Returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def downstream_idle(self, seconds: float) -> bool:
        """True when no byte went from a server to a client for ``seconds``."""
        return time.monotonic() - self.last_downstream >= seconds

    def close(self) -> None:
        self._closed = True
        _shut(self._listener)
        self.cut()
        self._thread.join(5.0)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5.0)
                upstream.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                self.accepted += 1
                self._pairs.append((client, upstream))
            for source, sink, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, down), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
                if downstream:
                    self.last_downstream = time.monotonic()
        except OSError:
            pass
        finally:
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
