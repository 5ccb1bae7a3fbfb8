/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the tests: what the kernel offers (userfaultfd access and
 * features) and the skip when it lacks them, catching the SIGBUS/SIGSEGV a
 * touch raises, reading /proc/self/maps, waiting for a state with a deadline;
 * scratch files with known bytes, a forked child that reports how it failed,
 * and the kernel's twin: one test body run on lazymap and on mmap itself.
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
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

/*
 * lib/internal.h: 0 once lm serves no fault, has no read in flight and no
 * prefetch queued, or -ETIMEDOUT. Hidden in the library, but the tests link
 * its objects (lazymap_internal_dep).
 */
int lzm_quiesce(struct lazymap *lm, unsigned timeout_ms);
/* lib/internal.h: hold the budget's evictor before it moves pages (as
 * fork() does), and let it go. */
void lzm_evict_fork_hold(struct lazymap *lm);
void lzm_evict_fork_release(struct lazymap *lm);

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

/* The first line of /proc/self/task/TID/WHAT, newline cut; false if the thread is gone. */
static inline bool task_read(const char *tid, const char *what, char *buf, size_t len)
{
	char path[320];
	FILE *f;
	bool ok;

	snprintf(path, sizeof(path), "/proc/self/task/%s/%s", tid, what);
	f = fopen(path, "r");
	if (!f)
		return false;
	ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	if (ok)
		buf[strcspn(buf, "\n")] = '\0';
	return ok;
}

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
		char buf[512], *close_paren;
		long nr;

		if (e->d_name[0] == '.' || !task_read(e->d_name, "stat", buf, sizeof(buf)) ||
		    !strstr(buf, "(lazymap-h"))
			continue;
		n++;
		close_paren = strrchr(buf, ')');
		if (!close_paren || close_paren[2] != 'S' ||
		    !task_read(e->d_name, "syscall", buf, sizeof(buf)))
			continue;
		nr = strtol(buf, NULL, 10);
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

/*
 * The descriptor table full: copies of fd in every free slot, under an
 * RLIMIT_NOFILE of at most FD_FILL_MAX (a table of a million would take a
 * while to fill). fd_table_free() closes those copies, and nothing else:
 * the slots they took may lie between descriptors that were open already.
 */
#define FD_FILL_MAX 256
struct fd_fill {
	int n, fds[FD_FILL_MAX];
};

static inline void fd_table_fill(struct fd_fill *f, int fd)
{
	struct rlimit rl;
	int d;

	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur > FD_FILL_MAX) {
		rl.rlim_cur = FD_FILL_MAX;
		cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	f->n = 0;
	while (f->n < FD_FILL_MAX && (d = dup(fd)) >= 0)
		f->fds[f->n++] = d;
	cr_assert_eq(errno, EMFILE, "dup: %s", strerror(errno));
}

static inline void fd_table_free(struct fd_fill *f)
{
	while (f->n)
		close(f->fds[--f->n]);
}

