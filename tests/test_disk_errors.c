// SPDX-License-Identifier: MIT
/*
 * A disk that fails under a file: an ext4 file system on a loop device whose
 * backing image is then cut short, so that the blocks past the cut fail every
 * read and write in the kernel, as a dying disk's do. Needs root, losetup,
 * mkfs.ext4 and mount; skipped with the reason where any is missing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazymap.h"

#include "common.h"

#define NPAGES 2048 /* the data file: 8 MiB */
#define CUT_PAGE 1013 /* the device ends at this page's block: inside a large folio */

static struct {
	char dir[64], img[96], mnt[96], data[128], dev[64];
	bool mounted;
	off_t cut;          /* bytes of the image left by cut() */
	bool bad[NPAGES];   /* pages whose block lies past the cut */
	size_t nbad;
} dk;

static uint8_t page_byte(size_t pg)
{
	return (uint8_t)(pg * 7 + 1);
}

static int run(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " >/dev/null 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	return system(cmd);
}

static void disk_teardown(void)
{
	if (dk.mounted)
		run("umount -l %s", dk.mnt);
	if (dk.dev[0])
		run("losetup -d %s", dk.dev);
	if (dk.dir[0])
		run("rm -rf %s", dk.dir);
}

/*
 * The file system with its data file (every byte of page p is page_byte(p)),
 * written and out of every cache. A 40 MiB file first, so that the data lies
 * at the far end of the device; no journal, which a cut could hit.
 */
static void disk_setup(void)
{
	FILE *p;
	int fd;

	memset(&dk, 0, sizeof(dk));
	if (geteuid() != 0)
		skip_test("a loop device needs root");
	strcpy(dk.dir, "/var/tmp/lazymap-disk-XXXXXX");
	cr_assert_not_null(mkdtemp(dk.dir));
	snprintf(dk.img, sizeof(dk.img), "%s/disk.img", dk.dir);
	snprintf(dk.mnt, sizeof(dk.mnt), "%s/mnt", dk.dir);
	snprintf(dk.data, sizeof(dk.data), "%s/data", dk.mnt);
	cr_assert_eq(mkdir(dk.mnt, 0700), 0);
	cr_assert_eq(run("truncate -s 64M %s", dk.img), 0);
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "losetup -f --show %s 2>/dev/null", dk.img);
	p = popen(cmd, "r");
	if (!p || !fgets(dk.dev, sizeof(dk.dev), p) || strncmp(dk.dev, "/dev/loop", 9)) {
		if (p)
			pclose(p);
		dk.dev[0] = 0;
		skip_test("no loop device (losetup -f --show failed)");
	}
	pclose(p);
	dk.dev[strcspn(dk.dev, "\n")] = 0;
	if (run("mkfs.ext4 -q -F -b 4096 -O ^has_journal %s", dk.dev))
		skip_test("mkfs.ext4 failed (e2fsprogs missing?)");
	if (run("mount -o errors=continue %s %s", dk.dev, dk.mnt))
		skip_test("mounting ext4 on %s failed", dk.dev);
	dk.mounted = true;
	cr_assert_eq(run("dd if=/dev/zero of=%s/filler bs=1M count=40", dk.mnt), 0);

	uint8_t *buf = malloc(4096);

	fd = open(dk.data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	for (size_t pg = 0; pg < NPAGES; pg++) {
		memset(buf, page_byte(pg), 4096);
		cr_assert_eq(pwrite(fd, buf, 4096, (off_t)(pg * 4096)), 4096);
	}
	cr_assert_eq(fsync(fd), 0);
	free(buf);

	/* where each page lies on the device; the cut goes at CUT_PAGE's block */
	int blk = CUT_PAGE;

	cr_assert_eq(ioctl(fd, FIBMAP, &blk), 0, "FIBMAP: %s", strerror(errno));
	dk.cut = (off_t)blk * 4096;
	for (size_t pg = 0; pg < NPAGES; pg++) {
		int b = (int)pg;

		cr_assert_eq(ioctl(fd, FIBMAP, &b), 0);
		dk.bad[pg] = (off_t)b * 4096 >= dk.cut;
		dk.nbad += dk.bad[pg];
	}
	cr_assert(dk.bad[CUT_PAGE] && !dk.bad[0], "the layout is not the one the test needs");
	close(fd);
}

