"""A job of several processes: each process meets the others, then trains in a child it watches.

When a peer dies, JAX's distributed runtime kills the surviving processes from a C++
thread (``Terminating process because the JAX distributed service detected fatal
errors``, SIGABRT, a stack dump), sometimes only after its heartbeat timeout, and no
Python code of that process can stop it or say what happened. So for a job of several
processes every process the user starts (the *launcher*) does three things:

1. it meets the other processes (:func:`cgh_jax.rendezvous.meet`): a bounded start-up
   that refuses disagreeing processes before anything heavy runs;
2. it runs the training itself in a child process (the *worker*: the same command, told by
   :data:`WORKER_ENV` that it is one), which calls ``jax.distributed.initialize`` and
   trains; the worker dies with its launcher (:func:`watch_launcher`), its stderr passes
   through the launcher, which holds back a native stack dump and the worker's own error
   line until it knows what happened (with ``CGH_JAX_TRACEBACK=1`` everything is shown as
   it comes, and a worker whose peer is lost gets a few seconds to print its own error),
   and SIGTERM and SIGINT are forwarded to it;
3. it keeps the rendezvous connections (process 0 to each other process) open and sends a
   heartbeat every ``heartbeat_timeout / 4``. A peer is *lost* when its connection closes
   without a goodbye (at once: a killed process's sockets close with it) or when it is
   silent for ``heartbeat_timeout`` seconds. Process 0 relays what it learns about one
   process to all others.

When a peer is lost (or its worker dies, or fails with an error), every launcher stops its
worker and ends with one line: which process stopped responding, the newest committed
checkpoint step (:func:`committed_steps`: Orbax finalizes a step only when every process
has written its part, so a step half-written when a process died is never listed nor
restored) and the exact command to resume; exit status 1.

The worker tells its launcher what it is doing through a pipe (:func:`note`):
``initialized`` after ``jax.distributed.initialize``, ``checkpoints`` with the directory of
the run being checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from cgh_jax import rendezvous

WORKER_ENV = "CGH_JAX_WORKER_FD"  # set in the worker: the fd of its notes to the launcher
EXPLAIN_S = 5.0  # after its worker died without a message: wait this long for news
SETTLE_S = 1.0  # after its worker failed with a message: wait this long for a lost peer
FAILED_PEER_GRACE_S = 5.0  # a peer failed: this long for our worker to fail the same way
STARTUP_IMPORT_S = 60.0  # the worker's imports, on top of the init timeout
# The first line of a native crash report; everything after it is the report.
_CRASH = re.compile(
    r"^(F\d{4} |\*\*\* Check failure stack trace|terminate called |Fatal Python error"
    r"|\*\*\* SIG|\*\*\* Aborted)"
)
_ERROR_PREFIX = "cgh-jax: error: "


# ----------------------------------------------------------------------------- worker side


def is_worker() -> bool:
    """True in the training child of a launcher."""
    return WORKER_ENV in os.environ


_note_lock = threading.Lock()


def note(kind: str, **fields: Any) -> None:
    """Tells the launcher (if this is a worker) about ``kind``; a no-op elsewhere."""
    fd = os.environ.get(WORKER_ENV)
    if not fd:
        return
    line = (json.dumps({"kind": kind, **fields}) + "\n").encode()
    with _note_lock:
        try:
            os.write(int(fd), line)
        except (OSError, ValueError):
            pass


def watch_launcher() -> None:
    """In a worker: exits at once when the launcher is gone: on Linux the kernel kills it
    (``PR_SET_PDEATHSIG``), everywhere a thread sees the launcher's end of stdin close
    (also if the launcher died before this was called)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def wait_for_eof():
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=wait_for_eof, name="cgh-jax-launcher-watch", daemon=True).start()


def exit_process(status: int) -> None:
    """Exits with ``status``; a worker skips JAX's shutdown (whose barrier would wait for
    peers that may be stuck), so its launcher learns the status at once."""
    if not is_worker():
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


# ----------------------------------------------------------------------------- launcher side


@dataclasses.dataclass(frozen=True)
class Plan:
    """One process of a job of several, as its launcher sees it."""

    address: str
    num_processes: int
    process_id: int
    facts: rendezvous.Facts
    init_timeout_s: float
    heartbeat_timeout_s: float
    argv: tuple[str, ...]
    show_raw: bool = False  # CGH_JAX_TRACEBACK=1: relay everything, hide nothing


def resume_command(argv) -> str:
    """The command line of this process, as it can be typed again."""
    program = argv[0]
    parts = os.path.normpath(program).split(os.sep)
    if parts[-2:] == ["cgh_jax", "main.py"]:
        head = [sys.executable, "-m", "cgh_jax.main"]
    else:
        head = [program]
    return shlex.join([*head, *argv[1:]])


