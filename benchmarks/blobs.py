"""Blobs: upload and download MB/s through the coordinator, next to raw TCP over loopback in the
same run. Goal: each ≥ 0.5 of raw.

    python -m benchmarks.blobs [--mib 512] [--repeat 3]

What each side does with the same bytes (a file of random data, read from the page cache):
- ours, upload: Client.upload as a submitter runs it: it takes a ticket over gRPC and sendfile()s
  the file to the coordinator's bulk port (tensorgrid.blobs.bulk), hashing it (sha256) on a
  thread meanwhile, then sends the digest; the coordinator hashes what it receives, writes it to
  a temp file in its blob store and renames it into place once the hash matches. Timed until the
  client has the reply.
- ours, download: Client.download takes a ticket and receives the blob from the bulk port into
  dest.part, hashing it; renamed to dest once the hash matches. Timed until dest is in place.
- ours over gRPC (reported as grpc_*, the path of a coordinator without a bulk port): the same
  with Client(bulk="off"), the file streamed as UploadBlob / DownloadBlob messages.
- raw, upload (the baseline): one TCP connection; the sender sendfile()s the file; a separate
  process (benchmarks._raw tcp-sink) recv()s it in 1 MiB reads and hands each read to a worker
  thread that hashes it with sha256 and writes it to a new file (one read behind the socket, so
  hashing overlaps receiving as in ours), then replies with the byte count and digest (checked by
  the sender). Timed until that reply arrives, i.e. until every byte is hashed and written.
- raw, download (the baseline): a separate process (tcp-source) sendfile()s the file; this process
  receives it the same way (1 MiB reads, hash and write on a worker thread); the digest is checked.
The receiving side hashes in the raw baseline because ours must (blobs are content-addressed and
checked); the raw sender does not hash (ours does, while sending); neither side fsyncs. For
reference the JSON also gives raw_*_copy_mb_s: the same raw transfers with no hashing at all
(a plain recv/write loop, copy to disk only), and our ratios against those.

The TLS run: a second coordinator serving TLS (a local CA) takes the same uploads and downloads,
interleaved with the others, next to the same raw baselines over TLS (the sink and source wrap
their sockets with the coordinator's certificate; a TLS sender sends 1 MiB sendall()s, as ours
does, since sendfile() cannot encrypt). tls_*_ratio is ours over TLS / raw over TLS, and
tls_*_ratio_cost what that loses next to the plain ratio (goal: ≤ 10%), the way dispatch
compares against an echo over TLS. tls_*_speed_cost says what encryption itself costs: our TLS
transfer next to our plain one.

Disk and page-cache speed on shared machines swing a lot from second to second, so the raw and
grid transfers alternate, each repeat rotates which of them goes first (whoever follows a 512 MiB
write pays for the page cache it evicted), and each keeps its best of --repeat.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from benchmarks._common import baseline_process, cpu_seconds, emit
from benchmarks._raw import receive, send_all
from tensorgrid.blobs import file_sha256
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import LocalGrid
from tensorgrid.types import BlobRef

T = TypeVar("T")


def raw_upload(port: int, src: Path, expected: str | None, tls: ssl.SSLContext | None = None) -> float:
    """Send src to the sink; with expected, the sink hashes and its digest must match."""
    start = time.monotonic()
    with _dial(port, tls) as s, open(src, "rb") as f:
        s.sendall((b"h" if expected else b"c") + os.fstat(f.fileno()).st_size.to_bytes(8, "big"))
        send_all(s, f)
        reply = s.recv(128).decode()  # the sink has hashed and written everything
    elapsed = time.monotonic() - start
    if expected and reply.split()[1] != expected:
        raise RuntimeError(f"raw upload: the sink hashed {reply!r}, expected {expected}")
    return elapsed


def _dial(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    return tls.wrap_socket(s, server_hostname="127.0.0.1") if tls is not None else s


def raw_download(port: int, dst: Path, expected: str | None, tls: ssl.SSLContext | None = None) -> float:
    """Receive the source's file into dst; with expected, hash it as it arrives and check."""
    start = time.monotonic()
    with _dial(port, tls) as s, open(dst, "wb") as f:
        _, digest = receive(s, f, hashed=expected is not None)
    elapsed = time.monotonic() - start
    if expected and digest != expected:
        raise RuntimeError(f"raw download hashed to {digest}, expected {expected}")
    dst.unlink()
    return elapsed


def cpu_now(coordinator_pid: int) -> float:
    """CPU seconds so far of the coordinator and this process (the client's gRPC threads)."""
    return (cpu_seconds(coordinator_pid) or 0.0) + time.process_time()


def grid_upload(client: Client, src: Path, cpu: list[float], pid: int) -> float:
    before = cpu_now(pid)
    start = time.monotonic()
    client.upload(src)
    elapsed = time.monotonic() - start
    cpu.append(cpu_now(pid) - before)
    return elapsed


