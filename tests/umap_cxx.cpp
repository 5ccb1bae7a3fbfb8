// SPDX-License-Identifier: MIT
/*
 * <umap/umap.h> from C++: umap's own programs are C++, so the header must
 * compile there (built with -Wall -Wextra -Werror -pedantic, C++11) and its
 * functions link from there (extern "C"). Every function it declares is
 * called, umap_adapt_pagesize and umapcfg_get_system_page_size too. What
 * needs no userfaultfd is checked first: umap_has_write_support and the
 * getters (the configuration is read before the lazymap opens);
 * then a region of a file is mapped, read, written, flushed and unmapped:
 * without a userfaultfd the test exits 77 (skipped), saying why.
 */
#include <umap/umap.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__,     \
				     __LINE__, #cond);                         \
			std::fprintf(stderr, __VA_ARGS__);                     \
			std::fputc('\n', stderr);                              \
			failures++;                                            \
		}                                                              \
	} while (0)

/* The default a getter reports where the environment does not say. */
static bool unset(const char *name)
{
	return std::getenv(name) == nullptr;
}

int main()
{
	const uint64_t sys = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

	CHECK(umap_has_write_support() == 1, "%d", umap_has_write_support());
	CHECK(umapcfg_get_system_page_size() == static_cast<long>(sys), "%ld, sysconf says %llu",
	      umapcfg_get_system_page_size(), static_cast<unsigned long long>(sys));
	if (unset("UMAP_PAGESIZE"))
		CHECK(umapcfg_get_umap_page_size() == sys, "%llu, the system's is %llu",
		      static_cast<unsigned long long>(umapcfg_get_umap_page_size()),
		      static_cast<unsigned long long>(sys));
	if (unset("UMAP_MAX_FAULT_EVENTS"))
		CHECK(umapcfg_get_max_fault_events() == 256, "%llu",
		      static_cast<unsigned long long>(umapcfg_get_max_fault_events()));
	CHECK(umapcfg_get_num_fillers() > 0, "no fillers");
	CHECK(umapcfg_get_num_evictors() > 0, "no evictors");
	CHECK(umapcfg_get_max_pages_in_buffer() > 0, "no buffer");
	if (unset("UMAP_READ_AHEAD"))
		CHECK(umapcfg_get_read_ahead() == 0, "%llu",
		      static_cast<unsigned long long>(umapcfg_get_read_ahead()));
	if (unset("UMAP_EVICT_LOW_WATER_THRESHOLD"))
		CHECK(umapcfg_get_evict_low_water_threshold() == 70, "%d",
		      umapcfg_get_evict_low_water_threshold());
	if (unset("UMAP_EVICT_HIGH_WATER_THRESHOLD"))
		CHECK(umapcfg_get_evict_high_water_threshold() == 90, "%d",
		      umapcfg_get_evict_high_water_threshold());
	if (failures)
		return 1;

	/* a file of two umap pages, counting bytes */
	const size_t ups = umapcfg_get_umap_page_size(), len = 2 * ups;
	char path[] = "/var/tmp/lazymap-umap-cxx.XXXXXX";
	int fd = mkstemp(path);
	unsigned char *bytes = static_cast<unsigned char *>(std::malloc(len));

	if (fd < 0 || !bytes) {
		std::perror("mkstemp");
		return 1;
	}
	unlink(path);
	for (size_t i = 0; i < len; i++)
		bytes[i] = static_cast<unsigned char>(i * 7 + i / 4096);
	if (pwrite(fd, bytes, len, 0) != static_cast<ssize_t>(len)) {
		std::perror("pwrite");
		return 1;
	}

	void *r = umap(nullptr, len, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);

	if (r == UMAP_FAILED && (errno == EPERM || errno == ENOSYS)) {
		std::printf("SKIP: umap: %s (no userfaultfd for this process); "
			    "the header compiled and the getters were checked\n",
			    std::strerror(errno));
		return 77;
	}
	if (r == UMAP_FAILED) {
		std::fprintf(stderr, "FAIL: umap: %s\n", std::strerror(errno));
		return 1;
	}
	unsigned char *p = static_cast<unsigned char *>(r);
	struct umap_prefetch_item item = { p + ups };

	umap_prefetch(1, &item);
	umap_fetch_and_pin(reinterpret_cast<char *>(p), len);
	CHECK(std::memcmp(p, bytes, len) == 0, "the region does not read the file");
	p[ups + 5] = bytes[ups + 5] ^= 0xff;
	CHECK(umap_flush() == 0, "%s", std::strerror(errno));

	void *q = umap_variable(nullptr, len, PROT_READ, UMAP_PRIVATE, fd, 0, ups);

	CHECK(q != UMAP_FAILED, "umap_variable: %s", std::strerror(errno));
	if (q != UMAP_FAILED) {
		/* a page of two umap pages: the whole region; on no region, EINVAL */
		errno = 0;
		umap_adapt_pagesize(q, len);
		CHECK(errno == 0, "umap_adapt_pagesize: %s", std::strerror(errno));
		umap_adapt_pagesize(static_cast<char *>(q) + ups, ups);
		CHECK(errno == EINVAL, "umap_adapt_pagesize inside a region: %s",
		      std::strerror(errno));
		CHECK(std::memcmp(q, bytes, len) == 0, "umap_variable's region");
		CHECK(uunmap(q, len) == 0, "%s", std::strerror(errno));
	}
	CHECK(uunmap(p, len) == 0, "%s", std::strerror(errno));

	unsigned char *got = static_cast<unsigned char *>(std::malloc(len));

	CHECK(got && pread(fd, got, len, 0) == static_cast<ssize_t>(len) &&
		      std::memcmp(got, bytes, len) == 0,
	      "the file after umap_flush and uunmap");
	std::free(got);
	std::free(bytes);
	close(fd);
	return failures ? 1 : 0;
}
