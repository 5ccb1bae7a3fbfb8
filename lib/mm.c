// SPDX-License-Identifier: MIT
/*
 * struct mm: one served address space, its userfaultfd and its VMA tree, and
 * the operations that change the layout (map, unmap, protect). The tree
 * mirrors what the kernel holds for our ranges; every change is made to the
 * kernel first and to the tree only once the kernel agreed.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "proto.h"

/*
 * The seam between the tree and the address space it mirrors (as mimalloc
 * keeps the OS behind prim.h): the calls that act on the mappings
 * themselves. They act on the caller's own address space, so only the
 * library's own mm makes them; a faultd client's mm (serve.c) has made
 * them itself before it asks faultd to follow, and a forked child's is
 * changed only by the child, which tells us by events.
 */
static int local_protect(uintptr_t start, size_t len, int prot)
{
	return mprotect((void *)start, len, prot) ? -errno : 0;
}

static int local_unmap(uintptr_t start, size_t len)
{
	return munmap((void *)start, len) ? -errno : 0;
}

static void local_rejoin(uintptr_t start, size_t len)
{
	madvise((void *)start, len, MADV_RANDOM);
	madvise((void *)start, len, MADV_NORMAL);
}

static bool local_present(const struct mm *mm, uintptr_t addr)
{
	unsigned char vec = 0;

	(void)mm;
	return mincore((void *)addr, lzm_page_size, &vec) == 0 && (vec & 1);
}

static int remote_done(uintptr_t start, size_t len, int prot)
{
	(void)start, (void)len, (void)prot;
	return 0;
}

static int remote_unmap(uintptr_t start, size_t len)
{
	(void)start, (void)len;
	return 0;
}

static void remote_rejoin(uintptr_t start, size_t len)
{
	(void)start, (void)len;
}

/* A page's presence in another process: its pagemap (a root faultd reads a
 * client's); without one, unknown: the fill is made, and the kernel refuses
 * it (EEXIST, then a wake) if the page is there. */
static bool remote_present(const struct mm *mm, uintptr_t addr)
{
	uint64_t e;

	if (mm->pagemap_fd < 0 ||
	    pread(mm->pagemap_fd, &e, sizeof(e), (off_t)((addr >> lzm_page_shift) * sizeof(e))) !=
		    (ssize_t)sizeof(e))
		return false;
	return (e >> 63) & 1; /* present in RAM (bit 62, swapped, is not ours) */
}

static int any_unregister(const struct mm *mm, uintptr_t start, size_t len)
{
	return lzm_uffd_unregister(mm->uffd, start, len);
}

/*
 * A faultd client unregisters its ranges itself, once it has made them
 * inaccessible (its own release_range, after faultd's): a range of a
 * cache's memfd unregistered while still mapped would let a touch of a
 * hole fill it with zeros, for every client of the file. Until then a
 * fault there finds no VMA here, and is woken to fault again.
 */
static int client_unregister(const struct mm *mm, uintptr_t start, size_t len)
{
	(void)mm, (void)start, (void)len;
	return 0;
}

const struct mm_ops lzm_mm_local = { "local", local_protect, local_unmap, local_rejoin,
				     local_present, any_unregister };
const struct mm_ops lzm_mm_remote = { "remote", remote_done, remote_unmap, remote_rejoin,
				      remote_present, any_unregister };
const struct mm_ops lzm_mm_client = { "client", remote_done, remote_unmap, remote_rejoin,
				      remote_present, client_unregister };

int lzm_mm_init(struct mm *mm, struct lazymap *lm, int uffd, uint64_t features)
{
	pthread_rwlockattr_t attr;

	mm->lm = lm;
	mm->uffd = uffd;
	mm->uffd_keep = mm->watch_fd = mm->pagemap_fd = mm->notify_fd = -1;
	mm->features = features;
	mm->ops = &lzm_mm_remote;
	atomic_init(&mm->refs, 1);
	lzm_vma_tree_init(&mm->tree);
	pthread_mutex_init(&mm->event_lock, NULL);
	pthread_mutex_init(&mm->read_lock, NULL);
	/* glibc's default rwlock lets a stream of faults starve map/unmap. */
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&mm->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	return 0;
}

