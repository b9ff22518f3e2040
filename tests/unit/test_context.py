"""Section 2, the OOM context ``oc``: read-only all the way down, lazy, and
offering the fields the issue lists."""

from __future__ import annotations

import pytest

from oomkit import CgroupInfo, ContextReadOnly, OOMContext, TaskInfo, Verdict
from oomkit.backends.sim.machine import SimCgroup, SimTask
from oomkit.context import LazyMapping, LazyTasks
from oomtest_helpers import FuncPolicy, M, make_sim, task_named

TREE = dict(cgroups=[{"path": "/a", "limit": "100M", "oom_group": True}, {"path": "/a/x"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M", "cmdline": ["hog", "-v"]},
                   {"name": "small", "cgroup": "/a/x", "rss": "30M", "swap": "1M",
                    "oom_score_adj": 5, "uid": 7}],
            events=[{"at": 1.0, "task": "hog", "alloc": "20M"}])


def in_handler(fn):
    """Run ``fn(oc, k)`` inside a handler at the root; return what it returned (or raised)."""
    box = {}

    def handler(oc, k):
        try:
            box["value"] = fn(oc, k)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc
        return Verdict.PASS
    sim = make_sim(**TREE, policies={"/": FuncPolicy(handler)})
    sim.run()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("attr", ["level", "memcg", "attached_to", "nodes", "requested", "cgroups",
                                  "tasks", "memory_freed", "victims_in_flight", "new_attr"])
def test_setting_any_attribute_of_oc_raises(attr):
    def fn(oc, k):
        setattr(oc, attr, 0)
    with pytest.raises(ContextReadOnly):
        in_handler(fn)


@pytest.mark.parametrize("attr", ["level", "memory_freed"])
def test_deleting_an_attribute_of_oc_raises(attr):
    with pytest.raises(ContextReadOnly):
        in_handler(lambda oc, k: delattr(oc, attr))


@pytest.mark.parametrize("attr", ["pid", "name", "cmdline", "cgroup", "rss", "swap", "pgtables",
                                  "oom_score_adj", "uid", "start_time", "exiting", "nodes", "other"])
def test_setting_any_attribute_of_a_taskinfo_raises(attr):
    with pytest.raises(ContextReadOnly):
        in_handler(lambda oc, k: setattr(oc.tasks[0], attr, 1))


@pytest.mark.parametrize("attr", ["path", "usage", "limit", "swap", "oom_group", "children",
                                  "pids", "events", "other"])
def test_setting_any_attribute_of_a_cgroupinfo_raises(attr):
    with pytest.raises(ContextReadOnly):
        in_handler(lambda oc, k: setattr(oc.cgroups["/a"], attr, 1))


def test_context_readonly_is_also_an_attributeerror():
    assert issubclass(ContextReadOnly, AttributeError)


def test_the_collections_setattr_is_refused_too():
    with pytest.raises(ContextReadOnly):
        in_handler(lambda oc, k: setattr(oc.cgroups, "x", 1))
    with pytest.raises(ContextReadOnly):
        in_handler(lambda oc, k: setattr(oc.tasks, "x", 1))


@pytest.mark.parametrize("mutate", [
    lambda oc: oc.cgroups.__setitem__("/a", None),
    lambda oc: oc.cgroups.pop("/a"),
    lambda oc: oc.tasks.append(oc.tasks[0]),
    lambda oc: oc.tasks.__setitem__(0, None),
    lambda oc: oc.cgroups["/a"].events.__setitem__("oom", 0),
    lambda oc: oc.cgroups["/a"].children.append("/b"),
    lambda oc: oc.cgroups["/a"].pids.append(1),
    lambda oc: task_named(oc, "hog").cmdline.append("x"),
    lambda oc: oc.nodes.append(1),
], ids=["cgroups[]=", "cgroups.pop", "tasks.append", "tasks[]=", "events[]=", "children.append",
        "pids.append", "cmdline.append", "nodes.append"])
def test_containers_are_immutable(mutate):
    with pytest.raises((TypeError, AttributeError)):
        in_handler(lambda oc, k: mutate(oc))


def test_a_policy_writing_the_context_fails_and_counts_as_pass():
    def fn(oc, k):
        oc.level = "global"
        return Verdict.HANDLED
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(fn)})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "PASS" and h.error.startswith("ContextReadOnly")


def test_memory_freed_is_readable_and_follows_the_release_actions():
    def fn(oc, k):
        before = oc.memory_freed
        released = k.kill_task(task_named(oc, "small"), "t")
        return before, released, oc.memory_freed
    # /a is a memory.oom.group: the kill takes all of it, as the kernel's would (60M + 30M)
    assert in_handler(fn) == (0, 90 * M, 90 * M)


def test_memory_freed_cannot_be_written():
    def fn(oc, k):
        try:
            oc.memory_freed = 10 * M
        except ContextReadOnly:
            pass
        return oc.memory_freed
    assert in_handler(fn) == 0


