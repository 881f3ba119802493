"""cgh_jax.rendezvous and cgh_jax.supervisor in one process: launchers in threads, fake workers.

The real-process cases (``python -m cgh_jax.main`` on loopback) are in
``test_multihost_failures.py``; these check the pieces quickly: the meeting's refusals, the
news between launchers (a crashed worker, a failed worker, a silent peer), the hidden crash
report, the resume command and the committed-step listing.
"""

import os
import signal
import socket
import sys
import textwrap
import threading

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cgh_jax import checkpointing, configlib, rendezvous, supervisor


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _facts(tmp_path, **changes):
    cfg = configlib.base_config()
    for key, value in changes.items():
        setattr(cfg, key, value)
    return rendezvous.Facts.of(cfg, str(tmp_path / "w"))


def _meet_all(entries, timeout_s=5.0):
    """Runs ``meet`` for each ``(num_processes, process_id, facts)`` in threads; the results
    (channels or the LaunchError) in the same order."""
    address = f"127.0.0.1:{_free_port()}"
    results = [None] * len(entries)

    def run(i, n, pid, facts):
        try:
            results[i] = rendezvous.meet(address, n, pid, facts, timeout_s)
        except rendezvous.LaunchError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, *e)) for i, e in enumerate(entries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 15)
    for r in results:
        if isinstance(r, dict):
            for channel in r.values():
                channel.close()
    return address, results


# ----------------------------------------------------------------------------- meeting


def test_three_processes_meet(tmp_path):
    facts = _facts(tmp_path)
    _, results = _meet_all([(3, 0, facts), (3, 1, facts), (3, 2, facts)])
    assert [sorted(r) for r in results] == [[1, 2], [0], [0]]


def test_a_repeated_process_id_is_refused(tmp_path):
    facts = _facts(tmp_path)
    _, results = _meet_all([(3, 0, facts), (3, 1, facts), (3, 1, facts)], timeout_s=3.0)
    errors = [r for r in results if isinstance(r, rendezvous.LaunchError)]
    assert len(errors) >= 2  # process 0 and the second one with id 1, at least
    assert "--process_id=1 was given to two processes" in str(errors[0])


@pytest.mark.parametrize(
    "theirs,needle",
    [
        (dict(workdir="/elsewhere"), "different workdirs: "),
        (dict(version="cgh-jax 0.0.9 (source 000000000000), jax 0.1"), "different software"),
        (dict(config_hash="x", seed=1), "seed is 0 on process 0 but 1 on process 1"),
    ],
)
def test_disagreements_name_the_value_and_the_processes(tmp_path, theirs, needle):
    mine = _facts(tmp_path)
    fields = {**mine.__dict__, **theirs}
    if "seed" in fields:
        fields["config"] = {**mine.config, "seed": fields.pop("seed")}
    error = rendezvous.disagreement(mine, rendezvous.Facts(**fields), 0, 1)
    assert needle in str(error) and "; " in str(error)
    assert rendezvous.disagreement(mine, mine, 0, 1) is None


def test_config_differences_are_listed_at_most_three(tmp_path):
    mine = _facts(tmp_path)
    theirs = _facts(tmp_path, seed=1, batch_size=7, num_epochs=9, max_steps=3)
    message = str(rendezvous.disagreement(mine, theirs, 0, 2))
    assert "batch_size is 100 on process 0 but 7 on process 2" in message
    assert "(and 1 more fields)" in message


def test_a_stranger_on_the_port_is_ignored(tmp_path):
    """Something that is not a cgh-jax process connects and talks: process 0 drops it and
    still meets the real process."""
    facts = _facts(tmp_path)
    address = f"127.0.0.1:{_free_port()}"
    host, port = rendezvous.split_address(address)
    results = {}

    def zero():
        results[0] = rendezvous.meet(address, 2, 0, facts, 5.0)

    thread = threading.Thread(target=zero)
    thread.start()
    for _ in range(50):
        try:
            stranger = socket.create_connection((host, port))
            break
        except OSError:
            threading.Event().wait(0.1)
    stranger.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    channels = rendezvous.meet(address, 2, 1, facts, 5.0)
    thread.join(10)
    assert sorted(results[0]) == [1] and sorted(channels) == [0]
    stranger.close()
    for c in [*results[0].values(), *channels.values()]:
        c.close()