/* Pages of [p, p + len) in memory now (mincore). */
static inline size_t present_pages(const char *p, size_t len)
{
	size_t n = len / pgsz(), present = 0;
	unsigned char *vec = malloc(n);

	cr_assert_not_null(vec);
	cr_assert_eq(mincore((void *)p, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		present += vec[i] & 1;
	free(vec);
	return present;
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
 * A region's bytes are written by the kernel (UFFDIO_COPY, a mapping that
 * replaces another), which ThreadSanitizer cannot see: it would take a
 * touch racing a map of the same range for a race of ours. Touches are not
 * what it checks.
 */
#ifdef __SANITIZE_THREAD__
#define TOUCH_UNCHECKED __attribute__((no_sanitize_thread, noinline))
#else
#define TOUCH_UNCHECKED
#endif
static TOUCH_UNCHECKED char touch_load(const char *p)
{
	return *(const volatile char *)p;
}

static TOUCH_UNCHECKED void touch_store(char *p, char v)
{
	*(volatile char *)p = v;
}

/*
 * Read (or write, if value >= 0) one byte at p; report the signal it raised.
 * Several threads may touch the same byte.
 */
static inline struct touch_fault touch(char *p, int value, char *out)
{
	touch_last = (struct touch_fault){ 0 };
	if (sigsetjmp(touch_jmp, 1) == 0) {
		touch_armed = 1;
		if (value >= 0) {
			touch_store(p, (char)value);
		} else {
			char c = touch_load(p);

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

/* ---- scratch directories and files with known bytes */

/*
 * A fresh directory under /var/tmp (a disk file system, and writable by the
 * suite's run as nobody); dir gets its path. 0 or -errno.
 */
static inline int scratch_make(char *dir, size_t len, const char *tag)
{
	snprintf(dir, len, "/var/tmp/lazymap-%s.XXXXXX", tag);
	return mkdtemp(dir) ? 0 : -errno;
}

/* Remove dir with what is in it: files and empty directories, one level. */
static inline void scratch_remove(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[4096];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (unlink(path) < 0)
			rmdir(path);
	}
	closedir(d);
	rmdir(dir);
}

/* A file's bytes: a pure function of (key, offset), different for another page, offset or key. */
static inline uint8_t pattern_byte(uint64_t key, uint64_t off)
{
	uint64_t x = (off + key) * 0x9E3779B97F4A7C15ULL;

	return (uint8_t)((x >> 29) ^ (off >> 12) ^ key);
}

static inline void pattern_fill(uint8_t *buf, size_t len, uint64_t key, uint64_t off)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern_byte(key, off + i);
}

/* Write len bytes of key's pattern at off; 0 or -errno. */
static inline int pattern_write(int fd, uint64_t key, uint64_t off, uint64_t len)
{
	size_t chunk = 1 << 20;
	uint8_t *buf = malloc(chunk);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	while (len && !ret) {
		size_t n = len < chunk ? (size_t)len : chunk;

		pattern_fill(buf, n, key, off);
		for (size_t done = 0; done < n && !ret;) {
			ssize_t w = pwrite(fd, buf + done, n - done, (off_t)(off + done));

			if (w > 0)
				done += (size_t)w;
			else
				ret = w < 0 ? -errno : -EIO;
		}
		off += n;
		len -= n;
	}
	free(buf);
	return ret;
}

/*
 * Compare the file's bytes [0, size) with what expect() says they are, in
 * chunks of 1 MiB (expect fills buf with the bytes at off). -1 if equal, else
 * the first differing offset (*got, *want: its bytes); -2 if pread failed
 * or came back short (*got: the errno or 0).
 */
typedef void (*expect_fn)(uint8_t *buf, uint64_t off, size_t len, void *arg);

static inline long long file_first_diff(int fd, uint64_t size, expect_fn expect, void *arg,
					int *got, int *want)
{
	size_t chunk = 1 << 20;
	uint8_t *have = malloc(chunk), *should = malloc(chunk);
	long long at = -1;

	if (!have || !should) {
		free(have);
		free(should);
		*got = ENOMEM;
		return -2;
	}
	for (uint64_t off = 0; off < size && at == -1; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
		ssize_t r = pread(fd, have, n, (off_t)off);

		if (r != (ssize_t)n) {
			*got = r < 0 ? errno : 0;
			at = -2;
			break;
		}
		expect(should, off, n, arg);
		if (memcmp(have, should, n))
			for (size_t i = 0; i < n; i++)
				if (have[i] != should[i]) {
					*got = have[i];
					*want = should[i];
					at = (long long)(off + i);
					break;
				}
	}
	free(have);
	free(should);
	return at;
}

/* ---- a forked child that says how it failed */

/*
 * A child's verdict, in memory shared with the parent so that it survives
 * however the child ends: where a check failed and why, or why it skipped,
 * and how far it got (stage: the body's own marks). The child uses no
 * Criterion call (an assertion there would end the child, not the test):
 * VCHECK() fails it with a message, verdict_skip() skips the test.
 */
struct verdict {
	int line;
	volatile int stage;
	char msg[512];
};

#define VERDICT_FAILED 1
#define VERDICT_SKIPPED 77

static inline struct verdict *verdict_new(void)
{
	void *v = mmap(NULL, sizeof(struct verdict), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return v == MAP_FAILED ? NULL : (struct verdict *)v;
}

static inline void verdict_free(struct verdict *v)
{
	munmap(v, sizeof(*v));
}

__attribute__((noreturn, format(printf, 4, 0)))
static inline void verdict_end(struct verdict *v, int code, int line, const char *fmt, va_list ap)
{
	v->line = line;
	vsnprintf(v->msg, sizeof(v->msg), fmt, ap);
	_exit(code);
}

__attribute__((noreturn, format(printf, 3, 4)))
static inline void verdict_fail(struct verdict *v, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	verdict_end(v, VERDICT_FAILED, line, fmt, ap);
}

__attribute__((noreturn, format(printf, 2, 3)))
static inline void verdict_skip(struct verdict *v, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	verdict_end(v, VERDICT_SKIPPED, 0, fmt, ap);
}

#define VCHECK(v, cond, ...)                                                   \
	do {                                                                   \
		if (!(cond))                                                   \
			verdict_fail((v), __LINE__, __VA_ARGS__);              \
	} while (0)

/*
 * Run body(v, arg) in a child under a watchdog (alarm: a hang ends it with
 * SIGALRM); it exits with what body returns. The parent's pid of it, or
 * -errno. Fork before starting threads where the child starts its own
 * (ThreadSanitizer refuses threads after a fork of a threaded process).
 */
static inline pid_t verdict_fork(struct verdict *v, int (*body)(struct verdict *, void *),
				 void *arg, unsigned watchdog_s)
{
	pid_t pid;

	memset(v, 0, sizeof(*v));
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		alarm(watchdog_s);
		_exit(body(v, arg));
	}
	return pid;
}

#ifdef cr_skip_test
/*
 * Wait for the child and judge it: want_sig 0, it must exit with 0; else it
 * must die by want_sig (a body that kills itself). Its skip skips the test,
 * with its reason.
 */
static inline void verdict_expect(struct verdict *v, pid_t pid, int want_sig, const char *what)
{
	int status;

	cr_assert_gt(pid, 0, "%s: fork: %s", what, strerror(-pid));
	cr_assert_eq(waitpid(pid, &status, 0), pid, "%s: waitpid: %s", what, strerror(errno));
	if (WIFEXITED(status) && WEXITSTATUS(status) == VERDICT_SKIPPED)
		skip_test("%s: %s", what, v->msg);
	cr_assert(!WIFEXITED(status) || WEXITSTATUS(status) != VERDICT_FAILED,
		  "%s: the child failed at line %d (stage %d): %s", what, v->line, v->stage, v->msg);
	cr_assert(!WIFSIGNALED(status) || WTERMSIG(status) != SIGALRM,
		  "%s: the child's watchdog fired at stage %d: it hung", what, v->stage);
	if (want_sig)
		cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == want_sig,
			  "%s: the child ended with status %#x at stage %d, want death by signal %d",
			  what, status, v->stage, want_sig);
	else
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			  "%s: the child ended with status %#x at stage %d%s%s", what, status, v->stage,
			  WIFSIGNALED(status) ? ", killed by " : "",
			  WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "");
}
#endif

/* ---- the kernel's twin: one test body, run on lazymap and on the kernel */

/*
 * A test of what a mapping shows is right for lazymap only if the kernel's
 * own mapping passes it too: a body written against struct twin runs on
 *   TWIN_LAZYMAP  lazymap_map, lazymap_sync... of a lazymap of its own;
 *   TWIN_MMAP     the kernel's mmap (MAP_SHARED/MAP_PRIVATE), msync(MS_SYNC)
 *                 for sync, munmap (the page cache keeps what was written);
 *   TWIN_WRITE    the kernel's write(2) path, for write errors that a shared
 *                 mmap cannot report (tmpfs out of space is SIGBUS at the
 *                 write fault, RLIMIT_FSIZE does not apply to it): anonymous
 *                 memory holding a pread() copy of the file (a fault on a
 *                 tmpfs hole, even through MAP_PRIVATE, would allocate it),
 *                 and a sync that pwrite()s every page differing from the
 *                 file, then fdatasync()s; a failed page stays different,
 *                 so dirty, for the next sync; SIGXFSZ is ignored while it
 *                 writes, as lazymap promises. Shared regions do not see
 *                 each other's writes there, nor is there SIGBUS past the
 *                 file's end: one region per file, inside the file.
 * Flags and prot are lazymap's. Every call returns 0 or -errno.
 */
enum twin_kind { TWIN_LAZYMAP, TWIN_MMAP, TWIN_WRITE };

#define TWIN_MAX_REGIONS 16

struct twin_region {
	char *addr;
	size_t len;
	int fd;            /* a dup of the caller's (TWIN_WRITE writes through it) */
	off_t off;
	int flags;
};

struct twin {
	enum twin_kind kind;
	struct lazymap *lm;
	int n;
	struct twin_region r[TWIN_MAX_REGIONS];
};

static inline const char *twin_name(const struct twin *t)
{
	return t->kind == TWIN_LAZYMAP ? "lazymap" : t->kind == TWIN_MMAP ? "mmap" : "write(2)";
}

static inline int twin_open(struct twin *t, enum twin_kind kind, const struct lazymap_opts *opts)
{
	memset(t, 0, sizeof(*t));
	t->kind = kind;
	return kind == TWIN_LAZYMAP ? lazymap_open(&t->lm, opts) : 0;
}

static inline int twin_map(struct twin *t, void *addrp, size_t len, int prot, int flags, int fd,
			   off_t off)
{
	void **out = (void **)addrp;
	int mflags;
	void *p;

	*out = NULL;
	if (t->kind == TWIN_LAZYMAP)
		return lazymap_map(t->lm, out, len, prot, flags, fd, off);
	if (t->n == TWIN_MAX_REGIONS)
		return -ENOMEM;
	mflags = (flags & LAZYMAP_SHARED) ? MAP_SHARED : MAP_PRIVATE;
	if (flags & LAZYMAP_ANON)
		mflags |= MAP_ANONYMOUS;
	p = mmap(NULL, len, prot, mflags, fd, off); /* TWIN_WRITE too: the kernel's checks */
	if (p == MAP_FAILED)
		return -errno;
	if (t->kind == TWIN_WRITE && !(flags & LAZYMAP_ANON)) {
		ssize_t got = 0;

		munmap(p, len);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -errno;
		for (size_t done = 0; done < len; done += (size_t)got) {
			got = pread(fd, (char *)p + done, len - done, off + (off_t)done);
			if (got <= 0)
				break;
		}
		if (got < 0 || mprotect(p, len, prot) < 0) {
			int err = -errno;

			munmap(p, len);
			return err;
		}
	}
	t->r[t->n] = (struct twin_region){ .addr = p, .len = (len + pgsz() - 1) & ~(pgsz() - 1),
					   .fd = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0),
					   .off = off, .flags = flags };
	t->n++;
	*out = p;
	return 0;
}

