"""Which cgroups the daemon manages: the config's attachments (paths and
globs) matched against the cgroup tree as it is now.  Plain functions over a
:class:`~oomkit.linux.cgroupfs.CgroupFS`; the daemon calls them whenever the
tree changes (inotify)."""

from __future__ import annotations

import fnmatch
import logging

from oomkit.config.daemon import Attach
from oomkit.errors import CgroupGone
from oomkit.linux.cgroupfs import CgroupFS

log = logging.getLogger("oomkit")

_GLOB = set("*?[")


def expand(fs: CgroupFS, attach: list[Attach], warned: set[tuple[str, str]] | None = None
           ) -> dict[str, Attach]:
    """Concrete cgroups for each attachment (a glob matches present cgroups;
    new ones are picked up by inotify); the first attachment wins a cgroup.
    A cgroup matched twice is said once per pair (``warned`` remembers)."""
    out: dict[str, Attach] = {}
    for spec in attach:
        for path in matches(fs, spec.cgroup):
            if path in out:
                key = (path, spec.cgroup)
                if warned is None or key not in warned:
                    log.warning("oomkit: %s matches both %s and %s; using %s", path,
                                out[path].cgroup, spec.cgroup, out[path].cgroup)
                    if warned is not None:
                        warned.add(key)
                continue
            out[path] = spec
    return out


def unmatched(attach: list[Attach], wanted: dict[str, Attach]) -> list[str]:
    """The attachments that took no cgroup (none exists, or each was an earlier one's)."""
    taken = list(wanted.values())
    return [spec.cgroup for spec in attach if spec not in taken]


def matches(fs: CgroupFS, pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p]
    found = ["/"]
    for part in parts:
        nxt: list[str] = []
        for base in found:
            if not _GLOB & set(part):
                child = ("" if base == "/" else base) + "/" + part
                nxt += [child] if fs.exists(child) else []
                continue
            try:
                nxt += [c for c in fs.children(base)
                        if fnmatch.fnmatchcase(c.rsplit("/", 1)[1], part)]
            except CgroupGone:
                log.debug("oomkit: %s went away while matching %s", base, pattern)
        found = nxt
    return found


def managed_set(fs: CgroupFS, wanted: dict[str, Attach]) -> set[str]:
    """Every cgroup at or below an attachment: a limit hit there must reach us.
    The root cgroup has no limit (and on v1 cannot disable its OOM killer)."""
    out = {path for top in wanted for path in fs.walk(top)}
    out.discard("/")
    return out


def own_cgroups(own: str | None) -> set[str]:
    """The cgroup the daemon runs in and its ancestors but the root: an OOM there
    pauses (v1) or kills within the daemon itself, so it never manages them."""
    out = set()
    while own and own != "/":
        out.add(own)
        own = own.rsplit("/", 1)[0] or "/"
    return out


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard component."""
    parts = []
    for part in [p for p in pattern.split("/") if p]:
        if _GLOB & set(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def watch_dirs(fs: CgroupFS, managed: set[str], wanted: dict[str, Attach],
               attach: list[Attach]) -> set[str]:
    """Every directory where a cgroup we care about may appear."""
    dirs = set(managed) | set(wanted)
    for spec in attach:
        prefix = literal_prefix(spec.cgroup)
        if fs.exists(prefix):
            dirs |= {p for p in fs.walk(prefix) if p.count("/") < spec.cgroup.count("/")}
    return dirs
