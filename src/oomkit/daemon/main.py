"""``oomkit run``: the engine on real cgroups, event-driven.

One thread waits in ``epoll`` on the kernel's own wake-ups: those of the
backend's event source (v1 OOM eventfds; v2 PSI triggers and
``memory.events`` changes: ``oomkit.backends.cgroup_v1``/``cgroup_v2``), the
system-wide PSI trigger, inotify for cgroups created or removed, and
signals.  Nothing is scanned while nothing happens; the only timer is the
watchdog's heartbeat (v1).

The daemon decides *what* is managed (the attachments' globs matched
against the tree) and records every OOM; the event source decides how a
cgroup is watched and what woke us.  :meth:`Daemon.stop` has the source
restore every setting it changed.  SIGHUP reloads the config only if the
new file validates whole.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

from oomkit.backends.base import OOMEvent, Release
from oomkit.backends.cgroup_v1 import CgroupV1Backend, V1Events
from oomkit.backends.cgroup_v2 import CgroupV2Backend, V2Events
from oomkit.backends.live import Hush, LiveBackend
from oomkit.config.daemon import Attach, DaemonConfig, load_daemon_config
from oomkit.context import is_within
from oomkit.daemon import watchdog as watchdog_module
from oomkit.daemon.eventlog import EventLog, now_iso, release_line
from oomkit.daemon.snapshot import snapshot
from oomkit.engine.chain import Engine
from oomkit.errors import CgroupGone, ConfigError, KernelError, OOMKitError
from oomkit.linux import notify
from oomkit.linux.bpftasks import BpfTasks
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS
from oomkit.policies import make_policy

log = logging.getLogger("oomkit")

_GLOB = set("*?[")


class Watchdog:
    """The daemon's side of the dead man's switch (see ``watchdog.py``)."""

    def __init__(self, timeout: float):
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", watchdog_module.__file__, str(timeout)],
                                     stdin=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode("utf-8", "surrogateescape") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise KernelError("the watchdog is gone: refusing to hold OOMs without it") from None

    def close(self) -> None:
        try:
            self.send("bye")
            self.proc.stdin.close()
        except (KernelError, OSError):
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Daemon:
    def __init__(self, config: DaemonConfig, config_path: str | None = None):
        self.config, self.config_path = config, config_path
        version, mount = detect(config.hierarchy, config.mount, config.proc)
        self.fs = CgroupFS(mount, version)
        self.proc = ProcFS(config.proc)
        self.watchdog = Watchdog(config.watchdog_timeout) if version == "v1" else None
        protected = [self.watchdog.pid] if self.watchdog else []
        cls = CgroupV1Backend if version == "v1" else CgroupV2Backend
        extra = {"headroom": config.headroom, "tripwire": config.tripwire} if version == "v2" else {}
        self.backend: LiveBackend = cls(self.fs, self.proc, protected_pids=protected,
                                        dry_run=config.dry_run, tick=self.heartbeat,
                                        proc_cache=config.proc_cache,
                                        bpf=open_task_reader(config.task_reader, config.proc),
                                        **extra)
        self.engine = self._engine(config)
        self.events = EventLog(config.event_log)
        self.ep = select.epoll()
        self.callbacks: dict[int, tuple] = {}
        self.hush = Hush(config.pressure.window_us / 1e6, self.backend.clock)
        self.source = (V1Events(self.backend, self, self.watchdog) if version == "v1"
                       else V2Events(self.backend, self, config))
        self.inotify = notify.Inotify()
        self.watches: dict[int, str] = {}
        self.global_fd: int | None = None
        self.running = False
        self._reload = False
        self._wake_r, self._wake_w = socket.socketpair()

    @property
    def version(self) -> str:
        return self.fs.version

    @property
    def managed(self) -> set[str]:
        """The cgroups the event source watches (and, on v1, holds)."""
        return self.source.paths()

    def _engine(self, config: DaemonConfig) -> Engine:
        return Engine(self.backend, config.settings, on_release=self._on_release,
                      tick=self.heartbeat)

    # -- start and stop ---------------------------------------------------------

    def start(self) -> None:
        lock_memory()
        raise_nofile()
        self._signals()
        self.register(self.inotify.fileno(), self._on_inotify)
        self.reconcile()
        self.running = True
        log.info("oomkit: running on cgroup %s at %s: %d attachments, %d cgroups managed%s",
                 self.version, self.fs.mount, len(self.engine.attachments), len(self.managed),
                 " (dry run)" if self.config.dry_run else "")

    def run(self) -> None:
        self.start()
        try:
            self.loop()
        finally:
            self.stop()

    def loop(self) -> None:
        tick = self.config.watchdog_timeout / 4 if self.watchdog else -1
        while self.running:
            ready = self.ep.poll(tick)
            self.heartbeat()
            for fd, mask in ready:
                callback = self.callbacks.get(fd)
                if callback:
                    callback[0](*callback[1:], mask)
            self.source.flush()
            if self._reload:
                self._reload = False
                self.reload()

    def stop(self) -> None:
        """Put back every setting we changed, then let the watchdog go."""
        self.source.close()
        if self.global_fd is not None:
            self.unregister(self.global_fd)
            self.global_fd = None
        self.backend.close()
        if self.watchdog:
            self.watchdog.close()
        self.events.close()
        log.info("oomkit: stopped; every setting restored")

    def _signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.register(self._wake_r.fileno(), self._drain_wakeups)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self.running = False

    def _drain_wakeups(self, mask: int) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def heartbeat(self) -> None:
        if self.watchdog:
            self.watchdog.send(".")

    # -- what we manage ------------------------------------------------------------

    def reconcile(self) -> None:
        """Match the attachments and managed cgroups to the tree as it is now."""
        wanted = self._expand(self.config.attach)
        managed = self._managed_set(wanted)
        # Removed cgroups, deepest first: the policies at and above each are told
        # (handle_cgroup_offline), and those attached at or below it go.
        for path in sorted(self.managed - managed, key=lambda p: -p.count("/")):
            if not self.fs.exists(path):
                self.engine.cgroup_offline(path)
                self.backend.cgroup_gone(path)
        for path in [p for p in self.engine.attachments if p not in wanted]:
            self.engine.detach(path)        # still there, but no attachment matches it now
        taken = [path for path in wanted if path not in self.engine.attachments]
        for path in taken:
            spec = wanted[path]
            self.engine.attach(path, make_policy(spec.policy, spec.params, self.config.base_dir),
                               ceiling=spec.ceiling)
        self.source.sync(managed)
        self._watch_dirs(wanted)
        self._global_source("/" in wanted)
        self._warm([p for p in taken if not any(q != p and is_within(p, q) for q in taken)])

    def _warm(self, tops: list[str]) -> None:
        """Read the tasks of newly taken subtrees now, so that their first OOM
        re-reads only what changed (linux/taskcache.py)."""
        for top in tops:
            try:
                n = self.backend.warm(top)
            except OOMKitError as exc:
                log.warning("oomkit: could not read the tasks of %s ahead of an OOM: %s", top, exc)
                continue
            log.debug("oomkit: %s: %d tasks read ahead of any OOM", top, n)

    def _expand(self, attach: list[Attach]) -> dict[str, Attach]:
        """Concrete cgroups for each attachment (a glob matches present cgroups;
        new ones are picked up by inotify); the first attachment wins a cgroup."""
        out: dict[str, Attach] = {}
        for spec in attach:
            for path in self._matches(spec.cgroup):
                if path in out:
                    log.warning("oomkit: %s matches both %s and %s; using %s", path,
                                out[path].cgroup, spec.cgroup, out[path].cgroup)
                    continue
                out[path] = spec
        return out

    def _matches(self, pattern: str) -> list[str]:
        parts = [p for p in pattern.split("/") if p]
        found = ["/"]
        for part in parts:
            nxt = []
            for base in found:
                if not _GLOB & set(part):
                    child = ("" if base == "/" else base) + "/" + part
                    nxt += [child] if self.fs.exists(child) else []
                    continue
                try:
                    nxt += [c for c in self.fs.children(base)
                            if fnmatch.fnmatchcase(c.rsplit("/", 1)[1], part)]
                except CgroupGone:
                    pass
            found = nxt
        return found

    def _managed_set(self, wanted: dict[str, Attach]) -> set[str]:
        """Every cgroup at or below an attachment: a limit hit there must reach us.
        The v1 root memcg cannot disable its OOM killer (EINVAL), and has no limit."""
        out = set()
        for top in wanted:
            for path in self.fs.walk(top):
                out.add(path)
        out.discard("/")
        return out

    def _watch_dirs(self, wanted: dict[str, Attach]) -> None:
        """inotify on every directory where a cgroup we care about may appear."""
        dirs = set(self.managed) | set(wanted)
        for spec in self.config.attach:
            prefix = _literal_prefix(spec.cgroup)
            dirs |= {p for p in self.fs.walk(prefix)
                     if p.count("/") < spec.cgroup.count("/")} if self.fs.exists(prefix) else set()
        have = {p for p in self.watches.values()}
        for path in sorted(dirs - have):
            try:
                wd = self.inotify.add_watch(self.fs.path(path), notify.IN_CREATE | notify.IN_DELETE
                                            | notify.IN_ONLYDIR)
                self.watches[wd] = path
            except KernelError:
                pass

    def _global_source(self, wanted: bool) -> None:
        if wanted and self.global_fd is None:
            try:
                self.global_fd = notify.psi_trigger(Path(self.config.proc) / "pressure" / "memory",
                                                    str(self.config.global_pressure))
            except KernelError as exc:
                log.warning("oomkit: no system-wide pressure trigger (%s): global OOMs are the "
                            "kernel's alone", exc)
                return
            self.register(self.global_fd, self._on_global_pressure, events=select.POLLPRI)
        elif not wanted and self.global_fd is not None:
            self.unregister(self.global_fd)
            self.global_fd = None

    # -- events ------------------------------------------------------------------------

    # -- the hub the event source reports to --------------------------------------------

    def register(self, fd: int, callback, *args, events: int = select.EPOLLIN) -> None:
        self.ep.register(fd, events)
        self.callbacks[fd] = (callback, *args)

    def unregister(self, fd: int, close: bool = True) -> None:
        self.callbacks.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        if close:
            os.close(fd)

    def changed(self) -> None:
        self.reconcile()

    def kernel_killed(self, memcg: str, victims: list[Release], note: str) -> None:
        """An OOM the kernel resolved on its own (v2): one record, and a line per victim."""
        record = {"t": self.backend.clock.now(), "level": "memcg", "memcg": memcg, "trigger": None,
                  "requested": None, "handlers": [], "resolved_by": "kernel",
                  "killed": [{"name": v.name, "pid": v.pid, "cgroup": v.cgroup, "by": "kernel"}
                             for v in victims], "limits": [], "detected_at": now_iso(),
                  "note": note}
        for v in victims:
            log.warning(release_line(v, "kernel", "/", f"memory.max of {memcg} reached"))
        if not victims:
            log.warning("oomkit: the kernel OOM-killed in %s (victim not found in /dev/kmsg)", memcg)
        self.events.write(record)

    def _on_inotify(self, mask: int) -> None:
        """A cgroup was created or removed where one we care about may be."""
        changed = False
        for wd, ev_mask, _cookie, _name in self.inotify.read():
            if ev_mask & notify.IN_IGNORED:
                self.watches.pop(wd, None)
            elif wd in self.watches and ev_mask & (notify.IN_CREATE | notify.IN_DELETE):
                changed = True
        if changed:
            self.reconcile()

    def _on_global_pressure(self, mask: int) -> None:
        """System-wide PSI trigger: with ``mem_available_min`` set, an OOM only while
        MemAvailable is below it; without, the pressure itself is the condition."""
        threshold = self.config.mem_available_min
        available = self.proc.meminfo().get("MemAvailable", 0)
        log.debug("oomkit: system-wide PSI trigger fired; MemAvailable %d", available)
        if threshold is not None and available >= threshold:
            return
        if self.hush.active("/") or self.backend.in_flight():
            return
        self.hush.start("/")
        self.handle(OOMEvent("global", "/", requested=threshold), pressure=threshold is None)

    # -- one OOM ------------------------------------------------------------------------

    def handle(self, oom: OOMEvent, pressure: bool = False) -> None:
        clock = self.backend.clock
        detected, detected_at = clock.now(), now_iso()
        if not pressure and self.backend.condition_gone(oom):
            return      # a late wake-up for an OOM already resolved: never handle one twice
        record = self.engine.handle(oom)
        if record.resolved_by == "kernel" and not record.memory_freed and self.backend.kernel_acted(oom):
            # The kernel's OOM killer took this OOM while our chain ran: its kill
            # is reported on its own (memory.events.local oom_kill), one record.
            log.info("oomkit: the kernel's OOM killer acted in %s while the chain ran", oom.memcg)
            record.contexts.clear()
            return
        if self.config.dry_run and self.version == "v1" and record.resolved_by != "kernel":
            record.note = "dry run: nothing released; handed to the kernel"
            self.engine.fall_back(oom, record)
        resolved, resolved_at = clock.now(), now_iso()
        record.extra.update(detected_at=detected_at, resolved_at=resolved_at,
                            latency_ms=round((resolved - detected) * 1000, 3),
                            snapshot=snapshot(self.backend, oom, record.contexts),
                            dry_run=self.config.dry_run)
        record.contexts.clear()
        self.events.write(record.to_dict())

    def _on_release(self, r: Release, policy: str, attached: str, reason: str) -> None:
        log.warning(release_line(r, policy, attached, reason, self.config.dry_run))

    # -- reload ----------------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: apply the config file only if it validates whole."""
        path = self.config_path
        try:
            config = load_daemon_config(path)
            for spec in config.attach:
                make_policy(spec.policy, spec.params, config.base_dir)
            self._check_reloadable(config)
        except OOMKitError as exc:
            log.error("oomkit: reload failed, keeping the running configuration: %s", exc)
            return False
        old, self.config = self.config, config
        for cg in list(self.engine.attachments):
            self.engine.detach(cg)
        self.backend.dry_run = config.dry_run
        if config.proc_cache != old.proc_cache:
            self.backend.task_cache.resize(config.proc_cache)
        self.engine = self._engine(config)
        if config.event_log != old.event_log:
            self.events.close()
            self.events = EventLog(config.event_log)
        self._reload_sources(old, config)
        self.reconcile()
        log.info("oomkit: reloaded %s: %d attachments", path, len(self.engine.attachments))
        return True

    def _check_reloadable(self, config: DaemonConfig) -> None:
        """What the running daemon cannot change without a restart."""
        fixed = {"daemon.cgroup": (config.hierarchy not in ("auto", self.version)),
                 "daemon.mount": bool(config.mount and Path(config.mount) != self.fs.mount),
                 "daemon.proc": config.proc != self.config.proc,
                 "daemon.watchdog_timeout": config.watchdog_timeout != self.config.watchdog_timeout,
                 "daemon.task_reader": config.task_reader != self.config.task_reader}
        changed = [key for key, differs in fixed.items() if differs]
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change on reload", file=config.file,
                              hint="restart oomkit to change it")

    def _reload_sources(self, old: DaemonConfig, new: DaemonConfig) -> None:
        """New v2 thresholds mean new PSI triggers and tripwires: the v2 source
        restores everything and takes it again with them (in this thread, so no
        OOM is missed meanwhile); a new system-wide trigger likewise."""
        if new.pressure != old.pressure:
            self.hush = Hush(new.pressure.window_us / 1e6, self.backend.clock)
        if self.version == "v2" and (new.pressure, new.headroom, new.tripwire) != (
                old.pressure, old.headroom, old.tripwire):
            self.backend.headroom_bytes, self.backend.tripwire = new.headroom, new.tripwire
            self.source.close()
            self.source = V2Events(self.backend, self, new)
        if new.global_pressure != old.global_pressure:
            self._global_source(False)


