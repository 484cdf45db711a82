"""A websocket relay between the plugin and ``easel serve`` that can drop the connection at a
chosen message, for the reconnect tests (controller and real Krita).

    proxy = DropProxy(backend.url)           # listens on ws://127.0.0.1:<free port>
    proxy.drop_on("step_preview", count=2)   # abort both sockets right after the 2nd preview
    ...
    proxy.close()

Frames are relayed unchanged (binary msgpack, compression off on both sides); server frames are
decoded only to match the rule. A drop aborts the TCP connections (no websocket close frame), as
when a cable is pulled or a laptop sleeps: both the plugin and the server see the socket die.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import msgpack
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

MAX_SIZE = 16 * 1024 * 1024


@dataclass
class DropRule:
    """Drop when the ``count``-th server message of type ``kind`` (for a job submitted with a
    prompt containing ``prompt``, when given) passes: ``before`` it reaches the plugin, or right
    ``after``."""

    kind: str
    count: int = 1
    when: str = "after"
    prompt: str | None = None
    seen: int = 0


@dataclass
class ProxyLog:
    connections: int = 0
    drops: list[str] = field(default_factory=list)
    hellos: list[dict] = field(default_factory=list)  # every hello (client_id, open_jobs)
    welcomes: list[str] = field(default_factory=list)  # the client id of every welcome
    submitted: dict[str, dict] = field(default_factory=dict)  # job id -> params
    images: dict[str, dict] = field(default_factory=dict)  # job id -> its role images (role -> id)
    #: image id -> {"format", "width", "height", "data"} of every image the plugin uploaded (chunks joined)
    uploads: dict[str, dict] = field(default_factory=dict)


class DropProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log = ProxyLog()
        self.rule: DropRule | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, name="drop-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the drop proxy did not start")
        self.url = f"ws://127.0.0.1:{self.port}"

    def drop_on(self, kind: str, count: int = 1, when: str = "after", prompt: str | None = None) -> None:
        """Arm one drop (it disarms itself when it fires)."""
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self.rule = DropRule(kind, count, when, prompt)

    @property
    def dropped(self) -> int:
        return len(self.log.drops)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    # -- the relay (proxy thread)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _matches(self, message: dict) -> bool:
        rule = self.rule
        if rule is None or message.get("type") != rule.kind:
            return False
        if rule.prompt is not None:
            params = self.log.submitted.get(message.get("job_id", ""), {})
            if rule.prompt not in str(params.get("prompt", "")):
                return False
        rule.seen += 1
        return rule.seen >= rule.count

    async def _handle(self, down) -> None:
        self.log.connections += 1
        try:
            up = await connect(self.upstream, compression=None, max_size=MAX_SIZE, proxy=None)
        except OSError:
            await down.close()
            return
        dropped = asyncio.Event()

        def drop(what: str) -> None:
            self.rule = None
            self.log.drops.append(what)
            dropped.set()
            for ws in (down, up):
                ws.transport.abort()

        async def client_to_server() -> None:
            async for frame in down:
                if isinstance(frame, bytes):
                    try:
                        message = msgpack.unpackb(frame, raw=False)
                    except Exception:
                        message = {}
                    if isinstance(message, dict) and message.get("type") == "hello":
                        self.log.hellos.append({"client_id": message.get("client_id", ""),
                                                "open_jobs": list(message.get("open_jobs", []))})
                    if isinstance(message, dict) and message.get("type") == "submit_job":
                        self.log.submitted[message.get("job_id", "")] = message.get("params") or {}
                        self.log.images[message.get("job_id", "")] = message.get("images") or {}
                    if isinstance(message, dict) and message.get("type") == "image_chunk":
                        upload = self.log.uploads.setdefault(message.get("id", ""), {
                            "format": message.get("format"), "width": message.get("width"),
                            "height": message.get("height"), "data": b""})
                        upload["data"] += bytes(message.get("data") or b"")
                await up.send(frame)

        async def server_to_client() -> None:
            async for frame in up:
                message = {}
                if isinstance(frame, bytes) and (self.rule is not None or len(frame) < 65536):
                    try:
                        message = msgpack.unpackb(frame, raw=False)
                    except Exception:
                        message = {}
                if isinstance(message, dict) and message.get("type") == "welcome":
                    self.log.welcomes.append(message.get("client_id", ""))
                hit = isinstance(message, dict) and self._matches(message)
                if hit and self.rule.when == "before":
                    drop(f"before {message['type']} {message.get('job_id', '')}")
                    return
                await down.send(frame)
                if hit:
                    for _ in range(200):  # let the frame leave before the socket dies
                        if not down.transport.get_write_buffer_size():
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.02)
                    drop(f"after {message['type']} {message.get('job_id', '')}")
                    return

        tasks = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except Exception:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not dropped.is_set():
                # Relay the plugin's close code: 1000 ends its session on the server, another code
                # (1001 when it reconnects to resume) keeps it (docs/protocol.md, section 3).
                code = down.close_code
                await up.close(code=code if code is not None and (1000 <= code <= 1003 or 3000 <= code <= 4999) else 1000)
                await down.close()
