// SPDX-License-Identifier: MIT
/*
 * Backing files: the checks mmap makes on a descriptor, our own references
 * to the file (a dup, and an O_DIRECT reopen for LAZYMAP_DIRECT), and the
 * file's size as last seen.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

int lzm_backing_open(int fd, bool direct, struct backing **bp)
{
	struct backing *b;
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	void *probe;

	if (fl < 0 || (fl & O_PATH))
		return -EBADF;
	if ((fl & O_ACCMODE) == O_WRONLY)
		return -EACCES;
	if (fstat(fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -ENODEV;
	/*
	 * Whether the file may be mapped at all is the file system's say (the
	 * regular files of /proc and /sys may not: -ENODEV): ask mmap itself,
	 * with one page that is never touched.
	 */
	probe = mmap(NULL, lzm_page_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (probe == MAP_FAILED)
		return -errno;
	munmap(probe, lzm_page_size);
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	atomic_init(&b->refs, 1);
	atomic_init(&b->size, (uint64_t)st.st_size);
	b->dfd = -1;
	b->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (b->fd < 0) {
		free(b);
		return -errno;
	}
	if (direct) {
		char path[64];

		/* A new open file description: O_DIRECT on the caller's own
		 * would change how their reads behave. */
		snprintf(path, sizeof(path), "/proc/self/fd/%d", b->fd);
		b->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (b->dfd < 0) {
			int err = errno;

			lzm_backing_put(b);
			/* file systems without O_DIRECT refuse it with EINVAL (tmpfs
			 * did before Linux 6.6; it accepts it since) */
			return -err;
		}
	}
	*bp = b;
	return 0;
}

void lzm_backing_put(struct backing *b)
{
	if (!b || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
		return;
	close(b->fd);
	if (b->dfd >= 0)
		close(b->dfd);
	free(b);
}

uint64_t lzm_backing_refresh_size(struct backing *b)
{
	struct stat st;

	if (fstat(b->fd, &st) == 0)
		atomic_store_explicit(&b->size, (uint64_t)st.st_size, memory_order_relaxed);
	return atomic_load_explicit(&b->size, memory_order_relaxed);
}
