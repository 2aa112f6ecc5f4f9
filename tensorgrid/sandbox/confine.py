"""The child's half of the sandbox: leave the network, confine the file system, set limits.

Linux only; each step reports why it could not be done instead of failing, so the parent
can warn once and the operator knows what a job can reach (see README). ctypes, because
Python 3.11 has no os.unshare and no binding for Landlock.
"""

from __future__ import annotations

import ctypes
import glob
import os
import resource
from collections.abc import Iterable

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on x86_64 and aarch64
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
# Landlock file-system rights (uapi/linux/landlock.h), by the ABI version that added them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1 = (1 << 13) - 1  # execute … make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ = _EXECUTE | _READ_FILE | _READ_DIR
# System files a Python and torch process reads; nothing else under /etc or /proc.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/sys",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/ssl/certs",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)
SYSTEM_WRITE = ("/dev/null", "/dev/shm")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def leave_network() -> str:
    """Move this (still single-threaded) process into a new, empty network namespace.

    Returns "" on success, else why not. A new user namespace comes first where allowed: it
    also drops every capability the parent had on the machine, so the child cannot lift its
    hard limits or use root's privileges; as root without user namespaces, CLONE_NEWNET alone.
    """
    libc = _libc()
    errors = []
    for flags, what in ((CLONE_NEWUSER | CLONE_NEWNET, "user+network"), (CLONE_NEWNET, "network")):
        if libc.unshare(flags) == 0:
            return ""
        errors.append(f"unshare({what}): {os.strerror(ctypes.get_errno())}")
    return "; ".join(errors) + " (the kernel or container refuses new namespaces)"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none."""
    libc = _libc()
    version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _handled(abi: int) -> int:
    rights = _ABI1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def confine_files(read: Iterable[str], write: Iterable[str]) -> str:
    """Let this process open only files under `read` (read and execute) and `write` (any
    access), for good: no later code can widen it. Returns "" on success, else why not."""
    abi = landlock_abi()
    if abi < 1:
        return "Landlock is not available in this kernel (Linux 5.13+ with landlock in the LSM list)"
    libc = _libc()
    handled = _handled(abi)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    if ruleset < 0:
        return f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}"
    try:
        rules = [(p, _READ | (_IOCTL_DEV & handled)) for p in read]
        rules += [(p, handled) for p in write]
        rules += [(p, handled) for p in glob.glob("/dev/nvidia*")]  # CUDA needs its devices, ioctls included
        rules.append((f"/proc/{os.getpid()}", handled & ~_EXECUTE))  # its own /proc entry only
        for path, rights in rules:
            error = _add_rule(libc, ruleset, path, rights)
            if error:
                return error
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}"
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(ruleset)
    return ""


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> str:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return ""  # a path this machine does not have needs no rule
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            return f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    return ""


def set_fixed_limits(open_files: int) -> None:
    """No core dumps (a dump would hold the program's memory on disk); bounded descriptors.
    Soft and hard together: the child can lower them, never raise them."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if open_files > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        n = open_files if hard == resource.RLIM_INFINITY else min(open_files, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def mapped_bytes() -> int:
    """Address space this process has mapped now (VmSize)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def cap_address_space(limit_bytes: int) -> int:
    """Set RLIMIT_AS soft = hard = limit_bytes (never above an existing hard limit); returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return limit_bytes


PR_SET_DUMPABLE = 4


def forbid_inspection() -> bool:
    """Make this daemon non-dumpable: processes of the same user (a worker where Landlock is
    missing included) can then neither ptrace it nor read its /proc/<pid>/environ or memory,
    which hold its key and the password it was started with. False where not permitted."""
    try:
        return _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
