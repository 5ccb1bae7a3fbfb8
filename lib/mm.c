// SPDX-License-Identifier: MIT
/*
 * struct mm: one served address space, its userfaultfd and its VMA tree, and
 * the operations that change the layout (map, unmap, protect). The tree
 * mirrors what the kernel holds for our ranges; every change is made to the
 * kernel first and to the tree only once the kernel agreed.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

int lzm_mm_init(struct mm *mm, uint64_t features)
{
	pthread_rwlockattr_t attr;
	uint64_t got;
	int ret;

	ret = lzm_uffd_open(&mm->uffd);
	if (ret)
		return ret;
	ret = lzm_uffd_api(mm->uffd, features, &got);
	if (ret) {
		close(mm->uffd);
		return ret;
	}
	mm->features = got;
	lzm_vma_tree_init(&mm->tree);
	/* glibc's default rwlock lets a stream of faults starve map/unmap. */
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&mm->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	return 0;
}

/* Leave a write section: publish the VMA count for lock-free readers. */
static void write_unlock(struct mm *mm)
{
	atomic_store_explicit(&mm->nr_vmas, mm->tree.count, memory_order_relaxed);
	pthread_rwlock_unlock(&mm->lock);
}

/* Give [start, end) back to the kernel: unregister first, so munmap raises no
 * event that would wait for a handler. */
static void release_range(struct mm *mm, uintptr_t start, uintptr_t end)
{
	lzm_uffd_unregister(mm->uffd, start, end - start);
	munmap((void *)start, end - start);
}

void lzm_mm_unmap_all(struct mm *mm)
{
	struct vma *v;

	pthread_rwlock_wrlock(&mm->lock);
	while ((v = lzm_vma_first(&mm->tree))) {
		release_range(mm, v->start, v->end);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_free(v);
	}
	write_unlock(mm);
}

void lzm_mm_destroy(struct mm *mm)
{
	lzm_mm_unmap_all(mm);
	pthread_rwlock_destroy(&mm->lock);
	close(mm->uffd);
}

/*
 * VMAs overlapping a range the kernel just handed out are stale: the program
 * unmapped that part behind our back (the events that tell us so come later).
 * The kernel's word wins; the parts outside the range may still be real.
 */
static void drop_stale(struct mm *mm, uintptr_t start, uintptr_t end)
{
	struct vma *v = lzm_vma_find(&mm->tree, start), *next;

	for (; v && v->start < end; v = next) {
		if (v->start < start && lzm_vma_split(&mm->tree, v, start, &v))
			break;
		if (v->end > end)
			lzm_vma_split(&mm->tree, v, end, &next);
		next = lzm_vma_next(v);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_free(v);
	}
}

