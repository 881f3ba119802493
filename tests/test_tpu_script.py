"""scripts/tpu.sh --dry-run: the gcloud commands of the Cloud TPU recipe, and docs/launch.md."""

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "tpu.sh"


def _load_sync():
    spec = importlib.util.spec_from_file_location(
        "sync_launch_doc", ROOT / "scripts" / "sync_launch_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _load_sync()

V5E_POD = [
    "--name", "cgh-v5e", "--zone", "us-west4-a", "--accelerator", "v5litepod-16",
    "--project", "my-project", "--queued", "--spot",
    "--data-dir", "gs://my-bucket/tensorflow_datasets", "--workdir", "gs://my-bucket/cgh/r",
    "--config", "configs/imagenet_vgg13bn.py:opt=rm3,noise=0.5",
]  # fmt: skip
V4_VM = [
    "--name", "cgh-v4", "--zone", "us-central2-b", "--accelerator", "v4-8",
    "--data-dir", "gs://my-bucket/tensorflow_datasets", "--workdir", "gs://my-bucket/cgh/r",
]  # fmt: skip


def dry(options, step, extra=()):
    command = ["bash", str(SCRIPT), "--dry-run", *options, step]
    if extra:
        command += ["--", *extra]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=sync.clean_environment(),
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith("#")]


def words(line):
    return shlex.split(line)


def test_v5e_pod_slice_queued_spot():
    (create, describe) = dry(V5E_POD, "create")
    assert words(create)[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    for flag in (
        "--node-id=cgh-v5e",
        "--zone=us-west4-a",
        "--project=my-project",
        "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
    ):
        assert flag in words(create), flag
    assert words(describe)[:6] == [
        "gcloud", "compute", "tpus", "queued-resources", "describe", "cgh-v5e",
    ]  # fmt: skip

    (delete,) = dry(V5E_POD, "delete")
    assert words(delete)[:6] == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "cgh-v5e",
    ]  # fmt: skip
    assert "--force" in words(delete) and "--quiet" in words(delete)


