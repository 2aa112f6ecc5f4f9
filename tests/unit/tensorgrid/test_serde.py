"""Typed values survive the wire: job verification reports, node slashes, exact wei; and how the CLI shows them."""

from __future__ import annotations

from tensorgrid import serde
from tensorgrid.report import format_eth, verification_line
from tensorgrid.types import BlobRef, JobInfo, JobState, JobVerification, NodeStatus
from tensorgrid.v1 import submit_pb2

HUGE = 2**255 + 1  # far past 64 bits and float precision


def _job(verification: JobVerification | None) -> JobInfo:
    return JobInfo(
        job_id="ab" * 32,
        submitter="0x" + "11" * 20,
        kind="inference",
        state=JobState.SUCCEEDED,
        spec_json=b"{}",
        spec_hash="cd" * 32,
        created_ms=1,
        updated_ms=2,
        tasks_total=6,
        tasks_done=6,
        task_failures=0,
        result=BlobRef("ee" * 32, 10),
        error="",
        verification=verification,
    )


def test_job_with_a_verification_report_round_trips() -> None:
    report = JobVerification(
        mode="spotcheck",
        checks={"canary:verified": 1, "spotcheck:caught": 2, "spotcheck:verified": 11},
        detection=0.9912345,
        required_stake_wei=HUGE,
        slashes=2,
        slashed_wei=HUGE - 7,
        fee_budget_wei=HUGE - 9,
        fee_paid_wei=3 * 10**15,
        decoys=24,
        decoys_drawn=20,
        decoy_paid_wei=10**15,
        claims_drawn=2,
        claims_paid_wei=HUGE - 11,
    )
    wire = serde.job_to_pb(_job(report)).SerializeToString()
    back = serde.job_from_pb(submit_pb2.Job.FromString(wire))
    assert back == _job(report)
    assert back.verification is not None
    assert (back.verification.count("verified"), back.verification.count("caught"), back.verification.total) == (
        12,
        2,
        14,
    )


def test_job_without_a_report_stays_without_one() -> None:
    msg = serde.job_to_pb(_job(None))
    assert not msg.HasField("verification")
    assert serde.job_from_pb(msg).verification is None


def test_node_slashed_wei_is_exact() -> None:
    node = NodeStatus("0x" + "aa" * 20, "cpu", 1 << 30, 5, False, 3, 0, 0, 0, 1, 2, 1, slashed_wei=HUGE)
    assert serde.node_from_pb(submit_pb2.NodeStatus.FromString(serde.node_to_pb(node).SerializeToString())) == node
    assert serde.node_from_pb(submit_pb2.NodeStatus()).slashed_wei == 0  # an older coordinator sends nothing


def test_format_eth_is_exact() -> None:
    assert format_eth(0) == "0 ETH"
    assert format_eth(1_200_000_000_000_000) == "0.0012 ETH"
    assert format_eth(10**18) == "1 ETH"
    assert format_eth(10**18 + 1) == "1.000000000000000001 ETH"


def test_verification_line() -> None:
    report = JobVerification(
        mode="spotcheck",
        checks={"spotcheck:verified": 10, "canary:verified": 1, "spotcheck:caught": 1},
        detection=0.99051,
        required_stake_wei=1_200_000_000_000_000,
    )
    assert verification_line(report) == (
        "verification: spotcheck, 12 checks (11 verified, 1 caught), detection ≥ 99.0%, stake required 0.0012 ETH"
    )
    slashed = JobVerification("replicate", {"spotcheck:open": 1}, 0.0, 0, slashes=1, slashed_wei=5 * 10**17)
    assert verification_line(slashed) == "verification: replicate, 1 check (1 open), 1 slash took 0.5 ETH"
    decoys = JobVerification("spotcheck", {}, 0.0, 0, fee_budget_wei=3 * 10**15, fee_paid_wei=2 * 10**15,
                             decoys=24, decoys_drawn=24, decoy_paid_wei=10**15)  # fmt: skip
    assert verification_line(decoys) == (
        "verification: spotcheck, 0 checks, checkers paid 0.001 ETH of a 0.003 ETH fee, "
        "24 decoys (24 drawn) paid 0.001 ETH"
    )
    claims = JobVerification("none", claims_drawn=2, claims_paid_wei=10**15)
    assert verification_line(claims) == "verification: none, 0 checks, 2 proven failure claims paid 0.001 ETH"
    assert verification_line(JobVerification("none")) == (
        "verification: none (signature, lease holder and output hash only)"
    )


def test_verification_line_of_training_audits() -> None:
    audits = JobVerification("spotcheck", {"audit:passed": 7, "audit:failed": 1, "audit:pending": 0})
    assert verification_line(audits) == "verification: spotcheck, 8 audits (7 passed, 1 failed)"
    assert verification_line(JobVerification("spotcheck", {"audit:passed": 0})) == "verification: spotcheck, 0 audits"
