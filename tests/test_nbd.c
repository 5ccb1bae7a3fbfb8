// SPDX-License-Identifier: MIT
/*
 * Regions of NBD exports (lazymap_map_uri), served by nbdkit run by the test
 * itself: one nbdkit per test (nbdkit 1.32 can abort when a client drops a
 * connection with reads in flight, so no server is shared between tests), on
 * a UNIX socket in the test's scratch directory, or on TCP inside a network
 * namespace of the test's own. Every byte a faulting thread sees is compared
 * with the bytes of the file nbdkit serves; shared writes are checked on that
 * file with pread().
 *
 * What is covered: private scans (sequential, random, two threads, at an
 * offset); shared writes reaching the export on sync (with an NBD flush),
 * unmap, close and eviction; one cache per URI; the export's end; reads the
 * server fails (nbdkit's error and ddrescue filters); a server killed,
 * stopped, paused or restarted under a scan, and a sync; a network cut; bad
 * URIs, refused exports, a read-only export, and the flags. The harness_*
 * tests check the fixtures themselves through libnbd (nbdkit, its filters,
 * the network namespace), so that a failure elsewhere is the library's.
 *
 * Without nbdkit (at build or run time) each test skips saying so; where
 * `ip netns add` fails (not root), the namespace tests skip. Built without
 * libnbd (TEST_NBD_LIBNBD 0), only lazymap_map_uri's -EPROTONOSUPPORT is
 * checked.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* Criterion runs no .fini after a skip: a skip tears the fixture down first. */
static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"

#ifndef TEST_NBD_LIBNBD
#define TEST_NBD_LIBNBD 1
#endif
#ifndef NBDKIT_BIN
#define NBDKIT_BIN ""
#endif

#if TEST_NBD_LIBNBD
#include <libnbd.h>
#else
/* Only the -EPROTONOSUPPORT test is built: the fixtures' helpers go unused. */
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

#define MiB (1ull << 20)

/* Upper bounds only, for "nothing hangs": generous, the machine is shared. */
#define SLACK_S 4.0
#define WAIT_S 30.0

/* ------------------------------------------------------------ fixture */

#define MAX_SERVERS 4
#define MAX_ARGS 12
#define ARG_LEN 512

/* One nbdkit, a child of the test's main thread (--exit-with-parent). */
struct server {
	pid_t pid;              /* 0: not running */
	bool stopped;           /* SIGSTOP'd */
	char sock[108];         /* its UNIX socket; "" for TCP */
	char addr[INET_ADDRSTRLEN];
	int port;
	char netns[32];         /* the network namespace it runs in; "": ours */
	char pidfile[ARG_LEN], log[ARG_LEN];
	int nargs;
	char args[MAX_ARGS][ARG_LEN]; /* after the common options: filters, plugin, params */
};

/* The test's servers (apart from fx: their paths are made from fx.dir). */
static struct server srv[MAX_SERVERS];
static int nsrv;

static struct {
	char dir[64];                 /* scratch directory: /var/tmp/lazymap-nbd.XXXXXX */
	char subdir[96];              /* a directory of exports in it (file dir=) */
	struct lazymap *lm;
	bool abandon_lm;              /* a thread hangs in it: left to the process's exit */
	char netns[32], veth_host[16], veth_ns[16];
	bool netns_made, veth_made;
	char a_host[INET_ADDRSTRLEN], a_ns[INET_ADDRSTRLEN];
	int fds[4];                   /* sockets of the bad-URI test */
	pid_t faultd;                 /* a faultd of the test's own, or 0 */
	int nfds;
	uint8_t *model[2];
	void *mem[8];                 /* a test's buffers: freed by .fini, after a failure too */
	int nmem;
} fx;

static void netns_drop(void);

static void server_signal(struct server *s, int sig);

static void fx_setup(void)
{
	memset(&fx, 0, sizeof(fx));
	nsrv = 0;
	scratch_setup(fx.dir, sizeof(fx.dir), "nbd");
	touch_install();
}

/*
 * Servers stopped for good are killed first (nothing could be written to
 * them), then the lazymap is closed while the others still serve (its
 * write-back goes to them), then they are killed: SIGTERM would wait for
 * clients still connected (nbdkit exits when the last one hangs up). Safe
 * to call twice (a skip).
 */
static void fx_teardown(void)
{
	for (int i = 0; i < nsrv; i++)
		if (srv[i].pid > 0 && srv[i].stopped)
			server_signal(&srv[i], SIGKILL);
	if (fx.lm && !fx.abandon_lm)
		lazymap_close(fx.lm);
	fx.lm = NULL;
	if (fx.faultd > 0) {
		kill(fx.faultd, SIGKILL);
		waitpid(fx.faultd, NULL, 0);
		fx.faultd = 0;
	}
	for (int i = 0; i < nsrv; i++)
		if (srv[i].pid > 0)
			server_signal(&srv[i], SIGKILL);
	nsrv = 0;
	while (fx.nfds > 0)
		close(fx.fds[--fx.nfds]);
	netns_drop();
	for (int i = 0; i < 2; i++) {
		free(fx.model[i]);
		fx.model[i] = NULL;
	}
	while (fx.nmem > 0)
		free(fx.mem[--fx.nmem]);
	if (fx.subdir[0])
		scratch_remove(fx.subdir);
	fx.subdir[0] = '\0';
	scratch_drop(fx.dir);
}

#define FIXTURE .init = fx_setup, .fini = fx_teardown

/* A buffer the fixture frees. */
static void *fx_alloc(size_t len)
{
	void *p = malloc(len);

	cr_assert_not_null(p);
	cr_assert_lt(fx.nmem, (int)(sizeof(fx.mem) / sizeof(fx.mem[0])));
	fx.mem[fx.nmem++] = p;
	return p;
}

/* ------------------------------------------------------------ nbdkit */

static void nbdkit_or_skip(void)
{
	if (!NBDKIT_BIN[0])
		skip_test("nbdkit was not found at build time (scripts/deps installs it)");
	if (access(NBDKIT_BIN, X_OK))
		skip_test("nbdkit %s: %s (scripts/deps installs it)", NBDKIT_BIN, strerror(errno));
}

/* A server on a UNIX socket fx.dir/TAG.sock; its arguments come with server_args(). */
static struct server *server_new(const char *tag)
{
	struct server *s;

	cr_assert_lt(nsrv, MAX_SERVERS);
	s = &srv[nsrv++];
	memset(s, 0, sizeof(*s));
	snprintf(s->sock, sizeof(s->sock), "%s/%s.sock", fx.dir, tag);
	snprintf(s->pidfile, sizeof(s->pidfile), "%s/%s.pid", fx.dir, tag);
	snprintf(s->log, sizeof(s->log), "%s/%s.log", fx.dir, tag);
	return s;
}

/* A server on TCP addr:port, in network namespace netns ("" for ours). */
static struct server *server_new_tcp(const char *tag, const char *netns, const char *addr, int port)
{
	struct server *s = server_new(tag);

	s->sock[0] = '\0';
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	snprintf(s->netns, sizeof(s->netns), "%s", netns);
	s->port = port;
	return s;
}

/* Append arguments (filters, plugin, its parameters), NULL-terminated. */
__attribute__((sentinel))
static void server_args(struct server *s, ...)
{
	va_list ap;
	const char *a;

	va_start(ap, s);
	while ((a = va_arg(ap, const char *))) {
		cr_assert_lt(s->nargs, MAX_ARGS);
		snprintf(s->args[s->nargs++], ARG_LEN, "%s", a);
	}
	va_end(ap);
}

/* The end of the server's log, for a failure message. */
static const char *server_log_tail(const struct server *s)
{
	static char buf[1024];
	int fd = open(s->log, O_RDONLY | O_CLOEXEC);
	off_t end;
	ssize_t n = 0;

	buf[0] = '\0';
	if (fd < 0)
		return buf;
	end = lseek(fd, 0, SEEK_END);
	if (end > (off_t)sizeof(buf) - 1)
		lseek(fd, end - (off_t)sizeof(buf) + 1, SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	close(fd);
	return buf;
}

static bool file_nonempty(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && sb.st_size > 0;
}

/*
 * Start (or start again) nbdkit in the foreground, as a child of this
 * thread, and wait until it listens: it writes its pidfile once it does.
 * A socket left by a killed one is removed first (nbdkit will not start on
 * it). Always from the test's main thread: --exit-with-parent is the death
 * of the thread that forked.
 */
static void server_start(struct server *s)
{
	char *argv[MAX_ARGS + 16], port[16], nspath[64];
	int n = 0, nsfd = -1, logfd;
	pid_t pid;

	nbdkit_or_skip();
	cr_assert_eq(s->pid, 0, "server_start: %s already runs", s->log);
	if (s->sock[0])
		unlink(s->sock);
	unlink(s->pidfile);
	argv[n++] = (char *)"nbdkit";
	argv[n++] = (char *)"-f";
	argv[n++] = (char *)"--exit-with-parent";
	argv[n++] = (char *)"-P";
	argv[n++] = s->pidfile;
	if (s->sock[0]) {
		argv[n++] = (char *)"-U";
		argv[n++] = s->sock;
	} else {
		snprintf(port, sizeof(port), "%d", s->port);
		argv[n++] = (char *)"-i";
		argv[n++] = s->addr;
		argv[n++] = (char *)"-p";
		argv[n++] = port;
	}
	for (int i = 0; i < s->nargs; i++)
		argv[n++] = s->args[i];
	argv[n] = NULL;
	if (s->netns[0]) {
		snprintf(nspath, sizeof(nspath), "/run/netns/%s", s->netns);
		nsfd = open(nspath, O_RDONLY | O_CLOEXEC);
		cr_assert_geq(nsfd, 0, "open %s: %s", nspath, strerror(errno));
	}
	logfd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	cr_assert_geq(logfd, 0, "open %s: %s", s->log, strerror(errno));
	pid = fork();
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);

		if (nsfd >= 0 && setns(nsfd, CLONE_NEWNET))
			_exit(126);
		if (nul >= 0)
			dup2(nul, 0);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execv(NBDKIT_BIN, argv);
		_exit(127);
	}
	close(logfd);
	if (nsfd >= 0)
		close(nsfd);
	cr_assert_gt(pid, 0, "fork: %s", strerror(errno));
	s->pid = pid;
	s->stopped = false;
	for (double t0 = now_s(); !file_nonempty(s->pidfile); usleep(2000)) {
		int st = 0;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			s->pid = 0;
			cr_assert(false, "nbdkit exited at start (status %#x): %s", st, server_log_tail(s));
		}
		cr_assert_lt(now_s() - t0, 10.0, "nbdkit wrote no pidfile in 10 s: %s",
			     server_log_tail(s));
	}
}

/* Whether the server exited within secs (reaped then); it is left running if not. */
static bool server_exited(struct server *s, double secs)
{
	for (double t0 = now_s(); s->pid > 0; usleep(1000)) {
		pid_t r = waitpid(s->pid, NULL, WNOHANG);

		if (r == s->pid || r < 0) {
			s->pid = 0;
			s->stopped = false;
			return true;
		}
		if (now_s() - t0 > secs)
			return false;
	}
	return true;
}

/*
 * SIGKILL: gone at once (reaped). SIGTERM: nbdkit answers what comes with
 * ESHUTDOWN and exits once its clients have hung up; killed after 5 s.
 * SIGSTOP/SIGCONT: it stays.
 */
