"""``oomkit run``: the engine on real cgroups, event-driven.

One thread waits in ``epoll`` on the kernel's own wake-ups: v1 OOM eventfds,
v2 PSI triggers and ``memory.events`` changes, the system-wide PSI trigger,
inotify for cgroups created or removed, and signals.  Nothing is scanned
while nothing happens; the only timer is the watchdog's heartbeat.

Lifecycle: :meth:`Daemon.start` takes the configured cgroups (v1:
``oom_kill_disable 1`` and an eventfd each, every change told to the
watchdog first); :meth:`Daemon.stop` restores every setting it changed.
SIGHUP reloads the config only if the new file validates whole.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from oomkit.backends.base import OOMEvent, Release
from oomkit.backends.live import CgroupV1Backend, CgroupV2Backend, LiveBackend
from oomkit.config.daemon import Attach, DaemonConfig, load_daemon_config
from oomkit.context import ancestors, is_within, parent_of
from oomkit.daemon import watchdog as watchdog_module
from oomkit.daemon.eventlog import EventLog, now_iso, release_line
from oomkit.daemon.snapshot import snapshot
from oomkit.engine.chain import Engine
from oomkit.errors import CgroupGone, ConfigError, KernelError, OOMKitError
from oomkit.linux import notify
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS
from oomkit.policies import make_policy

log = logging.getLogger("oomkit")

_GLOB = set("*?[")


@dataclass
class Managed:
    """One cgroup we took: what we registered and what to put back."""

    path: str
    fds: list[int] = field(default_factory=list)
    eventfd: notify.OOMEventFD | None = None
    restore: dict[str, str] = field(default_factory=dict)     # file -> original text


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
                                        dry_run=config.dry_run, tick=self.heartbeat, **extra)
        self.engine = self._engine(config)
        self.events = EventLog(config.event_log)
        self.ep = select.epoll()
        self.callbacks: dict[int, tuple] = {}
        self.managed: dict[str, Managed] = {}
        self.inotify = notify.Inotify()
        self.watches: dict[int, str] = {}
        self.global_fd: int | None = None
        self.running = False
        self._notified: set[str] = set()
        self._held: set[str] = set()
        self._reload = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._last_events: dict[str, dict[str, int]] = {}
        self._last_local: dict[str, int] = {}       # v2: memory.events.local oom_kill per cgroup
        self._quiet: dict[str, tuple[float, bool]] = {}   # v2: cgroup -> (end of its post-OOM
                                                          # pressure window, the kernel's kill?)
        self._kmsg_backlog: list[str] = []          # v2: OOM lines read but not yet reported
        self._kmsg_fd: int | None = None

    @property
    def version(self) -> str:
        return self.fs.version

    def _engine(self, config: DaemonConfig) -> Engine:
        return Engine(self.backend, config.settings, on_release=self._on_release,
                      tick=self.heartbeat)

    # -- start and stop ---------------------------------------------------------

    def start(self) -> None:
        lock_memory()
        self._signals()
        self._register(self.inotify.fileno(), self._on_inotify)
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
            self._handle_notified()
            if self._reload:
                self._reload = False
                self.reload()

    def stop(self) -> None:
        """Put back every setting we changed, then let the watchdog go."""
        for path in list(self.managed):
            self._release(path)
        if self.global_fd is not None:
            self._unregister(self.global_fd)
            self.global_fd = None
        self.backend.close()
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None
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
        self._register(self._wake_r.fileno(), self._drain_wakeups)

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
        for path in [p for p in self.engine.attachments if p not in wanted]:
            self.engine.cgroup_offline(path)
        for path, spec in wanted.items():
            if path not in self.engine.attachments:
                self.engine.attach(path, make_policy(spec.policy, spec.params, self.config.base_dir),
                                   ceiling=spec.ceiling)
        managed = self._managed_set(wanted)
        for path in [p for p in self.managed if p not in managed]:
            self._release(path)
        self._held = set(self.managed)      # v1: held before this pass (see _take_v1)
        for path in sorted(managed - set(self.managed)):
            self._take(path)
        self._watch_dirs(wanted)
        self._global_source("/" in wanted)

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

    def _take(self, path: str) -> None:
        m = Managed(path)
        try:
            if self.version == "v1":
                self._take_v1(m)
            else:
                self._take_v2(m)
        except CgroupGone:
            self._undo(m)
            return
        self.managed[path] = m

    def _take_v1(self, m: Managed) -> None:
        # Tell the watchdog first: from the write on, a paused OOM must not outlive us.
        control = str(self.fs.path(m.path, "memory.oom_control"))
        original = self.fs.oom_control(m.path)["oom_kill_disable"]
        # v1 copies oom_kill_disable from the parent at mkdir: in a memcg created
        # under one we already held, that 1 is ours, and the original is the parent's.
        parent = self.managed.get(parent_of(m.path) or "")
        if parent is not None and parent.path in self._held and "memory.oom_control" in parent.restore:
            original = parent.restore["memory.oom_control"] == "1"
        if not original:
            self.watchdog.send("+" + control)
            m.restore["memory.oom_control"] = "0"
            self.fs.set_oom_kill_disable(m.path, True)
        m.eventfd = notify.register_oom_eventfd(self.fs, m.path)
        self._register(m.eventfd.fileno(), self._on_oom_eventfd, m.path)

    def _take_v2(self, m: Managed) -> None:
        # /dev/kmsg is read from where it stood when we started watching: a kernel
        # kill's "Killed process" line is written before we wake for it.
        self._kmsg()
        self._last_events[m.path] = self.fs.events(m.path)
        self._last_local[m.path] = self.fs.events(m.path, local=True).get("oom_kill", 0)
        try:
            fd = notify.psi_trigger(self.fs.path(m.path, "memory.pressure"), str(self.config.pressure))
        except KernelError as exc:
            if not self.fs.exists(m.path):
                raise CgroupGone(str(exc)) from exc
            # PSI off (psi=0, CONFIG_PSI_DEFAULT_DISABLED) or a window the kernel refuses:
            # memory.events and the tripwire still wake us.
            log.warning("oomkit: no PSI trigger on %s (%s): memory.events only", m.path, exc)
        else:
            m.fds.append(fd)
            self._register(fd, self._on_pressure, m.path, events=select.EPOLLPRI)
        wd = self.inotify.add_watch(self.fs.path(m.path, "memory.events"), notify.IN_MODIFY)
        self.watches[wd] = m.path + "//events"
        limit = self.fs.limit(m.path)
        if self.config.tripwire and self.config.headroom and limit is not None:
            m.restore["memory.high"] = self.fs.read(m.path, "memory.high").strip()
            self.fs.write(m.path, "memory.high", str(max(0, limit - self.config.headroom)))

    def _release(self, path: str) -> None:
        m = self.managed.pop(path, None)
        if m is not None:
            self._undo(m)

    def _undo(self, m: Managed) -> None:
        if m.eventfd is not None:
            self._unregister(m.eventfd.fileno(), close=False)
            m.eventfd.close()
        for fd in m.fds:
            self._unregister(fd)
        for name, text in m.restore.items():
            try:
                self.fs.write(m.path, name, text)
            except KernelError:
                pass        # the cgroup is gone with its settings
        if "memory.oom_control" in m.restore and self.watchdog:
            try:
                self.watchdog.send("-" + str(self.fs.path(m.path, "memory.oom_control")))
            except KernelError:
                pass    # the watchdog is gone: the setting is restored, go on with the rest

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
            self._register(self.global_fd, self._on_global_pressure, events=select.POLLPRI)
        elif not wanted and self.global_fd is not None:
            self._unregister(self.global_fd)
            self.global_fd = None

    # -- events ------------------------------------------------------------------------

    def _register(self, fd: int, callback, *args, events: int = select.EPOLLIN) -> None:
        self.ep.register(fd, events)
        self.callbacks[fd] = (callback, *args)

    def _unregister(self, fd: int, close: bool = True) -> None:
        self.callbacks.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        if close:
            os.close(fd)

    def _on_oom_eventfd(self, path: str, mask: int) -> None:
        m = self.managed.get(path)
        if m is None or m.eventfd is None:
            return
        try:
            m.eventfd.read()
            m.eventfd.under_oom()
        except CgroupGone:
            self._release(path)     # the eventfd fires once more when its cgroup goes
            self.reconcile()
            return
        self._notified.add(path)

    def _handle_notified(self) -> None:
        """v1 wakes the eventfd of the OOMing memcg and of every descendant, all
        reading under_oom 1: the OOMing one is the topmost under OOM."""
        if not self._notified:
            return
        tops = set()
        for path in self._notified:
            top = self._topmost_under_oom(path)
            if top is not None:
                tops.add(top)
        self._notified.clear()
        for top in sorted(tops):
            # A storm wakes us for many memcgs at once: the watchdog must hear from
            # us between OOMs, or it hands every paused memcg back to the kernel.
            self.heartbeat()
            self.handle(OOMEvent("memcg", top))

    def _topmost_under_oom(self, path: str) -> str | None:
        top = None
        for p in ancestors(path):
            if p not in self.managed:
                break
            try:
                if self.fs.oom_control(p)["under_oom"]:
                    top = p
            except CgroupGone:
                break
        return top

    def _on_pressure(self, path: str, mask: int) -> None:
        log.debug("oomkit: PSI trigger fired on %s/memory.pressure", path)
        self._check_v2(path, pressure=True)

    def _check_v2(self, path: str, pressure: bool = False) -> None:
        """The OOM condition on v2: usage within the headroom of a memory.max at or
        above ``path``, or (only when the PSI trigger woke us) pressure over its
        threshold at ``path``.  A memory.events change is not pressure."""
        for p in ancestors(path):
            if p not in self.managed:
                break
            try:
                limit = self.fs.limit(p)
                if limit is not None and self.fs.usage(p) + self.backend.margin(OOMEvent("memcg", p)) > limit:
                    if self.backend.in_flight() or self._hushed(p, kernel=True):
                        log.debug("oomkit: %s near its limit while victims exit; waiting", p)
                        return
                    self._hush(p)
                    self.handle(OOMEvent("memcg", p))
                    return
            except CgroupGone:
                return
        if not pressure or path not in self.managed:
            return
        # The PSI window still holds the stalls of an OOM just handled (ours or the
        # kernel's), and a cgroup's pressure includes its descendants': neither is a
        # new OOM.  Nor is pressure while our victims are still exiting.
        if self._hushed(path) or self.backend.in_flight():
            log.debug("oomkit: pressure at %s ignored: an OOM there was just handled", path)
            return
        self._hush(path)
        self.handle(OOMEvent("memcg", path), pressure=True)

    def _hush(self, path: str, kernel: bool = False) -> None:
        """No pressure-only OOM at, above or below ``path`` for one PSI window; after
        the kernel's own kill (its victim is no task of ours to wait for, and looks
        alive in /proc while it exits) no limit-driven one either."""
        self._quiet[path] = (self.backend.clock.now() + self.config.pressure.window_us / 1e6, kernel)

    def _hushed(self, path: str, kernel: bool = False) -> bool:
        now = self.backend.clock.now()
        for p, (until, by_kernel) in list(self._quiet.items()):
            if until <= now:
                del self._quiet[p]
            elif (by_kernel or not kernel) and (is_within(p, path) or is_within(path, p)):
                return True
        return False

    def _on_inotify(self, mask: int) -> None:
        changed = False
        for wd, ev_mask, _cookie, _name in self.inotify.read():
            target = self.watches.get(wd)
            if target is None:
                continue
            if ev_mask & notify.IN_IGNORED:
                self.watches.pop(wd, None)
            elif target.endswith("//events"):
                self._on_events(target[:-len("//events")])
            elif ev_mask & (notify.IN_CREATE | notify.IN_DELETE):
                changed = True
        if changed:
            self.reconcile()

    def _on_events(self, path: str) -> None:
        """memory.events changed (v2): report kernel OOM kills; re-check the condition."""
        try:
            now = self.fs.events(path)
            local = self.fs.events(path, local=True).get("oom_kill", 0)
        except CgroupGone:
            return
        before = self._last_events.get(path, {})
        self._last_events[path] = now
        killed_here = local - self._last_local.get(path, 0)
        self._last_local[path] = local
        log.debug("oomkit: memory.events changed at %s: %s", path, now)
        # memory.events is hierarchical; memory.events.local counts a kill only in
        # the victim's own cgroup, so each kernel kill is reported once, there.
        if killed_here > 0:
            self._report_kernel_kill(path, killed_here)
            return      # its memory is on its way back: no condition to re-check now
        if now.get("max", 0) > before.get("max", 0) or now.get("high", 0) > before.get("high", 0):
            self._check_v2(path)

    def _report_kernel_kill(self, path: str, count: int) -> None:
        """The kernel OOM-killed in ``path`` (kernel 6.1 may count one kill twice):
        one record, with the victims from /dev/kmsg."""
        self._hush(path, kernel=True)
        killed, oom_memcg = self._kernel_victims(path)
        record = {"t": self.backend.clock.now(), "level": "memcg", "memcg": oom_memcg or path,
                  "trigger": None, "requested": None, "handlers": [], "resolved_by": "kernel",
                  "killed": [{"name": v.name, "pid": v.pid, "cgroup": v.cgroup, "by": "kernel"}
                             for v in killed], "limits": [], "detected_at": now_iso(),
                  "note": f"the kernel's OOM killer acted in {path} ({count} oom_kill in "
                          "memory.events.local)"}
        for v in killed:
            log.warning(release_line(v, "kernel", "/", f"memory.max of {oom_memcg or path} reached"))
        if not killed:
            log.warning("oomkit: the kernel OOM-killed in %s (victim not found in /dev/kmsg)", path)
        self.events.write(record)

    def _kernel_victims(self, path: str, wait: float = 0.5) -> tuple[list[Release], str | None]:
        """The kernel's victims in ``path`` from /dev/kmsg and the memcg whose limit
        was hit; the log lines may trail the counter a little, so wait up to ``wait``."""
        from oomkit.backends.live import victims_from_kmsg
        from oomkit.linux import parse

        fd = self._kmsg()
        if fd is None:
            return [], None
        clock, records = self.backend.clock, self._kmsg_backlog
        deadline = clock.now() + wait
        while True:
            records += [r for r in notify.read_kmsg(fd) if parse.kmsg_oom_kill(r)]
            victims = [v for v in victims_from_kmsg(records) if is_within(v.cgroup, path)]
            if victims or clock.now() >= deadline:
                break
            self.heartbeat()
            clock.sleep(0.01)
        parsed = [(r, parse.kmsg_oom_kill(r)) for r in records]
        memcgs = {f["pid"]: f.get("memcg") for _r, f in parsed if f["kind"] == "summary"}
        # Lines of kills elsewhere (a sibling's, reported next) stay for their report.
        taken = {v.pid for v in victims}
        self._kmsg_backlog = [r for r, f in parsed if f.get("pid") not in taken][-200:]
        return victims, next((memcgs[v.pid] for v in victims if memcgs.get(v.pid)), None)

    def _kmsg(self) -> int | None:
        if self._kmsg_fd is None:
            try:
                self._kmsg_fd = notify.open_kmsg()
            except KernelError:
                return None
        return self._kmsg_fd

    def _on_global_pressure(self, mask: int) -> None:
        """System-wide PSI trigger: with ``mem_available_min`` set, an OOM only while
        MemAvailable is below it; without, the pressure itself is the condition."""
        threshold = self.config.mem_available_min
        available = self.proc.meminfo().get("MemAvailable", 0)
        log.debug("oomkit: system-wide PSI trigger fired; MemAvailable %d", available)
        if threshold is not None and available >= threshold:
            return
        if self._hushed("/") or self.backend.in_flight():
            return
        self._hush("/")
        self.handle(OOMEvent("global", "/", requested=threshold), pressure=threshold is None)

    # -- one OOM ------------------------------------------------------------------------

    def handle(self, oom: OOMEvent, pressure: bool = False) -> None:
        clock = self.backend.clock
        detected, detected_at = clock.now(), now_iso()
        if not pressure and self.backend.condition_gone(oom):
            return      # a late wake-up for an OOM already resolved: never handle one twice
        before = snapshot(self.backend, oom)
        record = self.engine.handle(oom)
        if self.config.dry_run and self.version == "v1" and record.resolved_by != "kernel":
            record.note = "dry run: nothing released; handed to the kernel"
            self.engine.fall_back(oom, record)
        resolved = clock.now()
        record.extra.update(detected_at=detected_at, resolved_at=now_iso(),
                            latency_ms=round((resolved - detected) * 1000, 3), snapshot=before,
                            dry_run=self.config.dry_run)
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
            if config.hierarchy not in ("auto", self.version) or (config.mount and Path(config.mount) != self.fs.mount):
                raise ConfigError("the hierarchy or mount cannot change on reload; restart oomkit",
                                  file=path)
        except OOMKitError as exc:
            log.error("oomkit: reload failed, keeping the running configuration: %s", exc)
            return False
        for cg in list(self.engine.attachments):
            self.engine.detach(cg)
        self.config = config
        self.backend.dry_run = config.dry_run
        self.engine = self._engine(config)
        self.reconcile()
        log.info("oomkit: reloaded %s: %d attachments", path, len(self.engine.attachments))
        return True


def _literal_prefix(pattern: str) -> str:
    parts = []
    for part in [p for p in pattern.split("/") if p]:
        if _GLOB & set(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


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

