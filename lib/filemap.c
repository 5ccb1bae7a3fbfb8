// SPDX-License-Identifier: MIT
/*
 * The fault path of file regions (the kernel's filemap_fault): a hole in the
 * file's cache is read into it, a page already there is mapped, and the first
 * write to a clean page of a shared region is recorded (write-protect faults).
 *
 * Private regions are registered for missing faults only: a page in the
 * cache is mapped by the kernel itself, with its fault-around, and no message
 * reaches us; after a fill we only wake the toucher. Shared regions are
 * registered for minor and write-protect faults too, so that every page is
 * mapped write-protected (UFFDIO_CONTINUE_MODE_WP) and its first write is
 * seen: minor faults cost a round trip where the kernel would map alone, but
 * we map a whole run of cached pages per message where the kernel, with
 * write protection on, maps one page per fault.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

/* Pages of the cache one minor fault of a shared region maps. */
#define MINOR_RUN 16

/*
 * Map [addr, addr + len) of a shared region from the cache. EEXIST: another
 * fault mapped that page first; go on past it. Any other failure wakes the
 * rest, whose touchers fault again. Returns the bytes mapped or skipped.
 */
static size_t map_run(struct mm *mm, uintptr_t addr, size_t len, bool wp)
{
	size_t at = 0;

	while (at < len) {
		size_t done = 0;
		int ret = lzm_uffd_continue(mm->uffd, addr + at, len - at, wp, &done);

		at += done;
		if (ret == 0 || (ret == -EAGAIN && done))
			continue;
		if (ret == -EEXIST) {
			lzm_uffd_wake(mm->uffd, addr + at, lzm_page_size);
			at += lzm_page_size;
			continue;
		}
		lzm_uffd_wake(mm->uffd, addr + at, len - at);
		break;
	}
	return at;
}

/*
 * The page at addr (file page fp) is in the cache: have it mapped. Private:
 * the kernel maps it when the toucher faults again. Shared: we map it and the
 * cached pages after it, write-protected; for a write, the page is dirty and
 * writable at once (under the cache's lock: a write-back in progress must
 * see it dirty before it can be written to). mm->lock held.
 */
static void map_cached(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
		       uint64_t fp, size_t n, bool write)
{
	struct cache *c = v->src->cache;

	if (!vma_writeback(v)) {
		lzm_uffd_wake(mm->uffd, addr, n << lzm_page_shift);
		return;
	}
	if (write) {
		pthread_mutex_lock(&c->lock);
		if (lzm_cache_has(c, fp)) {
			lzm_cache_dirty(c, fp);
			map_run(mm, addr, lzm_page_size, false);
		} else {
			/* dropped since we looked (the program punched it, or
			 * eviction claimed it): the write faults again */
			lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
		}
		pthread_mutex_unlock(&c->lock);
		stat_add(&h->stats.wp_faults, 1);
		addr += lzm_page_size;
		n--;
	}
	if (n)
		map_run(mm, addr, n << lzm_page_shift, true);
}

/* Cached pages from fp on, at most max (and within one chunk of state). */
static size_t cached_run(struct cache *c, uint64_t fp, size_t max)
{
	size_t n = 0;

	max = cache_run_max(fp, max);
	while (n < max && lzm_cache_has(c, fp + n))
		n++;
	return n;
}

