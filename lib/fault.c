// SPDX-License-Identifier: MIT
/*
 * The fault path (the kernel's handle_mm_fault): find the VMA, claim the page
 * or join the fill already serving it (claim.c), choose the run of pages to
 * fill (readahead.c), have the source produce it, install, wake.
 *
 * Zero pages are installed at once, under the mm lock. Every other run
 * becomes a fill request (struct fill_req), begun under the lock (its pages
 * claimed) and started once the lock is dropped: a read on the handler's
 * io_uring, or a fill callback, run here or, once the source has shown
 * itself slow, on a filler thread (filler.c). So no program code and no I/O
 * ever runs under the lock, and map or unmap never wait for a producer. A
 * request ends in its end_io, which takes the lock again, finds whether its
 * VMA is still there (it may have been unmapped, split or replaced
 * meanwhile) and installs what it can.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "compat.h"
#include "internal.h"

enum install_how {
	INSTALL_ZEROPAGE, INSTALL_ZEROPAGE_WP, INSTALL_COPY, INSTALL_COPY_WP, INSTALL_MOVE, INSTALL_POISON
};

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
			ret = lzm_uffd_zeropage(mm->uffd, dst, n, false, &done);
			break;
		case INSTALL_ZEROPAGE_WP:
			/* protected before the toucher is let go: a write at once
			 * would otherwise copy the zero page with no word to us */
			stat_add(&st->zeropage_ioctls, 1);
			ret = lzm_uffd_zeropage(mm->uffd, dst, n, true, &done);
			if (done && lzm_uffd_writeprotect(mm->uffd, dst, done, true))
				ret = ret ? ret : -EAGAIN; /* the caller counts them then */
			if (done)
				lzm_uffd_wake(mm->uffd, dst, done);
			break;
		case INSTALL_COPY:
		case INSTALL_COPY_WP:
			stat_add(&st->copy_ioctls, 1);
			ret = lzm_uffd_copy(mm->uffd, dst, src, n, how == INSTALL_COPY_WP, &done);
			break;
		case INSTALL_MOVE:
			stat_add(&st->move_ioctls, 1);
			ret = lzm_uffd_move(mm->uffd, dst, (uintptr_t)src, n, 0, &done);
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
		io_errors_add(h, mm, len >> lzm_page_shift);
		lzm_log(h->lm, LOG_ERR, "cannot install %#lx+%zu: %s: poisoned", (unsigned long)dst,
			len, strerror(-ret));
		how = INSTALL_POISON;
	}
	return 0;
}


/*
 * Install n claimed zero pages from addr (page idx of v's source), then let
 * go of them. mm->lock held. A read maps the shared zero page; a write gets
 * a page of its own at once instead of a second (copy-on-write) fault.
 * Counters move before the install: it wakes the toucher, who may read them
 * at once. asked is the page a fault named (0: none): only then does a
 * failure poison. Returns 0 when every page was installed.
 */
/* The budget counts what we installed in our own address space (evict.c). */
static void budget_count(struct mm *mm, struct source *src, uintptr_t addr, uint64_t idx,
			 size_t n, int hint)
{
	if (mm->self && mm->lm->ev)
		lzm_evict_filled_src(mm->lm, src, addr, idx, n, hint);
}

static int advice_hint(const struct vma *v)
{
	return v->advice == LAZYMAP_ADV_SEQUENTIAL ? EV_FIRST : 0;
}

int lzm_fill_zero(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr, uint64_t idx,
		  size_t n, bool write, uintptr_t asked, int hint)
{
	size_t len = n << lzm_page_shift;
	bool has_asked = asked >= addr && asked - addr < len;
	int ret;

	stat_add(&h->stats.pages_filled, n);
	if (write) {
		ret = install(h, mm, INSTALL_COPY, addr, h->pool.zero, len, has_asked);
	} else {
		/*
		 * Under a budget a zero page is not counted: it costs nothing.
		 * But a write makes it a page of its own, which the kernel
		 * would give with no word to us: write-protected (before its
		 * toucher runs), the write comes to us first (swap_wp_fault),
		 * and is counted then.
		 */
		bool wp = h->lm->ev && mm->self;

		stat_add(&h->stats.zero_pages, n);
		ret = install(h, mm, wp ? INSTALL_ZEROPAGE_WP : INSTALL_ZEROPAGE, addr, NULL, len,
			      has_asked);
		if (ret == 0 && wp) {
			uint8_t seen = 0;

			for (size_t i = 0; i < n; i++)
				seen |= atomic_exchange(&v->src->state[idx + i],
							PAGE_FILLED | PAGE_ZERO);
			if (seen & PAGE_WAITER)
				lzm_uffd_wake(mm->uffd, addr, len);
			return 0;
		}
	}
	lzm_release_run(mm, v->src, addr, idx, n, ret == 0);
	if (ret == 0)
		budget_count(mm, v->src, addr, idx, n, hint ? hint : advice_hint(v));
	return ret;
}