/* TWIN_WRITE: the file's bytes of one page of a shared region, and whether they differ from it. */
static inline int twin_page_dirty(const struct twin_region *r, size_t pg, uint64_t size,
				  uint8_t *buf, size_t *n)
{
	size_t ps = pgsz();
	uint64_t off = (uint64_t)r->off + pg * ps;
	ssize_t got;

	*n = off >= size ? 0 : size - off < ps ? (size_t)(size - off) : ps;
	if (!*n)
		return 0; /* wholly beyond the end: nothing of it is the file's */
	got = pread(r->fd, buf, *n, (off_t)off);
	if (got < 0)
		return -errno;
	if ((size_t)got < *n)
		memset(buf + got, 0, *n - (size_t)got);
	return memcmp(buf, r->addr + pg * ps, *n) != 0;
}

/* TWIN_WRITE: write back the pages of [lo, hi) that differ from the file. */
static inline int twin_write_back(struct twin *t, uintptr_t lo, uintptr_t hi)
{
	size_t ps = pgsz();
	uint8_t *buf = malloc(ps);
	struct sigaction ign = { .sa_handler = SIG_IGN }, old;
	int err = 0;

	if (!buf)
		return -ENOMEM;
	sigaction(SIGXFSZ, &ign, &old);
	for (int i = 0; i < t->n; i++) {
		struct twin_region *r = &t->r[i];
		uintptr_t a = (uintptr_t)r->addr, b = a + r->len;
		struct stat sb;
		bool wrote = false;

		if (!(r->flags & LAZYMAP_SHARED) || b <= lo || a >= hi)
			continue;
		if (fstat(r->fd, &sb) < 0) {
			err = err ? err : -errno;
			continue;
		}
		for (uintptr_t p = a > lo ? a : lo; p < b && p < hi; p += ps) {
			size_t pg = (p - a) / ps, n, done = 0;
			int d = twin_page_dirty(r, pg, (uint64_t)sb.st_size, buf, &n);

			if (d < 0)
				err = err ? err : d;
			while (d > 0 && done < n) {
				ssize_t w = pwrite(r->fd, (char *)p + done, n - done,
						   (off_t)((uint64_t)r->off + pg * ps + done));

				if (w <= 0) {
					err = err ? err : w < 0 ? -errno : -EIO;
					break;
				}
				done += (size_t)w;
				wrote = true;
			}
		}
		if (wrote && fdatasync(r->fd) < 0)
			err = err ? err : -errno;
	}
	sigaction(SIGXFSZ, &old, NULL);
	free(buf);
	return err;
}