def test_malformed_coordinator_address():
    with pytest.raises(rendezvous.LaunchError, match="is not HOST:PORT"):
        rendezvous.split_address("localhost")


# ----------------------------------------------------------------------------- launchers

FAKE_WORKER = textwrap.dedent(
    """
    import os, sys, time
    os.write(int(os.environ["CGH_JAX_WORKER_FD"]), b'{"kind": "initialized"}\\n')
    print("a log line", file=sys.stderr, flush=True)
    mode = sys.argv[1]
    if mode == "sleep":
        time.sleep(120)
    elif mode == "crash":
        print("F1204 00:00:00.0 1 client.h:80] Terminating process", file=sys.stderr)
        print("*** Check failure stack trace: ***", file=sys.stderr)
        print("    @     0x7f3a5f840634  SendToLog()", file=sys.stderr, flush=True)
        os.abort()
    elif mode == "fail":
        print("cgh-jax: error: the data is gone; restore it", file=sys.stderr, flush=True)
        sys.exit(1)
    elif mode == "term":  # a preempted worker: saves on SIGTERM and ends normally
        import signal
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        note = b'{"kind": "checkpoints", "directory": "/run/ckpt"}\\n'
        os.write(int(os.environ["CGH_JAX_WORKER_FD"]), note)
        time.sleep(120)
    elif mode == "fail-late":  # a collective that fails once its peer is gone
        time.sleep(0.5)
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ValueError: UNKNOWN: Gloo AllGather failed", file=sys.stderr)
        print("cgh-jax: error: ValueError: Gloo AllGather failed; rerun", file=sys.stderr)
        sys.exit(1)
    """
)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(supervisor, "EXPLAIN_S", 1.0)
    monkeypatch.setattr(supervisor, "SETTLE_S", 0.3)
    monkeypatch.setattr(supervisor, "FAILED_PEER_GRACE_S", 1.0)


