// SPDX-License-Identifier: MIT
/*
 * fork(): a lazymap belongs to the process that opened it (a child's calls on
 * an inherited handle are -EBADF and leave the parent's lazymap as it was).
 * Where fork is followed (stats.fork_followed), a child's copies of the
 * regions read what the parent's would, untouched pages coming from the
 * source through the parent's handlers, copy-on-write both ways, and children
 * leave nothing behind in the parent; where it is not, fill and file regions
 * are not copied (SIGSEGV in the child) and zero regions read zeros.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "common.h"

/* How long a child may take, and how long the parent waits for it (ASan and
 * TSan included; a child that is fine takes milliseconds). */
#define CHILD_WATCHDOG_S 60
#define CHILD_DEADLINE_S 90.0
/* How long the parent waits for a served child to be let go of. */
#define RELEASE_DEADLINE_S 30.0

/* AddressSanitizer keeps freed memory in quarantine, resident: emptied before
 * RSS is compared, where the runtime has the call (weak: NULL elsewhere). */
void __sanitizer_purge_allocator(void) __attribute__((weak));

/*
 * How much RSS 200 children may add. ThreadSanitizer adds shadow and
 * metadata for memory first touched, once: 3-6 MiB measured whether 100 or
 * 800 children ran, against 0.1 MiB plain and under 1.5 MiB with ASan.
 */
#if defined(__SANITIZE_THREAD__)
#define RSS_GROWTH_KIB 8192
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RSS_GROWTH_KIB 8192
#endif
#endif
#ifndef RSS_GROWTH_KIB
#define RSS_GROWTH_KIB 4096
#endif

Test(fork, a_child_cannot_touch_its_parents_lazymap, .timeout = 60)
{
	struct lazymap *lm = open_or_skip(NULL);
	size_t ps = pgsz(), len = 256 * ps;
	struct lazymap_stats st;
	char *p, *z;
	int status;
	pid_t pid;

	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, len, PROT_READ, fill_5a, NULL), 0);
	cr_assert_eq(lazymap_map(lm, (void **)&z, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(p[0], 0x5a);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct lazymap_stats cst;
		void *q;
		int bad = 0;

		/* Every call: -EBADF, and nothing done to the parent's regions. */
		bad |= lazymap_unmap(lm, p, len) != -EBADF;
		bad |= (lazymap_protect(lm, p, len, PROT_NONE) != -EBADF) << 1;
		bad |= (lazymap_map(lm, &q, len, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0) !=
			-EBADF) << 2;
		bad |= (lazymap_stats(lm, &cst) != -EBADF) << 3;
		bad |= (lazymap_prefetch(lm, p, len) != -EBADF) << 4;
		bad |= (lazymap_close(lm) != -EBADF) << 5;
		_exit(bad);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child did not exit (status %#x)", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child's calls that did not give -EBADF: mask %#x",
		     WEXITSTATUS(status));
	/* The parent's regions are still served, from their sources. */
	for (size_t i = 1; i < len / ps; i += 17)
		cr_assert_eq(p[i * ps], 0x5a, "page %zu of the fill region after the child", i);
	cr_assert_eq(z[100 * ps], 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.broken, 0);
	cr_assert_eq(st.regions, 2);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ contents */

/* A byte for each page and offset: bytes from the wrong page, offset or
 * writer differ (pages far apart too, unlike o * 31 alone). */
static inline uint8_t mix(uint64_t o, uint64_t key)
{
	uint64_t page = (o >> 12) + key * 0x51;

	return (uint8_t)(o * (2 * key + 29) + (page * 0x9E3779B97F4A7C15ULL >> 56));
}

/* What the fill callback produces at region offset o. */
static inline uint8_t fill_byte(uint64_t o)
{
	return mix(o, 1);
}

/* The scratch file's byte at file offset o. */
static inline uint8_t file_byte(uint64_t o)
{
	return mix(o, 2) ^ 0x3c;
}

enum kind { ZERO, FILL, FILE_, NKINDS };
static const char *const kind_name[NKINDS] = { "zero", "fill", "file" };

/*
 * What a page holds: its source's bytes, or what a writer put there (the
 * parent before the fork, the parent after it, the child), each a pattern of
 * its own per writer and region kind.
 */
enum content { SRC, PARENT_BEFORE, PARENT_AFTER, CHILD, NCONTENTS };
static const char *const content_name[NCONTENTS] = {
	"the source's bytes", "the parent's bytes from before the fork",
	"the parent's bytes from after the fork", "the child's bytes",
};

/* The file region maps the file from this page on, so that a region offset
 * read as a file offset gives the wrong bytes. */
#define FILE_OFF_PAGES 3

/*
 * The fill callback's argument: how often it ran, which pages it produced
 * (one bit each: the parent sees whether a child's fault ran it), and how
 * long each call spins, to keep fills in flight longer.
 */
struct fill_arg {
	atomic_ulong calls;
	_Atomic uint64_t *produced;
	size_t npages;
	unsigned spin_us;
};

static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	struct fill_arg *a = arg;
	uint8_t *b = page;
	size_t ps = pgsz();

	if (a->spin_us)
		for (double t0 = now_s(); now_s() - t0 < a->spin_us * 1e-6;)
			;
	for (size_t i = 0; i < len; i++)
		b[i] = fill_byte(offset + i);
	for (uint64_t pg = offset / ps; pg < (offset + len) / ps && pg < a->npages; pg++)
		atomic_fetch_or(&a->produced[pg / 64], 1ull << (pg % 64));
	atomic_fetch_add(&a->calls, 1);
	return 0;
}

/* ------------------------------------------------------------ fixture */

/* One region of each kind, npages each, in one lazymap. */
struct fixture {
	struct lazymap *lm;
	char *r[NKINDS];
	size_t ps, npages, len;
	int fd;            /* the scratch file (already unlinked), for pread */
	struct fill_arg fa;
};

static uint8_t want_byte(const struct fixture *fx, int k, enum content c, uint64_t o)
{
	if (c != SRC)
		return mix(o, 3 + 4 * (uint64_t)c + (uint64_t)k);
	switch (k) {
	case ZERO:
		return 0;
	case FILL:
		return fill_byte(o);
	default:
		return file_byte(FILE_OFF_PAGES * fx->ps + o);
	}
}

/* A file of file_byte()s in TMPDIR (nobody's run has its own), unlinked at once. */
static int scratch_file(size_t size)
{
	const char *dir = getenv("TMPDIR");
	char path[PATH_MAX], buf[65536];
	int fd;

	snprintf(path, sizeof(path), "%s/lazymap-fork.XXXXXX", dir && *dir ? dir : "/var/tmp");
	fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp %s: %s", path, strerror(errno));
	unlink(path);
	for (size_t off = 0; off < size; off += sizeof(buf)) {
		size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = (char)file_byte(off + i);
		cr_assert_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
	}
	return fd;
}

/*
 * Open a lazymap with a region of each kind, npages long, readable and
 * writable, and with advice (LAZYMAP_ADV_RANDOM: a fault fills only its page,
 * so that the pages a test leaves untouched stay unfilled in the parent).
 */
static void fixture_setup(struct fixture *fx, const struct lazymap_opts *o, size_t npages,
			  int advice, unsigned spin_us)
{
	memset(fx, 0, sizeof(*fx));
	fx->ps = pgsz();
	fx->npages = npages;
	fx->len = npages * fx->ps;
	fx->fa.npages = npages;
	fx->fa.spin_us = spin_us;
	fx->fa.produced = calloc((npages + 63) / 64, sizeof(*fx->fa.produced));
	cr_assert_not_null(fx->fa.produced);
	fx->lm = open_or_skip(o);
	fx->fd = scratch_file((FILE_OFF_PAGES + npages) * fx->ps);
	cr_assert_eq(lazymap_map(fx->lm, (void **)&fx->r[ZERO], fx->len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_map_fill(fx->lm, (void **)&fx->r[FILL], fx->len,
				      PROT_READ | PROT_WRITE, fill_pattern, &fx->fa), 0);
	cr_assert_eq(lazymap_map(fx->lm, (void **)&fx->r[FILE_], fx->len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE, fx->fd, (off_t)(FILE_OFF_PAGES * fx->ps)), 0);
	for (int k = 0; k < NKINDS; k++)
		cr_assert_eq(lazymap_advise(fx->lm, fx->r[k], fx->len, advice), 0);
	touch_install();
}

static void fixture_teardown(struct fixture *fx)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(fx->lm, &st), 0);
	cr_assert_eq(st.broken, 0, "the lazymap broke: %s", strerror((int)st.broken));
	cr_assert_eq(lazymap_close(fx->lm), 0);
	close(fx->fd);
	free(fx->fa.produced);
}

