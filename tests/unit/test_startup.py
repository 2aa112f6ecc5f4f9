"""What a process loads before it does anything: web3 (about a second of CPU) only on a grid
that settles on chain; torch (more than a second) in neither the node daemon nor the CLI,
only in the processes that run programs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("web3", "eth_account")


def test_a_coordinator_or_node_without_a_chain_never_imports_web3() -> None:
    probe = (
        "import sys, coordinator.main, coordinator.app, node.main, tensorgrid.chain;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"imported at start-up: {loaded}"


def test_the_chain_package_still_offers_every_name() -> None:
    import tensorgrid.chain as chain

    for name in chain.__all__:
        assert getattr(chain, name) is not None


def _loaded(probe: str) -> str:
    code = f"import sys; {probe}; print(','.join(m for m in ('torch', 'web3') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_node_daemon_on_cpu_and_the_cli_never_import_torch() -> None:
    daemon = "import node.main, node.agent, node.settle, node.executor; from node.hardware import detect; detect('cpu')"
    assert _loaded(daemon) == ""
    assert (
        _loaded("import tensorgrid.cli, tensorgrid.client; from tensorgrid.workloads.tensorfile import read_header")
        == ""
    )


def test_the_sandboxed_children_load_nothing_of_the_daemons_state() -> None:
    # The referee and the node's workers run strangers' programs: they hold no database layer,
    # no RPC stack and no chain client (nothing to misuse, and their start, which every grid
    # pays, stays torch's alone: sqlalchemy was 0.18 s of the referee's).
    code = (
        "import sys, coordinator.services.sandbox_child, node.worker, node.serving.worker;"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'grpc', 'web3', 'psycopg'})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"a sandboxed child's entry imports {loaded}"
