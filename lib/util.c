// SPDX-License-Identifier: MIT
/*
 * Small things every file needs: the page size, known before any lazymap
 * exists, and the assertion sink.
 */
#include <unistd.h>

#include "internal.h"

size_t page_size;
unsigned page_shift;

__attribute__((constructor)) static void util_init(void)
{
	long sz = sysconf(_SC_PAGESIZE);

	page_size = sz > 0 ? (size_t)sz : 4096;
	page_shift = (unsigned)__builtin_ctzl(page_size);
}

_Noreturn void lazymap_assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "liblazymap: assertion failed: %s (%s:%d)\n", what, file, line);
	abort();
}
