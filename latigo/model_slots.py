"""Model slots: at most `concurrency` model calls at once in an executor, and a slot handed back by a
call that only waits for another thread's request.

The executor's workers take a slot around each model call (latigo.task_pipeline). A window that waits
to go in the request another thread makes for its model (latigo.models.window_joining) is not a model
call while it waits: it gives its slot back, so that the executor's other workers run their models
meanwhile and more of a model's windows can gather behind its request; it takes a slot again only if it
has to make a request itself. Outside a model call (a CLI command, a benchmark) both are no-ops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_thread = threading.local()
"""Per thread: `held`, the ModelSlots it holds a slot of; `given_back`, the one whose slot it gave back."""


class ModelSlots:
    """`count` slots; `slot()` is one of them for the block (waited for while all are taken)."""

    def __init__(self, count: int) -> None:
        self._free = threading.BoundedSemaphore(count)

    @contextmanager
    def slot(self) -> Iterator[None]:
        self._free.acquire()
        _thread.held, _thread.given_back = self, None
        try:
            yield
        finally:
            held = getattr(_thread, "held", None) is self
            _thread.held = _thread.given_back = None
            if held:
                self._free.release()


def give_back_slot() -> None:
    """Hand the calling thread's slot back while it waits for another thread's request."""
    slots = getattr(_thread, "held", None)
    if slots is not None:
        _thread.held, _thread.given_back = None, slots
        slots._free.release()


def take_slot_again() -> None:
    """Take a slot again, the one given back, before making a request of its own (waited for while all are
    taken); a no-op when the thread gave none back."""
    slots = getattr(_thread, "given_back", None)
    if slots is not None:
        slots._free.acquire()
        _thread.held, _thread.given_back = slots, None