/*
 * The process's own mm: a userfaultfd with the features we want. Fork events
 * need CAP_SYS_PTRACE: without it the handshake fails (EPERM), and the
 * lazymap goes on without them (lazymap_open documents what a child gets).
 */
int lzm_mm_open(struct mm *mm, struct lazymap *lm, uint64_t features)
{
	uint64_t got;
	int uffd, ret;

	for (;;) {
		ret = lzm_uffd_open(&uffd);
		if (ret)
			return ret;
		ret = lzm_uffd_api(uffd, features, &got);
		if (ret == 0)
			break;
		close(uffd);
		/* UFFDIO_API works once per descriptor: a new one without FORK. */
		if (ret != -EPERM || !(features & UFFD_FEATURE_EVENT_FORK))
			return ret;
		features &= ~(uint64_t)UFFD_FEATURE_EVENT_FORK;
	}
	/* UFFDIO_API reports every feature the kernel has, not what it enabled. */
	got &= features;
	lzm_mm_init(mm, lm, uffd, got);
	mm->self = true;
	mm->ops = &lzm_mm_local;
	/* read-around's evidence (readahead.c); without it, no read-around */
	mm->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (got & UFFD_FEATURE_EVENT_FORK) {
		mm->ring = calloc(1, sizeof(*mm->ring));
		if (!mm->ring) {
			close(uffd);
			mm->uffd = -1;
			return -ENOMEM;
		}
	}
	mm->uffd_keep = fcntl(uffd, F_DUPFD_CLOEXEC, 3);
	if (mm->uffd_keep < 0) {
		ret = -errno;
		close(uffd);
		mm->uffd = -1;
		return ret;
	}
	return 0;
}

/* How a VMA is registered: missing faults; a tracked shared file region
 * also minor and write-protect faults (filemap.c); under a budget, an
 * anonymous or fill region write-protect faults too (the writes to pages
 * that came back from swap, or to a callback's pages: swap.c). */
static uint64_t uffd_mode(const struct mm *mm, const struct vma *v)
{
	if (vma_writeback(v))
		return UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR |
		       UFFDIO_REGISTER_MODE_WP;
	return UFFDIO_REGISTER_MODE_MISSING |
	       (mm->lm->ev && !v->src->ops->cached ? UFFDIO_REGISTER_MODE_WP : 0);
}

void lzm_mm_write_unlock(struct mm *mm)
{
	atomic_store_explicit(&mm->nr_vmas, mm->tree.count, memory_order_relaxed);
	pthread_rwlock_unlock(&mm->lock);
}

/*
 * The kernel splits a VMA before it changes a part of it, and keeps the split
 * when a later step fails: at the mapping limit (vm.max_map_count) it may
 * split at the start of a range and then find no room to split at its end.
 * Two halves alike in everything are merged again only by a change that
 * makes them alike: set and clear an advice that nothing here relies on
 * (VM_RAND_READ only steers swap read-ahead of anonymous memory; a program's
 * own MADV_RANDOM or MADV_SEQUENTIAL there is lost), over the whole run of
 * our VMAs around the range. The run's ends are the kernel's VMA boundaries
 * too (a neighbour that is not ours has no userfaultfd, so it is never
 * merged with ours), so this needs no split of its own. Lock held; the range
 * is wholly ours.
 */
static void rejoin(struct mm *mm, uintptr_t start, uintptr_t end)
{
	struct vma *first = lzm_vma_lookup(&mm->tree, start);
	struct vma *last = lzm_vma_lookup(&mm->tree, end - 1), *v;
	size_t len;

	while ((v = lzm_vma_prev(first)) && v->end == first->start)
		first = v;
	while ((v = lzm_vma_next(last)) && v->start == last->end)
		last = v;
	len = last->end - first->start;
	mm->ops->rejoin(first->start, len);
}

