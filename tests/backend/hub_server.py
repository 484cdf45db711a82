"""A hub-shaped HTTP server on loopback for the download tests (test_download, test_download_server).

``HEAD``/``GET /{repo}/resolve/main/{path}`` with the hub's headers (``X-Linked-Size``,
``X-Linked-Etag`` = SHA-256, ``X-Repo-Commit``), large files redirected to a second path as the hub
redirects them to its CDN, ``Range`` honoured. No test lives here.
"""
from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" + "0" * 34


class Hub:
    """A tiny hub: ``files`` maps "owner/name/path" to bytes. ``cut_after``: the first GET of a file
    closes the connection after that many bytes. ``lie``: announce this SHA-256 instead of the real one.
    ``announce``: announce this size instead. Records every request as (method, path, range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.lie = ""
        self.announce: int | None = None
        self.requests: list[tuple[str, str, str]] = []
        self.auth: list[tuple[str, str]] = []
        #: Seconds to wait between 64 KiB pieces of a body (a slow link), 0: send at once.
        self.pace = 0.0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                hub.requests.append((self.command, self.path, self.headers.get("Range", "")))
                hub.auth.append((self.path, self.headers.get("Authorization", "")))
                if self.path.startswith("/cdn/"):
                    return self._bytes(self.path.removeprefix("/cdn/"), body)
                parts = self.path.lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_error(404)
                    return
                key = "/".join(parts[:2] + parts[4:])
                if key not in hub.files:
                    self.send_error(404)
                    return
                data = hub.files[key]
                self.send_response(302)  # large files live elsewhere, like the hub's CDN
                self.send_header("Location", f"/cdn/{key}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Size", str(hub.announce or len(data)))
                self.send_header("X-Linked-Etag", f'"{hub.lie or hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _bytes(self, key: str, body: bool):
                data = hub.files[key]
                start = 0
                wanted = self.headers.get("Range", "")
                if wanted.startswith("bytes="):
                    start = int(wanted[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                chunk = data[start:]
                if hub.cut_after is not None:
                    cut, hub.cut_after = hub.cut_after, None
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if hub.pace:
                    for i in range(0, len(chunk), 65536):
                        self.wfile.write(chunk[i:i + 65536])
                        self.wfile.flush()
                        time.sleep(hub.pace)
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path_part: str) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] == "GET" and path_part in r[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
