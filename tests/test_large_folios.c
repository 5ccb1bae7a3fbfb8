// SPDX-License-Identifier: MIT
/*
 * File regions where shmem gives the cache's memfd large folios
 * (transparent_hugepage/shmem_enabled within_size, always or force): a page
 * written into the memfd used to make its whole 2 MiB folio present, the
 * rest zeros, which every later touch of those pages read as the file's.
 * The setting is the system's: the test sets within_size for its own time
 * (as root) and puts the old one back in its .fini and before a skip;
 * meson runs this suite alone (is_parallel: false), since a cache another
 * suite made before the switch would fill the old way. Each body runs on
 * lazymap and, as ..._kernel_reference, on the kernel's own mmap.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>

static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"

#define SHMEM_ENABLED "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

static struct {
	char dir[PATH_MAX / 2];
	char shmem_was[32]; /* the mode to put back, or "" */
} fx;

static int shmem_set(const char *mode)
{
	int fd = open(SHMEM_ENABLED, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, mode, strlen(mode)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static void fx_setup(void)
{
	scratch_setup(fx.dir, sizeof(fx.dir), "folios");
}

static void fx_teardown(void)
{
	if (fx.shmem_was[0])
		shmem_set(fx.shmem_was);
	fx.shmem_was[0] = '\0';
	scratch_drop(fx.dir);
}

/* Remember the mode in brackets ("always within_size advise [never] deny force"), set within_size. */
static void shmem_large_or_skip(void)
{
	char line[128] = "", *a, *b;
	int fd = open(SHMEM_ENABLED, O_RDONLY | O_CLOEXEC), ret;
	ssize_t n = fd >= 0 ? read(fd, line, sizeof(line) - 1) : -1;

	if (fd >= 0)
		close(fd);
	a = n > 0 ? strchr(line, '[') : NULL;
	b = a ? strchr(a, ']') : NULL;
	if (!b || b - a - 1 >= (ptrdiff_t)sizeof(fx.shmem_was))
		skip_test("%s cannot be read: no shmem THP in this kernel", SHMEM_ENABLED);
	memcpy(fx.shmem_was, a + 1, (size_t)(b - a - 1));
	fx.shmem_was[b - a - 1] = '\0';
	ret = shmem_set("within_size");
	if (ret) {
		fx.shmem_was[0] = '\0';
		skip_test("cannot set %s (%s): not root?", SHMEM_ENABLED, strerror(-ret));
	}
}

/*
 * Pages far apart within one folio's span, touched alternately through a
 * private and a shared region of one file, then both regions whole: each
 * page is the file's.
 */
static void pages_of_one_folio(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = (4u << 20) / ps, len = npg * ps;
	static const size_t touch[] = { 3, 400, 515, 1000, 7 };
	char path[PATH_MAX];
	uint8_t *want = pattern_file(fx.dir, "large", len, 61, npg, path, sizeof(path));
	char *priv, *shared;
	struct twin t;
	int fd;

	shmem_large_or_skip();
	twin_open_or_skip(&t, kind, NULL);
	fd = open_file(path, O_RDWR);
	priv = map_or_fail(&t, len, PROT_READ, LAZYMAP_PRIVATE, fd, 0, "private");
	shared = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0, "shared");
	for (size_t i = 0; i < sizeof(touch) / sizeof(touch[0]); i++) {
		char what[64];
		size_t pg = touch[i] % npg;

		snprintf(what, sizeof(what), "page %zu, %s", pg, i % 2 ? "shared" : "private");
		expect_mem(what, (i % 2 ? shared : priv) + pg * ps, want + pg * ps, ps);
	}
	expect_mem("the private region, whole", priv, want, len);
	expect_mem("the shared region, whole", shared, want, len);
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	free(want);
}

Test(large_folios, pages_of_one_folio_are_the_files, .init = fx_setup, .fini = fx_teardown,
     .timeout = 60)
{
	pages_of_one_folio(TWIN_LAZYMAP);
}

Test(large_folios, pages_of_one_folio_are_the_files_kernel_reference, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
	pages_of_one_folio(TWIN_MMAP);
}

/*
 * Under an RLIMIT_FSIZE below a folio's size, the check for large folios
 * wrote its page where the limit refused it, and concluded there were
 * none: pages below the limit then read zeros. Pages below it are the
 * file's; a page past it is SIGBUS, as the header says.
 */
static void fsize_below_a_folio(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = (8u << 20) / ps, len = npg * ps;
	static const size_t touch_pages[] = { 100, 3, 255, 17, 200 };
	struct rlimit rl = { 1u << 20, 1u << 20 };
	char path[PATH_MAX];
	uint8_t *want = pattern_file(fx.dir, "fsize", len, 62, npg, path, sizeof(path));
	struct twin t;
	char *p;
	int fd;

	shmem_large_or_skip();
	signal(SIGXFSZ, SIG_IGN);
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	twin_open_or_skip(&t, kind, NULL);
	fd = open_file(path, O_RDONLY);
	p = map_or_fail(&t, len, PROT_READ, LAZYMAP_PRIVATE, fd, 0, "private");
	/* one page per fault: nothing read around reaches the limit */
	cr_assert_eq(t.kind == TWIN_LAZYMAP ? lazymap_advise(t.lm, p, len, LAZYMAP_ADV_RANDOM)
					    : madvise(p, len, MADV_RANDOM), 0);
	for (size_t i = 0; i < sizeof(touch_pages) / sizeof(touch_pages[0]); i++) {
		char what[64];

		snprintf(what, sizeof(what), "page %zu, below the limit", touch_pages[i]);
		expect_mem(what, p + touch_pages[i] * ps, want + touch_pages[i] * ps, ps);
	}
	if (kind == TWIN_LAZYMAP) {
		struct touch_fault f;

		touch_install();
		f = touch(p + 511 * ps, -1, NULL);
		cr_assert_eq(f.signo, SIGBUS, "page 511, past RLIMIT_FSIZE: signal %d, want SIGBUS",
			     f.signo);
	}
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	free(want);
}

Test(large_folios, fsize_limit_below_a_folio, .init = fx_setup, .fini = fx_teardown, .timeout = 60)
{
	fsize_below_a_folio(TWIN_LAZYMAP);
}

Test(large_folios, fsize_limit_below_a_folio_kernel_reference, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
	fsize_below_a_folio(TWIN_MMAP);
}

/*
 * The fill window covered the whole file: a 16-page map in the middle of a
 * 100 GiB sparse file needed 100 GiB of address space, and failed under an
 * RLIMIT_AS of 4 GiB where mmap succeeds.
 */
static void small_map_of_a_huge_file(enum twin_kind kind)
{
	size_t ps = pgsz();
	uint64_t size = 100ull << 30, off = 50ull << 30;
	struct rlimit rl = { 4ull << 30, 4ull << 30 };
	char path[PATH_MAX];
	uint8_t *want = malloc(16 * ps);
	struct twin t;
	char *p;
	int fd;

	cr_assert_not_null(want);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	/* their shadow memory is terabytes of address space */
	skip_test("a sanitizer cannot run under an RLIMIT_AS of 4 GiB");
#endif
	shmem_large_or_skip();
	snprintf(path, sizeof(path), "%s/huge", fx.dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, (off_t)size), 0);
	cr_assert_eq(pattern_write(fd, 63, off, 16 * ps), 0);
	pattern_fill(want, 16 * ps, 63, off);
	twin_open_or_skip(&t, kind, NULL);
	cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
	p = map_or_fail(&t, 16 * ps, PROT_READ, LAZYMAP_PRIVATE, fd, (off_t)off, "16 pages at 50 GiB");
	expect_mem("16 pages at 50 GiB", p, want, 16 * ps);
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	free(want);
}

Test(large_folios, small_map_of_a_huge_sparse_file_under_rlimit_as, .init = fx_setup,
     .fini = fx_teardown, .timeout = 60)
{
	small_map_of_a_huge_file(TWIN_LAZYMAP);
}

Test(large_folios, small_map_of_a_huge_sparse_file_under_rlimit_as_kernel_reference,
     .init = fx_setup, .fini = fx_teardown, .timeout = 60)
{
	small_map_of_a_huge_file(TWIN_MMAP);
}
