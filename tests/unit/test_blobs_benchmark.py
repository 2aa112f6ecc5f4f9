"""benchmarks.blobs' figures: the paired ratio takes each repeat's own pair, not two bests from
different moments of a shared machine."""

from __future__ import annotations

from benchmarks.blobs import paired, report

MIB = 1 << 20


def test_a_paired_ratio_is_the_median_of_each_repeats_own_ratio() -> None:
    # ours took 1, 2, 4 s while raw took 1, 1, 2 s beside it: ours ran at 1.0, 0.5, 0.5 of raw
    assert paired([1.0, 2.0, 4.0], [1.0, 1.0, 2.0]) == 0.5


def test_a_slow_moment_moves_the_best_of_ratio_but_not_the_paired_one() -> None:
    kinds = ["up", "raw_up", "copy_up", "down", "raw_down", "copy_down"]
    kinds += ["tls_up", "raw_tls_up", "tls_down", "raw_tls_down", "grpc_up", "grpc_down"]
    times = {k: [2.0, 2.0, 2.0] for k in kinds}
    times["raw_down"] = [2.0, 1.0, 2.0]  # raw alone caught a quick moment once
    r = report(1, MIB, times, {k: [1.0] for k in ("up", "down", "tls_up", "tls_down", "grpc_up", "grpc_down")})
    assert r["download_ratio"] == 0.5  # its best against ours' best
    assert r["download_ratio_paired"] == 1.0  # two pairs of three were equal
    assert r["upload_ratio"] == r["upload_ratio_paired"] == 1.0
