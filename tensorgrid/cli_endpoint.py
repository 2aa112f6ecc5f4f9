"""`tensorgrid endpoint`: create, call, watch and delete real-time endpoints (docs/SERVING.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tensorgrid import exitcodes
from tensorgrid.cli_ids import job_id_of, not_yours
from tensorgrid.errors import TensorGridError
from tensorgrid.report import format_eth
from tensorgrid.spec import DEVICES, EndpointSpec
from tensorgrid.spec.endpoint import SERVES
from tensorgrid.types import EndpointStatus

# (flag, EndpointSpec field, type, help); a flag left out keeps the spec's default, shown in --help
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--min-replicas", "min_replicas", int, "warm replicas kept at all times"),
    ("--max-replicas", "max_replicas", int, "replicas at most, added while requests queue"),
    ("--max-batch", "max_batch", int, "requests a replica runs in one forward pass, at most"),
    ("--max-delay-us", "max_delay_us", int, "how long a replica waits for more requests while they keep arriving (µs)"),
    ("--max-queue", "max_queue", int, "requests one replica holds; beyond, calls are refused with a retry hint"),
    ("--timeout-ms", "request_timeout_ms", int, "a request's deadline when the caller sets none"),
    ("--max-request-bytes", "max_request_bytes", int, "largest request (safetensors bytes)"),
    ("--price-wei", "reward_per_task_wei", int, "paid to the answering node per request, from the escrow"),
    ("--max-requests", "max_requests", int, "requests the escrow pays for (price × this is escrowed)"),
    ("--check-rate", "check_rate", float, "share of answers run again to check them"),
    ("--vocab-size", "vocab_size", int, "generation: the decoder's logits width"),
    ("--max-new-tokens", "max_new_tokens", int, "generation: tokens after each prompt, at most"),
    ("--temperature", "temperature", float, "generation: 0 greedy, above 0 sample"),
    ("--top-k", "top_k", int, "generation: sample among the k most likely (0: off)"),
    ("--top-p", "top_p", float, "generation: nucleus sampling mass (1: off)"),
)


def add_endpoint_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    ep = sub.add_parser("endpoint", help="real-time endpoints: warm replicas answering requests").add_subparsers(
        dest="command", required=True
    )
    c = ep.add_parser("create", parents=[common], help="upload a model and serve it on warm replicas")
    c.add_argument("--model", type=Path, required=True, help="torch.export program (.pt2)")
    c.add_argument("--serves", choices=SERVES, default="inference", help="(default: inference)")
    c.add_argument("--replicas", type=int, metavar="N", help="exactly N replicas: --min-replicas N --max-replicas N")
    for flag, field, kind, what in _FLAGS:
        c.add_argument(flag, type=kind, dest=field, help=f"{what} (default: {getattr(EndpointSpec, field)})")
    c.add_argument("--input-name", action="append", dest="input_names", help="the program's inputs, in order (repeat)")
    c.add_argument("--stop-token", type=int, action="append", dest="stop_tokens", help="generation: ends a prompt")
    c.add_argument("--device", choices=DEVICES, help=f"(default: {EndpointSpec.device})")
    c.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for min-replicas ready")
    c.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for replicas (default: 300)")
    ls = ep.add_parser("list", parents=[common], help="your endpoints")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    st = ep.add_parser("status", parents=[common], help="replicas, request rate, latency, errors, checks, spend")
    st.add_argument("endpoint", help="endpoint id, or its first 8 or more characters")
    st.add_argument("--json", action="store_true", help="print the status as one JSON object")
    d = ep.add_parser("delete", parents=[common], help="stop an endpoint (what it served stays paid)")
    d.add_argument("endpoint")
    call = ep.add_parser("call", parents=[common], help="send one request and print or save the answer")
    call.add_argument("endpoint")
    what = call.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", type=Path, help="inference: safetensors file of the request's rows")
    what.add_argument("--prompt", help="generation: comma-separated token ids, e.g. 5,17,3 (tokens stream to stdout)")
    call.add_argument("--seed", type=int, default=0, help="generation: same seed, same tokens (default: 0)")
    call.add_argument("--timeout", type=float, default=10.0, help="seconds before the call gives up (default: 10)")
    call.add_argument("-o", "--output", type=Path, help="inference: save the answer here (safetensors)")


def endpoint_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The EndpointSpec fields the command was given."""
    fields = {field: getattr(ns, field) for _, field, _, _ in _FLAGS if getattr(ns, field) is not None}
    if ns.replicas is not None:
        given = {fields.get("min_replicas", ns.replicas), fields.get("max_replicas", ns.replicas)}
        if given != {ns.replicas}:
            raise TensorGridError("--replicas N sets both bounds: leave out --min-replicas and --max-replicas")
        fields["min_replicas"] = fields["max_replicas"] = ns.replicas
    fields["serves"] = ns.serves
    for name in ("input_names", "stop_tokens"):
        if getattr(ns, name):
            fields[name] = tuple(getattr(ns, name))
    if ns.device is not None:
        fields["device"] = ns.device
    return fields