/* A write to a clean page of a shared region (of mm, on uffd): dirty from now on. */
static void wp_fault(struct handler *h, struct mm *mm, int uffd, struct vma *v, uintptr_t addr,
		     uint64_t fp)
{
	struct cache *c = v->src->cache;
	_Atomic uint8_t *s = lzm_cache_state(c, fp);
	int ret;

	stat_add(&h->stats.wp_faults, 1);
	for (;;) {
		pthread_mutex_lock(&c->lock);
		if (!s || !(atomic_load_explicit(s, memory_order_acquire) & CP_BUSY))
			break;
		pthread_mutex_unlock(&c->lock);
		/* Being evicted (claimed under this lock: lzm_cache_evict): wait
		 * as for a page being read; the write then faults it back in. */
		switch (lzm_cache_claim(c, s, mm, addr, fp)) {
		case CLAIM_COALESCED:
			return;
		case CLAIM_OWNED: /* gone already: a hole */
			lzm_cache_release(c, fp, 1, false);
			lzm_uffd_wake(uffd, addr, lzm_page_size);
			return;
		case CLAIM_PRESENT: /* eviction let it be */
			continue;
		}
	}
	if (!s || !(atomic_load_explicit(s, memory_order_acquire) & CP_CACHED)) {
		/* evicted before we read the message (a hole now): the write
		 * faults again and reads it back; a hole never turns dirty */
		pthread_mutex_unlock(&c->lock);
		lzm_uffd_wake(uffd, addr, lzm_page_size);
		return;
	}
	lzm_cache_dirty(c, fp);
	ret = lzm_uffd_writeprotect(uffd, addr, lzm_page_size, false);
	pthread_mutex_unlock(&c->lock);
	if (ret)
		lzm_uffd_wake(uffd, addr, lzm_page_size); /* gone or changing: retry */
}

void lzm_filemap_wp_broken(struct handler *h, struct mm *mm, uintptr_t addr)
{
	struct vma *v;

	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, addr);
	if (v && v->src->ops->cached && vma_writeback(v))
		wp_fault(h, mm, mm->uffd_keep, v, addr, vma_file_page(v, addr));
	else
		lzm_uffd_writeprotect(mm->uffd_keep, addr, lzm_page_size, false);
	pthread_rwlock_unlock(&mm->lock);
}

/*
 * Grow the run of n pages claimed from page *idx (at *addr, its state *s) by
 * the holes of [first, first + blk) next to it, back and on; blk lies in
 * idx's chunk and VMA. Returns the run's length, idx and addr its start.
 */
static size_t claim_block(_Atomic uint8_t *s, uint64_t first, size_t blk, uint64_t *idx,
			  uintptr_t *addr, size_t n)
{
	_Atomic uint8_t *s0 = s - (*idx - first);
	size_t back = 0;

	while (*idx - back > first && lzm_claim_fresh(s0 + (*idx - back - 1 - first), 1))
		back++;
	if (first + blk > *idx + n)
		n += lzm_claim_fresh(s + n, first + blk - *idx - n);
	*addr -= back << lzm_page_shift;
	*idx -= back;
	return n + back;
}

/*
 * The block of the file a fill unit makes the fault at file page fp read
 * (lazymap_fill_unit), as far as the VMA, the file and fp's chunk go (a
 * run is one chunk's): [*first, *end) in source pages, holding fp; false
 * when fp lies past the file's end (no block: the fault alone decides).
 */
static bool unit_block(const struct vma *v, uint64_t fp, uint64_t *first, uint64_t *end)
{
	uint64_t base = v->src->base, chunk = fp & ~(uint64_t)(CHUNK_PAGES - 1);
	uint64_t f = fp - fp % v->fill_unit, e = f + v->fill_unit; /* file pages */
	uint64_t vfirst = base + v->pgoff, vend = vfirst + ((v->end - v->start) >> lzm_page_shift);

	if (f < vfirst)
		f = vfirst;
	if (f < chunk)
		f = chunk;
	if (e > vend)
		e = vend;
	if (e > chunk + CHUNK_PAGES)
		e = chunk + CHUNK_PAGES;
	*first = f - base;
	*end = e - base;
	if (v->src->ops->extent)
		*end = *first + v->src->ops->extent(v->src, *first, (size_t)(*end - *first));
	return *end > fp - base; /* past the file's end: the fault alone decides */
}

/*
 * The holes of the unit's block [first, end) that the fault's own run
 * [run, run + n) did not take, pages in cache or being read between them:
 * claimed and begun as runs of their own in reqs (at most max).
 */
