"""Fork real ``edgecloud fleet agent`` processes fast: import once, fork per run.

Reads one command line per stdin line (tab-separated argv after ``edgecloud``),
forks, and runs ``edgecloud.cli.main()`` in the child; prints ``pid <n>``.
The children are ordinary processes a test can SIGKILL; starting one costs a
fork instead of ~1 s of imports, so the crash test fits its time budget.
"""

from __future__ import annotations

import os
import signal
import sys

import httpx  # noqa: F401
import onnxruntime  # noqa: F401
import tuf.ngclient.updater  # noqa: F401
import yaml  # noqa: F401

import edgecloud.cli
import edgecloud.deployment
import edgecloud.fleet.agent
import edgecloud.fleet.device
import edgecloud.routing.outbox
import edgecloud.samples

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
print("ready", flush=True)
for line in sys.stdin:
    args = line.rstrip("\n").split("\t")
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.argv = ["edgecloud", *args]
        try:
            edgecloud.cli.main()
        finally:
            sys.stdout.flush()
            os._exit(0)
    print(f"pid {pid}", flush=True)
