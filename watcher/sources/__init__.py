"""Sources: read Docker logs, events and stats and Prometheus series into the engine's queue.

Each source runs in its own threads, reports trouble through ``connected`` / ``last_error`` and
never blocks on the engine: see :mod:`watcher.sources.base` for the queue between them.
"""

from watcher.sources.base import Envelope, SignalQueue, Source

__all__ = ["Envelope", "SignalQueue", "Source"]
