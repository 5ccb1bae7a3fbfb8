// SPDX-License-Identifier: MIT
/*
 * The swap of our own (the kernel's swapfile.c): an unlinked file where the
 * resident budget puts written pages of anonymous and fill regions, its
 * slots, and the table of the slots each source's pages hold.
 *
 * A slot holds one page at slot << page_shift. A source page's table entry
 * is its slot + 1 (0: none), and says the slot has the page's bytes as they
 * are now: whoever writes the page (a write-protect fault: fault.c) lets go
 * of the slot first. So a page read back from swap and not written since is
 * evicted again with no write, as the kernel's swap cache does. Slots are
 * counted (forked children share the parent's until they write).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <liburing.h>

#include "internal.h"

/* The file grows by this much at a time (fallocate: a full disk shows at once). */
#define GROW_SLOTS (16384u) /* 64 MiB of 4 KiB pages */

struct swap {
	atomic_uint refs;        /* the evictor's, and one per source with a slot table */
	int fd;
	/* lock: the slot map below. Taken alone: nothing is called under it. */
	pthread_mutex_t lock;
	uint16_t *refs_of;       /* per slot: table entries that name it; 0: free */
	uint32_t cap;            /* slots the file has room for (allocated) */
	uint32_t hint;           /* where the next search starts */
	_Atomic uint64_t used;   /* slots in use (written under lock) */
	bool full;               /* the file could not grow: slots past cap cannot be had */
	struct io_uring ring;    /* the evictor's writes (one thread: no lock) */
	bool ring_ok;
	struct lazymap *lm;      /* counters (swap_bytes) */
};

static int open_swap_file(const char *dir, bool *direct)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC | O_DIRECT, 0600);

	*direct = fd >= 0;
	if (fd < 0 && errno == EINVAL) /* no O_DIRECT here (tmpfs before 6.6) */
		fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EOPNOTSUPP) {
		/* no O_TMPFILE: a named file, unlinked at once */
		char path[PATH_MAX];

		if (snprintf(path, sizeof(path), "%s/lazymap-swap-XXXXXX", dir) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
	}
	return fd < 0 ? -errno : fd;
}

int lzm_swap_open(struct lazymap *lm, struct swap **swp)
{
	const char *dir = lm->opts.swap_path;
	struct swap *sw;
	bool direct;
	int fd;

	if (!dir || !*dir)
		dir = getenv("TMPDIR");
	if (!dir || !*dir)
		dir = "/var/tmp";
	fd = open_swap_file(dir, &direct);
	if (fd < 0)
		return fd;
	sw = calloc(1, sizeof(*sw));
	if (!sw) {
		close(fd);
		return -ENOMEM;
	}
	atomic_init(&sw->refs, 1);
	sw->fd = fd;
	sw->lm = lm;
	pthread_mutex_init(&sw->lock, NULL);
	sw->ring_ok = lzm_ring_init(64, &sw->ring) == 0;
	(void)direct; /* O_DIRECT if the file system has it: our pages stay out of its cache */
	*swp = sw;
	return 0;
}

static void swap_get(struct swap *sw)
{
	atomic_fetch_add_explicit(&sw->refs, 1, memory_order_relaxed);
}

