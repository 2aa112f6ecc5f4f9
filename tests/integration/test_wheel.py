"""The wheel works outside the checkout: built from the sources, installed into clean venvs (the
plain SDK, and with the [node,coordinator,chain] extras), its console scripts run a tiny grid.

No network: the wheel's dependencies are the ones this run's .venv installed from the locks.
Each of the distributions an install needs (its requirement closure, read from their metadata)
is hard-linked into the clean venv as pip laid it out, then pip installs the wheel with
--no-index, so pip itself checks that the wheel's requirements are met by what is there. A
venv holds nothing else: the plain one has no psutil, SQLAlchemy or web3.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tensorgrid.chain import start_anvil
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.devnet import free_port
from tensorgrid.localca import make_local_ca
from tests.integration.conftest import BATCH, Assets
from tests.integration.test_inference import assert_matches_local
from tests.unit.test_deploy import DEPLOY, exec_start, expand
from tests.unit.test_packaging import ROOT, closure

pytestmark = [pytest.mark.integration, pytest.mark.slow]
VERSION = "0.1.0"
PASSWORD = "wheel-test-password"


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without anything that points Python or pip at the checkout or elsewhere."""
    drop = ("PYTHON", "PIP_", "TENSORGRID_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run(args: Sequence[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def pip(*args: str | Path) -> list[str | Path]:
    """This run's pip (its --python option installs into another venv)."""
    return [sys.executable, "-m", "pip", *args]


def run_all(commands: Sequence[Sequence[str | Path]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Each command at once (most of each is Python importing torch: overlap it)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run(args, cwd), commands))


def build_wheel(out: Path) -> Path:
    """The wheel of the working tree's files (git's, untracked ones included) built in a copy,
    so no build/ left over from an earlier build can slip in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    src = out / "src"
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    done = run(pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src), out)
    assert done.returncode == 0, done.stderr
    return next(out.glob("tensorgrid-*.whl"))


def link_distributions(requirements: list[str], site: Path) -> None:
    """Hard-link (or copy) every file of every distribution `requirements` pull in into `site`."""
    for name in closure(requirements):
        dist = distribution(name)
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts of dependencies: not needed
                continue
            source, target = Path(str(dist.locate_file(file))), site / file
            if not source.is_file() or target.exists():
                continue  # a .pyc listed but never written; a stray file two packages both ship
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


def make_venv(root: Path, wheel: Path, extras: str) -> Path:
    """A clean venv with the wheel installed by pip (with `extras`, e.g. "[node]"); returns bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    wanted = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    chosen = set(extras.strip("[]").split(",")) - {""}
    reqs = [
        str(r).split(";")[0] for r in wanted if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in chosen)
    ]
    link_distributions(reqs, site)
    done = run(pip("--python", root / "bin" / "python", "install", "--no-index", "-q", f"{wheel}{extras}"), root)
    assert done.returncode == 0, done.stdout + done.stderr
    check = run(pip("--python", root / "bin" / "python", "check"), root)
    assert check.returncode == 0, check.stdout
    return root / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_wheel(tmp_path_factory.mktemp("wheel"))
    shipped = zipfile.ZipFile(built).namelist()
    assert "tensorgrid/chain/compiled/Settlement.json" in shipped
    assert "tensorgrid/chain/compiled/NodeRegistry.json" in shipped
    assert not [n for n in shipped if "/compiled/test/" in n or n.startswith("tests/")], "test-only files in the wheel"
    vetting = {"tensorgrid/workloads/aten_ops.txt", "tensorgrid/workloads/aten_schemas.txt"}
    assert {"tensorgrid/py.typed", "node/console.py", *vetting} <= set(shipped)
    dashboard = "coordinator/api/dashboard/static/"
    assert {dashboard + name for name in ("index.html", "app.js", "app.css")} <= set(shipped)  # the web dashboard
    return built


@pytest.fixture(scope="module")
def full_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("full") / "venv", wheel, "[node,coordinator,chain]")


def test_the_plain_install_is_the_sdk_and_cli_and_names_the_extras_the_daemons_need(
    wheel: Path, tmp_path: Path
) -> None:
    bin_dir = make_venv(tmp_path / "venv", wheel, "")
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert run([bin_dir / "tensorgrid", "--help"], work).returncode == 0
    assert run([bin_dir / "tensorgrid", "--version"], work).stdout.strip() == f"tensorgrid {VERSION}"
    sdk = run(
        [
            bin_dir / "python",
            "-c",
            "from tensorgrid.client import Client; import tensorgrid; print(tensorgrid.__file__)",
        ],
        work,
    )
    assert sdk.returncode == 0 and str(tmp_path / "venv") in sdk.stdout, sdk.stderr
    absent = run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.util as u; "
            "print([m for m in ('psutil', 'sqlalchemy', 'web3', 'pytest') if u.find_spec(m)])",
        ],
        work,
    )
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    for command, extra in (("tensorgrid-node", "node"), ("tensorgrid-coordinator", "coordinator")):
        for args in (["--help"], ["run"]):
            done = run([bin_dir / command, *args], work)
            assert done.returncode == 1
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
            assert f"{command} needs the [{extra}] extra" in done.stderr
            assert f"pip install 'tensorgrid[{extra}]'" in done.stderr
    devnet = run([bin_dir / "tensorgrid", "devnet", "up"], work)
    assert devnet.returncode == 1 and "pip install 'tensorgrid[node,coordinator,chain]'" in devnet.stderr


