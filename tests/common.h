/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the tests: what the kernel offers (userfaultfd access and
 * features) and the skip when it lacks them, catching the SIGBUS/SIGSEGV a
 * touch raises, reading /proc/self/maps, waiting for a state with a deadline.
 */
#ifndef LAZYMAP_TESTS_COMMON_H
#define LAZYMAP_TESTS_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

/*
 * lib/internal.h: 0 once lm serves no fault, has no read in flight and no
 * prefetch queued, or -ETIMEDOUT. Hidden in the library, but the tests link
 * its objects (lazymap_internal_dep).
 */
int lzm_quiesce(struct lazymap *lm, unsigned timeout_ms);

static inline size_t pgsz(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- what the kernel offers */

/* The kernel's values, for system headers older than the kernel. */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/*
 * The features the kernel's userfaultfd offers this process, from
 * UFFDIO_API on a probe descriptor (the handshake is once per descriptor),
 * opened as the library opens its own: the system call, else
 * /dev/userfaultfd. 0, or -EPERM without access, -ENOSYS without
 * userfaultfd, another -errno if the probe itself failed.
 */
static inline int uffd_probe(uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), ret = 0;

	if (fd < 0 && (errno == EPERM || errno == EACCES)) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev < 0)
			return -EPERM;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		if (fd < 0)
			ret = errno == EACCES ? -EPERM : -errno;
		close(dev);
		if (fd < 0)
			return ret;
	}
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api))
		ret = -errno;
	close(fd);
	*features = api.features;
	return ret;
}

/*
 * Can this process use a userfaultfd with the features required? 0 if so;
 * else why says why, and the return is -EPERM (no access), -ENOSYS (no
 * userfaultfd), -EOPNOTSUPP (a feature missing: the kernel is too old),
 * reasons to skip, or another -errno: the probe failed, a reason to fail.
 */
static inline int uffd_check(uint64_t required, char *why, size_t len)
{
	static const struct {
		uint64_t bit;
		const char *name;
	} names[] = {
		{ UFFD_FEATURE_POISON, "UFFD_FEATURE_POISON (Linux 6.6)" },
		{ UFFD_FEATURE_MOVE, "UFFD_FEATURE_MOVE (Linux 6.8)" },
	};
	uint64_t have = 0, missing;
	int ret = uffd_probe(&have);
	size_t n;

	if (ret == -EPERM) {
		snprintf(why, len, "no userfaultfd for uid %d: needs CAP_SYS_PTRACE, "
			 "vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd", (int)geteuid());
		return ret;
	}
	if (ret) {
		snprintf(why, len, "userfaultfd: %s", strerror(-ret));
		return ret;
	}
	missing = required & ~have;
	if (!missing)
		return 0;
	n = (size_t)snprintf(why, len, "the kernel lacks");
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if ((missing & names[i].bit) && n < len)
			n += (size_t)snprintf(why + n, len - n, " %s", names[i].name);
	if (missing & ~(uint64_t)(UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE) && n < len)
		snprintf(why + n, len - n, " features %#llx",
			 (unsigned long long)(missing & ~(uint64_t)(UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE)));
	return -EOPNOTSUPP;
}

/* What a lazymap opened with opts needs from the kernel (lazymap_open's -EOPNOTSUPP). */
static inline uint64_t uffd_needs(const struct lazymap_opts *opts)
{
	uint64_t need = UFFD_FEATURE_POISON;

	if (opts && opts->install == LAZYMAP_INSTALL_MOVE)
		need |= UFFD_FEATURE_MOVE;
	return need;
}

/* ---- handler threads */

/*
 * How many handler threads (named lazymap-h*) are asleep in epoll_wait, the
 * only place an idle one waits; *total gets how many there are. A handler
 * blocked anywhere else (in a fill callback, say) is not counted.
 */
static inline int handlers_asleep(int *total)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int asleep = 0, n = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		char path[320], buf[512], *close_paren;
		long nr = -1;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue; /* the thread is gone */
		if (!fgets(buf, sizeof(buf), f) || !strstr(buf, "(lazymap-h")) {
			fclose(f);
			continue;
		}
		fclose(f);
		n++;
		close_paren = strrchr(buf, ')');
		if (!close_paren || close_paren[2] != 'S')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/syscall", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fscanf(f, "%ld", &nr) != 1)
			nr = -1;
		fclose(f);
#ifdef SYS_epoll_wait
		asleep += nr == SYS_epoll_wait;
#endif
#ifdef SYS_epoll_pwait
		asleep += nr == SYS_epoll_pwait;
#endif
#ifdef SYS_epoll_pwait2
		asleep += nr == SYS_epoll_pwait2;
#endif
	}
	closedir(d);
	if (total)
		*total = n;
	return asleep;
}

