"""``oomkit run``: the composition root of the live daemon.

The daemon picks the live stack of the machine's hierarchy once
(``cgroup_v1.open_stack`` or ``cgroup_v2.open_stack``: backend, event source
and their settings, as psutil picks its platform module) and never branches
on the version again.  It owns what every stack shares: one ``epoll`` wait
(:mod:`oomkit.daemon.reactor`), which cgroups are managed
(:mod:`oomkit.daemon.attachments`, matched again on inotify), the engine and
its attachments, the event log, signals, and reload.

One thread waits in ``epoll`` on the kernel's own wake-ups; nothing is
scanned while nothing happens.  :meth:`Daemon.stop` has the stack restore
every setting it changed.  SIGHUP reloads the config only if the new file
validates whole; it is read on a thread, so a slow policy import never
stalls the loop (OOMs and the watchdog's heartbeat go on).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import resource
import select
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomkit.backends.base import OOMEvent, Release
from oomkit.backends.live import LiveBackend, LiveSettings, LiveStack, QuietPeriod
from oomkit.config.check import check_policies
from oomkit.config.daemon import Attach, DaemonConfig, load_daemon_config
from oomkit.context import Level, is_within
from oomkit.daemon import attachments, status
from oomkit.daemon.eventlog import EventLog, now_iso, raise_lines, release_line
from oomkit.daemon.pressure import PolicyPressure
from oomkit.daemon.reactor import Reactor
from oomkit.daemon.restore import Restorer
from oomkit.engine.attachment import Recipe
from oomkit.engine.chain import Engine
from oomkit.errors import ConfigError, InternalError, KernelError, OOMKitError, PolicyLoadError
from oomkit.linux import notify
from oomkit.linux.bpftasks import BpfTasks
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS
from oomkit.linux.sdnotify import Notifier
from oomkit.policies import make_policy
from oomkit.policies.loader import file_modules, restore_file_modules
from oomkit.schema import OOMRecord

log = logging.getLogger("oomkit")


def live_settings(config: DaemonConfig) -> LiveSettings:
    """The typed settings a live stack is opened (and reconfigured) from."""
    return LiveSettings(dry_run=config.dry_run, proc_cache=config.proc_cache,
                        headroom=config.headroom, pressure=config.pressure,
                        rearm=config.rearm, executor=config.executor, depth=config.depth)


def open_stack(fs: CgroupFS, proc: ProcFS, settings: LiveSettings, daemon: Daemon,
               restorer: Restorer, bpf: BpfTasks | None) -> LiveStack:
    """The live stack of this hierarchy, chosen once."""
    if fs.version == "v1":
        from oomkit.backends import cgroup_v1 as module
    else:
        from oomkit.backends import cgroup_v2 as module  # type: ignore[no-redef]
    return module.open_stack(fs, proc, settings, daemon, restorer, bpf)


class Daemon:
    # A bug of oomkit's own that escapes a turn of the loop restarts the live
    # stack; more than RESTARTS of them within RESTART_WINDOW seconds stop the
    # daemon (see _contain).
    RESTARTS = 3
    RESTART_WINDOW = 60.0

    def __init__(self, config: DaemonConfig, config_path: str | None = None, *,
                 restorer: Restorer | None = None):
        self.heap = open_heap_dumps()   # first: what is built from here on is traced
        self._dump_asked = False        # SIGUSR2
        self.config, self.config_path = config, config_path
        version, mount = detect(config.hierarchy, config.mount, config.proc)
        self.fs = CgroupFS(mount, version)
        self.proc = ProcFS(config.proc)
        self.reactor = Reactor()
        self.restorer = restorer or Restorer(config.state_dir, config.watchdog_timeout)
        reader = open_task_reader(config.task_reader, config.proc)
        self.task_reader = "proc" if reader is None else f"bpf ({reader.mode})"
        self._faults: list[float] = []      # when the loop's internal errors were contained
        self.stack = open_stack(self.fs, self.proc, live_settings(config), self, self.restorer, reader)
        self.engine = self._engine(config)
        self.pressure = PolicyPressure(self)
        self.events = EventLog(config.event_log)
        self.quiet = QuietPeriod(config.pressure.window_us / 1e6 if config.pressure else 2.0,
                                 self.stack.backend.clock)
        self.inotify = notify.Inotify()
        self.watches: dict[int, str] = {}
        self.global_fd: int | None = None
        self.running = False
        self._stopped = False
        self._reload = False
        self._loading: threading.Thread | None = None
        self._loaded: queue.SimpleQueue[DaemonConfig | BaseException] = queue.SimpleQueue()
        self._said_loading = False
        self._warned: set[tuple[str, str]] = set()
        self._watchdog_pid: int | None = None
        self._spares: list = []         # a reload's policy workers, built on its thread
        self._refused: set[str] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self.book = status.StatusBook()     # what `oomkit status` shows (state_dir/status.json)
        self.attached_specs: dict[str, Attach] = {}
        self.started_at = now_iso()
        self._published = False
        self.notifier = Notifier()      # systemd's Type=notify (no-op without $NOTIFY_SOCKET)
        self.exporter = open_exporter(config)   # [daemon] metrics / metrics_textfile, else None

    @property
    def version(self) -> str:
        return self.fs.version

    @property
    def backend(self) -> LiveBackend:
        return self.stack.backend

    @property
    def managed(self) -> set[str]:
        """The cgroups the live stack watches (and, on v1, holds)."""
        return self.stack.paths()

    def _engine(self, config: DaemonConfig) -> Engine:
        engine = Engine(self.stack.backend, config.settings, on_release=self._on_release,
                        tick=self.heartbeat)
        self.stack.bind(engine)
        return engine

    # -- start and stop ---------------------------------------------------------

    def start(self) -> None:
        lock_memory()
        raise_nofile()
        if self.exporter is not None:
            self.exporter.start()       # a port in use fails the start, before anything is taken
        self.restorer.start()
        self._protect_watchdog()
        self._signals()
        self.register(self.inotify.fileno(), self._on_inotify)
        self.reconcile()
        self.running = True
        wanted = attachments.expand(self.fs, self.config.attach, self._warned)
        for path, spec in sorted(wanted.items()):
            log.debug("oomkit: %s: policy %s %s", path, spec.policy, spec.params or "")
        self._say_unmatched(wanted)
        log.info("oomkit: running on cgroup %s at %s: %d attachments, %d cgroups managed%s",
                 self.version, self.fs.mount, len(self.engine.attachments), len(self.managed),
                 " (dry run)" if self.config.dry_run else "")

    def run(self) -> None:
        try:
            self.start()
            # Only now: every configured cgroup is taken (and on v2 armed).
            self.publish()
            self.notifier.ready(self.status_line())
            self.loop()
        finally:
            self.stop()

    def loop(self) -> None:
        beat = self.config.watchdog_timeout / 4
        while self.running:
            try:
                self._turn(beat)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: contained, or the daemon stops
                self._contain(exc)

    def _turn(self, beat: float) -> None:
        timers = [t for t in (self.stack.next_timer(), self.notifier.next_ping()) if t is not None]
        self.reactor.poll(max(0.0, min([beat, *timers])))
        self.notifier.watchdog()    # from the loop only: a stuck loop stops pinging systemd
        self.heartbeat()
        self.events.retry()
        self.stack.on_timer()
        self.stack.flush()
        self._reload_step()
        if self._dump_asked:
            self._dump_heap()

    def _contain(self, exc: Exception) -> None:
        """An exception escaped a turn of the loop: a bug of oomkit's own (a policy's
        never gets here: the engine and its workers contain those).  What it may have
        left half done is the live stack's state (marks, limits, a paused v1 OOM), so
        the stack is closed, which puts back every setting it changed (on v1 a paused
        OOM goes to the kernel), and opened anew, and the cgroups are taken again; the
        engine and its policy workers stay.  A bug that keeps coming stops the daemon:
        the kernel decides, and the unit's Restart= starts a clean process."""
        self.book.internal_errors += 1
        now = self.backend.clock.now()
        self._faults = [t for t in self._faults if now - t < self.RESTART_WINDOW] + [now]
        log.error("oomkit: internal error (an exception oomkit did not expect here: please "
                  "report it with these lines): %s: %s", type(exc).__name__, exc, exc_info=exc)
        if not self.running:
            return      # stopping (SIGTERM in this turn): stop() closes the stack anyway
        if len(self._faults) > self.RESTARTS:
            raise InternalError(f"{len(self._faults)} internal errors within {self.RESTART_WINDOW:g}s: "
                                "stopping; every setting is put back and the kernel's OOM killer "
                                "decides") from exc
        try:
            self._restart_stack()
        except Exception as again:  # noqa: BLE001 - the same bug, or another: the daemon stops
            raise InternalError(f"the live stack could not be restarted after an internal error "
                                f"({type(again).__name__}: {again}): stopping") from again
        log.warning("oomkit: the live stack was restarted after the internal error: every setting "
                    "put back, %d cgroups taken again", len(self.managed))
        self.publish()

    def _restart_stack(self) -> None:
        old = self.stack
        reader, old.backend.bpf = old.backend.bpf, None     # the BPF reader goes on, in the new stack
        old.close()
        old.backend.close()
        self.stack = open_stack(self.fs, self.proc, live_settings(self.config), self, self.restorer, reader)
        self.engine.backend = self.stack.backend
        self.stack.bind(self.engine)
        self.quiet.clock = self.stack.backend.clock
        self.reconcile()

    def stop(self) -> None:
        """Put back every setting we changed, then let the watchdog go (once).
        Each step runs whatever an earlier one raised: the restorer puts back
        what a failed stack close left, and the event log keeps its records."""
        if self._stopped:
            return
        self._stopped = True
        failed = [what for what, step in self._stop_steps() if not self._stop_step(what, step)]
        if failed:
            log.error("oomkit: stopped; %s failed (above); what the daemon held was put back "
                      "by the restorer", ", ".join(failed))
        else:
            log.info("oomkit: stopped; every setting restored")

    def _stop_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.heap is not None:
            steps.append(("the heap dump", lambda: self.heap.dump(self.book.ooms)))
        steps += [("telling systemd", self.notifier.stopping),
                  ("closing the engine", self.engine.close),
                  ("closing the pressure triggers", self.pressure.close),
                  ("closing the live stack", self.stack.close),
                  ("closing the global trigger", self._close_global),
                  ("the restorer", self.restorer.close),
                  ("closing the event log", self.events.close),
                  ("closing the systemd socket", self.notifier.close)]
        if self._published:     # never another daemon's (one that held the lock first)
            steps.append(("removing the status file", lambda: status.remove_status(self.config.state_dir)))
        if self.exporter is not None:
            steps.append(("closing the metrics exporter", self.exporter.close))
        return steps

    @staticmethod
    def _stop_step(what: str, step: Callable[[], Any]) -> bool:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the steps after it must still run
            log.error("oomkit: stop: %s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
            return False
        return True

    def _close_global(self) -> None:
        if self.global_fd is not None:
            self.unregister(self.global_fd)
            self.global_fd = None

    def _signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        # SIGUSR2: a heap dump, or a line saying they are off (never its default: death)
        signal.signal(signal.SIGUSR2, self._on_signal)
        self.register(self._wake_r.fileno(), self._drain_wakeups)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR2:
            self._dump_asked = True
        else:
            self.running = False

    def _dump_heap(self) -> None:
        """SIGUSR2, from the loop (never in the signal handler)."""
        self._dump_asked = False
        if self.heap is None:
            log.warning("oomkit: SIGUSR2: heap dumps are off (start the daemon with "
                        "OOMKIT_TRACEMALLOC=DIR in its environment)")
            return
        self.heap.dump(self.book.ooms)

    def _drain_wakeups(self, mask: int) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass        # drained: the signal handlers have run

    def heartbeat(self) -> None:
        self.restorer.heartbeat()
        self._protect_watchdog()

    def _protect_watchdog(self) -> None:
        """The watchdog is never a victim; a replaced one's pid is free for others."""
        pid, protected = self.restorer.watchdog_pid, self.stack.backend.protected_pids
        if pid != self._watchdog_pid:
            protected.discard(self._watchdog_pid)
            if pid:
                protected.add(pid)
            self._watchdog_pid = pid

    # -- what the live stack reports to -------------------------------------------------

    def register(self, fd: int, callback, *args, events: int = select.EPOLLIN) -> None:
        self.reactor.register(fd, callback, *args, events=events)

    def unregister(self, fd: int, close: bool = True) -> None:
        self.reactor.unregister(fd, close)

    def changed(self) -> None:
        self.reconcile()

    def write(self, record: OOMRecord, oom: OOMEvent, *, detected_at: str | None = None,
              resolved_at: str | None = None, latency_ms: float | None = None) -> None:
        """One record in the event log, with the daemon's timing (the engine put
        in the snapshot of what its first handler saw)."""
        record.detected_at = detected_at or now_iso()
        record.resolved_at = resolved_at or record.detected_at
        record.latency_ms, record.dry_run = latency_ms, self.config.dry_run
        record.host = self.config.host or None
        self.events.write(record.to_dict())
        for line in raise_lines(record, self.config.dry_run):
            log.warning(line)       # raise_limit's own line (kills have theirs: _on_release)
        self.book.record(record)        # after the record: status shows what happened
        self.publish()

    # -- what we manage ------------------------------------------------------------

    def reconcile(self) -> None:
        """Match the attachments and managed cgroups to the tree as it is now."""
        wanted = attachments.expand(self.fs, self.config.attach, self._warned)
        managed = self._not_mine(wanted, attachments.managed_set(self.fs, wanted))
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
            try:
                self.engine.attach(path, Recipe(spec.policy, dict(spec.params), str(self.config.base_dir)),
                                   ceiling=spec.ceiling)
            except PolicyLoadError as exc:      # its worker could not build it: the kernel keeps this OOM
                log.error("oomkit: %s: policy %s not attached: %s", path, spec.policy, exc)
                continue
            log.info("oomkit: %s: attached %s", path, spec.policy)
        self.stack.sync(managed)
        self._watch_dirs(wanted)
        self._global_source("/" in wanted)
        self.pressure.sync()
        self._warm([p for p in taken if not any(q != p and is_within(p, q) for q in taken)])
        self.attached_specs = wanted
        if self.running:
            self.notifier.status(self.status_line())
            self.publish()

    def publish(self) -> None:
        """state_dir/status.json, for `oomkit status`."""
        doc = status.build_status(self)
        status.write_status(self.config.state_dir, doc)
        self._published = True
        if self.exporter is not None:
            self.exporter.update(doc)   # /metrics and the textfile: the same counts

    def status_line(self) -> str:
        """What ``systemctl status`` shows (sd_notify STATUS=)."""
        return (f"cgroup {self.version}: {len(self.engine.attachments)} attachments, "
                f"{len(self.managed)} cgroups managed" + (" (dry run)" if self.config.dry_run else ""))

    def _not_mine(self, wanted: dict, managed: set[str]) -> set[str]:
        """Never the cgroup we run in nor its ancestors: their OOM would pause or kill
        within oomkit itself (issue 10 item 8).  At start an error; later (a glob
        matching, a reload) said once and left out."""
        mine = managed & attachments.own_cgroups(self._own_cgroup())
        if not mine:
            return managed
        for path in [p for p in wanted if p in mine]:
            del wanted[path]
        text = (f"oomkit runs in {self._own_cgroup()}: refusing to manage "
                f"{', '.join(sorted(mine))} (an OOM there would pause oomkit itself)")
        if not self.running:
            raise ConfigError(text, hint="run oomkit in a cgroup no attachment covers, "
                                         "e.g. its own service in system.slice, and attach elsewhere")
        if mine - self._refused:
            log.error("oomkit: %s", text)
            self._refused |= mine
        return managed - mine

    def _own_cgroup(self) -> str | None:
        try:
            return self.proc.cgroup(os.getpid(), self.version)
        except OOMKitError as exc:
            log.debug("oomkit: our own cgroup is unknown: %s", exc)
            return None

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

    def _watch_dirs(self, wanted) -> None:
        """inotify on every directory where a cgroup we care about may appear."""
        dirs = attachments.watch_dirs(self.fs, self.managed, wanted, self.config.attach)
        have = set(self.watches.values())
        for path in sorted(dirs - have):
            try:
                wd = self.inotify.add_watch(self.fs.path(path), notify.IN_CREATE | notify.IN_DELETE
                                            | notify.IN_ONLYDIR)
                self.watches[wd] = path
            except KernelError as exc:
                log.debug("oomkit: no inotify watch on %s (gone meanwhile?): %s", path, exc)

    def _global_source(self, wanted: bool) -> None:
        if self.stack.watch_global(wanted):
            return      # the stack keeps a standing decision for global OOMs
        if wanted and self.global_fd is None:
            try:
                self.global_fd = notify.psi_trigger(Path(self.config.proc) / "pressure" / "memory",
                                                    str(self.config.global_pressure))
            except KernelError as exc:
                log.warning("oomkit: no system-wide pressure trigger (%s): global OOMs are the "
                            "kernel's alone", exc)
                return
            self.register(self.global_fd, self._on_global_pressure, events=select.POLLPRI)
        elif not wanted:
            self._close_global()

    def _on_inotify(self, mask: int) -> None:
        """A cgroup was created or removed where one we care about may be."""
        changed = False
        for wd, ev_mask, _cookie, _name in self.inotify.read():
            if ev_mask & notify.IN_Q_OVERFLOW:
                log.warning("oomkit: inotify queue overflowed: rescanning the cgroup tree")
                changed = True
            elif ev_mask & notify.IN_IGNORED:
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
        if self.quiet.active("/") or self.backend.in_flight():
            return
        self.quiet.start("/")
        self.handle(OOMEvent(Level.GLOBAL, "/", requested=threshold), pressure=threshold is None)

    # -- one OOM ------------------------------------------------------------------------

    def handle(self, oom: OOMEvent, pressure: bool = False) -> None:
        """Run the chain for this OOM, let the stack settle it, and record it."""
        clock = self.backend.clock
        detected, detected_at = clock.now(), now_iso()
        if not pressure and self.backend.condition_gone(oom):
            return      # a late wake-up for an OOM already resolved: never handle one twice
        record = self.engine.handle(oom)

        def commit() -> None:
            self.write(record, oom, detected_at=detected_at, resolved_at=now_iso(),
                       latency_ms=round((clock.now() - detected) * 1000, 3))

        # The stack owns the OOM from here: it commits the record now, later (v1's
        # safety net, off the loop), or not at all (v2: the kernel's kill won).
        self.stack.settle(oom, record, self.engine, commit)

    def _on_release(self, r: Release, policy: str, attached: str, reason: str) -> None:
        log.warning(release_line(r, policy, attached, reason, self.config.dry_run))

    # -- reload ----------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        """SIGHUP: the event log is reopened at once (logrotate's), and the config file
        is read and its policies imported on a thread: an import that is slow, or never
        ends, must not stall the loop that handles OOMs and keeps the watchdog quiet."""
        self.events.reopen()
        if self.config_path is None:
            log.error("oomkit: reload: no config file to read (started without one)")
            return
        path = self.config_path
        self.notifier.reloading()
        self._loading = threading.Thread(target=self._load_in_thread, args=(path,),
                                         name="oomkit-reload", daemon=True)
        self._loading.start()

    def _reload_step(self) -> None:
        """In the loop: apply a reload read meanwhile, start the one asked for."""
        try:
            loaded = self._loaded.get_nowait()
        except queue.Empty:
            pass
        else:
            self._loading = None
            ok = self._apply(loaded)
            self.book.reload_failures += not ok
            self.publish()
            self.notifier.ready(self.status_line() + ("" if ok else "; reload failed, kept the running config"))
        if not self._reload:
            return
        if self._loading is not None:
            if not self._said_loading:
                log.warning("oomkit: reload: the previous SIGHUP's config is still loading "
                            "(a slow policy import?); this one follows it")
                self._said_loading = True
            return
        self._reload = self._said_loading = False
        self._on_sighup()

    def _load_in_thread(self, path: str) -> None:
        try:
            loaded: DaemonConfig | BaseException = self._read_new(path)
        except BaseException as exc:  # noqa: BLE001 - nothing a config or policy does ends the daemon
            loaded = exc
        self._loaded.put(loaded)
        try:
            self._wake_w.send(b"r")      # wake the loop now, not at its next beat
        except OSError as exc:
            log.debug("oomkit: reload: the loop is not woken (%s); it applies at its next beat", exc)

    def _read_new(self, path: str) -> DaemonConfig:
        """The new config, validated whole, its policy files imported afresh (edited
        files take effect); on any failure the policy files imported before are back."""
        saved = file_modules()
        try:
            config = load_daemon_config(path)
            if self.config.dry_run_forced:
                config = dataclasses.replace(config, dry_run=True, dry_run_forced=True)
            if config.settings.runner == "inprocess":
                fresh: set[str] = set()
                for spec in config.attach:
                    make_policy(spec.policy, spec.params, config.base_dir, fresh=spec.policy not in fresh)
                    fresh.add(spec.policy)
            else:       # each worker imports its policy anew: built there, never here
                spares: list = []
                # Kept for the new engine: a slow import is not done again on the loop.
                check_policies(config.attach, str(path), config.base_dir, config.settings, keep=spares)
                self._spares = spares
            self._check_reloadable(config)
        except BaseException:
            restore_file_modules(saved)
            self._drop_spares()
            raise
        return config

    def _drop_spares(self) -> None:
        for worker in self._spares:
            worker.kill()
        self._spares = []

    def reload(self) -> bool:
        """Read and apply the config file now, on this thread (the loop's own
        SIGHUP path reads it on a thread: :meth:`_on_sighup`)."""
        if self.config_path is None:
            log.error("oomkit: reload: no config file to read (started without one)")
            return False
        try:
            loaded: DaemonConfig | BaseException = self._read_new(self.config_path)
        except BaseException as exc:  # noqa: BLE001
            loaded = exc
        return self._apply(loaded)

    def _apply(self, loaded: DaemonConfig | BaseException) -> bool:
        """Apply a config read whole, or say why the running one stays."""
        if isinstance(loaded, BaseException):
            self._drop_spares()
            why = str(loaded) if isinstance(loaded, OOMKitError) else f"{type(loaded).__name__}: {loaded}"
            log.error("oomkit: reload failed, keeping the running configuration: %s", why)
            return False
        config = loaded
        old, self.config = self.config, config
        for cg in list(self.engine.attachments):
            self.engine.detach(cg)
        self.stack.reconfigure(live_settings(config))
        self.engine.close()             # its handler thread would otherwise wait for ever
        self.engine = self._engine(config)
        if config.settings.runner != "inprocess":
            self.engine.adopt(self._spares)
        self._spares = []
        if config.event_log != old.event_log:
            self.events.reopen(config.event_log)
        if config.pressure != old.pressure and config.pressure:
            self.quiet = QuietPeriod(config.pressure.window_us / 1e6, self.backend.clock)
        if config.global_pressure != old.global_pressure:
            self._global_source(False)
        self.reconcile()
        self.engine.drop_spares()
        self._say_unmatched(self.attached_specs)
        log.info("oomkit: reloaded %s: %d attachments", self.config_path, len(self.engine.attachments))
        return True

    def _say_unmatched(self, wanted: dict[str, Attach]) -> None:
        """At start and reload: each attachment that took no cgroup (a typo starts silently
        otherwise); it is still watched for, and taken when such a cgroup is made."""
        for pattern in attachments.unmatched(self.config.attach, wanted):
            log.warning("oomkit: attachment %s matches no cgroup yet (it is taken when one is made)",
                        pattern)

    def _check_reloadable(self, config: DaemonConfig) -> None:
        """What the running daemon cannot change without a restart."""
        fixed = {"daemon.cgroup": (config.hierarchy not in ("auto", self.version)),
                 "daemon.mount": bool(config.mount and Path(config.mount) != self.fs.mount),
                 "daemon.proc": config.proc != self.config.proc,
                 "daemon.watchdog_timeout": config.watchdog_timeout != self.config.watchdog_timeout,
                 "daemon.task_reader": config.task_reader != self.config.task_reader,
                 "daemon.state_dir": config.state_dir != self.config.state_dir,
                 "daemon.metrics": config.metrics != self.config.metrics,
                 "daemon.metrics_textfile": config.metrics_textfile != self.config.metrics_textfile}
        changed = [key for key, differs in fixed.items() if differs]
        if changed:
            raise ConfigError(f"{', '.join(changed)} cannot change on reload", file=config.file,
                              hint="restart oomkit to change it")


def open_exporter(config: DaemonConfig) -> Any:
    """The metrics exporter, only if the config asks for one: prometheus_client
    (the metrics extra) is imported then and only then."""
    if config.metrics is None and config.metrics_textfile is None:
        return None
    from oomkit.daemon.metrics import Exporter

    return Exporter(config.metrics, config.metrics_textfile)


def open_heap_dumps() -> Any:
    """The heap dumps (daemon/memdebug.py) if $OOMKIT_TRACEMALLOC asks for them, else
    None: tracemalloc and the module are not even imported then."""
    if not os.environ.get("OOMKIT_TRACEMALLOC"):
        return None
    from oomkit.daemon.memdebug import HeapDumps

    return HeapDumps.from_env()


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
        config = dataclasses.replace(config, dry_run=True, dry_run_forced=True)
    check_policies(config.attach, config_path, config.base_dir, config.settings)
    Daemon(config, config_path).run()