def _literal_prefix(pattern: str) -> str:
    parts = []
    for part in [p for p in pattern.split("/") if p]:
        if _GLOB & set(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def open_task_reader(choice: str, proc: str) -> BpfTasks | None:
    """The BPF reader for "bpf" (or a KernelError saying why it cannot load),
    for "auto" if it loads (else the /proc cache, with a line saying why), None
    for "proc".  BPF reads the running kernel: with another /proc root (a test's
    fake tree) "auto" means /proc, and "bpf" is an error."""
    if choice == "proc" or (choice == "auto" and os.path.realpath(proc) != "/proc"):
        return None
    if os.path.realpath(proc) != "/proc":
        raise ConfigError(f'task_reader "bpf" reads the running kernel, but proc is {proc}',
                          where="daemon.task_reader", hint='use "auto" or "proc", or proc = "/proc"')
    try:
        reader = BpfTasks.open()
    except KernelError as exc:
        if choice == "bpf":
            raise
        log.warning("oomkit: reading tasks from /proc (%s)", exc)
        return None
    if reader.mode == "css":
        log.info("oomkit: reading tasks with BPF, subtree by subtree (cgroup + css task iterators)")
    else:
        log.info("oomkit: reading tasks with the BPF task iterator, every task of the machine "
                 "at each read (%s)", reader.fallback)
    return reader


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: the /proc cache keeps two fds per
    task, and the soft default (often 1,024) would leave it almost no room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("oomkit: could not raise the open files limit to %s: %s", hard, exc)


def lock_memory() -> None:
    """mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): keep the daemon out of
    reclaim while the machine is short of memory.  MCL_ONFAULT (Linux 4.4+)
    locks pages as they are touched, so thread stacks are not made resident whole."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2 | 4) != 0:
        log.warning("oomkit: mlockall failed (%s); the daemon may be swapped or reclaimed",
                    os.strerror(ctypes.get_errno()))


def run_daemon(config_path: str, dry_run: bool = False) -> None:
    config = load_daemon_config(config_path)
    if dry_run:
        import dataclasses

        config = dataclasses.replace(config, dry_run=True)
    for spec in config.attach:
        make_policy(spec.policy, spec.params, config.base_dir)
    Daemon(config, config_path).run()

