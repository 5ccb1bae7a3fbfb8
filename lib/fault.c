// SPDX-License-Identifier: MIT
/*
 * The fault path (the kernel's handle_mm_fault): find the VMA, claim the page
 * or join the fill already serving it, choose the run of pages to fill
 * (fault-around on sequential streams), ask the source, install, wake.
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
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "compat.h"
#include "internal.h"

enum install_how { INSTALL_ZEROPAGE, INSTALL_COPY, INSTALL_MOVE, INSTALL_POISON };

/*
 * Install [dst, dst+len) with one ioctl where the kernel lets us. The kernel
 * wakes what it filled. EEXIST means another filler won that page: wake it
 * and go on. Any other failure (the layout changed under us: ENOENT, or
 * EAGAIN with no progress while a non-cooperative event is pending) wakes the
 * rest, so that its touchers retry the access and fault again if need be.
 */
static int install(struct handler *h, struct mm *mm, enum install_how how, uintptr_t dst,
		   const char *src, size_t len)
{
	struct hstats *st = &h->stats;
	int ret = 0;

	while (len) {
		size_t done = 0;

		switch (how) {
		case INSTALL_ZEROPAGE:
			stat_add(&st->zeropage_ioctls, 1);
			ret = uffd_zeropage(mm->uffd, dst, len, &done);
			break;
		case INSTALL_COPY:
			stat_add(&st->copy_ioctls, 1);
			ret = uffd_copy(mm->uffd, dst, src, len, &done);
			break;
		case INSTALL_MOVE:
			stat_add(&st->move_ioctls, 1);
			ret = uffd_move(mm->uffd, dst, (uintptr_t)src, len, &done);
			break;
		case INSTALL_POISON:
			ret = uffd_poison(mm->uffd, dst, len, &done);
			break;
		}
		dst += done;
		src += done;
		len -= done;
		if (ret == 0 || (ret == -EAGAIN && done))
			continue;
		if (ret == -EEXIST) {
			uffd_wake(mm->uffd, dst, page_size);
			dst += page_size;
			src += page_size;
			len -= page_size;
			continue;
		}
		if ((ret == -EBUSY || ret == -EINVAL) && how == INSTALL_MOVE) {
			/* The pool page is shared (we forked), or the kernel will not
			 * move between these VMAs: copy instead. */
			how = INSTALL_COPY;
			continue;
		}
		if (ret == -ENOENT || ret == -EAGAIN || ret == -ESRCH || how == INSTALL_POISON) {
			uffd_wake(mm->uffd, dst, len);
			return ret;
		}
		/*
		 * Anything else would fail again on the toucher's next fault: a
		 * wake would only spin it through us forever. Give it SIGBUS,
		 * as the kernel does when it cannot fill a page.
		 */
		stat_add(&st->io_errors, len >> page_shift);
		fprintf(stderr, "liblazymap: cannot install %#lx+%zu: %s: poisoned\n",
			(unsigned long)dst, len, strerror(-ret));
		how = INSTALL_POISON;
	}
	return 0;
}

static bool page_present(uintptr_t addr)
{
	unsigned char vec = 0;

	return mincore((void *)addr, page_size, &vec) == 0 && (vec & 1);
}

enum claim { CLAIMED, COALESCED, PRESENT };

/* Claim the page a fault names. */
static enum claim claim_page(struct mm *mm, _Atomic uint8_t *state, uintptr_t addr)
{
	uint8_t old = atomic_load_explicit(state, memory_order_acquire);

	for (;;) {
		/* Busy: leave a note for the owner. If the CAS fails, the owner
		 * may have let go in between: look again. */
		uint8_t want = old & PAGE_BUSY ? old | PAGE_WAITER : old | PAGE_BUSY;

		if (old == want)
			return COALESCED;
		if (atomic_compare_exchange_weak_explicit(state, &old, want, memory_order_acq_rel,
							  memory_order_acquire)) {
			if (old & PAGE_BUSY)
				return COALESCED;
			break;
		}
	}
	/*
	 * Filled before: either a second message for a page we have served
	 * (two threads faulted on it), or the program dropped the page
	 * (MADV_DONTNEED) and it must be filled again. The kernel knows which.
	 */
	if ((old & PAGE_FILLED) && page_present(addr)) {
		/* the wake covers any waiter that came meanwhile */
		atomic_store_explicit(state, PAGE_FILLED, memory_order_release);
		uffd_wake(mm->uffd, addr, page_size);
		return PRESENT;
	}
	return CLAIMED;
}

/*
 * Let go of n claimed pages from idx: FILLED if they were installed, else
 * back to never-filled so that fault-around and prefetch may take them again.
 * Wakes them if a fault came for one while we held it.
 */
static void release_run(struct mm *mm, struct source *src, uintptr_t addr, uint64_t idx,
			size_t n, bool installed)
{
	uint8_t to = installed ? PAGE_FILLED : 0, seen = 0;

	for (size_t i = 0; i < n; i++)
		seen |= atomic_exchange_explicit(&src->state[idx + i], to, memory_order_acq_rel);
	if (seen & PAGE_WAITER)
		uffd_wake(mm->uffd, addr, n << page_shift);
}

/* Extend a claimed page into a run of never-filled pages; returns its length. */
static size_t claim_run(_Atomic uint8_t *state, size_t max)
{
	size_t n = 1;

	for (; n < max; n++) {
		uint8_t expect = 0;

		if (!atomic_compare_exchange_strong_explicit(&state[n], &expect, PAGE_BUSY,
							     memory_order_acquire,
							     memory_order_relaxed))
			break;
	}
	return n;
}