/* Has the fill callback produced page pg (in this process: it runs in the parent)? */
static bool produced(struct fill_arg *fa, size_t pg)
{
	return atomic_load(&fa->produced[pg / 64]) >> (pg % 64) & 1;
}

static bool fork_followed(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_leq(st.fork_followed, 1);
	return st.fork_followed;
}

/* A signal's name, without strsignal()'s locale (children call it after a
 * fork of a threaded process). */
static const char *sig_name(int sig)
{
	return sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "another signal";
}

/*
 * 0 if page pg of region k reads c in every byte; else 1, and why in msg.
 * Usable in a child (no assertion): the first byte is read with touch(), so
 * that a signal is reported rather than killing the reader.
 */
static int page_check(const struct fixture *fx, int k, size_t pg, enum content c, char *msg,
		      size_t len)
{
	char *p = fx->r[k] + pg * fx->ps, first = 0;
	struct touch_fault f = touch(p, -1, &first);

	if (f.signo) {
		snprintf(msg, len, "%s page %zu, want %s: signal %d (%s), code %d", kind_name[k], pg,
			 content_name[c], f.signo, sig_name(f.signo), f.code);
		return 1;
	}
	for (size_t i = 0; i < fx->ps; i++) {
		uint8_t want = want_byte(fx, k, c, pg * fx->ps + i), got = (uint8_t)p[i];

		if (got != want) {
			snprintf(msg, len, "%s page %zu byte %zu: %#x, want %#x (%s)", kind_name[k],
				 pg, i, got, want, content_name[c]);
			return 1;
		}
	}
	return 0;
}

/* Write c into every byte of page pg of region k; 1 and why in msg on a signal. */
static int page_write(const struct fixture *fx, int k, size_t pg, enum content c, char *msg,
		      size_t len)
{
	char *p = fx->r[k] + pg * fx->ps;
	struct touch_fault f = touch(p, want_byte(fx, k, c, pg * fx->ps), NULL);

	if (f.signo) {
		snprintf(msg, len, "writing %s page %zu: signal %d (%s)", kind_name[k], pg, f.signo,
			 sig_name(f.signo));
		return 1;
	}
	for (size_t i = 1; i < fx->ps; i++)
		p[i] = (char)want_byte(fx, k, c, pg * fx->ps + i);
	return 0;
}

/* 0 if touching page pg of region k raises SIGSEGV (a region not copied into
 * a child); else 1 and what it did in msg. */
static int page_segv(const struct fixture *fx, int k, size_t pg, char *msg, size_t len)
{
	char c = 0;
	struct touch_fault f = touch(fx->r[k] + pg * fx->ps, -1, &c);

	if (f.signo == SIGSEGV)
		return 0;
	if (f.signo)
		snprintf(msg, len, "%s page %zu: signal %d (%s), want SIGSEGV", kind_name[k], pg,
			 f.signo, sig_name(f.signo));
	else
		snprintf(msg, len, "%s page %zu read %#x, want SIGSEGV (the region is not copied)",
			 kind_name[k], pg, (uint8_t)c);
	return 1;
}

/* The parent's own checks, asserted. */
static void assert_page(const struct fixture *fx, int k, size_t pg, enum content c,
			const char *when)
{
	char msg[256];

	cr_assert_eq(page_check(fx, k, pg, c, msg, sizeof(msg)), 0, "%s: %s", when, msg);
}

static void assert_write(const struct fixture *fx, int k, size_t pg, enum content c)
{
	char msg[256];

	cr_assert_eq(page_write(fx, k, pg, c, msg, sizeof(msg)), 0, "parent: %s", msg);
}

/* Every byte of the file is what scratch_file() wrote: no write reached it. */
static void assert_file_intact(const struct fixture *fx, const char *when)
{
	size_t size = (FILE_OFF_PAGES + fx->npages) * fx->ps;
	char buf[65536];

	for (size_t off = 0; off < size; off += sizeof(buf)) {
		size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);

		cr_assert_eq(pread(fx->fd, buf, n, (off_t)off), (ssize_t)n);
		for (size_t i = 0; i < n; i++)
			cr_assert_eq((uint8_t)buf[i], file_byte(off + i),
				     "%s: the file's byte %zu is %#x, want %#x", when, off + i,
				     (uint8_t)buf[i], file_byte(off + i));
	}
}

/* Wait until the parent serves want children (st.children), with a deadline. */
static void wait_children(struct lazymap *lm, uint64_t want, const char *when)
{
	struct lazymap_stats st;

	for (double t0 = now_s();; usleep(1000)) {
		cr_assert_eq(lazymap_stats(lm, &st), 0);
		if (st.children == want)
			return;
		cr_assert_lt(now_s() - t0, RELEASE_DEADLINE_S,
			     "%s: stats.children is %lu after %.0f s, want %lu", when,
			     (unsigned long)st.children, RELEASE_DEADLINE_S, (unsigned long)want);
	}
}

/* ------------------------------------------------------------ children */

/*
 * A forked child, driven through two pipes: at each step the child says it
 * got there (one byte) and waits for the parent's go (one byte): the parent
 * waits for the step (child_wait_step), does its part, and says go. At the
 * end, if something was wrong, the child sends '!' and why. A child never
 * asserts (that is the test runner's business, in the parent): it reports
 * and ends with _exit(), running none of the runner's exit handlers. Its
 * own alarm() ends it if it hangs, its parent's deadline too.
 */
