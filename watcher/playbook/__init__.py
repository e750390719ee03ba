"""Playbooks: typed steps, the plan the policy builds from them, and the journalled executor that runs it.

- :mod:`.base` — what a step is (``run``, ``already_happened``, ``takes_capacity``, JSON);
- :mod:`.registry` — every step kind by name (refuses duplicates);
- :mod:`.traffic`, :mod:`.container`, :mod:`.checks`, :mod:`.notify` — the step kinds;
- :mod:`.plan` — the ordered steps of one incident, policy → journal → executor;
- :mod:`.executor` — the journalled loop over a plan (intent before, outcome after, resume);
- :mod:`.context`, :mod:`.alerting`, :mod:`.verification`, :mod:`.resolutions` — what steps act with.

Adding a step kind: a class in one of the step modules (or a new module imported below) with
``@register``. Importing this package registers every kind, so whoever reads a plan from the
journal sees them all.
"""

from watcher.playbook import checks, container, notify, traffic

__all__ = ["checks", "container", "notify", "traffic"]