void lzm_swap_put(struct swap *sw)
{
	if (!sw || atomic_fetch_sub_explicit(&sw->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (sw->ring_ok)
		lzm_ring_exit(&sw->ring);
	close(sw->fd);
	free(sw->refs_of);
	pthread_mutex_destroy(&sw->lock);
	free(sw);
}

int lzm_swap_fd(const struct swap *sw)
{
	return sw->fd;
}

uint64_t lzm_swap_bytes(const struct swap *sw)
{
	return sw ? atomic_load_explicit(&sw->used, memory_order_relaxed) << lzm_page_shift : 0;
}

/* ------------------------------------------------------------ slots */

/* Make room for more slots (GROW_SLOTS, or less where that is all there is);
 * false if the file cannot grow. Lock held. */
static bool grow(struct swap *sw)
{
	uint32_t step = GROW_SLOTS;
	struct rlimit fsize;
	uint64_t cap;
	uint16_t *r;

	if (sw->full)
		return false;
	for (;; step /= 2) {
		cap = (uint64_t)sw->cap + step;
		/* Past RLIMIT_FSIZE a write would be SIGXFSZ, which kills: stop short. */
		bool over = cap > UINT32_MAX || (getrlimit(RLIMIT_FSIZE, &fsize) == 0 &&
						 fsize.rlim_cur != RLIM_INFINITY &&
						 cap << lzm_page_shift > fsize.rlim_cur);

		if (!over && fallocate(sw->fd, 0, (off_t)sw->cap << lzm_page_shift,
				       (off_t)step << lzm_page_shift) == 0)
			break;
		if (!over && errno == EINTR)
			return false;
		if (step == 1) {
			sw->full = true; /* ENOSPC, EFBIG, EIO: it will not get better */
			return false;
		}
	}
	r = realloc(sw->refs_of, cap * sizeof(*r));
	if (!r)
		return false;
	memset(r + sw->cap, 0, step * sizeof(*r));
	sw->refs_of = r;
	sw->cap = (uint32_t)cap;
	return true;
}

uint32_t lzm_swap_alloc(struct swap *sw, uint32_t want, uint32_t *slot)
{
	uint32_t got = 0;

	pthread_mutex_lock(&sw->lock);
	for (int pass = 0; pass < 3 && !got; pass++) {
		/* next fit from the hint, then from the start, then in new room */
		uint32_t s = pass == 0 ? sw->hint : pass == 1 ? 0 : sw->cap;

		if (pass == 2 && !grow(sw))
			break;
		for (; s < sw->cap; s++) {
			if (sw->refs_of[s])
				continue;
			got = 1;
			while (got < want && s + got < sw->cap && !sw->refs_of[s + got])
				got++;
			break;
		}
		if (got) {
			*slot = s;
			for (uint32_t i = 0; i < got; i++)
				sw->refs_of[s + i] = 1;
			sw->hint = s + got;
			sw->used += got;
		}
	}
	pthread_mutex_unlock(&sw->lock);
	return got;
}

/* One more table entry names slot (a forked child's copy); false at the count's limit. */
static bool slot_share(struct swap *sw, uint32_t slot)
{
	bool ok;

	pthread_mutex_lock(&sw->lock);
	ok = sw->refs_of[slot] < UINT16_MAX;
	if (ok)
		sw->refs_of[slot]++;
	pthread_mutex_unlock(&sw->lock);
	return ok;
}

void lzm_swap_free(struct swap *sw, uint32_t slot)
{
	pthread_mutex_lock(&sw->lock);
	if (sw->refs_of[slot] && --sw->refs_of[slot] == 0) {
		sw->used--;
		if (slot < sw->hint)
			sw->hint = slot;
	}
	pthread_mutex_unlock(&sw->lock);
}

/* ------------------------------------------------------------ writes */

int lzm_swap_write(struct swap *sw, struct swap_io *io, size_t n)
{
	size_t i, queued = 0;
	int first = 0;

	for (i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = sw->ring_ok ? io_uring_get_sqe(&sw->ring) : NULL;

		if (!sqe) {
			/* no ring (or it is full): write it ourselves */
			ssize_t w = pwrite(sw->fd, io[i].buf, io[i].len,
					   (off_t)io[i].slot << lzm_page_shift);

			io[i].res = w < 0 ? -errno : (int)w;
			continue;
		}
		io_uring_prep_write(sqe, sw->fd, io[i].buf, (unsigned)io[i].len,
				    (uint64_t)io[i].slot << lzm_page_shift);
		io_uring_sqe_set_data(sqe, &io[i]);
		queued++;
	}
	if (queued && io_uring_submit_and_wait(&sw->ring, (unsigned)queued) < 0)
		first = -EIO;
	while (queued) {
		struct io_uring_cqe *cqe;
		int ret = io_uring_wait_cqe(&sw->ring, &cqe);

		if (ret < 0) {
			if (ret == -EINTR)
				continue;
			return ret; /* cannot be: the ring is ours */
		}
		((struct swap_io *)io_uring_cqe_get_data(cqe))->res = cqe->res;
		io_uring_cqe_seen(&sw->ring, cqe);
		queued--;
	}
	/* a short write: the rest by hand (the file had room: fallocate) */
	for (i = 0; i < n; i++) {
		int r = io[i].res;

		if (r >= 0 && (size_t)r < io[i].len) {
			ssize_t w = pwrite(sw->fd, io[i].buf + r, io[i].len - (size_t)r,
					   ((off_t)io[i].slot << lzm_page_shift) + r);

			io[i].res = w < 0 ? -errno : r + (int)w;
		}
	}
	return first;
}

/* ------------------------------------------------------------ source tables */

_Atomic uint32_t *lzm_swap_table(struct source *src, struct swap *sw)
{
	_Atomic uint32_t *t = atomic_load_explicit(&src->slots, memory_order_acquire), *none = NULL;
	size_t len = (src->npages * sizeof(*t) + lzm_page_size - 1) & ~(lzm_page_size - 1);

	if (t)
		return t;
	/* reserved, not committed: a page of table per 1024 pages swapped */
	t = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (t == MAP_FAILED)
		return NULL;
	if (!atomic_compare_exchange_strong(&src->slots, &none, t)) {
		munmap((void *)t, len);
		return none;
	}
	swap_get(sw);
	src->swap = sw;
	return t;
}

/* Call fn on the entries of [first, first + n) of t that may be set: the
 * table's pages never written read as zeros, and mincore() skips them. */
static void table_walk(_Atomic uint32_t *t, uint64_t first, size_t n,
		       void (*fn)(void *arg, uint64_t idx, uint32_t slot1), void *arg)
{
	const size_t per_page = lzm_page_size / sizeof(*t);

	for (uint64_t i = first, end = first + n; i < end;) {
		uint64_t pend = (i / per_page + 1) * per_page;
		unsigned char vec = 1;

		if (pend > end)
			pend = end;
		mincore((void *)((uintptr_t)&t[i] & ~(uintptr_t)(lzm_page_size - 1)), lzm_page_size,
			&vec);
		for (; (vec & 1) && i < pend; i++) {
			uint32_t s = atomic_load_explicit(&t[i], memory_order_relaxed);

			if (s)
				fn(arg, i, s);
		}
		i = pend;
	}
}

static void free_entry(void *arg, uint64_t idx, uint32_t slot1)
{
	struct source *src = arg;

	if (atomic_compare_exchange_strong(&src->slots[idx], &slot1, 0))
		lzm_swap_free(src->swap, slot1 - 1);
}

void lzm_swap_forget(struct source *src, uint64_t idx)
{
	uint32_t slot1 = source_slot(src, idx);

	if (slot1)
		free_entry(src, idx, slot1);
}

void lzm_swap_release(struct source *src, uint64_t first, size_t n)
{
	if (atomic_load_explicit(&src->slots, memory_order_acquire))
		table_walk(src->slots, first, n, free_entry, src);
}

void lzm_swap_drop_table(struct source *src)
{
	size_t len = (src->npages * sizeof(uint32_t) + lzm_page_size - 1) & ~(lzm_page_size - 1);

	if (!src->slots)
		return;
	lzm_swap_release(src, 0, src->npages);
	munmap((void *)src->slots, len);
	lzm_swap_put(src->swap);
}

struct clone_ctx {
	struct source *c;
	const struct source *src;
	bool failed;
};

static void clone_entry(void *arg, uint64_t idx, uint32_t slot1)
{
	struct clone_ctx *x = arg;
	uint8_t s = atomic_load_explicit(&x->src->state[idx], memory_order_relaxed);

	if (!slot_share(x->src->swap, slot1 - 1)) {
		x->failed = true;
		return;
	}
	atomic_store_explicit(&x->c->slots[idx], slot1, memory_order_relaxed);
	/* resident in the parent, so in the child's copy of the page table too */
	atomic_store_explicit(&x->c->state[idx], s & PAGE_FILLED ? PAGE_FILLED : PAGE_SWAPPED,
			      memory_order_relaxed);
}

int lzm_swap_clone(struct source *c, const struct source *src)
{
	struct clone_ctx x = { .c = c, .src = src };

	if (!atomic_load_explicit(&src->slots, memory_order_acquire))
		return 0;
	if (!lzm_swap_table(c, src->swap))
		return -ENOMEM;
	table_walk(src->slots, 0, src->npages, clone_entry, &x);
	return x.failed ? -ENOMEM : 0;
}

void lzm_vma_pages_gone(struct mm *mm, struct vma *v)
{
	size_t n = (v->end - v->start) >> lzm_page_shift;

	lzm_swap_release(v->src, v->pgoff, n);
	if (mm->self)
		lzm_evict_forget(mm->lm, v->src, v->pgoff, n);
}
