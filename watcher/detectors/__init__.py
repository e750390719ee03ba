"""Detectors: one per rule, each turning signals into per-target condition activity.

The engine owns rule state (pending/firing/resolved); a detector only says, per target, whether
its rule's condition holds now and why. The interface is :mod:`watcher.detectors.base`; every kind
is listed once in :mod:`watcher.detectors.registry` and covered by the shared conformance tests.
"""
