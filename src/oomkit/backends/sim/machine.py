"""The simulated kernel's state: RAM split into NUMA nodes, a memory cgroup
tree with hierarchical charging, and tasks.  Deterministic: no clock, no
randomness, iteration in creation order.

What it models, and where it simplifies the kernel:
* Charging is hierarchical, as ``page_counter_try_charge()`` in
  ``mm/page_counter.c``: a charge goes to the task's memcg and every
  ancestor; the OOM is raised at the *lowest* memcg whose limit it would
  cross (``mem_over_limit`` in ``try_charge_memcg()``, ``mm/memcontrol.c``).
* Page allocation comes before the memcg charge (``alloc_anon_folio()`` then
  ``mem_cgroup_charge()`` in ``mm/memory.c``), so a global or NUMA shortage
  is found before a memcg limit.
* A task's memory lives on NUMA nodes: allocations go to the allowed node
  with the most free memory first, spilling to the next.  A task bound to a
  strict subset of the nodes that cannot be satisfied raises a numa OOM
  (``CONSTRAINT_MEMORY_POLICY``); otherwise a shortage is global.
* Page cache: a cgroup holds file pages (read in by its tasks), charged to it
  and its ancestors like any page (they count in usage) and kept when the
  task that read them exits.  They are reclaimed before an OOM is declared,
  as ``try_charge_memcg()`` reclaims the memcg over its limit
  (``try_to_free_mem_cgroup_pages()``) and the page allocator the machine:
  from the cgroups of the limit that was hit (pre-order from it), or any
  cgroup for a global or numa shortage, counted in ``pgscan``/``pgsteal``.
  Every file page is clean and reclaimable (no dirty pages, no shmem).
* There is no swap-out: ``swap`` sizes only count in the OOM killer's
  ``totalpages`` and a task's badness.
* Tasks may share one address space (``clone(CLONE_VM)`` without
  ``CLONE_THREAD``, or ``vfork()``): the mm's memory is held by one task (its
  *holder*, charged to the holder's memcg), every user shows its counters (as
  ``get_mm_counter()`` does), and it is uncharged only when its last user
  exits (``mmput()``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import cast

from oomkit.backends.base import OOMEvent
from oomkit.context import CgroupInfo, Level, MemoryStat, TaskInfo, ancestors, parent_of
from oomkit.oom_kill import PAGE_SIZE, GlobalIndex

EVENT_KEYS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


@dataclass
class SimCgroup:
    path: str
    limit: int | None = None
    oom_group: bool = False
    usage: int = 0                                  # hierarchical, as memory.current
    children: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)   # cgroup.procs, in join order
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_KEYS, 0))
    file_local: dict[int, int] = field(default_factory=dict)   # its own page cache, per node
    file: int = 0                                   # page cache of the subtree (memory.stat file)
    pgscan: int = 0                                 # pages reclaimed in the subtree (all were clean,
    pgsteal: int = 0                                # so scanned = stolen)

    def info(self, swap: int = 0) -> CgroupInfo:
        return CgroupInfo(self.path, self.usage, self.limit, swap, self.oom_group,
                          tuple(self.children), tuple(self.pids), MappingProxyType(dict(self.events)),
                          MemoryStat(self.stat))

    def stat(self) -> dict[str, int]:
        """memory.stat in oomkit's vocabulary (what the simulator models)."""
        return {"anon": self.usage - self.file, "file": self.file, "shmem": 0, "file_mapped": 0,
                "swap": 0, "pgscan": self.pgscan // PAGE_SIZE, "pgsteal": self.pgsteal // PAGE_SIZE,
                "workingset_refault": 0}


@dataclass
class SimTask:
    pid: int
    name: str
    cgroup: str
    oom_score_adj: int = 0
    swap: int = 0
    pgtables: int = 0
    uid: int = 0
    cmdline: tuple[str, ...] = ()
    start_time: float = 0.0
    nodes: tuple[int, ...] | None = None
    exit_delay: float = 0.0
    state: str = "running"                          # running, exiting, dead
    node_rss: dict[int, int] = field(default_factory=dict)
    rss: int = 0                                    # sum of node_rss, kept by Machine._account
    mm: SimTask | None = field(default=None, repr=False, compare=False)   # holder of its shared mm
    mm_users: dict[int, SimTask] = field(default_factory=dict, repr=False, compare=False)  # a holder's other users
    _info: TaskInfo | None = None

    def info(self) -> TaskInfo:
        if self._info is None:
            m = self.mm or self         # an mm's counters are the same for all its users
            self._info = TaskInfo(self.pid, self.name, self.cmdline or (self.name,), self.cgroup,
                                  m.rss, m.swap, m.pgtables, self.oom_score_adj, self.uid,
                                  self.start_time, self.state != "running", self.nodes)
        return self._info