static void server_signal(struct server *s, int sig)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, sig);
	if (sig == SIGSTOP || sig == SIGCONT) {
		s->stopped = sig == SIGSTOP;
		return;
	}
	if (sig == SIGTERM && s->stopped)
		kill(s->pid, SIGCONT);
	if (sig != SIGKILL && server_exited(s, 5.0))
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
	s->stopped = false;
}

static void server_uri(const struct server *s, const char *export, char *uri, size_t len)
{
	if (s->sock[0])
		snprintf(uri, len, "nbd+unix:///%s?socket=%s", export, s->sock);
	else
		snprintf(uri, len, "nbd://%s:%d/%s", s->addr, s->port, export);
}

/* How many lines of nbdkit's log filter's file contain what. */
static size_t log_count(const char *path, const char *what)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	size_t n = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, what) != NULL;
	fclose(f);
	return n;
}

/* The line number (from 1) of the last line containing what; 0: none. */
static size_t log_last(const char *path, const char *what)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	size_t n = 0, last = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		n++;
		if (strstr(line, what))
			last = n;
	}
	fclose(f);
	return last;
}

/* ------------------------------------------------------------ files */

/*
 * An export's file of size bytes of key's pattern; path gets its name. Its
 * bytes come back, zeros to the end of the last page (freed by .fini).
 */
static uint8_t *export_file(const char *name, uint64_t size, uint64_t key, char *path, size_t len,
			    int slot)
{
	size_t npages = (size_t)((size + pgsz() - 1) / pgsz());

	fx.model[slot] = pattern_file(fx.dir, name, size, key, npages ? npages : 1, path, len);
	return fx.model[slot];
}

/*
 * A ddrescue map for nbdkit's ddrescue filter: the file's size bytes good
 * but the pages listed (sorted), which fail every read.
 */
static void ddrescue_map(const char *path, uint64_t size, const size_t *bad, size_t nbad)
{
	FILE *f = fopen(path, "w");
	uint64_t ps = pgsz(), at = 0;

	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fprintf(f, "# Mapfile. Created by GNU ddrescue version 1.25\n"
		   "# current_pos  current_status  current_pass\n"
		   "0x00000000     +               1\n"
		   "#      pos        size  status\n");
	for (size_t i = 0; i < nbad; i++) {
		uint64_t b = bad[i] * ps;

		if (b > at)
			fprintf(f, "0x%08llX  0x%08llX  +\n", (unsigned long long)at,
				(unsigned long long)(b - at));
		fprintf(f, "0x%08llX  0x%08llX  -\n", (unsigned long long)b, (unsigned long long)ps);
		at = b + ps;
	}
	if (at < size)
		fprintf(f, "0x%08llX  0x%08llX  +\n", (unsigned long long)at,
			(unsigned long long)(size - at));
	cr_assert_eq(fclose(f), 0);
}

/* ------------------------------------------------------------ the library */

static struct lazymap *lm_open(unsigned handlers, size_t readahead_max, unsigned timeout_ms,
			       size_t resident_limit)
{
	struct lazymap_opts o = { .handler_threads = handlers, .readahead_max = readahead_max,
				  .remote_timeout_ms = timeout_ms, .resident_limit = resident_limit };

	fx.lm = open_or_skip(&o);
	return fx.lm;
}

static char *map_uri(struct lazymap *lm, size_t len, int prot, int flags, const char *uri,
		     uint64_t offset)
{
	void *p = NULL;
	int ret = lazymap_map_uri(lm, &p, len, prot, flags, uri, offset);

	cr_assert_eq(ret, 0, "lazymap_map_uri %s (len %zu, prot %#x, flags %#x, offset %#llx): %s",
		     uri, len, prot, flags, (unsigned long long)offset, strerror(-ret));
	cr_assert_not_null(p);
	return p;
}

static struct lazymap_stats stats(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st;
}

/* ------------------------------------------------------------ scanners */

/*
 * A thread touching pages of a region one by one, in an order, and comparing
 * every byte of each page it faulted in with what the export holds there
 * (want, indexed like the region). It may pause after pause_at touches
 * until told to go on (a server is killed meanwhile), and stop at its first
 * signal. No Criterion call here: the main thread judges the results.
 */
struct scan {
	pthread_t th;
	char *base;
	const uint8_t *want;
	size_t npages;
	const size_t *order;     /* NULL: pages first, first + 1, ... wrapping */
	size_t first;
	size_t n;                /* touches */
	size_t pause_at;         /* 0: no pause */
	bool stop_at_signal;
	atomic_int paused, resume, finished;
	/* results */
	size_t touched, bad, signals;
	size_t bad_pg, bad_at;
	int got, wanted;
	size_t sig_pg;
	char *sig_touched;
	struct touch_fault sig;
	double sig_t;
};

static size_t scan_page(const struct scan *s, size_t i)
{
	return s->order ? s->order[i] : (s->first + i) % s->npages;
}

static void *scan_main(void *arg)
{
	struct scan *s = arg;
	size_t ps = pgsz();

	for (size_t i = 0; i < s->n; i++) {
		size_t pg = scan_page(s, i);
		char *page = s->base + pg * ps, *a = page + (pg * 131) % ps, c = 0;
		struct touch_fault f;

		if (s->pause_at && i == s->pause_at) {
			atomic_store(&s->paused, 1);
			while (!atomic_load(&s->resume))
				usleep(200);
		}
		f = touch(a, -1, &c);
		if (f.signo) {
			if (!s->signals++) {
				s->sig = f;
				s->sig_pg = pg;
				s->sig_touched = a;
				s->sig_t = now_s();
			}
			if (s->stop_at_signal)
				break;
			continue;
		}
		s->touched++;
		if (memcmp(page, s->want + pg * ps, ps) && !s->bad++) {
			for (size_t b = 0; b < ps; b++)
				if ((uint8_t)page[b] != s->want[pg * ps + b]) {
					s->bad_pg = pg;
					s->bad_at = b;
					s->got = (uint8_t)page[b];
					s->wanted = s->want[pg * ps + b];
					break;
				}
		}
	}
	atomic_store(&s->finished, 1);
	return NULL;
}

static void scan_start(struct scan *s)
{
	cr_assert_eq(pthread_create(&s->th, NULL, scan_main, s), 0);
}

/* Wait for flag with a deadline; false if it did not come. */
static bool wait_flag(atomic_int *flag, double secs)
{
	for (double t0 = now_s(); !atomic_load(flag); usleep(500))
		if (now_s() - t0 > secs)
			return false;
	return true;
}

/*
 * Join the scanner, which must finish within secs: one that does not hangs
 * in a fault, and the lazymap is left alone (closing it would hang too).
 */
static void scan_join(struct scan *s, double secs, const char *what)
{
	if (!wait_flag(&s->finished, secs)) {
		fx.abandon_lm = true;
		cr_assert(false, "%s: the scanning thread hangs: %zu of %zu touches done after %.0f s",
			  what, s->touched + s->signals, s->n, secs);
	}
	pthread_join(s->th, NULL);
}

/* No signal and no wrong byte. */
static void scan_expect_right(const struct scan *s, const char *what)
{
	cr_assert_eq(s->signals, 0, "%s: %zu signals, the first %d at %p (page %zu, touched %p)", what,
		     s->signals, s->sig.signo, s->sig.addr, s->sig_pg, (void *)s->sig_touched);
	cr_assert_eq(s->bad, 0, "%s: %zu pages with wrong bytes, the first page %zu byte %zu: %#x, "
		     "the export has %#x", what, s->bad, s->bad_pg, s->bad_at, s->got, s->wanted);
	cr_assert_eq(s->touched, s->n, "%s: %zu of %zu touches done", what, s->touched, s->n);
}

/* One scanner over all of [base, npages) in order (NULL: sequential), run to its end. */
static void scan_all(char *base, const uint8_t *want, size_t npages, const size_t *order,
		     const char *what)
{
	static struct scan s; /* a hung scanner outlives the frame */

	s = (struct scan){ .base = base, .want = want, .npages = npages, .order = order, .n = npages };
	scan_start(&s);
	scan_join(&s, WAIT_S, what);
	scan_expect_right(&s, what);
}

/* A random permutation of [0, n). */
static size_t *permutation(size_t n, uint64_t seed)
{
	size_t *v = fx_alloc(n * sizeof(*v));

	for (size_t i = 0; i < n; i++)
		v[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)(rng_next(&seed) % (i + 1)), t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
	return v;
}

/*
 * Write len bytes of buf at region offset off and into model; the first
 * byte of each page through touch(), so that a signal fails the test.
 */
static void write_span(char *base, uint8_t *model, size_t off, const uint8_t *buf, size_t len)
{
	size_t ps = pgsz();

	for (size_t at = off; at < off + len; at = (at / ps + 1) * ps) {
		struct touch_fault f = touch(base + at, buf[at - off], NULL);

		cr_assert_eq(f.signo, 0, "write at region offset %#zx: signal %d at %p", at, f.signo,
			     f.addr);
	}
	memcpy(base + off, buf, len);
	memcpy(model + off, buf, len);
}

/*
 * Scattered writes into a shared region of npages: pages 0 and npages - 1,
 * a run across three pages, and random spans in nwrites random pages.
 */
static void scattered_writes(char *base, uint8_t *model, size_t npages, size_t nwrites,
			     uint64_t seed)
{
	size_t ps = pgsz();
	uint8_t *buf = fx_alloc(3 * ps);

	for (size_t i = 0; i < 3 * ps; i++)
		buf[i] = (uint8_t)(rng_next(&seed) | 1);
	write_span(base, model, 0, buf, 1);
	write_span(base, model, npages * ps - 1, buf + 1, 1);
	write_span(base, model, (npages / 2) * ps + 100, buf, 2 * ps + 50);
	for (size_t i = 0; i < nwrites; i++) {
		size_t pg = (size_t)(rng_next(&seed) % npages);
		size_t at = (size_t)(rng_next(&seed) % ps);
		size_t len = 1 + (size_t)(rng_next(&seed) % (ps - at));

		write_span(base, model, pg * ps + at, buf + (size_t)(rng_next(&seed) % ps), len);
	}
}

/* The export's file equals model (size bytes), and has that size. */
static void expect_export(const char *what, const char *path, const uint8_t *model, uint64_t size)
{
	int fd = open_file(path, O_RDONLY);

	expect_file(what, fd, model, size);
	close(fd);
}

/* ------------------------------------------------------------ network namespace */

