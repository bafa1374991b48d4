"""``edgecloud serve --workers N``: N server processes sharing the listening ports.

The pre-fork model of gunicorn and ``uvicorn --workers`` (``uvicorn.supervisors.
Multiprocess``):

- The **supervisor** probes the HTTP and gRPC ports exclusively (:func:`~.app.
  listen`: the clear error for a port another process holds, as in a single
  process), then holds each with a bound, non-listening ``SO_REUSEPORT`` socket
  (so ``--http-port 0`` is one port for all workers, and no process without
  ``SO_REUSEPORT`` can take it while the server runs), and forks the workers.
  Each worker listens on both ports with ``SO_REUSEPORT``; the kernel spreads new
  connections over the workers by a hash of their addresses (nginx's
  ``reuseport``, gRPC's default). Not one socket shared by all: an event loop
  accepts every connection pending when it wakes (libuv and asyncio accept in a
  loop), so a burst of connections — a client pool opening 64 at once — went
  almost all to one worker (measured, wrk -c64 on digits-small: 2.82 s of CPU
  in one worker, 0.08 s in the other). The hash ignores load, so a few
  long-lived connections can land unevenly; many even out.
- Fork, not spawn: a worker starts in the time its models take to load, not an
  interpreter's import time again (about 1 s of CPU, as much again on a loaded
  machine). It is safe because the supervisor has started no thread, event
  loop, onnxruntime session nor gRPC (grpc is imported only in the workers,
  after the fork: gRPC's threads do not survive one).
- Each **worker** is a whole single-process server (:func:`~.app.serve`): its own
  ModelHost, onnxruntime sessions and batchers. Compute is split
  (:func:`worker_share`): ``intra_op_threads`` 0 ("all cores") becomes
  ``cores // N`` per worker, and ``runners_per_model`` (batches of a model run
  at once) ``runners // N`` (at least 1), so N workers run no more batches at
  once than one process (while runners >= N). That share is guaranteed, not a
  cap: while the other workers leave a core free, a worker borrows slots up to
  ``runners_per_model`` (:mod:`.cores`), so one connection's load (one gRPC
  channel lands on one worker) still gets every core. Sessions do not spin
  (``LocalBackend(spin=False)``): a spinning onnxruntime thread takes the core
  another worker needs (a trial of bench/workers_ab.py, minilm c=64 on a loaded
  2-core machine, one worker with one slot of 2 threads: 78 req/s spinning, 166
  not; moot at the default of 1 thread, which has no pool).
- A worker that **dies** (crash, OOM kill, SIGKILL) is replaced: the requests in
  flight on it are lost as connection errors (never a wrong answer), every other
  worker keeps serving. Its idempotency claims are taken over once it is reaped
  (the store checks the claimant's pid), so a retry computes at most once more.
  Restarts back off (0.1 s doubling to 5 s) while workers die young. A worker
  that fails to boot with an error (a model repository that no longer loads, a
  port taken) stops the server with that error at once, as gunicorn halts on
  its ``WORKER_BOOT_ERROR``: a restart would fail alike, and N copies of one
  error help no one. Workers dying before ready without a word (killed, a
  crash in native code) are retried, until :data:`CRASH_LOOP` in a row stop
  the server; at start-up, the first does.
- **SIGTERM/SIGINT** go to every worker, which finishes its in-flight requests
  within ``shutdown_grace_s`` (uvicorn's and gRPC's graceful stop); one still
  running ``shutdown_grace_s`` + :data:`STOP_MARGIN_S` later is killed. A worker
  dies with the supervisor (``PR_SET_PDEATHSIG``), so a SIGKILLed supervisor
  leaves no orphan serving on the port.
- **Readiness**: a worker answers ready (HTTP ``/v2/health/ready``, gRPC
  ServerReady) only while every worker is ready: the supervisor keeps a flag file
  that exists exactly then.
- **Metrics**: prometheus-client's multiprocess mode. Every worker writes its
  series to files in a directory the supervisor creates empty for this run (no
  stale files from an earlier one) and removes at exit; ``/metrics`` on any
  worker merges them, counters and histograms summed, the files of a dead worker
  kept (its counts stay in the totals). No gauges are served, so no
  ``multiprocess_mode`` applies.
- **Idempotency**: every worker opens the same SQLite store (WAL), whose claims
  arbitrate between processes (:mod:`.idempotency`): a key sent to two workers at
  once is computed once and both callers get that answer. ``:memory:`` is per
  process, so it is refused with more than one worker.

- **Model control** (``--model-control explicit``): the workers share the
  wanted set through ``control/`` in the run directory above (private to this
  run: another server on the same repository never sees it), and a load or
  unload answers once every live worker applied it (:mod:`.model_control`).

Every HTTP answer of a worker carries ``x-edgecloud-worker: <pid>`` (which
process answered: for operators and for the tests), and every log line of a
worker but the JSON access log's starts with ``worker <index> (pid <pid>): ``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import ConfigError, EdgecloudError, UnavailableError, describe
from ..repository import ModelRepository
from .app import Listening, SharedListeners, bound_port, listen, serve
from .cores import CoreLedger, available_cores
from .host import ModelHost
from .http import HttpApp
from .launch import address
from .metrics import use_multiprocess
from .settings import ServerSettings

__all__ = ["CRASH_LOOP", "STOP_MARGIN_S", "Supervisor", "WorkerApp", "available_cores",
           "reuse_port_socket", "serve_workers", "worker_count", "worker_share"]  # fmt: skip

log = logging.getLogger("edgecloud.server")

#: Workers dying before ready (without an error), in a row, that stop the server.
CRASH_LOOP = 5
#: Seconds past ``shutdown_grace_s`` a stopping worker gets before SIGKILL.
STOP_MARGIN_S = 5.0
#: A worker that lived less than this died young: its restart backs off.
YOUNG_S = 10.0
BACKOFF_S = (0.1, 5.0)
WORKER_HEADER = b"x-edgecloud-worker"
_PR_SET_PDEATHSIG = 1


def worker_count(settings: ServerSettings) -> int:
    """``settings.workers``, or one per available core when it is None."""
    return settings.workers or available_cores()


def worker_share(threads: int, runners: int, workers: int, cores: int) -> tuple[int, int]:
    """One worker's share of the server's compute: (onnxruntime intra-op threads,
    batch runner slots per model) out of ``threads`` (``intra_op_threads``; 0: all
    ``cores``) and ``runners`` (``runners_per_model``) for ``workers`` processes.

    - threads 0 -> ``cores // workers`` each (at least 1); any other count is per
      call, as given, in every worker;
    - runners -> ``runners // workers`` each (at least 1): ``runners_per_model``
      is the batches of a model the whole server runs at once, so N workers run
      no more than one process would (the default 2: one per core here). This
      is each worker's guaranteed share; :mod:`.cores` lets a worker borrow up
      to ``runners`` while the others leave a core free.

    Why the runner split: each worker kept 2 slots, so 2 workers ran up to 4
    one-thread minilm batches on 2 cores, and each worker's half of the
    connections was cut into small batches (bench/results/workers_ab.json,
    minilm HTTP JSON c=64: 3.6 rows per run and 4.34 ms of CPU per request vs
    15.5 rows and 3.22 ms with one slot per worker; 1 worker: 3.2, 4.16 ms).
    """
    per_worker_threads = max(1, cores // workers) if threads == 0 else threads
    return per_worker_threads, max(1, runners // workers)


def serve_workers(
    repository: ModelRepository,
    settings: ServerSettings,
    workers: int,
    on_ready: Callable[[Listening], None] | None = None,
) -> None:
    """Serve ``repository`` with ``workers`` processes until SIGINT/SIGTERM.

    Raises:
        ConfigError: a port cannot be had, ``idempotency_db`` is ``:memory:``,
            or a worker failed to start (its own message).
        UnavailableError: workers kept crashing before ready (:data:`CRASH_LOOP`).
    """
    Supervisor(repository.root, settings, workers, on_ready).run()


class WorkerApp(HttpApp):
    """The HTTP front end of one worker: ready only while every worker is, and
    every answer names the worker's pid in ``x-edgecloud-worker``."""

    def __init__(self, host: ModelHost, *, token: str | None, ready_file: Path) -> None:
        self._ready_file = ready_file
        self._own_ready = False
        super().__init__(host, token=token)
        self.answer_headers = [(WORKER_HEADER, str(os.getpid()).encode())]

    @property
    def ready(self) -> bool:
        """This worker started and the supervisor's all-ready flag file exists."""
        return self._own_ready and self._ready_file.exists()

    @ready.setter
    def ready(self, value: bool) -> None:
        self._own_ready = value


