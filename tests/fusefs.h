/* SPDX-License-Identifier: MIT */
/*
 * Test fixture: a FUSE file system (tests/fusefs.c) serving one read-only
 * file, /data, whose bytes are fusefs_byte(offset) and whose chosen pages
 * fail every read with EIO in the kernel. Tests start and stop a server with
 * fusefs_start() / fusefs_stop(); the server itself only uses fusefs_byte().
 *
 * Usage in a test:
 *
 *	struct fusefs fs;
 *	int err = fusefs_start(&fs, 64 * pgsz(), "3,10-12");
 *	if (err < 0)
 *		cr_skip_test("fusefs: %s", fs.why);
 *	int fd = open(fs.path, O_RDONLY);
 *	...
 *	fusefs_stop(&fs);
 *
 * Pages are the server's sysconf(_SC_PAGESIZE) pages, so the test and the
 * server agree on what page N is. The bad list is inclusive ranges of page
 * indexes: "10-12,4000".
 *
 * The server lives as long as the thread that called fusefs_start() (it gets
 * SIGTERM when that thread exits, PR_SET_PDEATHSIG), then unmounts and removes
 * the mount point itself: a test that dies of an expected SIGBUS or of its
 * timeout leaves nothing behind. Start it from the test's own thread.
 */
#ifndef LAZYMAP_TESTS_FUSEFS_H
#define LAZYMAP_TESTS_FUSEFS_H

#include <stdint.h>

/*
 * The content of /data: a pure function of the offset. The page term makes
 * equal offsets in different pages differ, so data from the wrong page (or
 * the wrong offset within a page) never compares equal by accident.
 */
static inline uint8_t fusefs_byte(uint64_t off)
{
	return (uint8_t)(((off * 2654435761u) >> 13) ^ (off >> 12));
}

#ifndef FUSEFS_SERVER

/*
 * Meson passes the built server's path: -DFUSEFS_BIN="/abs/path/fusefs", or
 * "" when libfuse3 was not found, in which case fusefs_start() fails with
 * -ENOSYS and a reason to skip with.
 */
#ifndef FUSEFS_BIN
#error "fusefs.h: define FUSEFS_BIN to the fusefs server's path (\"\" if it was not built)"
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Page cache instead of FOPEN_DIRECT_IO: see "Caching" in fusefs.c. */
#define FUSEFS_PAGE_CACHE 0x1

/* How long fusefs_start() waits for the mount to answer. */
#ifndef FUSEFS_START_TIMEOUT_MS
#define FUSEFS_START_TIMEOUT_MS 10000
#endif

struct fusefs {
	pid_t pid;              /* the server; 0 when not running */
	char dir[PATH_MAX - 16]; /* mount point, made by fusefs_start() */
	char path[PATH_MAX];    /* dir + "/data" */
	char why[256];          /* why fusefs_start() failed, for cr_skip_test */
};

static inline void fusefs_why(struct fusefs *fs, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static inline void fusefs_why(struct fusefs *fs, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(fs->why, sizeof(fs->why), fmt, ap);
	va_end(ap);
}

static inline int fusefs_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	return nanosleep(&ts, NULL);
}

/* Waits up to ms for pid; returns 1 and fills *status once reaped. */
static inline int fusefs_reap(pid_t pid, int *status, long ms)
{
	for (long waited = 0;; waited += 5) {
		pid_t r = waitpid(pid, status, WNOHANG);

		if (r == pid || (r < 0 && errno != EINTR))
			return 1;
		if (waited >= ms)
			return 0;
		fusefs_sleep_ms(5);
	}
}

/*
 * Is fs->dir still a mount point? A dead FUSE mount answers stat with
 * ENOTCONN, a live one with another st_dev than its parent's.
 */
static inline int fusefs_mounted(const struct fusefs *fs)
{
	char parent[PATH_MAX + 4];
	struct stat d, p;

	snprintf(parent, sizeof(parent), "%s/..", fs->dir);
	if (stat(fs->dir, &d) < 0)
		return errno != ENOENT;
	if (stat(parent, &p) < 0)
		return 1;
	return d.st_dev != p.st_dev;
}

