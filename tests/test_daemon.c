// SPDX-License-Identifier: MIT
/*
 * faultd, the real binary, serving clients over its socket: the bytes
 * clients see through it, one cache shared by two clients, clients that die,
 * faultd dying under a client, SIGTERM with unwritten pages, credentials and
 * malformed messages.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lazymap.h"
static void teardown(void);
#define skip_cleanup() teardown()
#include "common.h"
#include "proto.h"
#include "fusefs.h"

static char dir[64], sock_path[128], data_path[128];
static pid_t faultd_pid = -1;

static uint64_t word_of(uint64_t off)
{
	return (off + 1) * 0x9E3779B97F4A7C15ULL;
}

static void make_file(const char *path, size_t size)
{
	static uint64_t buf[1 << 14];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	for (size_t off = 0; off < size; off += sizeof(buf)) {
		for (size_t i = 0; i < sizeof(buf) / 8; i++)
			buf[i] = word_of(off + i * 8);
		cr_assert_eq(pwrite(fd, buf, sizeof(buf), (off_t)off), (ssize_t)sizeof(buf));
	}
	close(fd);
}

static bool can_connect(const char *path)
{
	int s;

	if (lzm_proto_connect(path, &s))
		return false;
	close(s);
	return true;
}

/* A connection to faultd, as a client or faultctl makes one. */
static int dial(void)
{
	int s, ret = lzm_proto_connect(sock_path, &s);

	cr_assert_eq(ret, 0, "connect %s: %s", sock_path, strerror(-ret));
	return s;
}

/* faultd on a socket of our own, with config text (NULL: none). */
static void faultd_start(const char *config)
{
	char conf_path[160] = "";

	require_uffd(UFFD_FEATURE_POISON);
	if (config) {
		FILE *f;

		snprintf(conf_path, sizeof(conf_path), "%s/faultd.conf", dir);
		f = fopen(conf_path, "w");
		cr_assert_not_null(f);
		fputs(config, f);
		fclose(f);
	}
	faultd_pid = fork();
	cr_assert_geq(faultd_pid, 0);
	if (faultd_pid == 0) {
		/*
		 * An ASan build keeps freed memory in quarantine (256 MiB by
		 * default): faultd's RSS would grow with every client it lets
		 * go, where the tests read it to find what a client leaves
		 * behind. Other builds ignore the variable.
		 */
		const char *asan = getenv("ASAN_OPTIONS");
		char opts[512];

		snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=1", asan ? asan : "",
			 asan && *asan ? ":" : "");
		setenv("ASAN_OPTIONS", opts, 1);
		if (config)
			execl(FAULTD_BIN, "faultd", "--foreground", "--threads", "2", "--socket",
			      sock_path, "--config", conf_path, (char *)NULL);
		else
			execl(FAULTD_BIN, "faultd", "--foreground", "--threads", "2", "--socket",
			      sock_path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 5000 && !can_connect(sock_path); i++) {
		int st;

		cr_assert_eq(waitpid(faultd_pid, &st, WNOHANG), 0, "faultd exited at start");
		usleep(1000);
	}
	cr_assert(can_connect(sock_path), "faultd does not listen on %s", sock_path);
}

/* SIGTERM; its exit status. */
static int faultd_stop(void)
{
	int st = 0;

	if (faultd_pid <= 0)
		return 0;
	kill(faultd_pid, SIGTERM);
	waitpid(faultd_pid, &st, 0);
	faultd_pid = -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void setup(void)
{
	strcpy(dir, "/tmp/lazymap-faultd.XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(sock_path, sizeof(sock_path), "%s/faultd.sock", dir);
	snprintf(data_path, sizeof(data_path), "%s/data", dir);
}

static void teardown(void)
{
	char cmd[128];

	faultd_stop();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd)) {
	}
}

/* every test starts in a directory of its own, and faultd is stopped after */
#define DTEST(name) Test(daemon, name, .init = setup, .fini = teardown, .timeout = 120)

static struct lazymap *client_open(void)
{
	struct lazymap_opts o = { .daemon = sock_path };
	struct lazymap *lm = NULL;
	int ret = lazymap_open(&lm, &o);

	cr_assert_eq(ret, 0, "lazymap_open(daemon): %s", strerror(-ret));
	return lm;
}

/* A faultd of our own, the file of size bytes, and a client of that faultd. */
static struct lazymap *serve_file(size_t size)
{
	faultd_start(NULL);
	make_file(data_path, size);
	return client_open();
}

static void *map_file(struct lazymap *lm, size_t size, int prot, int flags, int oflags)
{
	void *p = NULL;
	int fd = open(data_path, oflags | O_CLOEXEC);
	int ret;

	cr_assert_geq(fd, 0);
	ret = lazymap_map(lm, &p, size, prot, flags, fd, 0);
	close(fd);
	cr_assert_eq(ret, 0, "lazymap_map: %s", strerror(-ret));
	return p;
}

/* Some fault was served (by faultd, or here once it went), then close. */
static void close_having_served(struct lazymap *lm, const char *if_not)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_gt(st.faults, 0, "%s", if_not);
	cr_assert_eq(lazymap_close(lm), 0);
}

struct scan {
	pthread_t t;
	const uint64_t *p;
	size_t first, n, bad;
};

static void *scan_main(void *arg)
{
	struct scan *s = arg;

	for (size_t i = s->first; i < s->first + s->n; i++)
		if (s->p[i] != word_of(i * 8))
			s->bad++;
	return NULL;
}