/* ------------------------------------------------------------ requests */

static void read_done(struct handler *h, struct fill_req *req, int res);

/*
 * A request for n claimed pages from addr, holding what it needs (src, mm,
 * the mm's busy count); its fields are the caller's to fill. Without memory
 * the pages are let go and their toucher faults again: all we can do.
 */
static struct fill_req *req_new(struct mm *mm, struct source *src, uintptr_t addr, uint64_t idx,
				size_t n)
{
	struct fill_req *req = calloc(1, sizeof(*req));

	if (!req) {
		lzm_release_run(mm, src, addr, idx, n, false); /* swapped pages stay so */
		lzm_uffd_wake(mm->uffd, addr, n << lzm_page_shift);
		return NULL;
	}
	lzm_source_get(src);
	lzm_mm_get(mm);
	atomic_fetch_add(&mm->busy, 1);
	return req;
}

/*
 * A copied file region (lazymap.c) takes a page from the file's cache when
 * the cache holds it: it may hold what a shared region wrote and has not
 * written back. Of the n claimed pages from addr, copy the cached ones at
 * the front (write-protected: a page never written is dropped, not
 * swapped), and let go of those from the first cached page after them (each
 * is faulted on its own). Returns how many were dealt with; *n gets how
 * many after them are to be read from the file. mm->lock held.
 */
static size_t copy_cached(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			  uint64_t idx, size_t *n)
{
	struct source *src = v->src;
	struct cache *c = src->cache;
	uint64_t fp = src->base + idx;
	size_t k = 0, m, i = 0;

	while (k < *n && lzm_cache_has(c, fp + k))
		k++;
	while (i < k) {
		uintptr_t at = addr + (i << lzm_page_shift);
		size_t done;
		int ret = lzm_cache_copy_out(c, mm->uffd, at, fp + i, k - i, true, &done);

		done >>= lzm_page_shift;
		if (done) {
			stat_add(&h->stats.pages_filled, done);
			lzm_release_run(mm, src, at, idx + i, done, true);
			budget_count(mm, src, at, idx + i, done, advice_hint(v));
			at += done << lzm_page_shift;
			i += done;
		}
		if (ret == 0)
			break;
		if (ret == -EEXIST) { /* mapped already: as install() */
			lzm_release_run(mm, src, at, idx + i, 1, true);
			lzm_uffd_wake(mm->uffd, at, lzm_page_size);
			i++;
		} else if (ret == -EFAULT) {
			k = i; /* evicted meanwhile: read from the file */
		} else {
			/* the layout changes (EAGAIN, ENOENT): they fault again */
			lzm_release_run(mm, src, at, idx + i, k - i, false);
			lzm_uffd_wake(mm->uffd, at, (k - i) << lzm_page_shift);
			i = k;
		}
	}
	for (m = k; m < *n && !lzm_cache_has(c, fp + m); m++)
		;
	lzm_release_run(mm, src, addr + (m << lzm_page_shift), idx + m, *n - m, false);
	*n = m - k;
	return k;
}

/*
 * Make claimed pages a request: mm->lock is held. Pages the source does not
 * have (beyond the end of a file) are let go, but for the page a fault asked
 * for, which is poisoned: SIGBUS, as the kernel gives. Returns NULL when
 * nothing is left to produce.
 */