struct child {
	pid_t pid;
	int go;      /* parent's end: steps for the child */
	int rep;     /* parent's end: the child's steps and report */
};

struct child_ctx {
	int go, rep; /* the child's ends */
	char msg[512];
};

typedef int (*child_fn)(struct child_ctx *c, void *arg);

__attribute__((format(printf, 2, 3))) static int child_fail(struct child_ctx *c, const char *fmt,
							     ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
	return 1;
}

/* In the child: say this step is reached, then wait for the parent's go. A
 * parent that went away (its test failed) ends the child. */
static void child_step(struct child_ctx *c)
{
	char b = 's';

	if (write(c->rep, &b, 1) != 1 || read(c->go, &b, 1) != 1)
		_exit(3);
}

static void child_start(struct child *ch, child_fn fn, void *arg)
{
	int go[2], rep[2];
	pid_t pid;

	/* A child that ended early must not kill the parent writing its go:
	 * child_go() reports what the child said instead. */
	signal(SIGPIPE, SIG_IGN);
	cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0);
	fflush(NULL); /* or the child would print what is buffered again */
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct child_ctx c = { .go = go[0], .rep = rep[1] };
		int rc;

		close(go[1]);
		close(rep[0]);
		alarm(CHILD_WATCHDOG_S);
		rc = fn(&c, arg);
		if (rc && write(c.rep, "!", 1) == 1 && write(c.rep, c.msg, strlen(c.msg)) < 0)
			rc = 2;
		_exit(rc ? 1 : 0);
	}
	close(go[0]);
	close(rep[1]);
	ch->pid = pid;
	ch->go = go[1];
	ch->rep = rep[0];
}

/* In the parent: read what the child sent, until it closes its end or the
 * deadline; the bytes read, or -1 at the deadline. */
static ssize_t child_read(struct child *ch, char *buf, size_t len, size_t want, double t0)
{
	size_t n = 0;

	while (n < want) {
		struct pollfd pfd = { .fd = ch->rep, .events = POLLIN };
		int left = (int)((t0 + CHILD_DEADLINE_S - now_s()) * 1000);
		ssize_t r;

		if (left <= 0)
			return -1;
		if (poll(&pfd, 1, left) <= 0)
			continue;
		r = read(ch->rep, buf + n, len - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return (ssize_t)n;
}

/* Ends the child at the deadline: it hung. */
static void child_kill(struct child *ch)
{
	int status;

	kill(ch->pid, SIGKILL);
	waitpid(ch->pid, &status, 0);
	if (ch->go >= 0)
		close(ch->go);
	close(ch->rep);
	ch->pid = 0;
}

/* In the parent: wait until the child reached its next step. */
static void child_wait_step(struct child *ch, const char *what)
{
	char buf[600] = "";
	ssize_t n = child_read(ch, buf, 1, 1, now_s());

	if (n < 0) {
		child_kill(ch);
		cr_assert(0, "%s: the child did not reach its step within %.0f s", what,
			  CHILD_DEADLINE_S);
	}
	if (n == 1 && buf[0] == 's')
		return;
	/* It ended early: its report says why. */
	n += child_read(ch, buf + n, sizeof(buf) - 1 - (size_t)n, sizeof(buf) - 1, now_s());
	child_kill(ch);
	cr_assert(0, "%s: the child ended before its step: %s", what,
		  buf[0] == '!' ? buf + 1 : "(no report)");
}

static void child_go(struct child *ch)
{
	char buf[600] = "";
	ssize_t n;

	if (write(ch->go, "g", 1) == 1)
		return;
	n = child_read(ch, buf, sizeof(buf) - 1, sizeof(buf) - 1, now_s());
	child_kill(ch);
	cr_assert(0, "the child ended before its go: %s",
		  n > 0 && buf[0] == '!' ? buf + 1 : "(no report)");
}

/*
 * In the parent: let the child run to its end, and wait for it (deadline);
 * its exit status goes to *status and its report (if any) to report.
 * -ETIMEDOUT if it hung (it is then killed).
 */
static int child_end(struct child *ch, int *status, char *report, size_t len)
{
	double t0 = now_s();
	char buf[600] = "";
	ssize_t n;

	close(ch->go);
	ch->go = -1;
	n = child_read(ch, buf, sizeof(buf) - 1, sizeof(buf) - 1, t0);
	if (n < 0) {
		child_kill(ch);
		return -ETIMEDOUT;
	}
	buf[n] = '\0';
	snprintf(report, len, "%s", buf[0] == '!' ? buf + 1 : buf);
	for (;; usleep(1000)) {
		pid_t r = waitpid(ch->pid, status, WNOHANG);

		if (r == ch->pid)
			break;
		cr_assert_eq(r, 0, "waitpid: %s", strerror(errno));
		if (now_s() - t0 > CHILD_DEADLINE_S) {
			child_kill(ch);
			return -ETIMEDOUT;
		}
	}
	close(ch->rep);
	ch->pid = 0;
	return 0;
}

/* child_end(), and the child must have found everything right. */
static void child_ok(struct child *ch, const char *what)
{
	pid_t pid = ch->pid;
	char report[600];
	int status = 0;

	cr_assert_eq(child_end(ch, &status, report, sizeof(report)), 0,
		     "%s: child %d did not end within %.0f s", what, (int)pid, CHILD_DEADLINE_S);
	cr_assert(!WIFSIGNALED(status), "%s: child %d killed by signal %d (%s)%s", what, (int)pid,
		  WTERMSIG(status), strsignal(WTERMSIG(status)),
		  WTERMSIG(status) == SIGALRM ? ": its watchdog, it hung" : "");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child %d, status %d: %s",
		  what, (int)pid, WEXITSTATUS(status), report[0] ? report : "(no report)");
}

/* ------------------------------------------------------------ what a child sees */

/*
 * Pages of each region, by what the parent did before the fork (i % 3):
 * left untouched, read (filled from the source), written. And by what
 * happens after it (i / 12): nothing; the parent writes them before the
 * child looks; the child reads them, then the parent writes them, then the
 * child reads them again; the child writes them.
 */
#define PLAN_PAGES 48
enum before { UNTOUCHED, FILLED, WRITTEN };
enum after { NOTHING, PARENT_FIRST, CHILD_FIRST, CHILD_WRITES };

static enum before plan_before(size_t pg)
{
	return (enum before)(pg % 3);
}

static enum after plan_after(size_t pg)
{
	return (enum after)(pg / 12);
}

/* What the page held at the fork. */
static enum content at_fork(size_t pg)
{
	return plan_before(pg) == WRITTEN ? PARENT_BEFORE : SRC;
}

static int child_copy_on_write(struct child_ctx *c, void *arg)
{
	const struct fixture *fx = arg;

	child_step(c); /* the parent has written its PARENT_FIRST pages */
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++)
			if (plan_after(pg) != CHILD_WRITES &&
			    page_check(fx, k, pg, at_fork(pg), c->msg, sizeof(c->msg)))
				return 1;
	child_step(c); /* the parent has written its CHILD_FIRST pages */
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++) {
			if (plan_after(pg) == CHILD_FIRST &&
			    page_check(fx, k, pg, at_fork(pg), c->msg, sizeof(c->msg)))
				return 1;
			if (plan_after(pg) != CHILD_WRITES)
				continue;
			if (page_write(fx, k, pg, CHILD, c->msg, sizeof(c->msg)) ||
			    page_check(fx, k, pg, CHILD, c->msg, sizeof(c->msg)))
				return 1;
		}
	return 0;
}

