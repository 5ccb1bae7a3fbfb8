// SPDX-License-Identifier: MIT
/*
 * What a lazymap costs before it fills anything: opening commits no staging
 * memory, whatever readahead_max asks for, so that many lazymaps, or one with
 * a large window, cost their threads and bookkeeping and no more.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "common.h"

Test(resources, a_large_readahead_commits_nothing_at_open)
{
	struct lazymap_opts o = { .handler_threads = 2, .readahead_max = 64 << 20 };
	long before = rss_kib();
	struct lazymap *lm = open_or_skip(&o);
	long grew = rss_kib() - before;

	/* Before: 9 x 64 MiB staging per handler, 1.18 GiB, touched at open. */
	cr_assert_lt(grew, 8 * 1024, "open with readahead_max 64 MiB grew RSS by %ld KiB", grew);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(resources, a_hundred_lazymaps_cost_their_bookkeeping)
{
	/* Before: 9 x 4 MiB of staging touched at open, 36 MiB each. */
	struct lazymap_opts o = { .handler_threads = 1, .readahead_max = 4 << 20 };
	struct lazymap *lm[100];
	long before = rss_kib(), grew;

	for (int i = 0; i < 100; i++)
		lm[i] = open_or_skip(&o);
	grew = rss_kib() - before;
	/* Less than half a readahead window each: the thread, its ring, and
	 * what a sanitizer adds per thread (TSan: about 1 MiB), no staging. */
	cr_assert_lt(grew, 100 * 2 * 1024, "100 lazymaps grew RSS by %ld KiB", grew);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(lazymap_close(lm[i]), 0);
}
