// SPDX-License-Identifier: MIT
/*
 * Page-state claiming (the kernel's folio lock, in a byte per page): who
 * fills a page, who waits for it, and letting go. Fills take pages here;
 * eviction will too.
 *
 * Ownership of a page during a fill is the PAGE_BUSY bit of its source state:
 * whoever sets it installs (or poisons) the page, which wakes the threads
 * waiting on it. A fault that finds the bit set leaves the page to its owner
 * but first sets PAGE_WAITER, and the owner wakes the page again when it lets
 * go: the toucher may have dropped the page (MADV_DONTNEED) and faulted anew
 * after the install woke it but before the owner let go. Runs only ever claim
 * pages that were never filled, so a stale FILLED page is only re-checked by
 * the fault that names it.
 */
#include <sys/mman.h>

#include "internal.h"

enum claim lzm_claim_page(struct mm *mm, _Atomic uint8_t *state, uintptr_t addr)
{
	uint8_t old = atomic_load_explicit(state, memory_order_acquire);

	for (;;) {
		/* Busy: leave a note for the owner. If the CAS fails, the owner
		 * may have let go in between: look again. */
		uint8_t want = old & PAGE_BUSY ? old | PAGE_WAITER : old | PAGE_BUSY;

		if (old == want)
			return CLAIM_COALESCED;
		if (atomic_compare_exchange_weak_explicit(state, &old, want, memory_order_acq_rel,
							  memory_order_acquire)) {
			if (old & PAGE_BUSY)
				return CLAIM_COALESCED;
			break;
		}
	}
	/*
	 * Filled before: either a second message for a page we have served
	 * (two threads faulted on it), or the page was dropped (MADV_DONTNEED
	 * whose REMOVE a fill raced, or installed after a fork's copy) and
	 * must be filled again. The kernel knows which, and the mm's ops ask
	 * it (mincore, or another process's pagemap); where they cannot, the
	 * fill is simply made: the kernel refuses it (EEXIST, then a wake) if
	 * the page is there.
	 */
	if ((old & PAGE_FILLED) && mm->ops->present(mm, addr)) {
		/* the wake covers any waiter that came meanwhile; what the
		 * budget knows of the page (written, a zero page) stays */
		atomic_store_explicit(state, old, memory_order_release);
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
		return CLAIM_PRESENT;
	}
	return CLAIM_OWNED;
}

void lzm_release_run(struct mm *mm, struct source *src, uintptr_t addr, uint64_t idx, size_t n,
		     bool installed)
{
	uint8_t to = installed ? PAGE_FILLED : 0, seen = 0;

	if (src->ops->cached) {
		lzm_cache_release(src->cache, src->base + idx, n, installed);
		return;
	}

	/* a page not installed that has a slot is still in swap */
	for (size_t i = 0; i < n; i++)
		seen |= atomic_exchange_explicit(&src->state[idx + i],
						 to || !source_slot(src, idx + i) ? to : PAGE_SWAPPED,
						 memory_order_acq_rel);
	if (seen & PAGE_WAITER)
		lzm_uffd_wake(mm->uffd, addr, n << lzm_page_shift);
}

size_t lzm_claim_fresh(_Atomic uint8_t *state, size_t max)
{
	size_t n = 0;

	for (; n < max; n++) {
		uint8_t expect = 0;

		if (!atomic_compare_exchange_strong_explicit(&state[n], &expect, PAGE_BUSY,
							     memory_order_acquire,
							     memory_order_relaxed))
			break;
	}
	return n;
}

size_t lzm_claim_fresh_at(struct vma *v, uint64_t idx, size_t max)
{
	struct source *src = v->src;

	if (src->ops->cached) {
		uint64_t fp = src->base + idx;
		_Atomic uint8_t *s = lzm_cache_state(src->cache, fp);

		return s ? lzm_claim_fresh(s, cache_run_max(fp, max)) : 0;
	}
	return lzm_claim_fresh(&src->state[idx], max);
}

bool lzm_page_filled(const struct vma *v, uint64_t idx)
{
	const struct source *src = v->src;

	if (src->ops->cached)
		return lzm_cache_has(src->cache, src->base + idx);
	return atomic_load_explicit(&src->state[idx], memory_order_relaxed) & PAGE_FILLED;
}
