// SPDX-License-Identifier: MIT
/*
 * The program's own changes to its mappings, as userfaultfd reports them
 * (UNMAP, REMAP, REMOVE, FORK), applied to the tree of the mm they came
 * from, in the order they were read; the growth of a VMA that raises no
 * event; and the forked children whose mms the handlers serve: their birth,
 * the socket that tells us of their end, and their release.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"

/* ------------------------------------------------------------ reading */

/*
 * A FORK event of our own mm takes the socket made for that fork (while
 * read_lock is held: lzm_fork_parent takes it too, once fork() returns, and
 * closes what is left): its number rides in the message.
 */
static void take_watch(struct mm *mm, struct uffd_msg *msgs, int n)
{
	for (int i = 0; i < n; i++) {
		if (msgs[i].event != UFFD_EVENT_FORK)
			continue;
		msgs[i].arg.reserved.reserved2 = 0;
		if (mm->self) {
			int fd = atomic_exchange(&mm->lm->fork_watch, -1);

			msgs[i].arg.reserved.reserved2 = (uint64_t)(fd + 1);
		}
	}
}

/* Hold the reserve descriptor (read_fork_safe); whether we do. */
static bool reserve_take(struct lazymap *lm)
{
	int fd, none = -1;

	if (atomic_load_explicit(&lm->reserve_fd, memory_order_relaxed) >= 0)
		return true;
	fd = eventfd(0, EFD_CLOEXEC);
	if (fd < 0)
		return false;
	if (!atomic_compare_exchange_strong(&lm->reserve_fd, &none, fd))
		close(fd);
	return true;
}

/*
 * A FORK event is read only if the reader has a descriptor to spare for
 * the child's userfaultfd: read() fails with EMFILE and leaves the event
 * queued, and the fork waits for ever. A program at its descriptor limit
 * must not hang in fork(): we keep one descriptor in reserve and give it up
 * for this read (and take it back once descriptors are free again). Without
 * it, EMFILE is no error of ours: the fork waits until one is free.
 */
static int read_fork_safe(struct mm *mm, struct uffd_msg *msgs, int max)
{
	struct lazymap *lm = mm->lm;
	int n = lzm_uffd_read(mm->uffd, msgs, max);

	if (n == -EMFILE || n == -ENFILE) {
		int fd = atomic_exchange(&lm->reserve_fd, -1);

		if (fd >= 0) {
			close(fd);
			n = lzm_uffd_read(mm->uffd, msgs, max);
		}
		if (n == -EMFILE || n == -ENFILE)
			n = 0;
	}
	if (n >= 0)
		reserve_take(lm);
	return n;
}

int lzm_mm_read(struct mm *mm, struct uffd_msg *msgs, int max)
{
	struct msgring *r = mm->ring;
	int n;

	pthread_mutex_lock(&mm->read_lock);
	if (r && r->n) {
		n = (int)r->n < max ? (int)r->n : max;
		memcpy(msgs, r->m, (size_t)n * sizeof(*msgs));
		r->n -= (unsigned)n;
		memmove(r->m, r->m + n, r->n * sizeof(*msgs));
		atomic_store_explicit(&mm->ring_count, r->n, memory_order_release);
	} else {
		n = read_fork_safe(mm, msgs, max);
		take_watch(mm, msgs, n);
	}
	pthread_mutex_unlock(&mm->read_lock);
	return n;
}

void lzm_mm_sync_events(struct mm *mm)
{
	/* Served by faultd: its handlers read our events, and it has applied
	 * and told us of those it read once it answers us (remote.c). */
	if (mm->self && mm->lm->remote)
		lzm_remote_settle(mm->lm);
	for (;;) {
		/* read_lock too: the fork reader holds it from its read() (which
		 * lets the program's munmap return) until the ring counts it. */
		pthread_mutex_lock(&mm->event_lock);
		pthread_mutex_lock(&mm->read_lock);
		pthread_mutex_unlock(&mm->read_lock);
		pthread_mutex_unlock(&mm->event_lock);
		/* What the fork reader read is applied once a handler takes it
		 * (a broken lazymap's handler only answers faults). */
		if (!atomic_load_explicit(&mm->ring_count, memory_order_acquire) ||
		    atomic_load_explicit(&mm->lm->broken, memory_order_relaxed))
			return;
		sched_yield();
	}
}

/*
 * A range the kernel has just handed us may be one another thread of the
 * program is unmapping at this moment: the kernel unmaps first and raises
 * the UNMAP after, so that event, applied once our region is in the tree,
 * would take it out. Until such events are read, every fill ioctl fails
 * with EAGAIN (the kernel's mmap_changing); a UFFDIO_COPY of no length
 * asks just that, and does nothing else. Wait until none is pending, then
 * until those read are applied.
 */
