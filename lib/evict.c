// SPDX-License-Identifier: MIT
/*
 * The resident budget (opts.resident_limit; the kernel's kswapd and its LRU
 * lists): the pages a lazymap filled and still holds, in the order eviction
 * takes them, and the evictor thread that drops them ahead of need.
 *
 * Policy: 2Q (Johnson and Shasha) with FIFO queues, because the library
 * sees a page's use only when it faults: the kernel maps cached pages with
 * no word to us, and neither the page table nor /proc tells us a page was
 * accessed since (no accessed bit in pagemap or PAGEMAP_SCAN; page_idle is
 * not built here). What we do see is a refault: a page filled again soon
 * after we dropped it. So pages filled once go to A1in; eviction takes
 * from there while it holds more than a quarter of the budget; a page whose
 * fill finds its ghost (its key, kept for a while after eviction in A1out)
 * goes to Am, which keeps it longer. A simulation of Zipf(0.99) over 2^18
 * pages with a budget of 2^15: FIFO 73.1% hits, LRU 76.3%, this 76.7%; in
 * the bench (budget-zipf) it is FIFO's to a few points, since the hits that
 * make LRU and 2Q better are the ones we cannot see. Pages of regions
 * advised LAZYMAP_ADV_SEQUENTIAL go to a queue of their own that is
 * evicted first (behind the stream); prefetched pages go to Am.
 *
 * Watermarks: the evictor wakes when the resident pages pass high and drops
 * them until they are under low; a fill that would pass the limit itself
 * waits for it (lzm_evict_wait), so that the peak stays within one fill of
 * the limit.
 *
 * What is evicted: pages of the file caches (a hole punched in the memfd,
 * after write-back if dirty: cache.c), and pages of anonymous and fill
 * regions (evict_anon_runs): taken out of the program's address space with
 * UFFDIO_MOVE into a staging area of ours, written to swap (swap.c) if the
 * program wrote them, dropped if not (they are produced again).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/*
 * A run of pages one fill brought in: a cache's (src NULL: the cache's id,
 * its file pages), or a source's in our own address space (src, with a
 * reference; its pages from fp, last seen at addr).
 */
struct ev_run {
	uint64_t id;
	uint64_t fp;
	uint64_t n;
	struct source *src;
	uintptr_t addr;
};

/* Most pages one batch of the evictor takes (the staging area's size), in
 * at most BATCH_RUNS runs. */
#define BATCH_PAGES 512
#define BATCH_RUNS  64

/* What becomes of a page a batch took from an anonymous or fill region. */
enum fate {
	P_FORGET,  /* not ours to evict (read-only, unmapped): left alone, no longer counted */
	P_KEEP,    /* stays (busy, shared with a child, or swap failed): a second chance */
	P_GONE,    /* no longer there (the program dropped it, or its region went) */
	P_FRESH,   /* dropped: never written, it is produced again */
	P_SWAPPED, /* dropped: its slot has its bytes already */
	P_WRITE,   /* written to a new slot, then dropped */
};

struct ev_page {
	uintptr_t addr;
	uint64_t idx;
	uint32_t slot;
	uint8_t fate;
	bool claimed;
	bool back;  /* moved out and back: see move_back */
};

/* A FIFO of runs (a ring that grows). */
struct ev_queue {
	struct ev_run *v;
	size_t head, len, cap;
	uint64_t pages;
};

struct evictor {
	struct lazymap *lm;
	/* lock: the queues and the ghosts; never held while calling out. */
	pthread_mutex_t lock;
	pthread_cond_t wake;  /* the evictor waits here for work */
	pthread_cond_t freed; /* fills over the limit wait here */
	struct ev_queue in, am;
	struct ev_queue first; /* EV_FIRST: evicted before the others */
	uint64_t *ghost;      /* direct-mapped: key + 1 of evicted pages, 0 empty */
	size_t ghost_mask;
	uint64_t limit, high, low, in_max; /* pages */
	_Atomic uint64_t resident, peak;   /* pages in the queues (some may be gone already) */
	bool stop, kicked;
	bool fifo;            /* LAZYMAP_EVICT_POLICY=fifo: one queue, for comparison */
	/*
	 * Anonymous and fill pages leave through UFFDIO_MOVE into staging, a
	 * mapping registered with a userfaultfd of our own (uffd: no events,
	 * so dropping staging pages raises nothing a handler must read).
	 * fork_lock is held by the evictor from taking pages to letting go of
	 * them, and by fork() from prepare to parent/child: a page is never
	 * on its way to swap while fork() copies the address space (the
	 * child's copy would have it nowhere). Taken before any mm's lock.
	 */
	int uffd;
	char *staging;
	struct ev_page *pg;
	pthread_mutex_t fork_lock;
	bool in_batch;        /* runs taken from the queues are being evicted (lock; freed
	                       * is broadcast when it ends) */
	atomic_bool fork_held; /* by the thread in fork(), under fork_lock */
	/* The last batch freed nothing (every page dirty and failing to be
	 * written, say): fills stop waiting, the evictor retries slowly. */
	atomic_bool stuck;
	pthread_t thread;
	bool started;
};

/* ------------------------------------------------------------ queues and ghosts */

