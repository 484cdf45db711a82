"""The settings dialog's connection test: one handshake with the server, then goodbye. No host.

:func:`probe` opens a connection with the address and token typed (no reconnecting), and turns
what happened into a :class:`~.settings.ProbeResult`: the server's welcome (its name, device and
models), its refusal in the painter's words (a refused token names the token), or why nothing
answered. Run it on the plugin's asyncio loop; it never raises for a network outcome.
"""
from __future__ import annotations

import asyncio

from .protocol import Refused
from .protocol.transport import AsyncClient
from .settings import ProbeResult, cannot_reach, connection_refused
from .wording import connected

#: Seconds the test waits for the socket to open (and twice that for the welcome).
PROBE_TIMEOUT_S = 5.0


async def probe(url: str, token: str, *, client_name: str = "krita", client_version: str = "",
                timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Connect once to ``url`` with ``token`` and report; the connection is closed before it returns."""
    client = AsyncClient(url, client_name=client_name, client_version=client_version, token=token,
                         reconnect=False, open_timeout=timeout)
    try:
        welcome = await client.start()
    except ConnectionError as exc:
        refusal = next((e for e in client.pending_events() if isinstance(e, Refused)), None)
        if refusal is not None:
            code = getattr(refusal.code, "value", refusal.code)
            return ProbeResult(False, connection_refused(url, token, str(code), refusal.message))
        return ProbeResult(False, cannot_reach(url, str(exc)))
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        return ProbeResult(False, cannot_reach(url, str(exc) or type(exc).__name__))
    finally:
        await client.close()
    caps = welcome.capabilities
    models = tuple((m.name or m.id, m.id) for m in caps.models if m.kind == "base")
    return ProbeResult(True, connected(welcome.server_name, welcome.server_version, caps.device, welcome.demo,
                                       welcome.notice), models, welcome.limits.max_image_side)