/*
 * How many pages to fill for a fault at idx: the kernel's on-demand readahead
 * in miniature. A fault where the last run ended doubles the window, up to
 * readahead_max; any other fault starts again at one page, so random access
 * fills only what it touches. Racy by design: it is a hint.
 */
static size_t ra_window(struct lazymap *lm, struct vma *v, uint64_t idx)
{
	uint64_t next = atomic_load_explicit(&v->ra_next, memory_order_relaxed);
	uint32_t win = atomic_load_explicit(&v->ra_window, memory_order_relaxed);

	if (idx == next)
		win = win ? win * 2 : 2;
	else
		win = 1;
	if (win > lm->ra_pages)
		win = (uint32_t)lm->ra_pages;
	atomic_store_explicit(&v->ra_window, win, memory_order_relaxed);
	return win;
}

/*
 * Produce and install n claimed pages from addr (page idx of v's source), then
 * let go of them. Counters move before the install: the install wakes the
 * toucher, who may read them at once.
 */
static void fill_run(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
		     uint64_t idx, size_t n, bool write)
{
	struct source *src = v->src;
	struct pool *pool = &h->pool;
	size_t len = n << page_shift;
	int ret;

	if (!src->ops->fill) {
		/* A read maps the shared zero page; a write gets a page of its own
		 * at once instead of a second (copy-on-write) fault. */
		stat_add(&h->stats.pages_filled, n);
		if (write) {
			ret = install(h, mm, INSTALL_COPY, addr, pool->zero, len);
		} else {
			stat_add(&h->stats.zero_pages, n);
			ret = install(h, mm, INSTALL_ZEROPAGE, addr, NULL, len);
		}
		goto out;
	}

	/* MOVE takes private anonymous pages between VMAs of equal protection
	 * only; the pool is read-write. */
	bool move = h->lm->opts.install == LAZYMAP_INSTALL_MOVE && !(v->flags & LAZYMAP_SHARED) &&
		    v->prot == (PROT_READ | PROT_WRITE);

	if (move)
		pool_refill(pool, n);
	stat_add(&h->stats.fill_calls, 1);
	ret = src->ops->fill(src, pool->pages, idx, n);
	if (ret < 0 && n > 1) {
		/* Find the pages that fail: the others are good data. */
		for (size_t i = 0; i < n; i++)
			fill_run(h, mm, v, addr + (i << page_shift), idx + i, 1, write);
		return;
	}
	if (ret < 0) {
		stat_add(&h->stats.io_errors, n);
		ret = install(h, mm, INSTALL_POISON, addr, NULL, len);
	} else {
		stat_add(&h->stats.pages_filled, n);
		ret = install(h, mm, move ? INSTALL_MOVE : INSTALL_COPY, addr, pool->pages, len);
	}
out:
	release_run(mm, src, addr, idx, n, ret == 0);
}

void fault_handle(struct handler *h, struct mm *mm, uintptr_t addr, bool write)
{
	struct vma *v;
	uint64_t idx;
	size_t max, n;

	pthread_rwlock_rdlock(&mm->lock);
	v = vma_lookup(&mm->tree, addr);
	if (!v) {
		/* Not ours (any more): let the toucher retry against the kernel. */
		stat_add(&h->stats.unowned, 1);
		uffd_wake(mm->uffd, addr, page_size);
		goto out;
	}
	idx = v->pgoff + ((addr - v->start) >> page_shift);
	switch (claim_page(mm, &v->src->state[idx], addr)) {
	case COALESCED:
	case PRESENT:
		stat_add(&h->stats.coalesced, 1);
		goto out;
	case CLAIMED:
		break;
	}
	max = ra_window(h->lm, v, idx);
	if (max > (v->end - addr) >> page_shift)
		max = (v->end - addr) >> page_shift;
	n = claim_run(&v->src->state[idx], max);
	atomic_store_explicit(&v->ra_next, idx + n, memory_order_relaxed);
	fill_run(h, mm, v, addr, idx, n, write);
out:
	pthread_rwlock_unlock(&mm->lock);
}

/* Pages a prefetch step may look at: bounds the time it holds the lock. */
#define PREFETCH_SCAN 4096

uintptr_t fault_prefetch(struct handler *h, struct mm *mm, uintptr_t start, uintptr_t end)
{
	size_t budget = h->pool.npages, scan = PREFETCH_SCAN;
	uintptr_t addr = start;
	struct vma *v;

	pthread_rwlock_rdlock(&mm->lock);
	while (addr < end && budget && scan--) {
		v = vma_find(&mm->tree, addr);
		if (!v || v->start >= end) {
			addr = end;
			break;
		}
		if (addr < v->start)
			addr = v->start;

		uint64_t idx = v->pgoff + ((addr - v->start) >> page_shift);
		_Atomic uint8_t *state = &v->src->state[idx];
		uint8_t expect = 0;
		size_t max = (((end < v->end ? end : v->end) - addr) >> page_shift), n;

		if (!atomic_compare_exchange_strong_explicit(state, &expect, PAGE_BUSY,
							     memory_order_acquire,
							     memory_order_relaxed)) {
			addr += page_size;
			continue;
		}
		n = claim_run(state, max < budget ? max : budget);
		stat_add(&h->stats.prefetched, n);
		fill_run(h, mm, v, addr, idx, n, v->prot & PROT_WRITE);
		addr += n << page_shift;
		budget -= n;
	}
	pthread_rwlock_unlock(&mm->lock);
	return addr;
}
