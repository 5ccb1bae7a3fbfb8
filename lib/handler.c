// SPDX-License-Identifier: MIT
/*
 * Handler threads: each waits on the userfaultfd, its io_uring's completions
 * and the stop and work eventfds in its own epoll set, reads fault messages
 * in batches and runs the fault path on them, completes file reads, and
 * takes queued prefetch work when idle.
 *
 * The wait decides our speed on small VMs: a sleeping thread woken on the
 * other CPU costs tens of microseconds, a whole same-CPU round trip a few.
 * So an idle handler first polls with sched_yield() for spin_us (a faulting
 * thread that blocks on the same CPU then runs us at once, with no wake-up at
 * all), and only then sleeps in epoll_wait(), where it costs nothing. With
 * one pinned handler per CPU, the handler beside the faulting thread serves
 * it; the others stop polling early (spin_again).
 */
#include <errno.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

#define BATCH 64

_Thread_local struct handler *lzm_current_handler;

/* The fault messages of a batch (its events were applied when it was read). */
static void serve_batch(struct handler *h, struct mm *mm, const struct uffd_msg *msgs, int n)
{
	for (int i = 0; i < n; i++) {
		const struct uffd_msg *m = &msgs[i];
		uintptr_t addr;
		bool dup = false;

		if (m->event != UFFD_EVENT_PAGEFAULT)
			continue;
		stat_add(&h->stats.faults, 1);
		addr = (uintptr_t)m->arg.pagefault.address & ~(uintptr_t)(lzm_page_size - 1);
		/* Two threads faulting on one page queue two messages. */
		for (int j = 0; j < i && !dup; j++)
			dup = msgs[j].event == UFFD_EVENT_PAGEFAULT &&
			      ((uintptr_t)msgs[j].arg.pagefault.address & ~(uintptr_t)(lzm_page_size - 1)) == addr;
		if (dup) {
			stat_add(&h->stats.coalesced, 1);
			continue;
		}
		h->fault_deferred = false;
		lzm_fault_handle(h, mm, addr, (unsigned)m->arg.pagefault.flags,
				 m->arg.pagefault.feat.ptid);
		if (h->batch_ns && !h->fault_deferred)
			lzm_client_lat(mm, lzm_now_ns() - h->batch_ns);
	}
}

/*
 * Read what mm's userfaultfd holds, apply its events in the order read
 * (event_lock: another handler reading the same descriptor applies its
 * batch before or after ours, never between), then serve its faults with
 * the lock let go. Returns how many messages, 0 if none, or -errno.
 */
static int serve_mm(struct handler *h, struct mm *mm)
{
	struct uffd_msg msgs[BATCH];
	int n, bad = 0;

	/* Busy: another handler is reading, and will read again if there is more. */
	if (pthread_mutex_trylock(&mm->event_lock))
		return 0;
	n = lzm_mm_read(mm, msgs, BATCH);
	for (int i = 0; i < n; i++)
		if (msgs[i].event != UFFD_EVENT_PAGEFAULT && lzm_event_apply(h, mm, &msgs[i]))
			bad = -EBADMSG;
	pthread_mutex_unlock(&mm->event_lock);
	if (n <= 0)
		return n;
	/* Busy from now: reads are no longer given to us (handler_give). */
	atomic_store_explicit(&h->idle, false, memory_order_relaxed);
	stat_add(&h->stats.reads, 1);
	stat_max(&h->stats.max_batch, (uint64_t)n);
	atomic_fetch_add(&mm->busy, 1);
	/* a faultd client's faults are timed (faultctl status); ours are not */
	h->batch_ns = mm->notify_fd >= 0 ? lzm_now_ns() : 0;
	serve_batch(h, mm, msgs, n);
	h->batch_ns = 0;
	atomic_fetch_sub(&mm->busy, 1);
	lzm_uring_flush(h); /* the batch's reads go to the kernel together */
	return bad ? bad : n;
}

/*
 * What epoll_wait returned: children's userfaultfds to serve, children's
 * watch sockets. Our own userfaultfd and the eventfds are looked at by the
 * loop itself. Returns whether any child had work.
 */
static bool serve_events(struct handler *h, const struct epoll_event *ev, int n)
{
	bool any = false;

	for (int i = 0; i < n; i++) {
		unsigned kind = (unsigned)(ev[i].data.u64 & 3);
		struct mm *mm;

		if (kind == EPOLL_MISC)
			continue;
		mm = lzm_child_find(h->lm, ev[i].data.u64 >> 2);
		if (!mm)
			continue; /* released meanwhile */
		if (kind == EPOLL_WATCH) {
			lzm_child_watch(h, mm);
		} else {
			int ret = serve_mm(h, mm);

			if (ret > 0)
				any = true;
			else if (ret < 0 && ret != -EBADMSG)
				lzm_child_release(h->lm, mm);
		}
		lzm_mm_put(mm);
	}
	return any;
}

