// SPDX-License-Identifier: MIT
/*
 * lazymap-shared-demo: two processes page one file through faultd. Each
 * client maps the file with opts.daemon set, scans it from several threads
 * and checks every byte; the first one's faults read the file into faultd's
 * cache, the second one's find it there. Both stay connected while a
 * status command (faultctl) shows what each cost, then exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

static uint64_t word_of(uint64_t offset)
{
	return (offset + 1) * 0x9E3779B97F4A7C15ULL;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The file, made once: every 8-byte word a function of its offset. */
static int make_file(const char *path, size_t size)
{
	static uint64_t buf[1 << 16];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < size; off += sizeof(buf)) {
		for (size_t i = 0; i < sizeof(buf) / 8; i++)
			buf[i] = word_of(off + i * 8);
		if (pwrite(fd, buf, sizeof(buf), (off_t)off) != (ssize_t)sizeof(buf)) {
			close(fd);
			return -EIO;
		}
	}
	fsync(fd);
	close(fd);
	return 0;
}

struct scan {
	pthread_t thread;
	const uint64_t *base;
	size_t first, n; /* words */
	size_t bad;
};

static void *scan_main(void *arg)
{
	struct scan *s = arg;

	for (size_t i = s->first; i < s->first + s->n; i++)
		if (s->base[i] != word_of(i * 8))
			s->bad++;
	return NULL;
}

/* One client process: map, scan, report on out, wait for the word to go. */
static int client(int id, const char *sock, const char *path, size_t size, unsigned nthreads,
		  int out, int go)
{
	struct lazymap_opts o = { .daemon = sock, .handler_threads = 1 };
	struct scan sc[64];
	struct lazymap_stats st;
	struct lazymap *lm;
	void *p;
	size_t bad = 0;
	char line[256], c;
	int fd, ret;

	ret = lazymap_open(&lm, &o);
	if (ret) {
		fprintf(stderr, "client %d: lazymap_open(daemon=%s): %s\n", id, sock, strerror(-ret));
		return 1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ret = fd < 0 ? -errno : lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0);
	if (fd >= 0)
		close(fd);
	if (ret) {
		fprintf(stderr, "client %d: lazymap_map(%s): %s\n", id, path, strerror(-ret));
		return 1;
	}
	double t0 = now_s();

	for (unsigned i = 0; i < nthreads; i++) {
		size_t per = size / 8 / nthreads;

		sc[i] = (struct scan){ .base = p, .first = i * per,
				       .n = i + 1 == nthreads ? size / 8 - i * per : per };
		pthread_create(&sc[i].thread, NULL, scan_main, &sc[i]);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		pthread_join(sc[i].thread, NULL);
		bad += sc[i].bad;
	}
	double t = now_s() - t0;

	lazymap_stats(lm, &st);
	snprintf(line, sizeof(line),
		 "client %d (pid %d): scanned %zu MiB with %u threads in %.1f ms (%.2f GB/s): "
		 "%s; faults served by faultd: %llu\n",
		 id, (int)getpid(), size >> 20, nthreads, t * 1e3, size / t / 1e9,
		 bad ? "WRONG BYTES" : "every byte right", (unsigned long long)st.faults);
	if (write(out, line, strlen(line)) < 0)
		return 1;
	if (read(go, &c, 1) < 0) /* stay connected until the status was shown */
		return 1;
	lazymap_close(lm);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "file", required_argument, NULL, 'f' },
		{ "size-mib", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "status", required_argument, NULL, 'S' },
		{ 0 },
	};
	const char *sock = NULL, *path = NULL, *status_cmd = NULL;
	size_t size = 64u << 20;
	unsigned nthreads = 4;
	int c, out[2], go[2], failed = 0;
	pid_t pids[2] = { -1, -1 };

	while ((c = getopt_long(argc, argv, "s:f:m:t:S:", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock = optarg; break;
		case 'f': path = optarg; break;
		case 'm': size = (size_t)strtoul(optarg, NULL, 10) << 20; break;
		case 't': nthreads = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'S': status_cmd = optarg; break;
		default:
			fprintf(stderr, "usage: lazymap-shared-demo --socket PATH --file PATH "
					"[--size-mib N] [--threads N] [--status CMD]\n");
			return 2;
		}
	}
	if (!sock || !path || !size || nthreads < 1 || nthreads > 64) {
		fprintf(stderr, "lazymap-shared-demo: --socket and --file are needed; 1-64 threads\n");
		return 2;
	}
	int ret = make_file(path, size);

	if (ret) {
		fprintf(stderr, "lazymap-shared-demo: %s: %s\n", path, strerror(-ret));
		return 1;
	}
	if (pipe(out) || pipe(go))
		return 1;
	for (int i = 0; i < 2; i++) {
		char line[256];
		ssize_t n;

		fflush(stdout);
		pids[i] = fork();
		if (pids[i] == 0) {
			close(go[1]); /* the word to go is the end of the file */
			close(out[0]);
			_exit(client(i + 1, sock, path, size, nthreads, out[1], go[0]));
		}
		/* one after the other: the second finds what the first read */
		n = read(out[0], line, sizeof(line) - 1);
		if (n <= 0) {
			failed = 1;
			break;
		}
		line[n] = '\0';
		fputs(line, stdout);
	}
	fflush(stdout);
	if (status_cmd && !failed && system(status_cmd) != 0)
		failed = 1;
	close(go[1]); /* both may go */
	for (int i = 0; i < 2; i++) {
		int wst;

		if (pids[i] > 0 && waitpid(pids[i], &wst, 0) == pids[i] && (!WIFEXITED(wst) || WEXITSTATUS(wst)))
			failed = 1;
	}
	return failed;
}