struct fill_req *lzm_fault_begin(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
				 uint64_t idx, size_t n, bool write, uintptr_t asked)
{
	struct source *src = v->src;
	size_t have = src->ops->extent ? src->ops->extent(src, idx, n) : n;
	struct fill_req *req;

	if (have == 0 && asked == addr) {
		int ret;

		io_errors_add(h, mm, 1);
		ret = install(h, mm, INSTALL_POISON, addr, NULL, lzm_page_size, true);
		/* poisoned in this mm; in a cache it stays a hole (the file may grow) */
		lzm_release_run(mm, src, addr, idx, 1, ret == 0 && !src->ops->cached);
		addr += lzm_page_size;
		idx++;
		n--;
	}
	if (have < n) {
		/* nobody asked for these: a later touch decides (the file may grow) */
		lzm_release_run(mm, src, addr + (have << lzm_page_shift), idx + have, n - have,
				false);
		n = have;
	}
	if (n && source_copied(src)) {
		size_t k = copy_cached(h, mm, v, addr, idx, &n);

		addr += k << lzm_page_shift;
		idx += k;
	}
	if (!n)
		return NULL;
	req = req_new(mm, src, addr, idx, n);
	if (!req)
		return NULL;
	*req = (struct fill_req){
		.mm = mm, .src = src, .addr = addr, .idx = idx, .n = n, .write = write,
		.asked = asked,
		/* Under a budget a fill region's pages, and a copied file
		 * region's, are written-protected at first: one the program
		 * never writes is dropped, not swapped, and made again (swap.c). */
		.wp = h->lm->ev && !src->ops->cached,
		.hint = (uint8_t)advice_hint(v),
		.end_io = source_reads(src) ? read_done : NULL,
	};
	/* MOVE takes private anonymous pages between VMAs of equal protection
	 * only; staging pages are read-write. It has no write-protect mode. */
	if (asked && h->batch_ns) {
		req->t0 = h->batch_ns;
		h->fault_deferred = true;
	}
	req->move = h->lm->opts.install == LAZYMAP_INSTALL_MOVE && !src->ops->cached &&
		    !(v->flags & LAZYMAP_SHARED) && v->prot == (PROT_READ | PROT_WRITE) && !req->wp;
	return req;
}

void lzm_req_free(struct handler *h, struct fill_req *req)
{
	if (req->t0)
		lzm_client_lat(req->mm, lzm_now_ns() - req->t0);
	if (req->buf)
		lzm_pool_free(&h->pool, req->buf, req->n);
	lzm_source_put(req->src);
	atomic_fetch_sub(&req->mm->busy, 1);
	lzm_mm_put(req->mm);
	free(req);
}

void lzm_fault_abandon(struct fill_req *req)
{
	lzm_release_run(req->mm, req->src, req->addr, req->idx, req->n, false);
	lzm_uffd_wake(req->mm->uffd, req->addr, req->n << lzm_page_shift);
	req->buf = NULL;
	lzm_req_free(NULL, req);
}

/*
 * How many of req's pages from first on are still where req will install
 * them: its VMA may have been unmapped, split or replaced while the pages
 * were produced. mm->lock held.
 */
static size_t req_mapped(const struct fill_req *req, size_t first)
{
	uintptr_t addr = req->addr + (first << lzm_page_shift);
	struct vma *v = lzm_vma_lookup(&req->mm->tree, addr);
	size_t limit;

	if (!v || v->src != req->src || vma_page(v, addr) != req->idx + first)
		return 0;
	limit = (v->end - addr) >> lzm_page_shift;
	return limit < req->n - first ? limit : req->n - first;
}

/* Let go of pages that were not installed, and wake their touchers: they fault again. */
static void req_drop(struct fill_req *req, size_t first, size_t n)
{
	uintptr_t addr = req->addr + (first << lzm_page_shift);

	if (!n)
		return;
	lzm_release_run(req->mm, req->src, addr, req->idx + first, n, false);
	lzm_uffd_wake(req->mm->uffd, addr, n << lzm_page_shift);
}

/* ------------------------------------------------------------ fill callbacks */

/* A call longer than this marks its source slow: its fills leave the handlers. */
#define SLOW_FILL_NS 1000000ull

/*
 * Install cnt produced pages of req from first on (ok), or give them up:
 * poisoned if a fault asked for one of them, else back to never-filled, to
 * be asked for again when touched.
 */
