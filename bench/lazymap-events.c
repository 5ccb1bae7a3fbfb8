// SPDX-License-Identifier: MIT
/*
 * lazymap-events: what it costs the program that the library follows its own
 * munmap, madvise, mremap and fork on lazymap ranges. Each such call raises a
 * userfaultfd event (UNMAP, REMOVE, REMAP+UNMAP, FORK) and returns only once
 * a handler thread has read it; the kernel twin makes the same call on a
 * plain anonymous mapping, in the same process with the same lazymap open,
 * batches of the two alternating. Every operation is timed on its own: per
 * operation mean and median, the ratio lazymap/kernel, and the difference of
 * the medians, which is the event's round trip.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

static size_t ps;

#define REGION_PAGES   4096 /* munmap-*: the range pages are unmapped from */
#define DONTNEED_PAGES 64   /* dontneed: the pages dropped in turn */
#define MOVE_PAGES     16   /* mremap-move: the range moved back and forth */
#define FORK_PAGES     64   /* fork: the range the child inherits */
#define BATCH          256  /* operations per batch: the twins alternate by batch */
#define FORK_BATCH     32

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- hangs and crashes */

/*
 * A library bug here shows as a call that never returns (an event nobody
 * reads) or a crash: say which run it was. A thread blocked in such a call
 * sleeps uninterruptibly (userfaultfd_event_wait_completion), where no
 * alarm signal reaches it, so a watchdog thread of ours ends the process.
 */
static char running[160];
static unsigned row_timeout = 300;        /* seconds one row may take */
static _Atomic uint64_t row_deadline_ns; /* 0: no row running */
static _Atomic pid_t watchdog_tid;

static void say(const char *s)
{
	ssize_t r = write(STDERR_FILENO, s, strlen(s));

	(void)r;
}

/* Only write(2) and _exit(2): the hung thread may hold malloc's and stdio's locks. */
static void *watchdog(void *arg)
{
	(void)arg;
	atomic_store(&watchdog_tid, gettid());
	for (;;) {
		struct timespec ts = { 0, 100000000 };
		uint64_t d;

		nanosleep(&ts, NULL);
		d = atomic_load(&row_deadline_ns);
		if (d && now_ns() > d) {
			say("\nlazymap-events: HANG? no end within the row's timeout: ");
			say(running);
			say("\n");
			_exit(3);
		}
	}
	return NULL;
}

/* Installed with SA_RESETHAND: the raise() below kills us once we return. */
static void on_signal(int sig)
{
	say(sig == SIGSEGV ? "\nlazymap-events: SIGSEGV during: " :
	    sig == SIGBUS  ? "\nlazymap-events: SIGBUS during: " :
			     "\nlazymap-events: interrupted during: ");
	say(running);
	say("\n");
	raise(sig);
}

static void catch_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGSEGV, SIGBUS, SIGABRT };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESETHAND;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

/* ---------------------------------------------------------------- one twin's runs */

/* One twin of a row: its latencies, appended batch after batch. */
struct side {
	struct lazymap *lm; /* open in both twins; only lazymap's maps its ranges there */
	bool lazy;
	const char *status; /* "ok", "error", "unavailable" */
	char why[200];
	uint64_t *lat;      /* ns per operation */
	size_t n;
	double mean, p50;   /* us */
};

static int __attribute__((format(printf, 2, 3))) fail(struct side *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	s->status = "error";
	return -1;
}

/* A private anonymous read-write range: a lazymap demand-zero region or a plain mmap. */
static char *map_range(struct side *s, size_t npages)
{
	void *p = NULL;
	int ret;

	if (!s->lazy) {
		p = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			fail(s, "mmap of %zu pages: %s", npages, strerror(errno));
			return NULL;
		}
		return p;
	}
	ret = lazymap_map(s->lm, &p, npages * ps, PROT_READ | PROT_WRITE,
			  LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);
	if (ret) {
		fail(s, "lazymap_map of %zu pages: %s", npages, strerror(-ret));
		return NULL;
	}
	return p;
}

