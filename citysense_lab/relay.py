"""A byte-level TCP relay on loopback that can be cut: the WAN between gateway and cloud.

The gateway connects to the relay; the relay forwards bytes to the broker unchanged (TLS
stays end to end). `cut()` drops every open connection and refuses new ones until
`restore()`, which is what a cellular outage looks like to the gateway, while the broker
and its subscribers keep running.
"""

from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self._listen = socket.create_server((host, 0))
        self._listen.settimeout(0.2)
        self.port: int = self._listen.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept_loop, name="relay", daemon=True)
        self._thread.start()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listen.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # refused: the line is down
                continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            if s in self._conns:
                self._conns.remove(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._up.clear()
        self.cuts += 1
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listen.close()
        self._thread.join(timeout=2)