void lzm_mm_settle(struct mm *mm)
{
	struct uffdio_copy probe = { 0 };

	for (int i = 0; i < 100000; i++) {
		if (ioctl(mm->uffd, UFFDIO_COPY, &probe) == 0 || errno != EAGAIN)
			break;
		lzm_mm_sync_events(mm);
		sched_yield();
	}
	lzm_mm_sync_events(mm);
}

/*
 * glibc's fork() holds its malloc locks from before the fork system call
 * until after it, and the kernel makes fork wait until a FORK event is
 * read: a handler that calls malloc (a fill request, a fill callback of the
 * program's) at that moment waits for the fork that waits for it. So while
 * a fork is in progress, this thread, which allocates nothing, reads our
 * userfaultfd into the ring, and the handlers take from there.
 */
static void *fork_reader_main(void *arg)
{
	struct lazymap *lm = arg;
	struct mm *mm = &lm->mm;
	struct pollfd pfd[2] = { { .fd = lm->fork_efd, .events = POLLIN },
				 { .fd = mm->uffd, .events = POLLIN } };

	while (!atomic_load_explicit(&lm->stopping, memory_order_acquire)) {
		bool forking = atomic_load_explicit(&lm->forking, memory_order_acquire);
		struct msgring *r = mm->ring;
		int n = 0;

		if (poll(pfd, forking ? 2 : 1, forking ? 10 : -1) < 0 && errno != EINTR)
			break;
		lzm_efd_drain(lm->fork_efd);
		if (!forking)
			continue;
		pthread_mutex_lock(&mm->read_lock);
		if (r->n < MSGRING_SIZE) {
			n = read_fork_safe(mm, r->m + r->n, (int)(MSGRING_SIZE - r->n));
			if (n > 0) {
				take_watch(mm, r->m + r->n, n);
				r->n += (unsigned)n;
				atomic_store_explicit(&mm->ring_count, r->n, memory_order_release);
			}
		}
		pthread_mutex_unlock(&mm->read_lock);
		if (n > 0)
			for (unsigned i = 0; i < lm->nhandlers; i++)
				lzm_efd_signal(lm->handlers[i].handoff_efd);
		else if (n < 0)
			break; /* the handlers meet the same error and break */
	}
	return NULL;
}

void lzm_fork_reader_stop(struct lazymap *lm)
{
	if (!lm->fork_reader_started)
		return;
	atomic_store(&lm->stopping, true);
	lzm_efd_signal(lm->fork_efd);
	pthread_join(lm->fork_reader, NULL);
	lm->fork_reader_started = false;
}

/*
 * An event cannot be refused: the kernel has made the change. A VMA we
 * cannot allocate to follow it would leave the tree false, so the lazymap
 * breaks, loudly (faults get SIGBUS), instead.
 */
static struct vma *vma_alloc_or_break(struct handler *h)
{
	struct vma *v = lzm_vma_alloc();

	if (!v && h)
		lzm_handler_break(h, ENOMEM, "following the program's mapping change");
	return v;
}

/* nv covers [start, end) with v's protection, flags, advice and fill unit. */
static void vma_like(struct vma *nv, const struct vma *v, uintptr_t start, uintptr_t end)
{
	nv->start = start;
	nv->end = end;
	nv->prot = v->prot;
	nv->flags = v->flags;
	nv->advice = v->advice;
	nv->fill_unit = v->fill_unit;
}

/*
 * Pieces of one source (split VMAs, met one after the other) share one
 * clone: *last_old is the source the clone in *last_clone was made of,
 * for the next piece to reuse. Returns the clone for v->src (a reference
 * held by *last_clone), or NULL without memory. copy_filled: the clone
 * starts with what v->src has installed (a forked child's page table).
 */
static void state_copy_filled(struct source *c, const struct source *src);

static struct source *clone_once(struct vma *v, struct source **last_old,
				 struct source **last_clone, bool copy_filled)
{
	struct source *c;

	if (v->src == *last_old)
		return *last_clone;
	if (lzm_source_clone(v->src, v->src->base, v->src->npages, &c))
		return NULL;
	if (copy_filled) {
		state_copy_filled(c, v->src);
		/* the child's pages in our swap: it reads them from there too */
		if (lzm_swap_clone(c, v->src)) {
			lzm_source_put(c);
			return NULL;
		}
	}
	lzm_source_put(*last_clone);
	*last_clone = c;
	*last_old = v->src;
	return c;
}

/* Make addr a VMA boundary if a VMA spans it. Write lock held. */
static bool split_at(struct handler *h, struct mm *mm, uintptr_t addr)
{
	struct vma *v = lzm_vma_lookup(&mm->tree, addr), *new;

	if (!v || v->start == addr)
		return true;
	new = vma_alloc_or_break(h);
	if (!new)
		return false;
	lzm_vma_split_with(&mm->tree, v, addr, new);
	return true;
}