/* Write a word in every page, so that both twins have them all populated. */
static void touch_all(char *p, size_t npages)
{
	for (size_t i = 0; i < npages; i++)
		*(volatile uint64_t *)(p + i * ps) = i + 1;
}

/*
 * The operations. Each runs n timed operations on a range of its own and
 * unmaps what is left with one untimed munmap (for lazymap's twin one more
 * event, counted but not timed).
 */

/* munmap of the last page, n times: the VMA shrinks, never splits. */
static int run_munmap_tail(struct side *s, size_t n)
{
	char *p = map_range(s, REGION_PAGES);

	if (!p)
		return -1;
	for (size_t i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		int ret = munmap(p + (REGION_PAGES - 1 - i) * ps, ps);
		uint64_t t1 = now_ns();

		if (ret) {
			munmap(p, REGION_PAGES * ps);
			return fail(s, "munmap: %s", strerror(errno));
		}
		s->lat[s->n++] = t1 - t0;
	}
	munmap(p, (REGION_PAGES - n) * ps);
	return 0;
}

/* munmap of pages 1, 3, 5...: each splits what is left of the VMA in two. */
static int run_munmap_split(struct side *s, size_t n)
{
	char *p = map_range(s, REGION_PAGES);

	if (!p)
		return -1;
	for (size_t i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		int ret = munmap(p + (2 * i + 1) * ps, ps);
		uint64_t t1 = now_ns();

		if (ret) {
			munmap(p, REGION_PAGES * ps);
			return fail(s, "munmap: %s", strerror(errno));
		}
		s->lat[s->n++] = t1 - t0;
	}
	munmap(p, REGION_PAGES * ps);
	return 0;
}

/*
 * madvise(MADV_DONTNEED) of one page just written; the page must then read
 * zeros again (lazymap's twin produces it anew on that touch).
 */
static int run_dontneed(struct side *s, size_t n)
{
	char *p = map_range(s, DONTNEED_PAGES);

	if (!p)
		return -1;
	for (size_t i = 0; i < n; i++) {
		volatile uint64_t *w = (volatile uint64_t *)(p + i % DONTNEED_PAGES * ps);
		uint64_t t0, t1;
		int ret;

		if (*w) {
			munmap(p, DONTNEED_PAGES * ps);
			return fail(s, "a page read %#llx after MADV_DONTNEED, not 0",
				    (unsigned long long)*w);
		}
		*w = i + 1;
		t0 = now_ns();
		ret = madvise((void *)w, ps, MADV_DONTNEED);
		t1 = now_ns();
		if (ret) {
			munmap(p, DONTNEED_PAGES * ps);
			return fail(s, "madvise(MADV_DONTNEED): %s", strerror(errno));
		}
		s->lat[s->n++] = t1 - t0;
	}
	munmap(p, DONTNEED_PAGES * ps);
	return 0;
}

/*
 * mremap of MOVE_PAGES written pages between two slots of a PROT_NONE
 * reservation, back and forth: guard, slot 0, guard, slot 1, guard. The
 * destination slot is always reserved, and MREMAP_FIXED replaces the
 * reservation in the same call, so that no other thread's mmap (the
 * library's handlers allocate) can land in it between two moves; the slot
 * left behind is reserved again, untimed. The guards keep the moved range
 * from merging with neighbours in either twin.
 */
