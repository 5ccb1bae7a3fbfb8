// SPDX-License-Identifier: MIT
/*
 * How much to fill around a fault (the kernel's mm/readahead.c and its
 * fault-around): the window of a sequential stream, the aligned block around
 * a lone fault, and the windows read ahead of a stream at full speed. Called
 * by the fault path with the mm lock held for reading; the pages chosen are
 * claimed here and produced by the caller's requests.
 */
#include <unistd.h>

#include "internal.h"

/* The block filled around a lone fault: the kernel's fault-around (16 pages of 4 KiB). */
#define AROUND_BYTES (64u << 10)

/*
 * How many pages to fill for a fault at idx: the kernel's on-demand readahead
 * in miniature. A fault where the last run ended doubles the window, up to
 * readahead_max; any other fault grows from the filled pages just before it
 * (another stream) or starts again at one page, so random access fills only
 * what it touches. Advice overrides both. Racy by design: it is a hint.
 */
size_t lzm_ra_window(struct lazymap *lm, struct vma *v, uint64_t idx)
{
	uint64_t next = atomic_load_explicit(&v->ra_next, memory_order_relaxed);
	uint32_t win = atomic_load_explicit(&v->ra_window, memory_order_relaxed);

	switch (v->advice) {
	case LAZYMAP_ADV_RANDOM:
		return 1;
	case LAZYMAP_ADV_SEQUENTIAL:
		return lm->ra_pages;
	}
	if (idx == next) {
		win = win ? win * 2 : 2;
	} else {
		/*
		 * Not where the last run ended: random access, or another
		 * stream (two threads scanning halves of a file). The pages
		 * just before idx tell which: a stream has filled them, so grow
		 * from their number, as the kernel's readahead does for
		 * interleaved streams. No history is kept per stream.
		 */
		uint64_t lim = idx - v->pgoff, k = 0;

		if (lim > lm->ra_pages)
			lim = lm->ra_pages;
		while (k < lim && lzm_page_filled(v, idx - 1 - k))
			k++;
		/*
		 * Under a budget a warm cache is full of blocks read around
		 * random faults (64 KiB), and a miss next to one is no stream:
		 * reading on would evict pages in use. A stream has more
		 * behind it than one such block.
		 */
		if (lm->ev && k <= AROUND_BYTES >> lzm_page_shift)
			k = 0;
		win = k ? (uint32_t)(2 * k) : 1;
	}
	if (win > lm->ra_pages)
		win = (uint32_t)lm->ra_pages;
	atomic_store_explicit(&v->ra_window, win, memory_order_relaxed);
	return win;
}

/*
 * Around a lone fault on a private region of a synchronous source, fill the
 * rest of its aligned 64 KiB block, as the kernel's fault-around does for
 * files (and its 64 KiB anonymous folios do): later touches there are the
 * kernel's own cheap faults instead of round trips through us, which cost
 * ten times more here. A read of a zero region maps the shared zero page,
 * which costs no memory; a write gets zeroed pages of their own, since a
 * write to the zero page is a copy-on-write fault whose TLB flush interrupts
 * every other CPU the program runs on (≈ 12 µs per page in a VM with two
 * threads). So a block costs up to 60 KiB more memory, and fill callbacks
 * run for pages nobody may touch: LAZYMAP_ADV_RANDOM turns this off. Shared
 * regions are left alone (their zero page is a real shmem page), and so are
 * files: they read only what is touched.
 *
 * Zero runs are installed at once; the runs of a fill callback come back as
 * requests (at most max of them) for the caller to start. Returns how many.
 */
size_t lzm_fault_around(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			bool write, struct fill_req **reqs, size_t max)
{
	/* At most the pool's run (ra_pages), and a power of two: it aligns. */
	size_t pages = AROUND_BYTES >> lzm_page_shift, nreqs = 0;
	bool zero = !source_produces(v->src);

	if (pages > h->lm->ra_pages)
		pages = h->lm->ra_pages;
	while (pages & (pages - 1))
		pages &= pages - 1;
	if (pages < 2)
		return 0; /* pages of 64 KiB or more: the fault filled the block */

	const size_t block = pages << lzm_page_shift;
	uintptr_t at = addr & ~(block - 1), end = at + block;

	if (at < v->start)
		at = v->start;
	if (end > v->end)
		end = v->end;
	for (uint64_t idx = vma_page(v, at); at < end && (zero || nreqs < max);) {
		size_t n = lzm_claim_fresh(&v->src->state[idx], (end - at) >> lzm_page_shift);

		if (!n) {
			at += lzm_page_size;
			idx++;
			continue;
		}
		stat_add(&h->stats.readahead_pages, n);
		if (zero) {
			/* under a budget the pages nobody wrote yet are zero
			 * pages, which cost nothing until written (fault.c) */
			if (lzm_fill_zero(h, mm, v, at, idx, n, write && !h->lm->ev, 0, 0))
				break; /* the kernel balks: leave the rest alone */
		} else {
			reqs[nreqs] = lzm_fault_begin(h, mm, v, at, idx, n, write, 0);
			nreqs += reqs[nreqs] != NULL;
		}
		at += n << lzm_page_shift;
		idx += n;
	}
	return nreqs;
}

