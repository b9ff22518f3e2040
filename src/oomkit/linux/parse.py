"""Pure parsers for the text the kernel shows in cgroupfs, /proc and /dev/kmsg.

No I/O here: every function takes the text (or bytes) and returns plain
Python values, so unit tests feed them samples copied from a real machine.
Sizes are returned in bytes.  Field names follow the kernel's own.
"""

from __future__ import annotations

import re
import struct

# v1 shows "unlimited" as PAGE_COUNTER_MAX * PAGE_SIZE, where PAGE_COUNTER_MAX
# is LONG_MAX / PAGE_SIZE (include/linux/page_counter.h), so the number depends
# on the page size: 9223372036854771712 with 4 KiB pages, 9223372036854710272
# with 64 KiB.  Anything at or above LONG_MAX rounded down to 1 MiB is
# "unlimited" for every page size up to 1 MiB.
LIMIT_V1_UNLIMITED_MIN = (2**63 - 1) // (1 << 20) * (1 << 20)


# CgroupInfo.stat's vocabulary: the cgroup v2 names (Documentation/admin-guide/
# cgroup-v2.rst, memory.stat), each the memcg's whole subtree.  v1's memory.stat
# gives the subtree's values as total_<name> (Documentation/admin-guide/cgroup-v1/
# memory.rst 5.2), under its older names.  Sizes are bytes, events counts.
_V1_NAMES = {
    "anon": "total_rss", "file": "total_cache", "shmem": "total_shmem",
    "file_mapped": "total_mapped_file", "file_dirty": "total_dirty",
    "file_writeback": "total_writeback", "swap": "total_swap",
    "active_anon": "total_active_anon", "inactive_anon": "total_inactive_anon",
    "active_file": "total_active_file", "inactive_file": "total_inactive_file",
    "unevictable": "total_unevictable", "pgfault": "total_pgfault",
    "pgmajfault": "total_pgmajfault",
    "workingset_refault_anon": "total_workingset_refault_anon",
    "workingset_refault_file": "total_workingset_refault_file",
}
_V2_NAMES = ("anon", "file", "shmem", "file_mapped", "file_dirty", "file_writeback", "swapcached",
             "active_anon", "inactive_anon", "active_file", "inactive_file", "unevictable",
             "slab", "sock", "kernel", "pgfault", "pgmajfault", "pgscan", "pgsteal",
             "pgrefill", "workingset_refault_anon", "workingset_refault_file",
             "workingset_activate", "workingset_restore", "workingset_nodereclaim")


def memory_stat(text: str, version: str, swap: int | None = None) -> dict[str, int]:
    """``memory.stat`` in one vocabulary for both hierarchies (see ``_V1_NAMES``):
    ``anon``, ``file`` (page cache, shmem included), ``shmem``, ``file_mapped``,
    ``swap``, ``pgscan``, ``pgsteal``, ``workingset_refault`` (anon + file) and
    the rest of v2's names that v1 has.  A name the kernel does not give is
    absent (v1 counts no pgscan/pgsteal per memcg).  v2's ``swap`` is
    ``memory.swap.current`` (``swap``), which memory.stat lacks.
    """
    raw = flat_keyed(text)
    if version == "v1":
        out = {name: raw[v1] for name, v1 in _V1_NAMES.items() if v1 in raw}
        if "workingset_refault_anon" not in out and "total_workingset_refault" in raw:
            out["workingset_refault"] = raw["total_workingset_refault"]     # before Linux 5.9
    else:
        out = {name: raw[name] for name in _V2_NAMES if name in raw}
        if "workingset_refault" in raw:                                     # before Linux 5.9
            out["workingset_refault"] = raw["workingset_refault"]
        if swap is not None:
            out["swap"] = swap
    if "workingset_refault" not in out and "workingset_refault_anon" in out:
        out["workingset_refault"] = out["workingset_refault_anon"] + out.get("workingset_refault_file", 0)
    return out


def flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, cgroup.stat, v1 and v2).

    Lines whose value is not an integer are skipped (none in today's files,
    but Documentation/admin-guide/cgroup-v2.rst lets flat-keyed files grow).
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:      # not an integer: skipped, as the docstring says (pure: no log here)
            continue
    return out