static int run_mremap(struct side *s, size_t n)
{
	size_t len = MOVE_PAGES * ps, span = (2 * MOVE_PAGES + 3) * ps;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
	char *res = mmap(NULL, span, PROT_NONE, flags, -1, 0), *slot[2];
	bool ours[2] = { true, true }; /* whether we still hold the slot (range or reservation) */
	int cur = 0, ret = 0;
	void *p;

	if (res == MAP_FAILED)
		return fail(s, "mmap of the reservation: %s", strerror(errno));
	slot[0] = res + ps;
	slot[1] = res + (MOVE_PAGES + 2) * ps;
	if (s->lazy) {
		/* LAZYMAP_FIXED never replaces: free the slot first (nobody else maps here yet). */
		munmap(slot[0], len);
		p = slot[0];
		ret = lazymap_map(s->lm, &p, len, PROT_READ | PROT_WRITE,
				  LAZYMAP_PRIVATE | LAZYMAP_ANON | LAZYMAP_FIXED, -1, 0);
		if (ret) {
			ours[0] = false;
			ret = fail(s, "lazymap_map(LAZYMAP_FIXED): %s", strerror(-ret));
			goto out;
		}
	} else if (mmap(slot[0], len, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0) == MAP_FAILED) {
		ret = fail(s, "mmap(MAP_FIXED): %s", strerror(errno));
		goto out;
	}
	touch_all(slot[0], MOVE_PAGES);
	for (size_t i = 0; i < n; i++) {
		char *from = slot[cur], *to = slot[!cur];
		uint64_t t0 = now_ns();
		void *q = mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		uint64_t t1 = now_ns();

		if (q == MAP_FAILED) {
			ret = fail(s, "mremap: %s", strerror(errno));
			goto out;
		}
		s->lat[s->n++] = t1 - t0;
		cur = !cur;
		if (*(volatile uint64_t *)to != 1 ||
		    *(volatile uint64_t *)(to + (MOVE_PAGES - 1) * ps) != MOVE_PAGES) {
			ret = fail(s, "the moved pages do not read what was written before the move");
			goto out;
		}
		q = mmap(from, len, PROT_NONE, flags | MAP_FIXED_NOREPLACE, -1, 0);
		if (q != from) {
			if (q != MAP_FAILED)
				munmap(q, len);
			ours[!cur] = false;
			/* another thread (a handler's allocator, say) mapped the
			 * vacated slot meanwhile: the moves timed so far stand */
			if (!s->n)
				ret = fail(s, "cannot reserve the vacated slot again: %s",
					   q == MAP_FAILED ? strerror(errno) : "placed elsewhere");
			goto out;
		}
	}
out:
	/* Never unmap a slot someone else may have mapped since. */
	for (int k = 0; k < 2; k++)
		if (ours[k])
			munmap(slot[k], len);
	munmap(res, ps);
	munmap(res + (MOVE_PAGES + 1) * ps, ps);
	munmap(res + (2 * MOVE_PAGES + 2) * ps, ps);
	return ret;
}

/* A line of /proc/self/task/TID/NAME, "" if it cannot be read. */
static void task_file(const char *tid, const char *name, char *buf, int len)
{
	char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%s/%s", tid, name);
	buf[0] = 0;
	f = fopen(path, "re");
	if (!f)
		return;
	if (!fgets(buf, len, f))
		buf[0] = 0;
	fclose(f);
}

/*
 * Whether /proc/TID/wchan says where our threads sleep. A running thread's
 * reads "0", as does every thread's where the kernel hides it: ask about the
 * watchdog thread, asleep but for a moment every 100 ms.
 */
static bool wchan_readable(void)
{
	char tid[16], wchan[64];

	for (int i = 0; i < 20; i++) {
		snprintf(tid, sizeof(tid), "%d", (int)atomic_load(&watchdog_tid));
		task_file(tid, "wchan", wchan, sizeof(wchan));
		if (wchan[0] && strcmp(wchan, "0"))
			return true;
		usleep(1000);
	}
	return false;
}

/*
 * Whether every handler thread of ours (lazymap-h*: the names the library
 * gives them) sleeps in epoll_wait, where an idle handler ends up after its
 * spin_us of polling. A running one reads "0": busy.
 */
static bool handlers_asleep(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	bool asleep = true;

	if (!d)
		return true; /* cannot tell: go on */
	while (asleep && (e = readdir(d))) {
		char comm[32], wchan[64];

		if (e->d_name[0] == '.')
			continue;
		task_file(e->d_name, "comm", comm, sizeof(comm));
		if (strncmp(comm, "lazymap-h", 9))
			continue;
		task_file(e->d_name, "wchan", wchan, sizeof(wchan));
		asleep = strstr(wchan, "epoll") != NULL;
	}
	closedir(d);
	return asleep;
}

