"""Issue 11: hostile and buggy policies in the simulator, each in its worker.

Every case ends with the rule intact: no relief that did not happen, no kill
outside the attachment's subtree, ejection after 3 failures, this process
(the "daemon") alive, and the OOM resolved by the kernel when the policy
could not.  Policies are files attached by name, as a user's would be, so
they run in workers (policy *instances* handed to ``engine.attach`` run in
process: tests that read a closure's state back, e.g. ``FuncPolicy.calls``).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time

import pytest

from oomkit.backends.base import OOMEvent
from oomkit.backends.sim import Simulator
from oomkit.config.scenario import resolve
from oomkit.errors import ConfigError
from oomtest_helpers import M, scenario_dict

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}, {"path": "/b", "limit": "100M"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a", "rss": "30M"},
                   {"name": "outsider", "cgroup": "/b", "rss": "10M"}])
OOM_A = OOMEvent("memcg", "/a", requested=20 * M, trigger="hog")

HEAD = "import os, re, sys\nfrom oomkit import OOMPolicy, Verdict\n"


def sim_with(tmp_path, body: str, *, engine: dict | None = None, runner: str | None = None) -> Simulator:
    (tmp_path / "hostile.py").write_text(HEAD + textwrap.dedent(body))
    data = scenario_dict(**TREE, attach=[{"cgroup": "/a", "policy": "hostile.py:P"}],
                         engine={"handler_deadline": "200ms", **(engine or {})})
    return Simulator(resolve(data, str(tmp_path / "s.toml"), tmp_path), runner=runner)


def three_ooms(sim: Simulator):
    return [sim.engine.handle(OOM_A) for _ in range(3)]


def assert_failed_and_ejected(records, error_part: str):
    for r in records:
        h = r.handlers[0]
        assert h.verdict == "PASS" and h.freed == 0
        assert error_part in h.error, h.error
        assert r.resolved_by == "kernel"                    # the OOM still ends
        assert all(k.by == "kernel" for k in r.killed)      # nothing the policy did counts
    assert records[2].ejected == ["/a"]


def test_a_sound_policy_runs_in_an_unprivileged_confined_worker(tmp_path):
    sim = sim_with(tmp_path, """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
                print("seen", os.getpid(), status["Uid"].split()[0], status["CapEff"].strip(),
                      status["NoNewPrivs"].strip(), status["Seccomp"].strip())
                hog = next(t for t in oc.tasks if t.name == "hog")
                return Verdict.HANDLED if k.kill_task(hog, "largest") > 0 else Verdict.PASS
    """)
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        r = sim.engine.handle(OOM_A)
    assert r.resolved_by == "policy" and r.handlers[0].freed == 60 * M   # the daemon's own count
    _, pid, uid, caps, nnp, seccomp = out.getvalue().split()
    assert int(pid) != os.getpid()
    assert (nnp, seccomp) == ("1", "2")
    if os.geteuid() == 0:
        assert uid == "65534" and caps == "0000000000000000"


def test_faking_progress_through_k_or_oc_counts_for_nothing(tmp_path):
    sim = sim_with(tmp_path, """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                for name in dir(k):
                    try:
                        setattr(k, name, lambda *a, **kw: 10**9)
                    except Exception:
                        pass
                try:
                    object.__setattr__(oc, "_freed", lambda: 10**9)
                except Exception:
                    pass
                k.kill_task(1, "fake")          # the fake method: no request reaches the daemon
                return Verdict.HANDLED
    """)
    r = sim.engine.handle(OOM_A)
    h = r.handlers[0]
    assert h.verdict == "PASS" and h.claimed == "HANDLED" and h.freed == 0
    assert "false claim" in h.error and r.resolved_by == "kernel"


def test_monkeypatching_classes_in_the_worker_leaves_the_daemon_s_actions_alone(tmp_path):
    sim = sim_with(tmp_path, """
        import oomkit.engine.actions as actions
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                actions.Actions.kill_task = lambda self, t, reason="": 10**9
                actions.Actions._check_scope = lambda self, path: None
                return Verdict.PASS
    """)
    sim.engine.handle(OOM_A)
    from oomkit.engine.actions import Actions
    assert Actions.kill_task.__name__ == "kill_task"        # this process's class is untouched
    r = sim.engine.handle(OOM_A)
    assert r.resolved_by == "kernel"


def test_scope_and_counters_cannot_be_rewritten_from_the_worker(tmp_path):
    sim = sim_with(tmp_path, """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                import gc
                for o in gc.get_objects():       # nothing of the daemon's is in here
                    if type(o).__name__ == "Attachment":
                        o.cgroup, o.failures = "/", 0
                outsider = [r for r in (k.kill_cgroup("/b", "escape"), k.kill_cgroup("/", "root"))]
                assert all(r < 0 for r in outsider), outsider
                raise RuntimeError("scope held")
    """)
    records = three_ooms(sim)
    assert_failed_and_ejected(records, "RuntimeError: scope held")
    assert all(k.name != "outsider" for r in records for k in r.killed)


def test_os_kill_is_refused_in_the_worker(tmp_path):
    victim = subprocess.Popen(["sleep", "60"])      # a process of ours the policy tries to kill
    try:
        sim = sim_with(tmp_path, f"""
            import signal
            class P(OOMPolicy):
                def handle_out_of_memory(self, oc, k):
                    os.kill({victim.pid}, signal.SIGKILL)
                    return Verdict.PASS
        """)
        records = three_ooms(sim)
        assert_failed_and_ejected(records, "PermissionError")
        assert victim.poll() is None                      # still alive
    finally:
        victim.kill()
        victim.wait()


def test_opening_cgroupfs_proc_or_a_file_for_writing_is_refused(tmp_path):
    target = tmp_path / "written"
    sim = sim_with(tmp_path, f"""
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                for path in ("/proc/self/oom_score_adj", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                             {str(target)!r}):
                    try:
                        open(path, "w").write("1")
                    except OSError:
                        continue
                    raise AssertionError("opened " + path)
                raise RuntimeError("all refused")
    """)
    records = three_ooms(sim)
    assert_failed_and_ejected(records, "RuntimeError: all refused")
    assert not target.exists()


@pytest.mark.parametrize("body, error", [
    ("while True:\n                    pass", "deadline"),                                  # a loop
    ("re.match(r'(a+)+$', 'a' * 40 + 'b')", "deadline"),                               # one C call
    ("while True:\n                    try:\n                        while True: pass\n"
     "                    except BaseException:\n                        pass", "deadline"),  # no stop
    ("os._exit(3)", "worker"),                                                           # death
    ("import ctypes; ctypes.string_at(0)", "worker"),                                    # segfault
    ("b = bytearray(1 << 30)", "MemoryError"),                                           # 1 GiB
])
def test_runaway_dying_or_greedy_policies_fail_three_times_and_are_ejected(tmp_path, body, error):
    sim = sim_with(tmp_path, f"""
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                {body}
                return Verdict.PASS
    """, engine={"handler_deadline": "100ms"})
    records = three_ooms(sim)
    assert_failed_and_ejected(records, error)


def test_a_leak_meets_the_cap_and_the_worker_is_replaced(tmp_path):
    # Each call touches 100 MiB: 25,600 first-touch page faults, kernel time that
    # the simulator's CPU clock counts as the policy's own: ~50 ms mostly, but in
    # bursts up to 285 ms on the 2-core CI guest (a VM running beside it).  Past
    # sim_with's 200 ms deadline such a call timed out, its worker was replaced
    # with an empty LEAK, and 3 calls never met the cap: the flake.  The deadline
    # is not what this test is about.
    sim = sim_with(tmp_path, """
        LEAK = []
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                LEAK.append(bytearray(100 << 20))
                return Verdict.PASS
    """, engine={"handler_deadline": "5s"})
    att = sim.engine.attachments["/a"]
    pids, records = [], []
    for _ in range(4):          # 256M cap: the third 100 MiB at the latest fails
        pids.append(att.worker.pid)
        records.append(sim.engine.handle(OOM_A))
    errors = [r.handlers[0].error if r.handlers else "ejected" for r in records]
    hit = next((i for i, e in enumerate(errors) if "MemoryError" in (e or "")), None)
    assert hit is not None and hit < 3, errors
    assert errors[:hit] == [None] * hit, errors         # the leak grew in one worker up to the cap
    assert pids[:hit + 1] == [pids[0]] * (hit + 1), pids
    assert pids[hit + 1] != pids[hit]                   # then that worker was replaced,
    assert errors[hit + 1] is None, errors              # by one with a clean heap
    assert all(r.resolved_by == "kernel" for r in records)


def test_a_policy_that_fails_to_load_is_a_config_error_naming_the_key(tmp_path):
    (tmp_path / "hostile.py").write_text(HEAD + "os._exit(1)\n")
    data = scenario_dict(**TREE, attach=[{"cgroup": "/a", "policy": "hostile.py:P"}])
    with pytest.raises(ConfigError, match=r"attach\[0\]\.policy"):
        Simulator(resolve(data, str(tmp_path / "s.toml"), tmp_path))


def test_the_line_budget_counts_in_the_worker_the_same_every_run(tmp_path):
    body = """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                n = 0
                for t in oc.tasks:
                    n += 1
                while True:
                    n += 1
    """
    first = sim_with(tmp_path, body, engine={"handler_budget": 300, "handler_deadline": "10s"})
    second = sim_with(tmp_path, body, engine={"handler_budget": 300, "handler_deadline": "10s"})
    a, b = first.engine.handle(OOM_A), second.engine.handle(OOM_A)
    assert "budget of 300 lines" in a.handlers[0].error
    assert a.to_dict() == b.to_dict()


def test_in_process_is_still_available_for_debugging(tmp_path):
    sim = sim_with(tmp_path, """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                print("pid", os.getpid())
                return Verdict.PASS
    """, runner="inprocess")
    assert sim.engine.attachments["/a"].worker is None and sim.engine.attachments["/a"].policy is not None


def test_tasks_cross_as_columns_and_come_back_the_same_rows(tmp_path):
    """The context's tasks cross the channel as columns (issue 11, Cost); the
    worker rebuilds the same TaskInfo rows; an argv the live backend has not
    read crosses as None and is asked for only when the policy looks."""
    from oomkit.backends.live import Cmdline
    from oomkit.context import TaskInfo
    from oomkit.linux.procfs import ProcFS
    from oomkit.sandbox import channel, worker
    from oomkit.sandbox.runner import task_columns

    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cmdline").write_bytes(b"job\0--late\0")
    read = Cmdline(ProcFS(tmp_path), 8)
    read._argv = ("seen", "before")
    rows = [TaskInfo(7, "lazy", Cmdline(ProcFS(tmp_path), 7), "/a", 1 * M, 0, 4096, 0, 0, 1.5, False),
            TaskInfo(8, "read", read, "/a/b", 2 * M, 3, 0, -1000, 1000, 2.0, True, (0, 1)),
            TaskInfo(9, "caf\udce9", ("x",), "/a/\udcff", 0, 0, 0, 500, 65534, 3.25, False)]

    class FakeRemote:
        asked: list = []

        def ask(self, *request):
            self.asked.append(request)
            return ["job", "--late"] if request == ("cmdline", 7) else None

    remote = FakeRemote()
    got = worker.tasks(remote, channel._decoder.decode(channel.encode(["ok", task_columns(rows)]))[1])
    assert remote.asked == []                   # nothing read yet
    assert [type(t) for t in got] == [TaskInfo] * 3
    assert got[1] == rows[1] and got[2] == rows[2] and got[2].name == "caf\udce9"
    assert got[0][:2] == rows[0][:2] and got[0][3:] == rows[0][3:]
    assert list(got[0].cmdline) == ["job", "--late"] and remote.asked == [("cmdline", 7)]
    assert got[1].nodes == (0, 1) and got[0].nodes is None and got[1].exiting is True
    assert worker.tasks(remote, channel._decoder.decode(channel.encode(task_columns([])))) == []


def test_a_cgroup_lookup_in_the_worker_answers_as_in_process(tmp_path):
    body = """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                assert oc.cgroups["/a"].limit == 100 << 20 and "/a" in oc.cgroups
                assert oc.cgroups.get("/b") is None and "/b" not in oc.cgroups   # outside /a
                try:
                    oc.cgroups["/nowhere"]
                except KeyError:
                    pass
                else:
                    raise AssertionError("no KeyError")
                hog = max(oc.tasks.in_cgroup("/a"), key=lambda t: t.rss)
                return Verdict.HANDLED if k.kill_task(hog) > 0 else Verdict.PASS
    """
    for runner in ("worker", "inprocess"):
        record = sim_with(tmp_path, body, runner=runner).engine.handle(OOM_A)
        assert record.handlers[0].error is None and record.handlers[0].verdict == "HANDLED", runner
        assert [k.name for k in record.killed] == ["hog"]


def test_the_watchdog_s_heartbeat_goes_on_while_a_worker_loads_its_policy(tmp_path):
    """A worker started on the loop's thread (the daemon's start, a respawn) ticks
    the watchdog while its policy imports: a slow import (or a zygote starting on
    a loaded machine) must not look like a hung daemon (seen: the watchdog handed
    the memcgs back during a daemon's start at load 33)."""
    from oomkit.engine.attachment import Recipe
    from oomkit.sandbox.runner import WorkerRunner

    (tmp_path / "slow.py").write_text("import time\ntime.sleep(1.2)\n" + HEAD +
                                      "class P(OOMPolicy):\n"
                                      "    def handle_out_of_memory(self, oc, k):\n"
                                      "        return Verdict.PASS\n")
    ticks = []
    runner = WorkerRunner(0.05, tick=lambda: ticks.append(time.monotonic()))
    worker = runner.start(Recipe("slow.py:P", {}, str(tmp_path)))
    try:
        assert worker.ready and len(ticks) >= 3, ticks
        assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 1.0      # never a second's silence
    finally:
        runner.stop(worker)


def test_a_worker_whose_cpu_clock_is_gone_is_a_dead_worker_not_a_crash(tmp_path, monkeypatch):
    """A worker that died before the call's first look has an unreadable CPU clock
    (inf): inf - inf made the simulator's deadline NaN and poll() raised
    ValueError (seen once in CI with the segfaulting policy).  Now its pipe is
    read, and the death counts as a failure like any other."""
    from oomkit.sandbox import runner
    monkeypatch.setattr(runner.Worker, "cpu", lambda self: float("inf"))
    sim = sim_with(tmp_path, """
        class P(OOMPolicy):
            def handle_out_of_memory(self, oc, k):
                import ctypes; ctypes.string_at(0)
                return Verdict.PASS
    """, engine={"handler_deadline": "100ms"})
    records = three_ooms(sim)
    assert_failed_and_ejected(records, "worker")


def test_tasks_the_daemon_read_already_come_with_the_call_and_others_are_asked_for():
    """A context whose tasks the daemon holds read (a standing decision's
    successors) sends them in the call's header: the worker's oc.tasks has
    them without a request; a context nobody read sends none (nothing is read
    for it), and the worker asks on first use, as before."""
    from oomkit.context import LazyTasks, OOMContext, TaskInfo
    from oomkit.sandbox import channel, worker
    from oomkit.sandbox.runner import read_already

    rows = [TaskInfo(7, "a", ("a",), "/box/w", 1 * M, 0, 0, 0, 0, 1.0, False),
            TaskInfo(8, "b", ("b",), "/box/v", 2 * M, 0, 0, 0, 0, 2.0, False)]
    reads: list = []

    def ctx(memcg, tasks):
        return OOMContext(level="memcg", memcg=memcg, attached_to="/box", nodes=(), requested=0,
                          cgroups={}, tasks=tasks, totalpages=1000, freed=lambda: 0,
                          in_flight=lambda: ())

    def lazy():
        return LazyTasks(lambda: reads.append("all") or rows,
                         lambda p: reads.append(p) or [t for t in rows if t.cgroup == p])

    class Asked:
        def __init__(self):
            self.asked: list = []

        def ask(self, *request):
            self.asked.append(request)
            return [] if request[0] in ("tasks", "subtree") else None

    def crossed(header):        # as the channel carries it
        return channel._decoder.decode(channel.encode(header))

    assert read_already(ctx("/box/w", lazy())) == {} and reads == []
    whole = lazy()
    len(whole)
    remote = Asked()
    oc = worker.context(remote, {"level": "memcg", "memcg": "/box/w", "attached_to": "/box",
                                 "nodes": [], "requested": 0, "totalpages": 1000,
                                 **crossed(read_already(ctx("/box/w", whole)))})
    assert list(oc.tasks) == rows and oc.tasks.in_cgroup("/box/v") == (rows[1],)
    assert remote.asked == []
    part = lazy()
    part.in_cgroup("/box/w")
    remote = Asked()
    oc = worker.context(remote, {"level": "memcg", "memcg": "/box/w", "attached_to": "/box",
                                 "nodes": [], "requested": 0, "totalpages": 1000,
                                 **crossed(read_already(ctx("/box/w", part)))})
    assert oc.tasks.in_cgroup("/box/w") == (rows[0],) and remote.asked == []
    assert list(oc.tasks) == [] and remote.asked == [("tasks",)]    # not sent: asked for