static const char *ip_bin(void)
{
	static const char *const paths[] = { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" };

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		if (!access(paths[i], X_OK))
			return paths[i];
	return NULL;
}

/* Run ip with the arguments (NULL-terminated); its exit status, its stderr in err. */
__attribute__((sentinel))
static int run_ip(char *err, size_t errlen, ...)
{
	const char *argv[16];
	const char *ip = ip_bin();
	int n = 0, pfd[2], st = 0;
	ssize_t got, total = 0;
	va_list ap;
	pid_t pid;

	err[0] = '\0';
	if (!ip) {
		snprintf(err, errlen, "ip (iproute2) not found");
		return -1;
	}
	argv[n++] = "ip";
	va_start(ap, errlen);
	while (n < 15 && (argv[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
	pid = fork();
	if (pid == 0) {
		int nul = open("/dev/null", O_RDWR);

		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
		}
		dup2(pfd[1], 2);
		execv(ip, (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	while (total < (ssize_t)errlen - 1 &&
	       (got = read(pfd[0], err + total, errlen - 1 - (size_t)total)) > 0)
		total += got;
	err[total] = '\0';
	err[strcspn(err, "\n")] = '\0';
	close(pfd[0]);
	cr_assert_gt(pid, 0);
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/*
 * A network namespace of this test (named after its pid) joined to ours by a
 * veth pair on a /30 of 10.128.0.0/10 also chosen by the pid: fx.a_host is
 * our end, fx.a_ns the namespace's. Skips where it cannot be made.
 */
static void netns_setup_or_skip(void)
{
	unsigned pid = (unsigned)getpid();
	uint32_t net = (10u << 24) | (128u << 16) | ((pid & 0xFFFFFu) << 2);
	struct in_addr a;
	char err[256], host_cidr[32], ns_cidr[32];

	snprintf(fx.netns, sizeof(fx.netns), "lzmnbd%u", pid);
	snprintf(fx.veth_host, sizeof(fx.veth_host), "lzn%uh", pid);
	snprintf(fx.veth_ns, sizeof(fx.veth_ns), "lzn%un", pid);
	a.s_addr = htonl(net | 1);
	inet_ntop(AF_INET, &a, fx.a_host, sizeof(fx.a_host));
	a.s_addr = htonl(net | 2);
	inet_ntop(AF_INET, &a, fx.a_ns, sizeof(fx.a_ns));
	snprintf(host_cidr, sizeof(host_cidr), "%s/30", fx.a_host);
	snprintf(ns_cidr, sizeof(ns_cidr), "%s/30", fx.a_ns);

	if (run_ip(err, sizeof(err), "netns", "add", fx.netns, NULL))
		skip_test("no network namespace: ip netns add %s: %s", fx.netns, err);
	fx.netns_made = true;
	if (run_ip(err, sizeof(err), "link", "add", fx.veth_host, "type", "veth", "peer", "name",
		   fx.veth_ns, NULL))
		skip_test("no veth pair: ip link add %s type veth: %s", fx.veth_host, err);
	fx.veth_made = true;
	cr_assert_eq(run_ip(err, sizeof(err), "link", "set", fx.veth_ns, "netns", fx.netns, NULL), 0,
		     "ip link set %s netns %s: %s", fx.veth_ns, fx.netns, err);
	cr_assert_eq(run_ip(err, sizeof(err), "addr", "add", host_cidr, "dev", fx.veth_host, NULL), 0,
		     "ip addr add %s: %s", host_cidr, err);
	cr_assert_eq(run_ip(err, sizeof(err), "link", "set", fx.veth_host, "up", NULL), 0,
		     "ip link set %s up: %s", fx.veth_host, err);
	cr_assert_eq(run_ip(err, sizeof(err), "-n", fx.netns, "addr", "add", ns_cidr, "dev",
			    fx.veth_ns, NULL), 0, "ip -n %s addr add %s: %s", fx.netns, ns_cidr, err);
	cr_assert_eq(run_ip(err, sizeof(err), "-n", fx.netns, "link", "set", fx.veth_ns, "up", NULL),
		     0, "ip -n %s link set %s up: %s", fx.netns, fx.veth_ns, err);
	cr_assert_eq(run_ip(err, sizeof(err), "-n", fx.netns, "link", "set", "lo", "up", NULL), 0,
		     "ip -n %s link set lo up: %s", fx.netns, err);
}

static void netns_link(const char *state)
{
	char err[256];

	cr_assert_eq(run_ip(err, sizeof(err), "link", "set", fx.veth_host, state, NULL), 0,
		     "ip link set %s %s: %s", fx.veth_host, state, err);
}

/* The namespace goes with the veth end in it; our end goes with its peer. */
static void netns_drop(void)
{
	char err[256];

	if (fx.veth_made)
		run_ip(err, sizeof(err), "link", "del", fx.veth_host, NULL);
	if (fx.netns_made)
		run_ip(err, sizeof(err), "netns", "del", fx.netns, NULL);
	fx.veth_made = fx.netns_made = false;
}

/* ------------------------------------------------------------ sockets nobody serves */

/* A UNIX socket at path, bound; listening (never accepting) if listen_too. */
static void unix_socket_at(const char *path, bool listen_too)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind %s: %s", path,
		     strerror(errno));
	if (listen_too)
		cr_assert_eq(listen(fd, 16), 0);
	fx.fds[fx.nfds++] = fd;
}

/* A TCP port of 127.0.0.1 bound by us and not listening: connecting there is refused. */
static int tcp_port_refusing(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	fx.fds[fx.nfds++] = fd;
	return ntohs(sa.sin_port);
}

#if TEST_NBD_LIBNBD

/* ============================================================ harness self-checks (libnbd) */

static struct nbd_handle *nbd_open_uri(const char *uri)
{
	struct nbd_handle *h = nbd_create();

	cr_assert_not_null(h, "nbd_create: %s", nbd_get_error());
	cr_assert_eq(nbd_connect_uri(h, uri), 0, "nbd_connect_uri %s: %s", uri, nbd_get_error());
	return h;
}

/* 0, or the errno of nbd_connect_uri (-1 if it gave none). */
static int nbd_connect_errno(const char *uri)
{
	struct nbd_handle *h = nbd_create();
	int err = 0;

	cr_assert_not_null(h);
	if (nbd_connect_uri(h, uri)) {
		err = nbd_get_errno();
		if (!err)
			err = -1;
	} else {
		nbd_shutdown(h, 0);
	}
	nbd_close(h);
	return err;
}

/* 0, or the errno of a pread of len at off, whose bytes must be model's. */
static int nbd_read_check(struct nbd_handle *h, const uint8_t *model, size_t len, uint64_t off)
{
	uint8_t *buf = malloc(len);
	bool right = true;
	int err = 0;

	cr_assert_not_null(buf);
	if (nbd_pread(h, buf, len, off, 0)) {
		err = nbd_get_errno();
		if (!err)
			err = -1;
	} else {
		right = !memcmp(buf, model + off, len);
	}
	free(buf);
	cr_assert(right, "nbd_pread at %#llx: wrong bytes", (unsigned long long)off);
	return err;
}

static void nbd_done(struct nbd_handle *h)
{
	nbd_shutdown(h, 0);
	nbd_close(h);
}

Test(nbd, harness_unix_server_serves_fails_reads_on_trigger_and_restarts, FIXTURE, .timeout = 60)
{
	char path[PATH_MAX], trig[PATH_MAX], arg[PATH_MAX + 32], uri[PATH_MAX];
	uint8_t *model = export_file("data", 1 * MiB, 1, path, sizeof(path), 0);
	struct server *s = server_new("h");
	struct nbd_handle *h;
	int fd;

	snprintf(trig, sizeof(trig), "%s/trigger", fx.dir);
	snprintf(arg, sizeof(arg), "error-pread-file=%s", trig);
	server_args(s, "--filter=error", "file", path, "error=EIO", "error-pread-rate=100%", arg,
		    NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_get_size(h), (int64_t)(1 * MiB));
	cr_assert_eq(nbd_read_check(h, model, 64 * 1024, 128 * 1024), 0);
	fd = open(trig, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	cr_assert_eq(nbd_read_check(h, model, 4096, 0), EIO, "the trigger did not fail the read");
	unlink(trig);
	cr_assert_eq(nbd_read_check(h, model, 4096, 4096), 0, "the read after the trigger failed");
	nbd_done(h);

	/* killed: its socket stays, refusing; started again on it: served */
	server_signal(s, SIGKILL);
	cr_assert_eq(nbd_connect_errno(uri), ECONNREFUSED);
	server_start(s);
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_read_check(h, model, 1 * MiB, 0), 0);
	nbd_done(h);
	server_signal(s, SIGTERM);
	cr_assert_eq(s->pid, 0);
}

Test(nbd, harness_ddrescue_filter_fails_exactly_the_bad_pages, FIXTURE, .timeout = 60)
{
	static const size_t bad[] = { 100, 101, 300 };
	size_t ps = pgsz();
	char path[PATH_MAX], map[PATH_MAX], arg[PATH_MAX + 32], farg[PATH_MAX + 8], uri[PATH_MAX];
	uint8_t *model = export_file("data", 2 * MiB, 2, path, sizeof(path), 0);
	struct server *s = server_new("d");
	struct nbd_handle *h;

	snprintf(map, sizeof(map), "%s/bad.map", fx.dir);
	ddrescue_map(map, 2 * MiB, bad, 3);
	snprintf(arg, sizeof(arg), "ddrescue-mapfile=%s", map);
	snprintf(farg, sizeof(farg), "file=%s", path);
	server_args(s, "--filter=ddrescue", "file", farg, arg, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_is_read_only(h), 1);
	for (size_t pg = 98; pg < 103; pg++)
		cr_assert_eq(nbd_read_check(h, model, ps, pg * ps), pg == 100 || pg == 101 ? EIO : 0,
			     "page %zu", pg);
	cr_assert_eq(nbd_read_check(h, model, ps, 299 * ps), 0);
	cr_assert_eq(nbd_read_check(h, model, ps, 300 * ps), EIO);
	cr_assert_eq(nbd_read_check(h, model, ps, 301 * ps), 0);
	cr_assert_eq(nbd_read_check(h, model, 64 * ps, 280 * ps), EIO, "a read spanning a bad page");
	nbd_done(h);
}

/*
 * The servers the bad-URI test relies on refuse as it expects: an unknown
 * export name, TLS required, every client denied, a read-only export; and
 * the log filter records writes and flushes as the sync test reads them.
 */
Test(nbd, harness_refusing_servers_refuse_and_the_log_records_flushes, FIXTURE, .timeout = 60)
{
	char path[PATH_MAX], darg[PATH_MAX + 8], uri[PATH_MAX], psk[PATH_MAX], parg[PATH_MAX + 16];
	char log[PATH_MAX], larg[PATH_MAX + 16];
	struct server *ro = server_new("ro"), *tls = server_new("tls"), *deny = server_new("deny");
	struct server *lg = server_new("log");
	struct nbd_handle *h;
	uint8_t buf[512] = { 1 };
	FILE *f;

	snprintf(fx.subdir, sizeof(fx.subdir), "%s/exports", fx.dir);
	cr_assert_eq(mkdir(fx.subdir, 0700), 0);
	snprintf(path, sizeof(path), "%s/data", fx.subdir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	cr_assert_eq(ftruncate(fileno(f), (off_t)(1 * MiB)), 0);
	fclose(f);
	snprintf(darg, sizeof(darg), "dir=%s", fx.subdir);
	server_args(ro, "-r", "file", darg, NULL);
	server_start(ro);
	server_uri(ro, "data", uri, sizeof(uri));
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_is_read_only(h), 1);
	nbd_done(h);
	server_uri(ro, "nosuch", uri, sizeof(uri));
	cr_assert_eq(nbd_connect_errno(uri), ENOENT);

	snprintf(psk, sizeof(psk), "%s/keys.psk", fx.dir);
	f = fopen(psk, "w");
	cr_assert_not_null(f);
	fprintf(f, "alice:%016llx%016llx\n", (unsigned long long)rng_next(&(uint64_t){ 7 }),
		(unsigned long long)rng_next(&(uint64_t){ 9 }));
	fclose(f);
	snprintf(parg, sizeof(parg), "--tls-psk=%s", psk);
	server_args(tls, "--tls=require", parg, "memory", "1M", NULL);
	server_start(tls);
	server_uri(tls, "", uri, sizeof(uri));
	cr_assert_eq(nbd_connect_errno(uri), ENOTSUP);

	server_args(deny, "--filter=ip", "memory", "1M", "deny=all", NULL);
	server_start(deny);
	server_uri(deny, "", uri, sizeof(uri));
	cr_assert_neq(nbd_connect_errno(uri), 0);

	snprintf(log, sizeof(log), "%s/nbd.log", fx.dir);
	snprintf(larg, sizeof(larg), "logfile=%s", log);
	server_args(lg, "--filter=log", "memory", "1M", larg, NULL);
	server_start(lg);
	server_uri(lg, "", uri, sizeof(uri));
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_pwrite(h, buf, sizeof(buf), 0, 0), 0);
	cr_assert_eq(nbd_flush(h, 0), 0);
	/* the reply came after the line was written: no wait */
	cr_assert_gt(log_last(log, "...Flush"), log_last(log, "...Write"));
	cr_assert_eq(log_count(log, " Connect "), 1);
	nbd_done(h);
}

Test(nbd, harness_netns_tcp_server_is_reachable_and_the_link_can_be_cut, FIXTURE, .timeout = 60)
{
	char path[PATH_MAX], uri[PATH_MAX];
	uint8_t *model = export_file("data", 1 * MiB, 3, path, sizeof(path), 0);
	struct server *s;
	struct nbd_handle *h;

	nbdkit_or_skip();
	netns_setup_or_skip();
	s = server_new_tcp("ns", fx.netns, fx.a_ns, 10809);
	server_args(s, "file", path, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	h = nbd_open_uri(uri);
	cr_assert_eq(nbd_read_check(h, model, 1 * MiB, 0), 0);
	netns_link("down");
	netns_link("up");
	cr_assert_eq(nbd_read_check(h, model, 4096, 0), 0);
	nbd_done(h);
	snprintf(uri, sizeof(uri), "nbd://%s:10810/", fx.a_ns);
	cr_assert_eq(nbd_connect_errno(uri), ECONNREFUSED);
}

/* ============================================================ private regions */

/* The server of most tests: nbdkit's file plugin serving path, with extra arguments first. */
static struct server *file_server(const char *path, const char *filter, const char *params)
{
	struct server *s = server_new("nbd");

	if (filter && params)
		server_args(s, filter, "file", path, params, NULL);
	else
		server_args(s, "file", path, NULL);
	server_start(s);
	return s;
}

Test(nbd, private_sequential_scan_reads_every_byte_of_the_export, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 32 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 11, path, sizeof(path), 0);
	struct lazymap_stats st;
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	scan_all(p, model, npages, NULL, "sequential");
	quiesce(lm);
	st = stats(lm);
	cr_assert_eq(st.io_errors, 0);
	cr_assert_eq(st.remote_timeouts, 0);
	cr_assert_eq(st.remote_reconnects, 0);
	cr_assert_eq(st.regions, 1);
	cr_assert_gt(st.faults, 0);
}

Test(nbd, private_random_order_reads_every_byte_of_the_export, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 16 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 12, path, sizeof(path), 0);
	size_t *order = permutation(npages, test_seed());
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	scan_all(p, model, npages, order, "random order");
	quiesce(lm);
	cr_assert_eq(stats(lm).io_errors, 0);
}

/* Two threads over all pages at once, from the start and from the middle, racing on every page. */
Test(nbd, private_two_threads_scanning_at_once_read_every_byte, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 32 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(2, 0, 0, 0);
	uint8_t *model = export_file("data", size, 13, path, sizeof(path), 0);
	static struct scan s[2]; /* a hung scanner outlives the frame */
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	for (int i = 0; i < 2; i++) {
		s[i] = (struct scan){ .base = p, .want = model, .npages = npages,
				      .first = i ? npages / 2 : 0, .n = npages };
		scan_start(&s[i]);
	}
	for (int i = 0; i < 2; i++)
		scan_join(&s[i], WAIT_S, i ? "thread from the middle" : "thread from the start");
	scan_expect_right(&s[0], "thread from the start");
	scan_expect_right(&s[1], "thread from the middle");
	quiesce(lm);
	cr_assert_eq(stats(lm).io_errors, 0);
}

Test(nbd, private_region_at_an_offset_reads_the_bytes_there, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps, k = 256 + 3;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 14, path, sizeof(path), 0);
	char *p, *q;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	/* the rest of the export from page k, read cold */
	p = map_uri(lm, (npages - k) * ps, PROT_READ, LAZYMAP_PRIVATE, uri, k * ps);
	scan_all(p, model + k * ps, npages - k, NULL, "from page 259");
	/* its last page alone, in a region of its own */
	q = map_uri(lm, ps, PROT_READ, LAZYMAP_PRIVATE, uri, (npages - 1) * ps);
	cr_assert_eq(touch(q + 5, -1, NULL).signo, 0);
	expect_mem("the last page alone", q, model + (npages - 1) * ps, ps);
	cr_assert_eq(stats(lm).regions, 2);
}

/* ============================================================ shared regions */

/* A writable export on a server whose log filter records every request. */
static struct server *logged_server(const char *path, char *log, size_t loglen)
{
	struct server *s = server_new("nbd");
	char larg[PATH_MAX + 16];

	snprintf(log, loglen, "%s/requests.log", fx.dir);
	snprintf(larg, sizeof(larg), "logfile=%s", log);
	server_args(s, "--filter=log", "file", path, larg, NULL);
	server_start(s);
	return s;
}

Test(nbd, shared_writes_reach_the_export_on_sync_with_a_flush, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX], log[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 21, path, sizeof(path), 0);
	struct lazymap_stats st;
	size_t writes, flushes;
	char *p;
	int ret;

	server_uri(logged_server(path, log, sizeof(log)), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, npages, 64, test_seed() ^ 21);
	/* nothing reaches the export before the sync (a shared mapping's writes are the cache's) */
	ret = lazymap_sync(lm, p, size);
	cr_assert_eq(ret, 0, "lazymap_sync: %s", strerror(-ret));
	expect_export("after lazymap_sync", path, model, size);
	writes = log_last(log, "...Write");
	flushes = log_last(log, "...Flush");
	cr_assert_gt(writes, 0, "the server's log has no write");
	cr_assert_gt(flushes, writes, "no NBD flush after the last write before lazymap_sync returned "
		     "(last write reply at log line %zu, last flush %zu)", writes, flushes);
	st = stats(lm);
	cr_assert_eq(st.dirty_pages, 0, "%lu pages dirty after the sync",
		     (unsigned long)st.dirty_pages);
	cr_assert_eq(st.io_errors, 0);
	/* the region still reads what was written */
	for (size_t pg = 0; pg < npages; pg += 97)
		expect_mem("the region after the sync", p + pg * ps, model + pg * ps, ps);
	/* and a second round of writes goes the same way */
	scattered_writes(p, model, npages, 16, test_seed() ^ 22);
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	expect_export("after a second lazymap_sync", path, model, size);
}

Test(nbd, shared_writes_reach_the_export_on_unmap, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 23, path, sizeof(path), 0);
	char *p;
	int ret;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, npages, 64, test_seed() ^ 23);
	ret = lazymap_unmap(lm, p, size);
	cr_assert_eq(ret, 0, "lazymap_unmap: %s", strerror(-ret));
	expect_export("after lazymap_unmap", path, model, size);
	cr_assert_eq(stats(lm).regions, 0);
}