/*
 * Wait (untimed) until the library has let go of every forked child and its
 * handlers sleep. Not only for a clean measure: a fork while a handler frees
 * an exited child's mm deadlocks today. glibc's fork() holds every malloc
 * arena lock from before the clone system call until it returns; the clone
 * waits for a handler to read the FORK event; the handler waits for an arena
 * lock in free() (serve_events -> lzm_mm_put -> child_free), and the
 * children counter drops before that free. Remove once the library no
 * longer allocates or frees while a fork may be waiting for it.
 */
static int fork_settle(struct side *s)
{
	static int readable = -1;
	uint64_t end = now_ns() + 5000000000ull;
	struct lazymap_stats st;

	if (readable < 0)
		readable = wchan_readable();
	do {
		memset(&st, 0, sizeof(st));
		lazymap_stats(s->lm, &st);
		if (!st.children && (!readable || handlers_asleep()))
			return 0;
		usleep(100);
	} while (now_ns() < end);
	return fail(s, "%llu forked children still held, or handlers busy, 5 s after the last exit",
		    (unsigned long long)st.children);
}

/* fork, the child _exit(0)s at once, waitpid; FORK_PAGES written pages to copy. */
static int run_fork(struct side *s, size_t n)
{
	char *p = map_range(s, FORK_PAGES);
	int ret = 0;

	if (!p)
		return -1;
	touch_all(p, FORK_PAGES);
	fflush(NULL);
	for (size_t i = 0; i < n; i++) {
		uint64_t t0, t1;
		pid_t pid;
		int st;

		/* Both twins, so that each fork starts with the handlers asleep. */
		ret = fork_settle(s);
		if (ret)
			break;
		t0 = now_ns();
		pid = fork();
		if (pid == 0)
			_exit(0);
		if (pid < 0) {
			ret = fail(s, "fork: %s", strerror(errno));
			break;
		}
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		t1 = now_ns();
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			ret = fail(s, "a child ended with wait status %#x", st);
			break;
		}
		s->lat[s->n++] = t1 - t0;
	}
	munmap(p, FORK_PAGES * ps);
	return ret;
}

struct op {
	const char *name;
	int (*run)(struct side *s, size_t n);
	unsigned events; /* each of lazymap's operations raises at least this many */
	size_t batch;
	unsigned share;  /* the row times iterations / share operations per twin */
	const char *what;
};

