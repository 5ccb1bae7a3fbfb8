// SPDX-License-Identifier: MIT
/*
 * Sources: what produces a VMA's pages (zeros, a fill callback, a file),
 * behind one small ops table so that the fault path never switches on the
 * kind, and the per-page state every kind shares.
 */
#include <errno.h>
#include <sys/mman.h>

#include "internal.h"

static int source_alloc(size_t npages, const struct source_ops *ops, struct source **srcp)
{
	struct source *src = calloc(1, sizeof(*src));

	if (!src)
		return -ENOMEM;
	src->ops = ops;
	src->npages = npages;
	atomic_init(&src->refs, 1);
	*srcp = src;
	if (ops->cached)
		return 0; /* a file's pages' state is its cache's */
	/*
	 * One byte per page. A large region's is reserved, not committed: a
	 * 1 TiB region costs a page of state per 4096 pages touched, not 256
	 * MiB up front. A small one's comes from the heap: a mapping of its
	 * own would cost a VMA (vm.max_map_count) and land in the holes the
	 * program's own munmap and mremap leave, where the program may map
	 * again at once.
	 */
	if (npages <= STATE_HEAP_MAX) {
		src->state = calloc(npages, 1);
	} else {
		src->state = mmap(NULL, npages, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		src->state_mapped = src->state != MAP_FAILED;
		if (!src->state_mapped)
			src->state = NULL;
	}
	if (!src->state) {
		free(src);
		return -ENOMEM;
	}
	return 0;
}

static const struct source_ops zero_ops = {
	.name = "zero",
};

int lzm_source_new_zero(size_t npages, struct source **srcp)
{
	return source_alloc(npages, &zero_ops, srcp);
}

static int fill_fill(struct source *src, void *buf, uint64_t pgoff, size_t npages)
{
	int ret = src->fill(buf, npages << lzm_page_shift, (src->base + pgoff) << lzm_page_shift,
			    src->arg);

	return ret < 0 ? ret : 0;
}

static const struct source_ops fill_ops = {
	.name = "fill",
	.fill = fill_fill,
};

int lzm_source_new_fill(size_t npages, lazymap_fill_fn fill, void *arg, struct source **srcp)
{
	int ret = source_alloc(npages, &fill_ops, srcp);

	if (ret == 0) {
		(*srcp)->fill = fill;
		(*srcp)->arg = arg;
	}
	return ret;
}

/* ------------------------------------------------------------ files */

static int file_read(struct source *src, uint64_t pgoff, size_t done, bool buffered, int *fd,
		     uint64_t *off, bool *nowait)
{
	struct cache *c = src->cache;

	*off = ((src->base + pgoff) << lzm_page_shift) + done;
	/* O_DIRECT wants aligned offsets: a continuation that is not goes
	 * through the page cache (it only happens next to the end of file). */
	bool direct = src->direct && !buffered && page_aligned(done);

	/* c->dfd is set before a direct source exists: only they read it */
	*fd = direct ? c->dfd : c->fd;
	*nowait = direct && !atomic_load_explicit(&c->no_nowait, memory_order_relaxed);
	return 0;
}

/* Pages with data: up to and with the one holding the last byte. */
static size_t file_extent(struct source *src, uint64_t pgoff, size_t npages)
{
	struct cache *c = src->cache;
	uint64_t first = src->base + pgoff;
	uint64_t size = atomic_load_explicit(&c->size, memory_order_relaxed);
	uint64_t end = (size + lzm_page_size - 1) >> lzm_page_shift;

	if (first >= end) {
		/* beyond the end we knew: the file may have grown since */
		size = lzm_cache_refresh_size(c);
		end = (size + lzm_page_size - 1) >> lzm_page_shift;
		if (first >= end)
			return 0;
	}
	return end - first < npages ? (size_t)(end - first) : npages;
}

static void file_release(struct source *src)
{
	lzm_cache_put(src->cache);
}

static const struct source_ops file_ops = {
	.name = "file",
	.read = file_read,
	.extent = file_extent,
	.release = file_release,
	.cached = true,
};

/* A copied file region's (lazymap.c): pages of its own, with state, read
 * from the file or copied from its cache (fault.c). */
static const struct source_ops file_copy_ops = {
	.name = "file-copy",
	.read = file_read,
	.extent = file_extent,
	.release = file_release,
};

int lzm_source_new_file(size_t npages, struct cache *c, uint64_t file_pgoff, bool direct,
			bool copied, struct source **srcp)
{
	int ret = source_alloc(npages, copied ? &file_copy_ops : &file_ops, srcp);

	if (ret == 0) {
		lzm_cache_get(c);
		(*srcp)->cache = c;
		(*srcp)->base = file_pgoff;
		(*srcp)->direct = direct;
	}
	return ret;
}

/* ------------------------------------------------------------ NBD exports */

/* An export is paged as a file is (its cache, its end), read on the
 * handlers' connections instead of their rings. */
static const struct source_ops nbd_ops = {
	.name = "nbd",
	.submit = lzm_nbd_submit,
	.extent = file_extent,
	.release = file_release,
	.cached = true,
};

static const struct source_ops nbd_copy_ops = {
	.name = "nbd-copy",
	.submit = lzm_nbd_submit,
	.extent = file_extent,
	.release = file_release,
};

int lzm_source_new_nbd(size_t npages, struct cache *c, uint64_t pgoff, bool copied,
		       struct source **srcp)
{
	int ret = source_alloc(npages, copied ? &nbd_copy_ops : &nbd_ops, srcp);

	if (ret == 0) {
		lzm_cache_get(c);
		(*srcp)->cache = c;
		(*srcp)->base = pgoff;
	}
	return ret;
}

int lzm_source_clone(const struct source *src, uint64_t base, size_t npages, struct source **srcp)
{
	struct source *c;
	int ret = source_alloc(npages, src->ops, &c);

	if (ret)
		return ret;
	c->fill = src->fill;
	c->arg = src->arg;
	c->cache = src->cache;
	if (c->cache)
		lzm_cache_get(c->cache);
	c->maywrite = src->maywrite;
	c->base = base;
	c->direct = src->direct;
	atomic_init(&c->slow, atomic_load_explicit(&src->slow, memory_order_relaxed));
	*srcp = c;
	return 0;
}

int lzm_source_copied_of(const struct source *src, struct source **srcp)
{
	int ret = src->cache->nbd ? lzm_source_new_nbd(src->npages, src->cache, src->base, true, srcp)
				  : lzm_source_new_file(src->npages, src->cache, src->base, src->direct, true, srcp);

	if (ret == 0)
		(*srcp)->maywrite = src->maywrite;
	return ret;
}

/* ------------------------------------------------------------ references */

void lzm_source_get(struct source *src)
{
	if (src)
		atomic_fetch_add_explicit(&src->refs, 1, memory_order_relaxed);
}

void lzm_source_put(struct source *src)
{
	if (!src || atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (src->ops->release)
		src->ops->release(src);
	lzm_swap_drop_table(src);
	if (src->state_mapped)
		munmap((void *)src->state, src->npages);
	else
		free((void *)src->state);
	free(src);
}
