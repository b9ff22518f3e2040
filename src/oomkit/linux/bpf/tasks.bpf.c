// SPDX-License-Identifier: GPL-2.0
/*
 * oomkit: every user process of one memory-cgroup subtree, in one read().
 *
 * Two programs, of which user space (oomkit/linux/bpftasks.py) loads one:
 *
 * dump_subtree (SEC("iter/cgroup"), Linux 6.7+): a cgroup iterator
 *   (kernel/bpf/cgroup_iter.c, 6.1+) attached to the subtree's top cgroup
 *   walks its descendants in pre-order, and for each cgroup the open-coded css
 *   task iterator (bpf_iter_css_task_*, kernel/bpf/task_iter.c, 6.7+) lists its
 *   processes: the cost is the subtree's, not the machine's.  Records go into
 *   the mmap()able array map recs (see there why not into the seq_file).
 *
 * dump_tasks (SEC("iter/task"), Linux 5.8+): the fallback.  A task iterator
 *   visits every task on the machine and writes a record to the seq_file for
 *   each process whose memory cgroup is the target cgroup (cfg.target_id, set
 *   by user space before each read) or below it.
 *
 * Both write the same fixed-size record (struct rec, parsed by bpftasks.py),
 * built by fill() from the same fields.  Either replaces, per OOM, reading
 * cgroup.procs of every cgroup of the subtree and
 * /proc/PID/{statm,status,stat,oom_score_adj} of every task.
 *
 * What a record holds, and the kernel code it mirrors:
 *   rss      get_mm_rss(): MM_FILEPAGES + MM_ANONPAGES + MM_SHMEMPAGES (include/linux/mm.h)
 *   swap     get_mm_counter(mm, MM_SWAPENTS)
 *   pgtables mm_pgtables_bytes(): mm->pgtables_bytes (bytes already)
 *            -- the three terms of oom_badness() in mm/oom_kill.c
 *   oom_score_adj  task->signal->oom_score_adj
 *   uid      task_uid(): the real uid of the objective creds (task->real_cred),
 *            what /proc/PID/status shows first on its Uid: line
 *   starttime  task->start_boottime in clock ticks, as /proc/PID/stat field 22
 *            (fs/proc/array.c do_task_stat: nsec_to_clock_t(start_boottime)),
 *            without a time namespace's boot-time offset
 *   exiting  PF_EXITING (in do_exit()) or exit_state set (zombie, dead)
 *   mm_key   which address space the process has, for finding an OOM victim's
 *            mm sharers without one kcmp(2) per task (bpftasks.mm_candidates):
 *            task->mm xor cfg.mm_cookie, so that user space holds no kernel
 *            address; 0 when this read cannot vouch for it (see mm_key_of())
 *
 * The rss counters are the kernel's own approximate ones: since 6.2 (commit
 * f1a7941243c1, "mm: convert mm's rss stats into percpu_counter") each is a
 * percpu_counter and get_mm_counter() reads only its central count, which lags
 * the exact sum by less than percpu_counter_batch (max(32, 2 * online CPUs))
 * pages per CPU.  /proc/PID/status sums every CPU since 6.16 (task_mem() uses
 * get_mm_counter_sum()); summing here would cost a read per CPU per counter
 * per task (upstream measured the OOM killer going from 3 to 80 ms at 10,000
 * tasks on 256 CPUs when it switched to the sum), so we read the central count
 * like get_mm_counter().  Before 6.2 the counters are atomic_long_t in
 * struct mm_rss_stat and per-thread caches (SPLIT_RSS_COUNTING) lag by up to
 * 64 events per thread; /proc reads the same atomics there.
 *
 * Compiled once, run on many kernels (CO-RE): field offsets are relocated by
 * libbpf against /sys/kernel/btf/vmlinux at load time, and the two layouts of
 * mm->rss_stat and of cgroup ancestry are told apart with
 * bpf_core_field_exists().
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define PF_EXITING 0x00000004  /* include/linux/sched.h, unchanged since 2.6 */
#define PF_KTHREAD 0x00200000
#define ANY_LEVEL 0xffffffffu
#define MAX_LEVEL 64           /* deeper targets are not found */