Test(nbd, shared_writes_reach_the_export_on_close, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 24, path, sizeof(path), 0);
	char *p;
	int ret;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, npages, 64, test_seed() ^ 24);
	fx.lm = NULL;
	ret = lazymap_close(lm);
	cr_assert_eq(ret, 0, "lazymap_close: %s", strerror(-ret));
	expect_export("after lazymap_close", path, model, size);
}

/*
 * One cache per URI: a second region of the same URI (at another offset)
 * asks the server nothing when mapped, and sees the first's writes at once,
 * before any sync, and the other way round; a private region of it mapped
 * later reads them too (it has written nothing). Both regions' syncs put
 * every write on the export.
 */
Test(nbd, second_region_of_the_uri_shares_its_cache_and_asks_nothing, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 1 * MiB, npages = size / ps, k = 2;
	char path[PATH_MAX], uri[PATH_MAX], log[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 25, path, sizeof(path), 0);
	uint8_t buf[64];
	size_t connects;
	char *a, *b, *c;

	server_uri(logged_server(path, log, sizeof(log)), "", uri, sizeof(uri));
	a = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	connects = log_count(log, " Connect ");
	cr_assert_geq(connects, 1, "lazymap_map_uri did not ask the server");
	/* its probe's disconnect logged (not a check: the log settles) */
	for (double t0 = now_s(); log_count(log, " Disconnect ") < connects && now_s() - t0 < 2.0;)
		usleep(1000);
	connects = log_count(log, " Connect ");
	b = map_uri(lm, 64 * ps, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, k * ps);
	cr_assert_eq(log_count(log, " Connect "), connects,
		     "the second region of the URI connected to the server");

	memset(buf, 0xa1, sizeof(buf));
	write_span(a, model, 5 * ps + 10, buf, sizeof(buf));      /* b's page 3 */
	write_span(a, model, 40 * ps, buf, 1);                    /* b's page 38 */
	cr_assert_eq(touch(b + 3 * ps, -1, NULL).signo, 0);
	expect_mem("the second region, page 3", b + 3 * ps, model + 5 * ps, ps);
	expect_mem("the second region, page 38", b + 38 * ps, model + 40 * ps, ps);
	memset(buf, 0xb2, sizeof(buf));
	write_span(b, model + k * ps, 10 * ps + 7, buf, sizeof(buf)); /* a's page 12 */
	cr_assert_eq(touch(a + 12 * ps, -1, NULL).signo, 0);
	expect_mem("the first region, page 12", a + 12 * ps, model + 12 * ps, ps);

	c = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	for (size_t pg = 0; pg < npages; pg++) {
		struct touch_fault f = touch(c + pg * ps, -1, NULL);

		cr_assert_eq(f.signo, 0, "the private region, page %zu: signal %d", pg, f.signo);
		expect_mem("the private region mapped after the writes", c + pg * ps, model + pg * ps, ps);
	}
	cr_assert_eq(stats(lm).regions, 3);

	cr_assert_eq(lazymap_sync(lm, a, size), 0);
	cr_assert_eq(lazymap_sync(lm, b, 64 * ps), 0);
	expect_export("after both regions' syncs", path, model, size);
}

/*
 * Under a resident budget a quarter of the export, writing every page of a
 * shared region makes the evictor write pages back to the export; every
 * page then reads back what was written (from the export again for the
 * evicted ones) and a sync leaves the export equal to the model.
 */
Test(nbd, shared_writes_under_a_resident_limit_go_back_by_eviction, FIXTURE, .timeout = 120)
{
	size_t ps = pgsz(), size = 16 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 4 * MiB);
	uint8_t *model = export_file("data", size, 26, path, sizeof(path), 0);
	uint8_t *page = fx_alloc(ps);
	struct lazymap_stats st;
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	for (size_t pg = 0; pg < npages; pg++) {
		pattern_fill(page, ps, 27, pg * ps);
		write_span(p, model, pg * ps, page, ps);
	}
	quiesce(lm);
	st = stats(lm);
	cr_assert_gt(st.evictions, 0, "no eviction under a 4 MiB budget for 16 MiB written");
	scan_all(p, model, npages, NULL, "reading back under the budget");
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	expect_export("after eviction and sync", path, model, size);
	cr_assert_eq(stats(lm).io_errors, 0);
}

/*
 * A read-only export (nbdkit -r): a private writable region keeps its writes
 * in memory (the export is unchanged, the cache too: a shared region reads
 * the export's bytes); a shared region may not be made writable.
 */