def test_the_context_offers_the_documented_fields():
    def fn(oc, k):
        a, hog, small = oc.cgroups["/a"], task_named(oc, "hog"), task_named(oc, "small")
        return (oc.level, oc.memcg, oc.attached_to, oc.nodes, oc.requested, oc.victims_in_flight,
                (a.usage, a.limit, a.swap, a.oom_group, a.children, len(a.pids), a.events["oom"]),
                (hog.pid, hog.name, hog.cmdline, hog.cgroup, hog.rss, hog.exiting),
                (small.swap, small.oom_score_adj, small.uid, small.start_time, small.pgtables),
                oc.cgroups["/"].limit)
    got = in_handler(fn)
    assert got[:6] == ("memcg", "/a", "/", (), 20 * M, ())
    assert got[6] == (90 * M, 100 * M, 0, True, ("/a/x",), 1, 1)   # memory.events oom counted
    assert got[7] == (100, "hog", ("hog", "-v"), "/a", 60 * M, False)
    assert got[8] == (1 * M, 5, 7, 0.0, 0)
    assert got[9] is None                                           # unlimited


def test_scope_of_the_view_is_the_attachments_subtree():
    def fn(oc, k):
        return sorted(oc.cgroups), sorted(t.name for t in oc.tasks)
    sim = make_sim(**TREE)
    seen = {}
    sim.engine.attach("/a", FuncPolicy(lambda oc, k: seen.setdefault("a", fn(oc, k)) and Verdict.PASS))
    sim.run()
    assert seen["a"] == (["/a", "/a/x"], ["hog", "small"])


# -- laziness -------------------------------------------------------------------------

def test_lazy_collections_load_on_first_use_only():
    loads = {"keys": 0, "items": [], "tasks": 0}

    def keys():
        loads["keys"] += 1
        return ["/", "/a"]

    def load(path):
        loads["items"].append(path)
        return path.upper()

    def tasks():
        loads["tasks"] += 1
        return []
    cg, ts = LazyMapping(keys, load), LazyTasks(tasks)
    assert loads == {"keys": 0, "items": [], "tasks": 0}
    assert cg["/a"] == "/A" and cg["/a"] == "/A"
    assert loads["items"] == ["/a"]            # one load, cached, "/" never loaded
    assert len(ts) == 0 and list(ts) == [] and loads["tasks"] == 1


def test_a_policy_that_reads_one_cgroup_does_not_load_every_task(monkeypatch):
    task_loads, cgroup_loads = [], []
    orig_task, orig_cg = SimTask.info, SimCgroup.info
    monkeypatch.setattr(SimTask, "info", lambda self: task_loads.append(self.pid) or orig_task(self))
    monkeypatch.setattr(SimCgroup, "info",
                        lambda self, swap=0: cgroup_loads.append(self.path) or orig_cg(self, swap))

    def fn(oc, k):
        return Verdict.HANDLED if k.raise_limit(oc.memcg, oc.cgroups[oc.memcg].limit + 50 * M,
                                                "room") > 0 else Verdict.PASS
    sim = make_sim(**TREE, policies={"/": FuncPolicy(fn)})
    oom = sim.run().ooms[0]
    assert oom.resolved_by == "policy"
    assert task_loads == []                     # oc.tasks never built
    assert set(cgroup_loads) == {"/a"}          # only the cgroup it looked at


def test_public_types_are_exported():
    assert all(isinstance(c, type) for c in (CgroupInfo, OOMContext, TaskInfo))


# -- reading only what a policy touches (live backends) ---------------------------------

def test_in_cgroup_reads_only_that_subtree_until_the_whole_list_is_needed():
    from oomkit.context import LazyTasks, TaskInfo

    def task(pid, cgroup):
        return TaskInfo(pid, f"t{pid}", (), cgroup, 1, 0, 0, 0, 0, 0.0, False)
    everything = [task(1, "/a"), task(2, "/a/x"), task(3, "/b")]
    calls = []

    def load_all():
        calls.append("all")
        return everything

    def load_subtree(path):
        calls.append(path)
        return [t for t in everything if t.cgroup == path or t.cgroup.startswith(path + "/")]
    tasks = LazyTasks(load_all, load_subtree)
    assert [t.pid for t in tasks.in_cgroup("/a")] == [1, 2]
    assert tasks.by_pid(2).cgroup == "/a/x"          # found in the part already read
    assert tasks.loaded("/a") is not None and tasks.loaded("/b") is None
    assert calls == ["/a"]
    assert len(tasks) == 3 and calls == ["/a", "all"]
    assert [t.pid for t in tasks.in_cgroup("/b")] == [3] and calls == ["/a", "all"]


def test_a_lookup_checks_one_key_without_listing_them_all():
    from oomkit.context import LazyMapping

    listed = []
    m = LazyMapping(lambda: listed.append(1) or ["/a", "/b"], lambda k: k.upper(),
                    has=lambda k: k in ("/a", "/b"))
    assert m["/a"] == "/A" and m.get("/zzz") is None and "/b" in m
    assert m.loaded("/a") == "/A" and m.loaded("/b") is None
    assert listed == []                                # no walk for lookups
    assert list(m) == ["/a", "/b"] and listed == [1]