def test_v4_vm_direct_create_and_delete():
    (create,) = dry(V4_VM, "create")
    assert words(create)[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cgh-v4"]
    assert "--accelerator-type=v4-8" in words(create)
    assert "--version=tpu-ubuntu2204-base" in words(create)
    assert "--spot" not in words(create)
    assert not any(w.startswith("--project") for w in words(create))  # gcloud's default
    (delete,) = dry(V4_VM, "delete")
    assert words(delete)[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "cgh-v4"]
    (spot,) = dry([*V4_VM, "--spot"], "create")
    assert "--spot" in words(spot)


@pytest.mark.parametrize(
    "accelerator, version",
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-16", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_runtime_version_table(accelerator, version):
    (create,) = dry(["--accelerator", accelerator], "create")
    assert f"--version={version}" in words(create)


def test_unknown_accelerator_is_refused():
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--accelerator", "v9-8", "create"],
        capture_output=True, text=True, check=False, env=sync.clean_environment(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "pass --version" in result.stderr


@pytest.mark.parametrize("options", [V5E_POD, V4_VM], ids=["v5e-pod", "v4-vm"])
def test_setup_copies_no_bulk_and_makes_python311_before_pip(options):
    tar, scp, ssh = dry(options, "setup")
    archive = words(tar)
    assert archive[0] == "tar"
    for excluded in (".git", ".venv", "workdirs"):
        assert f"--exclude={excluded}" in archive, excluded
    assert words(scp)[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--worker=all" in words(scp)
    ssh_words = words(ssh)
    assert ssh_words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    assert "--worker=all" in ssh_words
    (remote,) = [w[len("--command=") :] for w in ssh_words if w.startswith("--command=")]
    venv = re.search(r"uv venv --seed --python 3\.(\d+) \.venv", remote)
    assert venv and int(venv.group(1)) >= 11
    pip = remote.index('.venv/bin/pip install -e ".[tpu]"')
    assert venv.start() < remote.index("sys.version_info >= (3, 11)") < pip
    assert "python3 -m pip install -e" not in remote  # never into the image's Python 3.10


@pytest.mark.parametrize("options", [V5E_POD, V4_VM], ids=["v5e-pod", "v4-vm"])
def test_run_and_logs_on_all_workers(options):
    (run,) = dry(options, "run", ["--config.num_epochs=2"])
    run_words = words(run)
    assert "--worker=all" in run_words
    (remote,) = [w[len("--command=") :] for w in run_words if w.startswith("--command=")]
    assert "kill -0" in remote.split("nohup")[0]  # no second run beside a running one
    main = ["nohup", *words(re.search(r"nohup (.*?) > ~/cgh-jax\.log", remote).group(1))]
    assert main[:4] == ["nohup", ".venv/bin/python", "-m", "cgh_jax.main"]
    assert "--config.data.data_dir=gs://my-bucket/tensorflow_datasets" in main
    assert "--workdir=gs://my-bucket/cgh/r" in main
    assert main[-1] == "--config.num_epochs=2"
    (logs,) = dry(options, "logs")
    assert "--worker=all" in words(logs)
    assert "tail -n 50 ~/cgh-jax.log" in logs


def test_run_needs_data_and_workdir():
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "run"],
        capture_output=True, text=True, check=False, env=sync.clean_environment(),
    )  # fmt: skip
    assert result.returncode == 2 and "--data-dir" in result.stderr


def test_launch_doc_is_the_dry_run_output():
    text = sync.DOC.read_text()
    found = sync.blocks(text)
    accelerators = {sync.split_args(args)[0][sync.split_args(args)[0].index("--accelerator") + 1]
                    for args, _ in found}  # fmt: skip
    assert {"v4-8", "v5litepod-16"} <= accelerators
    for args, body in found:
        assert body == sync.render(args), (
            f"docs/launch.md block '{args}' differs from the dry run; "
            "run python scripts/sync_launch_doc.py"
        )


# --------------------------------------------------------------------------- without --dry-run


def _fake_checkout(tmp_path):
    """A checkout with the bulk that must stay home: .git, .venv, workdirs, caches."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "tpu.sh").write_bytes(SCRIPT.read_bytes())
    for rel in ("cgh_jax/__init__.py", "pyproject.toml", "configs/default.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("# kept\n")
    for rel in (".git/HEAD", ".venv/bin/python", "workdirs/run/metrics.jsonl",
                "cgh_jax/__pycache__/x.pyc"):  # fmt: skip
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("bulk\n")
    return repo


def _fake_gcloud(tmp_path, describe_states=("WAITING_FOR_RESOURCES", "ACTIVE")):
    """A `gcloud` on PATH that records its arguments (one call a line, NUL-separated)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    states = tmp_path / "states"
    states.write_text("\n".join(describe_states) + "\n")
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\0" "$@" >> "{log}"; echo >> "{log}"\n'
        'if [[ "$*" == *"queued-resources describe"* ]]; then\n'
        f'  head -n 1 "{states}"; sed -i 1d "{states}"\n'
        "fi\n"
    )
    gcloud.chmod(0o755)
    sleep = bin_dir / "sleep"  # the wait loop's 30 s pauses, made instant
    sleep.write_text("#!/usr/bin/env bash\nexit 0\n")
    sleep.chmod(0o755)
    env = dict(sync.clean_environment(), PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


def _calls(log):
    return [line.split("\0")[:-1] for line in log.read_text().splitlines() if line]


def test_real_run_calls_gcloud_as_the_dry_run_prints(tmp_path):
    repo = _fake_checkout(tmp_path)
    env, log = _fake_gcloud(tmp_path)
    name = f"t{os.getpid()}"
    options = ["--name", name, *V5E_POD[2:]]
    for step in ("create", "setup", "run", "delete"):
        result = subprocess.run(
            ["bash", str(repo / "scripts" / "tpu.sh"), *options, step],
            capture_output=True, text=True, check=False, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    calls = _calls(log)
    printed = [
        words(line)[1:]
        for step in ("create", "setup", "run", "delete")
        for line in dry(options, step)
        if line.startswith("gcloud ")
    ]
    describes = [c for c in calls if c[:3] == ["compute", "tpus", "queued-resources"]
                 and c[3] == "describe"]  # fmt: skip
    assert len(describes) == 2  # polled until ACTIVE
    assert [c for c in calls if c[3] != "describe"] == [p for p in printed if p[3] != "describe"]

    archive = pathlib.Path(f"/tmp/{name}-cgh-jax.tar.gz")
    try:
        import tarfile

        with tarfile.open(archive) as tar:
            members = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    finally:
        archive.unlink(missing_ok=True)
    assert members == {"cgh_jax/__init__.py", "pyproject.toml", "configs/default.py",
                       "scripts/tpu.sh"}  # fmt: skip


def test_queued_resource_that_fails_stops_create(tmp_path):
    env, _ = _fake_gcloud(tmp_path, describe_states=("FAILED",))
    result = subprocess.run(
        ["bash", str(SCRIPT), *V5E_POD, "create"],
        capture_output=True, text=True, check=False, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "is FAILED" in result.stderr


def test_remote_run_command_refuses_a_second_run(tmp_path):
    """The worker side of `run`, in a local shell: starts once, then refuses while running."""
    (run,) = dry(V4_VM, "run")
    (remote,) = [w[len("--command=") :] for w in words(run) if w.startswith("--command=")]
    python = tmp_path / "cgh-jax" / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/usr/bin/env bash\necho "args: $*"\nexec sleep 60\n')
    python.chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    first = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True,
                           timeout=30, check=False)  # fmt: skip
    pid = int((tmp_path / "cgh-jax" / "run.pid").read_text())
    try:
        assert first.returncode == 0, first.stderr
        second = subprocess.run(["bash", "-c", remote], env=env, capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
        assert second.returncode == 1 and "a run is still going" in second.stderr
        log = tmp_path / "cgh-jax.log"
        for _ in range(50):  # the background process writes its first line soon
            if log.exists() and log.read_text():
                break
            time.sleep(0.1)
        assert log.read_text().startswith("args: -m cgh_jax.main --config=")
    finally:
        os.kill(pid, 9)
