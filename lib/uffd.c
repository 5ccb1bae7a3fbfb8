// SPDX-License-Identifier: MIT
/*
 * The userfaultfd layer: open, API handshake, register, and the fill ioctls.
 * Every -1/errno of the kernel becomes -errno here, once; partial results of
 * the fill ioctls are turned into a byte count the caller can trust.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

int lzm_uffd_open(int *fdp)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	/*
	 * Without vm.unprivileged_userfaultfd=1 an unprivileged process may
	 * still get one through /dev/userfaultfd. We never fall back to
	 * UFFD_USER_MODE_ONLY: a read(2) into a lazymap buffer would then fail
	 * with EFAULT instead of being served.
	 */
	if (fd < 0 && (errno == EPERM || errno == EACCES)) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev < 0)
			return -EPERM;
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
		if (fd < 0)
			return errno == EACCES ? -EPERM : -errno;
	}
	if (fd < 0)
		return -errno;
	*fdp = fd;
	return 0;
}

int lzm_uffd_api(int fd, uint64_t features, uint64_t *got)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (ioctl(fd, UFFDIO_API, &api))
		return -errno;
	*got = api.features;
	return 0;
}

/* The features the kernel offers (UFFDIO_API can be called once per fd, hence a probe fd). */
int lzm_uffd_probe(uint64_t *features)
{
	int fd = -1, ret = lzm_uffd_open(&fd);

	if (ret)
		return ret;
	ret = lzm_uffd_api(fd, 0, features);
	close(fd);
	return ret;
}

int lzm_uffd_register(int fd, uintptr_t start, size_t len, uint64_t mode)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = mode,
	};

	return ioctl(fd, UFFDIO_REGISTER, &reg) ? -errno : 0;
}

int lzm_uffd_unregister(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };

	return ioctl(fd, UFFDIO_UNREGISTER, &range) ? -errno : 0;
}

int lzm_uffd_wake(int fd, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };

	return ioctl(fd, UFFDIO_WAKE, &range) ? -errno : 0;
}

/*
 * The fill ioctls report progress in a field that is either a byte count or a
 * negated errno; *done gets only the former. The kernel wakes the part that
 * was filled; a partial fill returns -EAGAIN.
 */
static int fill_result(int ret, int64_t progress, size_t *done)
{
	*done = progress > 0 ? (size_t)progress : 0;
	return ret ? -errno : 0;
}

int lzm_uffd_copy(int fd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done)
{
	struct uffdio_copy c = {
		.dst = dst, .src = (uintptr_t)src, .len = len, .mode = wp ? UFFDIO_COPY_MODE_WP : 0,
	};
	int ret = ioctl(fd, UFFDIO_COPY, &c);

	return fill_result(ret, c.copy, done);
}

int lzm_uffd_zeropage(int fd, uintptr_t dst, size_t len, bool dontwake, size_t *done)
{
	struct uffdio_zeropage z = {
		.range = { .start = dst, .len = len },
		.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
	};
	int ret = ioctl(fd, UFFDIO_ZEROPAGE, &z);

	return fill_result(ret, z.zeropage, done);
}

int lzm_uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len, uint64_t mode, size_t *done)
{
	struct uffdio_move m = { .dst = dst, .src = src, .len = len, .mode = mode };
	int ret = ioctl(fd, UFFDIO_MOVE, &m);

	return fill_result(ret, m.move, done);
}

int lzm_uffd_poison(int fd, uintptr_t dst, size_t len, size_t *done)
{
	struct uffdio_poison p = { .range = { .start = dst, .len = len } };
	int ret = ioctl(fd, UFFDIO_POISON, &p);

	return fill_result(ret, p.updated, done);
}

int lzm_uffd_continue(int fd, uintptr_t dst, size_t len, bool wp, size_t *done)
{
	struct uffdio_continue c = {
		.range = { .start = dst, .len = len },
		.mode = wp ? UFFDIO_CONTINUE_MODE_WP : 0,
	};
	int ret = ioctl(fd, UFFDIO_CONTINUE, &c);

	return fill_result(ret, c.mapped, done);
}

int lzm_uffd_writeprotect(int fd, uintptr_t start, size_t len, bool wp)
{
	struct uffdio_writeprotect w = {
		.range = { .start = start, .len = len },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(fd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

/* Up to max messages; 0 when none is pending (the fd is non-blocking). */
int lzm_uffd_read(int fd, struct uffd_msg *msgs, int max)
{
	ssize_t n;

	do
		n = read(fd, msgs, (size_t)max * sizeof(*msgs));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	/* A userfaultfd never ends: end of file is some other file in its place. */
	if (n == 0)
		return -EBADF;
	return (int)(n / (ssize_t)sizeof(*msgs));
}
