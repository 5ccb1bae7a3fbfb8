/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the tests: catching the SIGBUS/SIGSEGV a touch raises,
 * reading /proc/self/maps, waiting for a state with a deadline (handler
 * threads asleep, a lazymap quiet).
 */
#ifndef LAZYMAP_TESTS_COMMON_H
#define LAZYMAP_TESTS_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ---- the Criterion fixtures (stress.c is plain C) */

#ifdef cr_skip_test
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

/* lazymap_dump() parsed back: our tree's VMAs in order. */
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
	for (line = strtok_r(buf, "\n", &save); line && n < max; line = strtok_r(NULL, "\n", &save)) {
		unsigned long s, e;

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