Test(nbd, read_only_export_private_writes_stay_in_memory_shared_cannot_write, FIXTURE,
     .timeout = 60)
{
	size_t ps = pgsz(), size = 1 * MiB;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 28, path, sizeof(path), 0);
	uint8_t *orig = fx_alloc(size);
	struct server *s = server_new("nbd");
	void *q = NULL;
	char *p, *r;
	int ret;

	memcpy(orig, model, size);
	server_args(s, "-r", "file", path, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, uri, 0);
	cr_assert_eq(touch(p + 3 * ps + 9, 0x5c, NULL).signo, 0);
	model[3 * ps + 9] = 0x5c;
	expect_mem("the private region", p, model, size);
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	r = map_uri(lm, size, PROT_READ, LAZYMAP_SHARED, uri, 0);
	expect_mem("a shared read-only region", r, orig, size);
	ret = lazymap_protect(lm, r, size, PROT_READ | PROT_WRITE);
	cr_assert_eq(ret, -EACCES, "lazymap_protect PROT_WRITE on a shared region of a read-only "
		     "export: %s", strerror(-ret));
	ret = lazymap_map_uri(lm, &q, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	cr_assert_eq(ret, -EACCES, "shared writable map of a read-only export: %s", strerror(-ret));
	cr_assert_eq(stats(lm).regions, 2);
	expect_export("the read-only export", path, orig, size);
}

/* ============================================================ the export's end */

/*
 * An export of 5 pages and 1234 bytes in a region of 8 pages: the last
 * partial page (touched first, cold) reads its bytes then zeros; pages 6 and
 * 7, wholly past the end, are SIGBUS at the very byte touched, every time,
 * and count in io_errors.
 */
Test(nbd, export_end_partial_page_reads_zeros_and_pages_past_it_are_sigbus, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 5 * ps + 1234;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 31, path, sizeof(path), 0);
	struct lazymap_stats st;
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, 8 * ps, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	cr_assert_eq(touch(p + 5 * ps + 7, -1, NULL).signo, 0, "the last, partial page");
	for (size_t i = 0; i < ps; i++)
		cr_assert_eq((uint8_t)p[5 * ps + i], i < 1234 ? model[5 * ps + i] : 0,
			     "the last page, byte %zu", i);
	for (size_t pg = 6; pg < 8; pg++)
		for (int again = 0; again < 2; again++) {
			char *a = p + pg * ps + (pg == 6 ? 0 : 17 + (size_t)again);
			struct touch_fault f = touch(a, -1, NULL);

			cr_assert_eq(f.signo, SIGBUS, "page %zu past the export's end: signal %d", pg,
				     f.signo);
			cr_assert_eq(f.addr, (void *)a, "page %zu: si_addr %p, touched %p", pg, f.addr,
				     (void *)a);
		}
	scan_all(p, model, 6, NULL, "the pages inside the export");
	quiesce(lm);
	st = stats(lm);
	cr_assert_eq(st.io_errors, 2, "io_errors %lu, want 2 (pages 6 and 7)",
		     (unsigned long)st.io_errors);
}

/*
 * A shared write into the last, partial page, across the export's end: the
 * sync succeeds and puts the bytes inside the export on it; the export's
 * size does not change (NBD cannot grow it).
 */
Test(nbd, export_end_shared_write_across_it_keeps_the_export_size, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 5 * ps + 1234;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 32, path, sizeof(path), 0);
	uint8_t buf[500];
	char *p;
	int ret;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(lm, 6 * ps, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	memset(buf, 0xa5, sizeof(buf));
	write_span(p, model, 5 * ps + 1000, buf, sizeof(buf)); /* bytes 1000..1499 of the page */
	write_span(p, model, 0, buf, 1);
	ret = lazymap_sync(lm, p, 6 * ps);
	cr_assert_eq(ret, 0, "lazymap_sync of a page across the export's end: %s", strerror(-ret));
	expect_export("after the sync", path, model, size);
}

/* ============================================================ failed reads */

/*
 * Every read fails (EIO) while a trigger file exists: a touch then is SIGBUS
 * at the touched address and counts in io_errors. With the trigger gone a
 * touch elsewhere reads right, on the same connection (no reconnect).
 */
