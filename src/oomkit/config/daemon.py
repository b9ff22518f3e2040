"""The daemon's config file (``oomkit run --config FILE``); see the README."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from oomkit.config.common import (
    BACKOFF_BUDGET,
    BACKOFF_WAIT,
    BACKOFF_WINDOW,
    DEPTH,
    DEPTH_DEFAULT,
    HANDLER_DEADLINE,
    PROC_CACHE,
    PROC_CACHE_DEFAULT,
    REARM,
    WATCHDOG_TIMEOUT,
    Duration,
    Size,
    convert,
    duration_at,
    int_at,
    read_toml,
    size_at,
    text_at,
)
from oomkit.engine.chain import EngineSettings
from oomkit.errors import ConfigError

_PSI = re.compile(r"^(some|full) (\d+(?:\.\d+)?)(ms|s) (\d+(?:\.\d+)?)(ms|s)$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class DaemonSpec(_Strict):
    cgroup: str = "auto"
    mount: str | None = None
    proc: str = "/proc"
    handler_deadline: Duration = "50ms"
    backoff_budget: int = 3
    backoff_window: Duration = "10s"
    backoff_wait: Duration = "500ms"
    event_log: str = "/var/log/oomkit/events.jsonl"
    dry_run: bool = False
    watchdog_timeout: Duration = "1s"
    task_reader: str = "auto"       # how an OOM's tasks are read: "bpf", "proc", or "auto" (bpf if it loads)
    proc_cache: int = PROC_CACHE_DEFAULT   # tasks whose /proc fds are kept between OOMs (0: none)
    state_dir: str = "/run/oomkit"  # what the daemon changed, for a restart or `oomkit restore`; its lock
    # cgroup v2: a standing decision for each managed memcg within `headroom` of memory.max
    headroom: Size = "auto"         # "auto": 1/8 of memory.max, 4 MiB to 1 GiB
    rearm: Duration = "500ms"       # how often a standing decision is taken again
    depth: int = DEPTH_DEFAULT      # the chain's victim and up to depth-1 successors stand at once
    pressure: str = "off"           # a PSI trigger that runs the chain (and kills) early: opt-in
    tripwire: bool = False          # before 0.2 (memory.high as a throttle); ignored now
    executor: str = "daemon"        # v1: who kills the chain's victim: "daemon" (pidfd) or "kernel"
    mem_available_min: Size | None = None
    global_pressure: str = "full 150ms 2s"
    host: str | None = None         # written into every record (a fleet's logs merged); default the hostname
    # Where policies run: "worker" (a sandboxed process each) or "inprocess" (UNSAFE: debugging).
    policy_runner: str = "worker"
    policy_user: str = "nobody"     # the workers' uid and gid
    policy_memory: Size = "256M"    # each worker's address-space cap (RLIMIT_AS)
    metrics: str | None = None      # "HOST:PORT": Prometheus text on /metrics (the metrics extra)
    metrics_textfile: str | None = None   # node_exporter's textfile collector: a .prom file, after each OOM


class AttachSpec(_Strict):
    cgroup: str
    policy: str
    params: dict[str, Any] = {}
    ceiling: Size | None = None


class ConfigSpec(_Strict):
    daemon: DaemonSpec = msgspec.field(default_factory=DaemonSpec)
    attach: list[AttachSpec] = []


@dataclass(frozen=True)
class Attach:
    cgroup: str          # a path or a glob, relative to the mount
    policy: str
    params: dict[str, Any]
    ceiling: int | None = None


@dataclass(frozen=True)
class PSITrigger:
    kind: str            # some or full
    stall_us: int
    window_us: int

    def __str__(self) -> str:   # the text written to a pressure file
        return f"{self.kind} {self.stall_us} {self.window_us}"


@dataclass(frozen=True)
class DaemonConfig:
    file: str
    base_dir: Path
    hierarchy: str                 # auto, v1 or v2
    mount: str | None
    proc: str
    settings: EngineSettings
    event_log: str
    dry_run: bool
    watchdog_timeout: float
    task_reader: str
    proc_cache: int
    headroom: int | None           # None: auto (1/8 of each memory.max)
    pressure: PSITrigger | None    # None: off
    rearm: float
    state_dir: str
    mem_available_min: int | None
    global_pressure: PSITrigger
    attach: list[Attach] = field(default_factory=list)
    dry_run_forced: bool = False   # --dry-run on the command line: kept across reloads
    host: str = ""                 # written into every record; "" until resolved (the hostname)
    executor: str = "daemon"       # v1: "daemon" kills by pidfd, "kernel" kills what the chain marked
    depth: int = DEPTH_DEFAULT     # v2: how many of the chain's choices stand at once
    metrics: tuple[str, int] | None = None     # (host, port) to serve /metrics on
    metrics_textfile: str | None = None


def load_daemon_config(path: str | Path) -> DaemonConfig:
    return resolve(read_toml(path), str(path), Path(path).resolve().parent)


def resolve(data: dict[str, Any], file: str = "<config>", base_dir: Path | None = None) -> DaemonConfig:
    spec = convert(data, ConfigSpec, file)
    d = spec.daemon
    if d.cgroup not in ("auto", "v1", "v2"):
        raise ConfigError(f"{d.cgroup!r} is not a hierarchy", file=file, where="daemon.cgroup",
                          hint='use "auto", "v1" or "v2"')
    if d.executor not in ("daemon", "kernel"):
        raise ConfigError(f"{d.executor!r} is not an executor", file=file, where="daemon.executor",
                          hint='use "daemon" (oomkit kills by pidfd) or "kernel" (the kernel kills '
                               'what the chain marked)')
    if d.task_reader not in ("auto", "bpf", "proc"):
        raise ConfigError(f"{d.task_reader!r} is not a task reader", file=file, where="daemon.task_reader",
                          hint='use "auto", "bpf" or "proc"')
    if d.policy_runner not in ("worker", "inprocess"):
        raise ConfigError(f"{d.policy_runner!r} is not a policy runner", file=file, where="daemon.policy_runner",
                          hint='use "worker" (the default) or "inprocess" (unsafe, for debugging)')
    text_at(d.policy_user, "daemon.policy_user", file)
    int_at(d.backoff_budget, "daemon.backoff_budget", file, *BACKOFF_BUDGET)
    int_at(d.proc_cache, "daemon.proc_cache", file, *PROC_CACHE, " tasks")
    int_at(d.depth, "daemon.depth", file, *DEPTH, " decisions")
    for key in ("mount", "proc", "event_log"):
        if getattr(d, key) is not None:
            text_at(getattr(d, key), f"daemon.{key}", file)
    settings = EngineSettings(
        handler_deadline=duration_at(d.handler_deadline, "daemon.handler_deadline", file, HANDLER_DEADLINE),
        backoff_budget=d.backoff_budget,
        backoff_window=duration_at(d.backoff_window, "daemon.backoff_window", file, BACKOFF_WINDOW),
        backoff_wait=duration_at(d.backoff_wait, "daemon.backoff_wait", file, BACKOFF_WAIT),
        record_timing=True, snapshot=True, runner=d.policy_runner, policy_user=d.policy_user,
        policy_memory=size_at(d.policy_memory, "daemon.policy_memory", file))
    watchdog_timeout = duration_at(d.watchdog_timeout, "daemon.watchdog_timeout", file, WATCHDOG_TIMEOUT)
    return DaemonConfig(
        file=file, base_dir=base_dir or Path.cwd(), hierarchy=d.cgroup, mount=d.mount, proc=d.proc,
        settings=settings, event_log=d.event_log, dry_run=d.dry_run,
        watchdog_timeout=watchdog_timeout, task_reader=d.task_reader, proc_cache=d.proc_cache,
        headroom=None if d.headroom == "auto" else size_at(d.headroom, "daemon.headroom", file),
        pressure=None if d.pressure == "off" else psi_at(d.pressure, "daemon.pressure", file),
        rearm=duration_at(d.rearm, "daemon.rearm", file, REARM), executor=d.executor,
        depth=d.depth,
        state_dir=_state_dir(d.state_dir, file),
        mem_available_min=size_at(d.mem_available_min, "daemon.mem_available_min", file,
                                  allow_none=True),
        global_pressure=psi_at(d.global_pressure, "daemon.global_pressure", file),
        attach=attachments(spec.attach, file), host=_host(d.host, file),
        metrics=None if d.metrics is None else metrics_address(d.metrics, "daemon.metrics", file),
        metrics_textfile=_textfile(d.metrics_textfile, file))


def metrics_address(text: str, where: str, file: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"``: the address to serve /metrics on."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    valid_port = port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    if not sep or not host or "\0" in host or not valid_port:
        raise ConfigError(f"{text!r} is not an address to listen on", file=file, where=where,
                          hint='write "HOST:PORT", e.g. "127.0.0.1:9464" or "[::1]:9464" (port 1 to 65535)')
    return host, int(port)


def _textfile(text: str | None, file: str) -> str | None:
    if text is None:
        return None
    if not text.startswith("/") or "\0" in text or not text.endswith(".prom"):
        raise ConfigError(f"{text!r} is not an absolute path to a .prom file", file=file,
                          where="daemon.metrics_textfile",
                          hint="node_exporter's textfile collector reads *.prom files in its directory, "
                               'e.g. "/var/lib/node_exporter/textfile/oomkit.prom"')
    return text


def _host(text: str | None, file: str) -> str:
    """``[daemon] host``, default the hostname: every record names it."""
    if text is None:
        import socket

        return socket.gethostname()
    text_at(text, "daemon.host", file)
    if not text.strip():
        raise ConfigError("must not be empty", file=file, where="daemon.host")
    return text


def _state_dir(text: str, file: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise ConfigError(f"{text!r} is not an absolute path", file=file, where="daemon.state_dir")
    return text


def attachments(specs: list[AttachSpec], file: str) -> list[Attach]:
    out, seen = [], set()
    for i, a in enumerate(specs):
        where = f"attach[{i}].cgroup"
        if not a.cgroup.startswith("/") or "//" in a.cgroup or ".." in a.cgroup.split("/") or "\0" in a.cgroup:
            raise ConfigError(f"{a.cgroup!r} is not a cgroup path", file=file, where=where,
                              hint='paths are relative to the mount, like "/batch.slice/*"')
        if a.cgroup in seen:
            raise ConfigError(f"{a.cgroup} already has a policy attached", file=file, where=where,
                              hint="one policy per cgroup (EEXIST)")
        seen.add(a.cgroup)
        out.append(Attach(a.cgroup.rstrip("/") or "/", a.policy, dict(a.params),
                          size_at(a.ceiling, f"attach[{i}].ceiling", file, allow_none=True)))
    return out


def psi_at(text: str, where: str, file: str) -> PSITrigger:
    """``"some 150ms 1s"``: a PSI trigger (Documentation/accounting/psi.rst)."""
    m = _PSI.match(text.strip())
    if not m:
        raise ConfigError(f"{text!r} is not a PSI trigger", file=file, where=where,
                          hint='write "some|full STALL WINDOW", e.g. "some 150ms 1s"')
    kind, stall, su, window, wu = m.groups()
    to_us = {"ms": 1000, "s": 1_000_000}
    # Decimal, not float: a 400-digit stall is out of range, not an OverflowError.
    stall_us, window_us = int(Decimal(stall) * to_us[su]), int(Decimal(window) * to_us[wu])
    # The kernel accepts windows of 500 ms to 10 s, and a stall no longer than the window.
    if not 500_000 <= window_us <= 10_000_000 or not 0 < stall_us <= window_us:
        raise ConfigError(f"{text!r}: the window must be 500ms to 10s and the stall within it",
                          file=file, where=where)
    return PSITrigger(kind, stall_us, window_us)
