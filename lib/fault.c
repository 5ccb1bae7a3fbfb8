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
 * A failure that would come back (ENOMEM...) poisons the rest if may_poison
 * (a fault asked for the range), else it is only returned: nobody touched
 * those pages, and their own fault may fare better.
 */
static int install(struct handler *h, struct mm *mm, enum install_how how, uintptr_t dst,
		   const char *src, size_t len, bool may_poison)
{
	struct hstats *st = &h->stats;
	size_t chunk = len; /* what one ioctl may cover */
	int ret = 0;

	while (len) {
		size_t done = 0, n = len < chunk ? len : chunk;

		switch (how) {
		case INSTALL_ZEROPAGE:
			stat_add(&st->zeropage_ioctls, 1);
			ret = lzm_uffd_zeropage(mm->uffd, dst, n, &done);
			break;
		case INSTALL_COPY:
			stat_add(&st->copy_ioctls, 1);
			ret = lzm_uffd_copy(mm->uffd, dst, src, n, &done);
			break;
		case INSTALL_MOVE:
			stat_add(&st->move_ioctls, 1);
			ret = lzm_uffd_move(mm->uffd, dst, (uintptr_t)src, n, &done);
			break;
		case INSTALL_POISON:
			ret = lzm_uffd_poison(mm->uffd, dst, n, &done);
			break;
		}
		dst += done;
		src += done;
		len -= done;
		if (ret == 0 || (ret == -EAGAIN && done))
			continue;
		if (ret == -ENOENT && chunk > lzm_page_size) {
			/*
			 * One ioctl fills within one kernel VMA. Ours can span
			 * several: we merge neighbours the kernel keeps apart
			 * (their anon_vmas differ). Go on a page at a time.
			 */
			chunk = lzm_page_size;
			continue;
		}
		if (ret == -EEXIST) {
			lzm_uffd_wake(mm->uffd, dst, lzm_page_size);
			dst += lzm_page_size;
			src += lzm_page_size;
			len -= lzm_page_size;
			continue;
		}
		if ((ret == -EBUSY || ret == -EINVAL) && how == INSTALL_MOVE) {
			/* The pool page is shared (we forked), or the kernel will not
			 * move between these VMAs: copy instead. */
			how = INSTALL_COPY;
			continue;
		}
		if (ret == -ENOENT || ret == -EAGAIN || ret == -ESRCH || how == INSTALL_POISON ||
		    !may_poison) {
			lzm_uffd_wake(mm->uffd, dst, len);
			return ret;
		}
		/*
		 * Anything else would fail again on the toucher's next fault: a
		 * wake would only spin it through us forever. Give it SIGBUS,
		 * as the kernel does when it cannot fill a page.
		 */
		stat_add(&st->io_errors, len >> lzm_page_shift);
		lzm_log(h->lm, LOG_ERR, "cannot install %#lx+%zu: %s: poisoned", (unsigned long)dst,
			len, strerror(-ret));
		how = INSTALL_POISON;
	}
	return 0;
}

static bool page_present(uintptr_t addr)
{
	unsigned char vec = 0;

	return mincore((void *)addr, lzm_page_size, &vec) == 0 && (vec & 1);
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
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
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
		lzm_uffd_wake(mm->uffd, addr, n << lzm_page_shift);
}

/* Claim up to max never-filled pages from state on; returns how many (0: the
 * first one is filled or busy). */
static size_t claim_fresh(_Atomic uint8_t *state, size_t max)
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

/* Extend a claimed page into a run of never-filled pages; returns its length. */
static size_t claim_run(_Atomic uint8_t *state, size_t max)
{
	return 1 + (max > 1 ? claim_fresh(state + 1, max - 1) : 0);
}

/*
 * How many pages to fill for a fault at idx: the kernel's on-demand readahead
 * in miniature. A fault where the last run ended doubles the window, up to
 * readahead_max; any other fault grows from the filled pages just before it
 * (another stream) or starts again at one page, so random access fills only
 * what it touches. Advice overrides both. Racy by design: it is a hint.
 */
