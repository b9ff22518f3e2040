"""The one layer of oomkit that touches the real kernel.

    parse      pure functions over the text of cgroupfs, /proc and /dev/kmsg
    cgroupfs   CgroupFS: a memory cgroup hierarchy (v1 or v2) under a mount root
    procfs     ProcFS: /proc under a root
    taskcache  TaskCache: per-task /proc fds kept between OOMs
    bpftasks   BpfTasks: a memcg subtree's tasks in one read, from a BPF task iterator (bpf/)
    bpfload    libbpf through ctypes: loads bpf/tasks.bpf.o, its maps and links, after
               checking its structs against the object's BTF
    pidfd      race-free kills: pidfd_open, pidfd_send_signal, process_mrelease
    notify     wake-ups: v1 OOM eventfd, PSI triggers, inotify, /dev/kmsg

Every path is built from a root passed in (cgroup mount, /proc), so a temp dir
with the kernel's file names stands in for the kernel in unit tests.  OS errors
become :mod:`oomkit.errors` exceptions here (see :mod:`._oserror`) and nowhere
else.  Stdlib only, and nothing is imported here eagerly: the daemon's RSS
budget is ~30 MiB.
"""