static int q_push(struct ev_queue *q, struct ev_run r)
{
	if (q->len == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 1024;
		struct ev_run *v = malloc(cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		for (size_t i = 0; i < q->len; i++)
			v[i] = q->v[(q->head + i) % q->cap];
		free(q->v);
		q->v = v;
		q->head = 0;
		q->cap = cap;
	}
	q->v[(q->head + q->len++) % q->cap] = r;
	q->pages += r.n;
	lzm_source_get(r.src); /* the queue's own */
	return 0;
}

/* Take at most max pages from the head of q (a run is split if need be);
 * runs q_forget emptied are passed over. */
static bool q_pop(struct ev_queue *q, size_t max, struct ev_run *out)
{
	struct ev_run *r;

	while (q->len && !q->v[q->head].n) {
		q->head = (q->head + 1) % q->cap;
		q->len--;
	}
	if (!q->len)
		return false;
	r = &q->v[q->head];
	*out = *r;
	if (r->n > max) {
		out->n = max;
		r->fp += max;
		r->n -= max;
		r->addr += max << lzm_page_shift;
		lzm_source_get(out->src); /* the rest keeps the queue's */
	} else {
		q->head = (q->head + 1) % q->cap;
		q->len--;
	}
	q->pages -= out->n;
	return true;
}

/*
 * The ghosts' table has a slot per page of the budget, up to GHOST_MAX
 * (16 MiB of table, touched only where keys land: calloc maps it lazily).
 * A budget larger than that is one eviction seldom reaches, and a ghost
 * is only a hint: past the cap, keys share slots and the older is
 * forgotten. Uncapped, a limit of 16 TiB asked for 32 GiB of table.
 */
#define GHOST_MAX ((size_t)1 << 21)

/*
 * Take pages [fp, fp + n) of src out of q's runs, to dest's back if dest;
 * returns how many are no longer queued (not counted any more). A run
 * emptied stays where it is, with no pages and no source, until q_pop
 * passes it over; the tail of a run cut in two goes to the back. A walk of
 * the whole queue: it runs when a region goes or the program drops pages,
 * not per fault.
 */
static uint64_t q_forget(struct ev_queue *q, struct source *src, uint64_t fp, uint64_t n,
			 struct ev_queue *dest)
{
	uint64_t end = fp + n, out = 0;

	for (size_t i = 0, len = q->len; i < len; i++) {
		struct ev_run *r = &q->v[(q->head + i) % q->cap];
		uint64_t rend = r->fp + r->n, from, to;

		if (r->src != src || rend <= fp || r->fp >= end)
			continue;
		from = r->fp > fp ? r->fp : fp;
		to = rend < end ? rend : end;
		if (!dest)
			out += to - from;
		else if (q_push(dest, (struct ev_run){ r->id, from, to - from, src,
						       r->addr + ((from - r->fp) << lzm_page_shift) }))
			continue; /* no memory: it stays where it was */
		q->pages -= to - from;
		if (from == r->fp && to == rend) {
			r->n = 0;
			r->src = NULL;
			lzm_source_put(src); /* never the last: the VMA going holds one */
		} else if (from == r->fp) {
			r->addr += (to - r->fp) << lzm_page_shift;
			r->n = rend - to;
			r->fp = to;
		} else if (to == rend) {
			r->n = from - r->fp;
		} else {
			/* its middle went: the tail goes to the back (without
			 * memory for it, it is no longer counted) */
			struct ev_run tail = { r->id, to, rend - to, src,
					       r->addr + ((to - r->fp) << lzm_page_shift) };

			r->n = from - r->fp;
			q->pages -= tail.n;
			if (q_push(q, tail))
				out += tail.n;
		}
	}
	return out;
}

static uint64_t ghost_key(uint64_t id, uint64_t fp)
{
	return (id << 40 ^ fp) * 0x9e3779b97f4a7c15ull;
}

static void ghost_add(struct evictor *ev, uint64_t id, uint64_t fp)
{
	uint64_t k = ghost_key(id, fp);

	ev->ghost[(k >> 20) & ev->ghost_mask] = k | 1;
}

/* Whether fp was evicted lately (and forget it: it is back). */
static bool ghost_take(struct evictor *ev, uint64_t id, uint64_t fp)
{
	uint64_t k = ghost_key(id, fp), *slot = &ev->ghost[(k >> 20) & ev->ghost_mask];

	if (*slot != (k | 1))
		return false;
	*slot = 0;
	return true;
}

/* CLOCK_REALTIME, as pthread_cond_timedwait() wants it, ns from now. */
static struct timespec deadline(uint64_t ns)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	ns += (uint64_t)t.tv_nsec;
	t.tv_sec += (time_t)(ns / 1000000000);
	t.tv_nsec = (long)(ns % 1000000000);
	return t;
}

/* ------------------------------------------------------------ the fill side */