/* Children's work, without sleeping: one epoll_wait, whatever their number. */
static bool serve_children(struct handler *h)
{
	struct epoll_event ev[8];
	int n;

	if (!atomic_load_explicit(&h->lm->nchildren, memory_order_relaxed))
		return false;
	n = epoll_wait(h->epfd, ev, 8, 0);
	return n > 0 && serve_events(h, ev, n);
}

/*
 * Take one queued prefetch range, fill a pool's worth of it, queue the rest
 * again. work_pending counts the ranges on the list, and the work eventfd is
 * readable exactly while it is not 0, so idle handlers sleep while another
 * one works on the last range. Returns whether there was work.
 */
static bool serve_work(struct handler *h)
{
	struct lazymap *lm = h->lm;
	struct prefetch *pf;

	pthread_mutex_lock(&lm->work_lock);
	pf = lm->work;
	if (pf) {
		/* busy first: lzm_quiesce never sees both at 0 meanwhile */
		atomic_fetch_add(&pf->mm->busy, 1);
		lm->work = pf->next;
		if (atomic_fetch_sub(&lm->work_pending, 1) == 1)
			lzm_efd_drain(lm->work_efd);
	}
	pthread_mutex_unlock(&lm->work_lock);
	if (!pf)
		return false;

	/* ours while we work: pf's reference goes with it if it is queued again */
	struct mm *mm = pf->mm;

	lzm_mm_get(mm);
	pf->start = lzm_fault_prefetch(h, mm, pf->start, pf->end);
	if (pf->start < pf->end) {
		lzm_handlers_queue(lm, pf);
		pf = NULL;
	}
	atomic_fetch_sub(&mm->busy, 1);
	if (pf) {
		lzm_mm_put(mm);
		free(pf);
	}
	lzm_mm_put(mm);
	return true;
}

void lzm_handlers_queue(struct lazymap *lm, struct prefetch *pf)
{
	pthread_mutex_lock(&lm->work_lock);
	pf->next = lm->work;
	lm->work = pf;
	if (atomic_fetch_add(&lm->work_pending, 1) == 0)
		lzm_efd_signal(lm->work_efd);
	pthread_mutex_unlock(&lm->work_lock);
}

/* Have handler to start req's read. */
static void handler_give(struct handler *to, struct fill_req *req)
{
	struct fill_req *head = atomic_load_explicit(&to->handoff, memory_order_relaxed);

	do
		req->next = head;
	while (!atomic_compare_exchange_weak_explicit(&to->handoff, &head, req, memory_order_release,
						      memory_order_relaxed));
	if (!head)
		lzm_efd_signal(to->handoff_efd);
}

/*
 * Start the reads given to handler from, oldest first, on h (from itself, or
 * another handler while from is busy); returns whether there were any.
 */
static bool take_handoff(struct handler *h, struct handler *from)
{
	struct fill_req *req, *rev = NULL;

	if (!atomic_load_explicit(&from->handoff, memory_order_relaxed))
		return false;
	req = atomic_exchange_explicit(&from->handoff, NULL, memory_order_acquire);
	while (req) {
		struct fill_req *next = req->next;

		req->next = rev;
		rev = req;
		req = next;
	}
	for (; rev; rev = req) {
		req = rev->next;
		lzm_fault_start(h, rev);
	}
	lzm_uring_flush(h);
	return true;
}

/*
 * Spread a stream's windows over the handlers, the i-th ahead window to the
 * i+1-th handler after this one if it is idle: copying a window into place
 * costs more than reading it, and while the faulting thread waits for the
 * first window the other CPUs can copy the next ones. A busy handler may be
 * in a slow fill: its windows would wait behind it.
 */
void lzm_handlers_start_ahead(struct handler *h, struct fill_req *req, unsigned i)
{
	struct lazymap *lm = h->lm;
	size_t self = (size_t)(h - lm->handlers);
	struct handler *to = &lm->handlers[(self + 1 + i) % lm->nhandlers];

	LAZYMAP_ASSERT(self < lm->nhandlers);
	if (to != h && atomic_load_explicit(&to->idle, memory_order_relaxed))
		handler_give(to, req);
	else
		lzm_fault_start(h, req);
}