static size_t ra_window(struct lazymap *lm, struct vma *v, uint64_t idx)
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
		while (k < lim && (atomic_load_explicit(&v->src->state[idx - 1 - k],
							memory_order_relaxed) & PAGE_FILLED))
			k++;
		win = k ? (uint32_t)(2 * k) : 1;
	}
	if (win > lm->ra_pages)
		win = (uint32_t)lm->ra_pages;
	atomic_store_explicit(&v->ra_window, win, memory_order_relaxed);
	return win;
}

/*
 * Produce and install n claimed pages from addr (page idx of v's source), then
 * let go of them. Synchronous sources only; mm->lock held for reading.
 * Counters move before the install: the install wakes the toucher, who may
 * read them at once. asked is the page a fault named (0: none, a prefetch or
 * fault-around): only it is poisoned when it cannot be produced; the others
 * go back to never-filled, for their own touch to ask again. Returns 0 when
 * every page was installed.
 */
static int fill_run(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
		    uint64_t idx, size_t n, bool write, uintptr_t asked)
{
	struct source *src = v->src;
	struct pool *pool = &h->pool;
	size_t len = n << lzm_page_shift;
	bool has_asked = asked >= addr && asked - addr < len;
	int ret;

	if (!src->ops->fill) {
		/* A read maps the shared zero page; a write gets a page of its own
		 * at once instead of a second (copy-on-write) fault. */
		stat_add(&h->stats.pages_filled, n);
		if (write) {
			ret = install(h, mm, INSTALL_COPY, addr, pool->zero, len, has_asked);
		} else {
			stat_add(&h->stats.zero_pages, n);
			ret = install(h, mm, INSTALL_ZEROPAGE, addr, NULL, len, has_asked);
		}
		goto out;
	}

	/* MOVE takes private anonymous pages between VMAs of equal protection
	 * only; the pool is read-write. */
	bool move = h->lm->opts.install == LAZYMAP_INSTALL_MOVE && !(v->flags & LAZYMAP_SHARED) &&
		    v->prot == (PROT_READ | PROT_WRITE);

	if (move)
		lzm_pool_refill(pool->run, n);
	stat_add(&h->stats.fill_calls, 1);
	ret = src->ops->fill(src, pool->run, idx, n);
	if (ret < 0 && n > 1) {
		/* Find the pages that fail: the others are good data. */
		int err = 0;

		for (size_t i = 0; i < n; i++)
			err |= fill_run(h, mm, v, addr + (i << lzm_page_shift), idx + i, 1, write, asked);
		return err ? -EIO : 0;
	}
	if (ret < 0 && has_asked) {
		stat_add(&h->stats.io_errors, n);
		ret = install(h, mm, INSTALL_POISON, addr, NULL, len, true);
		release_run(mm, src, addr, idx, n, ret == 0);
		return -EIO;
	}
	if (ret < 0) {
		release_run(mm, src, addr, idx, n, false);
		return ret;
	}
	stat_add(&h->stats.pages_filled, n);
	ret = install(h, mm, move ? INSTALL_MOVE : INSTALL_COPY, addr, pool->run, len, has_asked);
out:
	release_run(mm, src, addr, idx, n, ret == 0);
	return ret;
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
 * files: they read only what is touched. Lock held.
 */
#define AROUND_BYTES (64u << 10)

static void fault_around(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			 bool write)
{
	/* At most the pool's run (ra_pages), and a power of two: it aligns. */
	size_t pages = AROUND_BYTES >> lzm_page_shift;

	if (pages > h->lm->ra_pages)
		pages = h->lm->ra_pages;

	while (pages & (pages - 1))
		pages &= pages - 1;
	if (pages < 2)
		return; /* pages of 64 KiB or more: the fault filled the block */

	const size_t block = pages << lzm_page_shift;
	uintptr_t at = addr & ~(block - 1), end = at + block;

	if (at < v->start)
		at = v->start;
	if (end > v->end)
		end = v->end;
	for (uint64_t idx = v->pgoff + ((at - v->start) >> lzm_page_shift); at < end;) {
		size_t n = claim_fresh(&v->src->state[idx], (end - at) >> lzm_page_shift);

		if (!n) {
			at += lzm_page_size;
			idx++;
			continue;
		}
		stat_add(&h->stats.readahead_pages, n);
		if (fill_run(h, mm, v, at, idx, n, write, 0))
			return; /* the source or the kernel balks: leave the rest alone */
		at += n << lzm_page_shift;
		idx += n;
	}
}

/* ------------------------------------------------------------ async reads */

/*
 * Begin a run of an asynchronous source: mm->lock is held, the pages are
 * claimed. Pages the source does not have (beyond the end of a file) are let
 * go, but for the page a fault asked for (fault: the run's first page), which
 * is poisoned: SIGBUS, as the kernel gives. The rest becomes a request,
 * started once the lock is dropped (starting may wait for pool pages, and so
 * for completions, which take the lock themselves). Returns NULL when there
 * is nothing to read.
 */
static struct fill_req *begin_read(struct handler *h, struct mm *mm, struct vma *v,
				   uintptr_t addr, uint64_t idx, size_t n, bool write, bool fault)
{
	struct source *src = v->src;
	size_t have = src->ops->extent ? src->ops->extent(src, idx, n) : n;
	struct fill_req *req;

	if (have == 0 && fault) {
		int ret;

		stat_add(&h->stats.io_errors, 1);
		ret = install(h, mm, INSTALL_POISON, addr, NULL, lzm_page_size, true);
		release_run(mm, src, addr, idx, 1, ret == 0);
		addr += lzm_page_size;
		idx++;
		n--;
	}
	if (have < n) {
		/* nobody asked for these: a later touch decides (the file may grow) */
		release_run(mm, src, addr + (have << lzm_page_shift), idx + have, n - have, false);
		n = have;
	}
	if (!n)
		return NULL;
	req = calloc(1, sizeof(*req));
	if (!req) {
		/* Let the toucher fault again: it is all we can do without memory. */
		release_run(mm, src, addr, idx, n, false);
		lzm_uffd_wake(mm->uffd, addr, n << lzm_page_shift);
		return NULL;
	}
	lzm_source_get(src);
	atomic_fetch_add(&mm->busy, 1);
	*req = (struct fill_req){ .mm = mm, .src = src, .addr = addr, .idx = idx, .n = n,
				  .write = write };
	return req;
}

void lzm_fault_abandon(struct fill_req *req)
{
	release_run(req->mm, req->src, req->addr, req->idx, req->n, false);
	lzm_uffd_wake(req->mm->uffd, req->addr, req->n << lzm_page_shift);
	lzm_source_put(req->src);
	atomic_fetch_sub(&req->mm->busy, 1);
	free(req);
}

static void req_free(struct handler *h, struct fill_req *req)
{
	if (req->buf)
		lzm_pool_free(&h->pool, req->buf, req->n);
	lzm_source_put(req->src);
	atomic_fetch_sub(&req->mm->busy, 1);
	free(req);
}

/* Start req's read; lock not held. Waits for completions while the pool is full. */
void lzm_fault_start_read(struct handler *h, struct fill_req *req)
{
	int ret;

	while (!(req->buf = lzm_pool_alloc(&h->pool, req->n))) {
		lzm_uring_flush(h);
		if (!h->inflight || lzm_uring_reap(h, true) < 0)
			break;
	}
	if (!req->buf) {
		/* Cannot happen (a run is smaller than the pool), but never hang. */
		lzm_fault_abandon(req);
		return;
	}
	ret = req->src->ops->read(h, req);
	if (ret)
		lzm_fault_read_done(h, req, ret);
}

/*
 * Install what a read brought: data pages (the last one zero-filled past the
 * end of file), and poison for the pages that have none (the file ended
 * early, or the read failed). The VMA is looked up again: it may have been
 * unmapped, split or replaced while the read was in flight.
 */
static void finish_read(struct handler *h, struct fill_req *req, size_t data_pages, size_t bytes,
			bool poison_rest)
{
	struct mm *mm = req->mm;
	size_t limit = 0, good = 0;
	struct vma *v;
	int ret = 0;

	if (bytes & (lzm_page_size - 1))
		memset(req->buf + bytes, 0, lzm_page_size - (bytes & (lzm_page_size - 1)));
	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, req->addr);
	if (v && v->src == req->src &&
	    v->pgoff + ((req->addr - v->start) >> lzm_page_shift) == req->idx) {
		limit = (v->end - req->addr) >> lzm_page_shift;
		if (limit > req->n)
			limit = req->n;
	}
	good = data_pages < limit ? data_pages : limit;
	if (good) {
		stat_add(&h->stats.pages_filled, good);
		ret = install(h, mm, INSTALL_COPY, req->addr, req->buf, good << lzm_page_shift, true);
	}
	if (ret == 0 && limit > good && poison_rest) {
		stat_add(&h->stats.io_errors, limit - good);
		ret = install(h, mm, INSTALL_POISON, req->addr + (good << lzm_page_shift), NULL,
			      (limit - good) << lzm_page_shift, true);
	}
	if (!poison_rest) {
		/* the rest will be faulted, and read, on its own */
		release_run(mm, req->src, req->addr + (good << lzm_page_shift), req->idx + good,
			    limit - good, false);
		limit = good;
	}
	release_run(mm, req->src, req->addr, req->idx, limit, ret == 0);
	pthread_rwlock_unlock(&mm->lock);
	if (limit < req->n)
		release_run(mm, req->src, req->addr + (limit << lzm_page_shift), req->idx + limit,
			    req->n - limit, false);
	req_free(h, req);
}

