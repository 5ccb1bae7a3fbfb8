// SPDX-License-Identifier: MIT
/*
 * Small things every file needs: the page size, known before any lazymap
 * exists, the assertion sink, and eventfd signals.
 */
#include <time.h>
#include <unistd.h>

#include "internal.h"

size_t lzm_page_size;
unsigned lzm_page_shift;

__attribute__((constructor)) static void util_init(void)
{
	long sz = sysconf(_SC_PAGESIZE);

	lzm_page_size = sz > 0 ? (size_t)sz : 4096;
	lzm_page_shift = (unsigned)__builtin_ctzl(lzm_page_size);
}

uint64_t lzm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void lzm_efd_signal(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) < 0)
		(void)0; /* only an overflowing counter fails, and it is readable then */
}

void lzm_efd_drain(int fd)
{
	uint64_t val;

	if (read(fd, &val, sizeof(val)) < 0)
		(void)0; /* nothing signalled since: fine */
}

_Noreturn void lzm_assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "liblazymap: assertion failed: %s (%s:%d)\n", what, file, line);
	abort();
}
