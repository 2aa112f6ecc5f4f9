"""Run a stranger's program in a child process that holds nothing worth stealing.

One primitive shared by the node's worker and the coordinator's referee and replays: the
parent (`Sandbox`) starts `python -m tensorgrid.sandbox.boot <entry>` with a scrubbed
environment, a fresh scratch directory as cwd, HOME and TMPDIR (deleted afterwards) and no
inherited file descriptors beyond stdin/stdout/stderr; the child (`boot`) leaves the
network (a new network namespace), optionally the file system outside the paths it was
given (Landlock), caps its address space (RLIMIT_AS soft = hard, so it cannot lift it),
core dumps and open files, and only then runs the entry point. The parent enforces the
wall-time limit and kills the child's process group. Where a zygote serves
(tensorgrid.sandbox.launch), the child is forked from it instead of exec'd, torch already
imported, and goes through the same confinement (boot.run).

What the child cannot do, and where the OS keeps that from being enforced, is written in
README.md ("What a job can and cannot do on your machine").
"""

from tensorgrid.sandbox.oneshot import SandboxFailure, WarmSandbox, run_once
from tensorgrid.sandbox.policy import Isolation, SandboxLimits, Scratch, child_argv, scrubbed_env
from tensorgrid.sandbox.serve import serve_once

__all__ = [
    "Isolation",
    "SandboxFailure",
    "SandboxLimits",
    "WarmSandbox",
    "Scratch",
    "child_argv",
    "run_once",
    "scrubbed_env",
    "serve_once",
]