static size_t unit_holes(struct handler *h, struct mm *mm, struct vma *v, uint64_t first,
			 uint64_t end, uint64_t run, size_t n, struct fill_req **reqs, size_t max)
{
	size_t nreqs = 0;

	for (uint64_t at = first; at < end && nreqs < max;) {
		size_t got;

		if (at >= run && at < run + n) {
			at = run + n;
			continue;
		}
		got = lzm_claim_fresh_at(v, at, (size_t)((at < run ? run : end) - at));
		if (!got) {
			at++;
			continue;
		}
		stat_add(&h->stats.readahead_pages, got);
		reqs[nreqs] = lzm_fault_begin(h, mm, v, v->start + ((at - v->pgoff) << lzm_page_shift),
					      at, got, false, 0);
		if (!reqs[nreqs])
			break;
		nreqs++;
		at += got;
	}
	return nreqs;
}

size_t lzm_filemap_fault(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			 unsigned flags, struct fill_req **reqs, struct fill_req **ahead,
			 size_t *nahead)
{
	struct source *src = v->src;
	struct cache *c = src->cache;
	uint64_t fp = vma_file_page(v, addr), idx = fp - src->base;
	size_t room = (v->end - addr) >> lzm_page_shift, max, n;
	bool write = flags & UFFD_PAGEFAULT_FLAG_WRITE;
	const uintptr_t asked = addr;
	_Atomic uint8_t *s;

	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		wp_fault(h, mm, mm->uffd, v, addr, fp);
		return 0;
	}
	s = lzm_cache_state(c, fp);
	if (!s) {
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size); /* no memory: fault again */
		return 0;
	}
again:
	switch (lzm_cache_claim(c, s, mm, addr, fp)) {
	case CLAIM_COALESCED:
		stat_add(&h->stats.coalesced, 1);
		return 0;
	case CLAIM_PRESENT:
		/*
		 * A missing fault means a hole in the memfd: if we think the
		 * page is there, the program punched it (MADV_REMOVE).
		 */
		if (!(flags & UFFD_PAGEFAULT_FLAG_MINOR) && lzm_cache_recheck(c, fp, 1))
			goto again;
		n = cached_run(c, fp, room < MINOR_RUN ? room : MINOR_RUN);
		if (!n)
			goto again; /* dropped since the claim (another fault's recheck): never wake nobody */
		map_cached(h, mm, v, addr, fp, n, write);
		atomic_fetch_add_explicit(&mm->cache_hits, 1, memory_order_relaxed);
		return 0;
	case CLAIM_OWNED:
		break;
	}
	if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
		/* In the memfd but not in our state: only a write we did not
		 * make puts it there. Believe the kernel, never overwrite it. */
		lzm_cache_release(c, fp, 1, true);
		map_cached(h, mm, v, addr, fp, 1, write);
		return 0;
	}
	/* A hole: read it, with the window the access pattern asks for. */
	max = lzm_ra_window(h->lm, v, idx);
	if (max > room)
		max = room;
	max = cache_run_max(fp, max);
	n = 1 + (max > 1 ? lzm_claim_fresh(s + 1, max - 1) : 0);
	atomic_store_explicit(&v->ra_next, idx + n, memory_order_relaxed);
	if (max == 1) {
		/* random: the holes of the block around it, while that pays */
		uint64_t first;
		size_t blk = lzm_read_around(h, mm, v, idx, &first);

		/* within the file (past its end the fault alone decides), and one chunk */
		if (blk > 1)
			blk = src->ops->extent(src, first, blk);
		if (blk > 1 && idx < first + blk &&
		    ((src->base + first) >> CHUNK_SHIFT) == (fp >> CHUNK_SHIFT) &&
		    ((src->base + first + blk - 1) >> CHUNK_SHIFT) == (fp >> CHUNK_SHIFT)) {
			n = claim_block(s, first, blk, &idx, &addr, n);
		}
	}
	uint64_t ufirst = 0, uend = 0;

	if (v->fill_unit > 1 && unit_block(v, fp, &ufirst, &uend)) {
		/* one run for the whole block when it is all holes (the usual) */
		if (uend > idx + n || ufirst < idx)
			n = claim_block(s - (fp - src->base - idx), ufirst, (size_t)(uend - ufirst),
					&idx, &addr, n);
	}
	stat_add(&h->stats.readahead_pages, n - 1);
	reqs[0] = lzm_fault_begin(h, mm, v, addr, idx, n, write, asked);
	if (!reqs[0])
		return 0;
	reqs[0]->around = addr != asked || n > 1 + (max > 1 ? max - 1 : 0);
	if (n == h->lm->ra_pages)
		*nahead = lzm_readahead_ahead(h, mm, v, idx + n, n, ahead);
	if (ufirst < uend)
		return 1 + unit_holes(h, mm, v, ufirst, uend, idx, n, reqs + 1, FAULT_REQS - 1);
	return 1;
}