Test(nbd, failed_read_is_sigbus_at_the_address_and_the_connection_survives, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 16 * MiB;
	char path[PATH_MAX], uri[PATH_MAX], trig[PATH_MAX], arg[PATH_MAX + 32];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 41, path, sizeof(path), 0);
	struct server *s = server_new("nbd");
	struct lazymap_stats st;
	struct touch_fault f;
	char *p, *a;
	int fd;

	snprintf(trig, sizeof(trig), "%s/trigger", fx.dir);
	snprintf(arg, sizeof(arg), "error-pread-file=%s", trig);
	server_args(s, "--filter=error", "file", path, "error=EIO", "error-pread-rate=100%", arg,
		    NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	/* a first read, so that the handler's connection is up before the failures */
	cr_assert_eq(touch(p + 1000 * ps, -1, NULL).signo, 0);
	expect_mem("page 1000", p + 1000 * ps, model + 1000 * ps, ps);
	quiesce(lm); /* its readahead landed before the trigger */

	fd = open(trig, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	a = p + 10 * ps + 123;
	f = touch(a, -1, NULL);
	cr_assert_eq(f.signo, SIGBUS, "a read the server failed: signal %d", f.signo);
	cr_assert_eq(f.addr, (void *)a, "si_addr %p, touched %p", f.addr, (void *)a);
	st = stats(lm);
	cr_assert_gt(st.io_errors, 0, "io_errors 0 after a failed read");

	unlink(trig);
	cr_assert_eq(touch(p + 3000 * ps + 5, -1, NULL).signo, 0, "page 3000 after the trigger went");
	expect_mem("page 3000", p + 3000 * ps, model + 3000 * ps, ps);
	scan_all(p + 2000 * ps, model + 2000 * ps, 512, NULL, "pages 2000-2511 after the failure");
	quiesce(lm);
	st = stats(lm);
	cr_assert_eq(st.remote_reconnects, 0, "%lu reconnects: a failed read dropped the connection",
		     (unsigned long)st.remote_reconnects);
	cr_assert_eq(st.remote_timeouts, 0);
}

/*
 * The server fails reads of exactly pages 300, 1000-1002 (ddrescue filter,
 * a read-only export): a sequential scan, whose readahead spans them, gets
 * SIGBUS at the touched address on those pages alone, every byte of every
 * other page right; a second look at them and their neighbours, the same.
 */
Test(nbd, ddrescue_bad_pages_alone_are_sigbus_their_neighbours_read_right, FIXTURE, .timeout = 60)
{
	static const size_t bad[] = { 300, 1000, 1001, 1002 };
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps, nbad = 4;
	char path[PATH_MAX], uri[PATH_MAX], map[PATH_MAX], arg[PATH_MAX + 32], farg[PATH_MAX + 8];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 42, path, sizeof(path), 0);
	struct server *s = server_new("nbd");
	struct lazymap_stats st;
	char *p;

	snprintf(map, sizeof(map), "%s/bad.map", fx.dir);
	ddrescue_map(map, size, bad, nbad);
	snprintf(arg, sizeof(arg), "ddrescue-mapfile=%s", map);
	snprintf(farg, sizeof(farg), "file=%s", path);
	server_args(s, "--filter=ddrescue", "file", farg, arg, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	for (int pass = 0; pass < 2; pass++) {
		for (size_t pg = 0; pg < npages; pg++) {
			bool is_bad = pg == 300 || (pg >= 1000 && pg <= 1002);
			char *a = p + pg * ps + (pg * 131) % ps;
			struct touch_fault f;

			if (pass && !(pg >= 298 && pg <= 302) && !(pg >= 998 && pg <= 1004))
				continue;
			f = touch(a, -1, NULL);
			if (is_bad) {
				cr_assert_eq(f.signo, SIGBUS, "pass %d, bad page %zu: signal %d", pass, pg,
					     f.signo);
				cr_assert_eq(f.addr, (void *)a, "bad page %zu: si_addr %p, touched %p", pg,
					     f.addr, (void *)a);
				continue;
			}
			cr_assert_eq(f.signo, 0, "pass %d, good page %zu: signal %d at %p", pass, pg,
				     f.signo, f.addr);
			expect_mem("a good page", p + pg * ps, model + pg * ps, ps);
		}
		quiesce(lm);
		st = stats(lm);
		cr_assert_eq(st.io_errors, nbad, "pass %d: io_errors %lu, want %zu", pass,
			     (unsigned long)st.io_errors, nbad);
	}
}

/* ============================================================ a server that goes away */

/*
 * A scan of an export whose reads each take 20 ms (delay filter), with
 * windows of 128 KiB, so that reads are in flight when the scanner pauses a
 * quarter of the way in and the server is dealt with.
 */
#define SLOW_SIZE (8 * MiB)

static char *slow_export(unsigned timeout_ms, uint64_t key, const char *delay, struct server **sp,
			 uint8_t **modelp)
{
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 128 * 1024, timeout_ms, 0);
	struct server *s = server_new("nbd");

	*modelp = export_file("data", SLOW_SIZE, key, path, sizeof(path), 0);
	server_args(s, "--filter=delay", "file", path, delay, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	*sp = s;
	return map_uri(lm, SLOW_SIZE, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
}

static void scan_to_pause(struct scan *s, char *p, const uint8_t *model, bool stop_at_signal)
{
	size_t npages = SLOW_SIZE / pgsz();

	*s = (struct scan){ .base = p, .want = model, .npages = npages, .n = npages,
			    .pause_at = npages / 4, .stop_at_signal = stop_at_signal };
	scan_start(s);
	if (!wait_flag(&s->paused, WAIT_S)) {
		fx.abandon_lm = true;
		cr_assert(false, "the scan did not reach a quarter in %.0f s (%zu touches)", WAIT_S,
			  s->touched);
	}
}

/*
 * Killed mid-scan (SIGKILL), or told to stop (SIGTERM: it answers every
 * request with ESHUTDOWN, and exits once its clients hang up: the library's
 * handler must take that for a server going away, not an I/O error), and
 * started again on the same socket 300 ms after it is gone.
 */
static void killed_and_restarted(int sig)
{
	struct server *s;
	static struct scan sc; /* a hung scanner outlives the frame */
	uint8_t *model;
	char *p = slow_export(5000, 51, "rdelay=20ms", &s, &model);
	struct lazymap_stats st;

	scan_to_pause(&sc, p, model, false);
	if (sig == SIGKILL) {
		server_signal(s, SIGKILL);
		atomic_store(&sc.resume, 1);
	} else {
		/* the scan goes on against the stopping server; an idle
		 * connection of the library's may keep it: killed after 2 s */
		kill(s->pid, sig);
		atomic_store(&sc.resume, 1);
		if (!server_exited(s, 2.0))
			server_signal(s, SIGKILL);
	}
	usleep(300 * 1000);
	server_start(s);
	scan_join(&sc, WAIT_S, "the scan across the restart");
	scan_expect_right(&sc, "the scan across the restart");
	quiesce(fx.lm);
	st = stats(fx.lm);
	cr_assert_geq(st.remote_reconnects, 1, "remote_reconnects %lu",
		      (unsigned long)st.remote_reconnects);
	cr_assert_eq(st.remote_timeouts, 0);
	cr_assert_eq(st.io_errors, 0);
}

Test(nbd, server_killed_mid_scan_and_restarted_the_scan_completes, FIXTURE, .timeout = 60)
{
	killed_and_restarted(SIGKILL);
}

/* SIGTERM: ESHUTDOWN replies, then the server goes: no SIGBUS, no wrong byte. */
Test(nbd, server_terminated_mid_scan_and_restarted_the_scan_completes, FIXTURE, .timeout = 60)
{
	killed_and_restarted(SIGTERM);
}

/* lazymap_close on a thread of its own, which must return 0 within secs. */
struct closer {
	pthread_t th;
	struct lazymap *lm;
	int ret;
	atomic_int finished;
};

static void *closer_main(void *arg)
{
	struct closer *c = arg;

	c->ret = lazymap_close(c->lm);
	atomic_store(&c->finished, 1);
	return NULL;
}

/*
 * A close that does not return in time fails the test with that, rather
 * than by the runner's timeout: the lazymap is left to the process's exit,
 * and .fini still cleans up.
 */
static void close_within(double secs, const char *what)
{
	static struct closer c; /* the thread may outlive the test's frame */
	double t0 = now_s();

	c = (struct closer){ .lm = fx.lm };
	fx.abandon_lm = true;
	cr_assert_eq(pthread_create(&c.th, NULL, closer_main, &c), 0);
	cr_assert(wait_flag(&c.finished, secs), "%s: still waits after %.0f s", what, secs);
	pthread_join(c.th, NULL);
	fx.lm = NULL;
	fx.abandon_lm = false;
	cr_assert_eq(c.ret, 0, "%s: %s", what, strerror(-c.ret));
	cr_assert_leq(now_s() - t0, secs, "%s took %.2f s", what, now_s() - t0);
}

/*
 * Killed for good with remote_timeout_ms 1000: the scanning thread gets
 * SIGBUS at the address it touched within the timeout and some slack,
 * remote_timeouts counts, and lazymap_close returns, promptly.
 */
Test(nbd, server_killed_for_good_mid_scan_is_sigbus_within_the_timeout, FIXTURE, .timeout = 60)
{
	const unsigned timeout_ms = 1000;
	struct server *s;
	static struct scan sc; /* a hung scanner outlives the frame */
	uint8_t *model;
	char *p = slow_export(timeout_ms, 52, "rdelay=20ms", &s, &model);
	struct lazymap_stats st;
	double t_kill;

	scan_to_pause(&sc, p, model, true);
	server_signal(s, SIGKILL);
	t_kill = now_s();
	atomic_store(&sc.resume, 1);
	scan_join(&sc, timeout_ms / 1000.0 + 2 * SLACK_S, "the scan of a server killed for good");
	cr_assert_eq(sc.bad, 0, "wrong bytes before the SIGBUS: page %zu byte %zu", sc.bad_pg,
		     sc.bad_at);
	cr_assert_eq(sc.signals, 1, "the scan of a server gone for good ended with no signal");
	cr_assert_eq(sc.sig.signo, SIGBUS, "signal %d", sc.sig.signo);
	cr_assert_eq(sc.sig.addr, (void *)sc.sig_touched, "si_addr %p, touched %p", sc.sig.addr,
		     (void *)sc.sig_touched);
	cr_assert_leq(sc.sig_t - t_kill, timeout_ms / 1000.0 + SLACK_S,
		      "SIGBUS came %.2f s after the kill, remote_timeout_ms %u", sc.sig_t - t_kill,
		      timeout_ms);
	st = stats(fx.lm);
	cr_assert_geq(st.remote_timeouts, 1, "remote_timeouts %lu", (unsigned long)st.remote_timeouts);
	close_within(timeout_ms / 1000.0 + SLACK_S, "lazymap_close after the server was killed");
}

/* Stopped (SIGSTOP) mid-scan for 300 ms, within remote_timeout_ms: the scan just waits. */
Test(nbd, server_paused_briefly_mid_scan_the_scan_completes, FIXTURE, .timeout = 60)
{
	struct server *s;
	static struct scan sc; /* a hung scanner outlives the frame */
	uint8_t *model;
	char *p = slow_export(5000, 53, "rdelay=20ms", &s, &model);

	scan_to_pause(&sc, p, model, false);
	server_signal(s, SIGSTOP);
	atomic_store(&sc.resume, 1);
	usleep(300 * 1000);
	server_signal(s, SIGCONT);
	scan_join(&sc, WAIT_S, "the scan across the pause");
	scan_expect_right(&sc, "the scan across the pause");
	quiesce(fx.lm);
	cr_assert_eq(stats(fx.lm).remote_timeouts, 0);
}

/*
 * Stopped for good (it accepts connections and answers nothing): requests
 * unanswered for remote_timeout_ms are taken as a lost connection, then the
 * reconnection gives up: SIGBUS within twice the timeout and some slack, and
 * lazymap_close returns promptly with the server still stopped.
 */
Test(nbd, server_paused_for_good_is_sigbus_and_close_returns, FIXTURE, .timeout = 60)
{
	const unsigned timeout_ms = 1000;
	struct server *s;
	static struct scan sc; /* a hung scanner outlives the frame */
	uint8_t *model;
	char *p = slow_export(timeout_ms, 54, "rdelay=20ms", &s, &model);
	double t_stop;

	scan_to_pause(&sc, p, model, true);
	server_signal(s, SIGSTOP);
	t_stop = now_s();
	atomic_store(&sc.resume, 1);
	scan_join(&sc, 2 * timeout_ms / 1000.0 + 2 * SLACK_S, "the scan of a stopped server");
	cr_assert_eq(sc.bad, 0);
	cr_assert_eq(sc.signals, 1, "the scan of a server stopped for good ended with no signal");
	cr_assert_eq(sc.sig.signo, SIGBUS, "signal %d", sc.sig.signo);
	cr_assert_eq(sc.sig.addr, (void *)sc.sig_touched, "si_addr %p, touched %p", sc.sig.addr,
		     (void *)sc.sig_touched);
	cr_assert_leq(sc.sig_t - t_stop, 2 * timeout_ms / 1000.0 + SLACK_S,
		      "SIGBUS came %.2f s after the stop, remote_timeout_ms %u", sc.sig_t - t_stop,
		      timeout_ms);
	cr_assert_geq(stats(fx.lm).remote_timeouts, 1);
	close_within(timeout_ms / 1000.0 + SLACK_S, "lazymap_close with the server stopped");
}

/* A lazymap_sync on a thread of its own; its result. */
struct syncer {
	pthread_t th;
	struct lazymap *lm;
	void *addr;
	size_t len;
	int ret;
	double took;
	atomic_int finished;
};

static void *syncer_main(void *arg)
{
	struct syncer *s = arg;
	double t0 = now_s();

	s->ret = lazymap_sync(s->lm, s->addr, s->len);
	s->took = now_s() - t0;
	atomic_store(&s->finished, 1);
	return NULL;
}

static void sync_in_thread(struct syncer *s, double secs, const char *what)
{
	cr_assert_eq(pthread_create(&s->th, NULL, syncer_main, s), 0);
	if (!wait_flag(&s->finished, secs)) {
		fx.abandon_lm = true;
		cr_assert(false, "%s: lazymap_sync still waits after %.0f s", what, secs);
	}
	pthread_join(s->th, NULL);
}

/* Writes, then the server killed; a sync waits for it to come back (300 ms later), and succeeds. */
Test(nbd, shared_sync_waits_for_a_restarted_server, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 4 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 5000, 0);
	uint8_t *model = export_file("data", size, 55, path, sizeof(path), 0);
	struct server *s = file_server(path, NULL, NULL);
	static struct syncer sy; /* a hung sync outlives the frame */
	char *p;

	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, npages, 32, test_seed() ^ 55);
	cr_assert_eq(lazymap_sync(lm, p, ps), 0, "a first sync, with the server there");
	scattered_writes(p, model, npages, 32, test_seed() ^ 56);
	server_signal(s, SIGKILL);
	sy = (struct syncer){ .lm = lm, .addr = p, .len = size };
	cr_assert_eq(pthread_create(&sy.th, NULL, syncer_main, &sy), 0);
	usleep(300 * 1000);
	server_start(s);
	if (!wait_flag(&sy.finished, WAIT_S)) {
		fx.abandon_lm = true;
		cr_assert(false, "lazymap_sync still waits %.0f s after the server came back", WAIT_S);
	}
	pthread_join(sy.th, NULL);
	cr_assert_eq(sy.ret, 0, "lazymap_sync across the restart: %s", strerror(-sy.ret));
	expect_export("after the sync across the restart", path, model, size);
}

/*
 * Writes, then the server killed for good (remote_timeout_ms 1000): the sync
 * fails with -EIO within the timeout and some slack, the pages stay dirty;
 * with the server back, a second sync writes them all.
 */
Test(nbd, shared_sync_with_the_server_gone_is_eio_and_the_pages_stay_dirty, FIXTURE,
     .timeout = 60)
{
	const unsigned timeout_ms = 1000;
	size_t size = 4 * MiB, npages = size / pgsz();
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, timeout_ms, 0);
	uint8_t *model = export_file("data", size, 57, path, sizeof(path), 0);
	struct server *s = file_server(path, NULL, NULL);
	struct lazymap_stats st;
	static struct syncer sy; /* a hung sync outlives the frame */
	char *p;

	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, npages, 32, test_seed() ^ 57);
	server_signal(s, SIGKILL);
	sy = (struct syncer){ .lm = lm, .addr = p, .len = size };
	sync_in_thread(&sy, timeout_ms / 1000.0 + 2 * SLACK_S, "the sync with the server gone");
	cr_assert_eq(sy.ret, -EIO, "lazymap_sync with the server gone: %s", strerror(-sy.ret));
	cr_assert_leq(sy.took, timeout_ms / 1000.0 + SLACK_S, "the failing sync took %.2f s", sy.took);
	st = stats(lm);
	cr_assert_gt(st.dirty_pages, 0, "no page left dirty after the failed sync");
	server_start(s);
	sy = (struct syncer){ .lm = lm, .addr = p, .len = size };
	sync_in_thread(&sy, WAIT_S, "the sync with the server back");
	cr_assert_eq(sy.ret, 0, "lazymap_sync with the server back: %s", strerror(-sy.ret));
	expect_export("after the second sync", path, model, size);
	cr_assert_eq(stats(lm).dirty_pages, 0);
}

/*
 * Pages in the URI's cache need no server: prefetched, then the server
 * killed, the region reads right; and a second region of the URI, which
 * asks the server nothing, maps and reads them too.
 */
Test(nbd, prefetched_pages_need_no_server, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 4 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 1000, 0);
	uint8_t *model = export_file("data", size, 58, path, sizeof(path), 0);
	struct server *s = file_server(path, NULL, NULL);
	char *p, *q;

	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	cr_assert_eq(lazymap_prefetch(lm, p, size), 0);
	quiesce(lm);
	server_signal(s, SIGKILL);
	scan_all(p, model, npages, NULL, "the prefetched region, server gone");
	q = map_uri(lm, size / 2, PROT_READ, LAZYMAP_PRIVATE, uri, size / 2);
	scan_all(q, model + size / 2, npages / 2, NULL, "a second region, server gone");
	cr_assert_eq(stats(lm).io_errors, 0);
}

/* ============================================================ found by a hostile review */

/* lazymap_close while a prefetch has reads in flight on a slow server:
 * it returns (it crashed once), failing them. */