/*
 * The state of pages no VMA will map again (a source's pages are never
 * mapped twice: internal.h): give back the whole pages of the array. Fills
 * still in flight for them write their byte again on release; harmless.
 */
static void state_release(struct source *src, uint64_t pgoff, size_t n)
{
	uintptr_t a, e;

	if (!src->state_mapped)
		return; /* on the heap: small, and freed with the source; or a cache's */
	a = (uintptr_t)&src->state[pgoff];
	e = a + n;
	a = (a + lzm_page_size - 1) & ~(uintptr_t)(lzm_page_size - 1);
	e &= ~(uintptr_t)(lzm_page_size - 1);
	if (a < e)
		madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Erase [start, end) from the tree (the kernel's munmap). Write lock held. */
static void erase_range(struct handler *h, struct mm *mm, uintptr_t start, uintptr_t end)
{
	struct vma *v, *next;

	if (!split_at(h, mm, start) || !split_at(h, mm, end))
		return;
	for (v = lzm_vma_find(&mm->tree, start); v && v->start < end; v = next) {
		next = lzm_vma_next(v);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_pages_gone(mm, v);
		state_release(v->src, v->pgoff, (v->end - v->start) >> lzm_page_shift);
		/* its dirty pages go with the next sync of any region of the file */
		if (vma_writeback(v))
			atomic_store(&v->src->cache->orphans, true);
		lzm_vma_free(v);
	}
}

/*
 * mremap moved [from, from+len) to [to, to+len): the VMAs move with their
 * sources and offsets, so a page reads the same bytes at its new address
 * (pages filled before the move moved with it in the kernel, the others are
 * produced as before). The range left behind gets fresh clones of the
 * sources: with MREMAP_DONTUNMAP it stays mapped and registered, emptied,
 * and reads its source again, as after MADV_DONTNEED; without, the UNMAP
 * that follows erases it. A fill in flight for the old range finds another
 * source there at its end and drops its pages. Write lock held.
 */
static void apply_remap(struct handler *h, struct mm *mm, uintptr_t from, uintptr_t to, size_t len)
{
	struct vma *v, *moved = NULL, **tail = &moved, *nv;
	struct source *last_old = NULL, *last_clone = NULL, *clone;

	/* The target was unmapped first (an UNMAP came before); be sure. */
	erase_range(h, mm, to, to + len);
	if (!split_at(h, mm, from) || !split_at(h, mm, from + len))
		return;
	for (v = lzm_vma_find(&mm->tree, from); v && v->start < from + len; v = lzm_vma_next(v)) {
		nv = vma_alloc_or_break(h);
		if (!nv)
			break;
		clone = clone_once(v, &last_old, &last_clone, false);
		if (!clone) {
			lzm_handler_break(h, ENOMEM, "following mremap");
			lzm_vma_free(nv);
			break;
		}
		vma_like(nv, v, v->start - from + to, v->end - from + to);
		nv->pgoff = v->pgoff;
		nv->src = v->src; /* v's reference moves to nv */
		lzm_source_get(clone);
		v->src = clone;
		/* Chain the new VMAs through rb_right until they are inserted. */
		*tail = nv;
		tail = &nv->rb_right;
	}
	lzm_source_put(last_clone);
	while (moved) {
		nv = moved;
		moved = nv->rb_right;
		nv->rb_right = NULL;
		if (lzm_vma_insert(&mm->tree, nv) == 0)
			lzm_vma_merge(&mm->tree, nv);
		else
			lzm_vma_free(nv); /* cannot be: the target was erased */
	}
}

/*
 * A page the program dropped: not installed, not in swap, nothing written.
 * A page being filled, read back or evicted keeps PAGE_BUSY: its owner
 * sees FILLED or SWAPPED gone, and lets go of the slot itself.
 */
static void forget_page(struct source *src, uint64_t idx)
{
	_Atomic uint8_t *s = &src->state[idx];
	uint8_t old = atomic_load_explicit(s, memory_order_relaxed), want;

	do {
		if (!(old & (PAGE_FILLED | PAGE_SWAPPED | PAGE_WRITTEN | PAGE_ZERO)))
			return;
		want = old & (PAGE_BUSY | PAGE_WAITER);
	} while (!atomic_compare_exchange_weak(s, &old, want));
	if (!(old & PAGE_BUSY))
		lzm_swap_forget(src, idx);
}

/*
 * MADV_DONTNEED, MADV_FREE, MADV_REMOVE: the pages are dropped (or will be)
 * and the next touch faults. Forget that they were installed, so that
 * readahead and fault-around take them again; a fill that installs one
 * after this is caught by the check a fault makes of an installed page.
 */
static void apply_remove(struct mm *mm, uintptr_t start, uintptr_t end)
{
	pthread_rwlock_rdlock(&mm->lock);
	for (struct vma *v = lzm_vma_find(&mm->tree, start); v && v->start < end;
	     v = lzm_vma_next(v)) {
		uintptr_t s = v->start > start ? v->start : start;
		uintptr_t e = v->end < end ? v->end : end;
		uint64_t idx = vma_page(v, s);

		if (v->src->ops->cached) {
			/* The cache keeps its pages (a private copy is simply gone),
			 * unless MADV_REMOVE punched them out of a shared region. */
			if (vma_writeback(v))
				lzm_cache_removed(v->src->cache, v->src->base + idx,
						  (e - s) >> lzm_page_shift);
			continue;
		}
		if (mm->self)
			lzm_evict_dropped(mm->lm, v->src, idx, (e - s) >> lzm_page_shift);
		for (; s < e; s += lzm_page_size, idx++)
			forget_page(v->src, idx);
	}
	pthread_rwlock_unlock(&mm->lock);
}

static void child_new(struct handler *h, struct mm *parent, int ufd, uint64_t watch);
static void remap_grown(struct handler *h, struct mm *mm, uintptr_t to, size_t len);
static void sweep_unwatched(struct lazymap *lm);

int lzm_event_apply(struct handler *h, struct mm *mm, const struct uffd_msg *m)
{
	if (m->event != UFFD_EVENT_UNMAP && m->event != UFFD_EVENT_REMAP &&
	    m->event != UFFD_EVENT_REMOVE && m->event != UFFD_EVENT_FORK)
		return -EBADMSG;
	if (h)
		stat_add(&h->stats.events, 1);
	atomic_fetch_add_explicit(&mm->events, 1, memory_order_relaxed);
	switch (m->event) {
	case UFFD_EVENT_UNMAP:
		pthread_rwlock_wrlock(&mm->lock);
		erase_range(h, mm, m->arg.remove.start, m->arg.remove.end);
		lzm_mm_write_unlock(mm);
		break;
	case UFFD_EVENT_REMAP:
		pthread_rwlock_wrlock(&mm->lock);
		apply_remap(h, mm, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		remap_grown(h, mm, m->arg.remap.to, m->arg.remap.len);
		lzm_mm_write_unlock(mm);
		break;
	case UFFD_EVENT_REMOVE:
		apply_remove(mm, m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_FORK:
		child_new(h, mm, (int)m->arg.fork.ufd, m->arg.reserved.reserved2);
		break;
	}
	/*
	 * A faultd client keeps a copy of its tree, to serve itself if faultd
	 * goes: it hears of each change, in order, before any reply to a
	 * request made after it (its requests wait for the events read).
	 */
	if (mm->notify_fd >= 0 && m->event != UFFD_EVENT_FORK)
		lzm_serve_notify(mm, m);
	return 0;
}

/* ------------------------------------------------------------ growth */

/* /proc/PID/maps (pid 0: ours), or NULL. */
static FILE *maps_open(int pid)
{
	char path[64];

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/maps");
	return fopen(path, "re");
}

/* The kernel's VMA holding addr, from /proc/PID/maps (pid 0: ours). */
static bool kernel_vma(int pid, uintptr_t addr, uintptr_t *ks, uintptr_t *ke)
{
	char line[512];
	bool found = false;
	FILE *f = maps_open(pid);

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s <= addr && addr < e) {
			*ks = s;
			*ke = e;
			found = true;
		}
	}
	fclose(f);
	return found;
}

/*
 * mremap that grows a mapping in place raises no event (nor does the grown
 * tail of a moving one, whose REMAP covers the old length): the first news
 * of it is a fault past the end of one of our VMAs, inside the kernel's VMA
 * that holds ours. The tail is served from the source like the rest, its
 * offsets continuing past the old end, with a source of its own (a grown
 * tail never reuses pages of its VMA's source: internal.h).
 */
/* A tail of len bytes grown past v's end: a source continuing v's offsets. */
static bool grow_after(struct handler *h, struct mm *mm, struct vma *v, uintptr_t end)
{
	struct vma *nv = vma_alloc_or_break(h);

	if (!nv)
		return false;
	if (lzm_source_clone(v->src, vma_file_page(v, v->end),
			     (end - v->end) >> lzm_page_shift, &nv->src)) {
		lzm_vma_free(nv);
		return false;
	}
	vma_like(nv, v, v->end, end);
	if (lzm_vma_insert(&mm->tree, nv) == 0)
		return true;
	lzm_vma_free(nv);
	return false;
}

/*
 * [ks, ke) is one of the kernel's VMAs. If it holds any of ours, all of it
 * is ours (no other mapping merges with a registered one), and every part
 * of it the tree lacks past one of ours is a tail mremap grew (a VMA only
 * grows at its end; the kernel may have merged it with our next region).
 * Returns whether the tree changed. Write lock held.
 */
static bool grow_locked(struct handler *h, struct mm *mm, uintptr_t ks, uintptr_t ke)
{
	struct vma *v = lzm_vma_find(&mm->tree, ks), *next;
	bool grew = false;

	if (!v || v->start >= ke)
		return false;
	for (; v && v->start < ke; v = next) {
		uintptr_t end;

		next = lzm_vma_next(v);
		end = next && next->start < ke ? next->start : ke;
		if (end > v->end && grow_after(h, mm, v, end))
			grew = true;
	}
	return grew;
}

static int mm_pid(struct mm *mm)
{
	return mm->self ? 0 : atomic_load(&mm->pid);
}

bool lzm_mm_grown(struct handler *h, struct mm *mm, uintptr_t addr, uint32_t tid)
{
	int pid = mm->self ? 0 : mm_pid(mm) ? mm_pid(mm) : (int)tid;
	uintptr_t ks, ke;
	bool ok;

	if (!mm->self && !pid)
		return false;
	/*
	 * The kernel's VMA is read with the lock held: read before, it may
	 * hold a range that an unmap (ours, or an event's) takes out of the
	 * kernel and the tree before we have the lock, and the range would
	 * grow back into the tree, where the kernel maps nothing.
	 */
	pthread_rwlock_wrlock(&mm->lock);
	ok = (kernel_vma(pid, addr, &ks, &ke) && grow_locked(h, mm, ks, ke)) ||
	     lzm_vma_lookup(&mm->tree, addr);
	lzm_mm_write_unlock(mm);
	return ok;
}

/* A REMAP of len bytes to to: the kernel's VMA there is longer when the
 * mremap also grew it (the event gives the old length). Write lock held. */
static void remap_grown(struct handler *h, struct mm *mm, uintptr_t to, size_t len)
{
	uintptr_t ks, ke;

	if ((mm->self || mm_pid(mm)) && kernel_vma(mm_pid(mm), to, &ks, &ke) && ke > to + len)
		grow_locked(h, mm, ks, ke);
}

void lzm_mm_adopt_growth(struct mm *mm)
{
	char line[512];
	FILE *f;

	if (!mm->self && !mm_pid(mm))
		return;
	f = maps_open(mm_pid(mm));
	if (!f)
		return;
	pthread_rwlock_wrlock(&mm->lock);
	while (fgets(line, sizeof(line), f)) {
		unsigned long ks, ke;

		if (sscanf(line, "%lx-%lx", &ks, &ke) == 2 && ke > ks)
			grow_locked(NULL, mm, ks, ke);
	}
	lzm_mm_write_unlock(mm);
	fclose(f);
}

/* ------------------------------------------------------------ children */

void lzm_mm_get(struct mm *mm)
{
	atomic_fetch_add_explicit(&mm->refs, 1, memory_order_relaxed);
}

static void child_free(struct mm *mm)
{
	struct vma *v;

	while ((v = lzm_vma_first(&mm->tree))) {
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_free(v);
	}
	if (mm->watch_fd >= 0)
		close(mm->watch_fd);
	if (mm->notify_fd >= 0)
		close(mm->notify_fd);
	lzm_mm_fini(mm);
	free(mm);
}

void lzm_mm_put(struct mm *mm)
{
	if (atomic_fetch_sub_explicit(&mm->refs, 1, memory_order_acq_rel) == 1 && !mm->self)
		child_free(mm);
}

/* Add or remove a child's descriptors in every handler's epoll set. */
static void epoll_children(struct lazymap *lm, struct mm *mm, int op)
{
	for (unsigned i = 0; i < lm->nhandlers; i++) {
		struct handler *h = &lm->handlers[i];
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = mm->id << 2 | EPOLL_UFFD };

		if (h->epfd < 0)
			continue;
		epoll_ctl(h->epfd, op, mm->uffd, &ev);
		if (mm->watch_fd >= 0) {
			ev.data.u64 = mm->id << 2 | EPOLL_WATCH;
			epoll_ctl(h->epfd, op, mm->watch_fd, &ev);
		}
	}
}

/*
 * Which pages of src are installed, into c: only the pages of the state
 * array that were ever written are looked at (a 1 TiB region's state is
 * 256 MiB, of which a program that touched little has written little).
 */
static void state_copy_filled(struct source *c, const struct source *src)
{
	const size_t chunk = 4096; /* state pages per mincore() */
	unsigned char vec[4096];
	uintptr_t base = (uintptr_t)src->state;

	if (!src->state)
		return; /* a file's: its cache is shared with the child */
	for (size_t off = 0; off < src->npages; off += chunk * lzm_page_size) {
		size_t len = src->npages - off < chunk * lzm_page_size ? src->npages - off
								     : chunk * lzm_page_size;

		if (!src->state_mapped || mincore((void *)(base + off), len, vec))
			memset(vec, 1, sizeof(vec));
		for (size_t p = 0; p * lzm_page_size < len; p++) {
			size_t i = off + p * lzm_page_size;
			size_t end = i + lzm_page_size < src->npages ? i + lzm_page_size : src->npages;

			if (!(vec[p] & 1))
				continue;
			for (; i < end; i++)
				if (atomic_load_explicit(&src->state[i], memory_order_relaxed) &
				    PAGE_FILLED)
					atomic_store_explicit(&c->state[i], PAGE_FILLED,
							      memory_order_relaxed);
		}
	}
}

/*
 * The child's copy of the tree: every VMA, each source cloned once (the
 * child's page table is a copy of ours as of the fork: what we had
 * installed, it has, unless it was installed after the copy, which the
 * fault path's check of installed pages catches). Parent's lock held.
 */
static int child_copy_tree(struct mm *child, struct mm *parent)
{
	struct source *last_old = NULL, *last_clone = NULL;

	for (struct vma *v = lzm_vma_first(&parent->tree); v; v = lzm_vma_next(v)) {
		struct vma *nv = lzm_vma_alloc();
		struct source *c = nv ? clone_once(v, &last_old, &last_clone, true) : NULL;

		if (!c) {
			lzm_vma_free(nv);
			lzm_source_put(last_clone);
			return -ENOMEM;
		}
		vma_like(nv, v, v->start, v->end);
		nv->pgoff = v->pgoff;
		nv->src = c;
		lzm_source_get(c);
		if (lzm_vma_insert(&child->tree, nv)) {
			lzm_vma_free(nv);
			lzm_source_put(last_clone);
			return -EINVAL;
		}
		/* the child's writes to a shared file region are protected at write-back too */
		if (vma_writeback(nv) && lzm_cache_share(c->cache, child)) {
			lzm_source_put(last_clone);
			return -ENOMEM;
		}
	}
	lzm_source_put(last_clone);
	atomic_store_explicit(&child->nr_vmas, child->tree.count, memory_order_relaxed);
	return 0;
}

/*
 * FORK: ufd is the child's userfaultfd, already registered on its copies of
 * our ranges. The parent is still inside fork() (it returns once we have
 * read the event), so the socket made for this fork (lzm_fork_prepare) is
 * still there to take: its other end is the child's only, and tells us when
 * the child has gone.
 */
static void child_new(struct handler *h, struct mm *parent, int ufd, uint64_t watch)
{
	struct lazymap *lm = h->lm;
	struct mm *child = calloc(1, sizeof(*child));
	int ret = -ENOMEM;

	if (child) {
		lzm_mm_init(child, lm, ufd, parent->features);
		child->id = atomic_fetch_add(&lm->next_mm_id, 1);
		/* taken when the event was read (take_watch); 0: none */
		child->watch_fd = (int)(watch - 1);
		pthread_rwlock_rdlock(&parent->lock);
		ret = child_copy_tree(child, parent);
		pthread_rwlock_unlock(&parent->lock);
	}
	if (ret) {
		/* The child's regions become unregistered: zeros. Say so. */
		lzm_log(lm, LOG_ERR, "cannot follow a fork (%s): the child's regions are not served",
			strerror(-ret));
		if (child) {
			child_free(child);
		} else {
			close(ufd);
			if (watch)
				close((int)(watch - 1));
		}
		return;
	}
	lzm_child_add(lm, child);
	sweep_unwatched(lm);
}

void lzm_child_add(struct lazymap *lm, struct mm *mm)
{
	/* Listed, it may be found gone and released by another handler at
	 * once (a child that exits at birth): ours until its descriptors are
	 * in the epoll sets (closed, they leave them by themselves). */
	lzm_mm_get(mm);
	pthread_mutex_lock(&lm->children_lock);
	mm->next_child = lm->children;
	lm->children = mm;
	atomic_fetch_add(&lm->nchildren, 1);
	pthread_mutex_unlock(&lm->children_lock);
	epoll_children(lm, mm, EPOLL_CTL_ADD);
	lzm_mm_put(mm);
}

struct mm *lzm_child_find(struct lazymap *lm, uint64_t id)
{
	struct mm *mm;

	pthread_mutex_lock(&lm->children_lock);
	for (mm = lm->children; mm && mm->id != id; mm = mm->next_child)
		;
	if (mm)
		lzm_mm_get(mm);
	pthread_mutex_unlock(&lm->children_lock);
	return mm;
}

/* Stop serving a child: out of the list and the epoll sets; freed when the
 * last fill that holds it ends. */
void lzm_child_release(struct lazymap *lm, struct mm *mm)
{
	struct mm **pp;
	bool found;

	pthread_mutex_lock(&lm->children_lock);
	for (pp = &lm->children; *pp && *pp != mm; pp = &(*pp)->next_child)
		;
	found = *pp != NULL;
	if (found) {
		*pp = mm->next_child;
		atomic_fetch_sub(&lm->nchildren, 1);
	}
	pthread_mutex_unlock(&lm->children_lock);
	if (!found)
		return; /* another handler saw it go first */
	epoll_children(lm, mm, EPOLL_CTL_DEL);
	lzm_mm_put(mm);
}

/*
 * Whether the mm behind a userfaultfd is gone: every fill ioctl gives ESRCH
 * then. UFFDIO_CONTINUE on a range we never register for minor faults fails
 * without touching anything while the mm lives.
 */
static bool mm_gone(struct mm *mm)
{
	struct uffdio_continue c = { .range = { .start = 1u << 20, .len = lzm_page_size } };

	return ioctl(mm->uffd, UFFDIO_CONTINUE, &c) < 0 && errno == ESRCH;
}

/*
 * Children we have no socket for (a child's own children, a child made by a
 * raw clone(), one that closed its descriptors) tell us nothing when they
 * end: look whether they have, whenever a child comes or goes.
 */
static void sweep_unwatched(struct lazymap *lm)
{
	struct mm *gone[16];
	size_t n = 0;

	pthread_mutex_lock(&lm->children_lock);
	for (struct mm *mm = lm->children; mm && n < 16; mm = mm->next_child) {
		if (mm->watch_fd < 0) {
			lzm_mm_get(mm);
			gone[n++] = mm;
		}
	}
	pthread_mutex_unlock(&lm->children_lock);
	for (size_t i = 0; i < n; i++) {
		if (mm_gone(gone[i]))
			lzm_child_release(lm, gone[i]);
		lzm_mm_put(gone[i]);
	}
}

int lzm_child_pid(struct mm *mm)
{
	int pid = atomic_load(&mm->pid);

	/* Told but not yet read by a handler: look without taking it. */
	if (!pid && !mm->self) {
		pthread_mutex_lock(&mm->lm->children_lock);
		if (mm->watch_fd >= 0 &&
		    recv(mm->watch_fd, &pid, sizeof(pid), MSG_PEEK | MSG_DONTWAIT) == sizeof(pid))
			atomic_store(&mm->pid, pid);
		else
			pid = 0;
		pthread_mutex_unlock(&mm->lm->children_lock);
	}
	return pid;
}

void lzm_child_watch(struct handler *h, struct mm *mm)
{
	int pid;
	ssize_t n = recv(mm->watch_fd, &pid, sizeof(pid), MSG_DONTWAIT);

	if (n == (ssize_t)sizeof(pid)) {
		atomic_store(&mm->pid, pid);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	/*
	 * End of file: every copy of the child's end is closed. Its mm goes
	 * first as it exits, unless a call of ours holds it a moment longer
	 * (an ioctl, a read of /proc/PID/maps): look a few times.
	 */
	bool gone = mm_gone(mm);

	for (int i = 0; i < 20 && !gone; i++) {
		struct timespec ts = { .tv_nsec = 250000 };

		nanosleep(&ts, NULL);
		gone = mm_gone(mm);
	}
	if (gone) {
		lzm_child_release(h->lm, mm);
		sweep_unwatched(h->lm);
		return;
	}
	/* It lives, and closed its descriptors: we learn of its end no more. */
	lzm_log(h->lm, LOG_INFO, "child %d closed the descriptor that tells us when it exits: "
		"its address space is let go at lazymap_close", atomic_load(&mm->pid));
	for (unsigned i = 0; i < h->lm->nhandlers; i++)
		epoll_ctl(h->lm->handlers[i].epfd, EPOLL_CTL_DEL, mm->watch_fd, NULL);
	pthread_mutex_lock(&h->lm->children_lock);
	close(mm->watch_fd);
	mm->watch_fd = -1;
	pthread_mutex_unlock(&h->lm->children_lock);
}

/*
 * lazymap_close (or a broken lazymap) with children alive: nobody will serve
 * them now. Closing their userfaultfd would let the kernel fill their
 * missing pages with zeros, silently wrong for a fill or file region: poison
 * those pages first (SIGBUS), as a failed read does.
 */
void lzm_children_close(struct lazymap *lm)
{
	struct mm *mm;

	for (;;) {
		pthread_mutex_lock(&lm->children_lock);
		mm = lm->children;
		if (mm) {
			lm->children = mm->next_child;
			atomic_fetch_sub(&lm->nchildren, 1);
		}
		pthread_mutex_unlock(&lm->children_lock);
		if (!mm)
			break;
		epoll_children(lm, mm, EPOLL_CTL_DEL);
		for (struct vma *v = lzm_vma_first(&mm->tree); v && !mm_gone(mm); v = lzm_vma_next(v)) {
			uintptr_t at = v->start;
			int tries = 0;

			if (!source_produces(v->src))
				continue;
			while (at < v->end && tries < 1000) {
				size_t done = 0;
				int ret = lzm_uffd_poison(mm->uffd, at, v->end - at, &done);
				struct uffd_msg msgs[16];

				at += done;
				if (ret == 0 || ret == -EEXIST) {
					at += ret ? lzm_page_size : 0;
				} else if (ret == -EAGAIN) {
					/* An event the child waits on: read it, so it can go on. */
					int n = lzm_uffd_read(mm->uffd, msgs, 16);

					for (int i = 0; i < n; i++)
						if (msgs[i].event == UFFD_EVENT_FORK)
							close((int)msgs[i].arg.fork.ufd);
					tries++;
				} else {
					break;
				}
			}
		}
		lzm_mm_put(mm);
	}
}

/* ------------------------------------------------------------ fork() */

/*
 * Each fork gets one socket pair per lazymap that follows forks: we keep one
 * end (the FORK event takes it for the child's mm), the child keeps the
 * other, and only the child: at its exit or exec the kernel closes it, and
 * our end reads end-of-file. The child first writes its pid there. The
 * parent's handler keeps the registry lock from prepare to parent/child.
 */
#define MAX_WATCH 64

static int child_watch_fds[MAX_WATCH]; /* in a child: the ends it keeps */
static unsigned child_nwatch;
static int new_watch_fds[MAX_WATCH];
static unsigned new_nwatch;

void lzm_fork_prepare(struct lazymap *lm)
{
	int sv[2];

	lzm_evict_fork_hold(lm);
	lm->fork_peer = -1;
	if (!(lm->mm.features & UFFD_FEATURE_EVENT_FORK) || lm->closing)
		return;
	/* Before glibc takes its locks: the reader starts here, once. */
	if (!lm->fork_reader_started) {
		sigset_t all, old;

		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		lm->fork_reader_started =
			pthread_create(&lm->fork_reader, NULL, fork_reader_main, lm) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (lm->fork_reader_started)
			pthread_setname_np(lm->fork_reader, "lazymap-fork");
	}
	/*
	 * Descriptors for the FORK to come: children gone unnoticed give theirs
	 * back, and the reserve is taken again (both may allocate: here, before
	 * glibc takes its locks, they may).
	 */
	sweep_unwatched(lm);
	/* At the limit, a child that has just gone may still be held for a
	 * moment by a call of ours (its mm_gone() is not yet true): wait a
	 * little for its descriptor rather than fork without a reserve. */
	for (int i = 0; i < 20 && !reserve_take(lm); i++) {
		struct timespec ts = { .tv_nsec = 250000 };

		nanosleep(&ts, NULL);
		sweep_unwatched(lm);
	}
	atomic_store(&lm->forking, true);
	lzm_efd_signal(lm->fork_efd);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return; /* the child is served all the same, until lazymap_close */
	atomic_store(&lm->fork_watch, sv[0]);
	lm->fork_peer = sv[1];
}

void lzm_fork_parent(struct lazymap *lm)
{
	int fd;

	lzm_evict_fork_release(lm);
	atomic_store(&lm->forking, false);
	if (lm->fork_peer < 0)
		return;
	/* The FORK event was read before fork() returned: the reader took the
	 * socket, or this waits until it has. */
	pthread_mutex_lock(&lm->mm.read_lock);
	pthread_mutex_unlock(&lm->mm.read_lock);
	close(lm->fork_peer);
	lm->fork_peer = -1;
	fd = atomic_exchange(&lm->fork_watch, -1);
	if (fd >= 0)
		close(fd); /* no event came: nothing of ours was registered */
}

void lzm_fork_child(struct lazymap *lm)
{
	int fd = atomic_exchange(&lm->fork_watch, -1);

	lzm_evict_fork_release(lm);
	if (fd >= 0)
		close(fd);
	if (lm->fork_peer >= 0 && new_nwatch < MAX_WATCH)
		new_watch_fds[new_nwatch++] = lm->fork_peer;
}

void lzm_fork_child_done(void)
{
	int pid = (int)getpid();

	/* Our parent's ends tell our parent's parent about our parent, not us. */
	for (unsigned i = 0; i < child_nwatch; i++)
		close(child_watch_fds[i]);
	memcpy(child_watch_fds, new_watch_fds, sizeof(child_watch_fds));
	child_nwatch = new_nwatch;
	new_nwatch = 0;
	for (unsigned i = 0; i < child_nwatch; i++)
		send(child_watch_fds[i], &pid, sizeof(pid), MSG_NOSIGNAL | MSG_DONTWAIT);
}
