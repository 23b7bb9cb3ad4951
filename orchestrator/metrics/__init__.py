"""Prometheus metrics, alert rules and the HTTP endpoint that serves them.

Everything here only *reads* a :class:`~orchestrator.snapshot.RunSnapshot` through a callable, so the
supervisor stays the single writer and tests can hand in a synthetic snapshot. Import from the
submodules (``orchestrator.metrics.server`` ...): the package itself imports nothing, so
``python -m orchestrator.metrics.alerts`` runs cleanly.
"""