Test(nbd, close_with_reads_in_flight_returns, FIXTURE, .timeout = 60)
{
	size_t size = 32 * MiB;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(2, 0, 0, 0);
	static struct closer cl;
	char *p;

	export_file("data", size, 71, path, sizeof(path), 0);
	server_uri(file_server(path, "--filter=delay", "rdelay=20ms"), "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	cr_assert_eq(lazymap_prefetch(lm, p, size), 0);
	usleep(50 * 1000);
	cl = (struct closer){ .lm = lm };
	cr_assert_eq(pthread_create(&cl.th, NULL, closer_main, &cl), 0);
	if (!wait_flag(&cl.finished, WAIT_S)) {
		fx.abandon_lm = true;
		cr_assert(false, "lazymap_close with reads in flight still waits");
	}
	pthread_join(cl.th, NULL);
	fx.lm = NULL;
	cr_assert_eq(cl.ret, 0, "lazymap_close: %s", strerror(-cl.ret));
}

/* Map, touch, unmap, again and again: one connection per handler and URI,
 * not one per cycle (they leaked until lazymap_close). */
Test(nbd, map_unmap_cycles_keep_the_descriptors_flat, FIXTURE, .timeout = 120)
{
	size_t ps = pgsz(), size = 1 * MiB;
	char path[PATH_MAX], uri[2][PATH_MAX];
	struct lazymap *lm = lm_open(2, 0, 0, 0);
	uint8_t *model = export_file("data", size, 72, path, sizeof(path), 0);
	int fds = 0;

	server_uri(file_server(path, NULL, NULL), "", uri[0], sizeof(uri[0]));
	server_uri(file_server(path, NULL, NULL), "", uri[1], sizeof(uri[1]));
	for (int i = 0; i < 200; i++) {
		/* the same URI, then two taking turns */
		const char *u = uri[i < 100 ? 0 : i & 1];
		char *p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, u, 0);

		cr_assert_eq(p[(size_t)(i % 256) * ps], (char)model[(size_t)(i % 256) * ps]);
		cr_assert_eq(lazymap_unmap(lm, p, size), 0);
		quiesce(lm);
		if (i == 10 || i == 110)
			fds = count_dir("/proc/self/fd");
		if (i == 99 || i == 199)
			cr_assert_leq(count_dir("/proc/self/fd"), fds + 2,
				      "cycle %d: %d descriptors, %d at cycle %d", i,
				      count_dir("/proc/self/fd"), fds, i < 100 ? 10 : 110);
	}
}

/* A server back just before remote_timeout_ms is still reached: the last
 * attempt is at the deadline, not a backoff short of it. */
Test(nbd, a_server_back_just_before_the_deadline_is_reconnected, FIXTURE, .timeout = 60)
{
	const unsigned timeout_ms = 1000;
	size_t ps = pgsz(), size = 4 * MiB;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, timeout_ms, 0);
	uint8_t *model = export_file("data", size, 73, path, sizeof(path), 0);
	struct server *s = file_server(path, NULL, NULL);
	static struct syncer sy;
	char *p;

	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	cr_assert_eq(p[0], (char)model[0]); /* connected */
	scattered_writes(p, model, size / ps, 16, test_seed() ^ 73);
	server_signal(s, SIGKILL);
	sy = (struct syncer){ .lm = lm, .addr = p, .len = size };
	cr_assert_eq(pthread_create(&sy.th, NULL, syncer_main, &sy), 0);
	usleep(850 * 1000);
	server_start(s);
	if (!wait_flag(&sy.finished, WAIT_S)) {
		fx.abandon_lm = true;
		cr_assert(false, "the sync still waits");
	}
	pthread_join(sy.th, NULL);
	cr_assert_eq(sy.ret, 0, "lazymap_sync, the server back at 850 of 1000 ms: %s",
		     strerror(-sy.ret));
	expect_export("after the sync", path, model, size);
}

/* A flush the server refuses: -EIO, the pages kept dirty; once it accepts,
 * the next sync is 0 (it said -EIO once: the refusal was taken for a
 * broken connection, and the writes for lost). */