/* Wrong words seen by nthreads threads scanning size bytes at p. */
static size_t scan(const void *p, size_t size, unsigned nthreads)
{
	struct scan s[8];
	size_t per = size / 8 / nthreads, bad = 0;

	for (unsigned i = 0; i < nthreads; i++) {
		s[i] = (struct scan){ .p = p, .first = i * per,
				      .n = i + 1 == nthreads ? size / 8 - i * per : per };
		pthread_create(&s[i].t, NULL, scan_main, &s[i]);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		pthread_join(s[i].t, NULL);
		bad += s[i].bad;
	}
	return bad;
}

/* faultd's status, over the socket as faultctl asks for it. */
static void status(struct proto_msg *m)
{
	int s = dial();

	cr_assert_eq(lzm_proto_send(s, MSG_STATUS, 7, NULL, 0, -1, false), 0);
	cr_assert_eq(lzm_proto_recv(s, m, false), 0);
	cr_assert_eq(m->hdr.type, MSG_STATUS_REPLY);
	close(s);
}

DTEST(a_client_reads_a_file_through_faultd_every_byte_right)
{
	const size_t size = 16u << 20;
	struct lazymap *lm;
	void *p;

	lm = serve_file(size);
	p = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);
	cr_assert_eq(scan(p, size, 2), 0, "wrong bytes through faultd");
	close_having_served(lm, "faultd served no fault: who did?");
}

DTEST(anonymous_regions_read_zeros_and_keep_what_is_written)
{
	const size_t size = 8u << 20;
	struct lazymap *lm;
	unsigned char *p = NULL;
	size_t bad = 0;

	faultd_start(NULL);
	lm = client_open();
	/* private, then shared (shmem: a child of fork() shares its pages) */
	for (int kind = LAZYMAP_PRIVATE; kind <= LAZYMAP_SHARED; kind++) {
		cr_assert_eq(lazymap_map(lm, (void **)&p, size, PROT_READ | PROT_WRITE,
					 kind | LAZYMAP_ANON, -1, 0), 0);
		for (size_t i = 0; i < size; i += 4096)
			bad += p[i] != 0;
		for (size_t i = 0; i < size; i += 512)
			p[i] = (unsigned char)(i >> 9);
		for (size_t i = 0; i < size; i += 512)
			bad += p[i] != (unsigned char)(i >> 9);
		cr_assert_eq(bad, 0, "%s: %zu wrong bytes", kind == LAZYMAP_SHARED ? "shared" : "private",
			     bad);
	}
	close_having_served(lm, "faultd served no fault");
}

DTEST(the_second_client_finds_the_first_ones_pages_in_the_cache)
{
	const size_t size = 16u << 20;
	struct proto_msg m;
	int sync[2], go[2];
	char c;

	faultd_start(NULL);
	make_file(data_path, size);
	cr_assert_eq(pipe(sync), 0);
	cr_assert_eq(pipe(go), 0);
	pid_t pid = fork();

	if (pid == 0) {
		struct lazymap_opts o = { .daemon = sock_path };
		struct lazymap *lm;
		int fd = open(data_path, O_RDONLY);
		void *p = NULL;

		close(go[1]); /* the word to go is its end */
		if (lazymap_open(&lm, &o) || lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0))
			_exit(2);
		c = scan(p, size, 2) ? 'x' : 'k';
		if (write(sync[1], &c, 1) != 1 || read(go[0], &c, 1) < 0)
			_exit(3);
		_exit(lazymap_close(lm) ? 4 : 0);
	}
	cr_assert_eq(read(sync[0], &c, 1), 1);
	cr_assert_eq(c, 'k', "the first client saw wrong bytes");

	struct lazymap *lm = client_open();
	void *p = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);

	cr_assert_eq(scan(p, size, 2), 0, "the second client saw wrong bytes");
	status(&m);
	cr_assert_eq(m.u.status.nclients, 2);
	uint64_t read_first = 0, read_second = 0, p50 = 0, p99 = 0;

	for (unsigned i = 0; i < m.u.status.n; i++) {
		if (m.u.status_c[i].pid == pid)
			read_first = m.u.status_c[i].bytes_read, p50 = m.u.status_c[i].lat_p50_ns,
			p99 = m.u.status_c[i].lat_p99_ns;
		else if (m.u.status_c[i].pid == getpid())
			read_second = m.u.status_c[i].bytes_read;
	}
	cr_assert_geq(read_first, size, "the first client's faults read %llu bytes",
		      (unsigned long long)read_first);
	cr_assert_eq(read_second, 0, "the second client's faults read %llu bytes again",
		     (unsigned long long)read_second);
	cr_assert(p50 > 0 && p99 >= p50, "the first client's latency: p50 %llu ns, p99 %llu ns",
		  (unsigned long long)p50, (unsigned long long)p99);
	close(go[1]);
	int wst;

	cr_assert_eq(waitpid(pid, &wst, 0), pid);
	cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A shared writable map of the file with one word of each page changed. */
static uint64_t *map_and_write(struct lazymap *lm, size_t size)
{
	uint64_t *p = map_file(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, O_RDWR);

	for (size_t i = 0; i < size / 8; i += 512)
		p[i] = ~word_of(i * 8);
	return p;
}