void lzm_fault_read_done(struct handler *h, struct fill_req *req, int res)
{
	size_t len = req->n << lzm_page_shift;

	if (res == -EAGAIN || res == -EINTR) {
		if (req->src->ops->read(h, req) == 0)
			return;
		res = -EIO;
	}
	if (res < 0 && req->done >= lzm_page_size) {
		/* Failed after good data: keep the whole pages read so far. */
		finish_read(h, req, req->done >> lzm_page_shift, req->done & ~(lzm_page_size - 1), false);
		return;
	}
	if (res < 0) {
		if (req->n > 1) {
			/* Which pages fail? Keep the first (a fault may wait on it) and
			 * let the others be faulted, and read, one by one. */
			release_run(req->mm, req->src, req->addr + lzm_page_size, req->idx + 1,
				    req->n - 1, false);
			lzm_pool_free(&h->pool, req->buf + lzm_page_size, req->n - 1);
			req->n = 1;
			req->done = 0;
			if (req->src->ops->read(h, req) == 0)
				return;
		}
		finish_read(h, req, 0, 0, true);
		return;
	}
	req->done += (size_t)res;
	stat_add(&h->stats.bytes_read, (uint64_t)res);
	if (res > 0 && req->done < len) {
		/* A short read: go on from where it stopped. */
		stat_add(&h->stats.short_reads, 1);
		if (req->src->ops->read(h, req) == 0)
			return;
	}
	if (req->done < len && req->src->backing)
		lzm_backing_refresh_size(req->src->backing);
	finish_read(h, req, (req->done + lzm_page_size - 1) >> lzm_page_shift, req->done, true);
}

