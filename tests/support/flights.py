"""A SingleFlight call table that counts lookups, so a test can wait for callers to arrive."""

from __future__ import annotations

import threading


class CountingCalls(dict):
    """The table of calls under way, counting lookups: each caller looks its key up once."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.changed = threading.Condition()

    def get(self, key, default=None):
        with self.changed:
            self.lookups += 1
            self.changed.notify_all()
        return super().get(key, default)

    def wait_for(self, n: int) -> None:
        """Until n lookups were made (30 s at most, then the test fails)."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.lookups >= n, timeout=30)