def status_json(status: EndpointStatus) -> str:
    return json.dumps(dataclasses.asdict(status), sort_keys=True)


def print_status(s: EndpointStatus) -> None:
    print(f"endpoint {s.endpoint_id}  {s.state}, serves {s.serves}")
    bounds = f"min {s.min_replicas}, max {s.max_replicas}"
    print(f"  replicas   {s.ready} ready of {len(s.replicas)} ({bounds}), {s.queued} queued")
    for r in s.replicas:
        print(f"    {r.node:<44} {r.state:<9} in flight {r.in_flight:>4}  served {r.served}")
    print(f"  requests   {s.requests} answered, {s.errors} errors; {s.requests_per_s:.1f}/s over the last minute")
    print(f"  latency    p50 {s.p50_ms:.2f} ms, p99 {s.p99_ms:.2f} ms (at the coordinator)")
    print(f"  checks     {s.checked} answers run again, {s.caught} proven wrong")
    cap = f" of {s.max_requests} requests escrowed" if s.max_requests else ""
    print(f"  spend      {format_eth(s.spent_wei)} at {format_eth(s.price_wei)} per request{cap}")


def cmd_endpoint(ns: argparse.Namespace, client_of: Callable[[argparse.Namespace], Any]) -> int:
    with client_of(ns) as client:
        if ns.command == "create":
            return _create(ns, client)
        if ns.command == "list":
            for s in client.endpoints.list():
                print(status_json(s) if ns.json else f"{s.endpoint_id}  {s.state:<8} {s.serves:<10} "
                      f"{s.ready}/{len(s.replicas)} ready  {s.requests} requests  p50 {s.p50_ms:.2f} ms")  # fmt: skip
            return exitcodes.OK
        endpoint = job_id_of(client, ns.endpoint)
        try:
            if ns.command == "status":
                status = client.endpoints.get(endpoint)
                print(status_json(status)) if ns.json else print_status(status)
                return exitcodes.OK
            if ns.command == "delete":
                print_status(client.endpoints.delete(endpoint))
                return exitcodes.OK
            return _call(ns, client, endpoint)
        except TensorGridError as e:
            raise not_yours(ns, client, endpoint, e) from None


def _create(ns: argparse.Namespace, client: Any) -> int:
    fields = endpoint_fields(ns)
    endpoint = client.endpoints.create(ns.model, **fields)
    print(endpoint)
    if ns.no_wait:
        return exitcodes.OK

    def show(s: EndpointStatus) -> None:
        print(f"  {s.ready} of {len(s.replicas)} replicas ready", file=sys.stderr)

    want = fields.get("min_replicas", EndpointSpec.min_replicas)
    client.endpoints.wait_ready(endpoint, want, timeout_s=ns.wait_s, on_change=show)
    return exitcodes.OK


def _call(ns: argparse.Namespace, client: Any, endpoint: str) -> int:
    started = time.perf_counter()
    if ns.prompt is not None:
        try:
            prompt = [int(t) for t in ns.prompt.split(",") if t.strip()]
        except ValueError:
            raise TensorGridError(f"--prompt must be comma-separated token ids, got {ns.prompt!r}") from None
        count = 0
        for tokens in client.endpoints.generate(endpoint, prompt, seed=ns.seed, timeout_s=ns.timeout):
            count += len(tokens)
            print(" ".join(map(str, tokens)), end=" ", flush=True)
        print(f"\n{count} tokens in {time.perf_counter() - started:.3f}s", file=sys.stderr)
        return exitcodes.OK
    data = Path(ns.input).read_bytes()
    answer = client.endpoints.infer_bytes(endpoint, data, timeout_s=ns.timeout)
    took = (time.perf_counter() - started) * 1000
    if ns.output is not None:
        ns.output.write_bytes(answer.output)
    from tensorgrid.serving.tensors import tensors_from_bytes

    shapes = {k: list(v.shape) for k, v in tensors_from_bytes(answer.output, name="answer").items()}
    tried = f" after {answer.attempts} tries" if answer.attempts > 1 else ""
    print(f"answer {shapes} from {answer.node} in {took:.1f} ms{tried}" + (f"; saved {ns.output}" if ns.output else ""))
    return exitcodes.OK