COMMIT_FILE = "commit_success.txt"  # Orbax's last file of a step on Cloud Storage


def committed_steps(directory: str, *, commit_file: bool | None = None) -> list[int]:
    """The steps of the committed checkpoints in ``directory``, ascending.

    Read from the directory alone (no Orbax, no JAX: quick in a launcher whose job just
    failed), by Orbax's on-disk rule: a step is written into
    ``<step>.orbax-checkpoint-tmp-<time>/`` and renamed to ``<step>/`` once every process
    has written its part; on Cloud Storage (``gs://``, no atomic rename) it is written in
    place and ``commit_success.txt`` comes last (``commit_file``: that rule, the default
    for ``gs://``). The tests check it against Orbax's own listing.
    """
    from etils import epath

    root = epath.Path(directory)
    if commit_file is None:
        commit_file = str(directory).startswith("gs://")
    if not root.is_dir():
        return []
    return sorted(
        int(path.name)
        for path in root.iterdir()
        if path.name.isdigit()
        and path.is_dir()
        and (not commit_file or (path / COMMIT_FILE).exists())
    )


def checkpoint_state(directory: str) -> str:
    """``the newest committed checkpoint is step K in DIR`` (or that there is none)."""
    try:
        steps = committed_steps(directory)
    except Exception as e:  # noqa: BLE001 - unreadable storage: say so, keep the message
        return f"the checkpoints in {directory} cannot be listed ({type(e).__name__}: {e})"
    if not steps:
        return f"no checkpoint was committed in {directory} yet (the run restarts from step 0)"
    return (
        f"the newest committed checkpoint is step {steps[-1]} in {directory} (a step "
        "half-written when the process stopped is never restored)"
    )


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = {
            "SIGKILL": ": the out-of-memory killer, or kill -9",
            "SIGABRT": ": a native abort, e.g. JAX's distributed runtime",
        }.get(name, "")
        return f"was killed by signal {-rc} ({name}{why})"
    return f"exited with status {rc}"


@dataclasses.dataclass
class _News:
    """The first thing learnt about another process: ``lost``, ``died`` or ``failed``."""

    event: str
    process: int
    text: str
    status: int = 1
    at: float = dataclasses.field(default_factory=time.monotonic)

    def message(self) -> dict[str, Any]:
        return {"kind": "news", "event": self.event, "process": self.process,
                "text": self.text, "status": self.status}  # fmt: skip