/* Idle: take what was given to a handler that has been busy since. */
static bool steal_handoff(struct handler *h)
{
	struct lazymap *lm = h->lm;
	bool any = false;

	for (unsigned i = 0; i < lm->nhandlers; i++) {
		struct handler *o = &lm->handlers[i];

		if (o != h && !atomic_load_explicit(&o->idle, memory_order_relaxed))
			any |= take_handoff(h, o);
	}
	return any;
}

/*
 * Whether an idle handler should keep polling. An unpinned handler polls for
 * the whole window: the scheduler may run it beside the faulting thread. A
 * pinned one gives up as soon as sched_yield() keeps coming straight back:
 * nobody else wants its CPU, so the program's threads are on other CPUs,
 * whose own handlers should take their faults; a poller here would win the
 * read() race and pay the cross-CPU wake-up it exists to avoid.
 */
struct spin {
	uint64_t since;   /* when the handler went idle; 0: busy */
	unsigned quick;   /* consecutive sched_yield()s that returned at once */
};

#define QUICK_YIELD_NS 1500
#define INFLIGHT_SPIN_NS 250000
#define QUICK_YIELDS   3

static bool spin_again(struct handler *h, struct spin *sp, uint64_t window_ns)
{
	uint64_t t0 = lzm_now_ns();

	if (!sp->since) {
		sp->since = t0;
		sp->quick = 0;
	}
	if (t0 - sp->since >= window_ns)
		return false;
	sched_yield();
	if (h->cpu >= 0 && !h->inflight) {
		if (lzm_now_ns() - t0 < QUICK_YIELD_NS)
			sp->quick++;
		else
			sp->quick = 0;
		if (sp->quick >= QUICK_YIELDS)
			return false;
	}
	return true;
}

/* ------------------------------------------------------------ broken */

/*
 * A handler met an error it cannot go on from. Say so once, and make sure
 * nobody hangs: the first handler to break answers every fault from now on
 * with SIGBUS (serve_broken); the others leave their loops at once.
 */
void lzm_handler_break(struct handler *h, int err, const char *what)
{
	struct lazymap *lm = h->lm;
	int none = 0;

	if (!atomic_compare_exchange_strong(&lm->broken, &none, err ? err : EIO))
		return;
	h->broke = true;
	lzm_log(lm, LOG_ERR, "handler %u: %s: %s: the lazymap is broken, faults get SIGBUS now",
		(unsigned)(h - lm->handlers), what, strerror(err));
	/* (none yet while faultd serves: remote.c's monitor applies events) */
	for (unsigned i = 0; lm->handlers && i < lm->nhandlers; i++)
		if (&lm->handlers[i] != h)
			lzm_efd_signal(lm->handlers[i].handoff_efd);
}

/* Every fault, and every fault that was waiting, becomes SIGBUS, until close. */
static void serve_broken(struct handler *h)
{
	struct lazymap *lm = h->lm;
	struct mm *mm = &lm->mm;
	struct uffd_msg msgs[BATCH];
	struct pollfd pfd[2] = { { .fd = mm->uffd_keep, .events = POLLIN },
				 { .fd = lm->stop_efd, .events = POLLIN } };

	/* Forked children: nobody will serve them; what they lack is SIGBUS. */
	lzm_children_close(lm);
	/* Faults whose messages were read but never answered: let them come again. */
	pthread_rwlock_rdlock(&mm->lock);
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v))
		lzm_uffd_wake(mm->uffd_keep, v->start, v->end - v->start);
	pthread_rwlock_unlock(&mm->lock);

	while (!atomic_load_explicit(&lm->stopping, memory_order_acquire)) {
		/* What the fork reader read first, then our own reference. */
		int n = atomic_load_explicit(&mm->ring_count, memory_order_acquire)
				? lzm_mm_read(mm, msgs, BATCH)
				: lzm_uffd_read(mm->uffd_keep, msgs, BATCH);

		for (int i = 0; i < n; i++) {
			uintptr_t addr = (uintptr_t)msgs[i].arg.pagefault.address &
					 ~(uintptr_t)(lzm_page_size - 1);
			size_t done;

			if (msgs[i].event == UFFD_EVENT_FORK) {
				/* read, so that fork() returns; nobody serves the child */
				close((int)msgs[i].arg.fork.ufd);
				if (msgs[i].arg.reserved.reserved2)
					close((int)(msgs[i].arg.reserved.reserved2 - 1));
			}
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
				/* a present page cannot be poisoned: let the write
				 * in, dirty, so that close still writes it back */
				lzm_filemap_wp_broken(h, mm, addr);
				continue;
			}
			io_errors_add(h, mm, 1);
			if (lzm_uffd_poison(mm->uffd_keep, addr, lzm_page_size, &done) == -EEXIST)
				lzm_uffd_wake(mm->uffd_keep, addr, lzm_page_size);
		}
		if (n > 0)
			continue;
		lzm_log_flush(lm);
		if (n < 0 || (poll(pfd, 2, -1) < 0 && errno != EINTR)) {
			lzm_log(lm, LOG_ERR, "the userfaultfd cannot be read (%s): faults can no "
				"longer be answered", strerror(n < 0 ? -n : errno));
			break;
		}
	}
}