/* ---- skipping, and the Criterion fixtures (stress.c is plain C) */

#ifdef cr_skip_test
/*
 * Skip the running test; the reason shows in the runner's output (--verbose).
 * Criterion ends the test's process at once, without its .fini (the shim
 * runs it): a test file whose .init leaves something behind defines
 * skip_cleanup() before it includes this header.
 */
#ifndef skip_cleanup
#define skip_cleanup() do { } while (0)
#endif
#define skip_test(...)                                                         \
	do {                                                                   \
		skip_cleanup();                                                \
		cr_skip_test(__VA_ARGS__);                                     \
	} while (0)

/*
 * Gate a test on what the kernel offers, as the kernel's selftests gate
 * theirs (uffd_tests[].uffd_feature_required): skip, with the reason, where
 * this process has no userfaultfd or the kernel lacks a feature required.
 */
static inline void require_uffd(uint64_t features)
{
	char why[256];
	int ret = uffd_check(features, why, sizeof(why));

	if (ret == -EPERM || ret == -ENOSYS || ret == -EOPNOTSUPP)
		skip_test("%s", why);
	cr_assert_eq(ret, 0, "probing userfaultfd: %s", why);
}

/*
 * A lazymap for a test that uses one (tests of lazymap_open's own errors
 * call it directly). Skips where the kernel cannot give one: no userfaultfd
 * access, or a kernel without what opts need (UFFD_FEATURE_MOVE for
 * LAZYMAP_INSTALL_MOVE). Any other failure fails the test.
 */
static inline struct lazymap *open_or_skip(const struct lazymap_opts *opts)
{
	struct lazymap *lm = NULL;
	int ret;

	require_uffd(uffd_needs(opts));
	ret = lazymap_open(&lm, opts);
	if (ret == -EPERM || ret == -ENOSYS)
		skip_test("lazymap_open: %s", strerror(-ret));
	cr_assert_eq(ret, 0, "lazymap_open: %s", strerror(-ret));
	cr_assert_not_null(lm);
	return lm;
}

/*
 * Wait until what lm's handlers were given has landed: no fault being
 * served, no read in flight, no prefetch queued. A touch returns before the
 * rest of its block or window is in; this is the state to check after.
 */
static inline void quiesce(struct lazymap *lm)
{
	int ret = lzm_quiesce(lm, 30000);

	cr_assert_eq(ret, 0, "lzm_quiesce: %s: the handlers were still busy after 30 s",
		     strerror(-ret));
}

/*
 * Wait until want handlers are asleep in epoll_wait, with no sleep counted
 * while they were looked at (each sleep counts once, before epoll_wait).
 * An idle handler sleeps once its poll window (at most 250 us) is over; one
 * whose epoll_wait returns at once, for ever, is never seen asleep, and the
 * test fails after 10 s.
 */
static inline void wait_handlers_asleep(struct lazymap *lm, int want, const char *what)
{
	struct lazymap_stats st0, st1;
	int asleep, total = 0;

	for (double t0 = now_s();; usleep(1000)) {
		cr_assert_eq(lazymap_stats(lm, &st0), 0);
		asleep = handlers_asleep(&total);
		cr_assert_eq(lazymap_stats(lm, &st1), 0);
		if (asleep >= want && st0.sleeps == st1.sleeps)
			return;
		cr_assert_lt(now_s() - t0, 10.0, "%s: after 10 s %d of %d handlers asleep in epoll_wait, "
			     "want %d; %lu sleeps counted", what, asleep, total, want,
			     (unsigned long)st1.sleeps);
	}
}
/* ---- what this process holds (Criterion tests) */

/* Entries of a /proc directory (/proc/self/fd, /proc/self/task). */
static inline int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d, "%s: %s", path, strerror(errno));
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Resident memory of this process, in KiB. */
static inline long rss_kib(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	cr_assert_not_null(f);
	cr_assert_eq(fscanf(f, "%ld %ld", &pages, &rss), 2);
	fclose(f);
	return rss * (long)(pgsz() / 1024);
}

static void *thread_that_returns(void *arg)
{
	return arg;
}

/*
 * ThreadSanitizer starts a thread of its own at the first pthread_create,
 * and keeps it: a test that counts threads starts one first.
 */