class _Launcher:
    def __init__(self, plan: Plan, channels: dict[int, rendezvous.Channel]):
        self.plan = plan
        self.me = plan.process_id
        self.channels = channels
        self.last_seen = {pid: time.monotonic() for pid in channels}
        self.finished: set[int] = set()  # peers that said goodbye
        self.news: _News | None = None
        self.worker: subprocess.Popen | None = None
        self.initialized = False
        self.checkpoints = os.path.join(plan.facts.workdir, "checkpoints")
        self.worker_error: str | None = None
        self.hidden_lines = 0
        self._crashing = False
        self._err_buffer = b""
        self._note_buffer = b""
        self._selector = selectors.DefaultSelector()

    # -- the worker

    def spawn(self, command: list[str] | None = None) -> None:
        """Starts the worker: this command line again (or ``command``)."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **{WORKER_ENV: str(write_fd)})
        self.worker = subprocess.Popen(
            command or [sys.executable, "-m", "cgh_jax.main", *self.plan.argv[1:]],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(write_fd,),
            start_new_session=True,  # signals reach it once, through the launcher
        )
        os.close(write_fd)
        self._notes_fd = read_fd
        os.set_blocking(read_fd, False)
        os.set_blocking(self.worker.stderr.fileno(), False)
        self._selector.register(read_fd, selectors.EVENT_READ, "notes")
        self._selector.register(self.worker.stderr.fileno(), selectors.EVENT_READ, "stderr")
        for pid, channel in self.channels.items():
            self._selector.register(channel, selectors.EVENT_READ, pid)

    def forward(self, signum, frame) -> None:
        del frame
        if self.worker is not None and self.worker.poll() is None:
            os.kill(self.worker.pid, signum)

    def stop_worker(self) -> None:
        if self.worker.poll() is None:
            self.worker.kill()
        self.worker.wait()
        self._drain()

    # -- input

    def _pump(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout=timeout):
            if key.data == "stderr":
                self._read_stderr()
            elif key.data == "notes":
                self._read_notes()
            else:
                self._read_channel(key.data, key.fileobj)

    def _drain(self) -> None:
        """Reads what the (ended) worker left in its pipes."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            more = self._read_stderr()
            if more is False:
                break
            if more is None:
                time.sleep(0.05)
        self._read_notes()
        if self._err_buffer:
            self._relay(self._err_buffer.decode(errors="replace"))
            self._err_buffer = b""

    def _read_stderr(self) -> bool | None:
        """Relays complete lines; False at end of stream, None if nothing was there."""
        try:
            data = os.read(self.worker.stderr.fileno(), 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            try:
                self._selector.unregister(self.worker.stderr.fileno())
            except (KeyError, ValueError):
                pass
            return False
        self._err_buffer += data
        *lines, self._err_buffer = self._err_buffer.split(b"\n")
        for line in lines:
            self._relay(line.decode(errors="replace"))
        return True

    def _relay(self, line: str) -> None:
        if self.plan.show_raw:
            print(line, file=sys.stderr, flush=True)
            if line.startswith(_ERROR_PREFIX):
                self.worker_error = line[len(_ERROR_PREFIX) :]
            return
        if line.startswith(_ERROR_PREFIX):
            self.worker_error = line[len(_ERROR_PREFIX) :]  # said last, once the cause is known
        elif self._crashing or self._stopping() or _CRASH.match(line):
            self._crashing = True
            self.hidden_lines += 1
        else:
            print(line, file=sys.stderr, flush=True)

    def _stopping(self) -> bool:
        """A peer is gone: what the worker prints now is its own failure, not news."""
        return self.news is not None and self.news.event != "failed"

    def _read_notes(self) -> None:
        try:
            data = os.read(self._notes_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker ended
            try:
                self._selector.unregister(self._notes_fd)
            except (KeyError, ValueError):
                pass
            return
        self._note_buffer += data
        *lines, self._note_buffer = self._note_buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("kind") == "initialized":
                self.initialized = True
            elif message.get("kind") == "checkpoints":
                self.checkpoints = str(message.get("directory"))

    def _read_channel(self, pid: int, channel: rendezvous.Channel) -> None:
        for message in channel.receive():
            self.last_seen[pid] = time.monotonic()
            kind = message.get("kind")
            if kind == "bye":
                self.finished.add(pid)
            elif kind == "news":
                self._learn(
                    _News(
                        str(message.get("event")),
                        int(message.get("process", pid)),
                        str(message.get("text", "")),
                        int(message.get("status", 1)),
                    )
                )
        if channel.closed:
            self._selector.unregister(channel)
            if pid not in self.finished:
                self._learn(_News("lost", pid, "its connection closed"))

    def _learn(self, news: _News) -> None:
        if self.news is not None or news.process == self.me:
            return
        self.news = news
        if self.me == 0:  # the hub: tell everyone else
            for pid, channel in self.channels.items():
                if pid != news.process and not channel.closed:
                    channel.send(news.message())

    def _announce(self, event: str, text: str, status: int = 1) -> None:
        for channel in self.channels.values():
            if not channel.closed:
                channel.send(_News(event, self.me, text, status).message())

    # -- the loop

    def _beat(self, now: float) -> None:
        if now < self._next_beat:
            return
        self._next_beat = now + max(0.2, min(5.0, self.plan.heartbeat_timeout_s / 4))
        for pid, channel in self.channels.items():
            if not channel.closed and pid not in self.finished:
                channel.send({"kind": "hb"})
        for pid, seen in self.last_seen.items():
            silent = now - seen
            if pid not in self.finished and silent > self.plan.heartbeat_timeout_s:
                self._learn(_News("lost", pid, f"no heartbeat for {silent:.0f} s"))

    def _wait(self, seconds: float, until) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            self._pump(0.1)
            self._beat(time.monotonic())

    def run(self, command: list[str] | None = None) -> tuple[int, str | None]:
        """Runs the worker to its end; ``(exit status, message or None)``. Says goodbye to
        the peers last, so that this launcher's end does not read as a lost process."""
        try:
            status, message = self._run(command)
        finally:
            self._selector.close()
            if self.worker is not None:
                os.close(self._notes_fd)
        for channel in self.channels.values():
            if not channel.closed:
                channel.send({"kind": "bye", "status": status})
        return status, message

    def _run(self, command: list[str] | None) -> tuple[int, str | None]:
        self.spawn(command)
        self._next_beat = time.monotonic()
        startup_deadline = time.monotonic() + self.plan.init_timeout_s + STARTUP_IMPORT_S
        while True:
            self._pump(0.2)
            now = time.monotonic()
            self._beat(now)
            rc = self.worker.poll()
            if rc is not None:
                self._drain()
                return self._worker_ended(rc)
            news = self.news
            if news is not None and (
                news.event != "failed" or now - news.at >= FAILED_PEER_GRACE_S
            ):
                if self.plan.show_raw:  # let the worker print its own (raw) error first
                    self._wait(EXPLAIN_S, lambda: self.worker.poll() is not None)
                self.stop_worker()
                return self._report(news)
            if not self.initialized and now > startup_deadline:
                self.stop_worker()
                self._announce("failed", "it could not connect through JAX", 2)
                return 2, self._startup_failure("did not connect within the time allowed")

    def _worker_ended(self, rc: int) -> tuple[int, str | None]:
        if rc == 0:
            return 0, None
        if self.worker_error is None or rc < 0:
            described = _describe_exit(rc)
            self._announce("died", f"its training process {described}")
            self._wait(EXPLAIN_S, lambda: self.news is not None)
            if self.news is not None:
                return self._report(self.news)
            if not self.initialized:
                return 2, self._startup_failure(described)
            return 1, (
                f"the training process of process {self.me} {described} without an error "
                f"message{self._hidden()}; {self._checkpoint_and_resume()}"
            )
        self._wait(SETTLE_S, lambda: self.news is not None and self.news.event != "failed")
        if self.news is not None and self.news.event != "failed":
            return self._report(self.news)
        status = rc if rc in (1, 2) else 1
        self._announce("failed", self.worker_error, status)
        return status, self.worker_error

    # -- messages

    def _hidden(self) -> str:
        if not self.hidden_lines:
            return ""
        return (
            f" (its crash report of {self.hidden_lines} lines is hidden; "
            "CGH_JAX_TRACEBACK=1 shows it)"
        )

    def _checkpoint_and_resume(self) -> str:
        n = self.plan.num_processes
        return (
            f"{checkpoint_state(self.checkpoints)}; resume by starting all {n} processes "
            "again with the same command (each with its own --process_id), here: "
            f"{resume_command(self.plan.argv)}"
        )

    def _report(self, news: _News) -> tuple[int, str]:
        """The exit status and line for ``news``: 1, or a failed peer's own status."""
        if news.event == "lost":
            what = f"process {news.process} stopped responding ({news.text})"
        elif news.event == "died":
            what = f"process {news.process} stopped responding: {news.text}"
        else:
            what = f"process {news.process} stopped with an error ({news.text})"
        status = news.status if news.event == "failed" else 1
        return status, f"{what}; {self._checkpoint_and_resume()}"

    def _startup_failure(self, what: str) -> str:
        return (
            f"the {self.plan.num_processes} processes met at {self.plan.address}, but the "
            f"training process of process {self.me} {what} while JAX's distributed service "
            f"connected them{self._hidden()}; check that the port is reachable from every "
            "host, or raise --init_timeout"
        )


def timeouts(flag_values) -> tuple[int, int]:
    """``(init, heartbeat)`` timeouts in seconds: ``--init_timeout`` and
    ``--heartbeat_timeout``, else the config's ``init_timeout_s`` / ``heartbeat_timeout_s``."""
    config = flag_values.config
    init = flag_values.init_timeout or config.get("init_timeout_s", 60)
    heartbeat = flag_values.heartbeat_timeout or config.get("heartbeat_timeout_s", 60)
    return int(init), int(heartbeat)


def launch(flag_values, *, show_raw: bool) -> tuple[int, str | None] | None:
    """The launcher of a job of several processes, from the command line's flags.

    Returns None at once in a single process and in a worker (which starts watching its
    launcher); otherwise meets the other processes, trains in a supervised worker and
    returns ``(exit status, message or None)``.

    Raises:
      cgh_jax.spec.fields.ConfigError: wrong multi-host flags, or the processes could not
        start together (:class:`cgh_jax.rendezvous.LaunchError`).
    """
    from cgh_jax import distributed

    if is_worker():
        watch_launcher()
        return None
    init_s, heartbeat_s = timeouts(flag_values)
    layout = distributed.job_layout(
        flag_values.coordinator_address,
        flag_values.num_processes,
        flag_values.process_id,
        timeout_s=init_s,
    )
    if layout is None:
        return None
    plan = Plan(
        *layout,
        facts=rendezvous.Facts.of(flag_values.config, flag_values.workdir),
        init_timeout_s=init_s,
        heartbeat_timeout_s=heartbeat_s,
        argv=tuple(sys.argv),
        show_raw=show_raw,
    )
    return supervise(plan)


def supervise(plan: Plan) -> tuple[int, str | None]:
    """Meets the other processes, trains in a supervised worker; ``(status, message)``.

    Raises:
      cgh_jax.rendezvous.LaunchError: the processes could not start together.
    """
    channels = rendezvous.meet(
        plan.address, plan.num_processes, plan.process_id, plan.facts, plan.init_timeout_s
    )
    launcher = _Launcher(plan, channels)
    previous = {s: signal.signal(s, launcher.forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return launcher.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for channel in channels.values():
            channel.close()


__all__ = [
    "Plan",
    "WORKER_ENV",
    "checkpoint_state",
    "committed_steps",
    "exit_process",
    "is_worker",
    "launch",
    "note",
    "resume_command",
    "supervise",
    "timeouts",
    "watch_launcher",
]