Test(fork, a_child_reads_each_source_and_copies_on_write_both_ways, .timeout = 120)
{
	struct fixture fx;
	struct child ch;
	char when[64];

	fixture_setup(&fx, NULL, 64, LAZYMAP_ADV_RANDOM, 0);
	if (!fork_followed(fx.lm)) {
		fixture_teardown(&fx);
		skip_test("fork is not followed here (stats.fork_followed 0: EVENT_FORK needs "
			  "CAP_SYS_PTRACE): a child gets no copy of fill and file regions");
	}
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++) {
			if (plan_before(pg) == FILLED)
				assert_page(&fx, k, pg, SRC, "parent, before the fork");
			else if (plan_before(pg) == WRITTEN)
				assert_write(&fx, k, pg, PARENT_BEFORE);
		}
	quiesce(fx.lm);
	for (size_t pg = 0; pg < PLAN_PAGES; pg++)
		cr_assert_eq(produced(&fx.fa, pg), plan_before(pg) != UNTOUCHED,
			     "fill page %zu: produced before the fork %d (LAZYMAP_ADV_RANDOM: "
			     "only the pages touched)", pg, produced(&fx.fa, pg));

	child_start(&ch, child_copy_on_write, &fx);
	child_wait_step(&ch, "the child's start");
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++)
			if (plan_after(pg) == PARENT_FIRST)
				assert_write(&fx, k, pg, PARENT_AFTER);
	child_go(&ch);
	child_wait_step(&ch, "the child's first reads");
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++)
			if (plan_after(pg) == CHILD_FIRST)
				assert_write(&fx, k, pg, PARENT_AFTER);
	child_go(&ch);
	child_ok(&ch, "the child's copy of the regions");

	/* The child's faults on pages the parent never touched ran the fill
	 * callback here, in the parent, whose handlers serve the child. */
	for (size_t pg = 0; pg < PLAN_PAGES; pg++)
		if (plan_before(pg) == UNTOUCHED && plan_after(pg) == NOTHING)
			cr_assert(produced(&fx.fa, pg), "fill page %zu: the child read it, the "
				  "parent's callback never produced it", pg);
	/* Nothing the child wrote is here, nor in the file. */
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < PLAN_PAGES; pg++) {
			enum after a = plan_after(pg);

			snprintf(when, sizeof(when), "parent, after the child (page %zu)", pg);
			assert_page(&fx, k, pg,
				    a == PARENT_FIRST || a == CHILD_FIRST ? PARENT_AFTER : at_fork(pg),
				    when);
		}
	for (size_t pg = PLAN_PAGES; pg < fx.npages; pg++)
		for (int k = 0; k < NKINDS; k++)
			assert_page(&fx, k, pg, SRC, "parent, pages nobody touched before");
	assert_file_intact(&fx, "after the parent's and the child's private writes");
	wait_children(fx.lm, 0, "after the child exited");
	fixture_teardown(&fx);
}

/*
 * Whichever branch this process is on, a child sees what the header says:
 * followed, every region reads as in the parent; not followed, fill and file
 * regions are not there (SIGSEGV) and zero regions read zeros where the
 * parent had nothing, its bytes where it wrote. stats.children counts the
 * child while it lives only where fork is followed.
 */
#define BRANCH_PAGES 6 /* pages 3i: untouched, 3i+1: read, 3i+2: written before the fork */

struct branch_arg {
	const struct fixture *fx;
	bool followed;
};

static int child_branch(struct child_ctx *c, void *arg)
{
	const struct branch_arg *a = arg;
	const struct fixture *fx = a->fx;
	bool followed = a->followed;
	char why[256];

	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < BRANCH_PAGES; pg++) {
			enum content want = plan_before(pg) == WRITTEN ? PARENT_BEFORE : SRC;

			if (!followed && k != ZERO) {
				if (page_segv(fx, k, pg, c->msg, sizeof(c->msg)))
					return 1;
			} else if (page_check(fx, k, pg, want, why, sizeof(why))) {
				return child_fail(c, "fork %s: %s",
						  followed ? "followed" : "not followed", why);
			}
		}
	child_step(c);
	return 0;
}

Test(fork, a_child_sees_what_the_header_says_for_its_branch, .timeout = 60)
{
	struct lazymap_stats st;
	struct branch_arg a;
	struct fixture fx;
	struct child ch;
	bool followed;

	fixture_setup(&fx, NULL, 16, LAZYMAP_ADV_RANDOM, 0);
	followed = fork_followed(fx.lm);
	cr_log_info("fork followed: %d", followed);
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < BRANCH_PAGES; pg++) {
			if (plan_before(pg) == FILLED)
				assert_page(&fx, k, pg, SRC, "parent, before the fork");
			else if (plan_before(pg) == WRITTEN)
				assert_write(&fx, k, pg, PARENT_BEFORE);
		}
	quiesce(fx.lm);
	a = (struct branch_arg){ .fx = &fx, .followed = followed };
	child_start(&ch, child_branch, &a);
	child_wait_step(&ch, "the child's reads");
	if (followed) {
		wait_children(fx.lm, 1, "while the child lives");
	} else {
		cr_assert_eq(lazymap_stats(fx.lm, &st), 0);
		cr_assert_eq(st.children, 0, "fork not followed, yet %lu children served",
			     (unsigned long)st.children);
	}
	child_go(&ch);
	child_ok(&ch, followed ? "fork followed" : "fork not followed");
	wait_children(fx.lm, 0, "after the child exited");
	for (int k = 0; k < NKINDS; k++)
		for (size_t pg = 0; pg < fx.npages; pg++)
			assert_page(&fx, k, pg, plan_before(pg) == WRITTEN && pg < BRANCH_PAGES ?
				    PARENT_BEFORE : SRC, "parent, after the child");
	fixture_teardown(&fx);
}

/* ------------------------------------------------------------ many children */

/*
 * This process's threads but for the lazymap's fillers, which the header
 * has it start when a fill call is slow (a loaded machine will do), up to 4,
 * kept until lazymap_close: how many there are goes to *fillers. names gets
 * every thread's name, for a message.
 */
