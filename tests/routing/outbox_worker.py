"""Drains an outbox to a server, slowly, so a test can kill it mid-flight."""

from __future__ import annotations

import sys
import time

from edgecloud import RemoteBackend
from edgecloud.routing import Outbox


def main() -> None:
    db, url, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    box = Outbox(db)
    with RemoteBackend(url, timeout=5) as remote:

        def send(request):  # type: ignore[no-untyped-def]
            remote.infer(request)
            time.sleep(pause)  # the answer is in; the delete is not: a kill here re-sends

        result = box.drain(send)
    print(f"delivered={result.delivered} remaining={result.remaining}", flush=True)


if __name__ == "__main__":
    main()
