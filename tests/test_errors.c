// SPDX-License-Identifier: MIT
/*
 * Errors at the API's edge: every bad call gets a clear negative errno and
 * changes nothing; a closed handle is -EBADF; calls that would deadlock from
 * a fill callback are -EDEADLK; no userfaultfd access is -EPERM.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common.h"

#define RW (PROT_READ | PROT_WRITE)
#define ANON (LAZYMAP_PRIVATE | LAZYMAP_ANON)

static struct lazymap *lm;

static void setup(void)
{
	lm = open_or_skip(NULL);
}

static void teardown(void)
{
	if (lm)
		cr_assert_eq(lazymap_close(lm), 0);
}

static int fill_ones(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)offset;
	(void)arg;
	memset(page, 1, len);
	return 0;
}

/* The tree is untouched by a failed call. */
static void expect_regions(uint64_t n)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.regions, n, "%lu regions, want %lu", (unsigned long)st.regions,
		     (unsigned long)n);
}

Test(errors, open_bad_options)
{
	struct lazymap *x = NULL;

	cr_assert_eq(lazymap_open(NULL, NULL), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .handler_threads = 100000 }), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .readahead_max = 1ul << 40 }), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .install = 7 }), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .queue_depth = 1u << 20 }), -EINVAL);
	/* served by faultd: its budget is faultd's, pages cannot move across processes */
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .daemon = "" }), -EINVAL);
	struct lazymap_opts budget = { .daemon = "/s", .resident_limit = 64 << 20 };
	struct lazymap_opts move = { .daemon = "/s", .install = LAZYMAP_INSTALL_MOVE };

	cr_assert_eq(lazymap_open(&x, &budget), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &move), -EINVAL);
	/* a budget smaller than 4 MiB could hold little more than the fill waiting for it */
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .resident_limit = 1 << 20 }), -EINVAL);
	cr_assert_eq(lazymap_open(&x, &(struct lazymap_opts){ .resident_limit = (4 << 20) - 4096 }),
		     -EINVAL);
	cr_assert_null(x);
}

Test(errors, map_bad_arguments, .init = setup, .fini = teardown)
{
	void *p = NULL;

	cr_assert_eq(lazymap_map(lm, NULL, 4096, RW, ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 0, RW, ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, SIZE_MAX, RW, ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, SIZE_MAX - 4096, RW, ANON, -1, 0), -ENOMEM);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_EXEC, ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, 0x100, ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, LAZYMAP_ANON, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, LAZYMAP_PRIVATE | LAZYMAP_SHARED | LAZYMAP_ANON,
				 -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, ANON | 0x1000, -1, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, ANON, 3, 0), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, ANON, -1, 4096), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, RW, ANON | LAZYMAP_DIRECT, -1, 0), -EINVAL);
	/* file mappings: offset and fd are checked before anything else */
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ, LAZYMAP_PRIVATE, -1, 0), -EBADF);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ, LAZYMAP_PRIVATE, 12345, 0), -EBADF);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ, LAZYMAP_PRIVATE, 0, 100), -EINVAL);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ, LAZYMAP_PRIVATE, 0, -4096), -EINVAL);
	/* A length the address space cannot hold is the kernel's ENOMEM. */
	cr_assert_eq(lazymap_map(lm, &p, 1ul << 62, RW, ANON, -1, 0), -ENOMEM);
	cr_assert_null(p);
	expect_regions(0);

	cr_assert_eq(lazymap_map_fill(lm, NULL, 4096, RW, fill_ones, NULL), -EINVAL);
	cr_assert_eq(lazymap_map_fill(lm, &p, 4096, RW, NULL, NULL), -EINVAL);
	cr_assert_eq(lazymap_map_fill(lm, &p, 0, RW, fill_ones, NULL), -EINVAL);
	cr_assert_eq(lazymap_map_fill(lm, &p, 4096, PROT_EXEC, fill_ones, NULL), -EINVAL);
	expect_regions(0);
}

Test(errors, map_rounds_length_up_like_mmap, .init = setup, .fini = teardown)
{
	struct maps_entry e[4];
	char *p;

	cr_assert_eq(lazymap_map(lm, (void **)&p, 100, RW, ANON, -1, 0), 0);
	cr_assert_eq(tree_read(lm, e, 4), 1);
	cr_assert_eq(e[0].end - e[0].start, pgsz());
	p[pgsz() - 1] = 1;
	cr_assert_eq(lazymap_unmap(lm, p, 100), 0);
	expect_regions(0);
}