/* The device ends at dk.cut (or is whole again); the data file out of the cache. */
static void cut(bool on)
{
	int fd;

	cr_assert_eq(run("truncate -s %lld %s", on ? (long long)dk.cut : 64LL << 20, dk.img), 0);
	cr_assert_eq(run("losetup -c %s", dk.dev), 0);
	fd = open(dk.data, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

/* Which pages of the file a read touch of p finds SIGBUS; the others checked. */
static void scan(const char *who, const char *p, bool *sigbus)
{
	for (size_t pg = 0; pg < NPAGES; pg++) {
		const char *a = p + pg * 4096 + 99;
		char v = 0;
		struct touch_fault f = touch((char *)a, -1, &v);

		sigbus[pg] = f.signo == SIGBUS;
		cr_assert(!f.signo || (f.signo == SIGBUS && f.addr == a),
			  "%s: page %zu: signal %d at %p", who, pg, f.signo, f.addr);
		if (!f.signo)
			cr_assert_eq((uint8_t)v, page_byte(pg), "%s: page %zu", who, pg);
	}
}

#define DISK .init = disk_setup, .fini = disk_teardown, .timeout = 120

/*
 * A read that fails takes only the pages the kernel's own mapping cannot
 * read: a large folio of the page cache holding the first bad block used to
 * fail the good pages before it too (a hostile review saw 63 of them SIGBUS).
 */
Test(disk_errors, pages_a_read_fails_are_the_kernels_own, DISK)
{
	static bool kernel[NPAGES], ours[NPAGES];
	struct lazymap *lm = open_or_skip(NULL);
	int fd = open(dk.data, O_RDONLY | O_CLOEXEC);
	void *p = NULL;
	size_t n = 0;

	touch_install();
	cr_assert_geq(fd, 0);
	cut(true);
	cr_assert_eq(lazymap_map(lm, &p, NPAGES * 4096, PROT_READ, LAZYMAP_PRIVATE, fd, 0), 0);
	scan("lazymap", p, ours);
	cr_assert_eq(lazymap_close(lm), 0);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	char *k = mmap(NULL, NPAGES * 4096, PROT_READ, MAP_PRIVATE, fd, 0);

	cr_assert_neq(k, MAP_FAILED);
	scan("the kernel's mmap", k, kernel);
	munmap(k, NPAGES * 4096);
	close(fd);
	for (size_t pg = 0; pg < NPAGES; pg++) {
		cr_assert_eq(ours[pg], kernel[pg], "page %zu: SIGBUS here %d, in the kernel's map %d "
			     "(its block is %s the cut)", pg, ours[pg], kernel[pg],
			     dk.bad[pg] ? "past" : "before");
		n += ours[pg];
	}
	cr_assert_gt(n, 0, "no page failed: the cut missed the file");
}

/*
 * lazymap_unmap of a dirty shared page the disk then refuses fails, and the
 * page stays dirty for the next sync: its write-back used to be a buffered
 * write that succeeded, the disk's refusal reached one later sync alone,
 * and the page was gone (hostile review).
 */
Test(disk_errors, unmap_of_a_page_the_disk_refuses_fails_and_keeps_it, DISK)
{
	struct lazymap *lm = open_or_skip(NULL);
	struct lazymap_stats st;
	int fd = open(dk.data, O_RDWR | O_CLOEXEC), ret;
	char *p = NULL;
	size_t pg = NPAGES - 8; /* past the cut */
	uint8_t v = 0;

	cr_assert(dk.bad[pg]);
	cr_assert_geq(fd, 0);
	cr_assert_eq(lazymap_map(lm, (void **)&p, NPAGES * 4096, PROT_READ | PROT_WRITE,
				 LAZYMAP_SHARED, fd, 0), 0);
	cr_assert_eq((uint8_t)p[pg * 4096], page_byte(pg)); /* read while the disk is whole */
	cut(true);
	memset(p + pg * 4096, 0xee, 4096);
	ret = lazymap_unmap(lm, p + pg * 4096, 4096);
	cr_assert_eq(ret, -EIO, "lazymap_unmap of the refused page: %s", strerror(-ret));
	cr_assert_eq((uint8_t)p[pg * 4096 + 5], 0xee, "the page went with the failed unmap");
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_geq(st.dirty_pages, 1);
	/* the disk comes back: the next sync writes it */
	cut(false);
	cr_assert_eq(lazymap_sync(lm, p, NPAGES * 4096), 0);
	cr_assert_eq(lazymap_unmap(lm, p, NPAGES * 4096), 0);
	cr_assert_eq(lazymap_close(lm), 0);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	cr_assert_eq(pread(fd, &v, 1, (off_t)(pg * 4096 + 5)), 1);
	cr_assert_eq(v, 0xee, "the write never reached the file");
	close(fd);
}
