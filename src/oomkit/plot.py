"""``oomkit simulate --plot FILE`` and ``oomkit replay --plot FILE``: a timeline per
cgroup of its usage against its limit, each OOM, who decided it, and the victims.

The data is made here from plain records (:class:`Timeline`, tested with
literals); only :func:`draw` imports matplotlib (the optional ``plot`` extra),
PNG or SVG by the file's extension.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oomkit.errors import ConfigError
from oomkit.schema import OOMRecord
from oomkit.text import for_terminal

MAX_PANELS = 8
FORMATS = (".png", ".svg")


@dataclass
class Series:
    usage: list[tuple[float, int]] = field(default_factory=list)
    limit: list[tuple[float, int | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Mark:
    """One OOM on the timeline."""

    t: float
    memcg: str                  # where it happened ("/" for a global OOM)
    decided: str                # "policy", "kernel", "backoff", "unresolved"
    label: str                  # who decided, as shown: "largest-task@/batch", "kernel"
    victims: tuple[tuple[str, str], ...]   # (task name, its cgroup)
    replayed: bool = False      # the replay's own decision (drawn apart)
    raised: tuple[tuple[str, int], ...] = ()   # limits raised instead: (cgroup, new limit)
    focus: bool = False         # always labelled (the replayed OOM and what happened there)


@dataclass
class Timeline:
    title: str
    xlabel: str
    series: dict[str, Series] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    sampled: bool = False       # usage known only at the OOMs (a log's snapshots): points, not steps
    only: list[str] | None = None   # the cgroups to show, if not chosen by panels()

    def sample(self, t: float, usages: Iterable[tuple[str, int, int | None]]) -> None:
        """Usage and limit of each cgroup at ``t``; a point only where one changed."""
        for path, usage, limit in usages:
            s = self.series.setdefault(path, Series())
            if not s.usage or s.usage[-1][1] != usage:
                s.usage.append((t, usage))
            if not s.limit or s.limit[-1][1] != limit:
                s.limit.append((t, limit))

    def panels(self) -> list[str]:
        """The cgroups shown: those with an OOM or a victim first, then those with a limit, then
        the busiest; at most MAX_PANELS."""
        if self.only is not None:
            return [p for p in self.only if p in self.series][:MAX_PANELS]
        hit = {m.memcg for m in self.marks} | {cg for m in self.marks for _, cg in m.victims}

        def rank(path: str) -> tuple:
            s = self.series[path]
            limited = any(lim is not None for _, lim in s.limit)
            return (path not in hit, not limited, -max((u for _, u in s.usage), default=0), path)

        return sorted(sorted(self.series, key=rank)[:MAX_PANELS])


def mark_of(record: OOMRecord, t: float, replayed: bool = False, focus: bool = False) -> Mark:
    """Who decided an OOM: the policies whose decision killed (``policy:<cgroup>``), else
    the kernel for its own kills, else how it was resolved."""
    policy_at = {h.cgroup: h.policy for h in record.handlers}
    deciders = []
    for k in record.killed:
        who = "kernel" if k.by == "kernel" else f"{policy_at.get(k.by[7:], '?')}@{k.by[7:]}"
        if who not in deciders:
            deciders.append(who)
    resolved = str(record.resolved_by)
    label = ", ".join(deciders) or resolved
    if resolved == "policy" and not deciders:
        label = ", ".join(f"{h.policy}@{h.cgroup}" for h in record.handlers if h.freed) or resolved
    return Mark(t=t, memcg=record.memcg, decided=resolved, label=label,
                victims=tuple((k.name, k.cgroup) for k in record.killed), replayed=replayed,
                raised=tuple((c.cgroup, c.new) for c in record.limits), focus=focus or replayed)


def from_simulation(samples: Timeline, ooms: list[OOMRecord]) -> Timeline:
    samples.marks = [mark_of(r, r.t) for r in ooms]
    return samples


def _seconds(record: OOMRecord, first: OOMRecord) -> float:
    if record.detected_at and first.detected_at:
        try:
            a = datetime.datetime.fromisoformat(first.detected_at.replace("Z", "+00:00"))
            b = datetime.datetime.fromisoformat(record.detected_at.replace("Z", "+00:00"))
            return (b - a).total_seconds()
        except ValueError:
            pass        # not ISO 8601 (a hand-made record): the record's own clock below
    return record.t - first.t


def from_log(records: list[OOMRecord], index: int, replayed: OOMRecord, title: str) -> Timeline:
    """The log's OOMs (each snapshot's usage and limits, at its time from the first),
    and the replayed one's decision beside what happened."""
    tl = Timeline(title, "seconds since the log's first OOM", sampled=True)
    first = records[0]
    for i, r in enumerate(records):
        t = _seconds(r, first)
        if r.snapshot is not None:
            tl.sample(t, ((p, c.usage, c.limit) for p, c in sorted(r.snapshot.cgroups.items())))
        tl.marks.append(mark_of(r, t, focus=i == index))
        if i == index:
            tl.marks.append(mark_of(replayed, t, replayed=True))
    # The replayed OOM's cgroup, the chain above it in the snapshot, and every victim's cgroup.
    at = records[index]
    chain = [p for p in (at.snapshot.cgroups if at.snapshot else {}) if at.memcg == p
             or at.memcg.startswith(p.rstrip("/") + "/")]
    victims = [cg for r in (at, replayed) for k in r.killed for cg in [k.cgroup]]
    tl.only = list(dict.fromkeys(sorted(chain, key=len) + victims))
    return tl


COLOURS = {"policy": "tab:blue", "kernel": "tab:red", "backoff": "tab:orange", "unresolved": "tab:gray"}


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--plot {path}: write a .png or .svg file")
    return path