class Machine:
    """RAM, NUMA nodes, memory cgroups and tasks; charging and OOM detection."""

    def __init__(self, memory: int, swap: int = 0, numa_nodes: int = 1):
        self.memory, self.swap, self.numa_nodes = memory, swap, numa_nodes
        per_node, rest = divmod(memory, numa_nodes)
        self.node_size = [per_node + (1 if n < rest else 0) for n in range(numa_nodes)]
        self.node_used = [0] * numa_nodes
        self.cgroups: dict[str, SimCgroup] = {"/": SimCgroup("/")}
        self.tasks: dict[int, SimTask] = {}          # live and exiting, in pid order
        # Caches for the hot paths (every event charges; every OOM snapshots):
        # each cgroup's chain of SimCgroups up to the root, subtrees in
        # pre-order, and the tasks' TaskInfo snapshots (in self.tasks order),
        # rebuilt only for the tasks that changed since the last snapshot.
        self._chains: dict[str, tuple[SimCgroup, ...]] = {"/": (self.cgroups["/"],)}
        self._subtrees: dict[str, tuple[str, ...]] = {}
        self._infos: dict[int, TaskInfo | None] = {}
        self._stale: set[int] = set()
        self._joined: dict[int, int] = {}            # pid -> when it was added (self.tasks order)
        self._join_count = itertools.count()
        # The kernel's choice for a global OOM, kept with the snapshots (totalpages
        # of a global OOM is fixed: RAM + swap).
        self.global_index = GlobalIndex(memory // PAGE_SIZE + swap // PAGE_SIZE)

    @property
    def used(self) -> int:
        return sum(self.node_used)

    # -- tree -------------------------------------------------------------------

    def add_cgroup(self, path: str, limit: int | None, oom_group: bool) -> SimCgroup:
        cg = SimCgroup(path, limit, oom_group)
        parent = parent_of(path)
        assert parent is not None, "the root cgroup is the machine's own"
        self.cgroups[path] = cg
        self.cgroups[parent].children.append(path)
        self._chains[path] = (cg, *self._chains[parent])
        self._subtrees.clear()
        return cg

    def add_task(self, task: SimTask) -> SimTask:
        self.tasks[task.pid] = task
        self.cgroups[task.cgroup].pids.append(task.pid)
        self._infos[task.pid] = None
        self._stale.add(task.pid)
        self._joined[task.pid] = next(self._join_count)
        return task

    def share_mm(self, task: SimTask, other: SimTask) -> None:
        """``task`` uses ``other``'s address space from now on (it holds none of its own)."""
        holder = other.mm or other
        task.mm = holder
        holder.mm_users[task.pid] = task
        self._changed(task)

    def chain(self, path: str) -> tuple[SimCgroup, ...]:
        """``path``'s cgroup, then each ancestor up to the root (as ``ancestors()``)."""
        return self._chains[path]

    # -- charging ---------------------------------------------------------------

    def check(self, task: SimTask, amount: int) -> OOMEvent | None:
        """The OOM this allocation would raise, or None if it fits."""
        name, task = task.name, task.mm or task     # a shared mm is charged to its holder
        if self.numa_nodes == 1 and (task.nodes is None or 0 in task.nodes):
            # one node, and the task may use it: the general case below, short
            if amount > self.node_size[0] - self.node_used[0]:
                return OOMEvent(Level.GLOBAL, "/", (), amount, name)
        else:
            nodes = self.allowed_nodes(task)
            if amount > sum(self.node_size[n] - self.node_used[n] for n in nodes):
                constrained = len(nodes) < self.numa_nodes
                return OOMEvent(Level.NUMA if constrained else Level.GLOBAL, "/",
                                tuple(nodes) if constrained else (), amount, name)
        for cg in self._chains[task.cgroup]:
            limit = cg.limit
            if limit is not None and cg.usage + amount > limit:
                return OOMEvent(Level.MEMCG, cg.path, (), amount, name)
        return None

    def allowed_nodes(self, task: SimTask) -> list[int]:
        if task.nodes is None:
            return list(range(self.numa_nodes))
        return [n for n in task.nodes if n < self.numa_nodes]

    def charge(self, task: SimTask, amount: int) -> None:
        """Place ``amount`` bytes for ``task`` (the caller checked it fits)."""
        task = task.mm or task
        if self.numa_nodes == 1 and (task.nodes is None or 0 in task.nodes):
            # one node: the loop below, short
            take = min(amount, self.node_size[0] - self.node_used[0])
            if take > 0:
                self.node_used[0] += take
                task.node_rss[0] = task.node_rss.get(0, 0) + take
                self._account(task, take)
            else:
                self._account(task, 0)
            return
        left = amount
        for n in sorted(self.allowed_nodes(task), key=lambda n: self.node_used[n] - self.node_size[n]):
            take = min(left, self.node_size[n] - self.node_used[n])
            if take > 0:
                self.node_used[n] += take
                task.node_rss[n] = task.node_rss.get(n, 0) + take
                left -= take
            if not left:
                break
        self._account(task, amount - left)

    def uncharge(self, task: SimTask, amount: int) -> int:
        """Give back up to ``amount`` bytes of ``task``'s memory; returns how much."""
        task = task.mm or task
        left = min(amount, task.rss)
        done = left
        if self.numa_nodes == 1:
            # one node: the loop below, short
            if left:
                task.node_rss[0] -= left
                self.node_used[0] -= left
            self._account(task, -done)
            return done
        for n in sorted(task.node_rss, reverse=True):
            take = min(left, task.node_rss[n])
            task.node_rss[n] -= take
            self.node_used[n] -= take
            left -= take
        self._account(task, -done)
        return done

    # -- page cache -----------------------------------------------------------------

    def add_file(self, path: str, amount: int, nodes: tuple[int, ...] | None = None) -> None:
        """``amount`` bytes of page cache read in for ``path`` (the caller checked it
        fits): on the allowed nodes with the most free memory first, as ``charge``."""
        cg, left = self.cgroups[path], amount
        allowed = list(nodes) if nodes is not None else list(range(self.numa_nodes))
        for n in sorted(allowed, key=lambda n: self.node_used[n] - self.node_size[n]):
            take = min(left, self.node_size[n] - self.node_used[n])
            if take > 0:
                self.node_used[n] += take
                cg.file_local[n] = cg.file_local.get(n, 0) + take
                left -= take
        done = amount - left
        for c in self._chains[path]:
            c.usage += done
            c.file += done

    def reclaim(self, oom: OOMEvent) -> int:
        """Reclaim page cache towards fitting the failing request (what the
        kernel does before it declares this OOM); returns the bytes reclaimed."""
        need = oom.requested or 0
        if oom.level == Level.MEMCG:
            cg = self.cgroups[oom.memcg]
            assert cg.limit is not None
            need, scope, nodes = cg.usage + need - cg.limit, oom.memcg, None
        else:
            nodes = oom.nodes if oom.level == Level.NUMA else tuple(range(self.numa_nodes))
            need -= sum(self.node_size[n] - self.node_used[n] for n in nodes)
            scope = "/"
        got = 0
        for path in self.subtree(scope):
            if got >= need:
                break
            got += self._drop_file(path, need - got, nodes)
        return got

    def _drop_file(self, path: str, amount: int, nodes) -> int:
        cg, done = self.cgroups[path], 0
        for n in sorted(cg.file_local):
            if nodes is not None and n not in nodes:
                continue
            take = min(amount - done, cg.file_local[n])
            cg.file_local[n] -= take
            self.node_used[n] -= take
            done += take
            if done >= amount:
                break
        for c in self._chains[path]:
            c.usage -= done
            c.file -= done
            c.pgscan += done
            c.pgsteal += done
        return done

    def _account(self, task: SimTask, delta: int) -> None:
        task.rss += delta
        for cg in self._chains[task.cgroup]:
            cg.usage += delta
        self._changed(task)

    def _changed(self, task: SimTask) -> None:
        """``task``'s TaskInfo snapshot is out of date (and its mm's other users')."""
        task._info = None
        if task.pid in self._infos:
            self._stale.add(task.pid)
        if task.mm_users:
            for user in task.mm_users.values():
                self._changed(user)

    # -- snapshots (what the OOM context shows) -----------------------------------

    def refresh(self) -> None:
        """Bring the snapshots (and the global index) up to date with the tasks."""
        if self._stale:
            tasks, infos, update = self.tasks, self._infos, self.global_index.update
            for pid in self._stale:
                task = tasks.get(pid)
                if task is not None:
                    info = infos[pid] = task.info()
                    update(info)
            self._stale.clear()

    def snapshot(self) -> list[TaskInfo]:
        """TaskInfo of every task (live and exiting), in ``self.tasks`` order."""
        self.refresh()
        return list(cast("dict[int, TaskInfo]", self._infos).values())    # refreshed: no None

    def snapshot_of(self, scope: str) -> list[TaskInfo]:
        """TaskInfo of the tasks of ``scope``'s subtree, in ``self.tasks`` order."""
        if scope == "/":
            return self.snapshot()
        infos = self.snapshot()
        members = {pid for path in self.subtree(scope) for pid in self.cgroups[path].pids}
        if len(members) * 8 > len(infos):
            return [i for i in infos if i.pid in members]
        by_pid = cast("dict[int, TaskInfo]", self._infos)
        return [by_pid[pid] for pid in sorted(members, key=self._joined.__getitem__)]

    def forget_snapshots(self) -> None:
        """Rebuild every TaskInfo at the next snapshot (benchmarks: the cold case)."""
        for task in self.tasks.values():
            task._info = None
        self._stale.update(self._infos)

    # -- lifecycle ----------------------------------------------------------------

    def mark_exiting(self, task: SimTask) -> None:
        task.state = "exiting"
        self._changed(task)

    def reap(self, task: SimTask) -> None:
        """The task is gone: it leaves its cgroup, and its memory is uncharged
        if it was the last user of its mm (``mmput()``)."""
        holder = task.mm or task
        holder.mm_users.pop(task.pid, None)
        if not holder.mm_users and (holder is task or holder.state == "dead"):
            self.uncharge(holder, holder.rss)
        task.state = "dead"
        task._info = None
        self.tasks.pop(task.pid, None)
        self._infos.pop(task.pid, None)
        self._stale.discard(task.pid)
        self.global_index.remove(task.pid)
        pids = self.cgroups[task.cgroup].pids
        if task.pid in pids:
            pids.remove(task.pid)

    def count_event(self, path: str, key: str) -> None:
        """memory.events counters are hierarchical (cgroup v2, without memory_localevents)."""
        for cg in self._chains[path]:
            cg.events[key] += 1

    # -- the OOM condition ----------------------------------------------------------

    def fits(self, oom: OOMEvent) -> bool:
        """Would the failing request fit now? (the OOM condition is gone)"""
        need = oom.requested or 0
        if oom.level == "memcg":
            cg = self.cgroups.get(oom.memcg)
            return cg is None or cg.limit is None or cg.usage + need <= cg.limit
        nodes = oom.nodes if oom.level == "numa" else range(self.numa_nodes)
        return sum(self.node_size[n] - self.node_used[n] for n in nodes) >= need

    def headroom(self, path: str) -> int:
        """How much more ``path`` may take before an ancestor's limit or RAM binds."""
        room = self.memory - self.used
        for p in ancestors(parent_of(path) or "/"):
            cg = self.cgroups[p]
            if cg.limit is not None:
                room = min(room, cg.limit - cg.usage)
        return max(0, room)

    def subtree(self, top: str) -> list[str]:
        """``top`` and every cgroup below it, in pre-order (cached until the tree changes)."""
        cached = self._subtrees.get(top)
        if cached is None:
            out, stack = [], [top]
            while stack:
                path = stack.pop()
                out.append(path)
                stack.extend(reversed(self.cgroups[path].children))
            cached = self._subtrees[top] = tuple(out)
        return list(cached)
