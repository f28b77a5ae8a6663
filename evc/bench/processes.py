"""The parent side of :mod:`evc.bench.loadgen`: start a load generator, release it, collect it."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from types import TracebackType
from typing import IO, Any, Self

from evc.errors import EvcError


class BenchError(EvcError):
    """A benchmark could not be measured (a generator failed, records went missing)."""


class LoadProcess:
    """A load generator child process running one job.

    Example::

        with LoadProcess({"type": "publish", ...}) as load:
            load.wait_ready()
            load.go()
            result = load.result(timeout=60)

    Args:
        job: the JSON job (see :mod:`evc.bench.loadgen`).
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "evc.bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdin = self._stdin
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()
        self._reader = threading.Thread(target=self._read, name="loadgen-reader", daemon=True)
        self._reader.start()

    @property
    def _stdin(self) -> IO[str]:
        if self._process.stdin is None:
            raise BenchError("load generator has no stdin")
        return self._process.stdin

    def _read(self) -> None:
        stdout = self._process.stdout
        if stdout is not None:
            for line in stdout:
                self._lines.put(line.strip())
        self._lines.put(None)  # end of output: the child exited

    def _next_line(self, timeout: float, waiting_for: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty as exc:
            raise BenchError(f"load generator gave no {waiting_for} within {timeout} s") from exc
        if line is None:
            raise BenchError(
                f"load generator exited (code {self._process.wait()}) before its {waiting_for}"
            )
        return line

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the child has built its messages and connected."""
        line = self._next_line(timeout, "ready line")
        if line != "ready":
            raise BenchError(f"load generator said {line!r} instead of 'ready'")

    def go(self) -> None:
        """Release the child: it starts its clock and its job now."""
        stdin = self._stdin
        stdin.write("go\n")
        stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        """The child's JSON result; waits at most ``timeout`` seconds."""
        doc: dict[str, Any] = json.loads(self._next_line(timeout, "result"))
        return doc

    def close(self) -> None:
        """Make sure the child is gone (killed if it still runs)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join(timeout=5)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