Test(nbd, a_refused_flush_is_eio_and_the_next_good_sync_succeeds, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 1 * MiB;
	char path[ARG_LEN / 2], uri[PATH_MAX], trig[ARG_LEN / 2 + 8], arg[4][ARG_LEN];
	struct lazymap *lm = lm_open(1, 0, 2000, 0);
	uint8_t *model = export_file("data", size, 74, path, sizeof(path), 0);
	struct server *s = server_new("nbd");
	int ret;
	char *p;

	snprintf(trig, sizeof(trig), "%s.trigger", path);
	snprintf(arg[0], ARG_LEN, "get_size=echo %zu", size);
	snprintf(arg[1], ARG_LEN, "pread=dd if=%s skip=$4 count=$3 iflag=skip_bytes,count_bytes "
		 "status=none", path);
	snprintf(arg[2], ARG_LEN, "pwrite=dd of=%s seek=$4 conv=notrunc oflag=seek_bytes status=none",
		 path);
	snprintf(arg[3], ARG_LEN, "flush=if [ -e %s ]; then echo 'EIO refused' >&2; exit 1; fi", trig);
	server_args(s, "eval", arg[0], arg[1], arg[2], arg[3], "can_write=exit 0",
		    "can_flush=exit 0", NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scattered_writes(p, model, size / ps, 8, test_seed() ^ 74);
	close(open(trig, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
	ret = lazymap_sync(lm, p, size);
	cr_assert_eq(ret, -EIO, "sync, the flush refused: %s", strerror(-ret));
	cr_assert_gt(stats(lm).dirty_pages, 0, "the pages of a refused flush are dirty again");
	unlink(trig);
	ret = lazymap_sync(lm, p, size);
	cr_assert_eq(ret, 0, "sync, the flush accepted: %s", strerror(-ret));
	cr_assert_eq(stats(lm).dirty_pages, 0);
	expect_export("after the accepted flush", path, model, size);
}

/* The export comes back smaller: a sync writes what is within it and drops
 * what is past its end (it failed with -ENOSPC for ever, and the region
 * could not be unmapped). */
Test(nbd, an_export_that_shrank_drops_the_writes_past_its_end, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 4 * MiB;
	char path[PATH_MAX], small[ARG_LEN], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 2000, 0);
	uint8_t *model = export_file("data", size, 75, path, sizeof(path), 0);
	struct server *s = file_server(path, NULL, NULL);
	int ret, fd;
	char *p;

	cr_assert_lt((size_t)snprintf(small, sizeof(small), "%s.small", path), sizeof(small));
	fd = open(small, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, model, size / 2, 0), (ssize_t)(size / 2));
	close(fd);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	p[ps] = model[ps] ^= 0x5a;                       /* within the new size */
	p[size - ps] = model[size - ps] ^ 0x5a;          /* past it: dropped */
	server_signal(s, SIGKILL);
	memcpy(s->args[1], small, sizeof(small));
	server_start(s);
	ret = lazymap_sync(lm, p, size);
	cr_assert_eq(ret, 0, "sync after the export shrank: %s", strerror(-ret));
	expect_export("the shrunk export after the sync", small, model, size / 2);
	ret = lazymap_unmap(lm, p, size);
	cr_assert_eq(ret, 0, "unmap after the export shrank: %s", strerror(-ret));
}

/* ============================================================ a faultd client */

#ifdef FAULTD_BIN
/*
 * faultd pages files by descriptor, and never a URI: a client's export
 * regions are served in its own process (as fill-callback regions are),
 * with the same bytes, write-back and counters, faultd serving the rest.
 */
Test(nbd, a_faultd_client_maps_an_export_served_in_process, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 8 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX], sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
	uint8_t *model = export_file("data", size, 61, path, sizeof(path), 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lazymap_opts o = { .daemon = sock };
	struct lazymap_stats st;
	char *p;
	int s, ret;

	require_uffd(UFFD_FEATURE_POISON);
	snprintf(sock, sizeof(sock), "%s/faultd.sock", fx.dir);
	fx.faultd = fork();
	cr_assert_geq(fx.faultd, 0);
	if (fx.faultd == 0) {
		execl(FAULTD_BIN, "faultd", "--foreground", "--socket", sock, (char *)NULL);
		_exit(127);
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	for (int i = 0;; i++) {
		s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		ret = connect(s, (struct sockaddr *)&sa, sizeof(sa));
		close(s);
		if (ret == 0)
			break;
		cr_assert_lt(i, 5000, "faultd does not listen on %s", sock);
		cr_assert_eq(waitpid(fx.faultd, NULL, WNOHANG), 0, "faultd exited at start");
		usleep(1000);
	}
	fx.lm = open_or_skip(&o);
	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	p = map_uri(fx.lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, uri, 0);
	scan_all(p, model, npages, NULL, "a faultd client's export region");
	scattered_writes(p, model, npages, 32, test_seed() ^ 61);
	ret = lazymap_sync(fx.lm, p, size);
	cr_assert_eq(ret, 0, "lazymap_sync: %s", strerror(-ret));
	expect_export("after a faultd client's sync", path, model, size);
	st = stats(fx.lm);
	cr_assert_geq(st.bytes_read, size, "bytes_read %llu", (unsigned long long)st.bytes_read);
	cr_assert_eq(st.regions, 1);
	ret = lazymap_unmap(fx.lm, p, size);
	cr_assert_eq(ret, 0, "lazymap_unmap: %s", strerror(-ret));
	cr_assert_eq(stats(fx.lm).regions, 0);
}
#endif

/* ============================================================ TCP, another network namespace */

Test(nbd, netns_tcp_private_scan_reads_every_byte, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 16 * MiB, npages = size / ps;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm;
	uint8_t *model;
	struct server *s;
	static struct scan sc[2]; /* a hung scanner outlives the frame */
	char *p;

	nbdkit_or_skip();
	lm = lm_open(2, 0, 0, 0);
	model = export_file("data", size, 61, path, sizeof(path), 0);
	netns_setup_or_skip();
	s = server_new_tcp("ns", fx.netns, fx.a_ns, 10809);
	server_args(s, "file", path, NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	for (int i = 0; i < 2; i++) {
		sc[i] = (struct scan){ .base = p, .want = model, .npages = npages,
				       .first = i ? npages / 3 : 0, .n = npages };
		scan_start(&sc[i]);
	}
	for (int i = 0; i < 2; i++)
		scan_join(&sc[i], WAIT_S, "a scan over TCP");
	scan_expect_right(&sc[0], "the scan over TCP from the start");
	scan_expect_right(&sc[1], "the scan over TCP from a third in");
	quiesce(lm);
	cr_assert_eq(stats(lm).io_errors, 0);
}

/* The link to the namespace down for 500 ms mid-scan, within remote_timeout_ms: the scan
 * completes. */
Test(nbd, netns_link_down_briefly_mid_scan_the_scan_completes, FIXTURE, .timeout = 60)
{
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm;
	uint8_t *model;
	struct server *s;
	static struct scan sc; /* a hung scanner outlives the frame */
	char *p;

	nbdkit_or_skip();
	lm = lm_open(1, 128 * 1024, 5000, 0);
	model = export_file("data", SLOW_SIZE, 62, path, sizeof(path), 0);
	netns_setup_or_skip();
	s = server_new_tcp("ns", fx.netns, fx.a_ns, 10809);
	server_args(s, "--filter=delay", "file", path, "rdelay=10ms", NULL);
	server_start(s);
	server_uri(s, "", uri, sizeof(uri));
	p = map_uri(lm, SLOW_SIZE, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	scan_to_pause(&sc, p, model, false);
	netns_link("down");
	atomic_store(&sc.resume, 1);
	usleep(500 * 1000);
	netns_link("up");
	scan_join(&sc, WAIT_S, "the scan across the cut");
	scan_expect_right(&sc, "the scan across the cut");
	quiesce(lm);
	cr_assert_eq(stats(lm).remote_timeouts, 0);
}

/* ============================================================ bad URIs, refused exports, flags */

#define MAX_CASES 24

struct uri_case {
	char what[64];
	char uri[PATH_MAX / 2];
	bool null_uri;
	int prot, flags;
	int want;
};

static struct uri_case *add_case(struct uri_case *c, int *n, const char *what, const char *uri,
				 int want)
{
	cr_assert_lt(*n, MAX_CASES);
	c += (*n)++;
	memset(c, 0, sizeof(*c));
	snprintf(c->what, sizeof(c->what), "%s", what);
	snprintf(c->uri, sizeof(c->uri), "%s", uri ? uri : "");
	c->null_uri = !uri;
	c->prot = PROT_READ;
	c->flags = LAZYMAP_PRIVATE;
	c->want = want;
	return c;
}

/* Run every case; how many gave another result than documented (each reported). */
static int run_cases(struct lazymap *lm, const struct uri_case *c, int n, unsigned timeout_ms)
{
	int wrong = 0;

	for (int i = 0; i < n; i++) {
		void *p = NULL;
		double t0 = now_s(), took;
		int ret = lazymap_map_uri(lm, &p, 16 * pgsz(), c[i].prot, c[i].flags,
					  c[i].null_uri ? NULL : c[i].uri, 0);

		took = now_s() - t0;
		wrong += ret != -c[i].want;
		cr_expect_eq(ret, -c[i].want, "%s (%s): %d (%s), want -%d (%s)", c[i].what,
			     c[i].null_uri ? "NULL" : c[i].uri, ret, strerror(-ret), c[i].want,
			     strerror(c[i].want));
		cr_expect_leq(took, timeout_ms / 1000.0 + SLACK_S, "%s took %.2f s", c[i].what, took);
	}
	return wrong;
}

/*
 * Each bad URI or refusing server gives the error lazymap.h documents, maps
 * nothing and keeps nothing (no region, no descriptor: counted on a second
 * round, after libraries' one-time set-up in the first); the lazymap then
 * still maps and serves a good URI.
 */
Test(nbd, bad_uris_and_refused_exports_give_the_documented_errors, FIXTURE, .timeout = 120)
{
	const unsigned timeout_ms = 1000;
	size_t ps = pgsz();
	struct uri_case cases[MAX_CASES], *c;
	struct server *ro, *tls, *deny;
	char path[PATH_MAX], uri[PATH_MAX], arg[PATH_MAX + 16], sock[108], good[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, timeout_ms, 0);
	uint8_t *model;
	uint64_t regions;
	int n = 0, fds, wrong;
	FILE *f;
	char *p;

	/* a read-only server of a directory: export "data" only */
	snprintf(fx.subdir, sizeof(fx.subdir), "%s/exports", fx.dir);
	cr_assert_eq(mkdir(fx.subdir, 0700), 0);
	fx.model[0] = pattern_file(fx.subdir, "data", 1 * MiB, 71, 1 * MiB / ps, path, sizeof(path));
	model = fx.model[0];
	ro = server_new("ro");
	snprintf(arg, sizeof(arg), "dir=%s", fx.subdir);
	server_args(ro, "-r", "file", arg, NULL);
	server_start(ro);
	/* one that requires TLS */
	tls = server_new("tls");
	snprintf(path, sizeof(path), "%s/keys.psk", fx.dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f, "alice:%016llx%016llx\n", (unsigned long long)rng_next(&(uint64_t){ 3 }),
		(unsigned long long)rng_next(&(uint64_t){ 5 }));
	fclose(f);
	snprintf(arg, sizeof(arg), "--tls-psk=%s", path);
	server_args(tls, "--tls=require", arg, "memory", "1M", NULL);
	server_start(tls);
	/* one that hangs up on everybody */
	deny = server_new("deny");
	server_args(deny, "--filter=ip", "memory", "1M", "deny=all", NULL);
	server_start(deny);

	add_case(cases, &n, "NULL uri", NULL, EINVAL);
	add_case(cases, &n, "empty uri", "", EINVAL);
	add_case(cases, &n, "unparsable", "not a uri", EINVAL);
	add_case(cases, &n, "unparsable host", "nbd://[::1", EINVAL);
	add_case(cases, &n, "unparsable port", "nbd://127.0.0.1:abc/", EINVAL);
	add_case(cases, &n, "unknown scheme http", "http://x/", EINVAL);
	add_case(cases, &n, "unknown scheme file", "file:///etc/passwd", EINVAL);
	add_case(cases, &n, "nbd+unix without socket=", "nbd+unix:///", EINVAL);
	snprintf(uri, sizeof(uri), "nbd+unix:///data?socket=%s/nosuch.sock", fx.dir);
	add_case(cases, &n, "socket path missing", uri, ENOENT);
	server_uri(ro, "nosuch", uri, sizeof(uri));
	add_case(cases, &n, "export name refused", uri, ENOENT);
	snprintf(sock, sizeof(sock), "%s/left.sock", fx.dir);
	unix_socket_at(sock, false);
	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", sock);
	add_case(cases, &n, "UNIX socket nobody listens on", uri, ECONNREFUSED);
	snprintf(uri, sizeof(uri), "nbd://127.0.0.1:%d/", tcp_port_refusing());
	add_case(cases, &n, "TCP port nobody listens on", uri, ECONNREFUSED);
	add_case(cases, &n, "host name with no address", "nbd://nosuchhost.invalid/", EHOSTUNREACH);
	server_uri(tls, "", uri, sizeof(uri));
	add_case(cases, &n, "server requires TLS", uri, EOPNOTSUPP);
	server_uri(ro, "data", good, sizeof(good));
	snprintf(uri, sizeof(uri), "nbds+unix:///data?socket=%s", ro->sock);
	add_case(cases, &n, "TLS asked, server refuses it", uri, EOPNOTSUPP);
	server_uri(deny, "", uri, sizeof(uri));
	add_case(cases, &n, "server hangs up negotiating", uri, EPROTO);
	snprintf(sock, sizeof(sock), "%s/mute.sock", fx.dir);
	unix_socket_at(sock, true);
	snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", sock);
	add_case(cases, &n, "listener that never answers", uri, ETIMEDOUT);
	c = add_case(cases, &n, "shared writable, read-only export", good, EACCES);
	c->prot = PROT_READ | PROT_WRITE;
	c->flags = LAZYMAP_SHARED;

	regions = stats(lm).regions;
	wrong = run_cases(lm, cases, n, timeout_ms);
	fds = count_dir("/proc/self/fd");
	wrong += run_cases(lm, cases, n, timeout_ms);
	cr_assert_eq(wrong, 0, "%d of %d results were not the documented ones (listed above)", wrong,
		     2 * n);
	cr_assert_eq(count_dir("/proc/self/fd"), fds, "failed lazymap_map_uri calls kept descriptors");
	cr_assert_eq(stats(lm).regions, regions, "failed lazymap_map_uri calls left regions");

	/* the lazymap still serves: a good map of the same server, private and shared read-only */
	p = map_uri(lm, 1 * MiB, PROT_READ, LAZYMAP_PRIVATE, good, 0);
	scan_all(p, model, 1 * MiB / ps, NULL, "a good region after the failures");
	p = map_uri(lm, 1 * MiB, PROT_READ, LAZYMAP_SHARED, good, 0);
	expect_mem("a shared read-only region after the failures", p, model, 1 * MiB);
	cr_assert_eq(stats(lm).regions, regions + 2);
}

/* len, prot, flags and offset are checked as lazymap_map checks them, ANON and DIRECT refused. */
Test(nbd, flags_offset_len_and_prot_are_checked, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 1 * MiB;
	char path[PATH_MAX], uri[PATH_MAX];
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint8_t *model = export_file("data", size, 81, path, sizeof(path), 0);
	static const struct {
		const char *what;
		size_t len;        /* 0: 0; 1: a page; 2: SIZE_MAX & ~(ps - 1) */
		int prot, flags;
		uint64_t offset;   /* in bytes; UINT64_MAX: the highest page-aligned offset */
	} bad[] = {
		{ "LAZYMAP_ANON", 1, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, 0 },
		{ "LAZYMAP_SHARED | LAZYMAP_ANON", 1, PROT_READ, LAZYMAP_SHARED | LAZYMAP_ANON, 0 },
		{ "LAZYMAP_DIRECT", 1, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, 0 },
		{ "offset 1", 1, PROT_READ, LAZYMAP_PRIVATE, 1 },
		{ "offset 2048", 1, PROT_READ, LAZYMAP_PRIVATE, 2048 },
		{ "offset a page + 512", 1, PROT_READ, LAZYMAP_PRIVATE, 4096 + 512 },
		{ "len 0", 0, PROT_READ, LAZYMAP_PRIVATE, 0 },
		{ "len overflowing", 2, PROT_READ, LAZYMAP_PRIVATE, 0 },
		{ "prot PROT_EXEC", 1, PROT_READ | PROT_EXEC, LAZYMAP_PRIVATE, 0 },
		{ "flags 0", 1, PROT_READ, 0, 0 },
		{ "PRIVATE | SHARED", 1, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_SHARED, 0 },
		{ "HINT | FIXED", 1, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_HINT | LAZYMAP_FIXED, 0 },
		{ "offset 2^47", 1, PROT_READ, LAZYMAP_PRIVATE, 1ull << 47 },
		{ "offset at the top", 1, PROT_READ, LAZYMAP_PRIVATE, UINT64_MAX },
	};
	uint64_t regions;
	char *p;

	server_uri(file_server(path, NULL, NULL), "", uri, sizeof(uri));
	regions = stats(lm).regions;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = bad[i].len == 0 ? 0 : bad[i].len == 1 ? ps : SIZE_MAX & ~(ps - 1);
		uint64_t off = bad[i].offset == UINT64_MAX ? UINT64_MAX & ~(uint64_t)(ps - 1) :
			       bad[i].offset;
		void *q = NULL;
		int ret = lazymap_map_uri(lm, &q, len, bad[i].prot, bad[i].flags, uri, off);

		cr_expect_eq(ret, -EINVAL, "%s: %s, want -EINVAL", bad[i].what, strerror(-ret));
	}
	cr_assert_eq(stats(lm).regions, regions);
	p = map_uri(lm, size, PROT_READ, LAZYMAP_PRIVATE, uri, 0);
	scan_all(p, model, size / ps, NULL, "a good region after the refused flags");

	/* the option's range: a day at most */
	struct lazymap_opts o = { .remote_timeout_ms = 86400000u + 1 };
	struct lazymap *other = NULL;

	cr_assert_eq(lazymap_open(&other, &o), -EINVAL, "remote_timeout_ms past a day: want -EINVAL");
}

#else /* !TEST_NBD_LIBNBD */

/* ============================================================ built without libnbd */

Test(nbd, without_libnbd_map_uri_is_eprotonosupport, FIXTURE)
{
	static const char *const uris[] = { "nbd://127.0.0.1:10809/", "nbd+unix:///?socket=/nonexistent",
					    "nbds://example.invalid/x" };
	struct lazymap *lm = lm_open(1, 0, 0, 0);
	uint64_t regions = stats(lm).regions;

	for (size_t i = 0; i < sizeof(uris) / sizeof(uris[0]); i++) {
		void *p = NULL;
		int ret = lazymap_map_uri(lm, &p, pgsz(), PROT_READ, LAZYMAP_PRIVATE, uris[i], 0);

		cr_assert_eq(ret, -EPROTONOSUPPORT, "%s: %s, want -EPROTONOSUPPORT", uris[i],
			     strerror(-ret));
	}
	cr_assert_eq(stats(lm).regions, regions);
}

#endif