/*
 * mprotect changes one kernel VMA after the other and stops at the first it
 * cannot (at the mapping limit, one it would have to split), the ones before
 * keeping the new protection: give them back the one the tree says, which
 * merges them back, then rejoin a VMA split and left alike. Lock held.
 */
static void protect_undo(struct mm *mm, uintptr_t start, uintptr_t end)
{
	struct vma *v;

	for (v = lzm_vma_lookup(&mm->tree, start); v && v->start < end; v = lzm_vma_next(v)) {
		uintptr_t s = v->start > start ? v->start : start;
		uintptr_t e = v->end < end ? v->end : end;

		mm->ops->protect(s, e - s, v->prot);
	}
	rejoin(mm, start, end);
}

/*
 * Give [start, end) back to the kernel: all of it, or with -errno nothing.
 * It is made inaccessible first, then unregistered, then unmapped, all with
 * the lock held: a touch from the first step on is SIGSEGV, as after the
 * kernel's munmap (an unregistered range would read the zero page), and an
 * unregistered munmap raises no event, which would wait for a handler to
 * read it: a fill callback in progress must never hold up an unmap. At the
 * mapping limit a step fails when it would need new VMAs (a range in the
 * middle of one needs two, though the unmap in the end needs only one): a
 * range left registered but dropped from the tree would make every touch
 * there bounce between the kernel and the handlers for ever, so the failure
 * is reported and the range given back as it was. Lock held.
 */
static int release_range(struct mm *mm, uintptr_t start, uintptr_t end)
{
	int ret = 0;

	ret = mm->ops->protect(start, end - start, PROT_NONE);
	if (ret == 0)
		ret = mm->ops->unregister(mm, start, end - start);
	if (ret == 0)
		ret = mm->ops->unmap(start, end - start);
	if (ret) {
		/*
		 * An unregister spanning several VMAs may have done the first
		 * ones before it failed: registering again merges them back
		 * (the parts still registered are left as they are).
		 */
		for (struct vma *v = lzm_vma_lookup(&mm->tree, start); v && v->start < end;
		     v = lzm_vma_next(v)) {
			uintptr_t s = v->start > start ? v->start : start;
			uintptr_t e = v->end < end ? v->end : end;

			lzm_uffd_register(mm->uffd, s, e - s, uffd_mode(mm, v));
		}
		protect_undo(mm, start, end);
	}
	return ret;
}

int lzm_mm_writeback(struct mm *mm, uintptr_t start, size_t len, int how)
{
	uintptr_t at = start, end = start + len;
	int ret = 0;

	/*
	 * One tracked VMA at a time, the lock let go while it is written back:
	 * write-back takes the locks of every mm that maps the file.
	 */
	while (at < end) {
		struct cache *c = NULL;
		uint64_t fp = 0, n = 0;
		struct vma *v;

		pthread_rwlock_rdlock(&mm->lock);
		for (v = lzm_vma_find(&mm->tree, at); v && v->start < end; v = lzm_vma_next(v))
			if (vma_writeback(v))
				break;
		if (v && v->start < end) {
			uintptr_t s = v->start > at ? v->start : at;
			uintptr_t e = v->end < end ? v->end : end;

			c = v->src->cache;
			lzm_cache_get(c);
			fp = vma_file_page(v, s);
			n = (e - s) >> lzm_page_shift;
			at = e;
		} else {
			at = end;
		}
		pthread_rwlock_unlock(&mm->lock);
		if (c) {
			int err;

			/* dirty pages no region may name any more: the whole file's */
			if (atomic_exchange(&c->orphans, false)) {
				err = lzm_cache_writeback(c, 0, cache_max_pages(), mm->lm, WB_PROTECT);
				if (err)
					atomic_store(&c->orphans, true);
				ret = ret ? ret : err;
			}
			err = lzm_cache_writeback(c, fp, n, mm->lm, WB_PROTECT | how);

			ret = ret ? ret : err;
			lzm_cache_put(c);
		}
	}
	return ret;
}