static int threads(int *fillers, char *names, size_t len)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	size_t at = 0;
	int n = 0;

	cr_assert_not_null(d);
	*fillers = 0;
	names[0] = '\0';
	while ((e = readdir(d))) {
		char name[32] = "";

		if (e->d_name[0] == '.')
			continue;
		if (!task_read(e->d_name, "comm", name, sizeof(name)))
			continue; /* gone */
		if (!strncmp(name, "lazymap-f", 9) && name[9] >= '0' && name[9] <= '9')
			++*fillers;
		else
			n++;
		if (at + 20 < len)
			at += (size_t)snprintf(names + at, len - at, "%s%s", at ? " " : "", name);
	}
	closedir(d);
	return n;
}

/*
 * Wait (deadline) until this process has fds descriptors and tasks threads,
 * and, with lm, serves no child; assert it. Children are let go of after they
 * exit, and a joined thread leaves /proc a moment after: a state to wait for.
 */
static void wait_counts(struct lazymap *lm, int fds, int tasks, int max_fillers,
			const char *names, const char *when)
{
	struct lazymap_stats st = { 0 };
	char now[512];
	int nf, nt, fillers;

	for (double t0 = now_s();; usleep(1000)) {
		if (lm)
			cr_assert_eq(lazymap_stats(lm, &st), 0);
		nf = count_dir("/proc/self/fd");
		nt = threads(&fillers, now, sizeof(now));
		if ((st.children == 0 && nf == fds && nt == tasks && fillers <= max_fillers) ||
		    now_s() - t0 > RELEASE_DEADLINE_S)
			break;
	}
	cr_assert_eq(st.children, 0, "%s: %lu children still served after %.0f s", when,
		     (unsigned long)st.children, RELEASE_DEADLINE_S);
	cr_assert_eq(nf, fds, "%s: %d descriptors, want %d", when, nf, fds);
	cr_assert_eq(nt, tasks, "%s: %d threads but fillers (%s), want %d (%s)", when, nt, now,
		     tasks, names);
	cr_assert_leq(fillers, max_fillers, "%s: %d fillers (%s)", when, fillers, now);
}

struct brief_arg {
	const struct fixture *fx;
	bool followed;
	unsigned i; /* which child: which pages it touches */
};

/* A few pages of each region the parent never touched, checked byte by
 * byte (followed), or the documented SIGSEGV and zeros (not followed). */
static int child_brief(struct child_ctx *c, void *arg)
{
	const struct brief_arg *a = arg;

	for (int k = 0; k < NKINDS; k++)
		for (unsigned j = 0; j < 3; j++) {
			size_t pg = (a->i * 37 + j * 85 + (unsigned)k * 11) % a->fx->npages;

			if (!a->followed && k != ZERO) {
				if (page_segv(a->fx, k, pg, c->msg, sizeof(c->msg)))
					return 1;
				break;
			}
			if (page_check(a->fx, k, pg, SRC, c->msg, sizeof(c->msg)))
				return 1;
		}
	return 0;
}

Test(fork, two_hundred_children_leave_nothing_behind, .timeout = 180)
{
	struct lazymap_stats st;
	struct brief_arg a;
	struct fixture fx;
	char names_open[512], names0[512];
	int fillers, fds_open, tasks_open, fds0, tasks0;
	long rss0, rss;
	double t0;

	start_runtime_threads(); /* before the count */
	fds_open = count_dir("/proc/self/fd");
	tasks_open = threads(&fillers, names_open, sizeof(names_open));
	fixture_setup(&fx, NULL, 256, LAZYMAP_ADV_RANDOM, 0);
	a = (struct brief_arg){ .fx = &fx, .followed = fork_followed(fx.lm) };
	/* Descriptors before any fork: a child's are closed a moment after
	 * stats.children drops, so a count taken after one could still hold
	 * them. */
	quiesce(fx.lm);
	fds0 = count_dir("/proc/self/fd");
	/* A few children first: what the first fork may start for good (a
	 * thread, a cache) is not a leak. The other baselines follow them. */
	for (a.i = 0; a.i < 3; a.i++) {
		struct child ch;

		child_start(&ch, child_brief, &a);
		child_ok(&ch, "warm-up child");
	}
	wait_children(fx.lm, 0, "after the warm-up children");
	quiesce(fx.lm);
	if (__sanitizer_purge_allocator)
		__sanitizer_purge_allocator();
	tasks0 = threads(&fillers, names0, sizeof(names0));
	rss0 = rss_kib();

	t0 = now_s();
	for (a.i = 3; a.i < 203; a.i++) {
		struct child ch;
		char what[32];

		snprintf(what, sizeof(what), "child %u", a.i);
		child_start(&ch, child_brief, &a);
		child_ok(&ch, what);
	}
	cr_log_info("200 children (fork %s) in %.2f s", a.followed ? "followed" : "not followed",
		    now_s() - t0);

	wait_counts(fx.lm, fds0, tasks0, 4, names0, "after 200 children (as before them)");
	quiesce(fx.lm);
	if (__sanitizer_purge_allocator)
		__sanitizer_purge_allocator();
	rss = rss_kib();
	cr_log_info("RSS %ld -> %ld KiB over 200 children", rss0, rss);
	cr_assert_lt(rss - rss0, RSS_GROWTH_KIB,
		     "RSS grew by %ld KiB over 200 children (%ld -> %ld KiB)",
		     rss - rss0, rss0, rss);
	cr_assert_eq(lazymap_stats(fx.lm, &st), 0);
	cr_assert_eq(st.broken, 0);
	cr_assert_eq(st.regions, NKINDS);
	fixture_teardown(&fx);
	/* And once closed, nothing of it: as before lazymap_open. */
	wait_counts(NULL, fds_open, tasks_open, 0, names_open, "after lazymap_close");
}

/* ------------------------------------------------------------ fork during faults */

#define FAULTERS 4
#define FORKS 8

struct faulter {
	const struct fixture *fx;
	pthread_t tid;
	unsigned id;
	atomic_size_t at;        /* the step it is at: children read near it */
	atomic_bool *stop;
	atomic_bool failed;      /* err is set, the faulter stopped */
	unsigned long touched;
	char err[256];           /* the first wrong byte or signal */
};

/* The page a faulter's step s touches: the region's pages in a scrambled
 * order (an odd multiplier permutes a power of two), shared out by id. */
static size_t faulter_page(const struct fixture *fx, unsigned id, size_t s)
{
	return ((s * FAULTERS + id) * 2654435761u) & (fx->npages - 1);
}

static void *faulter_run(void *arg)
{
	struct faulter *f = arg;
	const struct fixture *fx = f->fx;

	for (size_t s = 0; !atomic_load(f->stop); s++) {
		size_t pg = faulter_page(fx, f->id, s % (fx->npages / FAULTERS));

		atomic_store(&f->at, s);
		if (page_check(fx, FILL, pg, SRC, f->err, sizeof(f->err)) ||
		    page_check(fx, FILE_, pg, SRC, f->err, sizeof(f->err))) {
			atomic_store(&f->failed, true);
			break;
		}
		f->touched += 2;
	}
	return NULL;
}