/*
 * Read-around of a random fault in a file region: the kernel reads the
 * aligned block around such a fault (do_sync_mmap_readahead) and stops when
 * the pages it read that way go unused (mmap_miss), so that dense access
 * becomes large reads and sparse access stays one page per fault. Pages a
 * private region finds in the cache are mapped by the kernel without a word
 * to us, so their use is read off the page table: a few faults later, a
 * block read around is sampled in /proc/self/pagemap, and a mapped page
 * outside the faulting page's own fault-around group (the kernel maps 16
 * pages around a touch) means the program went there. Misses count up,
 * hits down; past AROUND_LOTSAMISS only the touched page is read. Blocks
 * are sampled whether or not they were read around, so that access turning
 * dense turns read-around back on.
 */
#define AROUND_PAGES     32 /* 128 KiB: the kernel's default ra_pages */
#define AROUND_GROUP     16 /* what the kernel's fault-around maps */
#define AROUND_LOTSAMISS 16
#define AROUND_RING      8  /* faults between a read-around and its sample */

/*
 * Groups of the block around idx, but idx's own, with a page mapped in mm.
 * A group is what the kernel's fault-around maps at once: AROUND_GROUP
 * pages aligned in the address space (not in the file, where a region that
 * does not start on a group boundary would have it straddle two).
 */
static unsigned around_hits(struct mm *mm, const struct vma *v, uint64_t idx, size_t pages)
{
	uint64_t first = idx & ~(uint64_t)(pages - 1), vfirst = v->pgoff;
	uint64_t vend = v->pgoff + ((v->end - v->start) >> lzm_page_shift), pm[AROUND_PAGES];
	uint64_t vpn0, own, last = UINT64_MAX;
	unsigned hits = 0;
	ssize_t got;

	if (first < vfirst)
		first = vfirst;
	if (first + pages > vend)
		pages = (size_t)(vend - first);
	if (!pages)
		return 0;
	vpn0 = (v->start >> lzm_page_shift) + (first - v->pgoff);
	own = ((v->start >> lzm_page_shift) + (idx - v->pgoff)) / AROUND_GROUP;
	got = pread(mm->pagemap_fd, pm, pages * sizeof(pm[0]), (off_t)(vpn0 * sizeof(pm[0])));
	if (got < 0)
		return 0;
	for (size_t i = 0; i < (size_t)got / sizeof(pm[0]); i++) {
		uint64_t g = (vpn0 + i) / AROUND_GROUP;

		if (g == own || g == last || !(pm[i] >> 63))
			continue;
		hits++;
		last = g;
	}
	return hits;
}

size_t lzm_read_around(struct handler *h, struct mm *mm, struct vma *v, uint64_t idx,
		       uint64_t *first)
{
	size_t pages = AROUND_PAGES < h->lm->ra_pages ? AROUND_PAGES : h->lm->ra_pages;
	uint64_t vend = v->pgoff + ((v->end - v->start) >> lzm_page_shift), old, start;
	unsigned slot;

	while (pages & (pages - 1))
		pages &= pages - 1;
	if (pages < 2 * AROUND_GROUP || v->advice != LAZYMAP_ADV_NORMAL || mm->pagemap_fd < 0)
		return 0;
	slot = atomic_fetch_add_explicit(&v->ra_cursor, 1, memory_order_relaxed) % AROUND_RING;
	old = atomic_exchange_explicit(&v->ra_ring[slot], idx + 1, memory_order_relaxed);
	if (old && old - 1 >= v->pgoff && old - 1 < vend) {
		unsigned hits = around_hits(mm, v, old - 1, pages);
		int32_t miss = atomic_load_explicit(&v->ra_miss, memory_order_relaxed);

		miss = hits ? (miss > (int32_t)hits ? miss - (int32_t)hits : 0) : miss + 1;
		atomic_store_explicit(&v->ra_miss, miss, memory_order_relaxed);
	}
	if (atomic_load_explicit(&v->ra_miss, memory_order_relaxed) > AROUND_LOTSAMISS)
		return 0;
	start = idx & ~(uint64_t)(pages - 1);
	if (start < v->pgoff)
		start = v->pgoff;
	*first = start;
	return (size_t)((start + pages < vend ? start + pages : vend) - start);
}

/*
 * A stream of an asynchronous source at full speed: claim the windows after
 * the one just claimed (from page idx on, n pages each) and make them
 * requests, so that the disk works while the program does. Returns how many
 * (at most AHEAD_WINDOWS), in stream order.
 */
size_t lzm_readahead_ahead(struct handler *h, struct mm *mm, struct vma *v, uint64_t idx,
			   size_t n, struct fill_req **ahead)
{
	size_t i, max_windows = v->src->ops->submit ? AHEAD_WINDOWS_REMOTE : AHEAD_WINDOWS;

	for (i = 0; i < max_windows; i++, idx += n) {
		uintptr_t at = v->start + ((idx - v->pgoff) << lzm_page_shift);
		size_t max = n, got;

		/* under a budget, never past it for pages nobody waits for */
		if (at >= v->end || !lzm_evict_room(h->lm, n))
			break;
		if (max > (v->end - at) >> lzm_page_shift)
			max = (v->end - at) >> lzm_page_shift;
		got = lzm_claim_fresh_at(v, idx, max);
		if (!got)
			break;
		stat_add(&h->stats.readahead_pages, got);
		ahead[i] = lzm_fault_begin(h, mm, v, at, idx, got, false, 0);
		if (!ahead[i])
			break;
		atomic_store_explicit(&v->ra_next, idx + ahead[i]->n, memory_order_relaxed);
	}
	return i;
}