/* The file has what map_and_write wrote. */
static void file_has_writes(size_t size, const char *when)
{
	int fd = open(data_path, O_RDONLY);
	uint64_t w;

	for (size_t i = 0; i < size / 8; i += 512) {
		cr_assert_eq(pread(fd, &w, 8, (off_t)(i * 8)), 8);
		cr_assert_eq(w, ~word_of(i * 8), "word %zu not in the file %s", i, when);
	}
	close(fd);
}

DTEST(shared_writes_reach_the_file_at_sync)
{
	const size_t size = 4u << 20;
	struct lazymap *lm;
	uint64_t *p;

	lm = serve_file(size);
	p = map_and_write(lm, size);
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	file_has_writes(size, "after lazymap_sync");
	cr_assert_eq(lazymap_close(lm), 0);
}

DTEST(faultd_killed_mid_scan_the_client_finishes_every_byte_right)
{
	const size_t size = 64u << 20;
	struct lazymap *lm;
	void *p;

	lm = serve_file(size);
	p = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);
	/* a part through faultd, then it dies with faults in its hands */
	cr_assert_eq(scan(p, size / 8, 2), 0);
	pid_t victim = faultd_pid;
	struct scan s[2];
	size_t per = size / 8 / 2;

	for (unsigned i = 0; i < 2; i++) {
		s[i] = (struct scan){ .p = p, .first = i * per, .n = per };
		pthread_create(&s[i].t, NULL, scan_main, &s[i]);
	}
	kill(victim, SIGKILL);
	waitpid(victim, NULL, 0);
	faultd_pid = -1;
	for (unsigned i = 0; i < 2; i++) {
		pthread_join(s[i].t, NULL);
		cr_assert_eq(s[i].bad, 0, "thread %u saw wrong bytes after faultd died", i);
	}
	cr_assert_eq(scan(p, size, 2), 0);
	close_having_served(lm, "no fault was served here after faultd died");
}

DTEST(sigterm_with_dirty_shared_pages_loses_nothing)
{
	const size_t size = 4u << 20;
	struct lazymap *lm;
	uint64_t *p, w;
	int fd;

	lm = serve_file(size);
	p = map_and_write(lm, size);
	cr_assert_eq(faultd_stop(), 0, "faultd did not stop cleanly on SIGTERM");
	file_has_writes(size, "after faultd's SIGTERM"); /* it wrote them as it let us go */
	/* they are clean here now: our next sync must not write them over
	 * what another process writes to the file meanwhile */
	const uint64_t theirs = 0x7e7e7e7e7e7e7e7e;

	fd = open(data_path, O_RDWR);
	for (size_t i = 0; i < size / 8; i += 512)
		cr_assert_eq(pwrite(fd, &theirs, 8, (off_t)(i * 8 + 16)), 8);
	/* and we go on in process: writes after it reach the file too */
	p[1] = 42;
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	cr_assert_eq(pread(fd, &w, 8, 8), 8);
	cr_assert_eq(w, 42);
	for (size_t i = 512; i < size / 8; i += 512) { /* page 0 is ours again */
		cr_assert_eq(pread(fd, &w, 8, (off_t)(i * 8 + 16)), 8);
		cr_assert_eq(w, theirs, "page %zu: our sync wrote our copy over another's write",
			     i / 512);
	}
	close(fd);
	cr_assert_eq(lazymap_close(lm), 0);
}

