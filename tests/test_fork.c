// SPDX-License-Identifier: MIT
/*
 * A lazymap belongs to the process that opened it: a forked child's calls on
 * an inherited handle are -EBADF and leave the parent's lazymap as it was.
 */
#include <criterion/criterion.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

Test(fork, a_child_cannot_touch_its_parents_lazymap, .timeout = 60)
{
	struct lazymap *lm = open_or_skip(NULL);
	size_t ps = pgsz(), len = 256 * ps;
	struct lazymap_stats st;
	char *p, *z;
	int status;
	pid_t pid;

	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, len, PROT_READ, fill_5a, NULL), 0);
	cr_assert_eq(lazymap_map(lm, (void **)&z, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(p[0], 0x5a);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct lazymap_stats cst;
		void *q;
		int bad = 0;

		/* Every call: -EBADF, and nothing done to the parent's regions. */
		bad |= lazymap_unmap(lm, p, len) != -EBADF;
		bad |= (lazymap_protect(lm, p, len, PROT_NONE) != -EBADF) << 1;
		bad |= (lazymap_map(lm, &q, len, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0) !=
			-EBADF) << 2;
		bad |= (lazymap_stats(lm, &cst) != -EBADF) << 3;
		bad |= (lazymap_prefetch(lm, p, len) != -EBADF) << 4;
		bad |= (lazymap_close(lm) != -EBADF) << 5;
		_exit(bad);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child did not exit (status %#x)", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child's calls that did not give -EBADF: mask %#x",
		     WEXITSTATUS(status));
	/* The parent's regions are still served, from their sources. */
	for (size_t i = 1; i < len / ps; i += 17)
		cr_assert_eq(p[i * ps], 0x5a, "page %zu of the fill region after the child", i);
	cr_assert_eq(z[100 * ps], 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.broken, 0);
	cr_assert_eq(st.regions, 2);
	cr_assert_eq(lazymap_close(lm), 0);
}
