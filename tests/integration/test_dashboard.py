"""The web dashboard in a real browser against a real grid: a chain-settled devnet runs an
inference job and a tiny training job; headless Chromium (Debian's, driven by Playwright) opens
the link `tensorgrid dashboard` prints (a read-only session, which the gRPC API refuses) and
reads the pages: the jobs with their states, each job's verification report and settlement, the
training curve's points, the nodes with stake and earnings. A job whose input names are markup
shows them as text; another submitter's link does not see the job; a page without a token says
how to get one. Screenshots go to the test's tmp dir (their paths are printed).

Chromium missing fails the test with how to install it (deploy/test.sh does, as root): a
browser test that skips where the browser is absent would pass everywhere nobody looked.
TENSORGRID_SKIP_BROWSER=1 skips it on purpose, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.devnet import ChainGrid, free_port, start_chain_grid
from tensorgrid.rpc import SESSION_METADATA_KEY
from tensorgrid.types import JobState
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.integration.conftest import FAST, Assets, Stopper, TrainingDigits, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("dashboard")]
REWARD = 10**15
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium() -> str:
    if os.environ.get("TENSORGRID_SKIP_BROWSER") == "1":
        pytest.skip("TENSORGRID_SKIP_BROWSER=1: the dashboard's browser test is skipped on purpose")
    found = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if found is None:
        pytest.fail(
            "Chromium is not installed: apt-get install -y chromium (deploy/test.sh does it as root), "
            "or set TENSORGRID_SKIP_BROWSER=1 to skip the dashboard's browser test on purpose"
        )
    return found


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory, stopper: Stopper) -> Iterator[tuple[ChainGrid, str]]:
    port = free_port()
    args = (*FAST, "--dashboard-listen", f"127.0.0.1:{port}")
    cg = start_chain_grid(
        tmp_path_factory.mktemp("devnet"), 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=args
    )
    try:
        cg.grid.wait_for_nodes(2)
        yield cg, f"http://127.0.0.1:{port}"
    finally:
        stopper.stop(cg)


def link(cg: ChainGrid, url: str, key: Path) -> str:
    """What `tensorgrid dashboard` prints: the dashboard's URL with a session token in its fragment."""
    done = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "dashboard", "--coordinator", cg.grid.target, "--key", str(key)]
        + ["--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(url + "/#token=") and "?" not in line, line
    assert "read-only" in done.stdout
    # a dashboard session's token: worth nothing to the gRPC API (a leaked link cannot submit or spend)
    with grpc.insecure_channel(cg.grid.target) as channel, pytest.raises(grpc.RpcError) as refused:
        metadata = ((SESSION_METADATA_KEY, line.partition("#token=")[2]),)
        submit_pb2_grpc.SubmitterServiceStub(channel).ListJobs(submit_pb2.ListJobsRequest(), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    return line


def hostile_inputs(digits: Assets, root: Path) -> Path:
    """The digits inputs under a tensor name that is markup (names in safetensors are free text)."""
    (x,) = load_tensors(digits.inputs).values()
    path = root / "hostile.safetensors"
    save_tensors({HOSTILE: x[:600].contiguous()}, path)
    return path


def run_jobs(cg: ChainGrid, digits: Assets, training: TrainingDigits, root: Path) -> tuple[str, str]:
    signer = Signer.from_hex(cg.submitter_key)
    chain = ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
    with Client(cg.grid.target, signer, chain=chain) as client:
        inference = client.submit_inference(
            digits.model,
            hostile_inputs(digits, root),
            input_names=(HOSTILE,),
            shard_rows=200,
            reward_per_task_wei=REWARD,
        )
        train = client.submit_training(
            training.train, training.dataset, eval_program=training.eval, rounds=3, workers_per_round=2,
            inner_steps=5, device="cpu", quorum=1.0, reward_per_task_wei=REWARD,
        )  # fmt: skip
        for job in (inference, train):
            assert client.wait(job.job_id).state == JobState.SUCCEEDED
            wait_for(lambda j=job: client.escrow(j.job_id).status == JobStatus.COMPLETED, timeout=120)  # type: ignore[misc]
    return inference.job_id, train.job_id


def shot(page: Any, root: Path, name: str) -> None:
    path = root / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_the_dashboard_in_chromium(
    devnet: tuple[ChainGrid, str], digits: Assets, digits_training: TrainingDigits, tmp_path: Path
) -> None:
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    cg, url = devnet
    torch.set_num_threads(1)
    inference, training = run_jobs(cg, digits, digits_training, tmp_path)
    mine = link(cg, url, write_key_file(tmp_path / "submitter.key", Signer.from_hex(cg.submitter_key)))
    theirs = link(cg, url, write_key_file(tmp_path / "other.key", Signer.from_hex(cg.anvil.keys[5])))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            check_own_pages(browser.new_page(), mine, url, inference, training, tmp_path)
            check_isolation(browser.new_page(), theirs, url, inference, tmp_path)
        finally:
            browser.close()


def check_own_pages(page: Any, link: str, url: str, inference: str, training: str, root: Path) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(link)
    page.wait_for_selector(f'tr.job[data-job="{training}"]')  # the list polls: live progress
    assert "token" not in page.url  # the token left the address bar at once
    before = page.inner_text("#updated")
    page.wait_for_function("t => document.getElementById('updated').textContent !== t", arg=before, timeout=6000)
    for job_id in (inference, training):
        row = page.locator(f'tr.job[data-job="{job_id}"]')
        assert row.locator("td.state").inner_text() == "succeeded"
    shot(page, root, "jobs")

    page.goto(f"{url}/#/job/{inference}")
    page.wait_for_selector("#job-id")
    assert page.inner_text("#job-id") == inference and page.inner_text("#job-state") == "succeeded"
    assert page.inner_text("#verification-summary").startswith("verification: spotcheck")
    page.wait_for_selector('tr.chain-write[data-action="record_result"][data-state="confirmed"]')
    assert page.locator('tr.chain-write[data-action="lock_job"][data-state="confirmed"]').count() == 1
    assert page.inner_text("#escrow-charged").endswith("ETH") and page.inner_text("#escrow-charged") != "0 ETH"
    assert page.inner_text("#escrow-refunded").endswith("ETH")
    spec = page.inner_text("#job-spec")
    assert HOSTILE.replace('"', '\\"') in spec  # the markup, shown as text
    assert page.locator("#job-spec img, #job-spec script, img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert "null" not in page.inner_text("main").replace(spec, "")  # no value missing from the report
    shot(page, root, "inference")

    page.goto(f"{url}/#/job/{training}")
    page.wait_for_selector("#training-plot circle.loss")
    assert page.locator("#training-plot circle.loss").count() == 3  # one point per round
    assert page.locator("#training-plot circle.accuracy").count() == 3
    assert page.locator("#training-plot polyline.loss").count() == 1
    values = [float(v) for v in page.locator("#training-plot circle.loss").evaluate_all(
        "els => els.map(e => e.getAttribute('data-value'))")]  # fmt: skip
    assert len(values) == 3 and all(v > 0 for v in values)
    assert page.locator("tr.round").count() == 3
    assert "audit" in page.inner_text("#verification-summary")
    shot(page, root, "training")

    page.goto(f"{url}/#/nodes")
    page.wait_for_selector("tr.node")
    assert page.locator("tr.node").count() == 2
    stakes = page.locator("tr.node td:nth-child(8)").all_inner_texts()
    earned = page.locator("tr.node td:nth-child(9)").all_inner_texts()
    assert all(s.endswith("ETH") and s != "0 ETH" for s in stakes), stakes  # staked on chain, read when leasing
    assert any(e != "0 ETH" for e in earned) and all(e.endswith("ETH") for e in earned), earned
    shot(page, root, "nodes")
    assert not errors, errors
    assert all(r.startswith(url) for r in requests), requests  # nothing fetched from anywhere else
    assert not any("token" in r for r in requests), requests  # the token never travels in a URL


def check_isolation(page: Any, link: str, url: str, job_id: str, root: Path) -> None:
    page.goto(link)
    page.wait_for_selector("#no-jobs")
    page.goto(f"{url}/#/job/{job_id}")
    page.wait_for_selector("#not-found")
    assert "no job" in page.inner_text("#not-found") and page.locator("#job-state").count() == 0
    shot(page, root, "other-submitter")
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{url}/#/jobs")
    page.reload()
    page.wait_for_selector("#auth-error")
    assert "tensorgrid dashboard" in page.inner_text("#auth-error")
    shot(page, root, "no-token")
    page.evaluate("sessionStorage.setItem('tensorgrid-dashboard-token', 'made-up')")
    page.reload()
    page.wait_for_selector("#auth-error")
    assert "unknown or expired" in page.inner_text("#auth-error")  # the server's 401, explained
