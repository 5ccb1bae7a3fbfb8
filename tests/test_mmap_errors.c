// SPDX-License-Identifier: MIT
/*
 * lazymap_map gives the errno mmap gives for the same descriptor and range:
 * each case is asked of the kernel's mmap too, in the same run, and the two
 * answers must agree.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#include "common.h"

static struct lazymap *lm;

static void setup(void)
{
	lm = open_or_skip(NULL);
}

static void teardown(void)
{
	if (lm)
		cr_assert_eq(lazymap_close(lm), 0);
	lm = NULL;
}

/* Map fd both ways; both must fail, with the same errno. */
static void same_error(const char *what, int fd, size_t len, off_t off)
{
	void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, off), *q = NULL;
	int kernel = p == MAP_FAILED ? errno : 0;
	int ours = lazymap_map(lm, &q, len, PROT_READ, LAZYMAP_PRIVATE, fd, off);

	if (p != MAP_FAILED)
		munmap(p, len);
	cr_assert_neq(kernel, 0, "%s: the kernel's mmap succeeded: not an error case", what);
	cr_assert_eq(ours, -kernel, "%s: lazymap_map gave %d (%s), mmap %d (%s)", what, ours,
		     strerror(-ours), -kernel, strerror(kernel));
}

static int open_or_skip_file(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);

	if (fd < 0)
		cr_skip_test("%s: %s", path, strerror(errno));
	return fd;
}

Test(mmap_errors, o_path_descriptor_is_ebadf, .init = setup, .fini = teardown)
{
	int fd = open_or_skip_file("/proc/self/exe", O_PATH);

	same_error("O_PATH", fd, pgsz(), 0);
	close(fd);
}

Test(mmap_errors, proc_and_sys_files_are_enodev, .init = setup, .fini = teardown)
{
	int fd = open_or_skip_file("/proc/self/status", O_RDONLY);

	same_error("/proc/self/status", fd, pgsz(), 0);
	close(fd);
	fd = open_or_skip_file("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY);
	same_error("a sysfs attribute", fd, pgsz(), 0);
	close(fd);
}

Test(mmap_errors, write_only_descriptor_is_eacces, .init = setup, .fini = teardown)
{
	char path[] = "/tmp/lazymap-wronly-XXXXXX";
	int fd = mkstemp(path), wfd;

	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, (off_t)pgsz()), 0);
	wfd = open(path, O_WRONLY | O_CLOEXEC);
	unlink(path);
	cr_assert_geq(wfd, 0);
	same_error("O_WRONLY", wfd, pgsz(), 0);
	close(wfd);
	close(fd);
}

Test(mmap_errors, huge_length_with_a_valid_offset_is_einval, .init = setup, .fini = teardown)
{
	int fd = open_or_skip_file("/proc/self/exe", O_RDONLY);
	void *q;

	/* mmap says ENOMEM here (no room in the address space); lazymap_map
	 * refuses a length no off_t can hold up front: -EINVAL, as its header
	 * promises, whatever the offset. */
	cr_assert_eq(lazymap_map(lm, &q, (size_t)INT64_MAX + 1 + pgsz(), PROT_READ,
				 LAZYMAP_PRIVATE, fd, (off_t)pgsz()), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &q, SIZE_MAX - 2 * pgsz(), PROT_READ, LAZYMAP_PRIVATE, fd, 0),
		     -EINVAL);
	close(fd);
}

/* Shared file mappings check the descriptor as mmap does, in its order. */
Test(mmap_errors, shared_mappings_check_the_descriptor_first, .init = setup, .fini = teardown)
{
	int pfd[2], fd = open_or_skip_file("/proc/self/exe", O_RDONLY);
	void *q;

	cr_assert_eq(pipe(pfd), 0);
	cr_assert_eq(lazymap_map(lm, &q, pgsz(), PROT_READ, LAZYMAP_SHARED, pfd[0], 0), -ENODEV);
	close(pfd[0]);
	cr_assert_eq(lazymap_map(lm, &q, pgsz(), PROT_READ, LAZYMAP_SHARED, pfd[0], 0), -EBADF);
	close(pfd[1]);
	cr_assert_eq(mmap(NULL, pgsz(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
	cr_assert_eq(errno, EACCES);
	cr_assert_eq(lazymap_map(lm, &q, pgsz(), PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0),
		     -EACCES);
	close(fd);
}
