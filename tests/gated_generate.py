"""`python tests/gated_generate.py GATE_DIR generate ...`: `treerpo generate` whose first claim
waits at a start gate.

Before its first claim the worker writes `GATE_DIR/<worker>.ready` and waits for `GATE_DIR/go`.
A test that starts several workers opens the gate once all are ready, so they race for the
batches together instead of the first one to finish loading its model growing every tree.
The claim itself is the real one: only the moment of the first call changes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from treerpo.store import claims

GATE_TIMEOUT_SECONDS = 300


def main() -> None:
    gate = Path(sys.argv[1])
    claim = claims.try_claim
    opened = False

    def gated_claim(*args, **kwargs) -> bool:
        nonlocal opened
        if not opened:
            (gate / f"{kwargs['worker']}.ready").touch()
            deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
            while not (gate / "go").exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"the start gate {gate} never opened")
                time.sleep(0.02)
            opened = True
        return claim(*args, **kwargs)

    claims.try_claim = gated_claim
    sys.argv = ["treerpo", *sys.argv[2:]]
    from treerpo.cli import run

    run()


if __name__ == "__main__":
    main()