int lzm_mm_unmap_all(struct mm *mm)
{
	struct vma *v, *last, *next;
	uintptr_t end;
	int ret = lzm_mm_writeback(mm, lzm_page_size, UINTPTR_MAX - 2 * lzm_page_size + 1,
				   WB_DURABLE);

	pthread_rwlock_wrlock(&mm->lock);
	while ((v = lzm_vma_first(&mm->tree))) {
		/*
		 * A run of adjacent VMAs at once: the kernel may hold it as one
		 * VMA, and its ends are the kernel's boundaries, so releasing it
		 * needs no split even at the mapping limit. If it fails all the
		 * same (out of memory), nothing is left to try: the range stays
		 * mapped, and is unregistered when the userfaultfd is closed.
		 */
		for (last = v; (next = lzm_vma_next(last)) && next->start == last->end; last = next)
			;
		end = last->end;
		(void)release_range(mm, v->start, end);
		for (; v && v->start < end; v = next) {
			next = lzm_vma_next(v);
			lzm_vma_erase(&mm->tree, v);
			lzm_vma_pages_gone(mm, v);
			lzm_vma_free(v);
		}
	}
	lzm_mm_write_unlock(mm);
	return ret;
}

void lzm_mm_fini(struct mm *mm)
{
	lzm_cache_unshare_all(mm);
	/* a write-back of a cache this mm shared may still hold it */
	while (mm->self && atomic_load(&mm->refs) > 1)
		usleep(100);
	pthread_rwlock_destroy(&mm->lock);
	pthread_mutex_destroy(&mm->event_lock);
	pthread_mutex_destroy(&mm->read_lock);
	free(mm->ring);
	close(mm->uffd);
	if (mm->uffd_keep >= 0)
		close(mm->uffd_keep);
	if (mm->pagemap_fd >= 0)
		close(mm->pagemap_fd);
}

void lzm_mm_destroy(struct mm *mm)
{
	lzm_mm_unmap_all(mm);
	lzm_mm_fini(mm);
}

/* Two VMAs for the splits at the ends of a range, allocated before the lock
 * is taken and the kernel asked, so that the tree can then follow whatever
 * the kernel did without failing. */
static int spares_get(struct vma **spare)
{
	spare[0] = lzm_vma_alloc();
	spare[1] = lzm_vma_alloc();
	return spare[0] && spare[1] ? 0 : -ENOMEM;
}

/* Those not used. */
static void spares_put(struct vma **spare)
{
	lzm_vma_free(spare[0]);
	lzm_vma_free(spare[1]);
}

/* Split v at addr with a spare, which is used up. */
static struct vma *split_spare(struct mm *mm, struct vma *v, uintptr_t addr, struct vma **spare)
{
	struct vma *new = *spare;

	*spare = NULL;
	lzm_vma_split_with(&mm->tree, v, addr, new);
	return new;
}

/*
 * VMAs overlapping a range the kernel just handed out are stale: the program
 * unmapped that part behind our back (the events that tell us so come later).
 * The kernel's word wins; the parts outside the range may still be real.
 */
static void drop_stale(struct mm *mm, uintptr_t start, uintptr_t end, struct vma **spare)
{
	struct vma *v = lzm_vma_find(&mm->tree, start), *next;

	for (; v && v->start < end; v = next) {
		if (v->start < start)
			v = split_spare(mm, v, start, &spare[0]);
		if (v->end > end)
			split_spare(mm, v, end, &spare[1]);
		next = lzm_vma_next(v);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_pages_gone(mm, v);
		lzm_vma_free(v);
	}
}

/* Places LAZYMAP_HINT tries before it leaves the choice to the kernel. */
#define HINT_TRIES 4

/* mmap exactly at addr or not at all: MAP_FIXED_NOREPLACE never replaces a
 * mapping (and a kernel before 4.17 takes it for a hint: hence the check). */
