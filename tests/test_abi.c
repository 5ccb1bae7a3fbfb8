// SPDX-License-Identifier: MIT
/*
 * The structs that grow: a caller built against an older, smaller
 * lazymap_opts or lazymap_stats keeps working, and a newer one is refused
 * clearly, never read or written past what it declared.
 */
#include <criterion/criterion.h>
#include <stddef.h>
#include <sys/mman.h>

#include "common.h"

int lzm_quiesce(struct lazymap *lm, unsigned timeout_ms); /* lib/lazymap.c */

/* Copies of the first (version 0) structs, as a program built then has them. */
struct opts_v0 {
	unsigned handler_threads;
	unsigned queue_depth;
	size_t readahead_max;
	size_t resident_limit;
	const char *daemon;
	unsigned install;
	unsigned spin_us;
};

struct stats_v0 {
	uint64_t faults, pages_filled, bytes_read, bytes_written, evictions, io_errors, zero_pages,
		fill_calls, copy_ioctls, move_ioctls, zeropage_ioctls, coalesced, unowned, reads,
		sleeps, prefetched, max_batch, regions, file_reads, short_reads, readahead_pages,
		inflight_max;
};

Test(abi, version_0_sizes_are_what_the_header_says)
{
	cr_assert_eq(sizeof(struct opts_v0), LAZYMAP_OPTS_SIZE_VER0);
	cr_assert_eq(sizeof(struct stats_v0), LAZYMAP_STATS_SIZE_VER0);
	/* The structs grew since: the scheme is exercised, not assumed. */
	cr_assert_gt(sizeof(struct lazymap_opts), LAZYMAP_OPTS_SIZE_VER0);
	cr_assert_gt(sizeof(struct lazymap_stats), LAZYMAP_STATS_SIZE_VER0);
}

static int fill_offset(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)arg;
	for (size_t i = 0; i < len / 8; i++)
		((uint64_t *)page)[i] = offset + i * 8;
	return 0;
}

Test(abi, a_caller_built_against_version_0_still_works)
{
	struct opts_v0 o = { .handler_threads = 2, .readahead_max = 64 << 10 };
	struct {
		struct stats_v0 st;
		uint64_t canary[4];
	} out;
	struct lazymap *lm;
	uint64_t *p;
	int ret;

	ret = lazymap_open_sized(&lm, (const struct lazymap_opts *)&o, sizeof(o));
	if (ret == -EPERM || ret == -ENOSYS)
		cr_skip_test("no userfaultfd here: %s", strerror(-ret));
	cr_assert_eq(ret, 0, "open with a version 0 struct: %s", strerror(-ret));
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, 1 << 20, PROT_READ, fill_offset, NULL), 0);
	cr_assert_eq(p[1000], 8000);

	cr_assert_eq(lzm_quiesce(lm, 10000), 0); /* the fault-around after the wake-up */
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(lazymap_stats_sized(lm, (struct lazymap_stats *)&out.st, sizeof(out.st)), 0);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(out.canary[i], 0xa5a5a5a5a5a5a5a5ull,
			     "lazymap_stats wrote past a version 0 struct (word %d)", i);
	cr_assert_eq(out.st.faults, 1, "one fault, got %lu", (unsigned long)out.st.faults);
	cr_assert_eq(out.st.regions, 1);
	cr_assert_geq(out.st.fill_calls, 1);
	/* readahead_max came through: a lone fault fills the part of its aligned
	 * 64 KiB block that lies in the region, no more */
	uintptr_t at = (uintptr_t)&p[1000], block = at & ~(uintptr_t)0xffff;
	uintptr_t lo = block > (uintptr_t)p ? block : (uintptr_t)p;

	cr_assert_eq(out.st.pages_filled, (block + 0x10000 - lo) / pgsz(), "pages_filled %lu",
		     (unsigned long)out.st.pages_filled);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(abi, a_newer_caller_is_refused_only_for_what_it_sets)
{
	struct {
		struct lazymap_opts o;
		uint64_t future[2];
	} newer = { 0 };
	struct lazymap *lm;
	int ret;

	/* An option this library does not have: -E2BIG, as openat2 says. */
	newer.future[1] = 1;
	cr_assert_eq(lazymap_open_sized(&lm, &newer.o, sizeof(newer)), -E2BIG);
	/* Too small to be any version. */
	cr_assert_eq(lazymap_open_sized(&lm, &newer.o, LAZYMAP_OPTS_SIZE_VER0 - 1), -EINVAL);
	cr_assert_eq(lazymap_open_sized(&lm, &newer.o, 0), -EINVAL);
	/* Larger than any struct of ours will be: refused before it is read. */
	cr_assert_eq(lazymap_open_sized(&lm, &newer.o, 4097), -E2BIG);
	cr_assert_eq(lazymap_open_sized(&lm, &newer.o, SIZE_MAX), -E2BIG);

	/* Zero beyond our struct: nothing asked that we lack. */
	newer.future[1] = 0;
	ret = lazymap_open_sized(&lm, &newer.o, sizeof(newer));
	if (ret == -EPERM || ret == -ENOSYS)
		cr_skip_test("no userfaultfd here: %s", strerror(-ret));
	cr_assert_eq(ret, 0, "open with a larger, zero-tailed struct: %s", strerror(-ret));

	struct {
		struct lazymap_stats st;
		uint64_t future[3];
	} st;

	memset(&st, 0xa5, sizeof(st));
	cr_assert_eq(lazymap_stats_sized(lm, &st.st, sizeof(st)), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(st.future[i], 0, "a counter this library lacks must read 0");
	cr_assert_eq(st.st.faults, 0);
	cr_assert_eq(st.st.broken, 0);
	cr_assert_eq(lazymap_stats_sized(lm, &st.st, LAZYMAP_STATS_SIZE_VER0 - 8), -EINVAL);
	cr_assert_eq(lazymap_stats_sized(lm, NULL, sizeof(st.st)), -EINVAL);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* The macros pass the header's own sizes; NULL options still mean defaults. */
Test(abi, the_macros_pass_this_headers_sizes)
{
	struct lazymap_stats st;
	struct lazymap *lm;
	int ret = lazymap_open(&lm, NULL);

	if (ret == -EPERM || ret == -ENOSYS)
		cr_skip_test("no userfaultfd here: %s", strerror(-ret));
	cr_assert_eq(ret, 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.regions, 0);
	cr_assert_eq(lazymap_close(lm), 0);
}