# -- the supervisor ------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    pid: int
    status: int
    """Read end of the worker's status pipe: ``ready`` or ``error <message>`` lines."""
    started: float
    ready: bool = False
    error: str | None = None
    buffer: bytes = b""
    returncode: int | None = None
    """As :attr:`subprocess.Popen.returncode`: the exit status, or minus the signal."""

    def poll(self) -> int | None:
        """The return code once the worker has exited (and is reaped), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def read_status(self) -> None:
        try:
            chunk = os.read(self.status, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if text == "ready":
                self.ready = True
            elif text.startswith("error ") and self.error is None:
                self.error = text[6:]

    def close(self) -> None:
        self.read_status()
        with contextlib.suppress(OSError):
            os.close(self.status)

    def how(self) -> str:
        code = self.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with {code}"


@dataclass
class Supervisor:
    """Start ``workers`` worker processes, restart the ones that die, stop them all.

    :meth:`run` blocks until SIGINT/SIGTERM (returns) or a start failure (raises).
    """

    root: Path
    settings: ServerSettings
    workers: int
    on_ready: Callable[[Listening], None] | None = None
    _running: dict[int, _Worker] = field(default_factory=dict)
    _due: dict[int, float] = field(default_factory=dict)
    _young_deaths: int = 0
    _failed_starts: int = 0
    _first_error: str | None = None
    _stop: int | None = None
    _announced: bool = False

    def run(self) -> None:
        if self.workers > 1 and str(self.settings.idempotency_db) == ":memory:":
            raise ConfigError(
                "idempotency_db :memory: lives in one process, so with several workers a "
                "key would not be shared; give a file (or the default) or --workers 1"
            )
        self.settings.bearer_token()
        self.settings.check_tls()
        state = Path(tempfile.mkdtemp(prefix="edgecloud-serve-"))
        (state / "metrics").mkdir()
        self._ready_file = state / "all-ready"
        held: list[socket.socket] = []
        previous = {s: signal.signal(s, self._signalled) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            http = self._reserve(self.settings.http_port, "HTTP", "--http-port")
            held.append(http)
            grpc = None
            if self.settings.grpc_port is not None:
                grpc = self._reserve(self.settings.grpc_port, "gRPC", "--grpc-port")
                held.append(grpc)
            use_multiprocess(state / "metrics")  # before any worker makes a metric
            # The explicit model-control set of this run only (server/model_control.py):
            # private to this supervisor's workers, gone with it.
            self._control_dir = state / "control"
            self._control_dir.mkdir()
            self._worker_settings = self._split(bound_port(http), grpc)
            # before the forks: the workers share its memory (cores.py)
            self._ledger = CoreLedger(self.workers, available_cores())
            grpc_port = None if grpc is None else bound_port(grpc)
            tls = self.settings.tls_cert is not None
            self._listening = Listening(self.settings.host, bound_port(http), grpc_port, tls)
            for index in range(self.workers):
                self._spawn(index)
            self._supervise()
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            for sock in held:
                sock.close()
            shutil.rmtree(state, ignore_errors=True)

    # -- start ---------------------------------------------------------------

    def _reserve(self, port: int, what: str, flag: str) -> socket.socket:
        """``port`` probed exclusively (:func:`~.app.listen`'s errors), then held by a
        bound ``SO_REUSEPORT`` socket that never listens, so it gets no connections
        and port 0 becomes one port for every worker."""
        if port:
            listen(self.settings.host, port, what, flag).close()
        return reuse_port_socket(self.settings.host, port, what, flag, listening=False)

    def _split(self, http_port: int, grpc: socket.socket | None) -> ServerSettings:
        """A worker's settings: the ports bound, threads and runner slots split
        (:func:`worker_share`)."""
        cores = available_cores()
        threads, runners = worker_share(
            self.settings.intra_op_threads, self.settings.runners_per_model, self.workers, cores
        )
        if self.settings.intra_op_threads and threads * self.workers > cores:
            log.warning(
                "%d workers x %d onnxruntime threads exceed the %d cores: they will contend; "
                "lower --threads or --workers", self.workers, threads, cores,
            )  # fmt: skip
        return self.settings.model_copy(
            update={
                "http_port": http_port,
                "grpc_port": None if grpc is None else bound_port(grpc),
                "intra_op_threads": threads,
                "runners_per_model": runners,
                "workers": 1,
            }
        )

    def _spawn(self, index: int) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                os.close(read)
                for other in self._running.values():
                    os.close(other.status)
                code = _work(self, index, write, supervisor)
            finally:
                os._exit(code)
        os.close(write)
        self._running[index] = _Worker(index, pid, read, time.monotonic())

    # -- supervise -------------------------------------------------------------

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self._stop = signum

    def _supervise(self) -> None:
        while self._stop is None:
            fds = [worker.status for worker in self._running.values()]
            readable: list[int] = []
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select(fds, [], [], 0.1)
            for worker in list(self._running.values()):
                if worker.status in readable:
                    was_ready = worker.ready
                    worker.read_status()
                    if worker.ready and not was_ready:
                        self._failed_starts = 0
                if worker.poll() is not None:
                    self._exited(worker)
            now = time.monotonic()
            for index, due in list(self._due.items()):
                if now >= due and self._stop is None:
                    del self._due[index]
                    self._spawn(index)
            self._publish_ready()

    def _exited(self, worker: _Worker) -> None:
        worker.close()
        del self._running[worker.index]
        self._ledger.clear(worker.index)  # its batches died with it
        lived = time.monotonic() - worker.started
        if not worker.ready and worker.error is not None:  # it said why: no retry helps
            raise ConfigError(worker.error)
        if not self._announced:
            raise UnavailableError(f"server worker {worker.index} {worker.how()} while starting")
        if not worker.ready:
            self._failed_starts += 1
            self._first_error = self._first_error or worker.how()
            if self._failed_starts >= CRASH_LOOP:
                raise UnavailableError(
                    f"server workers keep dying before ready ({self._failed_starts} in a row); "
                    f"first: {self._first_error}"
                )
        self._young_deaths = self._young_deaths + 1 if lived < YOUNG_S else 0
        delay = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** max(0, self._young_deaths - 1))
        log.warning("server worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                    worker.index, worker.pid, worker.how(), lived, delay)  # fmt: skip
        self._due[worker.index] = time.monotonic() + delay

    def _publish_ready(self) -> None:
        ready = len(self._running) == self.workers and all(
            worker.ready for worker in self._running.values()
        )
        if ready:
            if not self._ready_file.exists():
                self._ready_file.touch()
            if not self._announced:
                self._announced = True
                if self.on_ready is not None:
                    self.on_ready(self._listening)
        else:
            self._ready_file.unlink(missing_ok=True)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait ``shutdown_grace_s`` + margin, SIGKILL the rest."""
        self._ready_file.unlink(missing_ok=True)
        for worker in self._running.values():
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for worker in self._running.values():
            if not worker.wait(max(0.0, deadline - time.monotonic())):
                log.warning("server worker %d did not stop in time; killing it", worker.index)
                worker.signal(signal.SIGKILL)
                worker.wait(60.0)
            worker.close()
        self._running.clear()


# -- the worker process --------------------------------------------------------


def reuse_port_socket(
    host: str, port: int, what: str, flag: str, *, listening: bool = True
) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, listening unless
    ``listening`` is False; ConfigError naming the address and ``flag`` if it cannot.

    Only sockets of the same user that also set ``SO_REUSEPORT`` can share the port
    (Linux); the kernel spreads new connections over the listening ones by a hash
    of their addresses.
    """
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if listening:
            sock.listen(2048)
            sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for {what} on {address(host, port)}: {exc.strerror or exc}; "
            f"choose another {flag}"
        ) from None
    return sock


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when its supervisor dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _log_as_worker(index: int) -> None:
    """Prefix this process's log lines with ``worker <index> (pid <pid>): `` (N workers
    log the same events: each line says whose), except the JSON access log's lines."""
    prefix = f"worker {index} (pid {os.getpid()}): "
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        if made.name != "edgecloud.access" and isinstance(made.msg, str):
            made.msg = prefix + made.msg
        return made

    logging.setLogRecordFactory(record)