def oom_control(text: str) -> dict:
    """v1 ``memory.oom_control`` -> {oom_kill_disable: bool, under_oom: bool, oom_kill: int}.

    mm/memcontrol-v1.c (mem_cgroup_oom_control_read) prints the three lines;
    ``oom_kill`` exists since Linux 4.13, so it defaults to 0.
    """
    raw = flat_keyed(text)
    return {
        "oom_kill_disable": bool(raw.get("oom_kill_disable", 0)),
        "under_oom": bool(raw.get("under_oom", 0)),
        "oom_kill": raw.get("oom_kill", 0),
    }


def limit_v1(text: str) -> int | None:
    """v1 ``memory.limit_in_bytes`` (or memsw/kmem): bytes, None for unlimited."""
    value = int(text.strip())
    return None if value >= LIMIT_V1_UNLIMITED_MIN else value


def limit_v2(text: str) -> int | None:
    """v2 ``memory.max``/``memory.high``/``memory.swap.max``: bytes, None for "max"."""
    text = text.strip()
    return None if text == "max" else int(text)


def int_value(text: str) -> int:
    """A single-value file (memory.usage_in_bytes, memory.current, oom_score_adj)."""
    return int(text.strip())


def pids(text: str | bytes) -> list[int]:
    """``cgroup.procs``/``tasks``: one pid a line (as text, or the raw bytes read)."""
    return [int(line) for line in text.split()]


# --- /proc ---------------------------------------------------------------

_STATUS_KB = ("VmRSS", "VmSwap", "VmPTE")
_STATUS_FIELDS = tuple((key, "\n" + key + ":", kind) for key, kind in (
    ("Name", "str"), ("State", "state"), ("Tgid", "int"), ("PPid", "int"), ("Kthread", "int"),
    ("Uid", "first"), *((k, "kb") for k in _STATUS_KB)))


def proc_status(text: str) -> dict:
    """``/proc/PID/status`` -> Name, State, Tgid, PPid, Uid (real), VmRSS, VmSwap, VmPTE.

    Sizes in bytes.  Kernel threads and zombies have no Vm* lines (no mm,
    fs/proc/array.c task_mem is skipped), so those are 0 there; ``Kthread``
    (Linux 6.0+) says which.  ``State`` is the letter only ("S", not
    "S (sleeping)").  ``Name`` keeps the kernel's escaping (\\n, \\\\).
    Only these lines are looked up (the file has about 60): this runs once
    per task during an OOM.
    """
    out: dict = {"VmRSS": 0, "VmSwap": 0, "VmPTE": 0}
    text = "\n" + text
    find = text.find
    for key, needle, kind in _STATUS_FIELDS:
        i = find(needle)
        if i < 0:
            continue
        start = i + len(needle)
        end = find("\n", start)
        value = (text[start:end] if end >= 0 else text[start:]).strip()
        if kind == "str":
            out[key] = value
        elif kind == "state":
            out[key] = value[:1]
        elif kind == "int":
            out[key] = int(value)
        elif kind == "first":
            out[key] = int(value.split()[0])  # real, effective, saved, fs
        else:
            out[key] = int(value.split()[0]) * 1024
    return out


# include/linux/sched.h: the task has begun do_exit() (its memory is on its way back).
PF_EXITING = 0x00000004


def proc_stat(text: str) -> dict:
    """``/proc/PID/stat`` -> pid, comm, state, ppid, flags, starttime (clock ticks since boot).

    ``flags`` is field 9, the task's ``PF_*`` flags (``PF_EXITING`` once it exits).

    comm is between the first "(" and the *last* ")" because comm itself may
    hold spaces and parentheses (proc(5), fs/proc/array.c do_task_stat).
    starttime is field 22, the value that with the pid names one process for
    its whole life: the key we use against pid reuse.
    """
    head, _, tail = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    rest = tail.split()
    # rest[0] is field 3 (state), so field N is rest[N - 3]
    return {
        "pid": int(pid),
        "comm": comm,
        "state": rest[0],
        "ppid": int(rest[1]),
        "flags": int(rest[6]),
        "starttime": int(rest[19]),
    }


def proc_cgroup(text: str, v1_controller: str | None = "memory") -> str | None:
    """``/proc/PID/cgroup`` -> the path of the task's memory cgroup, or None.

    Lines are ``hierarchy-ID:controller-list:path`` (cgroups(7)).  For v1 pass
    the controller (the line whose comma-separated list holds it); for v2 pass
    None and get the ``0::`` line.  The path may itself hold ":".
    """
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if v1_controller is None:
            if hid == "0" and controllers == "":
                return path
        elif v1_controller in controllers.split(","):
            return path
    return None