static void *handler_main(void *arg)
{
	struct handler *h = arg;
	struct lazymap *lm = h->lm;
	struct mm *mm = &lm->mm;
	uint64_t spin_ns = lm->opts.spin_us == LAZYMAP_SPIN_NONE ? 0 : lm->opts.spin_us * 1000ull;
	struct spin sp = { 0 };

	lzm_current_handler = h;
	lzm_logq = &h->logq;
	for (;;) {
		int n;

		lzm_log_flush(lm);
		if (atomic_load_explicit(&lm->broken, memory_order_relaxed))
			break;

		/* Completions first: their pages are what faulting threads wait for. */
		if (h->inflight && lzm_uring_reap(h, false) > 0)
			sp.since = 0;
		if (take_handoff(h, h)) {
			atomic_store_explicit(&h->idle, false, memory_order_relaxed);
			sp.since = 0;
		}
		n = serve_mm(h, mm);
		if (n > 0 || serve_children(h)) {
			atomic_store_explicit(&h->idle, false, memory_order_relaxed);
			sp.since = 0;
			continue;
		}
		if (n == -EBADMSG) {
			/* We negotiated the events: this descriptor is no longer our
			 * userfaultfd (the program dup2()'d over it). */
			lzm_handler_break(h, EBADF, "a message that is no userfaultfd's");
			break;
		}
		if (n < 0) {
			lzm_handler_break(h, -n, "read(userfaultfd)");
			break;
		}
		if (atomic_load_explicit(&lm->stopping, memory_order_acquire))
			break;
		if (atomic_load_explicit(&lm->work_pending, memory_order_relaxed) && serve_work(h)) {
			atomic_store_explicit(&h->idle, false, memory_order_relaxed);
			lzm_uring_flush(h);
			sp.since = 0;
			continue;
		}
		atomic_store_explicit(&h->idle, true, memory_order_relaxed);
		if (steal_handoff(h)) {
			sp.since = 0;
			continue;
		}
		/* Reads in flight: their completions come within a disk's latency,
		 * and waking for them costs as much as waking for a fault. */
		if (spin_again(h, &sp, h->inflight ? INFLIGHT_SPIN_NS : spin_ns))
			continue;
		/*
		 * Quiet the ring's eventfd before every sleep, with reads in flight
		 * or not: completions reaped while polling leave it readable, and
		 * epoll_wait would return at once, for ever. Then look once more:
		 * a completion between the two is either reaped now or signalled
		 * anew.
		 */
		lzm_uring_quiet(h);
		if (h->inflight && lzm_uring_reap(h, false) > 0) {
			sp.since = 0;
			continue;
		}
		/* The same for the handoff stack (and the fork reader's ring,
		 * which signals the same eventfd): drain, then look. */
		lzm_efd_drain(h->handoff_efd);
		if (atomic_load_explicit(&h->handoff, memory_order_acquire) ||
		    atomic_load_explicit(&mm->ring_count, memory_order_acquire))
			continue;

		struct epoll_event ev[8];

		stat_add(&h->stats.sleeps, 1);
		n = epoll_wait(h->epfd, ev, 8, -1);
		if (n < 0 && errno != EINTR) {
			lzm_handler_break(h, errno, "epoll_wait");
			break;
		}
		if (n > 0)
			serve_events(h, ev, n);
		sp.since = 0;
	}
	/* Never idle again: nothing is given to us now, and what was is taken
	 * by the others (or let go at close). */
	atomic_store_explicit(&h->idle, false, memory_order_relaxed);
	/* Reads on NBD connections fail now (a server may never answer). */
	lzm_nbd_handler_stop(h);
	/* The kernel writes into pool pages until every read has completed. */
	while (h->inflight && lzm_uring_reap(h, true) > 0)
		;
	if (h->broke)
		serve_broken(h);
	lzm_log_flush(lm);
	return NULL;
}