static void fill_install(struct handler *h, struct fill_req *req, size_t first, size_t cnt,
			 const char *buf, bool ok)
{
	struct mm *mm = req->mm;
	uintptr_t addr = req->addr + (first << lzm_page_shift);
	size_t len = cnt << lzm_page_shift, mapped;
	bool has_asked = req->asked >= addr && req->asked - addr < len;
	int ret;

	pthread_rwlock_rdlock(&mm->lock);
	mapped = req_mapped(req, first);
	if (mapped < cnt) {
		pthread_rwlock_unlock(&mm->lock);
		req_drop(req, first, cnt);
		return;
	}
	if (!ok && !has_asked) {
		lzm_release_run(mm, req->src, addr, req->idx + first, cnt, false);
	} else if (!ok) {
		io_errors_add(h, mm, cnt);
		ret = install(h, mm, INSTALL_POISON, addr, NULL, len, true);
		lzm_release_run(mm, req->src, addr, req->idx + first, cnt, ret == 0);
	} else {
		stat_add(&h->stats.pages_filled, cnt);
		ret = install(h, mm, req->move ? INSTALL_MOVE : req->wp ? INSTALL_COPY_WP : INSTALL_COPY,
			      addr, buf, len, has_asked);
		lzm_release_run(mm, req->src, addr, req->idx + first, cnt, ret == 0);
		if (ret == 0)
			budget_count(mm, req->src, addr, req->idx + first, cnt, req->hint);
	}
	pthread_rwlock_unlock(&mm->lock);
}

static int fill_call(struct handler *h, struct fill_req *req, char *buf, size_t first, size_t cnt)
{
	struct source *src = req->src;
	uint64_t t0 = lzm_now_ns(), took;
	int ret;

	if (req->move)
		lzm_pool_refill(buf, cnt); /* MOVE took the pages the last fill installed */
	stat_add(&h->stats.fill_calls, 1);
	ret = src->ops->fill(src, buf, req->idx + first, cnt);
	took = lzm_now_ns() - t0;
	if (took > SLOW_FILL_NS && !atomic_load_explicit(&src->slow, memory_order_relaxed)) {
		atomic_store_explicit(&src->slow, true, memory_order_relaxed);
		lzm_log(h->lm, LOG_INFO, "a fill callback took %llu us: its region's fills "
			"run on filler threads from now on", (unsigned long long)(took / 1000));
	}
	return ret;
}

void lzm_fill_req_run(struct handler *h, struct fill_req *req, char *buf)
{
	int ret = fill_call(h, req, buf, 0, req->n);

	if (ret < 0 && req->n > 1) {
		/* Find the pages that fail: the others are good data. */
		for (size_t i = 0; i < req->n; i++)
			fill_install(h, req, i, 1, buf, fill_call(h, req, buf, i, 1) >= 0);
	} else {
		fill_install(h, req, 0, req->n, buf, ret >= 0);
	}
	lzm_req_free(h, req);
}

/* ------------------------------------------------------------ file reads */

/* Queue the rest of req's read on h's ring. */
static int submit_read(struct handler *h, struct fill_req *req)
{
	size_t len = (req->n << lzm_page_shift) - req->done;
	bool nowait;
	uint64_t off;
	int fd, ret;

	if (!req->swap && req->src->ops->submit)
		return req->src->ops->submit(h, req); /* a connection of h's (nbd.c) */
	if (req->swap) {
		fd = lzm_swap_fd(h->lm->swap);
		off = ((uint64_t)req->slot << lzm_page_shift) + req->done;
		nowait = false;
		ret = 0;
	} else {
		ret = req->src->ops->read(req->src, req->idx, req->done, req->buffered, &fd, &off,
					  &nowait);
		if (ret == 0 && req->direct) {
			fd = req->src->cache->dfd; /* set once, before: lzm_cache_direct */
			nowait = false;
		}
	}
	req->nowait = nowait;
	return ret ? ret : lzm_uring_read(h, fd, req->buf + req->done, len, off, nowait, req);
}

/* Start req's read; lock not held. Waits for completions while the pool is full. */
static void start_read(struct handler *h, struct fill_req *req)
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
	ret = submit_read(h, req);
	if (ret)
		read_done(h, req, ret);
}