static int mmap_at(uintptr_t addr, size_t len, int prot, int mflags, int fd, off_t off, void **pp)
{
	void *p = mmap((void *)addr, len, prot, mflags | MAP_FIXED_NOREPLACE, fd, off);

	if (p == MAP_FAILED)
		return -errno;
	if ((uintptr_t)p != addr) {
		munmap(p, len);
		return -EEXIST;
	}
	*pp = p;
	return 0;
}

/*
 * Where a new region goes, as the kernel's get_unmapped_area decides for
 * mmap. LAZYMAP_FIXED: at addr or -EEXIST, over nothing, ours or the
 * program's. LAZYMAP_HINT: at addr if the range is free, else in the lowest
 * gap of our tree above it that fits and that the kernel accepts too: the
 * program's own mappings are not in the tree, so when the kernel refuses, the
 * search goes on past the range it refused (the rest of that gap, then the
 * next ones), a few times, and then leaves the choice to the kernel, as mmap
 * does with a hint. The tree is only read, under the lock, and let go before
 * mmap: the kernel has the last word (MAP_FIXED_NOREPLACE), and a range it
 * hands out is ours.
 */
static int place(struct mm *mm, uintptr_t addr, size_t len, int prot, int flags, int fd, off_t off,
		 void **pp)
{
	int mflags = (fd < 0 ? MAP_ANONYMOUS : 0) | MAP_NORESERVE |
		     (flags & LAZYMAP_SHARED ? MAP_SHARED : MAP_PRIVATE);
	uintptr_t low = addr, at;
	struct vma *v;
	void *p;
	int ret;

	if (flags & LAZYMAP_FIXED) {
		pthread_rwlock_rdlock(&mm->lock);
		v = lzm_vma_find(&mm->tree, addr);
		ret = v && v->start < addr + len ? -EEXIST : 0;
		pthread_rwlock_unlock(&mm->lock);
		return ret ? ret : mmap_at(addr, len, prot, mflags, fd, off, pp);
	}
	if (!(flags & LAZYMAP_HINT))
		addr = 0;
	for (int i = 0; addr && i < HINT_TRIES; i++, low = at + len) {
		pthread_rwlock_rdlock(&mm->lock);
		ret = lzm_vma_find_gap(&mm->tree, len, low, UINTPTR_MAX, &at);
		pthread_rwlock_unlock(&mm->lock);
		if (ret)
			break;
		if (mmap_at(at, len, prot, mflags, fd, off, pp) == 0)
			return 0;
	}
	p = mmap((void *)addr, len, prot, mflags, fd, off);
	if (p == MAP_FAILED)
		return -errno;
	*pp = p;
	return 0;
}

/* A VMA for a new region of src, and the spares its insertion may need
 * (spares_put() them after, whatever the result). */
static int region_new(int flags, struct source *src, struct vma **vp, struct vma **spare)
{
	struct vma *v = lzm_vma_alloc();

	if (spares_get(spare) || !v) {
		lzm_vma_free(v);
		return -ENOMEM;
	}
	v->flags = flags & ~(LAZYMAP_HINT | LAZYMAP_FIXED);
	v->src = src;
	lzm_source_get(src);
	*vp = v;
	return 0;
}

/* v where the kernel has just mapped it: VMAs still there are stale. */
static int region_insert(struct mm *mm, struct vma *v, struct vma **spare)
{
	int ret;

	pthread_rwlock_wrlock(&mm->lock);
	drop_stale(mm, v->start, v->end, spare);
	ret = lzm_vma_insert(&mm->tree, v);
	lzm_mm_write_unlock(mm);
	return ret;
}