def _mib(n: float) -> float:
    return n / (1 << 20)


def draw(tl: Timeline, path: str | Path) -> None:
    """The timeline as a PNG or SVG (by extension): one panel per cgroup."""
    path = check_file(path)
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib", hint="pip install 'oomkit[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = tl.panels()
    if not shown:
        raise ConfigError("--plot: nothing to draw (no cgroup was sampled)")
    end = max([t for s in tl.series.values() for t, _ in s.usage] + [m.t for m in tl.marks] + [0.0])
    end = end * 1.08 or 1.0
    height = 0.9 + 2.1 * len(shown)
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, height), sharex=True, squeeze=False)
    for ax, path_ in zip(axes[:, 0], shown, strict=True):
        _panel(ax, tl, path_, end)
    handles = [Line2D([], [], color="black", label="usage"),
               Line2D([], [], color="black", linestyle="--", label="limit"),
               *[Line2D([], [], color=c, linewidth=2, label=f"OOM resolved by {k}") for k, c in COLOURS.items()
                 if any(m.decided == k for m in tl.marks)],
               *[Line2D([], [], color="black", marker="x", linestyle="", label="victim (in its cgroup)")
                 for _ in range(1) if any(m.victims for m in tl.marks)]]
    if any(m.replayed for m in tl.marks):
        handles.append(Line2D([], [], color="tab:green", linestyle=":", linewidth=2, label="replayed decision"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel(tl.xlabel)
    hidden = len(tl.series) - len(shown)
    fig.suptitle(for_terminal(tl.title) + (f" ({hidden} more cgroups not shown)" if hidden > 0 else ""),
                 x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0.5 / height, 1, 1 - 0.25 / height))
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ConfigError(f"--plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _steps(points: list[tuple[float, Any]], end: float) -> tuple[list[float], list[Any]]:
    xs = [t for t, _ in points] + [end]
    ys = [v for _, v in points] + [points[-1][1]]
    return xs, ys


def _panel(ax: Any, tl: Timeline, cgroup: str, end: float) -> None:
    s = tl.series[cgroup]
    if s.usage and tl.sampled:
        ax.plot([t for t, _ in s.usage], [_mib(u) for _, u in s.usage], color="black", linewidth=0.8,
                marker=".", markersize=5)
    elif s.usage:
        xs, ys = _steps(s.usage, end)
        ax.step(xs, [_mib(y) for y in ys], where="post", color="black", linewidth=1.2)
    limits = [(t, lim) for t, lim in s.limit if lim is not None]
    if limits:
        xs, ys = _steps(s.limit, end)
        ax.step(xs, [_mib(y) if y is not None else float("nan") for y in ys], where="post",
                color="black", linestyle="--", linewidth=1)
    top = max([_mib(u) for _, u in s.usage] + [_mib(v) for _, v in limits] + [1.0])
    ax.set_ylim(0, top * 1.35)
    ax.set_xlim(0, end)
    ax.set_ylabel("MiB", fontsize=8)
    ax.set_title(for_terminal(cgroup), loc="left", fontsize=9, fontfamily="monospace")
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25)
    here = [m for m in tl.marks if m.memcg == cgroup]
    crowded = len(here) > 6         # then only the focused OOMs get words: lines alone for the rest
    for n, m in enumerate(m for m in here if m.focus or not crowded):
        colour = "tab:green" if m.replayed else COLOURS.get(m.decided, "tab:gray")
        ax.axvline(m.t, color=colour, linewidth=2, linestyle=":" if m.replayed else "-", alpha=0.8)
        names = ", ".join(for_terminal(v) for v, _ in m.victims[:3]) + (" ..." if len(m.victims) > 3 else "")
        raised = ", ".join(f"{for_terminal(cg)} to {_mib(new):.0f} MiB" for cg, new in m.raised)
        outcome = (f"killed {names}" if names else f"raised {raised}" if raised else "nobody killed")
        text = ("replay: " if m.replayed else "") + for_terminal(m.label) + "\n" + outcome
        # Staggered in height, so OOMs close in time do not print over each other; left of
        # the line near the right edge, so the text stays inside the panel.
        right = (m.t > 0.7 * end) != m.replayed     # the replay's words opposite what happened
        ax.annotate(text, (m.t, top * (1.3 - 0.17 * (n % 3))), fontsize=7, color=colour, va="top",
                    ha="right" if right else "left", xytext=(-3 if right else 3, 0), textcoords="offset points",
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    for m in here:
        if crowded and not m.focus:
            ax.axvline(m.t, color=COLOURS.get(m.decided, "tab:gray"), linewidth=0.8, alpha=0.35)
    for m in tl.marks:
        for _, victim_cg in m.victims:
            if victim_cg == cgroup:
                u = _usage_at(s, m.t)
                ax.plot([m.t], [_mib(u)], marker="x", color="tab:green" if m.replayed else "black",
                        markersize=8, mew=2)


def _usage_at(s: Series, t: float) -> int:
    """Where the victim's cross goes: its cgroup's usage as the OOM found it (the higher
    of the last sample before ``t`` and those at ``t``: a simulation samples after the kill)."""
    before = [u for when, u in s.usage if when < t][-1:]
    return max(before + [u for when, u in s.usage if when == t] + [0])


def machine_usages(machine: Any) -> list[tuple[str, int, int | None]]:
    """The simulated machine's cgroups (the root against RAM), for :meth:`Timeline.sample`."""
    return [(path, cg.usage, machine.memory if path == "/" else cg.limit)
            for path, cg in machine.cgroups.items()]