struct busy_arg {
	const struct fixture *fx;
	struct faulter *f;
	bool followed;
	uint64_t seed;
};

/* Pages near where each faulter was at the fork (likely in flight then), and
 * random ones, each byte checked; or the SIGSEGV of a region not copied. */
static int child_busy(struct child_ctx *c, void *arg)
{
	struct busy_arg *a = arg;
	const struct fixture *fx = a->fx;

	if (!a->followed) {
		if (page_segv(fx, FILL, 0, c->msg, sizeof(c->msg)) ||
		    page_segv(fx, FILE_, 0, c->msg, sizeof(c->msg)))
			return 1;
		return page_check(fx, ZERO, 0, SRC, c->msg, sizeof(c->msg));
	}
	for (unsigned id = 0; id < FAULTERS; id++) {
		size_t at = atomic_load(&a->f[id].at), span = fx->npages / FAULTERS;

		for (size_t s = at; s < at + 8; s++) {
			size_t pg = faulter_page(fx, id, s % span);

			if (page_check(fx, FILL, pg, SRC, c->msg, sizeof(c->msg)) ||
			    page_check(fx, FILE_, pg, SRC, c->msg, sizeof(c->msg)))
				return 1;
		}
	}
	for (int i = 0; i < 64; i++) {
		size_t pg = rng_next(&a->seed) % fx->npages;
		int k = (int)(rng_next(&a->seed) % NKINDS);

		if (page_check(fx, k, pg, SRC, c->msg, sizeof(c->msg)))
			return 1;
	}
	return 0;
}

Test(fork, a_fork_while_faults_are_in_flight_on_several_threads, .timeout = 180)
{
	struct lazymap_opts o = { .handler_threads = 2 };
	struct faulter f[FAULTERS];
	atomic_bool stop = false;
	struct busy_arg a;
	struct fixture fx;
	uint64_t seed = test_seed();
	int bad = -1, ret = 0, status = 0;
	char report[600] = "";
	pid_t pid = 0;

	/* 50 us a fill call: fills are in flight for most of a fork. */
	fixture_setup(&fx, &o, 4096, LAZYMAP_ADV_RANDOM, 50);
	a = (struct busy_arg){ .fx = &fx, .f = f, .followed = fork_followed(fx.lm) };
	for (unsigned i = 0; i < FAULTERS; i++) {
		f[i] = (struct faulter){ .fx = &fx, .id = i, .stop = &stop };
		cr_assert_eq(pthread_create(&f[i].tid, NULL, faulter_run, &f[i]), 0);
	}
	for (int n = 0; n < FORKS && bad < 0; n++) {
		size_t from[FAULTERS];
		struct child ch;
		bool going;

		/* Each faulter a few steps on since the last fork (its faults
		 * are what the fork should meet in flight); one that failed
		 * ends the forks. */
		for (unsigned i = 0; i < FAULTERS; i++)
			from[i] = atomic_load(&f[i].at);
		for (double t0 = now_s();; usleep(100)) {
			going = true;
			for (unsigned i = 0; i < FAULTERS; i++) {
				going &= atomic_load(&f[i].at) >= from[i] + 8;
				if (atomic_load(&f[i].failed))
					bad = n;
			}
			if (going || bad >= 0 || now_s() - t0 > CHILD_DEADLINE_S)
				break;
		}
		if (bad >= 0)
			break;
		if (!going) {
			atomic_store(&stop, true); /* the ones that are not stuck */
			cr_assert(0, "fork %d: the faulters made no progress in %.0f s", n,
				  CHILD_DEADLINE_S);
		}
		a.seed = seed + (uint64_t)n;
		child_start(&ch, child_busy, &a);
		pid = ch.pid;
		ret = child_end(&ch, &status, report, sizeof(report));
		if (ret || !WIFEXITED(status) || WEXITSTATUS(status)) {
			bad = n;
			break;
		}
	}
	/* The faulters stop before anything is asserted: the lazymap must not
	 * go away under them. */
	atomic_store(&stop, true);
	for (unsigned i = 0; i < FAULTERS; i++)
		cr_assert_eq(pthread_join(f[i].tid, NULL), 0);
	for (unsigned i = 0; i < FAULTERS; i++)
		cr_assert_eq(f[i].err[0], '\0', "faulter %u in the parent: %s", i, f[i].err);
	if (bad >= 0) {
		cr_assert_eq(ret, 0, "fork %d (seed %#llx): child %d did not end within %.0f s",
			     bad, (unsigned long long)a.seed, (int)pid, CHILD_DEADLINE_S);
		cr_assert(!WIFSIGNALED(status), "fork %d (seed %#llx): child %d killed by signal %d",
			  bad, (unsigned long long)a.seed, (int)pid, WTERMSIG(status));
		cr_assert(0, "fork %d (seed %#llx): child %d, status %d: %s", bad,
			  (unsigned long long)a.seed, (int)pid, WEXITSTATUS(status),
			  report[0] ? report : "(no report)");
	}
	cr_log_info("fork %s; faulters touched %lu, %lu, %lu, %lu pages; %lu fill calls",
		    a.followed ? "followed" : "not followed", f[0].touched, f[1].touched,
		    f[2].touched, f[3].touched, (unsigned long)atomic_load(&fx.fa.calls));
	quiesce(fx.lm);
	wait_children(fx.lm, 0, "after the children exited");
	fixture_teardown(&fx);
}

/* ------------------------------------------------------------ close at exit */

/*
 * The pattern an adversarial review broke the parent with: the program
 * closes its lazymap in an atexit() handler, forks, the child's exec fails
 * and it calls exit(127), so the handler closes the inherited handle in the
 * child. Globals, as such a program has them: atexit() takes no argument.
 * The handler reports lazymap_close's return on a pipe (the exit status is
 * the program's own 127).
 */
static struct lazymap *atexit_lm;
static int atexit_report = -1; /* >= 0 in the child only */

#if defined(__SANITIZE_ADDRESS__)
#define LEAK_CHECK_AT_EXIT 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LEAK_CHECK_AT_EXIT 1
#endif
#endif

static void close_at_exit(void)
{
	int ret;

	if (!atexit_lm)
		return;
	ret = lazymap_close(atexit_lm);
	if (atexit_report < 0)
		return;
	if (write(atexit_report, &ret, sizeof(ret)) != sizeof(ret))
		_exit(126);
#ifdef LEAK_CHECK_AT_EXIT
	/*
	 * LeakSanitizer checks at exit, after this handler: in a forked child
	 * whatever the parent's threads (not copied) held on their stacks, a
	 * fault in flight say, counts as leaked, and it aborts the child. The
	 * close in atexit context has run: end as exit(127) would.
	 */
	_exit(127);
#endif
}