/*
 * Install what a read brought: data pages (the last one zero-filled past the
 * end of file), and poison for the pages that have none (the file ended
 * early, or the read failed) if poison_rest, else they go back to
 * never-filled.
 */
static void finish_read(struct handler *h, struct fill_req *req, size_t data_pages, size_t bytes,
			bool poison_rest)
{
	struct mm *mm = req->mm;
	size_t limit, good;
	int ret = 0;

	if (bytes & (lzm_page_size - 1))
		memset(req->buf + bytes, 0, lzm_page_size - (bytes & (lzm_page_size - 1)));
	if (req->src->ops->cached) {
		lzm_filemap_finish(h, req, data_pages, poison_rest);
		return;
	}
	pthread_rwlock_rdlock(&mm->lock);
	limit = req_mapped(req, 0);
	good = data_pages < limit ? data_pages : limit;
	if (source_copied(req->src)) {
		/* a page the cache took meanwhile is copied from there (it may
		 * be written already): from it on, they fault again */
		size_t k = 0;

		while (k < good && !lzm_cache_has(req->src->cache, req->src->base + req->idx + k))
			k++;
		if (k < good)
			good = limit = k;
	}
	if (good) {
		stat_add(req->swap ? &h->stats.swap_ins : &h->stats.pages_filled, good);
		ret = install(h, mm, req->wp ? INSTALL_COPY_WP : INSTALL_COPY, req->addr, req->buf,
			      good << lzm_page_shift, true);
	}
	if (ret == 0 && limit > good && poison_rest) {
		io_errors_add(h, mm, limit - good);
		ret = install(h, mm, INSTALL_POISON, req->addr + (good << lzm_page_shift), NULL,
			      (limit - good) << lzm_page_shift, true);
	}
	if (!poison_rest) {
		/* the rest will be faulted, and read, on its own */
		lzm_release_run(mm, req->src, req->addr + (good << lzm_page_shift),
				req->idx + good, limit - good, false);
		limit = good;
	}
	lzm_release_run(mm, req->src, req->addr, req->idx, limit, ret == 0);
	if (ret == 0)
		budget_count(mm, req->src, req->addr, req->idx, good, req->hint);
	pthread_rwlock_unlock(&mm->lock);
	req_drop(req, limit, req->n - limit);
	lzm_req_free(h, req);
}

/* A read of req finished with res (bytes or -errno): continue it, or install. */
static void read_done(struct handler *h, struct fill_req *req, int res)
{
	size_t len = req->n << lzm_page_shift;

	if (res == -EAGAIN || res == -EINTR) {
		/*
		 * An O_DIRECT read is asked not to wait: it may need the file's
		 * lock, which a write(2) from one of our regions to the same
		 * file holds while it faults on that region (ext4). Such a read
		 * goes through the page cache, which takes no such lock.
		 */
		req->buffered |= res == -EAGAIN;
		if (submit_read(h, req) == 0)
			return;
		res = -EIO;
	}
	if (res == -EOPNOTSUPP && req->nowait && req->src->cache) {
		/* a file system whose O_DIRECT reads cannot be asked not to wait */
		atomic_store(&req->src->cache->no_nowait, true);
		if (submit_read(h, req) == 0)
			return;
	}
	if (res < 0 && req->done >= lzm_page_size) {
		/* Failed after good data: keep the whole pages read so far. */
		finish_read(h, req, req->done >> lzm_page_shift, req->done & ~(lzm_page_size - 1),
			    false);
		return;
	}
	if (res < 0) {
		if (req->n > 1) {
			/* Which pages fail? Keep the one a fault waits on (the first,
			 * but for a read around it) and let the others be faulted,
			 * and read, one by one. */
			size_t k = req->asked >= req->addr ? (req->asked - req->addr) >> lzm_page_shift
							   : 0;

			if (k >= req->n)
				k = 0;
			lzm_release_run(req->mm, req->src, req->addr, req->idx, k, false);
			lzm_release_run(req->mm, req->src, req->addr + ((k + 1) << lzm_page_shift),
					req->idx + k + 1, req->n - k - 1, false);
			if (k)
				lzm_pool_free(&h->pool, req->buf, k);
			lzm_pool_free(&h->pool, req->buf + ((k + 1) << lzm_page_shift), req->n - k - 1);
			req->buf += k << lzm_page_shift;
			req->addr += k << lzm_page_shift;
			req->idx += k;
			req->n = 1;
			req->done = 0;
			if (submit_read(h, req) == 0)
				return;
		}
		/*
		 * One page a buffered read fails may be good all the same: a
		 * large folio of the file's page cache that holds a bad block
		 * fails every page in it, and stays there to fail the next
		 * read. O_DIRECT reads the page alone, as the kernel's own
		 * fault retries it alone.
		 */
		if (!req->swap && !req->direct && req->src->ops->read && req->n == 1 &&
		    lzm_cache_direct(req->src->cache) == 0) {
			req->direct = true;
			req->done = 0;
			if (submit_read(h, req) == 0)
				return;
		}
		finish_read(h, req, 0, 0, true);
		return;
	}
	req->done += (size_t)res;
	if (!req->swap) {
		stat_add(&h->stats.bytes_read, (uint64_t)res);
		atomic_fetch_add_explicit(&req->mm->bytes_read, (uint64_t)res, memory_order_relaxed);
	}
	if (res > 0 && req->done < len) {
		/* A short read: go on from where it stopped. */
		stat_add(&h->stats.short_reads, 1);
		if (submit_read(h, req) == 0)
			return;
	}
	if (req->done < len && req->src->cache)
		lzm_cache_refresh_size(req->src->cache);
	finish_read(h, req, (req->done + lzm_page_size - 1) >> lzm_page_shift, req->done, true);
}

