"""A bounded load generator for the master tests: threads of real HTTP clients.

Every request must come back ``200``; anything else (status, timeout,
connection error) is recorded as a failure with what happened.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.ok += 1
            else:
                self.failures.append(failure)


class LoadGenerator:
    """``threads`` clients sending ``paths`` in turn until :meth:`stop`.

    Half of the clients keep their connection alive, half open one per
    request, so both kinds of connection cross a reload.
    """

    def __init__(
        self,
        port: int,
        paths: list[str],
        threads: int = 4,
        timeout: float = 15.0,
        max_requests: int = 100_000,
    ) -> None:
        self.port = port
        self.paths = paths
        self.timeout = timeout
        self.max_requests = max_requests
        self.result = LoadResult()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> LoadGenerator:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.result

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Until at least ``count`` more requests succeeded (or ``timeout``)."""
        target = self.result.ok + count
        deadline = time.monotonic() + timeout
        while self.result.ok < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self, index: int) -> None:
        keep_alive = index % 2 == 0
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self._stop.is_set() and n < self.max_requests:
            path = self.paths[(index + n) % len(self.paths)]
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            headers = {} if keep_alive else {"Connection": "close"}
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.result.record("%s -> %d" % (path, resp.status))
                else:
                    self.result.record(None)
                if not keep_alive or resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.result.record("%s -> %s: %s" % (path, type(exc).__name__, exc))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