/* CPU time of this process's handler threads (named lazymap-h*), in ms. */
static double handlers_cpu_ms(void)
{
	DIR *d = opendir("/proc/self/task");
	unsigned long ticks = 0;
	struct dirent *e;

	cr_assert_not_null(d);
	while ((e = readdir(d))) {
		char path[320], buf[512], *rp;
		unsigned long ut, st;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f) && strstr(buf, "(lazymap-h") &&
		    (rp = strrchr(buf, ')')) &&
		    sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
			   &st) == 2)
			ticks += ut + st;
		fclose(f);
	}
	closedir(d);
	return (double)ticks * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

Test(fork, a_childs_close_at_exit_leaves_the_parent_served, .timeout = 120)
{
	struct lazymap_opts o = { .handler_threads = 2 };
	struct lazymap_stats st;
	size_t ps = pgsz(), npages = 256;
	char *p, *z;
	struct fill_arg fa = { .npages = npages };

	fa.produced = calloc(npages / 64, sizeof(*fa.produced));
	cr_assert_not_null(fa.produced);
	atexit_lm = open_or_skip(&o);
	cr_assert_eq(lazymap_map_fill(atexit_lm, (void **)&p, npages * ps, PROT_READ, fill_pattern,
				      &fa), 0);
	cr_assert_eq(lazymap_advise(atexit_lm, p, npages * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_map(atexit_lm, (void **)&z, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(p[0], (char)fill_byte(0));
	cr_assert_eq(atexit(close_at_exit), 0); /* once: each test runs in a process of its own */

	for (int round = 0; round < 20; round++) {
		char *argv[] = { "/nonexistent", NULL };
		int pfd[2], status = 0, ret = 0;
		double t0, cpu0, cpu;
		ssize_t n;
		pid_t pid;

		cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
		atexit_report = pfd[1];
		fflush(NULL);
		pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			alarm(CHILD_WATCHDOG_S);
			execv(argv[0], argv);
			exit(127);
		}
		atexit_report = -1;
		close(pfd[1]);

		/* The child's close returned, and said -EBADF. */
		{
			struct pollfd pp = { .fd = pfd[0], .events = POLLIN };

			cr_assert_eq(poll(&pp, 1, (int)(CHILD_DEADLINE_S * 1000)), 1,
				     "round %d: the child's atexit close did not return within %.0f s",
				     round, CHILD_DEADLINE_S);
		}
		n = read(pfd[0], &ret, sizeof(ret));
		close(pfd[0]);
		if (n != (ssize_t)sizeof(ret)) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			cr_assert(0, "round %d: the child ended without a report (%s %d): its "
				  "atexit close never returned (a watchdog SIGALRM: it hung there)",
				  round, WIFSIGNALED(status) ? "signal" : "exit status",
				  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		}
		cr_assert_eq(ret, -EBADF, "round %d: the child's lazymap_close gave %d (%s), "
			     "want -EBADF", round, ret, strerror(-ret));
		for (t0 = now_s();; usleep(1000)) {
			pid_t r = waitpid(pid, &status, WNOHANG);

			if (r == pid)
				break;
			cr_assert_eq(r, 0);
			if (now_s() - t0 > CHILD_DEADLINE_S) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				cr_assert(0, "round %d: the child hung in exit after its close",
					  round);
			}
		}
		cr_assert(WIFEXITED(status), "round %d: the child did not exit (status %#x)",
			  round, status);
		cr_assert_eq(WEXITSTATUS(status), 127, "round %d: exit status %d, want 127", round,
			     WEXITSTATUS(status));

		/* The parent: still registered, served, not broken. */
		for (size_t pg = 1 + (size_t)round * 12; pg < 13 + (size_t)round * 12; pg += 3) {
			char *q = p + pg * ps;

			cr_assert(!produced(&fa, pg), "round %d: fill page %zu was produced before "
				  "it was touched (LAZYMAP_ADV_RANDOM)", round, pg);
			for (size_t i = 0; i < ps; i++)
				cr_assert_eq((uint8_t)q[i], fill_byte(pg * ps + i),
					     "round %d: fill page %zu (never touched before) byte "
					     "%zu: %#x, want %#x", round, pg, i, (uint8_t)q[i],
					     fill_byte(pg * ps + i));
		}
		cr_assert_eq(z[(size_t)round * 7 * ps + 5], 0, "round %d: zero region", round);
		cr_assert_eq(lazymap_stats(atexit_lm, &st), 0);
		cr_assert_eq(st.broken, 0, "round %d: broken: %s", round, strerror((int)st.broken));
		cr_assert_eq(st.regions, 2, "round %d", round);

		/* Idle handlers sleep: a stop signal from the child would leave
		 * them spinning. Asleep first, then their CPU over an idle
		 * window (a rate: measured over time, not waited for). */
		quiesce(atexit_lm);
		wait_handlers_asleep(atexit_lm, 2, "after the child's close");
		cpu0 = handlers_cpu_ms();
		usleep(200 * 1000);
		cpu = handlers_cpu_ms() - cpu0;
		cr_assert_leq(cpu, 50.0, "round %d: idle handlers used %.0f ms of CPU in 200 ms",
			      round, cpu);
	}
	wait_children(atexit_lm, 0, "after 20 children");
	{
		struct lazymap *lm = atexit_lm;

		atexit_lm = NULL; /* this process's own exit has nothing to close */
		cr_assert_eq(lazymap_close(lm), 0);
	}
	free(fa.produced);
}

/* ------------------------------------------------------------ dump */

/* lazymap_dump() split into its "# pid" sections: pids[i] and the VMA lines
 * of section i, joined by '\n'. Returns how many sections. */
#define MAX_SECTIONS 4

static int dump_sections(struct lazymap *lm, int *pids, char **lines)
{
	char *buf = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int n = -1;

	cr_assert_not_null(f);
	cr_assert_geq(lazymap_dump(lm, f), 0);
	fclose(f);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "# pid ", 6)) {
			n++;
			cr_assert_lt(n, MAX_SECTIONS, "more than %d sections", MAX_SECTIONS);
			pids[n] = atoi(line + 6);
			lines[n] = calloc(1, len + 1);
			cr_assert_not_null(lines[n]);
			continue;
		}
		cr_assert_geq(n, 0, "a VMA line before any '# pid': %s", line);
		strcat(lines[n], line);
		strcat(lines[n], "\n");
	}
	free(buf);
	return n + 1;
}

static int count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static int child_wait_for_end(struct child_ctx *c, void *arg)
{
	(void)arg;
	child_step(c); /* served until the parent has looked */
	return 0;
}