/* The index-th CPU set in cpus. */
static int nth_cpu(const cpu_set_t *cpus, unsigned index)
{
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, cpus) && index-- == 0)
			return cpu;
	return -1;
}

/*
 * The pool: one run for synchronous fills, and runs for reads in flight (a
 * stream keeps three in flight: the window a fault waits for and two
 * ahead): eight, fewer for large readahead_max so that a handler's read
 * area stays under POOL_READ_MAX, but never fewer than three.
 */
#define POOL_RUNS     8
#define POOL_RUNS_MIN 3
#define POOL_READ_MAX (16u << 20)

static size_t pool_runs(size_t ra_pages)
{
	size_t runs = (POOL_READ_MAX >> lzm_page_shift) / ra_pages;

	return runs > POOL_RUNS ? POOL_RUNS : runs < POOL_RUNS_MIN ? POOL_RUNS_MIN : runs;
}

static int handler_init(struct lazymap *lm, struct handler *h, unsigned index)
{
	int ret;

	h->lm = lm;
	h->cpu = lm->pin ? nth_cpu(&lm->cpus, index) : -1;
	ret = lzm_pool_init(&h->pool, lm->ra_pages, pool_runs(lm->ra_pages) * lm->ra_pages);
	if (ret)
		return ret;
	ret = lzm_uring_init(h, lm->opts.queue_depth);
	if (ret)
		return ret;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (h->epfd < 0)
		return -errno;
	h->handoff_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (h->handoff_efd < 0)
		return -errno;

	int fds[] = { lm->mm.uffd, lm->stop_efd, lm->work_efd, lzm_uring_eventfd(h), h->handoff_efd };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EPOLL_MISC };

		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fds[i], &ev))
			return -errno;
	}
	return 0;
}

int lzm_handlers_start(struct lazymap *lm)
{
	sigset_t all, old;
	int ret = 0;

	lm->handlers = calloc(lm->nhandlers, sizeof(*lm->handlers));
	if (!lm->handlers)
		return -ENOMEM;
	for (unsigned i = 0; i < lm->nhandlers; i++)
		lm->handlers[i].epfd = lm->handlers[i].handoff_efd = -1;
	/* The program's signals are not for us: handlers start with all blocked. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned i = 0; i < lm->nhandlers && !ret; i++) {
		struct handler *h = &lm->handlers[i];
		char name[16];

		pthread_attr_t attr;

		ret = handler_init(lm, h, i);
		if (ret)
			break;
		pthread_attr_init(&attr);
		if (h->cpu >= 0) {
			cpu_set_t one;

			CPU_ZERO(&one);
			CPU_SET(h->cpu, &one);
			pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
		}
		ret = -pthread_create(&h->thread, &attr, handler_main, h);
		pthread_attr_destroy(&attr);
		if (ret)
			break;
		h->started = true;
		snprintf(name, sizeof(name), "lazymap-h%u", i % 1000);
		pthread_setname_np(h->thread, name);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return ret; /* on failure, the caller's lzm_handlers_stop() joins what started */
}

void lzm_handlers_stop(struct lazymap *lm)
{
	if (!lm->handlers)
		return;
	atomic_store_explicit(&lm->stopping, true, memory_order_release);
	lzm_efd_signal(lm->stop_efd);
	/* Each one's own eventfd too: one descriptor closed by mistake must not
	 * leave a handler asleep for ever. */
	for (unsigned i = 0; i < lm->nhandlers; i++)
		if (lm->handlers[i].handoff_efd >= 0)
			lzm_efd_signal(lm->handlers[i].handoff_efd);
	for (unsigned i = 0; i < lm->nhandlers; i++) {
		struct handler *h = &lm->handlers[i];

		if (h->started)
			pthread_join(h->thread, NULL);
		h->started = false;
	}
	/* Every handler has stopped: what one gave another and it never started. */
	for (unsigned i = 0; i < lm->nhandlers; i++) {
		struct handler *h = &lm->handlers[i];
		struct fill_req *req = atomic_exchange(&h->handoff, NULL), *next;

		for (; req; req = next) {
			next = req->next;
			lzm_fault_abandon(req);
		}
		lzm_uring_exit(h);
		lzm_nbd_handler_free(h); /* the ring's polls named its connections */
		lzm_pool_destroy(&h->pool);
		if (h->epfd >= 0)
			close(h->epfd);
		if (h->handoff_efd >= 0)
			close(h->handoff_efd);
		h->epfd = h->handoff_efd = -1;
	}
}