Test(errors, ranges_not_owned_or_malformed, .init = setup, .fini = teardown)
{
	size_t ps = pgsz();
	char *p, *q;
	char stack_page[64];

	cr_assert_eq(lazymap_map(lm, (void **)&p, 8 * ps, RW, ANON, -1, 0), 0);
	/* unaligned, empty, wrapping */
	cr_assert_eq(lazymap_unmap(lm, p + 1, ps), -EINVAL);
	cr_assert_eq(lazymap_unmap(lm, p, 0), -EINVAL);
	cr_assert_eq(lazymap_unmap(lm, p, SIZE_MAX - 10), -EINVAL);
	/* not ours: a stack address, a range running off the end, a range before */
	cr_assert_eq(lazymap_unmap(lm, (void *)((uintptr_t)stack_page & ~(ps - 1)), ps), -EINVAL);
	cr_assert_eq(lazymap_unmap(lm, p + 4 * ps, 8 * ps), -EINVAL);
	cr_assert_eq(lazymap_unmap(lm, p - ps, 2 * ps), -EINVAL);
	cr_assert_eq(lazymap_protect(lm, p + 4 * ps, 8 * ps, PROT_READ), -EINVAL);
	cr_assert_eq(lazymap_protect(lm, p, ps, PROT_EXEC), -EINVAL);
	cr_assert_eq(lazymap_protect(lm, p, ps, 0x100), -EINVAL);
	cr_assert_eq(lazymap_prefetch(lm, p + 4 * ps, 8 * ps), -EINVAL);
	cr_assert_eq(lazymap_prefetch(lm, p + 3, ps), -EINVAL);
	cr_assert_eq(lazymap_sync(lm, p + 4 * ps, 8 * ps), -EINVAL);
	cr_assert_eq(lazymap_sync(lm, p, ps), 0);
	/* nothing changed: the region is whole and still served */
	expect_regions(1);
	cr_assert_eq(p[7 * ps], 0);

	/* A hole between two regions makes a range not ours. */
	cr_assert_eq(lazymap_map(lm, (void **)&q, 8 * ps, RW, ANON, -1, 0), 0);
	cr_assert_eq(lazymap_unmap(lm, q + 2 * ps, ps), 0);
	cr_assert_eq(lazymap_unmap(lm, q, 4 * ps), -EINVAL);
	cr_assert_eq(lazymap_protect(lm, q, 4 * ps, PROT_READ), -EINVAL);
	expect_regions(3);
	cr_assert_eq(lazymap_dump(lm, NULL), -EINVAL);
	cr_assert_eq(lazymap_stats(lm, NULL), -EINVAL);
}

Test(errors, closed_handle_is_ebadf)
{
	struct lazymap *x = open_or_skip(NULL);
	struct lazymap_stats st;
	void *p;

	cr_assert_eq(lazymap_map(x, &p, 4096, RW, ANON, -1, 0), 0);
	cr_assert_eq(lazymap_close(x), 0);
	cr_assert_eq(lazymap_close(x), -EBADF);
	cr_assert_eq(lazymap_map(x, &p, 4096, RW, ANON, -1, 0), -EBADF);
	cr_assert_eq(lazymap_map_fill(x, &p, 4096, RW, fill_ones, NULL), -EBADF);
	cr_assert_eq(lazymap_unmap(x, p, 4096), -EBADF);
	cr_assert_eq(lazymap_protect(x, p, 4096, PROT_READ), -EBADF);
	cr_assert_eq(lazymap_prefetch(x, p, 4096), -EBADF);
	cr_assert_eq(lazymap_sync(x, p, 4096), -EBADF);
	cr_assert_eq(lazymap_stats(x, &st), -EBADF);
	cr_assert_eq(lazymap_dump(x, stdout), -EBADF);
	cr_assert_eq(lazymap_close(NULL), -EBADF);
	cr_assert_eq(lazymap_stats((struct lazymap *)&st, &st), -EBADF);
	/* the region went with the handle */
	cr_assert_eq(msync(p, 4096, MS_ASYNC), -1);
	cr_assert_eq(errno, ENOMEM);
}

/* As mmap: a shared map may write only through a descriptor that may. */
Test(errors, shared_writable_file_mappings_need_a_writable_descriptor, .init = setup,
     .fini = teardown)
{
	int fd = open("/proc/self/exe", O_RDONLY);
	void *p;

	cr_assert_geq(fd, 0);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0),
		     -EACCES);
	expect_regions(0);
	cr_assert_eq(lazymap_map(lm, &p, 4096, PROT_READ, LAZYMAP_SHARED, fd, 0), 0);
	expect_regions(1);
	cr_assert_eq(lazymap_protect(lm, p, 4096, PROT_READ | PROT_WRITE), -EACCES);
	cr_assert_eq(lazymap_unmap(lm, p, 4096), 0);
	close(fd);
}

/* A fill callback calling back into the library that serves it. */
struct reentry {
	struct lazymap *lm, *other;
	void *region;
	int unmap_ret, close_ret, protect_ret, map_ret, map_fill_ret, dump_ret, prefetch_ret,
		sync_ret, stats_ret, other_map_ret, other_unmap_ret, done;
	uint64_t regions;
};

/*
 * The callback runs on a handler thread; the test thread waits for it in the
 * kernel (its fault), which ThreadSanitizer cannot see: the acquire here and
 * the release at the end make the hand-over visible to it.
 */
