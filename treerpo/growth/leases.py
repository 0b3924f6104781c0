"""A generate worker's name and the thread that keeps its claims alive while it grows trees.

Growing a batch can take longer than a lease, so a worker renews its leases every third of
`--lease-seconds` from a background thread (its own database connection); a killed worker stops
renewing and its batches become free once the lease runs out.
"""

from __future__ import annotations

import os
import socket
import threading

from treerpo.store import claims
from treerpo.store.database import Store


def default_worker_name() -> str:
    """`host:pid`: unique among the processes sharing a store."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Context manager: renews `worker`'s claims in the run until it exits, then releases them
    all (a worker that stops, however, leaves nothing for the others to wait out)."""

    def __init__(self, store: Store, *, run_id: int, worker: str, lease_seconds: float) -> None:
        self.store = store
        self.run_id = run_id
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="treerpo-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        claims.release_claims(self.store, run_id=self.run_id, worker=self.worker)

    def _renew(self) -> None:
        from sqlalchemy.exc import OperationalError

        while not self._stop.wait(self.lease_seconds / 3):
            try:
                claims.renew_claims(self.store, run_id=self.run_id, worker=self.worker,
                                    lease_seconds=self.lease_seconds)
            except OperationalError:  # the store was busy past its timeout: the next tick retries
                continue
