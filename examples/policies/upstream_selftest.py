"""The upstream BPF OOM selftest's policy, exactly, as an oomkit policy.

The selftest's BPF program (tools/testing/selftests/bpf, the bpf_oom_ops
series) walks the leaf cgroups below the OOMing memcg, scores each by its
usage minus its file pages (``bpf_mem_cgroup_usage()`` minus
``bpf_mem_cgroup_page_state(NR_FILE_PAGES)``: page cache can be reclaimed,
so it is not what killing frees), skips any cgroup that holds an
``oom_score_adj`` -1000 task, and kills every process of the highest-scoring
one.  ``CgroupInfo.stat`` gives the file pages, for cgroup v1 and v2 alike.

    [[attach]]
    cgroup = "/"
    policy = "policies/upstream_selftest.py:UpstreamSelftest"
"""

from __future__ import annotations

from oomkit import OOMContext, OOMPolicy, ReleaseActions, Verdict
from oomkit.helpers import OOM_SCORE_ADJ_MIN, is_within


class UpstreamSelftest(OOMPolicy):
    """Kill the leaf cgroup with the most usage beyond its page cache, whole."""

    name = "upstream-selftest"

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        top = oc.memcg if is_within(oc.memcg, oc.attached_to) else oc.attached_to
        scored = []
        for path in oc.cgroups:
            info = oc.cgroups[path]
            if not is_within(path, top) or info.children:
                continue                                    # leaves only
            if any(t.oom_score_adj <= OOM_SCORE_ADJ_MIN for t in oc.tasks.in_cgroup(path)):
                continue                                    # holds a -1000 task
            scored.append((info.usage - info.stat.get("file", 0), path))
        for score, path in sorted(scored, key=lambda s: (-s[0], s[1])):
            if score > 0 and k.kill_cgroup(path, f"usage - file = {score}") > 0:
                return Verdict.HANDLED
        return Verdict.PASS