def psi(text: str) -> dict[str, dict[str, float | int]]:
    """``/proc/pressure/*`` or ``memory.pressure`` -> {"some": {...}, "full": {...}}.

    avg10/avg60/avg300 are percentages (float); total is microseconds (int)
    (Documentation/accounting/psi.rst).
    """
    out: dict[str, dict[str, float | int]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, *fields = line.split()
        row: dict[str, float | int] = {}
        for field in fields:
            key, _, value = field.partition("=")
            row[key] = int(value) if key == "total" else float(value)
        out[kind] = row
    return out


def meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> bytes for the "kB" lines, plain counts for the rest (HugePages_*)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if not value.strip():
            continue
        number, *unit = value.split()
        out[key] = int(number) * 1024 if unit == ["kB"] else int(number)
    return out


def proc_stat_btime(text: str) -> int:
    """``btime`` (boot time, seconds since the epoch) from ``/proc/stat``."""
    for line in text.splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise ValueError("no btime line in /proc/stat")


def mounts(text: str) -> list[tuple[str, str, str, list[str]]]:
    """``/proc/self/mounts`` -> (source, mount point, fstype, options) per line.

    Spaces, tabs, newlines and backslashes in fields are octal-escaped
    (fs/proc_namespace.c mangle()).
    """
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        source, target, fstype, opts = (_unoctal(f) for f in fields[:4])
        out.append((source, target, fstype, opts.split(",")))
    return out


def _unoctal(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- /dev/kmsg -----------------------------------------------------------

# A /dev/kmsg record is "prio,seq,usec,flags[,more];text" and then
# " KEY=value" continuation lines (Documentation/ABI/testing/dev-kmsg);
# dmesg(1) prints "[  123.456789] text".
_KMSG_PREFIX = re.compile(r"^\d+,\d+,\d+,[^;]*;")
_DMESG_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s?")

# mm/oom_kill.c __oom_kill_process():
#   "%s: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB,
#    shmem-rss:%lukB, UID:%u pgtables:%lukB oom_score_adj:%hd"
# where %s is "Out of memory", "Memory cgroup out of memory" or
# "Out of memory (oom_kill_allocating_task)"; UID/pgtables/oom_score_adj came
# in 5.x, so they are optional.
_KILLED = re.compile(
    r"^(?P<message>.*?): Killed process (?P<pid>\d+) \((?P<name>.*)\) "
    r"total-vm:(?P<total_vm>\d+)kB, anon-rss:(?P<anon_rss>\d+)kB, "
    r"file-rss:(?P<file_rss>\d+)kB, shmem-rss:(?P<shmem_rss>\d+)kB"
    r"(?:, UID:(?P<uid>\d+) pgtables:(?P<pgtables>\d+)kB oom_score_adj:(?P<oom_score_adj>-?\d+))?"
)

# mm/oom_kill.c dump_oom_summary() + cpuset_print_current_mems_allowed() +
# mm/memcontrol.c mem_cgroup_print_oom_context():
#   "oom-kill:constraint=%s,nodemask=%*pbl[,cpuset=%s,mems_allowed=%*pbl]
#    (,oom_memcg=PATH|,global_oom)[,task_memcg=PATH],task=%s,pid=%d,uid=%d"
# Node lists, cgroup paths and comm may all hold commas, so the pattern is
# anchored on the field names and the numeric tail.
_SUMMARY = re.compile(
    r"^oom-kill:constraint=(?P<constraint>[A-Z_]+),nodemask=(?P<nodemask>.*?)"
    r"(?:,cpuset=(?P<cpuset>.*?),mems_allowed=(?P<mems_allowed>.*?))?"
    r"(?:,oom_memcg=(?P<memcg>.*?)|,(?P<global_oom>global_oom))"
    r"(?:,task_memcg=(?P<task_memcg>.*?))?"
    r",task=(?P<name>.*),pid=(?P<pid>\d+),uid=(?P<uid>\d+)$"
)

# mm/oom_kill.c oom_reap_task_mm():
#   "oom_reaper: reaped process %d (%s), now anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB"
_REAPED = re.compile(
    r"^oom_reaper: reaped process (?P<pid>\d+) \((?P<name>.*)\), now "
    r"anon-rss:(?P<anon_rss>\d+)kB, file-rss:(?P<file_rss>\d+)kB, shmem-rss:(?P<shmem_rss>\d+)kB"
)

_KB_FIELDS = ("total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables")
_INT_FIELDS = ("pid", "uid", "oom_score_adj")


def kmsg_text(record: str) -> str:
    """The message of a /dev/kmsg record or dmesg line, without prefix or continuation lines."""
    first = record.split("\n", 1)[0]
    return _DMESG_PREFIX.sub("", _KMSG_PREFIX.sub("", first, count=1), count=1)


def kmsg_oom_kill(line: str) -> dict | None:
    """Parse one OOM-killer line of the kernel log, or return None for any other line.

    Result has ``kind``: "killed" (the "Killed process" line: pid, name,
    memcg_oom, message, total_vm/anon_rss/file_rss/shmem_rss/pgtables in
    bytes, uid, oom_score_adj), "summary" (the "oom-kill:" line: constraint,
    memcg (None for a global OOM), global_oom, task_memcg, name, pid, uid,
    nodemask, cpuset, mems_allowed) or "reaped" (the oom_reaper's line).
    """
    text = kmsg_text(line).rstrip()
    for kind, pattern in (("killed", _KILLED), ("summary", _SUMMARY), ("reaped", _REAPED)):
        m = pattern.match(text)
        if m:
            return _oom_fields(kind, m.groupdict())
    return None


def _oom_fields(kind: str, raw: dict) -> dict:
    out: dict = {"kind": kind}
    for key, value in raw.items():
        if key in _KB_FIELDS:
            out[key] = None if value is None else int(value) * 1024
        elif key in _INT_FIELDS:
            out[key] = None if value is None else int(value)
        else:
            out[key] = value
    if kind == "killed":
        out["memcg_oom"] = out["message"].startswith("Memory cgroup")
    elif kind == "summary":
        out["global_oom"] = out["global_oom"] is not None
    return out


# --- inotify -------------------------------------------------------------

_INOTIFY_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len


# --- the proc connector (drivers/connector/cn_proc.c) -----------------------

_NLMSGHDR = struct.Struct("=IHHII")       # struct nlmsghdr: len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")         # struct cn_msg: id.idx, id.val, seq, ack, len, flags
_PROC_EVENT = struct.Struct("=IIQ")        # struct proc_event: what, cpu, timestamp_ns
_FORK = struct.Struct("=IIII")             # event_data.fork: parent pid/tgid, child pid/tgid
PROC_EVENT_FORK = 0x00000001               # include/uapi/linux/cn_proc.h


def proc_forks(buf: bytes) -> list[tuple[int, int]]:
    """The new processes (parent tgid, child tgid) in what a proc-connector socket
    returned: PROC_EVENT_FORK events whose child is a thread-group leader (a new
    process, not a new thread); every other event is skipped."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(buf):
        length = _NLMSGHDR.unpack_from(buf, offset)[0]
        if length < _NLMSGHDR.size or offset + length > len(buf):
            break                                  # malformed or truncated: stop, never loop
        body = offset + _NLMSGHDR.size + _CN_MSG.size
        if body + _PROC_EVENT.size + _FORK.size <= offset + length:
            what = _PROC_EVENT.unpack_from(buf, body)[0]
            if what == PROC_EVENT_FORK:
                _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(buf, body + _PROC_EVENT.size)
                if cpid == ctgid:
                    out.append((ptgid, ctgid))
        offset += (length + 3) & ~3                # NLMSG_ALIGN
    return out


def inotify_events(buf: bytes) -> list[tuple[int, int, int, str]]:
    """Split what read() returned from an inotify fd into (wd, mask, cookie, name).

    ``name`` is NUL-padded to ``len`` bytes in the buffer (inotify(7)); it is
    "" for events on the watched path itself.
    """
    out = []
    offset = 0
    while offset + _INOTIFY_EVENT.size <= len(buf):
        wd, mask, cookie, length = _INOTIFY_EVENT.unpack_from(buf, offset)
        offset += _INOTIFY_EVENT.size
        name = buf[offset:offset + length].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        offset += length
        out.append((wd, mask, cookie, name))
    return out