static inline int twin_sync(struct twin *t, void *addr, size_t len)
{
	if (t->kind == TWIN_LAZYMAP)
		return lazymap_sync(t->lm, addr, len);
	if (t->kind == TWIN_MMAP)
		return msync(addr, len, MS_SYNC) < 0 ? -errno : 0;
	return twin_write_back(t, (uintptr_t)addr, (uintptr_t)addr + len);
}

static inline int twin_unmap(struct twin *t, void *addr, size_t len)
{
	uintptr_t lo = (uintptr_t)addr, hi = lo + len;
	int ret;

	if (t->kind == TWIN_LAZYMAP)
		return lazymap_unmap(t->lm, addr, len);
	/* as lazymap_unmap: written back first, and nothing unmapped if that fails */
	if (t->kind == TWIN_WRITE && (ret = twin_write_back(t, lo, hi)))
		return ret;
	if (munmap(addr, len) < 0)
		return -errno;
	for (int i = 0; i < t->n; i++) {
		struct twin_region *r = &t->r[i];
		uintptr_t a = (uintptr_t)r->addr, b = a + r->len;

		if (b <= lo || a >= hi)
			continue;
		if (b > hi && t->n < TWIN_MAX_REGIONS) { /* the part above stays */
			t->r[t->n] = *r;
			t->r[t->n].addr = (char *)hi;
			t->r[t->n].len = b - hi;
			t->r[t->n].off += (off_t)(hi - a);
			t->r[t->n].fd = r->fd < 0 ? -1 : fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
			t->n++;
		}
		if (a < lo) { /* so does the part below */
			r->len = lo - a;
			continue;
		}
		if (r->fd >= 0)
			close(r->fd);
		t->r[i--] = t->r[--t->n];
	}
	return 0;
}