static int fill_reenter(void *page, size_t len, uint64_t offset, void *arg)
{
	struct reentry *r = __atomic_load_n((struct reentry **)arg, __ATOMIC_ACQUIRE);
	struct lazymap_stats st = { 0 };
	FILE *null = fopen("/dev/null", "w");
	void *p;

	(void)offset;
	r->unmap_ret = lazymap_unmap(r->lm, r->region, 4096);
	r->protect_ret = lazymap_protect(r->lm, r->region, 4096, PROT_READ);
	r->close_ret = lazymap_close(r->lm);
	r->map_ret = lazymap_map(r->lm, &p, 4096, RW, ANON, -1, 0);
	r->map_fill_ret = lazymap_map_fill(r->lm, &p, 4096, RW, fill_ones, NULL);
	r->dump_ret = lazymap_dump(r->lm, null);
	r->prefetch_ret = lazymap_prefetch(r->lm, r->region, 4096);
	r->sync_ret = lazymap_sync(r->lm, r->region, 4096);
	r->stats_ret = lazymap_stats(r->lm, &st);
	r->regions = st.regions;
	/* another lazymap is not locked by this handler: it just works */
	r->other_map_ret = lazymap_map(r->other, &p, 4096, RW, ANON, -1, 0);
	if (r->other_map_ret == 0) {
		((char *)p)[0] = 1;
		r->other_unmap_ret = lazymap_unmap(r->other, p, 4096);
	}
	fclose(null);
	memset(page, 2, len);
	__atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
	return 0;
}

Test(errors, fill_callback_cannot_deadlock, .init = setup, .fini = teardown)
{
	struct reentry r = { .lm = lm }, *shared = NULL;
	char *p;

	r.other = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, 4096, RW, fill_reenter, &shared), 0);
	r.region = p;
	__atomic_store_n(&shared, &r, __ATOMIC_RELEASE);
	cr_assert_eq(p[10], 2);
	cr_assert_eq(__atomic_load_n(&r.done, __ATOMIC_ACQUIRE), 1);
	cr_assert_eq(r.unmap_ret, -EDEADLK);
	cr_assert_eq(r.protect_ret, -EDEADLK);
	cr_assert_eq(r.close_ret, -EDEADLK);
	cr_assert_eq(r.map_ret, -EDEADLK);
	cr_assert_eq(r.map_fill_ret, -EDEADLK);
	cr_assert_eq(r.dump_ret, -EDEADLK);
	cr_assert_eq(r.prefetch_ret, -EDEADLK);
	cr_assert_eq(r.sync_ret, -EDEADLK);
	cr_assert_eq(r.stats_ret, 0);
	cr_assert_eq(r.regions, 1);
	cr_assert_eq(r.other_map_ret, 0);
	cr_assert_eq(r.other_unmap_ret, 0);
	expect_regions(1);
	cr_assert_eq(lazymap_close(r.other), 0);
}

/* A failed open (here: out of file descriptors part-way) cleans up and says why. */
Test(errors, open_out_of_fds)
{
	int status;
	pid_t pid;

	/* Where open cannot succeed at all, there is nothing to run out of. */
	cr_assert_eq(lazymap_close(open_or_skip(&(struct lazymap_opts){ .handler_threads = 3 })), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct rlimit rl;
		struct lazymap *x;
		int fails = 0;

		/* Walk the limit up so that open fails at every step of its setup. */
		for (rlim_t lim = 4; lim < 24; lim++) {
			int ret;

			if (getrlimit(RLIMIT_NOFILE, &rl))
				_exit(10);
			rl.rlim_cur = lim;
			if (setrlimit(RLIMIT_NOFILE, &rl))
				_exit(10);
			ret = lazymap_open(&x, &(struct lazymap_opts){ .handler_threads = 3 });
			if (ret == 0) {
				if (lazymap_close(x))
					_exit(11);
				continue;
			}
			if (ret != -EMFILE && ret != -ENFILE)
				_exit(12);
			fails++;
		}
		_exit(fails > 0 ? 0 : 13);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

/*
 * Without root and without vm.unprivileged_userfaultfd, userfaultfd is
 * refused: lazymap_open must say -EPERM, not crash or hang.
 */
Test(errors, no_userfaultfd_access_is_eperm)
{
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
	int sysctl = -1, status;
	pid_t pid;

	if (f) {
		if (fscanf(f, "%d", &sysctl) != 1)
			sysctl = -1;
		fclose(f);
	}
	if (geteuid() != 0 || sysctl != 0 || access("/dev/userfaultfd", F_OK) == 0) {
		struct stat sb;

		/* /dev/userfaultfd open to everyone would let an unprivileged user in. */
		if (geteuid() != 0 || sysctl != 0 ||
		    (stat("/dev/userfaultfd", &sb) == 0 && (sb.st_mode & 0006)))
			cr_skip_test("needs root and vm.unprivileged_userfaultfd=0 (have euid %d, sysctl %d)",
				     (int)geteuid(), sysctl);
	}
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct lazymap *x;

		if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(100);
		_exit(lazymap_open(&x, NULL) == -EPERM ? 0 : 1);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "child: open did not return -EPERM (status %d)",
		     WEXITSTATUS(status));
}
