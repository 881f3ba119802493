"""The start of a multi-process job: every process meets process 0 before JAX connects them.

``jax.distributed.initialize`` waits for the processes silently and, when one never comes
or the processes disagree on their number, kills the process with a C++ stack dump. So
before it, the processes of a job meet over TCP on the coordinator's own port, with a
bounded wait and a one-line answer:

* process 0 listens on the port of the coordinator address (on every interface, as JAX's
  coordinator does); every other process connects, retrying while nothing listens there,
  and sends a *hello*: its process id, the number of processes it was given and its
  :class:`Facts` (a hash of the resolved config with its flat fields, the workdir, the
  versions of cgh-jax, its source and JAX);
* process 0 logs who has joined while it waits. When all ``N`` have joined and agree, it
  answers ``ok`` to each; otherwise it answers the error, every process raises it as a
  :class:`LaunchError` (exit status 2), and nothing else has run:

  - ``<n> of <N> processes joined <address> within <t> s (missing: ids ...)``;
  - a process that cannot reach process 0 says so, with the address it tried;
  - a different ``--num_processes``, a repeated ``--process_id``, a different config,
    workdir or version: the differing value and the process ids;

* process 0 then closes its listening socket, so that JAX's coordinator can take the port,
  but every :class:`Channel` stays open: :mod:`cgh_jax.supervisor` sends heartbeats over
  them and notices a lost peer at once (a closed connection) or after a silent heartbeat.

Messages are JSON objects, one a line, with a ``kind``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import select
import selectors
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging

from cgh_jax.spec.fields import ConfigError, flatten, to_dict

PROTOCOL = "cgh-jax-rendezvous/1"
FIX = (
    "start all {n} processes with the same --coordinator_address and --num_processes, "
    "or raise --init_timeout"
)
# A process connected to process 0 waits this much longer than its own timeout for the
# answer: process 0 started before it accepted the connection, so it answers by then.
ANSWER_MARGIN_S = 5.0


class LaunchError(ConfigError):
    """The processes of a job could not start together (exit status 2)."""


# ----------------------------------------------------------------------------- what must agree


@dataclasses.dataclass(frozen=True)
class Facts:
    """What every process of a job must share.

    Attributes:
      config: the resolved config's fields, flat (``{"optimizer.name": "m3", ...}``), as JSON
        values.
      config_hash: SHA-256 of ``config``.
      workdir: the work directory (absolute if local).
      version: ``cgh-jax <version> (source <hash of the package's .py files>), jax <v>``.
    """

    config: Mapping[str, Any]
    config_hash: str
    workdir: str
    version: str

    @classmethod
    def of(cls, config: Any, workdir: str) -> Facts:
        flat = json.loads(json.dumps(flatten(to_dict(config)), sort_keys=True, default=str))
        text = json.dumps(flat, sort_keys=True)
        local = "://" not in str(workdir)
        return cls(
            config=flat,
            config_hash=hashlib.sha256(text.encode()).hexdigest(),
            workdir=os.path.abspath(os.fspath(workdir)) if local else str(workdir),
            version=versions(),
        )


def source_hash() -> str:
    """SHA-256 (first 12 hex digits) of the ``cgh_jax`` package's Python files."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def versions() -> str:
    """The versions a job's processes must share (read without importing JAX)."""
    from importlib import metadata

    import cgh_jax

    try:
        jax_version = metadata.version("jax")
    except metadata.PackageNotFoundError:
        jax_version = "not installed"
    return f"cgh-jax {cgh_jax.__version__} (source {source_hash()}), jax {jax_version}"


def disagreement(mine: Facts, theirs: Facts, me: int, them: int) -> LaunchError | None:
    """The error for the first fact on which process ``them`` differs from ``me``, or None."""
    if theirs.version != mine.version:
        return LaunchError(
            f"the processes run different software: {mine.version} on process {me}, "
            f"{theirs.version} on process {them}",
            "install the same cgh-jax checkout and JAX version on every host",
        )
    if theirs.workdir != mine.workdir:
        return LaunchError(
            f"the processes were given different workdirs: {mine.workdir} on process {me}, "
            f"{theirs.workdir} on process {them}",
            "pass the same --workdir, on storage every host sees, to every process",
        )
    if theirs.config_hash != mine.config_hash:

        def value(config, key):
            return repr(config[key]) if key in config else "<absent>"

        keys = sorted(set(mine.config) | set(theirs.config))
        differ = [k for k in keys if value(mine.config, k) != value(theirs.config, k)]
        shown = "; ".join(
            f"{k} is {value(mine.config, k)} on process {me} but "
            f"{value(theirs.config, k)} on process {them}"
            for k in differ[:3]
        )
        if len(differ) > 3:
            shown += f" (and {len(differ) - 3} more fields)"
        return LaunchError(
            f"the processes were started with different configs: {shown or 'hash differs'}",
            "start every process with the same --config and --config.* flags",
        )
    return None


# ----------------------------------------------------------------------------- the wire


class Channel:
    """One TCP connection carrying JSON lines. ``receive`` never blocks."""

    SEND_TIMEOUT_S = 5.0

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self._buffer = b""
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Mapping[str, Any]) -> bool:
        """Sends one message; False if the connection is gone or stuck (never raises)."""
        data = memoryview((json.dumps(message) + "\n").encode())
        deadline = time.monotonic() + self.SEND_TIMEOUT_S
        while data:
            try:
                data = data[self.sock.send(data) :]
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    return False
                select.select([], [self.sock], [], 0.1)
            except OSError:
                return False
        return True

    def receive(self) -> list[dict[str, Any]]:
        """The complete messages that have arrived; sets ``closed`` at end of stream.

        A line that is not a JSON object (something else talking on the port) closes the
        channel.
        """
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
        lines = self._buffer.split(b"\n")
        self._buffer = lines.pop()
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict) or "kind" not in message:
                self.closed = True
                break
            messages.append(message)
        return messages

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``; LaunchError if malformed."""
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(
            f"--coordinator_address={address} is not HOST:PORT",
            "give process 0's host name or IP address and a free port, e.g. 10.0.0.1:12345",
        )
    return host, int(port)


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids)) or "none"


# ----------------------------------------------------------------------------- meeting


def meet(
    address: str, num_processes: int, process_id: int, facts: Facts, timeout_s: float
) -> dict[int, Channel]:
    """Meets the other processes of the job; returns the open channels (process id ->).

    Process 0 gets one channel per other process; the others get ``{0: channel}``.

    Raises:
      LaunchError: not everyone joined within ``timeout_s``, process 0 could not be
        reached or could not listen, or the processes disagree (see the module docstring).
    """
    if process_id == 0:
        return _host(address, num_processes, facts, timeout_s)
    return _join(address, num_processes, process_id, facts, timeout_s)


def _hello(num_processes: int, process_id: int, facts: Facts) -> dict[str, Any]:
    return {
        "kind": "hello",
        "protocol": PROTOCOL,
        "process_id": process_id,
        "num_processes": num_processes,
        "host": socket.gethostname(),
        **dataclasses.asdict(facts),
    }


def _listen(port: int) -> socket.socket:
    """A socket listening on ``port`` of every interface (IPv6 and IPv4 where possible)."""
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(
                ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128
            )
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise
    return socket.create_server(("", port), backlog=128)


def _host(address: str, n: int, facts: Facts, timeout_s: float) -> dict[int, Channel]:
    _, port = split_address(address)
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        server = _listen(port)
    except OSError as e:
        raise LaunchError(
            f"process 0 cannot listen on port {port} for --coordinator_address={address}: "
            f"{e.strerror or e} (another job's coordinator, or another program, has it)",
            "pick a free port and give the same --coordinator_address to every process",
        ) from e
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    joined: dict[int, Channel] = {}
    hosts = {0: socket.gethostname()}
    pending: list[Channel] = []
    next_log = start
    try:
        while len(joined) < n - 1:
            now = time.monotonic()
            if now >= deadline:
                missing = set(range(n)) - set(joined) - {0}
                raise LaunchError(
                    f"{len(joined) + 1} of {n} processes joined {address} within "
                    f"{timeout_s:g} s (missing: ids {_ids(missing)})",
                    FIX.format(n=n),
                )
            if now >= next_log:
                missing = set(range(1, n)) - set(joined)
                logging.info(
                    "Waiting at %s: %d of %d processes joined (ids %s), missing ids %s; "
                    "%.0f s left.",
                    address,
                    len(joined) + 1,
                    n,
                    _ids({0, *joined}),
                    _ids(missing),
                    deadline - now,
                )
                next_log = now + min(10.0, max(1.0, timeout_s / 6))
            for key, _ in selector.select(timeout=min(0.5, max(0.0, deadline - now))):
                if key.fileobj is server:
                    try:
                        sock, _ = server.accept()
                    except OSError:
                        continue
                    channel = Channel(sock)
                    pending.append(channel)
                    selector.register(channel, selectors.EVENT_READ)
                    continue
                channel = key.fileobj
                for message in channel.receive():
                    if message.get("kind") != "hello" or message.get("protocol") != PROTOCOL:
                        channel.closed = True
                        break
                    error = _check_hello(message, n, facts, joined, hosts)
                    if error is not None:
                        raise error
                    pid = int(message["process_id"])
                    joined[pid] = channel
                    hosts[pid] = str(message.get("host", "?"))
                    pending.remove(channel)
                    selector.unregister(channel)
                    break
                if channel.closed and channel in pending:
                    pending.remove(channel)
                    selector.unregister(channel)
                    channel.close()
        for channel in joined.values():
            channel.send({"kind": "ok"})
        logging.info("All %d processes joined %s.", n, address)
        return joined
    except LaunchError as error:
        _answer([*joined.values(), *pending], error)
        for channel in [*joined.values(), *pending]:
            channel.close()
        raise
    finally:
        selector.close()
        server.close()


def _answer(channels: Iterable[Channel], error: LaunchError) -> None:
    for channel in channels:
        if not channel.closed:
            channel.send({"kind": "error", "what": error.what, "fix": error.fix})


def _check_hello(
    hello: Mapping[str, Any], n: int, facts: Facts, joined: Mapping[int, Channel], hosts
) -> LaunchError | None:
    pid, theirs_n = hello.get("process_id"), hello.get("num_processes")
    if theirs_n != n:
        return LaunchError(
            f"the processes disagree on --num_processes: process 0 has {n}, process {pid} "
            f"has {theirs_n}",
            "give every process the same --num_processes (the number of processes started)",
        )
    if not isinstance(pid, int) or not 0 < pid < n:
        return LaunchError(
            f"a process joined with --process_id={pid}, outside 0 to {n - 1}",
            f"give the {n} processes the ids 0 to {n - 1}, each one once",
        )
    if pid in joined:
        return LaunchError(
            f"--process_id={pid} was given to two processes (on {hosts.get(pid, '?')} and "
            f"{hello.get('host', '?')})",
            f"give the {n} processes the ids 0 to {n - 1}, each one once",
        )
    try:
        theirs = Facts(
            config=hello["config"],
            config_hash=hello["config_hash"],
            workdir=hello["workdir"],
            version=hello["version"],
        )
    except KeyError as e:
        return LaunchError(f"process {pid} sent an incomplete hello ({e})", "update it")
    return disagreement(facts, theirs, 0, pid)


def _join(address: str, n: int, pid: int, facts: Facts, timeout_s: float) -> dict[int, Channel]:
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    reason = "nothing answered"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(
                f"process {pid} could not reach process 0 at {address} within {timeout_s:g} s "
                f"({reason}: is process 0 running, on that host and port?)",
                FIX.format(n=n),
            )
        try:
            sock = socket.create_connection((host, port), timeout=min(2.0, left))
            break
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    channel = Channel(sock)
    answer_by = time.monotonic() + timeout_s + ANSWER_MARGIN_S
    if not channel.send(_hello(n, pid, facts)):
        channel.closed = True
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    try:
        while not channel.closed:
            left = answer_by - time.monotonic()
            if left <= 0:
                break
            selector.select(timeout=min(0.5, left))
            for message in channel.receive():
                if message.get("kind") == "ok":
                    return {0: channel}
                if message.get("kind") == "error":
                    channel.close()
                    raise LaunchError(str(message.get("what")), str(message.get("fix")))
    finally:
        selector.close()
    channel.close()
    raise LaunchError(
        f"process {pid} reached {address}, but no cgh-jax process 0 of this job answered "
        "there (another program on that port, or process 0 stopped)",
        FIX.format(n=n),
    )


__all__ = ["Channel", "Facts", "LaunchError", "disagreement", "meet", "split_address"]