static long rss_kib_of(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static int fd_count(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	return count_dir(path);
}

DTEST(clients_killed_at_random_moments_are_let_go)
{
	const size_t size = 4u << 20;
	struct proto_msg m;
	uint64_t seed = 12345;
	int base;

	faultd_start(NULL);
	make_file(data_path, size);
	/* one client first: what stays (the file's cache) is counted in the base */
	struct lazymap *lm = client_open();
	void *p = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);

	cr_assert_eq(scan(p, size, 1), 0);
	cr_assert_eq(lazymap_close(lm), 0);
	usleep(20000);
	base = fd_count(faultd_pid);
	long rss0 = rss_kib_of(faultd_pid);

	for (int i = 0; i < 1000; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			struct lazymap_opts o = { .daemon = sock_path };
			int fd = open(data_path, O_RDONLY);
			unsigned char *q = NULL;

			if (lazymap_open(&lm, &o) ||
			    lazymap_map(lm, (void **)&q, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0))
				_exit(2);
			for (size_t off = 0;; off = (off + 4096 * 7) % size)
				if (q[off] == 0xff && q[off + 1] == 0xfe)
					_exit(0);
		}
		usleep((useconds_t)(rng_next(&seed) % 2000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	for (int i = 0; i < 2000; i++) {
		status(&m);
		if (m.u.status.nclients == 0 && fd_count(faultd_pid) <= base)
			break;
		usleep(1000);
	}
	cr_assert_eq(m.u.status.nclients, 0, "faultd still holds %u dead clients",
		     m.u.status.nclients);
	cr_assert_leq(fd_count(faultd_pid), base, "faultd holds %d descriptors, %d before",
		      fd_count(faultd_pid), base);
	/* what each client cost is given back (the file's cache is shared) */
	cr_assert_leq(rss_kib_of(faultd_pid), rss0 + 16384, "faultd grew from %ld to %ld KiB",
		      rss0, rss_kib_of(faultd_pid));
}

DTEST(malformed_messages_get_an_error_and_a_hangup_and_others_go_on)
{
	struct proto_msg m;
	char junk[64];
	int s;

	faultd_start(NULL);
	make_file(data_path, 1u << 20);
	s = dial();
	memset(junk, 0xa5, sizeof(junk));
	cr_assert_eq(send(s, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert_eq(m.hdr.type, MSG_ERROR);
	cr_assert_eq(m.u.error.err, -EPROTO);
	cr_assert_eq(lzm_proto_recv(s, &m, false), -ECONNRESET, "faultd kept talking");
	close(s);
	/* a request before hello */
	struct proto_range r = { .addr = 1u << 20, .len = 4096 };

	s = dial();
	cr_assert_eq(lzm_proto_send(s, MSG_SYNC, 1, &r, sizeof(r), -1, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert_eq(m.hdr.type, MSG_ERROR);
	close(s);
	/* hello with a descriptor that is no userfaultfd */
	struct proto_hello h = { 0 };
	int fd = open(data_path, O_RDONLY);

	s = dial();
	cr_assert_eq(lzm_proto_send(s, MSG_HELLO, 1, &h, sizeof(h), fd, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert_eq(m.hdr.type, MSG_ERROR);
	cr_assert_eq(m.u.error.err, -EBADF);
	close(s);
	close(fd);
	/* and a real client is served all along */
	struct lazymap *lm = client_open();
	void *p = map_file(lm, 1u << 20, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);

	cr_assert_eq(scan(p, 1u << 20, 1), 0);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* The VmFlags of the kernel's VMA holding addr, from /proc/self/smaps. */
static void vm_flags(const void *addr, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;

	out[0] = 0;
	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx ", &s, &e) == 2)
			in = s <= (uintptr_t)addr && (uintptr_t)addr < e;
		else if (in && !strncmp(line, "VmFlags:", 8))
			snprintf(out, len, "%s", line + 8);
	}
	fclose(f);
}

/*
 * faultd never unregisters a client's range: the client does, once it has
 * made it inaccessible. Unregistered while still mapped, a touch of a page
 * the cache's memfd lacks would fill it with zeros, in the cache, for every
 * client of the file (a review saw a page read zeros after faultd died
 * mid-unmap, and a sync write them to the file). A client of our own asks
 * faultd to unmap a range, and finds it still registered.
 */
DTEST(faultd_leaves_a_clients_range_registered_for_the_client_to_unregister)
{
	const size_t size = 64 * 4096;
	struct uffdio_api api = { .api = UFFD_API };
	struct proto_hello h = { 0 };
	struct proto_open o = { 0 };
	struct proto_msg m;
	char flags[512];
	int uffd, s, fd, memfd;

	faultd_start(NULL);
	make_file(data_path, size);
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	cr_assert_geq(uffd, 0);
	cr_assert_eq(ioctl(uffd, UFFDIO_API, &api), 0);
	h.features = api.features;
	s = dial();
	cr_assert_eq(lzm_proto_send(s, MSG_HELLO, 1, &h, sizeof(h), uffd, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert_eq(m.hdr.type, MSG_HELLO_REPLY);
	fd = open(data_path, O_RDONLY);
	cr_assert_eq(lzm_proto_send(s, MSG_OPEN, 2, &o, sizeof(o), fd, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert_eq(m.hdr.type, MSG_OPEN_REPLY);
	memfd = m.fd;

	char *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, memfd, 0);
	struct uffdio_register reg = { .range = { (uintptr_t)p, size },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };

	cr_assert_neq(p, MAP_FAILED);
	cr_assert_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	struct proto_map map = { .addr = (uintptr_t)p, .len = size,
				 .cache_id = m.u.open_reply.cache_id, .prot = PROT_READ,
				 .flags = LAZYMAP_PRIVATE };
	struct proto_range r = { .addr = (uintptr_t)p, .len = size };

	cr_assert_eq(lzm_proto_send(s, MSG_MAP, 3, &map, sizeof(map), -1, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert(m.hdr.type == MSG_REPLY && m.u.reply.err == 0, "map: type %u err %d",
		  m.hdr.type, m.u.reply.err);
	cr_assert_eq(lzm_proto_send(s, MSG_UNMAP, 4, &r, sizeof(r), -1, false), 0);
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0);
	cr_assert(m.hdr.type == MSG_REPLY && m.u.reply.err == 0, "unmap: type %u err %d",
		  m.hdr.type, m.u.reply.err);
	vm_flags(p, flags, sizeof(flags));
	cr_assert_not_null(strstr(flags, " um"), "faultd unregistered our range: VmFlags%s",
			   flags);
	/* ours to let go, as the library does: inaccessible, unregistered, unmapped */
	cr_assert_eq(mprotect(p, size, PROT_NONE), 0);
	cr_assert_eq(ioctl(uffd, UFFDIO_UNREGISTER, &reg.range), 0);
	cr_assert_eq(munmap(p, size), 0);
	close(s);
	close(memfd);
	close(fd);
	close(uffd);
}

/*
 * A map at a full descriptor table fails with -EMFILE, as in process, and
 * changes nothing: faultd's reply carried the cache's memfd, which the full
 * table could not take. That used to read as faultd gone: the client took
 * its faults back, could not start its handlers (no descriptor either), and
 * every call after was -EIO for good (hostile review).
 */
DTEST(a_map_at_a_full_descriptor_table_fails_and_the_client_goes_on)
{
	const size_t size = 1u << 20;
	struct lazymap *lm = serve_file(size);
	struct lazymap_stats st;
	int fd = open(data_path, O_RDONLY | O_CLOEXEC);
	struct fd_fill full;
	void *p = NULL;

	cr_assert_geq(fd, 0);
	fd_table_fill(&full, fd);
	int ret = lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0);

	fd_table_free(&full);
	cr_assert_eq(ret, -EMFILE, "lazymap_map at a full table: %s", strerror(-ret));
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.broken, 0, "the lazymap broke: %s", strerror((int)st.broken));
	cr_assert_eq(st.regions, 0);
	/* and faultd serves the next map */
	ret = lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0);
	cr_assert_eq(ret, 0, "lazymap_map once descriptors are free: %s", strerror(-ret));
	cr_assert_eq(scan(p, size, 2), 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_gt(st.faults, 0, "faultd served no fault");
	cr_assert_eq(lazymap_unmap(lm, p, size), 0);
	close(fd);
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * The program's own munmap is in the tree by the next call, as in process:
 * faultd reads the event, and the client's copy of the tree learns it from
 * faultd. A map into the hole (LAZYMAP_FIXED) used to fail with -EEXIST in
 * 288 of 300 tries (hostile review): the call came before faultd's word.
 */
DTEST(the_programs_own_munmap_is_in_the_tree_by_the_next_call)
{
	const size_t ps = 4096;
	struct lazymap *lm;
	struct lazymap_stats st;

	faultd_start(NULL);
	lm = client_open();
	for (int i = 0; i < 100; i++) {
		char *b = NULL;
		void *q;

		cr_assert_eq(lazymap_map(lm, (void **)&b, 8 * ps, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
		b[0] = 1;
		cr_assert_eq(munmap(b + 3 * ps, ps), 0);
		cr_assert_eq(lazymap_stats(lm, &st), 0);
		cr_assert_eq(st.regions, 2, "try %d: %lu regions after our munmap split one", i,
			     (unsigned long)st.regions);
		cr_assert_eq(lazymap_unmap(lm, b + 3 * ps, ps), -EINVAL, "try %d", i);
		q = b + 3 * ps;
		cr_assert_eq(lazymap_map(lm, &q, ps, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON | LAZYMAP_FIXED, -1, 0), 0,
			     "try %d: a map into the hole our munmap made", i);
		cr_assert_eq(((char *)q)[0], 0);
		cr_assert_eq(b[0], 1);
		cr_assert_eq(lazymap_unmap(lm, b, 8 * ps), 0);
	}
	cr_assert_eq(lazymap_close(lm), 0);
}

DTEST(a_user_not_on_the_allow_list_is_refused)
{
	if (geteuid() != 0)
		skip_test("needs root, to run a client as another user (setresuid)");
	faultd_start("[socket]\nmode = 0666\n[access]\nallow_users = root\n");
	cr_assert_eq(chmod(dir, 0755), 0);
	pid_t pid = fork();

	if (pid == 0) {
		struct lazymap_opts o = { .daemon = sock_path };
		struct proto_msg m;
		struct lazymap *lm;
		int s, ret;

		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(10);
		/* faultd refuses at the door, before any userfaultfd is asked for */
		if (lzm_proto_connect(sock_path, &s))
			_exit(11);
		if (lzm_proto_recv(s, &m, false) || m.hdr.type != MSG_ERROR || m.u.error.err != -EACCES)
			_exit(12);
		/* and lazymap_open says so, where this user may have a userfaultfd */
		ret = lazymap_open(&lm, &o);
		_exit(ret == -EACCES || ret == -EPERM ? 0 : 13);
	}
	int wst;

	cr_assert_eq(waitpid(pid, &wst, 0), pid);
	cr_assert(WIFEXITED(wst));
	cr_assert_eq(WEXITSTATUS(wst), 0, "user nobody was not refused (exit %d)", WEXITSTATUS(wst));
	/* and root, on the list, is served */
	struct lazymap *lm = client_open();

	cr_assert_eq(lazymap_close(lm), 0);
}

DTEST(eight_clients_at_once_each_see_every_byte)
{
	const size_t size = 8u << 20;
	pid_t pids[8];

	faultd_start(NULL);
	make_file(data_path, size);
	for (int i = 0; i < 8; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			struct lazymap_opts o = { .daemon = sock_path };
			struct lazymap *lm;
			int fd = open(data_path, O_RDONLY);
			void *p = NULL;

			if (lazymap_open(&lm, &o) ||
			    lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0))
				_exit(2);
			_exit(scan(p, size, 2) ? 1 : lazymap_close(lm) ? 3 : 0);
		}
	}
	for (int i = 0; i < 8; i++) {
		int wst;

		cr_assert_eq(waitpid(pids[i], &wst, 0), pids[i]);
		cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "client %d: exit %d", i,
			  WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
	}
}

DTEST(a_socket_nobody_serves_is_a_clear_error)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lazymap_opts o = { .daemon = sock_path };
	char longpath[200];
	struct lazymap *lm = NULL;
	int s;

	require_uffd(UFFD_FEATURE_POISON);
	cr_assert_eq(lazymap_open(&lm, &o), -ENOENT);
	/* bound, nobody listening: what a faultd that died leaves */
	strcpy(sa.sun_path, sock_path);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	cr_assert_eq(lazymap_open(&lm, &o), -ECONNREFUSED);
	memset(longpath, 'x', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	o.daemon = longpath;
	cr_assert_eq(lazymap_open(&lm, &o), -ENAMETOOLONG);
	cr_assert_null(lm);
}

/* A fill callback runs in the client: its regions are served in process,
 * beside faultd's, and every call on their ranges goes to them. */
DTEST(fill_regions_are_served_in_process_beside_faultds)
{
	const size_t size = 1u << 20;
	struct lazymap_stats st;
	struct lazymap *lm;
	unsigned char *f = NULL;
	void *anon = NULL;

	faultd_start(NULL);
	lm = client_open();
	cr_assert_eq(lazymap_map(lm, &anon, size, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&f, size, PROT_READ | PROT_WRITE, fill_5a, NULL), 0);
	for (size_t i = 0; i < size; i += 4096)
		cr_assert_eq(f[i], 0x5a, "byte %zu of the fill region", i);
	cr_assert_eq(((unsigned char *)anon)[4096], 0);
	cr_assert_eq(lazymap_protect(lm, f, 4096, PROT_READ), 0);
	cr_assert_eq(lazymap_advise(lm, f, size, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_sync(lm, f, size), 0);
	cr_assert_eq(lazymap_unmap(lm, f + size / 2, size / 2), 0);
	/* a range across both kinds is no one region's */
	cr_assert_eq(lazymap_unmap(lm, f, 2 * size), -EINVAL);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_gt(st.fill_calls, 0);
	cr_assert_eq(st.regions, 3, "regions: %llu", (unsigned long long)st.regions);
	/* lazymap_dump lists both kinds, by address: anon, then f split by the protect */
	struct maps_entry t[8];
	uintptr_t fa = (uintptr_t)f, aa = (uintptr_t)anon;

	cr_assert_eq(tree_read(lm, t, 8), 3);
	for (int i = 1; i < 3; i++)
		cr_assert_lt(t[i - 1].start, t[i].start, "line %d is out of order", i);
	int ia = aa < fa ? 0 : 2, i0 = aa < fa ? 1 : 0;

	cr_assert(t[ia].start == aa && t[ia].end == aa + size, "anon: %lx-%lx", t[ia].start, t[ia].end);
	cr_assert(t[i0].start == fa && t[i0].end == fa + 4096 && !strcmp(t[i0].perms, "r--p"),
		  "fill, first page: %lx-%lx %s", t[i0].start, t[i0].end, t[i0].perms);
	cr_assert(t[i0 + 1].start == fa + 4096 && t[i0 + 1].end == fa + size / 2 &&
			  !strcmp(t[i0 + 1].perms, "rw-p"),
		  "fill, the rest: %lx-%lx %s", t[i0 + 1].start, t[i0 + 1].end, t[i0 + 1].perms);
	/* faultd goes: both kinds go on */
	kill(faultd_pid, SIGKILL);
	waitpid(faultd_pid, NULL, 0);
	faultd_pid = -1;
	cr_assert_eq(((unsigned char *)anon)[8192], 0);
	cr_assert_eq(f[8192], 0x5a);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* The client's copy of its tree against the kernel's, over [lo, hi). */
static void tree_is_the_kernels(struct lazymap *lm, uintptr_t lo, uintptr_t hi, int *nvmas)
{
	struct maps_entry k[64], t[64];
	int nk = maps_coalesce(k, maps_read(lo, hi, k, 64));
	int nt = tree_read(lm, t, 64);

	cr_assert_geq(nt, 0);
	*nvmas = nt;
	nt = maps_coalesce(t, nt);
	cr_assert_eq(nt, nk, "the client's tree has %d ranges, the kernel %d", nt, nk);
	for (int i = 0; i < nk; i++)
		cr_assert(t[i].start == k[i].start && t[i].end == k[i].end,
			  "range %d: tree %lx-%lx, kernel %lx-%lx", i, t[i].start, t[i].end, k[i].start,
			  k[i].end);
}

DTEST(the_programs_own_munmap_madvise_and_lazymap_unmap_reach_both_trees)
{
	const size_t ps = 4096, n = 64;
	struct proto_msg m;
	struct lazymap *lm;
	char *w = test_window(4 * n * ps), *a = w, *b = w + n * ps, *c = w + 2 * n * ps;
	int nvmas;

	faultd_start(NULL);
	make_file(data_path, n * ps);
	lm = client_open();
	cr_assert_eq(munmap(w, 4 * n * ps), 0); /* a place of our own: ours to fill */
	void *pa = a, *pb = b, *pc = c;
	int fd = open(data_path, O_RDONLY);

	cr_assert_eq(lazymap_map(lm, &pa, n * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON | LAZYMAP_FIXED, -1, 0), 0);
	cr_assert_eq(lazymap_map(lm, &pb, n * ps, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_FIXED, fd, 0), 0);
	cr_assert_eq(lazymap_map(lm, &pc, n * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON | LAZYMAP_FIXED, -1, 0), 0);
	close(fd);
	memset(a, 7, n * ps);
	memset(c, 9, n * ps);
	cr_assert_eq(scan(b, n * ps, 1), 0);

	cr_assert_eq(munmap(a + 8 * ps, 8 * ps), 0);        /* the program's own: an event */
	cr_assert_eq(madvise(c, 4 * ps, MADV_DONTNEED), 0);  /* dropped: zeros, from faultd */
	cr_assert_eq(lazymap_unmap(lm, c + 32 * ps, 8 * ps), 0);
	cr_assert_eq(lazymap_protect(lm, c + 48 * ps, 4 * ps, PROT_READ), 0);
	cr_assert_eq(c[0], 0);
	cr_assert_eq(c[4 * ps], 9);
	tree_is_the_kernels(lm, (uintptr_t)w, (uintptr_t)w + 4 * n * ps, &nvmas);
	status(&m);
	cr_assert_eq(m.u.status.n, 1);
	cr_assert_eq(m.u.status_c[0].regions, (uint32_t)nvmas,
		     "faultd's tree has %u VMAs, the client's %d", m.u.status_c[0].regions, nvmas);

	/* faultd goes: the client's tree is what it serves from now on */
	kill(faultd_pid, SIGKILL);
	waitpid(faultd_pid, NULL, 0);
	faultd_pid = -1;
	cr_assert_eq(munmap(c + 60 * ps, 4 * ps), 0);
	cr_assert_eq(madvise(a, 8 * ps, MADV_DONTNEED), 0);
	cr_assert_eq(a[0], 0);
	cr_assert_eq(a[16 * ps], 7);
	cr_assert_eq(c[8 * ps], 9);
	tree_is_the_kernels(lm, (uintptr_t)w, (uintptr_t)w + 4 * n * ps, &nvmas);
	cr_assert_eq(lazymap_close(lm), 0);
}

DTEST(a_client_past_the_limit_is_told_so_and_the_others_go_on)
{
	struct lazymap_opts o = { .daemon = sock_path };
	struct lazymap *lm, *second = NULL;

	faultd_start("[limits]\nclients = 1\nregions = 2\n");
	make_file(data_path, 1u << 20);
	lm = client_open();
	cr_assert_eq(lazymap_open(&second, &o), -EUSERS);
	cr_assert_null(second);
	/* a third region is past the limit: refused, and nothing is left mapped */
	void *p[3] = { 0 };

	cr_assert_eq(lazymap_map(lm, &p[0], 1u << 20, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	p[1] = map_file(lm, 1u << 20, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);
	cr_assert_eq(lazymap_map(lm, &p[2], 1u << 20, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0),
		     -ENOMEM);
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.regions, 2);
	cr_assert_eq(scan(p[1], 1u << 20, 1), 0);
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * One client's file stops answering (its FUSE server is stopped: every read
 * waits for ever): that client's faults wait, and another client's faults,
 * on another file, are served all the same.
 */
DTEST(a_client_stuck_on_a_dead_file_does_not_hold_up_another)
{
	const size_t size = 16u << 20;
	struct fusefs fs;
	int err, sync[2], go[2];
	char c;

	faultd_start(NULL);
	make_file(data_path, size);
	err = fusefs_start(&fs, 64 * 4096, "");
	if (err < 0)
		skip_test("fusefs: %s", fs.why);
	cr_assert_eq(pipe(sync), 0);
	cr_assert_eq(pipe(go), 0);
	pid_t slow = fork();

	if (slow == 0) {
		struct lazymap_opts o = { .daemon = sock_path };
		struct lazymap *lm;
		int fd = open(fs.path, O_RDONLY);
		volatile char *p = NULL;

		if (fd < 0 || lazymap_open(&lm, &o) ||
		    lazymap_map(lm, (void **)&p, 64 * 4096, PROT_READ, LAZYMAP_PRIVATE, fd, 0))
			_exit(2);
		c = 's';
		if (write(sync[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(3);
		c = p[4096]; /* waits for a read that does not come */
		_exit(0);
	}
	/* mapped: now its file stops answering, and it touches a page */
	cr_assert_eq(read(sync[0], &c, 1), 1);
	cr_assert_eq(kill(fs.pid, SIGSTOP), 0);
	cr_assert_eq(write(go[1], &c, 1), 1);
	usleep(100000); /* its fault is in faultd's hands by now */

	struct lazymap *lm = client_open();
	void *p = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);

	cr_assert_eq(scan(p, size, 2), 0, "the other client saw wrong bytes");
	cr_assert_eq(waitpid(slow, NULL, WNOHANG), 0, "the stuck client was not stuck");
	cr_assert_eq(lazymap_close(lm), 0);
	kill(slow, SIGKILL);
	waitpid(slow, NULL, 0);
	kill(fs.pid, SIGCONT); /* faultd's stop waits for the read in flight */
	fusefs_stop(&fs);
}

/*
 * A page faultd cannot read is SIGBUS at its address for the client, the
 * pages around it read right, and the client's lazymap_stats count it in
 * io_errors (faultd's count for the client: it stayed 0, hostile review).
 */
DTEST(a_page_faultd_cannot_read_is_sigbus_and_counted_for_the_client)
{
	const size_t ps = 4096, npages = 64;
	struct lazymap_stats st;
	struct fusefs fs;
	struct lazymap *lm;
	unsigned char *p = NULL;
	int fd, err;

	faultd_start(NULL);
	err = fusefs_start(&fs, npages * ps, "10");
	if (err < 0)
		skip_test("fusefs: %s", fs.why);
	touch_install();
	lm = client_open();
	fd = open(fs.path, O_RDONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(lazymap_map(lm, (void **)&p, npages * ps, PROT_READ, LAZYMAP_PRIVATE, fd, 0), 0);
	close(fd);
	for (size_t pg = 0; pg < npages; pg++) {
		char v = 0;
		struct touch_fault f = touch((char *)p + pg * ps + 7, -1, &v);

		if (pg == 10) {
			cr_assert_eq(f.signo, SIGBUS, "bad page: signal %d", f.signo);
			cr_assert_eq(f.addr, (void *)(p + pg * ps + 7));
		} else {
			cr_assert_eq(f.signo, 0, "good page %zu: signal %d", pg, f.signo);
			cr_assert_eq((uint8_t)v, fusefs_byte(pg * ps + 7), "good page %zu", pg);
		}
	}
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.io_errors, 1, "io_errors %lu", (unsigned long)st.io_errors);
	cr_assert_gt(st.bytes_read, 0);
	cr_assert_eq(lazymap_close(lm), 0);
	fusefs_stop(&fs);
}

DTEST(a_file_mapped_again_and_again_is_one_of_the_clients_files)
{
	struct lazymap *lm;

	faultd_start("[limits]\ndescriptors = 2\n");
	make_file(data_path, 1u << 20);
	lm = client_open();
	for (int i = 0; i < 20; i++) {
		void *p = map_file(lm, 1u << 20, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);

		cr_assert_eq(scan(p, 1u << 20, 1), 0);
		cr_assert_eq(lazymap_unmap(lm, p, 1u << 20), 0);
	}
	/* two other files fit no more: the limit is on files */
	char other[160];
	void *p = NULL;
	int fd;

	for (int i = 0; i < 2; i++) {
		snprintf(other, sizeof(other), "%s/other%d", dir, i);
		fd = open(other, O_RDWR | O_CREAT, 0600);
		cr_assert_eq(ftruncate(fd, 1u << 20), 0);
		cr_assert_eq(lazymap_map(lm, &p, 1u << 20, PROT_READ, LAZYMAP_PRIVATE, fd, 0),
			     i == 0 ? 0 : -EMFILE);
		close(fd);
	}
	cr_assert_eq(lazymap_close(lm), 0);
}

/* After faultd is gone: a region mapped again reads right (no endless
 * fault on a page faultd's read-only cache holds), and a shared writable
 * one made then writes to the file (it does not land in memory nobody
 * writes back). */
DTEST(regions_mapped_after_faultd_died_read_and_write_the_file)
{
	const size_t size = 1u << 20;
	struct lazymap *lm;
	uint64_t *ro, *again, *rw, w;
	int fd;

	lm = serve_file(size);
	ro = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);
	cr_assert_eq(ro[0], word_of(0));
	kill(faultd_pid, SIGKILL);
	waitpid(faultd_pid, NULL, 0);
	faultd_pid = -1;
	again = map_file(lm, size, PROT_READ, LAZYMAP_PRIVATE, O_RDONLY);
	cr_assert_eq(scan(again, size, 2), 0);
	rw = map_file(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, O_RDWR);
	rw[1024] = 42;
	cr_assert_eq(lazymap_sync(lm, rw, size), 0);
	fd = open(data_path, O_RDONLY);
	cr_assert_eq(pread(fd, &w, 8, 1024 * 8), 8);
	close(fd);
	cr_assert_eq(w, 42, "a write after faultd died did not reach the file");
	/* the first region, untouched there: the file as it is now */
	cr_assert_eq(ro[1024], 42);
	cr_assert_eq(ro[512 * 100], word_of(512 * 100 * 8));
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A client that took its faults back writes back what it wrote, and only
 * that: a page another process wrote to the file meanwhile stays theirs. */
DTEST(a_sync_after_faultd_died_writes_only_our_own_pages)
{
	const size_t size = 1u << 20;
	struct lazymap *lm;
	uint64_t *p, w, theirs = 0x7e7e7e7e;
	int fd;

	lm = serve_file(size);
	p = map_file(lm, size, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, O_RDWR);
	p[0] = 42;                          /* ours, not synced */
	cr_assert_eq(p[512], word_of(512 * 8)); /* page 1: read only */
	kill(faultd_pid, SIGKILL);
	waitpid(faultd_pid, NULL, 0);
	faultd_pid = -1;
	fd = open(data_path, O_RDWR);
	cr_assert_eq(pwrite(fd, &theirs, 8, 4096), 8); /* another process's write */
	cr_assert_eq(lazymap_sync(lm, p, size), 0);
	cr_assert_eq(pread(fd, &w, 8, 0), 8);
	cr_assert_eq(w, 42, "our write was lost");
	cr_assert_eq(pread(fd, &w, 8, 4096), 8);
	cr_assert_eq(w, theirs, "our sync wrote back a page we never wrote, over another's write");
	close(fd);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A socket whose server never answers (a stopped faultd, or not faultd):
 * lazymap_open says so in bounded time; and faultd drops a connection
 * that asks nothing, so that idle ones cannot keep clients out. */
DTEST(a_server_that_never_answers_and_a_client_that_never_asks)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lazymap_opts o = { .daemon = sock_path };
	struct lazymap *lm = NULL;
	struct proto_msg m;
	int l, s;

	require_uffd(UFFD_FEATURE_POISON);
	strcpy(sa.sun_path, sock_path);
	l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(l, 4), 0);
	double t0 = now_s();

	cr_assert_eq(lazymap_open(&lm, &o), -ETIMEDOUT);
	cr_assert_lt(now_s() - t0, 30, "lazymap_open waited %.0f s", now_s() - t0);
	close(l);
	unlink(sock_path);

	faultd_start(NULL);
	s = dial();
	cr_assert_eq(lzm_proto_recv(s, &m, false), 0); /* after a while */
	cr_assert_eq(m.hdr.type, MSG_ERROR);
	cr_assert_eq(m.u.error.err, -ETIMEDOUT);
	close(s);
}