def grid_download(client: Client, ref: BlobRef, dst: Path, cpu: list[float], pid: int) -> float:
    dst.unlink(missing_ok=True)
    before = cpu_now(pid)
    start = time.monotonic()
    client.download(ref, dst)
    elapsed = time.monotonic() - start
    cpu.append(cpu_now(pid) - before)
    dst.unlink()
    return elapsed


def fresh_blob(src: Path, i: int) -> str:
    """Change src's first bytes, or the coordinator would skip bytes it already has; its new sha256."""
    with open(src, "r+b") as f:
        f.write(i.to_bytes(8, "big") + os.urandom(8))
    return file_sha256(src).sha256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=512, help="blob size (default: %(default)s MiB)")
    p.add_argument("--repeat", type=int, default=3, help="take the best of this many runs of each")
    ns = p.parse_args()
    size = ns.mib << 20
    kinds = (
        *("up", "raw_up", "copy_up", "down", "raw_down", "copy_down"),
        *("tls_up", "raw_tls_up", "tls_down", "raw_tls_down", "grpc_up", "grpc_down"),
    )
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in ("up", "down", "tls_up", "tls_down", "grpc_up", "grpc_down")}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        src = root / "blob.bin"
        with open(src, "wb") as f:
            for _ in range(ns.mib):
                f.write(os.urandom(1 << 20))
        ca = make_local_ca(root / "tls")
        tls_args = ("--tls-cert", str(ca.cert), "--tls-key", str(ca.key))
        raw_tls = ssl.create_default_context(cafile=str(ca.ca_cert))
        tls_root = root / "tls-baselines"
        tls_root.mkdir()
        with (
            LocalGrid(root / "grid") as grid,
            LocalGrid(root / "tls-grid", tls=ca) as tls_grid,
            baseline_process(root, "tcp-sink", root / "sink.bin") as sink,
            baseline_process(root, "tcp-source", src) as source,
            baseline_process(tls_root, "tcp-sink", root / "tls-sink.bin", *tls_args) as tls_sink,
            baseline_process(tls_root, "tcp-source", src, *tls_args) as tls_source,
        ):
            grid.start_coordinator(timeout=300)  # a loaded machine can take minutes to import torch
            tls_grid.start_coordinator(timeout=300)
            pid, tls_pid = grid.procs[0].popen.pid, tls_grid.procs[0].popen.pid
            with (
                grid.client(Signer.generate()) as client,
                tls_grid.client(Signer.generate()) as tls_client,
                grid.client(Signer.generate(), bulk="off") as grpc_client,
            ):
                ref = client.upload(src)
                tls_client.upload(src)
                grpc_client.upload(src)
                for i in range(ns.repeat):
                    sha = fresh_blob(src, i + 1)
                    uploads: list[tuple[str, Callable[[], float]]] = [
                        ("raw_up", partial(raw_upload, sink, src, sha)),
                        ("up", partial(grid_upload, client, src, cpu["up"], pid)),
                        ("tls_up", partial(grid_upload, tls_client, src, cpu["tls_up"], tls_pid)),
                        ("raw_tls_up", partial(raw_upload, tls_sink, src, sha, raw_tls)),
                        ("copy_up", partial(raw_upload, sink, src, None)),
                        ("grpc_up", partial(grid_upload, grpc_client, src, cpu["grpc_up"], pid)),
                    ]
                    downloads: list[tuple[str, Callable[[], float]]] = [
                        ("raw_down", partial(raw_download, source, root / "raw_down.bin", sha)),
                        ("down", partial(grid_download, client, ref, root / "down.bin", cpu["down"], pid)),
                        (
                            "tls_down",
                            partial(grid_download, tls_client, ref, root / "down.bin", cpu["tls_down"], tls_pid),
                        ),
                        ("copy_down", partial(raw_download, source, root / "raw_down.bin", None)),
                        ("raw_tls_down", partial(raw_download, tls_source, root / "raw_down.bin", sha, raw_tls)),
                        (
                            "grpc_down",
                            partial(grid_download, grpc_client, ref, root / "down.bin", cpu["grpc_down"], pid),
                        ),
                    ]
                    # Each repeat rotates who goes first: whoever follows a 512 MiB write pays for
                    # the page cache it evicted, and that must not always be the same transfer.
                    for name, run in rotated(uploads, i):
                        times[name].append(run())
                    for written in [
                        *root.glob("sink.bin.*"),
                        *root.glob("tls-sink.bin.*"),
                    ]:  # keep the disk from filling
                        written.unlink()
                    for name, run in rotated(downloads, i):
                        times[name].append(run())
    print(format_result(report(ns.mib, size, times, cpu)))
    emit(report(ns.mib, size, times, cpu))


def rotated(steps: list[T], shift: int) -> list[T]:
    k = shift % len(steps)
    return steps[k:] + steps[:k]