static const struct op ops[] = {
	{ "munmap-tail", run_munmap_tail, 1, BATCH, 1,
	  "munmap of the last page of an untouched 4096-page range: the VMA shrinks (UNMAP)" },
	{ "munmap-split", run_munmap_split, 1, BATCH, 1,
	  "munmap of one page inside an untouched 4096-page range: the VMA splits (UNMAP)" },
	{ "dontneed", run_dontneed, 1, BATCH, 1,
	  "madvise(MADV_DONTNEED) of one page just written (REMOVE)" },
	{ "mremap-move", run_mremap, 2, BATCH, 1,
	  "mremap(MREMAP_FIXED) of 16 written pages to a reserved address (REMAP, UNMAP)" },
	/* A fork costs milliseconds on a small guest: an eighth as many. */
	{ "fork", run_fork, 1, FORK_BATCH, 8,
	  "fork, child _exit(0), waitpid, with 64 written pages (FORK); each fork waits,\n"
	  "                untimed, for the library to let go of the last child and sleep" },
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

/* ---------------------------------------------------------------- rows */

static uint64_t events_now(struct lazymap *lm)
{
	struct lazymap_stats st;

	memset(&st, 0, sizeof(st));
	lazymap_stats(lm, &st);
	return st.events;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void side_summary(struct side *s)
{
	double sum = 0;

	if (!s->n)
		return;
	qsort(s->lat, s->n, sizeof(*s->lat), cmp_u64);
	for (size_t i = 0; i < s->n; i++)
		sum += (double)s->lat[i];
	s->mean = sum / (double)s->n / 1000;
	s->p50 = (s->n % 2 ? (double)s->lat[s->n / 2] :
			     ((double)s->lat[s->n / 2 - 1] + (double)s->lat[s->n / 2]) / 2) / 1000;
}

/* Run one row, n operations per twin, in batches whose twin order alternates. */
static void run_row(struct lazymap *lm, const struct op *op, size_t n, bool available,
		    struct side side[2], const char *handlers)
{
	n = n / op->share ? n / op->share : 1;
	for (int t = 0; t < 2; t++) {
		side[t].lm = lm;
		side[t].lazy = t;
		side[t].status = "ok";
		side[t].n = 0;
		side[t].why[0] = 0;
	}
	if (!available) {
		side[1].status = "unavailable";
		snprintf(side[1].why, sizeof(side[1].why),
			 "fork_followed is 0: fork events need CAP_SYS_PTRACE");
	}
	atomic_store(&row_deadline_ns, now_ns() + row_timeout * 1000000000ull);
	for (size_t done = 0, round = 0; done < n; round++) {
		size_t b = n - done < op->batch ? n - done : op->batch;

		for (int k = 0; k < 2; k++) {
			struct side *s = &side[round % 2 ? !k : k];
			uint64_t e0, e1;

			if (strcmp(s->status, "ok"))
				continue;
			snprintf(running, sizeof(running), "%s, handlers %s, %s twin, operations %zu-%zu",
				 op->name, handlers, s->lazy ? "lazymap" : "kernel", done, done + b);
			e0 = events_now(lm);
			if (op->run(s, b))
				continue;
			e1 = events_now(lm);
			/*
			 * Check that we measure what we say. Only a lower bound: the
			 * counter moves once the handler has applied an event, which
			 * may be after the call that raised it returned, so the last
			 * event of a batch can land in the next one's count.
			 */
			if (s->lazy && e1 - e0 < b * op->events)
				fail(s, "%llu events followed for %zu operations: not measuring events%s",
				     (unsigned long long)(e1 - e0), b,
				     op->run == run_fork ? " (yet lazymap_stats says fork_followed = 1)" : "");
		}
		done += b;
	}
	atomic_store(&row_deadline_ns, 0);
	side_summary(&side[0]);
	side_summary(&side[1]);
}

static void print_columns(void)
{
	printf("%-13s %-8s %5s | %8s %8s | %8s %8s | %6s %6s | %8s\n", "operation", "handlers",
	       "ops", "kernel", "", "lazymap", "", "ratio", "", "event");
	printf("%-13s %-8s %5s | %8s %8s | %8s %8s | %6s %6s | %8s\n", "", "", "", "mean us",
	       "p50 us", "mean us", "p50 us", "mean", "p50", "p50 +us");
}

static void print_row(const char *name, const char *handlers, const struct side side[2])
{
	const struct side *k = &side[0], *l = &side[1];
	char kc[40], lc[40], rc[40], ec[20];

	if (!strcmp(k->status, "ok"))
		snprintf(kc, sizeof(kc), "%8.2f %8.2f", k->mean, k->p50);
	else
		snprintf(kc, sizeof(kc), "%17s", k->status);
	if (!strcmp(l->status, "ok"))
		snprintf(lc, sizeof(lc), "%8.2f %8.2f", l->mean, l->p50);
	else
		snprintf(lc, sizeof(lc), "%17s", l->status);
	if (!strcmp(k->status, "ok") && !strcmp(l->status, "ok") && k->mean > 0 && k->p50 > 0) {
		snprintf(rc, sizeof(rc), "%5.2fx %5.2fx", l->mean / k->mean, l->p50 / k->p50);
		snprintf(ec, sizeof(ec), "%8.2f", l->p50 - k->p50);
	} else {
		snprintf(rc, sizeof(rc), "%13s", "-");
		snprintf(ec, sizeof(ec), "%8s", "-");
	}
	printf("%-13s %-8s %5zu | %s | %s | %s | %s\n", name, handlers,
	       l->n > k->n ? l->n : k->n, kc, lc, rc, ec);
	for (int t = 0; t < 2; t++)
		if (side[t].why[0])
			printf("  %s: %s\n", t ? "lazymap" : "kernel", side[t].why);
	fflush(stdout);
}

/* ---------------------------------------------------------------- the machine */

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[512];

	snprintf(buf, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *c = strchr(line, ':');

		if (!strncmp(line, "model name", 10) && c) {
			c += 1 + strspn(c + 1, " \t");
			c[strcspn(c, "\n")] = 0;
			snprintf(buf, len, "%s", c);
			break;
		}
	}
	fclose(f);
}

/*
 * What the machine runs on: a guest's kernel entries can cost ten times a
 * bare machine's (shared/USERFAULTFD-NOTES.md), so say which it is.
 * /sys/hypervisor (Xen), else the boot log's "Hypervisor detected" (KVM,
 * PVM...), else cpuinfo's hypervisor flag.
 */
static void hypervisor(char *buf, size_t len)
{
	static const char key[] = "Hypervisor detected: ";
	char line[256];
	FILE *f;
	int size;

	f = fopen("/sys/hypervisor/type", "re");
	if (f) {
		if (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = 0;
			snprintf(buf, len, "%.64s guest (/sys/hypervisor/type)", line);
			fclose(f);
			return;
		}
		fclose(f);
	}
	size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	if (size > 0) {
		char *log = malloc((size_t)size + 1), *h;
		int got = log ? klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, size) : -1;

		if (got > 0) {
			log[got] = 0;
			h = strstr(log, key);
			if (h) {
				h += sizeof(key) - 1;
				snprintf(buf, len, "%.*s guest (dmesg)", (int)strcspn(h, "\n"), h);
				free(log);
				return;
			}
		}
		free(log);
	}
	f = fopen("/proc/cpuinfo", "re");
	snprintf(buf, len, "no hypervisor seen");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "flags", 5)) {
			if (strstr(line, " hypervisor"))
				snprintf(buf, len, "a guest (cpuinfo's hypervisor flag; dmesg not readable)");
			break;
		}
	}
	fclose(f);
}