void lzm_filemap_finish(struct handler *h, struct fill_req *req, size_t good, bool poison_rest)
{
	struct mm *mm = req->mm;
	struct cache *c = req->src->cache;
	uint64_t fp = req->src->base + req->idx;
	uintptr_t end;
	struct vma *v;
	int ret;

	/* A page that cannot enter the cache (no memory for shmem) is an I/O
	 * error for its toucher, as a failed read is. */
	if (good && (ret = lzm_cache_fill(c, req->buf, good << lzm_page_shift, fp << lzm_page_shift))) {
		lzm_log(h->lm, LOG_ERR, "cannot add %zu pages to the page cache: %s", good,
			strerror(-ret));
		good = 0;
		poison_rest = true;
	}
	stat_add(&h->stats.pages_filled, good);
	lzm_cache_release(c, fp, good, true);
	lzm_cache_release(c, fp + good, req->n - good, false);
	lzm_evict_filled(h->lm, c, fp, good, req->hint);

	/* The toucher: map or wake it (nobody else has its page's address). */
	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, req->addr);
	if (v && (v->src->cache != c || vma_file_page(v, req->addr) != fp))
		v = NULL; /* unmapped or replaced meanwhile */
	end = req->addr + (req->n << lzm_page_shift);
	if (v && end > v->end)
		end = v->end;
	if (!v) {
		if (req->asked)
			lzm_uffd_wake(mm->uffd, req->asked, lzm_page_size);
	} else if (req->asked && req->asked - req->addr < (good << lzm_page_shift)) {
		size_t n = (end - req->addr) >> lzm_page_shift;
		size_t k = (req->asked - req->addr) >> lzm_page_shift, k0 = 0;

		if (n > good)
			n = good;
		/*
		 * Read around a random fault, only the group the kernel's
		 * fault-around would map: the rest is mapped when touched, so
		 * that read-around sees whether it was (readahead.c).
		 */
		if (req->around) {
			/* its group as the kernel's fault-around maps it: aligned
			 * in the address space */
			const uintptr_t gsize = (uintptr_t)MINOR_RUN << lzm_page_shift;
			uintptr_t g0 = req->asked & ~(gsize - 1), g1 = g0 + gsize;

			if (g0 < req->addr)
				g0 = req->addr;
			k0 = (g0 - req->addr) >> lzm_page_shift;
			if (n > (g1 - req->addr) >> lzm_page_shift)
				n = (g1 - req->addr) >> lzm_page_shift;
		}
		/* the pages before the one asked for are only read (a private
		 * region's are woken with it: one wake) */
		if (k > k0 && vma_writeback(v))
			map_cached(h, mm, v, req->addr + (k0 << lzm_page_shift), fp + k0, k - k0,
				   false);
		else
			k = k0;
		map_cached(h, mm, v, req->addr + (k << lzm_page_shift), fp + k, n - k,
			   req->write && k == (req->asked - req->addr) >> lzm_page_shift);
	} else if (req->asked && poison_rest && req->asked < end) {
		size_t done;

		io_errors_add(h, mm, 1);
		if (lzm_uffd_poison(mm->uffd, req->asked, lzm_page_size, &done))
			lzm_uffd_wake(mm->uffd, req->asked, lzm_page_size);
	} else if (req->asked) {
		lzm_uffd_wake(mm->uffd, req->asked, lzm_page_size);
	}
	pthread_rwlock_unlock(&mm->lock);
	lzm_req_free(h, req);
}
