"""The preemption flag's signal handler must survive a second signal arriving while it runs: on Slurm a
rank gets SIGTERM twice at once (from Slurm and from its node agent), and a handler that took a lock
(``threading.Event.set``) deadlocked in the preemption test. The test delivers the "second signal" at
every line the first handler executes, as the interpreter may between any two bytecodes."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from trainer import preempt


def test_a_signal_inside_the_handler_never_blocks(monkeypatch: Any) -> None:
    monkeypatch.setattr(preempt, "_REQUESTED", [False])
    previous = signal.getsignal(signal.SIGUSR2)
    preempt.install((signal.SIGUSR2,))
    handler = signal.getsignal(signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, previous)
    assert callable(handler)
    nested = [False]
    lines: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not nested[0]:
            lines.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            nested[0] = True
            try:
                handler(signal.SIGUSR2, None)  # the second signal, right here
            finally:
                nested[0] = False
        return tracer

    def first_signal() -> None:
        sys.settrace(tracer)
        try:
            handler(signal.SIGUSR2, None)
        finally:
            sys.settrace(None)

    t = threading.Thread(target=first_signal, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), f"the nested handler blocked (lines traced: {lines})"
    assert lines and preempt.requested()


def test_the_old_event_flag_would_have_blocked() -> None:
    """The check bites: the same nesting inside ``threading.Event.set`` never returns."""
    flag = threading.Event()
    nested = [False]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        held = flag._cond._lock.locked()  # type: ignore[attr-defined]  # inside Event.set's critical section
        if event == "line" and not nested[0] and frame.f_code.co_name == "set" and held:
            nested[0] = True
            flag.set()
        return tracer

    def first_signal() -> None:
        sys.settrace(tracer)
        try:
            flag.set()
        finally:
            sys.settrace(None)

    t = threading.Thread(target=first_signal, daemon=True)
    t.start()
    t.join(timeout=5)
    assert t.is_alive()  # stuck on the Event's own lock, as rank 0 was