/* ------------------------------------------------------------ entry points */

/*
 * Claim a run after the one just claimed, for a sequential stream of an
 * asynchronous source: its read overlaps with the program's work on the
 * first run. Lock held.
 */
static struct fill_req *begin_ahead(struct handler *h, struct mm *mm, struct vma *v,
				    uintptr_t addr, uint64_t idx, size_t max)
{
	size_t n;

	if (addr >= v->end)
		return NULL;
	if (max > (v->end - addr) >> lzm_page_shift)
		max = (v->end - addr) >> lzm_page_shift;
	n = claim_fresh(&v->src->state[idx], max);
	if (!n)
		return NULL;
	stat_add(&h->stats.readahead_pages, n);
	return begin_read(h, mm, v, addr, idx, n, false, false);
}

/* Windows read ahead of a sequential stream of an asynchronous source. */
#define AHEAD_WINDOWS 2

/*
 * Spread a stream's windows over the handlers, the i-th ahead window to the
 * i+1-th handler after this one if it is idle: copying a window into place
 * costs more than reading it, and while the faulting thread waits for the
 * first window the other CPUs can copy the next ones. A busy handler may be
 * in a slow fill callback: its windows would wait behind it.
 */
static void start_ahead(struct handler *h, struct fill_req *req, int i)
{
	struct lazymap *lm = h->lm;
	size_t self = (size_t)(h - lm->handlers);

	if (self >= lm->nhandlers) /* not one of ours: cannot happen */
		self = 0;
	struct handler *to = &lm->handlers[(self + 1 + (size_t)i) % lm->nhandlers];

	if (to != h && atomic_load_explicit(&to->idle, memory_order_relaxed))
		lzm_handler_give(to, req);
	else
		lzm_fault_start_read(h, req);
}