/* One record per process; keep in step with bpftasks.REC_FORMATS ("<IiQQQQQII16sQ"). */
struct rec {
	__u32 pid;              /* tgid, in the initial pid namespace */
	__s32 oom_score_adj;
	__u64 memcg_id;         /* kernfs id = inode of the memcg's cgroupfs directory */
	__u64 rss;              /* bytes */
	__u64 swap;             /* bytes */
	__u64 pgtables;         /* bytes */
	__u64 starttime;        /* clock ticks since boot */
	__u32 uid;
	__u32 exiting;
	char comm[16];          /* TASK_COMM_LEN, NUL-padded */
	__u64 mm_key;           /* the mm, obfuscated; 0: not vouched for (mm_key_of()) */
};

/* Set by user space through the mmap()ed .bss before each read (bpftasks._Config).
 * One struct, so that its layout is ours, not the compiler's choice of order. */
struct config {
	__u64 target_id;        /* task: kernfs id of the subtree's top cgroup */
	__u32 target_level;     /* task: its depth (0: the hierarchy's root), or ANY_LEVEL if not known */
	__u32 page_shift;       /* log2(page size) */
	__u64 ns_per_tick;      /* NSEC_PER_SEC / USER_HZ (sysconf(_SC_CLK_TCK)) */
	/* dump_subtree only; user space zeroes the counters before each read */
	__u64 count;            /* records of this read (those at index >= recs' size are not kept) */
	__u64 tasks_seen;       /* tasks the css task iterators returned */
	__u64 cgroups_seen;     /* cgroups the cgroup iterator visited */
	__u32 top_level;        /* depth of the first cgroup visited: the subtree's top */
	__u32 pad;
	__u64 read_start;       /* boot-time ns of this read's first call (user space zeroes it) */
	__u64 mm_cookie;        /* random, set by user space at load: mm_key = mm ^ mm_cookie */
} cfg;

/*
 * dump_subtree's output.  Not the seq_file: a cgroup iterator holds
 * cgroup_mutex while it walks and so cannot resume a walk in a second read()
 * (cgroup_iter_seq_start() fails a restart with EOPNOTSUPP), and one read()
 * returns at most the seq_file's buffer (8 pages: 455 records).  An array
 * map, mmap()ed by user space (BPF_F_MMAPABLE, 5.5+), holds any number the
 * size user space gives it before load (bpf_map__set_max_entries); user space
 * reloads with a bigger one when cfg.count says it was too small.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct rec);
	__uint(max_entries, 1);
} recs SEC(".maps");

/* Open-coded css task iterator (6.7+, commit 9c66dc94b62a), as declared in the
 * kernel's tools/testing/selftests/bpf/bpf_experimental.h.  Weak: a kernel
 * without them still loads dump_tasks from this object. */
extern int bpf_iter_css_task_new(struct bpf_iter_css_task *it,
				 struct cgroup_subsys_state *css, unsigned int flags) __weak __ksym;
extern struct task_struct *bpf_iter_css_task_next(struct bpf_iter_css_task *it) __weak __ksym;
extern void bpf_iter_css_task_destroy(struct bpf_iter_css_task *it) __weak __ksym;
#define CSS_TASK_ITER_PROCS (1U << 0)  /* include/linux/cgroup.h: thread-group leaders only */