static void resident_add(struct evictor *ev, int64_t n)
{
	uint64_t now = atomic_fetch_add_explicit(&ev->resident, (uint64_t)n, memory_order_relaxed) +
		       (uint64_t)n;
	uint64_t peak = atomic_load_explicit(&ev->peak, memory_order_relaxed);

	/* a maximum that holds without ev->lock too */
	while (n > 0 && now > peak &&
	       !atomic_compare_exchange_weak_explicit(&ev->peak, &peak, now, memory_order_relaxed,
						      memory_order_relaxed))
		;
}

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * A full queue about to grow: drop first the runs whose pages are gone, of
 * regions unmapped (q_forget emptied them) and of caches freed with their
 * last region. Without an evictor at work (a budget never reached) nothing
 * else takes them out, and a program that maps and unmaps files for ever
 * would grow the queue, and the count of resident pages, for ever.
 * ev->lock held; takes the cache registry's lock inside it.
 */
static void q_compact(struct evictor *ev, struct ev_queue *q)
{
	size_t nids, live = 0;
	uint64_t *ids = lzm_cache_ids(&nids), gone = 0;

	if (!ids)
		return;
	qsort(ids, nids, sizeof(*ids), id_cmp);
	for (size_t i = 0; i < q->len; i++) {
		struct ev_run r = q->v[(q->head + i) % q->cap];

		if (r.n && !r.src && !bsearch(&r.id, ids, nids, sizeof(*ids), id_cmp)) {
			gone += r.n;
			r.n = 0;
		}
		if (r.n)
			q->v[(q->head + live++) % q->cap] = r;
	}
	free(ids);
	q->len = live;
	q->pages -= gone;
	if (gone)
		resident_add(ev, -(int64_t)gone);
}

/* n pages from fp entered a cache (src NULL: id is its id) or src at addr. */
static void filled(struct lazymap *lm, uint64_t id, struct source *src, uintptr_t addr,
		   uint64_t fp, size_t n, int hint)
{
	struct evictor *ev = lm->ev;
	uint64_t refaults = 0;

	if (!ev || !n)
		return;
	pthread_mutex_lock(&ev->lock);
	for (size_t i = 0; i < n;) {
		bool back = ghost_take(ev, id, fp + i);
		size_t len = 1;
		struct ev_run r = { id, fp + i, 0, src, addr + (i << lzm_page_shift) };

		while (i + len < n && ghost_take(ev, id, fp + i + len) == back)
			len++;
		r.n = len;
		struct ev_queue *q = back || hint == EV_LAST ? &ev->am : hint == EV_FIRST ? &ev->first
											 : &ev->in;

		if (ev->fifo)
			q = &ev->in;
		if (q->len == q->cap && q->cap)
			q_compact(ev, q);
		/* no memory for the queue: the pages stay, uncounted */
		if (q_push(q, r) == 0)
			resident_add(ev, (int64_t)len);
		if (back)
			refaults += len;
		i += len;
	}
	if (atomic_load_explicit(&ev->resident, memory_order_relaxed) >= ev->high && !ev->kicked) {
		ev->kicked = true;
		pthread_cond_signal(&ev->wake);
	}
	pthread_mutex_unlock(&ev->lock);
	if (refaults)
		atomic_fetch_add_explicit(&lm->wstats.refaults, refaults, memory_order_relaxed);
}

void lzm_evict_filled(struct lazymap *lm, struct cache *c, uint64_t fp, size_t n, int hint)
{
	filled(lm, c->id, NULL, 0, fp, n, hint);
}

void lzm_evict_filled_src(struct lazymap *lm, struct source *src, uintptr_t addr, uint64_t idx,
			  size_t n, int hint)
{
	if (lm->ev && lm->ev->staging)
		filled(lm, (uintptr_t)src, src, addr, idx, n, hint);
}

/* Pages [idx, idx + n) of src out of the queues: to the back of the first
 * one if to_first (still counted), else out of the count too. */
static void forget(struct lazymap *lm, struct source *src, uint64_t idx, uint64_t n,
		   bool to_first)
{
	struct evictor *ev = lm->ev;
	struct ev_queue *to;
	uint64_t out = 0;

	if (!ev || !ev->staging || src->ops->cached)
		return;
	pthread_mutex_lock(&ev->lock);
	to = to_first ? &ev->first : NULL;
	for (struct ev_queue *q = &ev->first; q; q = q == &ev->first ? &ev->in
						 : q == &ev->in    ? &ev->am
								   : NULL)
		if (q != to)
			out += q_forget(q, src, idx, n, to);
	if (out)
		resident_add(ev, -(int64_t)out);
	pthread_mutex_unlock(&ev->lock);
}

void lzm_evict_forget(struct lazymap *lm, struct source *src, uint64_t idx, uint64_t n)
{
	forget(lm, src, idx, n, false);
}

bool lzm_evict_room(struct lazymap *lm, size_t n)
{
	struct evictor *ev = lm->ev;

	return !ev || atomic_load_explicit(&ev->resident, memory_order_relaxed) + n <= ev->limit;
}

void lzm_evict_dropped(struct lazymap *lm, struct source *src, uint64_t idx, uint64_t n)
{
	forget(lm, src, idx, n, true);
}

/* The longest a fill waits for eviction before it goes on over the limit. */
#define WAIT_MAX_NS (1000 * 1000 * 1000ull)

