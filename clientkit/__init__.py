"""The host-free client core every Easel client shares: the Krita plugin, the Blender extension and
``easel generate``.

Standard library and ``protocol`` only. Inside, modules import each other relatively and import the
protocol as ``protocol``; the plugin builds vendor this package next to their copy of ``protocol/``
and point those imports at it (``from protocol`` → ``from ..protocol``), exactly as they vendor
``protocol/`` itself.

* :mod:`.book` — the job book: every open job from submit to its single end; the only code that
  turns ``job_failed``, an ``error`` naming a job, ``job_cancelled`` and a lost job into outcomes.
* :mod:`.history` — the bounded history of ended jobs (one shape; each host keeps its own persistence).
* :mod:`.links` — the connection links: :class:`~.links.AsyncLink` (an asyncio loop the host pumps
  from a timer: Krita) and :class:`~.links.ThreadLink` (a worker thread: Blender), one reconnect policy.
* :mod:`.controls` — ControlNet and LoRA picking for a model's family.
* :mod:`.wording` — the sentences users read for each error and connection state.
* :mod:`.limits` — the server's limits, read from its ``welcome``.
* :mod:`.guides` — references and regions: adapter picking, coverage masks, counts against the limits.
* :mod:`.downloads` — what a feature lacks on the server, worded with the download (or command)
  that fixes it, and the tracker that follows one ``download_model`` to its end.
"""