int lzm_mm_map(struct mm *mm, uintptr_t *addrp, size_t len, int prot, int flags, struct source *src)
{
	struct vma *v = NULL, *spare[2];
	void *p = NULL;
	int ret = region_new(flags, src, &v, spare);

	if (ret)
		goto out;
	lzm_mm_sync_events(mm);
	if (src->ops->cached) {
		/*
		 * The file's cache, at the file's offsets: private regions see
		 * it until they write (copy on write), shared ones write to it.
		 * A shared map that may never write is mapped private, which
		 * shows the same bytes (its fd may not write back anything).
		 * Inaccessible until registered: a touch before would fill a
		 * hole of the cache with zeros for every region of the file.
		 */
		if ((flags & LAZYMAP_SHARED) && !src->maywrite)
			flags &= ~LAZYMAP_SHARED;
		ret = place(mm, *addrp, len, PROT_NONE, flags, src->cache->memfd,
			    (off_t)(src->base << lzm_page_shift), &p);
	} else {
		ret = place(mm, *addrp, len, prot, flags, -1, 0, &p);
	}
	if (ret)
		goto out;
	ret = lzm_uffd_register(mm->uffd, (uintptr_t)p, len, uffd_mode(mm, v));
	if (ret == 0 && src->ops->cached && mprotect(p, len, prot))
		ret = -errno;
	if (ret == 0 && vma_writeback(v))
		ret = lzm_cache_share(src->cache, mm);
	if (ret) {
		munmap(p, len);
		goto out;
	}
	/*
	 * Without fork events a child's copy of the range is not registered:
	 * its missing pages would read as zeros, which is right for a zero
	 * source and silently wrong for any other. Such a child gets no copy.
	 */
	if (source_produces(src) && !(mm->features & UFFD_FEATURE_EVENT_FORK))
		madvise(p, len, MADV_DONTFORK);
	/* An UNMAP of this range raised before our mmap must not land after us. */
	lzm_mm_settle(mm);
	/* Served by faultd: it follows first (and tells us of the events it
	 * applied before, which its reply comes after). */
	if (mm->lm->remote) {
		ret = lzm_remote_map(mm->lm, (uintptr_t)p, len, prot, v->flags, src);
		if (ret) {
			lzm_uffd_unregister(mm->uffd, (uintptr_t)p, len);
			munmap(p, len);
			goto out;
		}
	}
	v->start = (uintptr_t)p;
	v->end = v->start + len;
	v->prot = prot;
	ret = region_insert(mm, v, spare);
	LAZYMAP_ASSERT(ret == 0); /* the kernel's range: aligned, and stale VMAs gone */
	v = NULL;
	*addrp = (uintptr_t)p;
	if (mm->lm->remote)
		lzm_remote_placed(mm, src);
out:
	lzm_vma_free(v);
	spares_put(spare);
	return ret;
}

int lzm_mm_adopt(struct mm *mm, uintptr_t addr, size_t len, int prot, int flags,
		 struct source *src)
{
	struct vma *v = NULL, *spare[2];
	int ret = region_new(flags, src, &v, spare);

	if (ret)
		goto out;
	v->start = addr;
	v->end = addr + len;
	v->prot = prot;
	if (vma_writeback(v)) {
		ret = lzm_cache_share(src->cache, mm);
		if (ret)
			goto out;
	}
	/* as lzm_mm_map: an UNMAP raised before the client's mmap lands first */
	lzm_mm_settle(mm);
	ret = region_insert(mm, v, spare);
	if (ret == 0)
		v = NULL;
out:
	lzm_vma_free(v);
	spares_put(spare);
	return ret;
}

int lzm_mm_check_range(struct mm *mm, uintptr_t start, size_t len)
{
	uintptr_t end = start + len, at = start;
	struct vma *v;

	for (v = lzm_vma_lookup(&mm->tree, start); v && v->start <= at; v = lzm_vma_next(v)) {
		at = v->end;
		if (at >= end)
			return 0;
	}
	return -EINVAL;
}

int lzm_mm_owned(struct mm *mm, uintptr_t start, size_t len)
{
	int ret;

	lzm_mm_sync_events(mm);
	pthread_rwlock_rdlock(&mm->lock);
	ret = lzm_mm_check_range(mm, start, len);
	pthread_rwlock_unlock(&mm->lock);
	if (ret) {
		/* Not wholly ours, or a part mremap grew in place (no event)? */
		lzm_mm_adopt_growth(mm);
		pthread_rwlock_rdlock(&mm->lock);
		ret = lzm_mm_check_range(mm, start, len);
		pthread_rwlock_unlock(&mm->lock);
	}
	return ret;
}