def _work(supervisor: Supervisor, index: int, status_fd: int, parent: int) -> int:
    """Worker ``index``, in the forked child: serve until stopped; its exit status.

    Writes ``ready`` (all listeners up) or ``error <message>`` (it could not
    start) to ``status_fd``.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):  # the supervisor's are not ours
        signal.signal(signum, signal.SIG_DFL)
    _die_with_parent(parent)
    _log_as_worker(index)
    status = os.fdopen(status_fd, "w", buffering=1)

    def report(line: str) -> None:
        with contextlib.suppress(OSError):
            status.write(line + "\n")

    ready_file = supervisor._ready_file

    def make_app(host: ModelHost, token: str | None) -> HttpApp:
        return WorkerApp(host, token=token, ready_file=ready_file)

    settings = supervisor._worker_settings
    try:
        http = reuse_port_socket(settings.host, settings.http_port, "HTTP", "--http-port")
        seat = supervisor._ledger.seat(index, supervisor.settings.runners_per_model)
        shared = SharedListeners(http, make_app, supervisor._control_dir, index, seat)
        repository = ModelRepository(supervisor.root)
        serve(repository, settings, lambda _: report("ready"), shared=shared)
    except EdgecloudError as exc:
        report(f"error {describe(exc)}")
        return 1
    except BaseException as exc:
        log.exception("server worker failed")
        report(f"error {describe(exc)}")
        return 1
    finally:
        logging.shutdown()
    return 0
