"""`tensorgrid dashboard`: a link to the coordinator's web dashboard, signed in as your key.

The command opens a read-only dashboard session (the key signs a one-time challenge for the
scope "dashboard") and prints the dashboard's URL with its token in the fragment (`#token=…`):
browsers never send a fragment to a server, so the token reaches no server or proxy log; the
page hands it to the dashboard's JSON API as `Authorization: Bearer`.

What the link is worth: whoever has it sees your jobs (their specs, results' hashes, reports and
settlement) on the dashboard until the session expires (the coordinator's
--dashboard-session-ttl, 8 h by default). Nothing more: every gRPC call refuses its token, so
it cannot submit jobs, upload or download blobs, spend your escrow, cancel jobs or delete
endpoints. Still, share it only with whom may see your jobs.
"""

from __future__ import annotations

import argparse
import time
import webbrowser
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import grpc

from tensorgrid import exitcodes
from tensorgrid.config import Setting, add_settings
from tensorgrid.crypto import DASHBOARD_SCOPE
from tensorgrid.errors import TensorGridError
from tensorgrid.session import CoordinatorError, Session

DEFAULT_PORT = 7080  # the port the README's examples give --dashboard-listen
DASHBOARD_URL = Setting(
    "--url",
    "TENSORGRID_DASHBOARD_URL",
    "",
    help=f"the dashboard's address (the coordinator's --dashboard-listen); default: the coordinator's "
    f"host, port {DEFAULT_PORT}, https unless that host is a loopback address",
    metavar="URL",
)


def add_dashboard_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "dashboard",
        parents=[common],
        help="print (and --open) a signed-in link to the web dashboard",
        description="Sign in with your key and print a link to the coordinator's web dashboard (its "
        "--dashboard-listen). The link carries a read-only dashboard session in its #fragment, which a "
        "browser never sends to a server. Whoever has the link sees your jobs until it expires (the "
        "coordinator's --dashboard-session-ttl, 8 h by default), and can do nothing else: the coordinator's "
        "gRPC API refuses its token, so it cannot submit, upload, spend escrow, cancel or delete.",
    )
    add_settings(d, DASHBOARD_URL)
    d.add_argument("--open", action="store_true", help="open the link in a web browser too")
    d.set_defaults(command="dashboard")


def dashboard_url(ns: argparse.Namespace) -> str:
    """The dashboard's base URL, ending in "/"."""
    url = ns.url or _default_url(ns.coordinator)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TensorGridError(f"--url {url!r} is not an http(s) address such as https://grid.example.org:7080/")
    if parts.query or parts.fragment:
        raise TensorGridError(f"--url {url!r}: give the dashboard's address without a query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"


def _default_url(coordinator: str) -> str:
    host = coordinator.rpartition(":")[0] if ":" in coordinator else coordinator
    bare = host.strip("[]")
    scheme = "http" if bare in ("127.0.0.1", "::1", "localhost") else "https"
    return f"{scheme}://{host or '127.0.0.1'}:{DEFAULT_PORT}/"


def cmd_dashboard(ns: argparse.Namespace, make_client: Callable[[argparse.Namespace], Any]) -> int:
    base = dashboard_url(ns)
    with make_client(ns) as client:
        session = Session(client.stub, client.signer, client.timeout, DASHBOARD_SCOPE)
        try:
            session.open()
        except CoordinatorError as e:
            if e.code == grpc.StatusCode.PERMISSION_DENIED and "signed by" in str(e):
                # a coordinator from before scopes ignores the scope and checks the full session's text
                raise TensorGridError(f"{e}: is the coordinator older than dashboard sessions? upgrade it") from None
            raise
        address = client.signer.address
    until = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(session.expires_ms / 1000))
    link = f"{base}#token={session.token}"
    print(f"dashboard of {address}, read-only until {until} (whoever has this link sees your jobs, nothing more):")
    print(link)
    if ns.open and not webbrowser.open(link):
        print("could not start a browser: open the link yourself")
    return exitcodes.OK