static inline void start_runtime_threads(void)
{
	pthread_t t;

	cr_assert_eq(pthread_create(&t, NULL, thread_that_returns, NULL), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
}
/*
 * A window of the test's own address space, PROT_NONE, far below where the
 * kernel places mappings (top down from below the stack), above the heap
 * and above AddressSanitizer's shadow. A hole left in it is never handed
 * out to anybody else's mmap: what a test maps there is all there is.
 */
#ifdef __SANITIZE_THREAD__
/* ThreadSanitizer lets a program map only in its application ranges (it
 * aborts on anything else): the one of position-independent binaries. */
#define WINDOW_LO   0x560000000000ul
#define WINDOW_HI   0x568000000000ul
#define WINDOW_STEP (1ul << 36)
#else
#define WINDOW_LO   0x300000000000ul
#define WINDOW_HI   0x380000000000ul
#define WINDOW_STEP (1ul << 40)
#endif

static inline char *test_window(size_t len)
{
	char *w = MAP_FAILED;

	for (uintptr_t at = WINDOW_LO; w == MAP_FAILED && at < WINDOW_HI; at += WINDOW_STEP)
		w = mmap((void *)at, len, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_neq(w, MAP_FAILED, "no window of %zu bytes: %s", len, strerror(errno));
	return w;
}
#endif /* cr_skip_test */

/* ---- touching with a signal expected */

struct touch_fault {
	int signo;      /* 0: no signal */
	void *addr;     /* si_addr */
	int code;       /* si_code */
};

static __thread sigjmp_buf touch_jmp;
static __thread volatile sig_atomic_t touch_armed;
static __thread struct touch_fault touch_last;

static void touch_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!touch_armed) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	touch_last.signo = sig;
	touch_last.addr = si->si_addr;
	touch_last.code = si->si_code;
	touch_armed = 0;
	siglongjmp(touch_jmp, 1);
}

static inline void touch_install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = touch_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

/*
 * Read (or write, if value >= 0) one byte at p; report the signal it raised.
 * Relaxed atomics: several threads may touch the same byte.
 */
static inline struct touch_fault touch(char *p, int value, char *out)
{
	touch_last = (struct touch_fault){ 0 };
	if (sigsetjmp(touch_jmp, 1) == 0) {
		touch_armed = 1;
		if (value >= 0) {
			__atomic_store_n(p, (char)value, __ATOMIC_RELAXED);
		} else {
			char c = __atomic_load_n(p, __ATOMIC_RELAXED);

			if (out)
				*out = c;
		}
		touch_armed = 0;
	}
	return touch_last;
}

/* A fill callback that writes 0x5a into every byte it is asked for. */
static inline int fill_5a(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)offset;
	(void)arg;
	memset(page, 0x5a, len);
	return 0;
}

/* ---- /proc/self/maps */

struct maps_entry {
	uintptr_t start, end;
	char perms[5];
};

/* The kernel's VMAs overlapping [lo, hi); returns how many (at most max). */
static inline int maps_read(uintptr_t lo, uintptr_t hi, struct maps_entry *out, int max)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char perms[5];

		if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) != 3)
			continue;
		if (e <= lo || s >= hi || n >= max)
			continue;
		out[n].start = s;
		out[n].end = e;
		memcpy(out[n].perms, perms, 5);
		n++;
	}
	fclose(f);
	return n;
}

/*
 * Join neighbours with equal perms, in place; returns how many are left. The
 * kernel merges VMAs that the tree keeps apart (regions mapped separately)
 * and keeps apart what the tree merges (anon_vma rules): compare both
 * sides coalesced.
 */
static inline int maps_coalesce(struct maps_entry *e, int n)
{
	int m = 0;

	for (int i = 0; i < n; i++) {
		if (m && e[m - 1].end == e[i].start && !strcmp(e[m - 1].perms, e[i].perms))
			e[m - 1].end = e[i].end;
		else
			e[m++] = e[i];
	}
	return m;
}

/* lazymap_dump() parsed back: this process's VMAs in order (the first
 * "# pid" section; forked children's sections follow it). */
static inline int tree_read(struct lazymap *lm, struct maps_entry *out, int max)
{
	char *buf = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int n = 0, ret;

	if (!f)
		return -errno;
	ret = lazymap_dump(lm, f);
	fclose(f);
	if (ret < 0) {
		free(buf);
		return ret;
	}
	int sections = 0;

	for (line = strtok_r(buf, "\n", &save); line && n < max; line = strtok_r(NULL, "\n", &save)) {
		unsigned long s, e;

		if (!strncmp(line, "# pid ", 6) && ++sections > 1)
			break;

		if (sscanf(line, "%lx-%lx %4s", &s, &e, out[n].perms) != 3)
			continue;
		out[n].start = s;
		out[n].end = e;
		n++;
	}
	free(buf);
	return n;
}

/* ---- seeds */

/* xorshift64*: the tests' own PRNG, so a seed replays the same run. */
static inline uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t test_seed(void)
{
	const char *e = getenv("LAZYMAP_SEED");

	return e ? strtoull(e, NULL, 0) : 0x1a2b3c4d5e6f7788ULL;
}

#endif