def report(mib: int, size: int, times: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, object]:
    rate = {k: round(size / 1e6 / min(v), 1) for k, v in times.items()}
    # CPU ms per MB (coordinator + client), best of the runs: moves much less with other load than MB/s.
    ms_mb = {k: 1000 * min(v) / (size / 1e6) for k, v in cpu.items()}
    return {
        "benchmark": "blobs",
        "mib": mib,
        "upload_mb_s": rate["up"],
        "raw_upload_mb_s": rate["raw_up"],
        "raw_upload_copy_mb_s": rate["copy_up"],
        "download_mb_s": rate["down"],
        "raw_download_mb_s": rate["raw_down"],
        "raw_download_copy_mb_s": rate["copy_down"],
        "upload_ratio": round(rate["up"] / rate["raw_up"], 3),
        "download_ratio": round(rate["down"] / rate["raw_down"], 3),
        # The same, as the median over repeats of each repeat's own pair (ours next to the raw run
        # beside it): a best-of ratio takes its two bests from different moments of the machine.
        "upload_ratio_paired": paired(times["up"], times["raw_up"]),
        "download_ratio_paired": paired(times["down"], times["raw_down"]),
        "tls_download_ratio_paired": paired(times["tls_down"], times["raw_tls_down"]),
        "upload_copy_ratio": round(rate["up"] / rate["copy_up"], 3),
        "download_copy_ratio": round(rate["down"] / rate["copy_down"], 3),
        "goal_ratio": 0.5,
        # Without a bulk port (Client(bulk="off"), or --bulk-listen off): gRPC streams.
        "grpc_upload_ratio": round(rate["grpc_up"] / rate["raw_up"], 3),
        "grpc_download_ratio": round(rate["grpc_down"] / rate["raw_down"], 3),
        # The same transfers through a coordinator serving TLS, against the same raw TCP baseline.
        "tls_upload_mb_s": rate["tls_up"],
        "tls_download_mb_s": rate["tls_down"],
        "raw_tls_upload_mb_s": rate["raw_tls_up"],
        "raw_tls_download_mb_s": rate["raw_tls_down"],
        # The TLS run's ratios are against raw TCP over TLS (as dispatch's against a TLS echo), and
        # their cost is what they lose next to the plain ratios: what our protocol adds over TLS.
        "tls_upload_ratio": round(rate["tls_up"] / rate["raw_tls_up"], 3),
        "tls_download_ratio": round(rate["tls_down"] / rate["raw_tls_down"], 3),
        "tls_upload_ratio_cost": round(1 - (rate["tls_up"] / rate["raw_tls_up"]) / (rate["up"] / rate["raw_up"]), 3),
        "tls_download_ratio_cost": round(
            1 - (rate["tls_down"] / rate["raw_tls_down"]) / (rate["down"] / rate["raw_down"]), 3
        ),
        # What encryption itself costs: our TLS transfers next to our plain ones.
        "tls_upload_speed_cost": round(1 - rate["tls_up"] / rate["up"], 3),
        "tls_download_speed_cost": round(1 - rate["tls_down"] / rate["down"], 3),
        "goal_tls_ratio_cost": 0.10,
        "cpu_ms_per_mb": {k: round(v, 3) for k, v in ms_mb.items()},
        # What TLS would take off each ratio were CPU the limit (the raw baseline's CPU is the same).
        "tls_upload_cpu_cost": round(1 - ms_mb["up"] / ms_mb["tls_up"], 3),
        "tls_download_cpu_cost": round(1 - ms_mb["down"] / ms_mb["tls_down"], 3),
    }


def paired(ours: list[float], raw: list[float]) -> float:
    """The median over repeats of raw time / our time (our speed as a share of raw's), each
    repeat's pair measured in that repeat."""
    return round(statistics.median(r / o for o, r in zip(ours, raw, strict=True)), 3)


def format_result(r: dict[str, object]) -> str:
    return (
        f"upload   {r['upload_mb_s']} MB/s vs raw TCP {r['raw_upload_mb_s']} MB/s hashed"
        f" ({r['raw_upload_copy_mb_s']} MB/s copy only)\n"
        f"download {r['download_mb_s']} MB/s vs raw TCP {r['raw_download_mb_s']} MB/s hashed"
        f" ({r['raw_download_copy_mb_s']} MB/s copy only)\n"
        f"paired ratios (median of each repeat's pair): upload {r['upload_ratio_paired']},"
        f" download {r['download_ratio_paired']}\n"
        f"over TLS: upload {r['tls_upload_mb_s']} MB/s, download {r['tls_download_mb_s']} MB/s\n"
        f"over gRPC (no bulk port): upload {r['grpc_upload_ratio']}, download {r['grpc_download_ratio']} of raw"
    )


if __name__ == "__main__":
    main()