static void loadavg(char *buf, size_t len)
{
	FILE *f = fopen("/proc/loadavg", "re");

	snprintf(buf, len, "unknown");
	if (f) {
		if (fgets(buf, (int)len, f))
			buf[strcspn(buf, "\n")] = 0;
		fclose(f);
	}
}

/* What a clock_gettime costs: inside every figure, twice per operation. */
static double timer_ns(void)
{
	uint64_t d[1001];

	for (int i = 0; i < 1001; i++) {
		uint64_t t0 = now_ns();

		d[i] = now_ns() - t0;
	}
	qsort(d, 1001, sizeof(d[0]), cmp_u64);
	return (double)d[500];
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--iterations N] [--quick]\n"
		"  --iterations  operations timed per twin in each row (default 2048; fork: an eighth)\n"
		"  --quick       a seconds-long smoke run (64 per twin, fork 8): checks the harness,\n"
		"                times nothing worth reading\n", argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "iterations", required_argument, NULL, 'n' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct {
		const char *name;
		unsigned handler_threads;
	} configs[] = { { "default", 0 }, { "per-CPU", LAZYMAP_HANDLERS_PER_CPU } };
	unsigned long iterations = 2048;
	char *end, model[256], hv[256], load[128], date[64];
	int c, status = 0, ret;
	struct lazymap *probe;
	struct side side[2];
	struct utsname un;
	cpu_set_t cpus;
	time_t tnow;

	while ((c = getopt_long(argc, argv, "n:qh", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			iterations = strtoul(optarg, &end, 10);
			if (*end || !iterations || iterations > 1000000)
				usage(argv[0]);
			break;
		case 'q': iterations = 64; row_timeout = 60; break;
		default: usage(argv[0]);
		}
	}
	if (optind != argc)
		usage(argv[0]);
	ps = (size_t)sysconf(_SC_PAGESIZE);
	catch_signals();
	{
		pthread_t wd;

		if (pthread_create(&wd, NULL, watchdog, NULL)) {
			fprintf(stderr, "lazymap-events: cannot start the watchdog thread\n");
			return 1;
		}
		pthread_detach(wd);
	}
	for (int t = 0; t < 2; t++) {
		side[t].lat = malloc(iterations * sizeof(*side[t].lat));
		if (!side[t].lat) {
			fprintf(stderr, "lazymap-events: no memory for %lu latencies\n", iterations);
			return 1;
		}
	}

	/* Without userfaultfd there is nothing to measure: a skip, for meson too. */
	ret = lazymap_open(&probe, NULL);
	if (ret == -EPERM || ret == -ENOSYS || ret == -EOPNOTSUPP) {
		fprintf(stderr, "lazymap-events: skipped: lazymap_open: %s (%s)\n", strerror(-ret),
			ret == -EOPNOTSUPP ? "a kernel before 6.6: no UFFDIO_POISON" :
			ret == -ENOSYS ? "a kernel without userfaultfd" :
			"userfaultfd is not available to this process: not root, "
			"vm.unprivileged_userfaultfd=0, no access to /dev/userfaultfd");
		return 77;
	}
	if (ret) {
		fprintf(stderr, "lazymap-events: lazymap_open: %s\n", strerror(-ret));
		return 1;
	}
	lazymap_close(probe);

	uname(&un);
	tnow = time(NULL);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %z", localtime(&tnow));
	cpu_model(model, sizeof(model));
	hypervisor(hv, sizeof(hv));
	loadavg(load, sizeof(load));
	CPU_ZERO(&cpus);
	sched_getaffinity(0, sizeof(cpus), &cpus);
	printf("lazymap-events, %s, Linux %s %s, %ld CPUs (%d usable)\n", date, un.release,
	       un.machine, sysconf(_SC_NPROCESSORS_ONLN), CPU_COUNT(&cpus));
	printf("cpu: %s; %s\n", model, hv);
	printf("load average at start: %s\n", load);
	printf("clock_gettime: %.0f ns, inside every figure\n", timer_ns());
	printf("\nThe program's own calls on a lazymap range, each returning once a handler has read\n"
	       "its event, against the same call on a plain mmap(MAP_PRIVATE|MAP_ANONYMOUS) range\n"
	       "(kernel twin), with the same lazymap open; batches of the two alternate.\n");
	for (size_t i = 0; i < NOPS; i++)
		printf("  %-13s %s\n", ops[i].name, ops[i].what);
	printf("ratio = lazymap/kernel; event = lazymap p50 - kernel p50: the event's round trip.\n"
	       "handlers: default = 1 unpinned handler thread; per-CPU = LAZYMAP_HANDLERS_PER_CPU.\n\n");
	print_columns();

	for (size_t ci = 0; ci < sizeof(configs) / sizeof(configs[0]); ci++) {
		struct lazymap_opts opts = { .handler_threads = configs[ci].handler_threads };
		struct lazymap_stats st;
		struct lazymap *lm;

		ret = lazymap_open(&lm, &opts);
		if (ret) {
			fprintf(stderr, "lazymap-events: lazymap_open(handlers %s): %s\n",
				configs[ci].name, strerror(-ret));
			return 1;
		}
		memset(&st, 0, sizeof(st));
		lazymap_stats(lm, &st);
		for (size_t i = 0; i < NOPS; i++) {
			bool available = ops[i].run != run_fork || st.fork_followed;

			run_row(lm, &ops[i], iterations, available, side, configs[ci].name);
			print_row(ops[i].name, configs[ci].name, side);
			if (!strcmp(side[0].status, "error") || !strcmp(side[1].status, "error"))
				status = 1;
		}
		/*
		 * Nothing may be left: wait for that state (the last munmap's
		 * event is applied just after the munmap returns).
		 */
		for (uint64_t until = now_ns() + 5000000000ull;;) {
			memset(&st, 0, sizeof(st));
			lazymap_stats(lm, &st);
			if ((!st.regions && !st.children) || st.broken || now_ns() > until)
				break;
			usleep(1000);
		}
		if (st.regions || st.children || st.broken) {
			printf("! handlers %s: %llu regions and %llu children left, broken %llu\n",
			       configs[ci].name, (unsigned long long)st.regions,
			       (unsigned long long)st.children, (unsigned long long)st.broken);
			status = 1;
		}
		lazymap_close(lm);
	}
	loadavg(load, sizeof(load));
	printf("\nload average at end: %s\n", load);
	free(side[0].lat);
	free(side[1].lat);
	return status;
}
