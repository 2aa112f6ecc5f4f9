"""The read-only web dashboard (`--dashboard-listen HOST:PORT`, off by default): a submitter
watches its jobs (live progress, verification report, settlement, training curves) and the
grid's nodes in a browser. One static page (static/: HTML, JS, CSS, no build step, nothing from
elsewhere) and GET-only JSON under /api/, served by aiohttp on the coordinator's event loop;
every database read runs on the runtime's database threads, as the gRPC handlers' scans do.

Who could abuse it, and what stops them:
- A stranger reading someone's jobs: every /api/jobs call needs `Authorization: Bearer <token>`,
  a dashboard session's token from the signed-challenge flow (`tensorgrid dashboard` opens one
  with the submitter's key, OpenSession with scope "dashboard", and prints the link). A job the
  caller may not see answers 404 exactly like one that does not exist (services.access), never 403.
- Guessing tokens: a failed authentication counts against the peer's host in the same limiter
  the gRPC services use; past the limit it gets 429 with Retry-After until the window passes.
  Unknown tokens are cached as unknown, so a flood costs no database reads.
- Leaking the token: it travels in the URL fragment (`#token=…`), which browsers never send,
  so it never reaches this server's or a proxy's logs; the page moves it into sessionStorage
  and drops it from the address bar at once. Responses say Referrer-Policy: no-referrer and
  Cache-Control: no-store. Off loopback the dashboard serves HTTPS (--tls-cert) or refuses to
  start unless --insecure (tensorgrid.tls's rule for gRPC).
- A leaked link anyway (browser history, a screenshot, an extension): its token is a dashboard
  session's, which reads and nothing more. It is signed as such (the session message names the
  scope, so no signature or token turns into a full session), stored in its own table
  (access.dashboard_sessions) and cache, which the gRPC services never read: every gRPC call
  refuses it with UNAUTHENTICATED, so it cannot submit, upload, spend escrow, cancel jobs or
  delete endpoints. It shows the submitter's jobs until it expires (--dashboard-session-ttl,
  8 h). Conversely this API refuses a full session's token (api.server.Sessions.dashboards is
  the only cache it reads), so the token an SDK holds is never worth pasting into a page.
- Script injection through a job's spec (its strings are the submitter's, and the operator
  sees every job): the page builds every node with textContent/createElement, never innerHTML;
  a strict Content-Security-Policy (scripts and styles only from this origin, no inline code,
  no frames, connections only to this origin) stops what a bug there would let through;
  X-Content-Type-Options: nosniff; JSON is served as application/json.
- Other sites using a visitor's browser: no CORS headers (a cross-origin page cannot read the
  answers), the token is not a cookie (no CSRF), and nothing here changes state: every method
  but GET and HEAD gets 405.
- Exhausting the coordinator: no request body is taken (1 KiB cap), request lines and headers
  are capped, at most DashboardLimits.api_calls API calls run at once (503 beyond), list sizes
  are capped, and the public node list is cached for NODES_CACHE_S, so strangers cannot
  multiply database scans. It runs on the gRPC loop: put it behind a reverse proxy with
  connection limits before exposing it to the internet.
- Reading files: static files are three names mapped to bytes read at start; no path from a
  request ever reaches the file system, so `..` goes nowhere.

The node list (/api/nodes: address, record, reputation, stake, earnings, last seen) is public,
as gRPC's ListNodes and GetEarnings are: submitters choose a grid by it and the chain shows the
same stake and earnings. Requiring a session would protect nothing (a fresh key opens one).
"""

from coordinator.api.dashboard.server import Dashboard, DashboardLimits, build_app, open_dashboard
from coordinator.api.dashboard.views import Views

__all__ = ["Dashboard", "DashboardLimits", "Views", "build_app", "open_dashboard"]