static inline int twin_protect(struct twin *t, void *addr, size_t len, int prot)
{
	if (t->kind == TWIN_LAZYMAP)
		return lazymap_protect(t->lm, addr, len, prot);
	return mprotect(addr, len, prot) < 0 ? -errno : 0;
}

/* Unmap everything, writing back first; the first error, as lazymap_close gives it. */
static inline int twin_close(struct twin *t)
{
	int err = 0, ret;

	if (t->kind == TWIN_LAZYMAP) {
		ret = lazymap_close(t->lm);
		t->lm = NULL;
		return ret;
	}
	if (t->kind == TWIN_WRITE)
		err = twin_write_back(t, 0, UINTPTR_MAX);
	while (t->n) {
		struct twin_region *r = &t->r[--t->n];

		/* (ENOMEM: a range the program has unmapped itself) */
		if (t->kind == TWIN_MMAP && (r->flags & LAZYMAP_SHARED) &&
		    msync(r->addr, r->len, MS_SYNC) < 0 && errno != ENOMEM && !err)
			err = -errno;
		munmap(r->addr, r->len);
		if (r->fd >= 0)
			close(r->fd);
	}
	return err;
}

/* lazymap's counters; false for the kernel's twins, which have none. */
static inline bool twin_stats(struct twin *t, struct lazymap_stats *st)
{
	return t->kind == TWIN_LAZYMAP && lazymap_stats(t->lm, st) == 0;
}

/*
 * Pages written and not yet on the file: lazymap's dirty_pages, the pages
 * that differ from the file for TWIN_WRITE; -1 for TWIN_MMAP (unknown).
 */
static inline long twin_dirty(struct twin *t)
{
	struct lazymap_stats st;
	size_t ps = pgsz(), n;
	uint8_t *buf;
	long dirty = 0;

	if (t->kind == TWIN_LAZYMAP)
		return lazymap_stats(t->lm, &st) == 0 ? (long)st.dirty_pages : -1;
	if (t->kind == TWIN_MMAP || !(buf = malloc(ps)))
		return -1;
	for (int i = 0; i < t->n; i++) {
		struct twin_region *r = &t->r[i];
		struct stat sb;

		if (!(r->flags & LAZYMAP_SHARED) || fstat(r->fd, &sb) < 0)
			continue;
		for (size_t pg = 0; pg < r->len / ps; pg++)
			dirty += twin_page_dirty(r, pg, (uint64_t)sb.st_size, buf, &n) > 0;
	}
	free(buf);
	return dirty;
}