/* ------------------------------------------------------------ entry points */

void lzm_fault_start(struct handler *h, struct fill_req *req)
{
	if (source_reads(req->src) || req->swap)
		start_read(h, req);
	else if (!atomic_load_explicit(&req->src->slow, memory_order_relaxed) ||
		 lzm_fillers_queue(h->lm, req) != 0)
		lzm_fill_req_run(h, req, h->pool.run);
}

/* ------------------------------------------------------------ swapped pages */

/*
 * A fault on a page the budget sent to swap (claimed: PAGE_SWAPPED|PAGE_BUSY):
 * read it back with the swapped pages after it whose slots follow its own
 * (they left together), as the kernel's swap readahead does, on the
 * handler's ring like a file read. They come back write-protected and keep
 * their slots until a write (swap_wp_fault): evicted again unwritten, they
 * cost no write. mm->lock held.
 */
static struct fill_req *swapin_begin(struct handler *h, struct mm *mm, struct vma *v,
				     uintptr_t addr, uint64_t idx, bool write)
{
	struct source *src = v->src;
	uint32_t slot1 = source_slot(src, idx);
	/* as many as a fill there would make: one for a random fault */
	size_t max = lzm_ra_window(h->lm, v, idx), n = 1;
	struct fill_req *req;

	if (max > (v->end - addr) >> lzm_page_shift)
		max = (v->end - addr) >> lzm_page_shift;
	while (n < max && source_slot(src, idx + n) == slot1 + n) {
		uint8_t expect = PAGE_SWAPPED;

		if (!atomic_compare_exchange_strong(&src->state[idx + n], &expect,
						    PAGE_SWAPPED | PAGE_BUSY))
			break;
		n++;
	}
	atomic_store_explicit(&v->ra_next, idx + n, memory_order_relaxed);
	req = req_new(mm, src, addr, idx, n);
	if (!req)
		return NULL;
	*req = (struct fill_req){
		.mm = mm, .src = src, .addr = addr, .idx = idx, .n = n, .write = write,
		.asked = addr, .swap = true, .wp = true, .slot = slot1 - 1, .end_io = read_done,
	};
	return req;
}

/*
 * The first write to a page installed write-protected (a fill region's, or
 * one read back from swap): its slot no longer has its bytes, and a fill
 * region's page is now the program's. Let go of the slot, mark it written,
 * let the write in. A page being evicted or read is its owner's: the write
 * waits for its wake and faults again. mm->lock held.
 *
 * The message may be older than the page's state: the write faulted, and
 * before a handler read the message the evictor took the page out (it was
 * FILLED, not BUSY) and let it go SWAPPED, its slot holding its only copy
 * (the write was never made). Such a message names no page of ours any
 * more: the toucher is only woken; it retries the write, faults on the
 * missing page and reads it back. (Letting go of the slot there left a
 * SWAPPED page with no slot, whose next fault read past the end of the
 * swap file and poisoned it: SIGBUS, the page lost.)
 */