int lzm_mm_map(struct mm *mm, size_t len, int prot, int flags, struct source *src, uintptr_t *addrp)
{
	int mflags = MAP_ANONYMOUS | MAP_NORESERVE |
		     (flags & LAZYMAP_SHARED ? MAP_SHARED : MAP_PRIVATE);
	struct vma *v = lzm_vma_alloc();
	void *p;
	int ret;

	if (!v)
		return -ENOMEM;
	p = mmap(NULL, len, prot, mflags, -1, 0);
	if (p == MAP_FAILED) {
		lzm_vma_free(v);
		return -errno;
	}
	ret = lzm_uffd_register(mm->uffd, (uintptr_t)p, len);
	if (ret) {
		munmap(p, len);
		lzm_vma_free(v);
		return ret;
	}
	/*
	 * Without fork events a child's copy of the range is not registered:
	 * its missing pages would read as zeros, which is right for a zero
	 * source and silently wrong for any other. Such a child gets no copy.
	 */
	if (source_produces(src))
		madvise(p, len, MADV_DONTFORK);
	v->start = (uintptr_t)p;
	v->end = v->start + len;
	v->prot = prot;
	v->flags = flags;
	v->src = src;
	lzm_source_get(src);

	pthread_rwlock_wrlock(&mm->lock);
	drop_stale(mm, v->start, v->end);
	ret = lzm_vma_insert(&mm->tree, v);
	write_unlock(mm);
	if (ret) {
		/* drop_stale could not split (ENOMEM): give the range back */
		release_range(mm, (uintptr_t)p, len);
		lzm_vma_free(v);
		return -ENOMEM;
	}
	*addrp = (uintptr_t)p;
	return 0;
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

/*
 * Split so that [start, end) is covered by whole VMAs; returns the first. On
 * failure the tree may keep an extra split, which is harmless (and merged
 * back by the next protect).
 */
static int split_range(struct mm *mm, uintptr_t start, uintptr_t end, struct vma **firstp)
{
	struct vma *v = lzm_vma_lookup(&mm->tree, start), *tail;
	int ret;

	if (v->start < start) {
		ret = lzm_vma_split(&mm->tree, v, start, &tail);
		if (ret)
			return ret;
		v = tail;
	}
	*firstp = v;
	v = lzm_vma_lookup(&mm->tree, end - 1);
	if (v->end > end)
		return lzm_vma_split(&mm->tree, v, end, &tail);
	return 0;
}

/* Take the write lock and make [start, start+len) whole VMAs of ours; *firstp
 * is the first. The lock is held on return, whatever the result. */
static int lock_range(struct mm *mm, uintptr_t start, size_t len, struct vma **firstp)
{
	int ret;

	pthread_rwlock_wrlock(&mm->lock);
	ret = lzm_mm_check_range(mm, start, len);
	return ret ? ret : split_range(mm, start, start + len, firstp);
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
	struct vma *v, *next;
	int ret = lock_range(mm, start, len, &v);

	if (ret)
		goto out;
	release_range(mm, start, end);
	for (; v && v->start < end; v = next) {
		next = lzm_vma_next(v);
		lzm_vma_erase(&mm->tree, v);
		lzm_vma_free(v);
	}
out:
	write_unlock(mm);
	return ret;
}

int lzm_mm_protect(struct mm *mm, uintptr_t start, size_t len, int prot)
{
	uintptr_t end = start + len;
	struct vma *v, *prev;
	int ret = lock_range(mm, start, len, &v);

	if (ret)
		goto out;
	if (mprotect((void *)start, len, prot)) {
		ret = -errno;
		goto out;
	}
	prev = lzm_vma_prev(v);
	for (; v && v->start < end; v = lzm_vma_next(v))
		v->prot = prot;
	merge_range(mm, prev, end);
out:
	write_unlock(mm);
	return ret;
}

int lzm_mm_advise(struct mm *mm, uintptr_t start, size_t len, int advice)
{
	uintptr_t end = start + len;
	struct vma *v, *prev;
	int ret = lock_range(mm, start, len, &v);

	if (ret)
		goto out;
	prev = lzm_vma_prev(v);
	for (; v && v->start < end; v = lzm_vma_next(v)) {
		v->advice = advice;
		/* a new pattern: forget the stream seen so far */
		atomic_store_explicit(&v->ra_window, 0, memory_order_relaxed);
	}
	merge_range(mm, prev, end);
out:
	write_unlock(mm);
	return ret;
}

int lzm_mm_dump(struct mm *mm, FILE *out)
{
	struct vma *v;
	int n = 0;

	pthread_rwlock_rdlock(&mm->lock);
	for (v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v), n++)
		fprintf(out, "%08lx-%08lx %c%c-%c %08llx 00:00 0 [lazymap:%s]\n",
			(unsigned long)v->start, (unsigned long)v->end,
			v->prot & PROT_READ ? 'r' : '-', v->prot & PROT_WRITE ? 'w' : '-',
			v->flags & LAZYMAP_SHARED ? 's' : 'p',
			(unsigned long long)((v->src->file_pgoff + v->pgoff) << lzm_page_shift),
			v->src->ops->name);
	pthread_rwlock_unlock(&mm->lock);
	return n;
}