#ifdef cr_skip_test
/* A test's scratch directory: made by its .init (or the test fails)... */
static inline void scratch_setup(char *dir, size_t len, const char *tag)
{
	int ret = scratch_make(dir, len, tag);

	cr_assert_eq(ret, 0, "mkdtemp %s: %s", dir, strerror(-ret));
}

/* ...and removed by its .fini, or before a skip (dir is "" once gone). */
static inline void scratch_drop(char *dir)
{
	if (dir[0])
		scratch_remove(dir);
	dir[0] = '\0';
}

/* A twin for a test: a lazymap as open_or_skip() gives it, or the kernel. */
static inline void twin_open_or_skip(struct twin *t, enum twin_kind kind,
				     const struct lazymap_opts *opts)
{
	memset(t, 0, sizeof(*t));
	t->kind = kind;
	if (kind == TWIN_LAZYMAP)
		t->lm = open_or_skip(opts);
}

/* Wait until lazymap's handlers are idle (quiesce()); nothing to wait for with the kernel. */
/*
 * dir/name, size bytes of key's pattern; path gets its name. The bytes the
 * file holds, zeros up to the end of its last page, come back in a buffer
 * of npages pages (free() it).
 */
static inline uint8_t *pattern_file(const char *dir, const char *name, uint64_t size, uint64_t key,
				    size_t npages, char *path, size_t pathlen)
{
	uint8_t *bytes = calloc(npages, pgsz());
	int fd, ret;

	cr_assert_not_null(bytes);
	cr_assert_geq(npages * pgsz(), size);
	snprintf(path, pathlen, "%s/%s", dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	cr_assert_eq(ftruncate(fd, (off_t)size), 0);
	ret = pattern_write(fd, key, 0, size);
	cr_assert_eq(ret, 0, "writing %s: %s", path, strerror(-ret));
	close(fd);
	pattern_fill(bytes, size, key, 0);
	return bytes;
}

static inline int open_file(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	return fd;
}

/* Memory (a mapping) against what it must hold: fails with the first differing byte. */
static inline void expect_mem(const char *what, const char *mem, const uint8_t *want, size_t len)
{
	if (!memcmp(mem, want, len))
		return;
	for (size_t i = 0; i < len; i++)
		cr_assert_eq((uint8_t)mem[i], want[i], "%s: byte %#zx (page %zu) is %#x, want %#x",
			     what, i, i / pgsz(), (uint8_t)mem[i], want[i]);
}

/* The file's bytes [off, off + len), read with pread, against want (indexed from off). */
static inline void expect_file_range(const char *what, int fd, const uint8_t *want, uint64_t off,
				     size_t len)
{
	uint8_t *have = malloc(len);
	ssize_t r;

	cr_assert_not_null(have);
	r = pread(fd, have, len, (off_t)off);
	cr_assert_eq(r, (ssize_t)len, "%s: pread: %zd (%s)", what, r, strerror(errno));
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(have[i], want[i], "%s: the file's byte %#llx (page %llu) is %#x, want %#x",
			     what, (unsigned long long)(off + i), (unsigned long long)((off + i) / pgsz()),
			     have[i], want[i]);
	free(have);
}

/* The whole file, and its size. */
static inline void expect_file(const char *what, int fd, const uint8_t *want, uint64_t size)
{
	struct stat sb;

	cr_assert_eq(fstat(fd, &sb), 0);
	cr_assert_eq((uint64_t)sb.st_size, size, "%s: the file's size is %lld, want %llu", what,
		     (long long)sb.st_size, (unsigned long long)size);
	expect_file_range(what, fd, want, 0, size);
}

static inline void *map_or_fail(struct twin *t, size_t len, int prot, int flags, int fd, off_t off,
				const char *what)
{
	void *p = NULL;
	int ret = twin_map(t, &p, len, prot, flags, fd, off);

	cr_assert_eq(ret, 0, "%s: map (flags %#x, offset %lld) on %s: %s", what, flags,
		     (long long)off, twin_name(t), strerror(-ret));
	return p;
}

static inline void twin_quiesce(struct twin *t)
{
	if (t->kind == TWIN_LAZYMAP)
		quiesce(t->lm);
}
#endif

#endif