void lzm_evict_wait(struct lazymap *lm)
{
	struct evictor *ev = lm->ev;
	struct timespec until;
	uint64_t t0;

	if (!ev || atomic_load_explicit(&ev->resident, memory_order_relaxed) < ev->limit)
		return;
	if (atomic_load_explicit(&ev->stuck, memory_order_relaxed)) {
		atomic_fetch_add_explicit(&lm->wstats.budget_overruns, 1, memory_order_relaxed);
		return;
	}
	t0 = lzm_now_ns();
	until = deadline(WAIT_MAX_NS);
	pthread_mutex_lock(&ev->lock);
	while (!ev->stop && !atomic_load_explicit(&ev->stuck, memory_order_relaxed) &&
	       atomic_load_explicit(&ev->resident, memory_order_relaxed) >= ev->limit) {
		ev->kicked = true;
		pthread_cond_signal(&ev->wake);
		if (pthread_cond_timedwait(&ev->freed, &ev->lock, &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&ev->lock);
	t0 = lzm_now_ns() - t0;
	atomic_fetch_add_explicit(&lm->wstats.evict_wait_ns, t0, memory_order_relaxed);
	if (atomic_load_explicit(&ev->resident, memory_order_relaxed) >= ev->limit)
		atomic_fetch_add_explicit(&lm->wstats.budget_overruns, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------ the evictor */

/*
 * One step of the evictor: up to BATCH_PAGES pages in up to BATCH_RUNS runs,
 * taken in queue order. Their dirty pages are written back together, one
 * write-back per file over the span of its runs (it writes every dirty page
 * there: what it cleans beyond our runs can go cheaply later), then each run
 * is evicted (a claim covers 64 pages).
 */
/* How long the evictor waits before a batch after one that freed nothing. */
#define STUCK_RETRY_NS (20 * 1000 * 1000ull)

static int run_cmp(const void *a, const void *b)
{
	const struct ev_run *x = a, *y = b;

	if (x->src != y->src)
		return (uintptr_t)x->src < (uintptr_t)y->src ? -1 : 1;
	return x->id != y->id ? (x->id < y->id ? -1 : 1) : x->fp < y->fp ? -1 : x->fp > y->fp;
}

/* Evict runs[0..n) (one cache's, in file order); returns the pages no longer resident. */
static uint64_t evict_cache_runs(struct evictor *ev, struct ev_run *runs, size_t n)
{
	struct cache *c = lzm_cache_find_id(runs[0].id);
	uint64_t gone = 0;

	if (!c) {
		for (size_t i = 0; i < n; i++)
			gone += runs[i].n; /* the cache went with its last region */
		return gone;
	}
	lzm_cache_writeback(c, runs[0].fp, runs[n - 1].fp + runs[n - 1].n - runs[0].fp, ev->lm,
			    WB_PROTECT);
	for (size_t i = 0; i < n; i++) {
		for (uint64_t fp = runs[i].fp, end = fp + runs[i].n; fp < end;) {
			size_t len = cache_run_max(fp, end - fp < 64 ? end - fp : 64);
			uint64_t kept = 0;
			size_t dropped = lzm_cache_evict(c, fp, len, ev->lm, &kept);

			atomic_fetch_add_explicit(&ev->lm->wstats.evictions, dropped,
						  memory_order_relaxed);
			pthread_mutex_lock(&ev->lock);
			for (size_t k = 0; k < len; k++) {
				if (kept >> k & 1) {
					/* written again, or being read: a second chance */
					q_push(ev->fifo ? &ev->in : &ev->am,
					       (struct ev_run){ runs[i].id, fp + k, 1, NULL, 0 });
					continue;
				}
				ghost_add(ev, runs[i].id, fp + k);
				gone++;
			}
			pthread_mutex_unlock(&ev->lock);
			fp += len;
		}
	}
	lzm_cache_put(c);
	return gone;
}

/* ------------------------------------------------------------ anonymous and fill pages */

/*
 * Where page idx of src is mapped in mm now, looked for near hint first;
 * 0 if nowhere. *vp caches the VMA. The program's mremap moves a page
 * (its source goes with it) while a batch holds it: a wake or a move back
 * goes where it is then. mm->lock held.
 */
static bool vma_maps(const struct vma *v, const struct source *src, uint64_t idx)
{
	return v && v->src == src && idx >= v->pgoff &&
	       idx - v->pgoff < (v->end - v->start) >> lzm_page_shift;
}

static uintptr_t page_addr(struct mm *mm, struct source *src, uint64_t idx, uintptr_t hint,
			   struct vma **vp)
{
	struct vma *v = *vp;

	if (!vma_maps(v, src, idx)) {
		v = lzm_vma_lookup(&mm->tree, hint);
		/* moved by mremap since: look for it (rare) */
		if (!vma_maps(v, src, idx))
			for (v = lzm_vma_first(&mm->tree); v && !vma_maps(v, src, idx);
			     v = lzm_vma_next(v))
				;
		*vp = v;
	}
	return v ? v->start + ((idx - v->pgoff) << lzm_page_shift) : 0;
}

/* UFFDIO_MOVE takes pages from writable private anonymous mappings only. */
static bool movable(const struct vma *v)
{
	return v->prot == (PROT_READ | PROT_WRITE) && !(v->flags & LAZYMAP_SHARED);
}

static bool page_is_zero(const char *p)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t acc = 0;

	for (size_t i = 0; i < lzm_page_size / sizeof(*w); i++)
		acc |= w[i];
	return !acc;
}

/* Move pg[from, to) (claimed, consecutive addresses) out to staging. mm->lock held. */
static void move_out(struct evictor *ev, struct ev_page *pg, size_t from, size_t to)
{
	while (from < to) {
		size_t done = 0;
		int ret = lzm_uffd_move(ev->uffd, (uintptr_t)ev->staging + (from << lzm_page_shift),
					pg[from].addr, (to - from) << lzm_page_shift,
					UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &done);

		from += done >> lzm_page_shift;
		if (ret == 0 || (ret == -EAGAIN && done))
			continue;
		/* EBUSY: shared with a child since fork; ENOENT: not mapped
		 * there (the program moved or unmapped it, which its event
		 * will say): it stays as it is */
		if (from < to)
			pg[from++].fate = P_KEEP;
	}
}

/*
 * Give back pages whose write to swap failed: UFFDIO_MOVE back where they
 * were, through the program's userfaultfd (its range is registered there),
 * while they are still claimed. It may have to wait for events the
 * handlers have yet to read (EAGAIN).
 */
static void move_back(struct evictor *ev, struct mm *mm, struct source *src, struct ev_page *p,
		      size_t k)
{
	for (unsigned tries = 0;; tries++) {
		struct vma *v = NULL;
		size_t done;
		int ret = -ENOENT;

		pthread_rwlock_rdlock(&mm->lock);
		p->addr = page_addr(mm, src, p->idx, p->addr, &v);
		if (p->addr)
			ret = lzm_uffd_move(mm->uffd, p->addr,
					    (uintptr_t)ev->staging + (k << lzm_page_shift),
					    lzm_page_size, UFFDIO_MOVE_MODE_DONTWAKE, &done);
		pthread_rwlock_unlock(&mm->lock);
		if (ret == 0) {
			/* A moved page comes back writable, its write protection
			 * gone: its next write would go unseen. So it counts as
			 * written (a fill page), and its slot is stale (swap.c). */
			p->fate = P_KEEP;
			p->back = true;
			return;
		}
		if (ret != -EAGAIN || ev->stop || tries > 5000) {
			/* its region went (ENOENT), or it cannot be put back */
			if (ret != -ENOENT)
				lzm_log(ev->lm, LOG_ERR, "a page at %#lx could not be swapped nor "
					"put back (%s): lost", (unsigned long)p->addr, strerror(-ret));
			p->fate = P_GONE;
			return;
		}
		struct timespec ts = { .tv_nsec = 200000 };

		nanosleep(&ts, NULL);
	}
}

/* Write the P_WRITE pages of pg[0, n) to new slots; those that cannot be are P_KEEP. */
static void swap_out(struct evictor *ev, struct source *src, struct ev_page *pg, size_t n)
{
	struct swap *sw = ev->lm->swap;
	struct swap_io io[BATCH_PAGES];
	size_t nio = 0;

	if (!lzm_swap_table(src, sw)) {
		for (size_t k = 0; k < n; k++)
			if (pg[k].fate == P_WRITE)
				pg[k].fate = P_KEEP;
		return;
	}
	for (size_t k = 0; k < n;) {
		uint32_t want = 0, got, slot;

		while (k + want < n && pg[k + want].fate == P_WRITE)
			want++;
		if (!want) {
			k++;
			continue;
		}
		got = lzm_swap_alloc(sw, want, &slot);
		if (!got) {
			/* the swap is full: these stay, over the budget */
			for (; k < n; k++)
				if (pg[k].fate == P_WRITE)
					pg[k].fate = P_KEEP;
			break;
		}
		io[nio++] = (struct swap_io){ ev->staging + (k << lzm_page_shift),
					      (size_t)got << lzm_page_shift, slot, 0 };
		for (uint32_t i = 0; i < got; i++)
			pg[k + i].slot = slot + i;
		k += got;
	}
	lzm_swap_write(sw, io, nio);
	for (size_t i = 0; i < nio; i++) {
		size_t k = (size_t)(io[i].buf - ev->staging) >> lzm_page_shift;

		if (io[i].res == (int)io[i].len)
			continue;
		if (i == 0 || io[i - 1].res == (int)io[i - 1].len)
			lzm_log(ev->lm, LOG_WARNING, "swap write failed (%s): pages stay resident",
				strerror(io[i].res < 0 ? -io[i].res : EIO));
		for (uint32_t j = 0; j < io[i].len >> lzm_page_shift; j++) {
			lzm_swap_free(sw, io[i].slot + j);
			pg[k + j].fate = P_KEEP;
		}
	}
}

/* The state a page a batch claimed is left in, by its fate; slot set first. mm->lock held. */
static void let_go(struct mm *mm, struct source *src, struct ev_page *p)
{
	_Atomic uint8_t *s = &src->state[p->idx];
	uint8_t old = atomic_load(s), want;

	struct vma *v = NULL;

	if (p->fate == P_WRITE)
		atomic_store(&src->slots[p->idx], p->slot + 1);
	do {
		if (!(old & PAGE_FILLED)) {
			/*
			 * The program dropped it meanwhile (apply_remove): gone,
			 * and so is its copy in swap, whatever the batch made of
			 * it (a page the program's zap took before our move is
			 * P_KEEP). forget_page left the slot to us, its owner: let
			 * go of it while the page is still BUSY, before a fault
			 * fills it again. (A kept page's slot was once left set:
			 * its next fill was a writable zero page, written with no
			 * write-protect fault, and its next eviction took the old
			 * slot for its bytes: the program read an older write.)
			 */
			lzm_swap_forget(src, p->idx);
			want = 0;
		} else if (p->fate == P_KEEP) {
			want = old & (PAGE_FILLED | PAGE_WRITTEN | PAGE_ZERO);
			if (p->back)
				want |= PAGE_WRITTEN;
		} else {
			want = p->fate == P_WRITE || p->fate == P_SWAPPED ? PAGE_SWAPPED : 0;
		}
	} while (!atomic_compare_exchange_weak(s, &old, want));
	if (p->back)
		lzm_swap_forget(src, p->idx);
	if (old & PAGE_WAITER) {
		/* where it is now: the program may have moved it (mremap) */
		uintptr_t at = page_addr(mm, src, p->idx, p->addr, &v);

		lzm_uffd_wake(mm->uffd, at ? at : p->addr, lzm_page_size);
	}
	if (!want && p->fate == P_KEEP)
		p->fate = P_GONE;
}

/*
 * Evict runs[0..n) of one source (in page order) from our own address
 * space. Pages are claimed (PAGE_BUSY: a fault on one waits for us) and
 * moved out with UFFDIO_MOVE, which takes each page whole at once: a write
 * of the program's either made it before the move, or faults after it and
 * waits. Written pages go to swap, the others are dropped; each is let go
 * in its new state and its waiters woken (they fault again, and read it
 * back). Returns the pages no longer resident.
 */
static uint64_t evict_anon_runs(struct evictor *ev, struct ev_run *runs, size_t nr)
{
	struct lazymap *lm = ev->lm;
	struct mm *mm = &lm->mm;
	struct source *src = runs[0].src;
	struct ev_page *pg = ev->pg;
	unsigned char vec[BATCH_PAGES];
	uint64_t gone = 0, written = 0, dropped = 0;
	struct vma *v = NULL;
	size_t np = 0;

	pthread_mutex_lock(&ev->fork_lock);
	pthread_rwlock_rdlock(&mm->lock);
	for (size_t r = 0; r < nr; r++) {
		for (uint64_t i = 0; i < runs[r].n && np < BATCH_PAGES; i++) {
			struct ev_page *p = &pg[np++];
			_Atomic uint8_t *s = &src->state[runs[r].fp + i];
			uint8_t old = atomic_load(s);

			*p = (struct ev_page){ .idx = runs[r].fp + i, .fate = P_GONE };
			p->addr = page_addr(mm, src, p->idx, runs[r].addr + (i << lzm_page_shift), &v);
			if (!p->addr || !movable(v)) {
				p->fate = p->addr ? P_FORGET : P_GONE;
				continue;
			}
			do {
				if (!(old & PAGE_FILLED) || (old & PAGE_BUSY))
					break;
			} while (!atomic_compare_exchange_weak(s, &old, old | PAGE_BUSY));
			if (!(old & PAGE_FILLED))
				continue; /* dropped, or in swap already */
			if (old & PAGE_BUSY) {
				p->fate = P_KEEP; /* a fill or a write is at it */
				continue;
			}
			p->claimed = true;
			p->fate = P_WRITE; /* for now: moved */
		}
	}
	for (size_t k = 0, j; k < np; k = j) {
		for (j = k + 1; j < np && pg[j].claimed && pg[j - 1].claimed &&
				pg[j].addr == pg[j - 1].addr + lzm_page_size;
		     j++)
			;
		if (pg[k].claimed)
			move_out(ev, pg, k, j);
	}
	pthread_rwlock_unlock(&mm->lock);

	/* What each moved page is: a hole (it was not there), a page its slot
	 * holds already, one never written, or one to write. */
	if (np && mincore(ev->staging, np << lzm_page_shift, vec))
		memset(vec, 1, np);
	for (size_t k = 0; k < np; k++) {
		struct ev_page *p = &pg[k];
		const char *page = ev->staging + (k << lzm_page_shift);

		if (!p->claimed || p->fate != P_WRITE)
			continue;
		if (!(vec[k] & 1))
			p->fate = P_KEEP; /* not there: moved or dropped by the */
					  /* program, which its event will say */
		else if (source_slot(src, p->idx))
			p->fate = P_SWAPPED;
		else if (source_produces(src) ? !(atomic_load(&src->state[p->idx]) & PAGE_WRITTEN)
					: page_is_zero(page))
			p->fate = P_FRESH;
	}
	swap_out(ev, src, pg, np);
	for (size_t k = 0; k < np; k++)
		if (pg[k].claimed && pg[k].fate == P_KEEP && (vec[k] & 1))
			move_back(ev, mm, src, &pg[k], k);

	pthread_rwlock_rdlock(&mm->lock);
	for (size_t k = 0; k < np; k++) {
		struct ev_page *p = &pg[k];

		if (p->claimed)
			let_go(mm, src, p);
		written += p->fate == P_WRITE;
		dropped += p->fate >= P_FRESH;
		gone += p->fate != P_KEEP;
	}
	pthread_rwlock_unlock(&mm->lock);
	madvise(ev->staging, np << lzm_page_shift, MADV_DONTNEED);
	pthread_mutex_unlock(&ev->fork_lock);

	atomic_fetch_add_explicit(&lm->wstats.evictions, dropped, memory_order_relaxed);
	atomic_fetch_add_explicit(&lm->wstats.swap_outs, written, memory_order_relaxed);
	/*
	 * A page kept goes back to a queue, unless its region went while the
	 * batch held it: the forget of that unmap found it in no queue, and
	 * it would stay counted until a later batch found it gone. mm's lock
	 * first, as forget() takes them: no unmap between the look and the push.
	 */
	v = NULL;
	pthread_rwlock_rdlock(&mm->lock);
	pthread_mutex_lock(&ev->lock);
	for (size_t k = 0; k < np; k++) {
		if (pg[k].fate == P_KEEP && page_addr(mm, src, pg[k].idx, pg[k].addr, &v))
			q_push(ev->fifo ? &ev->in : &ev->am,
			       (struct ev_run){ (uintptr_t)src, pg[k].idx, 1, src, pg[k].addr });
		else if (pg[k].fate == P_KEEP)
			gone++;
		else if (pg[k].fate >= P_FRESH)
			ghost_add(ev, (uintptr_t)src, pg[k].idx);
	}
	pthread_mutex_unlock(&ev->lock);
	pthread_rwlock_unlock(&mm->lock);
	return gone;
}

static void *evictor_main(void *arg)
{
	struct evictor *ev = arg;
	struct ev_run runs[BATCH_RUNS];

	pthread_mutex_lock(&ev->lock);
	while (!ev->stop) {
		uint64_t taken = 0, gone = 0;
		size_t nruns = 0;

		if (atomic_load_explicit(&ev->resident, memory_order_relaxed) < ev->high &&
		    !ev->kicked) {
			pthread_cond_broadcast(&ev->freed);
			pthread_cond_wait(&ev->wake, &ev->lock);
			continue;
		}
		if (atomic_load_explicit(&ev->resident, memory_order_relaxed) <= ev->low) {
			ev->kicked = false;
			pthread_cond_broadcast(&ev->freed);
			continue;
		}
		/* Pages behind a sequential stream first; then A1in while it
		 * holds more than its share, else Am. */
		while (nruns < BATCH_RUNS && taken < BATCH_PAGES) {
			struct ev_queue *q = ev->first.len		       ? &ev->first
					     : ev->in.pages > ev->in_max || !ev->am.len ? &ev->in
											  : &ev->am;

			if (!q_pop(q, BATCH_PAGES - taken, &runs[nruns]) &&
			    !q_pop(&ev->in, BATCH_PAGES - taken, &runs[nruns]) &&
			    !q_pop(&ev->am, BATCH_PAGES - taken, &runs[nruns]))
				break;
			taken += runs[nruns++].n;
		}
		if (!nruns) {
			/* nothing queued: what is counted is in flight; let fills on */
			ev->kicked = false;
			pthread_cond_broadcast(&ev->freed);
			pthread_cond_wait(&ev->wake, &ev->lock);
			continue;
		}
		/* The runs stay counted until they are gone: until then their
		 * pages are in memory (mapped, or in staging), and fills past
		 * the limit wait for them. What stays is queued again. */
		ev->in_batch = true;
		pthread_mutex_unlock(&ev->lock);
		qsort(runs, nruns, sizeof(runs[0]), run_cmp);
		for (size_t i = 0, j; i < nruns; i = j) {
			for (j = i + 1; j < nruns && runs[j].id == runs[i].id &&
					runs[j].src == runs[i].src;
			     j++)
				;
			gone += runs[i].src ? evict_anon_runs(ev, runs + i, j - i)
					    : evict_cache_runs(ev, runs + i, j - i);
		}
		for (size_t i = 0; i < nruns; i++)
			lzm_source_put(runs[i].src);
		pthread_mutex_lock(&ev->lock);
		resident_add(ev, -(int64_t)gone);
		ev->in_batch = false;
		atomic_store_explicit(&ev->stuck, !gone, memory_order_relaxed);
		pthread_cond_broadcast(&ev->freed);
		if (!gone) {
			/* nothing could go: the fills that wait go on (stuck); try again later */
			struct timespec until = deadline(STUCK_RETRY_NS);

			pthread_cond_timedwait(&ev->wake, &ev->lock, &until);
		}
	}
	pthread_cond_broadcast(&ev->freed);
	pthread_mutex_unlock(&ev->lock);
	return NULL;
}

/*
 * The staging area pages leave through, and the userfaultfd it is
 * registered with (UFFDIO_MOVE moves into a range registered with the
 * descriptor it is called on). Without MOVE (Linux < 6.8) anonymous and
 * fill pages are not counted nor evicted: staging stays NULL.
 */
static int staging_init(struct evictor *ev)
{
	size_t len = BATCH_PAGES << lzm_page_shift;
	uint64_t got = 0;
	void *p;
	int ret;

	ev->pg = calloc(BATCH_PAGES, sizeof(*ev->pg));
	if (!ev->pg)
		return -ENOMEM;
	ret = lzm_uffd_open(&ev->uffd);
	if (ret)
		return ret;
	if (lzm_uffd_api(ev->uffd, UFFD_FEATURE_MOVE, &got) || !(got & UFFD_FEATURE_MOVE))
		return 0;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	madvise(p, len, MADV_NOHUGEPAGE);
	ret = lzm_uffd_register(ev->uffd, (uintptr_t)p, len, UFFDIO_REGISTER_MODE_MISSING);
	if (ret) {
		munmap(p, len);
		return ret;
	}
	ev->staging = p;
	return 0;
}

void lzm_evict_fork_hold(struct lazymap *lm)
{
	if (lm->ev && lm->ev->staging) {
		pthread_mutex_lock(&lm->ev->fork_lock);
		lm->ev->fork_held = true;
	}
}

void lzm_evict_settle(struct lazymap *lm)
{
	struct evictor *ev = lm->ev;

	if (!ev)
		return;
	/* not while fork_lock is held: the batch waits for it (a fork, or a
	 * test holding the evictor) */
	pthread_mutex_lock(&ev->lock);
	while (ev->in_batch && !ev->stop && !atomic_load(&ev->fork_held))
		pthread_cond_wait(&ev->freed, &ev->lock);
	pthread_mutex_unlock(&ev->lock);
}

void lzm_evict_fork_release(struct lazymap *lm)
{
	if (lm->ev && lm->ev->fork_held) {
		lm->ev->fork_held = false;
		pthread_mutex_unlock(&lm->ev->fork_lock);
	}
}

int lzm_evict_start(struct lazymap *lm)
{
	uint64_t limit = lm->opts.resident_limit >> lzm_page_shift;
	struct evictor *ev;
	size_t slots = 1024;
	int ret;

	if (!limit)
		return 0;
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return -ENOMEM;
	ev->lm = lm;
	ev->limit = limit;
	ev->high = limit - limit / 16;
	ev->low = limit - limit / 8;
	ev->in_max = limit / 4;
	/* The bench's same-run comparison with umap's policy; not an option. */
	const char *policy = getenv("LAZYMAP_EVICT_POLICY");

	ev->fifo = policy && !strcmp(policy, "fifo");
	while (slots < limit && slots < GHOST_MAX)
		slots <<= 1;
	ev->ghost = calloc(slots, sizeof(*ev->ghost));
	ev->ghost_mask = slots - 1;
	pthread_mutex_init(&ev->lock, NULL);
	pthread_mutex_init(&ev->fork_lock, NULL);
	pthread_cond_init(&ev->wake, NULL);
	pthread_cond_init(&ev->freed, NULL);
	ev->uffd = -1;
	lm->ev = ev;
	if (!ev->ghost)
		return -ENOMEM;
	ret = lzm_swap_open(lm, &lm->swap);
	if (ret)
		return ret;
	ret = staging_init(ev);
	if (ret)
		return ret;
	if (pthread_create(&ev->thread, NULL, evictor_main, ev))
		return -EAGAIN;
	ev->started = true;
	pthread_setname_np(ev->thread, "lazymap-evict");
	return 0;
}

void lzm_evict_stop(struct lazymap *lm)
{
	struct evictor *ev = lm->ev;

	if (!ev)
		return;
	pthread_mutex_lock(&ev->lock);
	ev->stop = true;
	pthread_cond_broadcast(&ev->wake);
	pthread_cond_broadcast(&ev->freed);
	pthread_mutex_unlock(&ev->lock);
	if (ev->started)
		pthread_join(ev->thread, NULL);
	lm->ev = NULL;
	for (struct ev_queue *q = &ev->first; q; q = q == &ev->first ? &ev->in
						 : q == &ev->in    ? &ev->am
								   : NULL)
		for (size_t i = 0; i < q->len; i++)
			lzm_source_put(q->v[(q->head + i) % q->cap].src);
	free(ev->first.v);
	free(ev->in.v);
	free(ev->am.v);
	free(ev->ghost);
	free(ev->pg);
	if (ev->staging)
		munmap(ev->staging, BATCH_PAGES << lzm_page_shift);
	if (ev->uffd >= 0)
		close(ev->uffd);
	/* sources that still have slots hold the swap until they go */
	lzm_swap_put(lm->swap);
	lm->swap = NULL;
	pthread_mutex_destroy(&ev->fork_lock);
	pthread_mutex_destroy(&ev->lock);
	pthread_cond_destroy(&ev->wake);
	pthread_cond_destroy(&ev->freed);
	free(ev);
}

uint64_t lzm_evict_resident(struct lazymap *lm, bool peak)
{
	struct evictor *ev = lm->ev;

	if (!ev)
		return 0;
	return atomic_load_explicit(peak ? &ev->peak : &ev->resident, memory_order_relaxed)
	       << lzm_page_shift;
}
