"""`tensorgrid dashboard`: a link to the coordinator's web dashboard, signed in as your key.

The command opens a submitter session the ordinary way (the key signs a one-time challenge) and
prints the dashboard's URL with the session token in its fragment (`#token=…`): browsers never
send a fragment to a server, so the token reaches no server or proxy log; the page hands it to
the dashboard's JSON API as `Authorization: Bearer`. The link is worth one SDK session until it
expires: whoever has it sees your jobs. Share it with no one.
"""

from __future__ import annotations

import argparse
import webbrowser
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tensorgrid import exitcodes
from tensorgrid.config import Setting, add_settings
from tensorgrid.errors import TensorGridError
from tensorgrid.rpc import SESSION_METADATA_KEY

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
        "--dashboard-listen). The session token rides in the link's #fragment, which a browser never "
        "sends to a server; the link is worth a session (24 h): share it with no one.",
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
        client.open_session()
        token = dict(client.session_metadata())[SESSION_METADATA_KEY]
        address = client.signer.address
    link = f"{base}#token={token}"
    print(f"dashboard of {address} (valid until the session expires; whoever has this link sees your jobs):")
    print(link)
    if ns.open and not webbrowser.open(link):
        print("could not start a browser: open the link yourself")
    return exitcodes.OK
