"""The lifecycle every EVC daemon shares: start, stop, run until told, use as a context manager."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Self


class Service(ABC):
    """A daemon with a background start and a graceful stop."""

    @abstractmethod
    def start(self) -> None:
        """Start working in background threads and return."""

    @abstractmethod
    def stop(self) -> None:
        """Finish what was accepted, release connections and files."""

    def run_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (by a signal handler, for example), then stop."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