static void swap_wp_fault(struct handler *h, struct mm *mm, struct source *src, uintptr_t addr,
			  uint64_t idx)
{
	_Atomic uint8_t *s = &src->state[idx];
	uint8_t old = atomic_load(s), want;
	_Atomic uint32_t *t;

	do {
		if ((old & (PAGE_SWAPPED | PAGE_BUSY)) == PAGE_SWAPPED) {
			lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
			return;
		}
		want = old & PAGE_BUSY ? old | PAGE_WAITER : old | PAGE_BUSY;
		if (old == want)
			return;
	} while (!atomic_compare_exchange_weak(s, &old, want));
	if (old & PAGE_BUSY)
		return;
	/* a zero page is about to be a page of the program's own: count it */
	if (old & PAGE_ZERO)
		budget_count(mm, src, addr, idx, 1, 0);
	t = atomic_load_explicit(&src->slots, memory_order_acquire);
	if (t) {
		uint32_t slot1 = atomic_exchange(&t[idx], 0);

		if (slot1)
			lzm_swap_free(src->swap, slot1 - 1);
	}
	stat_add(&h->stats.wp_faults, 1);
	if (lzm_uffd_writeprotect(mm->uffd, addr, lzm_page_size, false))
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size); /* gone or changing: retry */
	/* a MADV_DONTNEED meanwhile took FILLED away: then nothing was written */
	old = atomic_load(s);
	do
		want = (old & ~(PAGE_BUSY | PAGE_WAITER | PAGE_ZERO)) |
		       (old & PAGE_FILLED ? PAGE_WRITTEN : 0);
	while (!atomic_compare_exchange_weak(s, &old, want));
	if (old & PAGE_WAITER)
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
}

/* Whether addr is a zero page the budget does not count (PAGE_ZERO). */
static bool zero_page_at(struct mm *mm, uintptr_t addr)
{
	struct vma *v;
	bool zero = false;

	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, addr);
	if (v && !v->src->ops->cached)
		zero = atomic_load_explicit(&v->src->state[vma_page(v, addr)],
					    memory_order_relaxed) & PAGE_ZERO;
	pthread_rwlock_unlock(&mm->lock);
	return zero;
}

void lzm_fault_handle(struct handler *h, struct mm *mm, uintptr_t addr, unsigned flags, uint32_t tid)
{
	bool write = flags & UFFD_PAGEFAULT_FLAG_WRITE;
	struct fill_req *reqs[FAULT_REQS] = { NULL }, *ahead[AHEAD_WINDOWS_REMOTE] = { NULL };
	size_t nreqs = 0, nahead = 0, max, n;
	bool grown = false;
	struct vma *v;
	uint64_t idx;

	atomic_fetch_add_explicit(&mm->faults, 1, memory_order_relaxed);
	/* At the budget: let eviction make room first (no lock held here); a
	 * write to a zero page makes a page too. */
	if (!(flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_MINOR)) ||
	    ((flags & UFFD_PAGEFAULT_FLAG_WP) && h->lm->ev && zero_page_at(mm, addr)))
		lzm_evict_wait(h->lm);