/* Split with the spares so that [start, end), wholly ours, is covered by
 * whole VMAs; returns the first. */
static struct vma *split_range(struct mm *mm, uintptr_t start, uintptr_t end, struct vma **spare)
{
	struct vma *first = lzm_vma_lookup(&mm->tree, start), *last;

	if (first->start < start)
		first = split_spare(mm, first, start, &spare[0]);
	last = lzm_vma_lookup(&mm->tree, end - 1);
	if (last->end > end)
		split_spare(mm, last, end, &spare[1]);
	return first;
}

/* Get the spares, take the write lock and check that [start, start+len) is
 * ours. The lock is held on return, whatever the result: unlock_range(). */
static int lock_range(struct mm *mm, uintptr_t start, size_t len, struct vma **spare)
{
	int ret = spares_get(spare);

	if (ret == 0)
		ret = lzm_mm_owned(mm, start, len);
	pthread_rwlock_wrlock(&mm->lock);
	return ret ? ret : lzm_mm_check_range(mm, start, len);
}
static void unlock_range(struct mm *mm, struct vma **spare)
{
	lzm_mm_write_unlock(mm);
	spares_put(spare);
}

/*
 * Merging is what keeps the tree small: protect or advise back and forth must
 * not leave a trail of splits. From prev (the VMA before the changed range,
 * to rejoin the left edge) to the first VMA at or after end.
 */
static void merge_range(struct mm *mm, struct vma *prev, uintptr_t end)
{
	struct vma *v = prev ? prev : lzm_vma_first(&mm->tree);

	while (v && v->start <= end) {
		v = lzm_vma_merge(&mm->tree, v);
		v = lzm_vma_next(v);
	}
}

int lzm_mm_unmap(struct mm *mm, uintptr_t start, size_t len)
{
	uintptr_t end = start + len;
	struct vma *spare[2], *v, *next;
	int ret = lzm_mm_owned(mm, start, len);

	/* What was written to the file's cache goes to the file first, or nothing goes. */
	if (ret == 0)
		ret = lzm_mm_writeback(mm, start, len, WB_DURABLE_IF);
	if (ret)
		return ret;
	ret = lock_range(mm, start, len, spare);

	if (ret)
		goto out;
	ret = release_range(mm, start, end);
	if (ret)
		goto out;
	for (v = split_range(mm, start, end, spare); v && v->start < end; v = next) {
		next = lzm_vma_next(v);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_pages_gone(mm, v);
		lzm_vma_free(v);
	}
out:
	unlock_range(mm, spare);
	return ret;
}

int lzm_mm_protect(struct mm *mm, uintptr_t start, size_t len, int prot)
{
	uintptr_t end = start + len;
	struct vma *spare[2], *v, *prev;
	int ret = lock_range(mm, start, len, spare);

	if (ret)
		goto out;
	if (prot & PROT_WRITE)
		for (v = lzm_vma_lookup(&mm->tree, start); v && v->start < end; v = lzm_vma_next(v))
			if ((v->flags & LAZYMAP_SHARED) && v->src->ops->cached && !v->src->maywrite) {
				ret = -EACCES; /* as mprotect on a file opened read-only */
				goto out;
			}
	ret = mm->ops->protect(start, len, prot);
	if (ret) {
		protect_undo(mm, start, end);
		goto out;
	}
	v = split_range(mm, start, end, spare);
	prev = lzm_vma_prev(v);
	for (; v && v->start < end; v = lzm_vma_next(v))
		v->prot = prot;
	merge_range(mm, prev, end);
out:
	unlock_range(mm, spare);
	return ret;
}