Test(fork, dump_shows_a_served_child_as_its_own_section, .timeout = 60)
{
	struct fixture fx;
	struct child ch;
	char *lines[MAX_SECTIONS] = { 0 };
	int pids[MAX_SECTIONS], n;

	fixture_setup(&fx, NULL, 16, LAZYMAP_ADV_NORMAL, 0);
	if (!fork_followed(fx.lm)) {
		fixture_teardown(&fx);
		skip_test("fork is not followed here (stats.fork_followed 0): no child is served");
	}
	/* A split, so that the sections have more than one line per region. */
	cr_assert_eq(lazymap_protect(fx.lm, fx.r[FILL] + 4 * fx.ps, 2 * fx.ps, PROT_READ), 0);
	n = dump_sections(fx.lm, pids, lines);
	cr_assert_eq(n, 1, "before the fork: %d sections", n);
	cr_assert_eq(pids[0], getpid());
	free(lines[0]);

	child_start(&ch, child_wait_for_end, NULL);
	child_wait_step(&ch, "the child");
	wait_children(fx.lm, 1, "while the child lives");
	n = dump_sections(fx.lm, pids, lines);
	cr_assert_eq(n, 2, "with a child served: %d sections", n);
	cr_assert_eq(pids[0], getpid(), "the first section is this process");
	cr_assert_eq(pids[1], ch.pid, "the second section's pid %d, the child's %d", pids[1],
		     (int)ch.pid);
	/* The child's VMAs are copies of the parent's, one for one. */
	cr_assert_str_eq(lines[1], lines[0], "the child's section differs from the parent's");
	cr_assert_eq(count_lines(lines[0]), NKINDS + 2, "the parent's section:\n%s", lines[0]);
	for (int i = 0; i < n; i++)
		free(lines[i]);

	child_go(&ch);
	child_ok(&ch, "the child");
	wait_children(fx.lm, 0, "after the child exited");
	n = dump_sections(fx.lm, pids, lines);
	cr_assert_eq(n, 1, "after the child exited: %d sections", n);
	cr_assert_eq(pids[0], getpid());
	free(lines[0]);
	fixture_teardown(&fx);
}

/* ---------------------------------------------------------- without the privilege */

/* Drop CAP_SYS_PTRACE from this process (EVENT_FORK needs it); 0 or -errno. */
static int drop_ptrace_cap(void)
{
	struct {
		uint32_t version;
		int pid;
	} hdr = { 0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0 };
	struct {
		uint32_t effective, permitted, inheritable;
	} data[2];

	if (syscall(SYS_capget, &hdr, data))
		return -errno;
	for (int i = 0; i < 2; i++) {
		data[i].effective &= ~(i == 0 ? 1u << 19 : 0);   /* CAP_SYS_PTRACE is 19 */
		data[i].permitted &= ~(i == 0 ? 1u << 19 : 0);
	}
	return syscall(SYS_capset, &hdr, data) ? -errno : 0;
}

/*
 * Run body in a child of the test (single-threaded when it forks: the body
 * starts the threads, as ThreadSanitizer refuses new threads after a fork of
 * a process that has some), under a watchdog; the child's exit code.
 */
static int child_exit_code(int (*body)(void))
{
	int status;
	pid_t pid;

	require_uffd(0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		alarm(30);
		_exit(body());
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "status %#x (the watchdog: a fork hung?)", status);
	return WEXITSTATUS(status);
}

static int without_ptrace_body(void)
{
	struct lazymap_stats st;
	struct lazymap *lm;
	size_t ps = pgsz();
	char *f, *z;
	pid_t g;
	int gs;

	if (drop_ptrace_cap())
		return 10;
	if (lazymap_open(&lm, NULL))
		return 11;
	if (lazymap_stats(lm, &st) || st.fork_followed != 0)
		return 12;
	if (lazymap_map_fill(lm, (void **)&f, 16 * ps, PROT_READ, fill_5a, NULL) ||
	    lazymap_map(lm, (void **)&z, 16 * ps, PROT_READ | PROT_WRITE,
			LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0))
		return 13;
	if (f[0] != 0x5a)
		return 14;
	z[0] = 7;
	g = fork();
	if (g == 0) {
		char c = 0;

		touch_install();
		if (touch(f + 3 * ps, -1, &c).signo != SIGSEGV)
			_exit(1);
		if (z[0] != 7 || z[5 * ps] != 0)
			_exit(2);
		_exit(0);
	}
	if (g < 0 || waitpid(g, &gs, 0) != g || !WIFEXITED(gs))
		return 15;
	if (WEXITSTATUS(gs))
		return 20 + WEXITSTATUS(gs);
	/* The parent's own regions are untouched by all this. */
	if (f[5 * ps] != 0x5a || lazymap_stats(lm, &st) || st.children != 0)
		return 16;
	return lazymap_close(lm) ? 17 : 0;
}

/*
 * A process without CAP_SYS_PTRACE (as root with it dropped): lazymap_open
 * still works, says fork_followed 0, and a child gets what the header says:
 * no copy of fill regions (SIGSEGV, never zeros), zero regions read zeros.
 * Runs in a child of the test, which drops the capability for itself only.
 */
Test(fork, without_cap_sys_ptrace_a_child_never_reads_wrong_data, .timeout = 60)
{
	int code = child_exit_code(without_ptrace_body);

	cr_assert_eq(code, 0,
		     "without CAP_SYS_PTRACE: exit %d (10 capset, 11 open, 12 fork_followed != 0, "
		     "13 map, 14 fill, 21 the child's fill region did not fault with SIGSEGV, "
		     "22 zero region wrong, 16 parent's region or children wrong)", code);
}

static int fd_limit_body(void)
{
	struct lazymap_stats st;
	struct lazymap *lm;
	struct rlimit rl;
	size_t ps = pgsz();
	int maxfd = 0;
	char *f;

	if (lazymap_open(&lm, NULL))
		return 11;
	if (lazymap_stats(lm, &st) || !st.fork_followed)
		return 0; /* nothing to read for a fork: nothing to test */
	if (lazymap_map_fill(lm, (void **)&f, 16 * ps, PROT_READ, fill_5a, NULL) || f[0] != 0x5a)
		return 12;
	/* No descriptor free: the limit is the highest one open plus one. */
	for (int fd = 0; fd < 4096; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			maxfd = fd;
	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 13;
	for (int fd = 0; fd <= maxfd; fd++)
		if (fcntl(fd, F_GETFD) < 0 && dup2(0, fd) < 0)
			return 14; /* fill the holes below */
	rl.rlim_cur = (rlim_t)maxfd + 1;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		return 15;
	for (int round = 0; round < 3; round++) {
		pid_t g = fork();
		int gs;

		if (g == 0)
			_exit(f[(size_t)(5 + round) * ps] != 0x5a);
		if (g < 0 || waitpid(g, &gs, 0) != g)
			return 16;
		if (!WIFEXITED(gs) || WEXITSTATUS(gs))
			return 17;
	}
	return 0;
}

/*
 * A fork at the descriptor limit: reading a FORK event takes a descriptor
 * for the child's userfaultfd, and the kernel makes fork() wait until the
 * event is read. The library keeps one in reserve (regression: fork hung in
 * uninterruptible sleep with no descriptor free). In a child of the test,
 * whose limit it lowers for itself alone.
 */
Test(fork, a_fork_at_the_descriptor_limit_returns, .timeout = 60)
{
	int code = child_exit_code(fd_limit_body);

	cr_assert_eq(code, 0,
		     "exit %d (11 open, 12 map, 13-15 limits, 16 fork or wait failed, 17 the child "
		     "read wrong data)", code);
}