/* Kernel layouts older than the vmlinux.h we build against (CO-RE flavors). */
struct mm_rss_stat___old {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

/* <= 6.1: struct mm_rss_stat rss_stat; 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS] */
struct mm_struct___old {
	struct mm_rss_stat___old rss_stat;
} __attribute__((preserve_access_index));

/* < 6.0: u64 ancestor_ids[] (ids); 6.0+: struct cgroup *ancestors[] (commit 7f203bc89eb6) */
struct cgroup___old {
	int level;
	__u64 ancestor_ids[];
} __attribute__((preserve_access_index));

static __always_inline __u64 counter(struct mm_struct *mm, int member)
{
	long v;

	if (bpf_core_field_exists(((struct mm_struct___old *)0)->rss_stat.count)) {
		/* A helper read: the 6.1 verifier cannot walk a plain load into an
		 * array of typedef'd structs ("Type 'atomic_long_t' is not a struct",
		 * kernel/bpf/btf.c btf_struct_walk). */
		struct mm_struct___old *old = (void *)mm;
		v = BPF_CORE_READ(old, rss_stat.count[member].counter);
	} else {
		v = mm->rss_stat[member].count;
	}
	return v > 0 ? v : 0;   /* get_mm_counter(): a transiently negative count reads 0 */
}

static __always_inline bool ancestor_is(struct cgroup *cgrp, __u32 at)
{
	if (bpf_core_field_exists(((struct cgroup___old *)0)->ancestor_ids)) {
		struct cgroup___old *old = (void *)cgrp;
		__u64 id = 0;
		bpf_core_read(&id, sizeof(id), &old->ancestor_ids[at]);
		return id == cfg.target_id;
	}
	struct cgroup *anc = NULL;
	bpf_core_read(&anc, sizeof(anc), &cgrp->ancestors[at]);
	return anc && BPF_CORE_READ(anc, kn, id) == cfg.target_id;
}

/* Is cgrp target_id or below it?  Then its ancestor at the target's depth is
 * the target (cgroup->ancestors[], indexed by level, holds the cgroup itself
 * last).  With the depth known that is one read; otherwise every ancestor is
 * compared, root first.  (Rather than walking kernfs_node parents: that field
 * was renamed __parent in 6.15, and ancestors[] needs no pointer chase.) */
static __always_inline bool in_subtree(struct cgroup *cgrp)
{
	int level = BPF_CORE_READ(cgrp, level);
	__u32 want = cfg.target_level;

	if (level < 0)
		return false;
	if (want != ANY_LEVEL)
		return want <= (__u32)level && want < MAX_LEVEL && ancestor_is(cgrp, want);
	for (__u32 at = 0; at < MAX_LEVEL; at++) {
		if (at > (__u32)level)
			break;
		if (ancestor_is(cgrp, at))
			return true;
	}
	return false;
}

/* task_css(task, memory_cgrp_id)->cgroup: the memcg the task is charged to
 * (v1: in the memory hierarchy; v2: the nearest cgroup with the memory
 * controller enabled).  The enum's value depends on the kernel's config. */
static __always_inline struct cgroup *memcg_of(struct task_struct *task)
{
	struct css_set *cset = task->cgroups;
	if (!cset)
		return NULL;
	struct cgroup_subsys_state *css =
		cset->subsys[bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id)];
	if (!css)
		return NULL;
	return css->cgroup;
}

/*
 * The mm's identity, for a process that started before this read did; else 0.
 *
 * Why two processes with equal non-zero keys of one read are the only ones
 * that may share an mm afterwards (user space still confirms with kcmp(2)):
 * a process's mm changes only at execve() (exec_mmap(), fs/exec.c), to a fresh
 * mm; and a process that shares an mm made after this read began
 * (cfg.read_start) was cloned from one of its users after that, so its
 * start_boottime, set in copy_process() after copy_mm() (kernel/fork.c), is
 * later too, and it is left at 0 (not vouched for).  So two processes that
 * both started earlier and share an mm later shared it when each was read:
 * the same pointer.  A leader with no mm (exited before its threads) reads 0.
 * The pointer is read as a number (bpf_core_read): arithmetic on a BTF pointer
 * is refused by the verifier.
 */
static __always_inline __u64 mm_key_of(struct task_struct *task, struct mm_struct *mm)
{
	__u64 key = 0;

	if (!mm || task->start_boottime >= cfg.read_start)
		return 0;
	bpf_core_read(&key, sizeof(key), &task->mm);
	return key ? key ^ cfg.mm_cookie : 0;
}

/*
 * The record of process task (a thread-group leader, not a kernel thread),
 * charged to memcg; false if it is to be left out.
 *
 * Fields are read by plain dereference: in a tracing program (iter/task and
 * iter/cgroup are) a load through a BTF-typed kernel pointer is checked by the
 * verifier and done with an exception-table entry (BPF_PROBE_MEM, 5.5+), so a
 * helper call (bpf_probe_read_kernel) per field is not needed; the offsets are
 * still CO-RE relocations (vmlinux.h marks every type preserve_access_index).
 * Only the variable-index ancestors[] read goes through bpf_core_read().
 */