class Daemons:
    """Processes started from the installed console scripts; stop() ends each (SIGTERM, then SIGKILL)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: Sequence[str | Path], **env: str) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(a) for a in args],
                cwd=self.work,
                env=clean_env(TENSORGRID_OWNER=str(os.getpid()), **env),  # a killed run leaves none running
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    work = tmp_path / "elsewhere"
    work.mkdir()
    started = Daemons(work)
    yield started
    started.stop()


def wait_for_log(daemons: Daemons, name: str, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in (daemons.work / f"{name}.log").read_text(errors="replace"):
        assert all(p.poll() is None for p, _ in daemons.procs), daemons.logs()
        assert time.monotonic() < deadline, f"no {text!r} from {name} after {timeout}s\n{daemons.logs()}"
        time.sleep(0.1)


def credentials(directory: Path, bin_dir: Path, work: Path) -> tuple[Signer, Path]:
    """What the units load as credentials: the coordinator's key and TLS files, the node's
    keystore (made by the installed `tensorgrid-node init`) and its password. Returns the
    coordinator's signer and the CA clients verify against."""
    key = Signer.generate()
    write_key_file(directory / "coordinator.key", key)
    tls = make_local_ca(work / "ca")
    shutil.copy(tls.cert, directory / "tls-cert.pem")
    shutil.copy(tls.key, directory / "tls-key.pem")
    (directory / "node-key-password").write_text(PASSWORD)
    init: list[str | Path] = [bin_dir / "tensorgrid-node", "--keystore", directory / "node-key.json"]
    made = run([*init, "--password-file", directory / "node-key-password", "init", "--light-kdf"], work)
    assert made.returncode == 0, made.stderr
    return key, tls.ca_cert


def test_the_installed_console_scripts_run_the_units_grid_outside_the_checkout(
    full_venv: Path, tmp_path: Path, daemons: Daemons, digits: Assets
) -> None:
    """The coordinator and the node run the systemd units' own command lines (%d: a credentials
    directory, %S: a state root), their settings from the environment as the units' files give them."""
    work, creds, state = daemons.work, tmp_path / "credentials", tmp_path / "state"
    commands = ("tensorgrid", "tensorgrid-node", "tensorgrid-coordinator")
    checks = [[full_venv / c, flag] for c in commands for flag in ("--help", "--version")]
    answers = run_all(checks, work)
    for args, answer in zip(checks, answers, strict=True):
        assert answer.returncode == 0, answer.stderr
        if args[1] == "--version":
            assert answer.stdout.strip() == f"{Path(args[0]).name} {VERSION}"
    key, ca = credentials(creds, full_venv, work)
    target, dashboard = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    unit = DEPLOY / "systemd" / "tensorgrid-coordinator.service"
    daemons.start(
        "coordinator",
        expand(exec_start(unit), creds, state, full_venv),
        CREDENTIALS_DIRECTORY=str(creds),
        TENSORGRID_COORDINATOR_LISTEN=target,
        TENSORGRID_COORDINATOR_DASHBOARD_LISTEN=dashboard,
        TENSORGRID_COORDINATOR_DRAIN_S="0",
        TENSORGRID_COORDINATOR_CHECK_WAIT_MS="1000",
    )
    wait_for_log(daemons, "coordinator", " serving TLS on ")
    assert f"coordinator {key.address} serving" in (work / "coordinator.log").read_text()
    # the web dashboard's page comes from the installed package's data, over HTTPS with the gRPC certificate
    with urllib.request.urlopen(f"https://{dashboard}/", context=ssl.create_default_context(cafile=ca)) as page:
        assert b'<script src="/app.js" defer></script>' in page.read()
    unit = DEPLOY / "systemd" / "tensorgrid-node.service"
    node = expand(exec_start(unit), creds, state, full_venv)
    daemons.start("node", node, TENSORGRID_COORDINATOR=target, TENSORGRID_CA_CERT=str(ca), TENSORGRID_NODE_THREADS="1")
    result = work / "result.safetensors"
    submit: list[str | Path] = [full_venv / "tensorgrid", "job", "submit", "--coordinator", target, "--ca-cert", ca]
    submit += ["--key", work / "submitter.key", "--model", digits.model, "--inputs", digits.inputs]
    submit += ["--shard-rows", "1500", "--batch-size", str(BATCH), "--verification", "none"]
    done = run([*submit, "--watch", "-o", result], work)
    assert done.returncode == 0, done.stdout + done.stderr + daemons.logs()
    assert_matches_local(result, digits)
    assert (state / "tensorgrid-coordinator" / "coordinator.db").is_file()
    assert not (state / "tensorgrid-coordinator" / "coordinator.key").exists(), "the key came from the credential"


def test_the_wheels_contract_artifacts_deploy(full_venv: Path, tmp_path: Path) -> None:
    """The artifacts come from the installed package: the deploy command of the wheel puts both
    contracts on a chain."""
    bin_dir = full_venv
    work = tmp_path / "elsewhere"
    work.mkdir()
    with start_anvil() as anvil:
        deploy: list[str | Path] = [
            bin_dir / "python",
            "-m",
            "tensorgrid.chain.deploy",
            "--rpc",
            anvil.rpc_url,
            "--key-env",
            "DEPLOYER",
        ]
        deploy += ["--coordinator", anvil.addresses[1], "--guardian", anvil.addresses[2], "--min-stake-wei", "1"]
        done = run([*deploy, "--out", work / "deployments.json"], work, DEPLOYER=anvil.keys[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"Settlement"' in (work / "deployments.json").read_text()