int lzm_mm_advise(struct mm *mm, uintptr_t start, size_t len, unsigned advice)
{
	uintptr_t end = start + len;
	struct vma *spare[2], *v, *prev;
	int ret = lock_range(mm, start, len, spare);

	if (ret)
		goto out;
	v = split_range(mm, start, end, spare);
	prev = lzm_vma_prev(v);
	for (; v && v->start < end; v = lzm_vma_next(v)) {
		if (advice & LZM_ADV_FILL_UNIT) {
			v->fill_unit = advice & ~LZM_ADV_FILL_UNIT;
			continue;
		}
		v->advice = (int)advice;
		/* a new pattern: forget the stream seen so far */
		atomic_store_explicit(&v->ra_window, 0, memory_order_relaxed);
	}
	merge_range(mm, prev, end);
out:
	unlock_range(mm, spare);
	return ret;
}

/* A VMA as lazymap_dump prints it. */
struct vma_line {
	uintptr_t start, end;
	uint64_t offset;
	int prot, flags;
	const char *source; /* its source_ops' name: static */
};

/*
 * Append mm's VMAs to lines (n of them). The tree is copied under the lock
 * and printed with none held: out is the program's, and may have its
 * buffer in one of our regions. Writing there faults, the handler serving
 * the fault needs the read lock, and a writer waiting behind us (the lock
 * prefers writers) would keep it from the handler for ever. The copy is
 * allocated outside the lock too (the program may replace malloc), and
 * grown with some room until the tree fits.
 */
static int copy_lines(struct mm *mm, struct vma_line **lines, size_t *n)
{
	size_t cap = *n + atomic_load_explicit(&mm->nr_vmas, memory_order_relaxed);
	struct vma_line *more;

	for (;;) {
		more = realloc(*lines, (cap ? cap : 1) * sizeof(*more));
		if (!more)
			return -ENOMEM;
		*lines = more;
		pthread_rwlock_rdlock(&mm->lock);
		if (*n + mm->tree.count <= cap)
			break;
		cap = *n + mm->tree.count + mm->tree.count / 4;
		pthread_rwlock_unlock(&mm->lock);
	}
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v))
		more[(*n)++] = (struct vma_line){
			.start = v->start,
			.end = v->end,
			.offset = (v->src->base + v->pgoff) << lzm_page_shift,
			.prot = v->prot,
			.flags = v->flags,
			.source = v->src->ops->name,
		};
	pthread_rwlock_unlock(&mm->lock);
	return 0;
}

static int cmp_line(const void *a, const void *b)
{
	const struct vma_line *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

int lzm_mm_dump(struct mm *mm, struct mm *also, FILE *out)
{
	struct vma_line *lines = NULL;
	size_t n = 0;
	uint64_t faults = atomic_load(&mm->faults), events = atomic_load(&mm->events);

	if (copy_lines(mm, &lines, &n) || (also && copy_lines(also, &lines, &n))) {
		free(lines);
		return -ENOMEM;
	}
	if (also) {
		qsort(lines, n, sizeof(*lines), cmp_line);
		faults += atomic_load(&also->faults);
		events += atomic_load(&also->events);
	}

	int err = 0;

	if (fprintf(out, "# pid %d faults %llu events %llu\n",
		    mm->self ? (int)getpid() : lzm_child_pid(mm), (unsigned long long)faults,
		    (unsigned long long)events) < 0)
		err = errno ? -errno : -EIO;
	for (size_t i = 0; i < n && !err; i++)
		if (fprintf(out, "%08lx-%08lx %c%c-%c %08llx 00:00 0 [lazymap:%s]\n",
			    (unsigned long)lines[i].start, (unsigned long)lines[i].end,
			    lines[i].prot & PROT_READ ? 'r' : '-',
			    lines[i].prot & PROT_WRITE ? 'w' : '-',
			    lines[i].flags & LAZYMAP_SHARED ? 's' : 'p',
			    (unsigned long long)lines[i].offset, lines[i].source) < 0)
			err = errno ? -errno : -EIO;
	/* What the stream could not write, now or at its flush, is the caller's to know. */
	if (!err && fflush(out))
		err = errno ? -errno : -EIO;
	free(lines);
	return err ? err : (int)n;
}
