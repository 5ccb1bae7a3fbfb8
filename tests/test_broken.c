// SPDX-License-Identifier: MIT
/*
 * A handler thread that cannot go on: the lazymap says so (log hook,
 * stats.broken), every later call is -EIO, and no touching thread hangs:
 * faults are answered with SIGBUS until close. The failure is injected for
 * real: the handler's epoll descriptor is replaced under it, as a program
 * that dup2()s over a descriptor it does not own would do.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "common.h"
#include "internal.h"

struct logbook {
	pthread_mutex_t lock;
	int n;
	int level;
	char last[256];
};

static void log_hook(void *arg, int level, const char *msg)
{
	struct logbook *lb = arg;

	pthread_mutex_lock(&lb->lock);
	lb->n++;
	lb->level = level;
	snprintf(lb->last, sizeof(lb->last), "%s", msg);
	pthread_mutex_unlock(&lb->lock);
}

static uint64_t broken_errno(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st.broken;
}

/* Break lm's only handler: its next sleep fails (epoll_wait on /dev/null). */
static void break_handler(struct lazymap *lm, char *page)
{
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	cr_assert_geq(null, 0);
	/*
	 * Asleep first: its epoll_wait holds the real epoll set, and the touch
	 * below is served. A handler not yet asleep (just started, or polling)
	 * would sleep on /dev/null at once and break before the touch.
	 */
	wait_handlers_asleep(lm, 1, "before the break");
	cr_assert_geq(dup2(null, lm->handlers[0].epfd), 0);
	close(null);
	/* The fault wakes the handler; it then sleeps anew, on /dev/null. */
	cr_assert_eq(touch(page, -1, NULL).signo, 0, "a touch before the break must be served");
	for (double t0 = now_s(); !broken_errno(lm); usleep(1000))
		cr_assert_lt(now_s() - t0, 10, "the handler never noticed its broken epoll set");
}

static struct lazymap *open_one(struct logbook *lb)
{
	struct lazymap_opts o = { .handler_threads = 1, .log = lb ? log_hook : NULL,
				  .log_arg = lb };

	return open_or_skip(&o);
}

Test(broken, faults_get_sigbus_and_calls_eio_after_a_handler_breaks, .timeout = 60)
{
	struct logbook lb = { .lock = PTHREAD_MUTEX_INITIALIZER };
	size_t ps = pgsz(), len = 64 * ps;
	struct lazymap *lm = open_one(&lb);
	char *p, *q, c = 1;

	touch_install();
	cr_assert_eq(lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_advise(lm, p, len, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(touch(p, 7, NULL).signo, 0);
	break_handler(lm, p + ps);

	cr_assert_eq(broken_errno(lm), EINVAL, "stats.broken = %lu", (unsigned long)broken_errno(lm));
	/* The handler says so once it has marked the lazymap broken: wait for its word. */
	for (double t0 = now_s();; usleep(1000)) {
		pthread_mutex_lock(&lb.lock);
		if (lb.n >= 1 || now_s() - t0 > 10)
			break;
		pthread_mutex_unlock(&lb.lock);
	}
	cr_assert_geq(lb.n, 1, "the log hook heard nothing in 10 s");
	cr_assert_eq(lb.level, LOG_ERR);
	cr_assert(strstr(lb.last, "epoll_wait"), "log: %s", lb.last);
	pthread_mutex_unlock(&lb.lock);

	/* Pages filled before the break keep their bytes; missing ones are SIGBUS. */
	cr_assert_eq(touch(p, -1, &c).signo, 0);
	cr_assert_eq(c, 7);
	for (int i = 2; i < 6; i++) {
		struct touch_fault f = touch(p + i * ps + 5, -1, NULL);

		cr_assert_eq(f.signo, SIGBUS, "page %d after the break: signal %d", i, f.signo);
		cr_assert_eq(f.addr, p + i * ps + 5);
	}
	cr_assert_eq(lazymap_map(lm, (void **)&q, len, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON,
				 -1, 0), -EIO);
	cr_assert_eq(lazymap_unmap(lm, p, ps), -EIO);
	cr_assert_eq(lazymap_prefetch(lm, p, ps), -EIO);
	cr_assert_eq(lazymap_dump(lm, stdout), -EIO);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* The library never prints unless asked: by the hook, or by LAZYMAP_LOG. */
static size_t stderr_of_a_break(const char *env)
{
	char path[] = "/tmp/lazymap-stderr-XXXXXX", buf[512];
	int fd = mkstemp(path), saved = dup(2);
	struct lazymap *lm;
	size_t n;
	char *p;

	cr_assert_geq(fd, 0);
	unlink(path);
	if (env)
		setenv("LAZYMAP_LOG", env, 1);
	else
		unsetenv("LAZYMAP_LOG");
	fflush(stderr);
	dup2(fd, 2);
	lm = open_one(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, 16 * pgsz(), PROT_READ,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_advise(lm, p, 16 * pgsz(), LAZYMAP_ADV_RANDOM), 0);
	break_handler(lm, p);
	cr_assert_eq(touch(p + pgsz(), -1, NULL).signo, SIGBUS);
	cr_assert_eq(lazymap_close(lm), 0);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	unsetenv("LAZYMAP_LOG");
	n = (size_t)pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	buf[n] = 0;
	if (env && strcmp(env, "0"))
		cr_assert(strstr(buf, "liblazymap: handler 0: epoll_wait"), "stderr: %s", buf);
	return n;
}

Test(broken, silent_by_default_stderr_when_lazymap_log_asks, .timeout = 60)
{
	touch_install();
	cr_assert_eq(stderr_of_a_break(NULL), 0, "printed without being asked");
	cr_assert_eq(stderr_of_a_break("0"), 0, "LAZYMAP_LOG=0 printed");
	cr_assert_gt(stderr_of_a_break("1"), 0, "LAZYMAP_LOG=1 printed nothing");
}

/*
 * The program closes the lazymap's userfaultfd by mistake. Were that the last
 * reference, the kernel would unregister every region and hand out zeros for
 * pages never produced: the library keeps one of its own, notices, and
 * answers with SIGBUS.
 */
Test(broken, a_closed_userfaultfd_gives_sigbus_never_zeros, .timeout = 60)
{
#ifdef __SANITIZE_THREAD__
	/* It reports the close as a race with the handler's read: it is one,
	 * the very mistake this test makes on purpose. */
	cr_skip_test("ThreadSanitizer reports the deliberate close as a race");
#endif
	struct lazymap_opts o = { .handler_threads = 1 };
	struct lazymap *lm = open_or_skip(&o);
	size_t ps = pgsz(), len = 64 * ps;
	char *p, c = 0;

	touch_install();
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, len, PROT_READ, fill_5a, NULL), 0);
	cr_assert_eq(lazymap_advise(lm, p, len, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(touch(p, -1, &c).signo, 0);
	cr_assert_eq(c, 0x5a);
	cr_assert_eq(close(lm->mm.uffd), 0);
	for (int i = 1; i < 8; i++) {
		struct touch_fault f = touch(p + i * ps, -1, &c);

		cr_assert_eq(f.signo, SIGBUS, "page %d after the close: signal %d, byte %#x", i,
			     f.signo, (unsigned char)c);
	}
	cr_assert_eq(broken_errno(lm), EBADF);
	cr_assert_eq(lazymap_close(lm), 0);
}