def _launchers(tmp_path, modes, heartbeat_s=30.0, silent=False, show_raw=False, signal_at=None):
    """Two launchers joined by a socket pair (process 0 and 1), each with a fake worker in
    ``modes``; returns their ``(status, message)`` and the stderr they printed."""
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    left, right = socket.socketpair()
    facts = _facts(tmp_path)
    results = [None, None]
    launchers = []
    for pid, sock in ((0, left), (1, right)):
        plan = supervisor.Plan(
            address="127.0.0.1:1",
            num_processes=2,
            process_id=pid,
            facts=facts,
            init_timeout_s=10,
            heartbeat_timeout_s=heartbeat_s,
            argv=("cgh-jax", "--workdir=w", f"--process_id={pid}"),
            show_raw=show_raw,
        )
        launchers.append(supervisor._Launcher(plan, {1 - pid: rendezvous.Channel(sock)}))
    if silent:  # process 1 is a host that stopped: its connection stays open, nothing comes
        launchers = launchers[:1]

    def run(i):
        results[i] = launchers[i].run([sys.executable, str(script), modes[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(launchers))]
    for t in threads:
        t.start()
    if signal_at is not None:  # SIGTERM to launcher `signal_at`, once its worker runs
        launcher = launchers[signal_at]
        while launcher.checkpoints != "/run/ckpt":  # the worker is up
            threading.Event().wait(0.05)
        launcher.forward(signal.SIGTERM, None)
    for t in threads:
        t.join(60)
    left.close()
    right.close()
    return results


def test_a_crashed_worker_is_reported_by_every_process(tmp_path, fast, capfd):
    (status0, message0), (status1, message1) = _launchers(tmp_path, ["sleep", "crash"])
    err = capfd.readouterr().err
    assert status0 == 1 and message0.startswith(
        "process 1 stopped responding: its training process was killed by signal 6 (SIGABRT"
    )
    assert status1 == 1 and message1.startswith(
        "the training process of process 1 was killed by signal 6"
    )
    assert "its crash report of 3 lines is hidden; CGH_JAX_TRACEBACK=1 shows it" in message1
    for message in (message0, message1):
        assert f"no checkpoint was committed in {tmp_path / 'w' / 'checkpoints'}" in message
        assert "resume by starting all 2 processes again with the same command" in message
    assert "a log line" in err and "Check failure" not in err and "    @ " not in err


@pytest.mark.parametrize("show_raw", [False, True])
def test_the_raw_error_of_a_survivor_only_on_request(tmp_path, fast, capfd, show_raw):
    """CGH_JAX_TRACEBACK=1: the survivor's worker prints its own error (the failed
    collective) before the launcher's line; by default that is held back."""
    (status0, message0), _ = _launchers(tmp_path, ["fail-late", "crash"], show_raw=show_raw)
    err = capfd.readouterr().err
    assert status0 == 1 and message0.startswith("process 1 stopped responding: ")
    assert ("Gloo AllGather failed" in err) == show_raw
    assert ("Traceback" in err) == show_raw
    assert ("Check failure stack trace" in err) == show_raw  # process 1's crash report


def test_a_failed_worker_stops_the_others_after_a_grace(tmp_path, fast):
    (status0, message0), (status1, message1) = _launchers(tmp_path, ["sleep", "fail"])
    assert (status1, message1) == (1, "the data is gone; restore it")
    assert status0 == 1
    assert message0.startswith("process 1 stopped with an error (the data is gone; restore it)")


def test_a_silent_peer_is_lost_after_the_heartbeat_timeout(tmp_path, fast):
    ((status, message), _) = _launchers(tmp_path, ["sleep", "sleep"], heartbeat_s=1, silent=True)
    assert status == 1
    assert message.startswith("process 1 stopped responding (no heartbeat for ")


def test_sigterm_reaches_the_worker(tmp_path, fast):
    """Preemption: the launcher forwards SIGTERM to its worker, which saves and ends."""
    results = _launchers(tmp_path, ["term", "ok"], signal_at=0)
    assert results == [(0, None), (0, None)]


def test_workers_that_finish_end_their_launchers_quietly(tmp_path, fast):
    assert _launchers(tmp_path, ["ok", "ok"]) == [(0, None), (0, None)]


# ----------------------------------------------------------------------------- reports


def test_resume_command():
    main = os.path.join("/x", "cgh_jax", "main.py")
    command = supervisor.resume_command([main, "--config=a b.py", "--process_id=1"])
    assert command == f"{sys.executable} -m cgh_jax.main '--config=a b.py' --process_id=1"
    assert supervisor.resume_command(["/venv/bin/cgh-jax", "--w=1"]) == "/venv/bin/cgh-jax --w=1"


def test_half_written_checkpoints_are_not_committed(tmp_path):
    directory = tmp_path / "checkpoints"
    cfg = ml_collections.ConfigDict({"seed": 0})
    saver = checkpointing.Checkpointer(directory, config=cfg, asynchronous=False)
    saver.save(1, {"w": np.arange(3.0)})
    saver.close()
    (directory / "2.orbax-checkpoint-tmp-1700000000").mkdir()  # a save cut short
    assert supervisor.committed_steps(str(directory)) == [1]
    assert sorted(ocp.path.step.checkpoint_steps(str(directory))) == [1]  # Orbax agrees
    assert "the newest committed checkpoint is step 1" in supervisor.checkpoint_state(
        str(directory)
    )
    reader = checkpointing.Checkpointer(directory, config=cfg, asynchronous=False)
    state, meta = reader.restore({"w": np.zeros(3)})
    reader.close()
    assert meta["step"] == 1 and list(state["w"]) == [0.0, 1.0, 2.0]


def test_on_cloud_storage_a_step_counts_once_its_commit_file_is_there(tmp_path):
    for step in (3, 6):
        (tmp_path / str(step)).mkdir()
    (tmp_path / "3" / supervisor.COMMIT_FILE).write_text("ok")
    assert supervisor.committed_steps(str(tmp_path), commit_file=True) == [3]
    assert supervisor.committed_steps(str(tmp_path)) == [3, 6]  # local: renamed = committed
    assert supervisor.committed_steps(str(tmp_path / "none")) == []


def test_timeouts_come_from_the_flags_else_the_config():
    import types

    from cgh_jax.spec import experiment, fields

    cfg = configlib.base_config()
    flags = types.SimpleNamespace(config=cfg, init_timeout=None, heartbeat_timeout=None)
    assert supervisor.timeouts(flags) == (60, 60)
    cfg.init_timeout_s, cfg.heartbeat_timeout_s = 90, 30
    assert supervisor.timeouts(flags) == (90, 30)
    flags.init_timeout = 5
    assert supervisor.timeouts(flags) == (5, 30)
    cfg.heartbeat_timeout_s = 0
    with pytest.raises(fields.ConfigError, match="heartbeat_timeout_s"):
        experiment.parse(cfg)