again:
	pthread_rwlock_rdlock(&mm->lock);
	v = lzm_vma_lookup(&mm->tree, addr);
	if (!v && !grown) {
		/* Past the end of a VMA that mremap grew in place? */
		pthread_rwlock_unlock(&mm->lock);
		grown = true;
		if (lzm_mm_grown(h, mm, addr, tid))
			goto again;
		pthread_rwlock_rdlock(&mm->lock);
		v = lzm_vma_lookup(&mm->tree, addr);
	}
	if (!v) {
		/* Not ours (any more): let the toucher retry against the kernel. */
		stat_add(&h->stats.unowned, 1);
		lzm_uffd_wake(mm->uffd, addr, lzm_page_size);
		goto out;
	}
	if (v->src->ops->cached) {
		nreqs = lzm_filemap_fault(h, mm, v, addr, flags, reqs, ahead, &nahead);
		goto out;
	}
	idx = vma_page(v, addr);
	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		swap_wp_fault(h, mm, v->src, addr, idx);
		goto out;
	}
	if (lzm_claim_page(mm, &v->src->state[idx], addr) != CLAIM_OWNED) {
		stat_add(&h->stats.coalesced, 1);
		goto out;
	}
	if (atomic_load(&v->src->state[idx]) & PAGE_SWAPPED) {
		reqs[0] = swapin_begin(h, mm, v, addr, idx, write);
		nreqs = reqs[0] != NULL;
		goto out;
	}
	max = lzm_ra_window(h->lm, v, idx);
	if (max > (v->end - addr) >> lzm_page_shift)
		max = (v->end - addr) >> lzm_page_shift;
	n = 1 + (max > 1 ? lzm_claim_fresh(&v->src->state[idx + 1], max - 1) : 0);
	stat_add(&h->stats.readahead_pages, n - 1);
	atomic_store_explicit(&v->ra_next, idx + n, memory_order_relaxed);

	/* Around a lone fault of a synchronous source: the rest of its block. */
	bool around = n == 1 && !source_reads(v->src) && !(v->flags & LAZYMAP_SHARED) &&
		      v->advice != LAZYMAP_ADV_RANDOM &&
		      /* a slow callback would only be kept busy for pages nobody asked for */
		      !atomic_load_explicit(&v->src->slow, memory_order_relaxed);

	if (!source_produces(v->src)) {
		if (lzm_fill_zero(h, mm, v, addr, idx, n, write, addr, 0) == 0 && around)
			lzm_fault_around(h, mm, v, addr, write, NULL, 0);
		goto out;
	}
	reqs[0] = lzm_fault_begin(h, mm, v, addr, idx, n, write, addr);
	nreqs = reqs[0] != NULL;
	if (around)
		nreqs += lzm_fault_around(h, mm, v, addr, write, reqs + nreqs, FAULT_REQS - nreqs);
	else if (reqs[0] && n == h->lm->ra_pages)
		nahead = lzm_readahead_ahead(h, mm, v, idx + n, n, ahead);
out:
	pthread_rwlock_unlock(&mm->lock);
	for (size_t i = 0; i < nreqs; i++)
		lzm_fault_start(h, reqs[i]);
	for (size_t i = 0; i < nahead; i++)
		lzm_handlers_start_ahead(h, ahead[i], (unsigned)i);
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

		/* a prefetch is a fill like any other under the budget; its
		 * reads count when they land, so one more only with room */
		lzm_evict_wait(h->lm);
		if (addr != start && !lzm_evict_room(h->lm, h->lm->ra_pages))
			return addr;
		pthread_rwlock_rdlock(&mm->lock);
		v = lzm_vma_find(&mm->tree, addr);
		if (!v || v->start >= end) {
			pthread_rwlock_unlock(&mm->lock);
			return end;
		}
		if (addr < v->start)
			addr = v->start;

		uintptr_t stop = end < v->end ? end : v->end;
		uint64_t idx = vma_page(v, addr);

		/* Skip what is filled or being filled, under the one lock. */
		for (; addr < stop && scan; addr += lzm_page_size, idx++, scan--) {
			size_t max = (stop - addr) >> lzm_page_shift;

			if (max > h->lm->ra_pages)
				max = h->lm->ra_pages;
			n = lzm_claim_fresh_at(v, idx, max < budget ? max : budget);
			if (n)
				break;
		}
		if (n) {
			stat_add(&h->stats.prefetched, n);
			/* prefetched pages are the last the budget evicts */
			if (source_produces(v->src))
				req = lzm_fault_begin(h, mm, v, addr, idx, n, false, 0);
			else
				lzm_fill_zero(h, mm, v, addr, idx, n, v->prot & PROT_WRITE, 0, EV_LAST);
			if (req)
				req->hint = EV_LAST;
		}
		pthread_rwlock_unlock(&mm->lock);
		if (req)
			lzm_fault_start(h, req);
		addr += n << lzm_page_shift;
		budget -= n;
	}
	return addr;
}