void lzm_fault_handle(struct handler *h, struct mm *mm, uintptr_t addr, bool write)
{
	struct fill_req *req = NULL, *ahead[AHEAD_WINDOWS] = { NULL };
	struct vma *v;
	uint64_t idx;
	size_t max, n;

	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, addr);
	if (!v) {
		/* Not ours (any more): let the toucher retry against the kernel. */
		stat_add(&h->stats.unowned, 1);
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
		goto out;
	}
	idx = v->pgoff + ((addr - v->start) >> lzm_page_shift);
	switch (claim_page(mm, &v->src->state[idx], addr)) {
	case COALESCED:
	case PRESENT:
		stat_add(&h->stats.coalesced, 1);
		goto out;
	case CLAIMED:
		break;
	}
	max = ra_window(h->lm, v, idx);
	if (max > (v->end - addr) >> lzm_page_shift)
		max = (v->end - addr) >> lzm_page_shift;
	n = claim_run(&v->src->state[idx], max);
	stat_add(&h->stats.readahead_pages, n - 1);
	atomic_store_explicit(&v->ra_next, idx + n, memory_order_relaxed);
	if (!v->src->ops->read) {
		fill_run(h, mm, v, addr, idx, n, write, addr);
		if (n == 1 && !(v->flags & LAZYMAP_SHARED) && v->advice != LAZYMAP_ADV_RANDOM)
			fault_around(h, mm, v, addr, write);
		goto out;
	}
	req = begin_read(h, mm, v, addr, idx, n, write, true);
	/* A stream at full speed: read the next windows too, so that the disk
	 * works while the program does. */
	for (int i = 0; req && n == h->lm->ra_pages && i < AHEAD_WINDOWS; i++) {
		uint64_t at = idx + n * (size_t)(i + 1);

		ahead[i] = begin_ahead(h, mm, v, addr + ((at - idx) << lzm_page_shift), at, n);
		if (!ahead[i])
			break;
		atomic_store_explicit(&v->ra_next, at + ahead[i]->n, memory_order_relaxed);
	}
out:
	pthread_rwlock_unlock(&mm->lock);
	if (req)
		lzm_fault_start_read(h, req);
	for (int i = 0; i < AHEAD_WINDOWS && ahead[i]; i++)
		start_ahead(h, ahead[i], i);
}

/* Pages a prefetch step may look at: bounds the time it holds the lock. */
#define PREFETCH_SCAN 4096

uintptr_t lzm_fault_prefetch(struct handler *h, struct mm *mm, uintptr_t start, uintptr_t end)
{
	size_t budget = h->lm->ra_pages * 4, scan = PREFETCH_SCAN;
	uintptr_t addr = start;

	while (addr < end && budget && scan) {
		struct fill_req *req = NULL;
		struct vma *v;
		size_t n = 0;

		pthread_rwlock_rdlock(&mm->lock);
		v = lzm_vma_find(&mm->tree, addr);
		if (!v || v->start >= end) {
			pthread_rwlock_unlock(&mm->lock);
			return end;
		}
		if (addr < v->start)
			addr = v->start;

		uintptr_t stop = end < v->end ? end : v->end;
		uint64_t idx = v->pgoff + ((addr - v->start) >> lzm_page_shift);

		/* Skip what is filled or being filled, under the one lock. */
		for (; addr < stop && scan; addr += lzm_page_size, idx++, scan--) {
			size_t max = (stop - addr) >> lzm_page_shift;

			if (max > h->lm->ra_pages)
				max = h->lm->ra_pages;
			n = claim_fresh(&v->src->state[idx], max < budget ? max : budget);
			if (n)
				break;
		}
		if (n) {
			stat_add(&h->stats.prefetched, n);
			if (v->src->ops->read)
				req = begin_read(h, mm, v, addr, idx, n, false, false);
			else
				fill_run(h, mm, v, addr, idx, n, v->prot & PROT_WRITE, 0);
		}
		pthread_rwlock_unlock(&mm->lock);
		if (req)
			lzm_fault_start_read(h, req);
		addr += n << lzm_page_shift;
		budget -= n;
	}
	return addr;
}