static __always_inline bool fill(struct rec *r, struct task_struct *task, struct cgroup *memcg,
				 __u32 flags)
{
	struct mm_struct *mm = task->mm;
	struct signal_struct *sig = task->signal;
	if (!mm) {
		/* A leader that has exited while other threads of its process live
		 * on has no mm of its own (exit_mm()); cgroup.procs still lists it
		 * while signal->live is non-zero (kernel/cgroup/cgroup.c
		 * css_task_iter_advance), so report it, exiting, with no memory,
		 * as /proc/PID/statm does.  A process entirely gone is left out. */
		if (!sig || sig->live.counter <= 0)
			return false;
	} else {
		__u32 shift = cfg.page_shift;
		if (shift > 20)
			shift = 12;
		r->rss = (counter(mm, MM_FILEPAGES) + counter(mm, MM_ANONPAGES) +
			  counter(mm, MM_SHMEMPAGES)) << shift;
		r->swap = counter(mm, MM_SWAPENTS) << shift;
		long pt = mm->pgtables_bytes.counter;
		r->pgtables = pt > 0 ? pt : 0;
	}

	r->pid = task->tgid;
	if (sig)
		r->oom_score_adj = sig->oom_score_adj;
	r->memcg_id = memcg->kn->id;
	__u64 tick = cfg.ns_per_tick;
	r->starttime = task->start_boottime / (tick ? tick : 10000000);
	const struct cred *cred = task->real_cred;
	if (cred)
		r->uid = cred->uid.val;
	r->exiting = (flags & PF_EXITING) || task->exit_state || !mm;
	__builtin_memcpy(r->comm, task->comm, sizeof(r->comm));
	r->mm_key = mm_key_of(task, mm);
	return true;
}

SEC("iter/task")
int dump_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct rec r = {};

	if (!task)
		return 0;       /* the end of the iteration */
	if (!cfg.read_start)
		cfg.read_start = bpf_ktime_get_boot_ns();
	/* processes only: cgroup.procs lists thread-group leaders */
	if (task->pid != task->tgid)
		return 0;
	__u32 flags = task->flags;
	if (flags & PF_KTHREAD)
		return 0;
	struct cgroup *cgrp = memcg_of(task);
	if (!cgrp || !in_subtree(cgrp))
		return 0;
	if (fill(&r, task, cgrp, flags))
		bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

/*
 * Called once per cgroup of the subtree, top first (BPF_CGROUP_ITER_DESCENDANTS_PRE,
 * set at attach time), under cgroup_mutex; then once with cgroup NULL.
 *
 * The processes of each cgroup come from its own css (cgrp->self), whose
 * task iterator walks the css_sets linked to that cgroup (css->ss NULL:
 * cgrp->cset_links): on v1, given a cgroup of the memory hierarchy, exactly
 * the tasks whose memcg it is; on v2, the tasks of that cgroup.  Each task
 * is thus met once, at its own cgroup, and its memcg is read from its
 * css_set as dump_tasks reads it (on v2 the nearest ancestor with memory on,
 * which may be above the subtree's top: such a task is not the subtree's
 * memcg's, and dump_tasks would not list it either, so neither does this).
 * cgrp->self, rather than cgrp->subsys[memory_cgrp_id], because a pointer
 * loaded from cgrp->subsys[] is not trusted, and the kfunc wants a trusted one.
 *
 * CSS_TASK_ITER_PROCS: thread-group leaders, skipping dying leaders without
 * live threads -- the cgroup.procs rule dump_tasks follows by hand.
 */
SEC("iter/cgroup")
int dump_subtree(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cgrp = ctx->cgroup;
	struct bpf_iter_css_task it;
	struct task_struct *task;

	if (!cgrp)
		return 0;       /* the end of the iteration */
	if (!cfg.read_start)
		cfg.read_start = bpf_ktime_get_boot_ns();
	if (ctx->meta->seq_num == 0)
		cfg.top_level = cgrp->level;
	cfg.cgroups_seen++;
	__u32 top = cfg.top_level;

	bpf_iter_css_task_new(&it, &cgrp->self, CSS_TASK_ITER_PROCS);
	while ((task = bpf_iter_css_task_next(&it))) {
		cfg.tasks_seen++;
		__u32 flags = task->flags;
		if (flags & PF_KTHREAD)
			continue;
		struct cgroup *memcg = memcg_of(task);
		if (!memcg || memcg->level < (int)top)
			continue;
		struct rec r = {};
		if (!fill(&r, task, memcg, flags))
			continue;
		__u32 i = cfg.count++;
		struct rec *slot = bpf_map_lookup_elem(&recs, &i);
		if (slot)
			*slot = r;
	}
	bpf_iter_css_task_destroy(&it);
	return 0;
}