/* Detach whatever is left on fs->dir; lazily, so open files cannot stop it. */
static inline void fusefs_detach(struct fusefs *fs)
{
	int status;
	pid_t pid;

	if (!fusefs_mounted(fs))
		return;
	if (geteuid() == 0 && umount2(fs->dir, MNT_DETACH) == 0)
		return;
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		if (null >= 0) {
			dup2(null, STDOUT_FILENO);
			dup2(null, STDERR_FILENO);
		}
		execlp("fusermount3", "fusermount3", "-u", "-z", fs->dir, (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		fusefs_reap(pid, &status, 5000);
}

/*
 * Unmounts, reaps the server and removes the mount point. Safe to call twice
 * and after a failed fusefs_start(). Afterwards, reads of files still open
 * on the mount fail with ENOTCONN and faults on mapped pages not yet read
 * give SIGBUS, except where the page cache already holds the data.
 */
static inline void fusefs_stop(struct fusefs *fs)
{
	int status;

	if (fs->pid > 0) {
		/* The server unmounts on SIGTERM (libfuse's signal handlers). */
		kill(fs->pid, SIGTERM);
		if (!fusefs_reap(fs->pid, &status, 5000)) {
			fusefs_detach(fs);
			kill(fs->pid, SIGKILL);
			fusefs_reap(fs->pid, &status, 5000);
		}
		fs->pid = 0;
	}
	if (fs->dir[0]) {
		fusefs_detach(fs);
		rmdir(fs->dir);
		fs->dir[0] = '\0';
	}
	fs->path[0] = '\0';
}

/*
 * Starts a server with a /data of size bytes, whose pages in bad_spec (NULL
 * or "" for none) fail with EIO, and waits until stat of fs->path shows it.
 * flags: 0 or FUSEFS_PAGE_CACHE.
 *
 * Returns 0, or a negative errno with fs->why set, the server reaped and
 * nothing left mounted:
 *   -ENOSYS     the server was not built (no libfuse3 at configure time)
 *   -ENOENT, -EACCES, -EPERM  from /dev/fuse or the server binary
 *   -EINVAL     bad_spec or size refused by the server
 *   -ETIMEDOUT  the mount did not appear within FUSEFS_START_TIMEOUT_MS
 *   other       the server's exit status (an errno) when it failed to mount
 */
static inline int fusefs_start_flags(struct fusefs *fs, uint64_t size,
				     const char *bad_spec, unsigned flags)
{
	const char *bin = FUSEFS_BIN;
	const char *tmp = getenv("TMPDIR");
	char size_arg[32];
	char *argv[10];
	int argc = 0, status, err, fd;
	pid_t parent = getpid();
	struct stat st;

	memset(fs, 0, sizeof(*fs));
	if (!bin[0]) {
		fusefs_why(fs, "fusefs server not built (libfuse3 missing at configure time)");
		return -ENOSYS;
	}
	if (access(bin, X_OK) < 0) {
		err = -errno;
		fusefs_why(fs, "%s: %s", bin, strerror(-err));
		return err;
	}
	/* An open, not access(): a device node may exist and still not open. */
	fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		fusefs_why(fs, "/dev/fuse: %s", strerror(-err));
		return err;
	}
	close(fd);

	snprintf(fs->dir, sizeof(fs->dir), "%s/lazymap-fusefs.XXXXXX",
		 tmp && tmp[0] ? tmp : "/tmp");
	if (!mkdtemp(fs->dir)) {
		err = -errno;
		fusefs_why(fs, "mkdtemp %s: %s", fs->dir, strerror(-err));
		fs->dir[0] = '\0';
		return err;
	}
	snprintf(fs->path, sizeof(fs->path), "%s/data", fs->dir);

	/* Everything the child needs is built before fork: it only execs. */
	snprintf(size_arg, sizeof(size_arg), "%llu", (unsigned long long)size);
	argv[argc++] = (char *)bin;
	argv[argc++] = (char *)"--size";
	argv[argc++] = size_arg;
	if (bad_spec && bad_spec[0]) {
		argv[argc++] = (char *)"--bad";
		argv[argc++] = (char *)bad_spec;
	}
	if (flags & FUSEFS_PAGE_CACHE)
		argv[argc++] = (char *)"--page-cache";
	argv[argc++] = (char *)"--rmdir";
	argv[argc++] = fs->dir;
	argv[argc] = NULL;

	fs->pid = fork();
	if (fs->pid < 0) {
		err = -errno;
		fs->pid = 0;
		fusefs_why(fs, "fork: %s", strerror(-err));
		goto fail;
	}
	if (fs->pid == 0) {
		int null = open("/dev/null", O_RDWR);

		/* A test that dies must not leave a mount behind (see top). */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(EINTR);
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			dup2(null, STDOUT_FILENO);
		}
		/*
		 * The server must not hold the test's userfaultfd, io_uring or
		 * pipe fds: a uffd kept open by another process changes what
		 * closing it does. stderr stays, for the server's diagnostics.
		 */
		if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
			for (int i = 3; i < 1024; i++)
				close(i);
		execv(bin, argv);
		_exit(errno > 0 && errno < 256 ? errno : 127);
	}

	for (long waited = 0;; waited += 5) {
		if (stat(fs->path, &st) == 0) {
			if ((uint64_t)st.st_size == size)
				return 0;
			err = -EIO;
			fusefs_why(fs, "%s: size %lld, expected %llu", fs->path,
				   (long long)st.st_size, (unsigned long long)size);
			goto fail;
		}
		if (waitpid(fs->pid, &status, WNOHANG) == fs->pid) {
			fs->pid = 0;
			if (WIFEXITED(status) && WEXITSTATUS(status) > 0 &&
			    WEXITSTATUS(status) < 127) {
				err = -WEXITSTATUS(status);
				fusefs_why(fs, "server for %s exited: %s (its stderr says why)",
					   fs->dir, strerror(-err));
			} else {
				err = -EIO;
				fusefs_why(fs, "server for %s died (status 0x%x)", fs->dir,
					   (unsigned)status);
			}
			goto fail;
		}
		if (waited >= FUSEFS_START_TIMEOUT_MS) {
			err = -ETIMEDOUT;
			fusefs_why(fs, "%s did not appear within %d ms", fs->path,
				   FUSEFS_START_TIMEOUT_MS);
			goto fail;
		}
		fusefs_sleep_ms(5);
	}

fail:
	fusefs_stop(fs);        /* keeps fs->why */
	return err;
}

static inline int fusefs_start(struct fusefs *fs, uint64_t size, const char *bad_spec)
{
	return fusefs_start_flags(fs, size, bad_spec, 0);
}

#endif /* !FUSEFS_SERVER */
#endif /* LAZYMAP_TESTS_FUSEFS_H */
