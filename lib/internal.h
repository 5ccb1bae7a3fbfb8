/* SPDX-License-Identifier: MIT */
/*
 * What crosses files inside liblazymap, grouped by the file that defines it,
 * so this header doubles as a map of the library. Names follow the kernel's
 * mm/ (mm, vma, find_vma, pgoff ...) so that a reader of mm/ finds their way.
 *
 * Every name that crosses files carries the lzm_ prefix and hidden
 * visibility (the pragma below): a program linking liblazymap sees only the
 * lazymap_* API (lib/lazymap.map), never a bare page_size or vma_insert.
 */
#ifndef LAZYMAP_INTERNAL_H
#define LAZYMAP_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <linux/userfaultfd.h>

#include "lazymap.h"

#pragma GCC visibility push(hidden)

/* ---------------------------------------------------------------- util.c */

extern size_t lzm_page_size;    /* set once, before main(), by a constructor */
extern unsigned lzm_page_shift;

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t lzm_now_ns(void);

/* Make a nonblocking eventfd readable; make it unreadable again. */
void lzm_efd_signal(int fd);
void lzm_efd_drain(int fd);

/* Invariants. LAZYMAP_DEBUG >= 1 (debug and test builds): cheap asserts;
 * >= 2: expensive ones too (a full tree check after every change). */
#ifndef LAZYMAP_DEBUG
#define LAZYMAP_DEBUG 0
#endif
#define LAZYMAP_ASSERT(cond)                                                   \
	do {                                                                   \
		if (LAZYMAP_DEBUG >= 1 && !(cond))                             \
			lzm_assert_fail(#cond, __FILE__, __LINE__);        \
	} while (0)
_Noreturn void lzm_assert_fail(const char *what, const char *file, int line);

static inline bool page_aligned(uintptr_t x) { return (x & (lzm_page_size - 1)) == 0; }

/* ----------------------------------------------------------------- log.c */

/*
 * Messages for the program (opts.log, or stderr with LAZYMAP_LOG set). A
 * library thread points lzm_logq at a queue of its own: its messages wait
 * there until it calls lzm_log_flush() holding no lock, since the program's
 * hook may touch lazymap memory. Other threads' are delivered at once.
 */
#define LOG_MSG_MAX 200
#define LOG_QUEUE   4
struct logq {
	unsigned n, dropped;
	int level[LOG_QUEUE];
	char msg[LOG_QUEUE][LOG_MSG_MAX];
};
extern _Thread_local struct logq *lzm_logq;

bool lzm_log_env(void); /* LAZYMAP_LOG asks for stderr */
/* lm may be NULL: a message of no lazymap goes to stderr if LAZYMAP_LOG asks. */
__attribute__((format(printf, 3, 4)))
void lzm_log(struct lazymap *lm, int level, const char *fmt, ...);
void lzm_log_flush(struct lazymap *lm);

/* -------------------------------------------------------------- source.c */

/*
 * What produces a VMA's pages (the kernel's vm_file/anon_vma seen as one
 * thing): an ops table plus per-page state. Created by one lazymap_map*() and
 * shared, refcounted, by every VMA that split off it; pages are indexed by
 * pgoff, so a split VMA keeps addressing the same state.
 */
struct source;
struct handler;
struct fill_req;
struct cache;

struct source_ops {
	const char *name; /* for lazymap_dump */
	/*
	 * Producers that run code of their own: write npages pages from pgoff
	 * into buf; 0 or -errno (the pages are poisoned). Called without a
	 * lock. Neither fill nor read: zeros.
	 */
	int (*fill)(struct source *src, void *buf, uint64_t pgoff, size_t npages);
	/*
	 * Producers that are read: where the bytes of the run at pgoff are,
	 * from its byte done on (*fd, *off); the fault path reads them on a
	 * handler's io_uring, without waiting for a lock if *nowait (O_DIRECT:
	 * see fault.c), through the page cache if buffered. 0 or -errno.
	 */
	int (*read)(struct source *src, uint64_t pgoff, size_t done, bool buffered, int *fd,
		    uint64_t *off, bool *nowait);
	/* Producers that a handler reads itself (nbd.c): start the rest of
	 * req's read (from req->done on); its end_io is called when it is
	 * done, on the same handler. 0, or -errno (nothing started). */
	int (*submit)(struct handler *h, struct fill_req *req);
	/* How many of npages from pgoff exist (a file ends); NULL: all. */
	size_t (*extent)(struct source *src, uint64_t pgoff, size_t npages);
	void (*release)(struct source *src);
	/* Its pages live in a page cache (src->cache): their state is the
	 * cache's, and the fault path is filemap.c's. */
	bool cached;
};

/* Per-page state bits (source.state[pgoff]), taken and let go in claim.c. */
#define PAGE_BUSY   0x01 /* a handler is filling this page now: others leave it */
#define PAGE_FILLED 0x02 /* installed once; a fault that names it checks again */
#define PAGE_WAITER 0x04 /* a fault came while BUSY: the owner wakes the page when done */
#define PAGE_SWAPPED 0x08 /* evicted to the swap file (swap.c): the next fault reads it back */
#define PAGE_WRITTEN 0x10 /* a fill region's page the program wrote (a write-protect fault) */
#define PAGE_ZERO    0x20 /* the shared zero page, write-protected, not counted (fault.c) */

#define STATE_HEAP_MAX (64u << 10) /* pages (256 MiB of region) whose state is on the heap */

struct source {
	const struct source_ops *ops;
	atomic_uint refs;
	size_t npages;                /* pages covered by state */
	/*
	 * Whether each page is installed in the one address space whose VMAs
	 * use this source (claim.c): what the bytes are belongs to the
	 * producer below, shared by value with every clone. A source's page
	 * is mapped by at most one VMA of one mm: mremap gives the range it
	 * leaves a clone, a forked child gets clones of all, and a grown tail
	 * gets a source of its own, so that a page's state is never another
	 * address space's.
	 */
	_Atomic uint8_t *state;       /* npages bytes: heap, or MAP_NORESERVE if large */
	bool state_mapped;            /* state is a mapping of its own (npages > STATE_HEAP_MAX) */
	lazymap_fill_fn fill;         /* fill-callback sources */
	void *arg;
	struct cache *cache;          /* file sources: the file and its pages (no state) */
	uint64_t base;                /* producer page of state[0]: file page, or callback page */
	bool direct;                  /* read with O_DIRECT */
	bool maywrite;                /* a shared map may be writable (the fd was) */
	atomic_bool slow;             /* a fill call took over 1 ms: fills go to filler threads */
	/* The swap slot + 1 of each page (swap.c), 0: none; NULL until one is
	 * swapped. With the swap that holds them. */
	_Atomic(_Atomic uint32_t *) slots;
	struct swap *swap;
};

int lzm_source_new_zero(size_t npages, struct source **srcp);
int lzm_source_new_fill(size_t npages, lazymap_fill_fn fill, void *arg, struct source **srcp);
/* A file source: npages of c's file from page file_pgoff on; takes a reference to c.
 * copied: its pages are its own, copied from the cache or read from the file
 * into an anonymous VMA (a writable private map under a budget: lazymap.c). */
int lzm_source_new_file(size_t npages, struct cache *c, uint64_t file_pgoff, bool direct,
			bool copied, struct source **srcp);
static inline bool source_copied(const struct source *src)
{
	return src->cache && !src->ops->cached;
}
/* A file source like src whose pages are copies (a region whose cache cannot
 * take pages: a faultd client's read-only memfd, once faultd has gone). */
int lzm_source_copied_of(const struct source *src, struct source **srcp);
/* A source of npages with src's producer from producer page base on, and
 * a state of its own with nothing installed. */
int lzm_source_clone(const struct source *src, uint64_t base, size_t npages, struct source **srcp);
void lzm_source_get(struct source *src); /* NULL is allowed and ignored */
void lzm_source_put(struct source *src); /* NULL is allowed and ignored */
/* Its pages are read on a handler (a file's ring, an NBD connection). */
static inline bool source_reads(const struct source *src)
{
	return src->ops->read || src->ops->submit;
}
static inline bool source_produces(const struct source *src)
{
	return src->ops->fill || source_reads(src);
}
/* An NBD export's source (nbd.c), like lzm_source_new_file. */
int lzm_source_new_nbd(size_t npages, struct cache *c, uint64_t pgoff, bool copied,
		       struct source **srcp);

/* --------------------------------------------------------------- cache.c */

/*
 * A file and its page cache (the kernel's struct file + address_space): one
 * per file in the process, found by device and inode, refcounted by the
 * sources that map it. Its pages live in a memfd at the file's own offsets,
 * which every region of the file maps; one state byte per file page says
 * what the cache holds (CP_*), in chunks allocated when first needed.
 */
#define CP_BUSY      0x01 /* a handler is reading this page into the cache */
#define CP_CACHED    0x02 /* in the memfd: the kernel maps it without us */
#define CP_WAITER    0x04 /* a fault came while BUSY: wake the waiters when done */
#define CP_DIRTY     0x08 /* written through a shared region since its write-back */
#define CP_WRITEBACK 0x10 /* being written back now */

#define CACHE_MAX_SHIFT 47 /* the cache holds file offsets below 2^47 */
#define CHUNK_SHIFT     16 /* pages of state per chunk */
#define CHUNK_PAGES     ((size_t)1 << CHUNK_SHIFT)

struct cache_chunk {
	struct cache_chunk *next;    /* the cache's list of its chunks */
	size_t index;                /* in the cache's table */
	atomic_uint ncached, ndirty; /* pages CACHED, DIRTY|WRITEBACK: sums skip clean chunks */
	_Atomic uint8_t s[CHUNK_PAGES];
};

struct cache_waiter;

struct cache {
	struct cache *next;          /* the registry (cache.c), under its lock */
	uint64_t id;                 /* never reused: how eviction's queues name it */
	atomic_uint refs;
	dev_t dev;
	ino_t ino;
	int fd;                      /* reads: our dup of the first caller's descriptor */
	int dfd;                     /* O_DIRECT reads, or -1 until a region asks */
	int wfd;                     /* write-back: a writable descriptor, or -1 until one is given */
	int memfd;                   /* the pages */
	/*
	 * A faultd client's cache (remote.c): the memfd is faultd's, read-only
	 * unless the client's descriptor may write (memfd_old: the read-only
	 * one it replaced, kept for maps that may be using it), and faultd
	 * knows it as remote_id. owner: the connection, NULL for our own
	 * caches; a file has one cache per owner.
	 */
	const void *owner;
	uint64_t remote_id;
	bool memfd_ro;
	int memfd_old;
	/*
	 * A userfaultfd of the cache's own, with UFFD_FEATURE_SIGBUS and no
	 * events, for our windows of the memfd (cache.c): pages enter the
	 * cache by UFFDIO_COPY through fill_win (the memfd's first
	 * fill_win_len bytes, or NULL) or a window of their own, and
	 * write-back reads through one; a hole touched through a window
	 * fails instead of becoming a page of zeros. Set at creation.
	 */
	int aux_uffd;
	char *fill_win;
	size_t fill_win_len;
	_Atomic uint64_t size;       /* the file's size as last seen */
	/* An NBD export's cache (nbd.c): no descriptor of a file (fd, dfd and
	 * wfd are -1); reads go through the handlers' connections, write-back
	 * through the export's own. Keyed by its URI. Set at creation. */
	struct nbd_export *nbd;
	/*
	 * lock: the descriptors opened late, the waiters, the sharers, and the
	 * dirty transitions with the write-protection that goes with them (a
	 * page is made writable only with CP_DIRTY set, and write-back protects
	 * it everywhere before it reads it). Taken after an mm's lock, never
	 * before; its holders wait for nothing but the kernel.
	 */
	pthread_mutex_t lock;
	pthread_mutex_t wb_lock;     /* one write-back at a time; taken before lock and before
	                              * any mm's lock (write-back protects there) */
	struct cache_waiter *waiters;
	struct mm **sharers;         /* mms that map it shared (write-back protects there) */
	unsigned nsharers, sharers_cap;
	_Atomic(struct cache_chunk *) *chunks; /* 1 << (CACHE_MAX_SHIFT - 12 - CHUNK_SHIFT) */
	size_t nchunks;
	/* Every chunk of the table, pushed once: walks visit only these, and
	 * they stay reachable from the heap (LeakSanitizer does not scan the
	 * table, a mapping of our own, when a process exits with it open). */
	_Atomic(struct cache_chunk *) chunk_list;
	atomic_ulong ncached, ndirty; /* the sums of the chunks' counts */
	/* A shared region went by the program's own munmap or mremap: its
	 * dirty pages may have no region left to sync them by range. */
	atomic_bool orphans;
	atomic_bool no_nowait;       /* O_DIRECT reads here refuse RWF_NOWAIT (FUSE, tmpfs) */
	bool orphaned;               /* no region, write-back failed: kept (registry lock) */
	bool closing;                /* its last reference is writing it back (registry lock) */
	/* Ranges a REMOVE event named (MADV_REMOVE punches them after the
	 * event is read): looked at again before the next write-back. Lock. */
	struct { uint64_t fp, n; } removed[8];
	unsigned nremoved;
	bool removed_overflow;       /* more than fit: every dirty page is looked at */
};

/* The cache of fd's file (mmap's checks first: -EBADF, -EACCES, -ENODEV),
 * with a reference; write: a shared writable mapping will write back
 * through it (-EACCES unless fd is open for writing and not O_APPEND). */
int lzm_cache_open(int fd, bool direct, bool write, struct cache **cp);
/* c->dfd, the file opened O_DIRECT, made if it is not yet: 0 or -errno (a file
 * system without O_DIRECT: -EINVAL). */
int lzm_cache_direct(struct cache *c);
/* The same for a faultd client: the cache's pages are in memfd (taken, or
 * closed if the file has a cache of owner's already), faultd's remote_id. */
int lzm_cache_open_remote(int fd, bool direct, bool write, int memfd, const void *owner,
			  uint64_t remote_id, struct cache **cp);
/* The cache of the NBD export at uri (nbd.c connects, if it is not open
 * yet, within timeout_ms): -EACCES if write and the export is read-only. */
int lzm_cache_open_nbd(const char *uri, unsigned timeout_ms, bool write, struct cache **cp);
/* A new descriptor of c's memfd for a faultd client to map: a duplicate if
 * write, else a read-only open file description of its own (through /proc).
 * -errno on failure. */
int lzm_cache_memfd(struct cache *c, bool write);
/* faultd went: the pages its memfd holds become the cache's (clean: which
 * ones we wrote, remote.c finds). Returns how many. */
size_t lzm_cache_take_over(struct cache *c);
/* Call fn on every cache of owner's, with a reference held. */
void lzm_cache_each(const void *owner, void (*fn)(struct cache *c, void *arg), void *arg);
void lzm_cache_get(struct cache *c);
/* The last reference writes the dirty pages back (errors are logged) and frees. */
void lzm_cache_put(struct cache *c);
/* The ids of the caches there are, *n of them (free them); NULL: no memory. */
uint64_t *lzm_cache_ids(size_t *n);
/* In a child made by fork(): forget the parent's caches (lazymap.c's atfork). */
void lzm_cache_fork_child(void);
/* Put len bytes of file data at off into the memfd, whole pages; 0 or -errno. */
int lzm_cache_fill(struct cache *c, const char *buf, size_t len, uint64_t off);
/*
 * Copy n cached pages from fp to dst in uffd's address space (UFFDIO_COPY,
 * write-protected if wp), read through a window of ours: a page punched
 * meanwhile fails with -EFAULT, never copies zeros. *done: bytes copied.
 */
int lzm_cache_copy_out(struct cache *c, int uffd, uintptr_t dst, uint64_t fp, size_t n, bool wp,
		       size_t *done);
/* fstat the file again; returns the new size. */
uint64_t lzm_cache_refresh_size(struct cache *c);
/* The state byte of file page fp; NULL if it cannot be had (no memory). */
_Atomic uint8_t *lzm_cache_state(struct cache *c, uint64_t fp);
/* How many of n pages from fp have their state in one chunk. */
static inline size_t cache_run_max(uint64_t fp, size_t n)
{
	size_t room = CHUNK_PAGES - (size_t)(fp & (CHUNK_PAGES - 1));

	return n < room ? n : room;
}
/* Every page a cache may hold: [0, cache_max_pages()). */
static inline uint64_t cache_max_pages(void)
{
	return (uint64_t)1 << (CACHE_MAX_SHIFT - lzm_page_shift);
}
/* Whether file page fp is in the cache. */
bool lzm_cache_has(struct cache *c, uint64_t fp);
/* Let go of n claimed pages from fp: CACHED if they were filled, else holes;
 * wakes the faults that waited for them. */
void lzm_cache_release(struct cache *c, uint64_t fp, size_t n, bool cached);
/* A written page (c->lock held, with the page's write-protection lifted after). */
void lzm_cache_dirty(struct cache *c, uint64_t fp);
/* mm maps c shared: write-back protects pages there too. Until mm goes. */
int lzm_cache_share(struct cache *c, struct mm *mm);
/* mm is going: leave every cache's sharers. */
void lzm_cache_unshare_all(struct mm *mm);
/*
 * Write back the dirty pages of [fp, fp + n): 0, or the first -errno (the
 * pages that failed are dirty again). how: WB_PROTECT write-protects them
 * first wherever regions map them (not needed once none does), WB_DURABLE
 * fdatasyncs. lm: whose counters it adds to (NULL: none). No lock held.
 */
#define WB_DURABLE 1
#define WB_PROTECT 2
/* fdatasync only if this pass wrote pages: lazymap_unmap, which must not
 * drop a page whose write the disk refuses later (the error would reach
 * the next sync alone, and the page be gone) */
#define WB_DURABLE_IF 4
int lzm_cache_writeback(struct cache *c, uint64_t fp, uint64_t n, struct lazymap *lm, int how);
/* The cache with this id, with a reference, or NULL (gone, or going). */
struct cache *lzm_cache_find_id(uint64_t id);
/*
 * Evict what can be of [fp, fp + n) (n <= 64, within one chunk): clean
 * pages are dropped (a hole punched), dirty ones written back first. Returns
 * the pages dropped; *kept gets the pages still cached (bit i: fp + i),
 * written again meanwhile or being filled. No lock held.
 */
size_t lzm_cache_evict(struct cache *c, uint64_t fp, size_t n, struct lazymap *lm, uint64_t *kept);
/* lazymap_close: write back the caches no region maps any more whose last
 * write-back failed; 0 or the first -errno (they are kept for the next). */
int lzm_cache_retry_orphaned(struct lazymap *lm);
/* Pages the memfd no longer has (MADV_REMOVE punched them) become holes, their
 * writes gone with them; returns how many. */
size_t lzm_cache_recheck(struct cache *c, uint64_t fp, uint64_t n);
/* A REMOVE event named [fp, fp + n) of a shared region: recheck it before the
 * next write-back (the punch, if any, comes after the event). */
void lzm_cache_removed(struct cache *c, uint64_t fp, uint64_t n);
/* Pages cached and dirty, over the caches mm's VMAs map. */
void lzm_cache_count(struct mm *mm, uint64_t *cached, uint64_t *dirty);
/* The same over every cache of the process (faultd's status). */
void lzm_cache_count_all(uint64_t *cached, uint64_t *dirty);

/* ----------------------------------------------------------------- vma.c */

/*
 * The VMA tree: an intrusive red-black tree of non-overlapping VMAs keyed by
 * address, augmented like the kernel's old rb_subtree_gap so that a free gap
 * of a given size is found in O(log n). The tree itself takes no lock: its
 * owner (struct mm) serialises writers against readers.
 */
struct vma {
	struct vma *rb_parent, *rb_left, *rb_right;
	bool rb_red;
	uintptr_t subtree_gap;  /* largest (v->start - prev(v)->end) over this subtree */

	uintptr_t start, end;   /* [start, end), page aligned, start < end */
	int prot;               /* PROT_READ|PROT_WRITE subset */
	int flags;              /* LAZYMAP_PRIVATE/SHARED/ANON/DIRECT */
	int advice;             /* LAZYMAP_ADV_NORMAL/SEQUENTIAL/RANDOM */
	uint32_t fill_unit;     /* pages: a fault reads at least the block of them that
	                         * holds it (lazymap_fill_unit); 0 or 1: one page */
	struct source *src;     /* refcounted: each VMA holds one reference */
	uint64_t pgoff;         /* index in src of the page at start (vm_pgoff) */

	/* Sequential-stream detection (a hint, updated racily by handlers). */
	_Atomic uint64_t ra_next;   /* page index the stream is expected to touch next */
	_Atomic uint32_t ra_window; /* pages to fill on the next sequential fault */
	/* Read-around of random faults (readahead.c): misses, and the last faults. */
	_Atomic int32_t ra_miss;
	_Atomic uint32_t ra_cursor;
	_Atomic uint64_t ra_ring[8];
};

struct vma_tree {
	struct vma *root;
	size_t count;
};

void lzm_vma_tree_init(struct vma_tree *t);
struct vma *lzm_vma_alloc(void);           /* zeroed; NULL on ENOMEM */
void lzm_vma_free(struct vma *v);          /* drops v->src's reference */
struct vma *lzm_vma_first(const struct vma_tree *t);
struct vma *lzm_vma_last(const struct vma_tree *t);
struct vma *lzm_vma_next(const struct vma *v);
struct vma *lzm_vma_prev(const struct vma *v);
/* First VMA with end > addr, or NULL (the kernel's find_vma). */
struct vma *lzm_vma_find(const struct vma_tree *t, uintptr_t addr);
/* Same, and *pprev = the VMA before the result (the last VMA if none). */
struct vma *lzm_vma_find_prev(const struct vma_tree *t, uintptr_t addr, struct vma **pprev);
/* The VMA containing addr, or NULL. */
struct vma *lzm_vma_lookup(const struct vma_tree *t, uintptr_t addr);
/* Insert v; -EEXIST if it overlaps a VMA already there, -EINVAL if it is
 * empty or unaligned; the tree is unchanged on failure. */
int lzm_vma_insert(struct vma_tree *t, struct vma *v);
void lzm_vma_erase(struct vma_tree *t, struct vma *v);
/* Split v at addr (start < addr < end, page aligned): v keeps [start, addr),
 * *newp gets [addr, end) with pgoff advanced and its own source reference.
 * -EINVAL bad addr, -ENOMEM. */
int lzm_vma_split(struct vma_tree *t, struct vma *v, uintptr_t addr, struct vma **newp);
/* The same with new from lzm_vma_alloc(), so that it cannot fail: for a tree
 * that follows a change the kernel has already made. */
void lzm_vma_split_with(struct vma_tree *t, struct vma *v, uintptr_t addr, struct vma *new);
/* May a (ending where b starts) and b be one VMA? lzm_vma_merge's rule: adjacent,
 * same prot, flags, advice and source, contiguous pgoff. */
bool lzm_vma_can_merge(const struct vma *a, const struct vma *b);
/* Merge v with its neighbours where lzm_vma_can_merge allows; merged-away VMAs are
 * erased and freed (v itself, if prev absorbs it: use the result). Returns the
 * VMA that now covers v's range; it keeps the lowest VMA's ra_* hint. */
struct vma *lzm_vma_merge(struct vma_tree *t, struct vma *v);
/* Lowest addr >= low (rounded up to a page) with [addr, addr+len) free and
 * addr+len <= high; -ENOMEM if none, -EINVAL for len 0. The space before the
 * first VMA counts from 0, so callers pass low >= one page. */
int lzm_vma_find_gap(const struct vma_tree *t, size_t len, uintptr_t low, uintptr_t high,
		 uintptr_t *addrp);
/* Check every invariant (order, no overlap, red-black rules, black height,
 * parent links, subtree_gap, count); 0 or -EUCLEAN with a message on stderr. */
int lzm_vma_tree_check(const struct vma_tree *t);


/* ---------------------------------------------------------------- uffd.c */

int lzm_uffd_open(int *fdp);
int lzm_uffd_probe(uint64_t *features);
int lzm_uffd_api(int fd, uint64_t features, uint64_t *got);
int lzm_uffd_register(int fd, uintptr_t start, size_t len, uint64_t mode);
int lzm_uffd_unregister(int fd, uintptr_t start, size_t len);
int lzm_uffd_wake(int fd, uintptr_t start, size_t len);
int lzm_uffd_copy(int fd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done);
int lzm_uffd_zeropage(int fd, uintptr_t dst, size_t len, bool dontwake, size_t *done);
int lzm_uffd_move(int fd, uintptr_t dst, uintptr_t src, size_t len, uint64_t mode, size_t *done);
int lzm_uffd_poison(int fd, uintptr_t dst, size_t len, size_t *done);
int lzm_uffd_continue(int fd, uintptr_t dst, size_t len, bool wp, size_t *done);
int lzm_uffd_writeprotect(int fd, uintptr_t start, size_t len, bool wp);
int lzm_uffd_read(int fd, struct uffd_msg *msgs, int max);

/* ------------------------------------------------------------------ mm.c */

/* Messages the fork reader read (events.c), oldest first, until a handler
 * takes them. */
#define MSGRING_SIZE 256
struct msgring {
	unsigned n;
	struct uffd_msg m[MSGRING_SIZE];
};

#define MM_LAT_BUCKETS 40

/*
 * What acts on an address space's mappings themselves (mm.c): the seam
 * between the tree and the kernel. Local: the calls of this process on
 * itself. Remote: a faultd client's (serve.c) or a forked child's mm,
 * whose mappings only that process changes: it has done so before we
 * follow (or tells us by events), so these do nothing, and presence is
 * asked of its pagemap.
 */
struct mm;
struct mm_ops {
	const char *name;
	int (*protect)(uintptr_t start, size_t len, int prot);  /* 0 or -errno */
	int (*unmap)(uintptr_t start, size_t len);              /* 0 or -errno */
	/* give the kernel's VMAs of a range back the chance to merge */
	void (*rejoin)(uintptr_t start, size_t len);
	/* whether the page at addr is in memory (false when it cannot tell) */
	bool (*present)(const struct mm *mm, uintptr_t addr);
	/* a range leaving the tree leaves the userfaultfd: 0 or -errno */
	int (*unregister)(const struct mm *mm, uintptr_t start, size_t len);
};
/* Our own process; a forked child; a faultd client (serve.c). */
extern const struct mm_ops lzm_mm_local, lzm_mm_remote, lzm_mm_client;

/*
 * One served address space (the kernel's mm_struct): its userfaultfd and the
 * VMAs registered with it. A lazymap serves its own process's (lm->mm) and
 * one per forked child it follows (events.c), refcounted: a fault being
 * served, a read in flight or a queued fill keeps a child's mm alive after
 * the child has gone.
 */
struct mm {
	struct lazymap *lm;
	const struct mm_ops *ops;
	atomic_uint refs;        /* children: freed at 0; lm->mm: never */
	uint64_t id;             /* key in the handlers' epoll sets (events.c) */
	bool self;               /* the handlers' own process: mincore() sees its pages */
	_Atomic int pid;         /* 0 until known (a child tells it: events.c) */
	int uffd;
	int pagemap_fd;          /* /proc/PID/pagemap: our own mm, a faultd client's; else -1 */
	/*
	 * A second descriptor of the same userfaultfd, used only once the
	 * lazymap is broken: a program that closes our uffd by mistake must not
	 * release it, since the kernel would then unregister every region and
	 * hand out zeros for pages we never produced. -1 for children.
	 */
	int uffd_keep;
	uint64_t features;       /* negotiated with UFFDIO_API */
	/*
	 * event_lock makes the order in which messages are read the order in
	 * which events are applied (a moving mremap is REMAP then UNMAP): held
	 * from taking a batch (from the ring, else from the userfaultfd) until
	 * its events are applied. Fault messages are served after it is let go.
	 * Taken before lock, never after; API calls wait until what was read
	 * before them is applied (lzm_mm_sync_events).
	 */
	pthread_mutex_t event_lock;
	/*
	 * read_lock: reading the userfaultfd and the ring. Its holders never
	 * block on anything but it (no malloc: see the fork reader, events.c),
	 * so a fork() in progress, which holds glibc's malloc locks until its
	 * FORK event is read, is never kept waiting by a holder that mallocs.
	 */
	pthread_mutex_t read_lock;
	struct msgring *ring;    /* messages the fork reader read; our own mm only */
	atomic_uint ring_count;  /* ring->n, for a look without the lock */
	/*
	 * lock protects tree and every VMA's fields but ra_*. Readers: the fault
	 * path, for the whole of a fill. Writers: map, protect, advise, events.
	 * Nobody holding it makes a call that raises a userfaultfd event (it
	 * would wait for a handler that waits for the lock): lazymap_unmap
	 * drops it before munmap, and close unregisters before it unmaps.
	 */
	pthread_rwlock_t lock;
	struct vma_tree tree;
	atomic_size_t nr_vmas;   /* tree.count, for readers that take no lock */
	/*
	 * Work in progress: fault batches being served, prefetch ranges being
	 * worked on, fill requests alive. lzm_quiesce() waits for it to be 0.
	 */
	atomic_long busy;
	/* children only: the socket whose peer only the child holds (events.c) */
	int watch_fd;
	/* a faultd client's: its socket, where applied events are told (serve.c), or -1 */
	int notify_fd;
	atomic_bool notify_lost; /* an event could not be told: logged once */
	struct mm *next_child;   /* lm->children, under lm->children_lock */
	_Atomic uint64_t faults, events; /* for lazymap_dump */
	/* for faultd's status: bytes read from files for its faults, faults
	 * served from pages already in a cache */
	_Atomic uint64_t bytes_read, cache_hits;
	_Atomic uint64_t io_errors; /* pages poisoned in this mm (a faultd client's stats) */
	/* a faultd client's fault latency, from the message read to the page
	 * in place: how many took [2^i, 2^(i+1)) ns (serve.c) */
	_Atomic uint64_t lat[MM_LAT_BUCKETS];
};

int lzm_mm_open(struct mm *mm, struct lazymap *lm, uint64_t features);
int lzm_mm_init(struct mm *mm, struct lazymap *lm, int uffd, uint64_t features);
/* Write back, then unmap every VMA; the first write-back error, or 0. */
int lzm_mm_unmap_all(struct mm *mm);
/* Write back the dirty pages of the shared file regions in [start, start+len);
 * how: WB_DURABLE or WB_DURABLE_IF (below). No lock held. 0 or the first -errno. */
int lzm_mm_writeback(struct mm *mm, uintptr_t start, size_t len, int how);
void lzm_mm_destroy(struct mm *mm); /* unmaps every VMA, then lzm_mm_fini() */
/* The page of v's source that v maps at addr (its index in the source's state). */
static inline uint64_t vma_page(const struct vma *v, uintptr_t addr)
{
	return v->pgoff + ((addr - v->start) >> lzm_page_shift);
}
/* The file page (producer page) v maps at addr. */
static inline uint64_t vma_file_page(const struct vma *v, uintptr_t addr)
{
	return v->src->base + vma_page(v, addr);
}
/* Whether v is a shared file region whose writes are tracked and written back. */
static inline bool vma_writeback(const struct vma *v)
{
	return (v->flags & LAZYMAP_SHARED) && v->src->maywrite;
}
/* Locks, ring and descriptors of an mm whose tree is empty or not ours to unmap. */
void lzm_mm_fini(struct mm *mm);
/* A new region of src where flags say (LAZYMAP_HINT, LAZYMAP_FIXED: *addrp on
 * input, checked by the caller; else anywhere); its address in *addrp. */
int lzm_mm_map(struct mm *mm, uintptr_t *addrp, size_t len, int prot, int flags, struct source *src);
int lzm_mm_unmap(struct mm *mm, uintptr_t start, size_t len);
/* The same for a range another process (a faultd client) has mapped and
 * registered itself: into the tree only. */
int lzm_mm_adopt(struct mm *mm, uintptr_t addr, size_t len, int prot, int flags,
		 struct source *src);
int lzm_mm_protect(struct mm *mm, uintptr_t start, size_t len, int prot);
/* advice: LAZYMAP_ADV_*, or LZM_ADV_FILL_UNIT | pages (proto.h) */
int lzm_mm_advise(struct mm *mm, uintptr_t start, size_t len, unsigned advice);
/* 0 if [start, start+len) lies wholly in VMAs of mm, else -EINVAL. Lock held. */
int lzm_mm_check_range(struct mm *mm, uintptr_t start, size_t len);
/* The same after the events read so far, and growth, are in the tree. No lock held. */
int lzm_mm_owned(struct mm *mm, uintptr_t start, size_t len);
/* lazymap_dump's lines of mm, and of also (NULL, or the same process's
 * fill regions of a faultd client: one listing, by address). */
int lzm_mm_dump(struct mm *mm, struct mm *also, FILE *out);
/* Leave a write section: publish the VMA count for lock-free readers. */
void lzm_mm_write_unlock(struct mm *mm);

/* -------------------------------------------------------------- events.c */

/* Wait until every event read so far is in the tree. */
void lzm_mm_sync_events(struct mm *mm);
/* Wait until no event is pending (raised, not yet read), then the same. */
void lzm_mm_settle(struct mm *mm);
/* Up to max messages of mm, oldest first: from the ring while it has some,
 * else read from its userfaultfd; 0 if none, or -errno. event_lock held. */
int lzm_mm_read(struct mm *mm, struct uffd_msg *msgs, int max);
/* The fork reader: started at the first fork, stopped at close. */
void lzm_fork_reader_stop(struct lazymap *lm);
/* Apply one non-fault message read from mm's userfaultfd (event_lock held);
 * -EBADMSG for a message no userfaultfd sends. */
int lzm_event_apply(struct handler *h, struct mm *mm, const struct uffd_msg *msg);
/* A fault at addr outside every VMA of mm: if the kernel grew the VMA below
 * it (mremap in place raises no event), add the grown part to the tree and
 * return true; the fault is then served as any other. */
bool lzm_mm_grown(struct handler *h, struct mm *mm, uintptr_t addr, uint32_t tid);
/* The same for every VMA at once, from /proc/PID/maps: for the calls that
 * read the tree (dump, close) or found a range not wholly ours. No lock held. */
void lzm_mm_adopt_growth(struct mm *mm);
void lzm_mm_get(struct mm *mm);
void lzm_mm_put(struct mm *mm);
/* The child mm with this id, with a reference; NULL if it is gone. */
struct mm *lzm_child_find(struct lazymap *lm, uint64_t id);
/* Serve mm (a child's, a faultd client's) from now on. */
void lzm_child_add(struct lazymap *lm, struct mm *mm);
/* Stop serving a child mm (it has gone). */
void lzm_child_release(struct lazymap *lm, struct mm *mm);
/* A child's pid, 0 if it never told it (made without fork()). */
int lzm_child_pid(struct mm *mm);
/* Its watch socket is readable: the child told its pid, or has gone. */
void lzm_child_watch(struct handler *h, struct mm *mm);
/* lazymap_close: let go of every child, poisoning what they can no longer get. */
void lzm_children_close(struct lazymap *lm);
/* Around fork() (lazymap.c's pthread_atfork handlers, registry lock held). */
void lzm_fork_prepare(struct lazymap *lm);
void lzm_fork_parent(struct lazymap *lm);
void lzm_fork_child(struct lazymap *lm);
void lzm_fork_child_done(void);
/* epoll keys of a handler's set: low bits say what, the rest is an mm id */
#define EPOLL_MISC  0u  /* eventfds, the ring, our own userfaultfd */
#define EPOLL_UFFD  1u  /* a child's userfaultfd */
#define EPOLL_WATCH 2u  /* a child's watch socket */

/* ---------------------------------------------------------------- pool.c */

/*
 * A handler's staging pages: pre-faulted, so that a fill never pays the
 * kernel's first-touch fault, and reused (UFFDIO_COPY reads them; UFFDIO_MOVE
 * takes them, and they are faulted back in before reuse). Runs of pages are
 * handed out first-fit from a bitmap: synchronous fills give theirs back at
 * once, reads in flight hold theirs until they complete. Owned by one
 * handler: no lock.
 */
struct pool {
	char *run;        /* run_pages pages for the synchronous fill of the moment */
	char *pages;      /* npages staging pages for reads in flight */
	const char *zero; /* run_pages pages that are never written: the source of zero runs */
	size_t run_pages, npages;
	uint64_t *used;   /* one bit per staging page */
};

int lzm_pool_init(struct pool *pool, size_t run_pages, size_t npages);
void lzm_pool_destroy(struct pool *pool);
/* n contiguous staging pages, or NULL when none are free. */
char *lzm_pool_alloc(struct pool *pool, size_t n);
void lzm_pool_free(struct pool *pool, char *buf, size_t n);
/* After UFFDIO_MOVE took pages of buf: fault them back in. */
void lzm_pool_refill(char *buf, size_t n);

/* ---------------------------------------------------------------- uring.c */

struct uring;
struct io_uring;
/*
 * io_uring_queue_init and _exit, for every ring of ours: liburing maps and
 * unmaps a ring with raw system calls, which ThreadSanitizer does not see,
 * so a ring mapped where a gone one was looked like a race with the gone
 * one's writes; these tell it the unmap came first.
 */
int lzm_ring_init(unsigned entries, struct io_uring *ring);
void lzm_ring_exit(struct io_uring *ring);
int lzm_uring_init(struct handler *h, unsigned entries);
void lzm_uring_exit(struct handler *h);
/* Queue a read of len bytes at off into buf for req; submitted by lzm_uring_flush. */
int lzm_uring_read(struct handler *h, int fd, void *buf, size_t len, uint64_t off, bool nowait,
		   struct fill_req *req);
/* Submit what is queued. */
void lzm_uring_flush(struct handler *h);
/* Complete what has finished (wait for one first if wait); returns how many. */
int lzm_uring_reap(struct handler *h, bool wait);
void lzm_uring_quiet(struct handler *h);
/*
 * Completions that are no read (nbd.c): a one-shot poll of fd for events,
 * a timeout after ts (which must live until it fires). Their completion
 * calls lzm_nbd_event(h, obj, kind, res); they do not count in h->inflight.
 * obj is 8-byte aligned. 0 or -errno.
 */
#define URING_NBD_POLL  1u
#define URING_NBD_TIMER 2u
int lzm_uring_poll(struct handler *h, int fd, unsigned events, void *obj);
/* Cancel obj's poll (its completion still comes, -ECANCELED). */
void lzm_uring_poll_cancel(struct handler *h, void *obj);
struct __kernel_timespec;
int lzm_uring_timeout(struct handler *h, struct __kernel_timespec *ts, void *obj);
int lzm_uring_eventfd(struct handler *h);

/* ------------------------------------------------------------- handler.c */

/* Each counter's place in LAZYMAP_COUNTERS order (faultd's stats reply). */
enum lzm_stat {
#define STAT_INDEX(name, how, what) LZM_STAT_##name,
	LAZYMAP_COUNTERS(STAT_INDEX)
#undef STAT_INDEX
};

/* Per-handler counters (LAZYMAP_COUNTERS): one writer, summed by lazymap_stats. */
struct hstats {
#define HSTAT_FIELD(name, how, what) _Atomic uint64_t name;
	LAZYMAP_COUNTERS(HSTAT_FIELD)
#undef HSTAT_FIELD
};

static inline void stat_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* n pages of mm poisoned: the handler's counter, and the mm's own (faultd
 * tells a client its own). */
#define io_errors_add(h, mm, n)                                                        \
	do {                                                                           \
		stat_add(&(h)->stats.io_errors, (n));                                  \
		atomic_fetch_add_explicit(&(mm)->io_errors, (n), memory_order_relaxed); \
	} while (0)

static inline void stat_max(_Atomic uint64_t *c, uint64_t n)
{
	if (n > atomic_load_explicit(c, memory_order_relaxed))
		atomic_store_explicit(c, n, memory_order_relaxed);
}

struct handler {
	struct lazymap *lm;
	pthread_t thread;
	int epfd;
	int cpu;                 /* pinned to this CPU, or -1 */
	bool started;
	struct pool pool;
	struct uring *ring;      /* this handler's io_uring, for file reads */
	unsigned inflight;       /* reads submitted and not yet completed */
	/*
	 * Reads other handlers claimed for this one to start: a lock-free
	 * stack, pushed by anyone, taken whole (atomic exchange) by the owner,
	 * or by an idle handler while the owner is busy; handoff_efd is
	 * readable whenever it may be non-empty (written by the push that
	 * finds it empty, drained by the owner before it sleeps). Only idle
	 * handlers are given reads: a busy one may be stuck in a slow fill.
	 */
	_Atomic(struct fill_req *) handoff;
	int handoff_efd;
	atomic_bool idle;        /* polling or asleep with nothing in hand; a hint */
	struct hstats stats;
	struct logq logq;        /* this thread's messages, flushed between faults */
	/* timing a faultd client's faults: when the batch was read, and whether
	 * the fault being handled left its page to a request (timed at its end) */
	uint64_t batch_ns;
	bool fault_deferred;
	bool broke;              /* this handler broke the lazymap: it answers faults */
	/* Its connections to NBD servers (nbd.c), one per export it read, and
	 * the reads that ended while it was busy submitting, to be ended on
	 * its next reap. Its own: no lock. */
	struct nbd_conn *nbd;
	struct nbd_cmd *nbd_done;
	bool nbd_stopping;
};

/* A range lazymap_prefetch() handed to the handlers. */
struct prefetch {
	struct prefetch *next;
	struct mm *mm;           /* whose range: holds a reference */
	uintptr_t start, end;
};

/* The handler the calling thread is, or NULL for the program's threads. */
extern _Thread_local struct handler *lzm_current_handler;

int lzm_handlers_start(struct lazymap *lm);
void lzm_handlers_stop(struct lazymap *lm);
/* Queue a prefetch range for the handlers (lazymap_prefetch; the rest of one). */
void lzm_handlers_queue(struct lazymap *lm, struct prefetch *pf);
/* h met an error it cannot go on from: the lazymap is broken (handler.c). */
void lzm_handler_break(struct handler *h, int err, const char *what);
/* Start the i-th window read ahead of a stream h took the fault of: on an
 * idle handler if there is one, else on h. */
void lzm_handlers_start_ahead(struct handler *h, struct fill_req *req, unsigned i);

/* --------------------------------------------------------------- claim.c */

enum claim { CLAIM_OWNED, CLAIM_COALESCED, CLAIM_PRESENT };
/*
 * Claim the page a fault names: OWNED (fill it), COALESCED (another fill
 * has it: it wakes us), PRESENT (filled already: woken).
 */
enum claim lzm_claim_page(struct mm *mm, _Atomic uint8_t *state, uintptr_t addr);
/* Claim up to max never-filled pages from state on; returns how many (0: the
 * first one is filled or busy). */
size_t lzm_claim_fresh(_Atomic uint8_t *state, size_t max);
/* The same from page idx of v's source, whatever holds its state (a run
 * of a cache stops at the end of a chunk). */
size_t lzm_claim_fresh_at(struct vma *v, uint64_t idx, size_t max);
/* Whether page idx of v's source is filled (in the cache, for a file). */
bool lzm_page_filled(const struct vma *v, uint64_t idx);
/* The same for file page fp of a cache, whose state is s: a fault that
 * finds it BUSY waits on the cache's list until the fill lets go. */
enum claim lzm_cache_claim(struct cache *c, _Atomic uint8_t *s, struct mm *mm, uintptr_t addr,
			   uint64_t fp);
/*
 * Let go of n claimed pages from idx: FILLED if they were installed, else
 * back to never-filled so that fault-around and prefetch may take them again.
 * Wakes them if a fault came for one while we held it.
 */
void lzm_release_run(struct mm *mm, struct source *src, uintptr_t addr, uint64_t idx, size_t n,
		     bool installed);

/* -------------------------------------------------------------- fault.c */

/*
 * A run of pages being produced: claimed (PAGE_BUSY) in src, produced into
 * buf (a read, or a fill callback), installed at addr by its end.
 */
struct fill_req {
	struct mm *mm;
	struct source *src;     /* holds a reference while the request lives */
	uintptr_t addr;         /* where the run is mapped (checked again at install) */
	uint64_t idx;           /* src page of the run's first page */
	size_t n;               /* pages */
	size_t done;            /* bytes read so far */
	char *buf;              /* reads: n pool pages of the handler that reads */
	uintptr_t asked;        /* the page a fault named (poisoned if it cannot be had), or 0 */
	uint64_t t0;            /* a faultd client's fault waits: when it was read, else 0 */
	bool write;
	bool move;              /* install with UFFDIO_MOVE */
	bool around;            /* read around a random fault (filemap.c) */
	bool buffered;          /* read through the page cache even if the source is O_DIRECT */
	bool direct;            /* read with O_DIRECT even if the source is not (fault.c) */
	bool nowait;            /* the read in flight was asked not to wait (RWF_NOWAIT) */
	bool swap;              /* a read back from the swap file, of slots from slot on */
	bool wp;                /* install write-protected (the budget tracks writes: swap.c) */
	uint8_t hint;           /* EV_*: where its pages go in the budget's queues */
	uint32_t slot;
	/* An NBD read (nbd.c): its commands not yet answered, the bytes they
	 * asked for, the first error */
	unsigned nbd_parts;
	size_t nbd_bytes;
	int nbd_err;
	/* A read completed with res (bytes or -errno): continue it, or install
	 * and free req. Called on the handler whose ring read it (bio's bi_end_io). */
	void (*end_io)(struct handler *h, struct fill_req *req, int res);
	struct fill_req *next;  /* on a handler's handoff stack, or the fillers' queue */
};

/* Install n claimed zero pages at addr (lock held); 0 when all were. */
int lzm_fill_zero(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr, uint64_t idx,
		  size_t n, bool write, uintptr_t asked, int hint);
/* Make n claimed pages from addr a request (lock held); NULL: nothing to produce. */
struct fill_req *lzm_fault_begin(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
				 uint64_t idx, size_t n, bool write, uintptr_t asked);
/* Start req on h, lock not held: a read on h's ring, or its fill callback,
 * here or on a filler thread. */
void lzm_fault_start(struct handler *h, struct fill_req *req);
/* Run req's fill callback into buf (ra_pages staging pages) and install. */
void lzm_fill_req_run(struct handler *h, struct fill_req *req, char *buf);
/* Let go of a req that never started: its pages go back to never-filled,
 * their touchers are woken and fault again. */
void lzm_fault_abandon(struct fill_req *req);

/* Serve one fault message at addr of mm (flags: UFFD_PAGEFAULT_FLAG_*),
 * raised by thread tid (0: unknown). */
void lzm_fault_handle(struct handler *h, struct mm *mm, uintptr_t addr, unsigned flags,
		      uint32_t tid);
/* Free a request that is done (its pages let go already). */
void lzm_req_free(struct handler *h, struct fill_req *req);

/* ------------------------------------------------------------- filemap.c */

/* Requests one fault may begin: its run and the runs fault-around (or a
 * fill unit's other holes) add. */
#define FAULT_REQS 4

/* A fault message of a file region (v, mm->lock held): returns how many
 * requests it began in reqs (up to FAULT_REQS), and the windows read ahead. */
size_t lzm_filemap_fault(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			 unsigned flags, struct fill_req **reqs, struct fill_req **ahead,
			 size_t *nahead);
/* A read of req into the cache ended: good pages have data; the others are
 * poisoned for the toucher if poison_rest, else holes again. Frees req. */
void lzm_filemap_finish(struct handler *h, struct fill_req *req, size_t good, bool poison_rest);
/* A broken lazymap's answer to a write-protect fault: the write goes in, dirty. */
void lzm_filemap_wp_broken(struct handler *h, struct mm *mm, uintptr_t addr);
/* Fill up to max missing pages from start on (prefetch); returns the address
 * where it stopped (end when done). */
uintptr_t lzm_fault_prefetch(struct handler *h, struct mm *mm, uintptr_t start, uintptr_t end);

/* ----------------------------------------------------------- readahead.c */

/* Windows read ahead of a sequential stream of an asynchronous source: a
 * file's; more of a remote one's, whose reads take longer (nbd.c). */
#define AHEAD_WINDOWS 2
#define AHEAD_WINDOWS_REMOTE 6

/* Pages to fill for a fault at page idx of v (lock held). */
size_t lzm_ra_window(struct lazymap *lm, struct vma *v, uint64_t idx);
/* Claim the rest of the aligned block around a lone fault at addr: zero
 * pages are installed, other runs become requests (at most max). */
size_t lzm_fault_around(struct handler *h, struct mm *mm, struct vma *v, uintptr_t addr,
			bool write, struct fill_req **reqs, size_t max);
/* A random fault at page idx of a file region v: the block to read around
 * it, [*first, *first + return), or 0 when the last read-arounds went unused. */
size_t lzm_read_around(struct handler *h, struct mm *mm, struct vma *v, uint64_t idx,
		       uint64_t *first);
/* Claim and begin up to AHEAD_WINDOWS windows of n pages from page idx on. */
size_t lzm_readahead_ahead(struct handler *h, struct mm *mm, struct vma *v, uint64_t idx,
			   size_t n, struct fill_req **ahead);

/* -------------------------------------------------------------- filler.c */

/*
 * Filler threads: they run the fill callbacks of slow sources, so that a
 * slow producer stalls only the faults that need its pages. Started on
 * demand (none until a source is slow), at most MAX_FILLERS.
 */
#define MAX_FILLERS 4

struct fill_queue {
	struct fill_req *head, *tail;
};

struct fillers {
	pthread_mutex_t lock;        /* protects all below but the insides of f[] */
	pthread_cond_t cond;         /* work queued, or stop */
	struct fill_queue asked;     /* runs a fault waits for: first */
	struct fill_queue ahead;     /* runs nobody waits for yet (prefetch) */
	unsigned started, idle;
	unsigned ahead_running;      /* at most MAX_FILLERS - 1: one is kept for faults */
	bool stop;
	struct handler *f;           /* MAX_FILLERS: stats, staging run, log queue */
};

int lzm_fillers_init(struct lazymap *lm);
/* Queue req for a filler; 0, or -errno (then the caller runs it). */
int lzm_fillers_queue(struct lazymap *lm, struct fill_req *req);
/* Stop and join the fillers; requests still queued are abandoned. */
void lzm_fillers_stop(struct lazymap *lm);

/* ------------------------------------------------------------ lazymap.c */

/*
 * Wait until lm has no work in progress: no fault being served, no read in
 * flight, no prefetch queued. Tests call it to wait for a state instead of
 * a quiet time window. 0, or -ETIMEDOUT after timeout_ms.
 */
int lzm_quiesce(struct lazymap *lm, unsigned timeout_ms);

struct lazymap {
	struct lazymap *next_open;  /* the registry of open handles (lazymap.c) */
	unsigned users;             /* API calls in progress; under the registry lock */
	bool closing;

	struct lazymap_opts opts;   /* with defaults filled in */
	bool log_stderr;            /* no opts.log, and LAZYMAP_LOG asks for stderr */
	/*
	 * 0, or the errno that broke the handlers (lzm_break): API calls then
	 * return -EIO and one handler answers every fault with SIGBUS.
	 */
	atomic_int broken;
	size_t ra_pages;            /* readahead_max in pages: the longest run one fill makes */
	struct mm mm;

	atomic_bool stopping;       /* handlers: leave the loop */
	int stop_efd;               /* eventfd, readable once stopping is set */
	int work_efd;               /* eventfd, written when prefetch work is queued */
	pthread_mutex_t work_lock;  /* protects work */
	struct prefetch *work;
	atomic_uint work_pending;   /* entries on work: read without the lock */

	unsigned nhandlers;
	bool pin;                   /* handler i runs on the i-th CPU of cpus only */
	cpu_set_t cpus;
	struct handler *handlers;
	struct fillers fillers;

	/* Forked children served (events.c): children_lock protects the list. */
	pthread_mutex_t children_lock;
	struct mm *children;
	atomic_uint nchildren;
	_Atomic uint64_t next_mm_id;
	/* This fork's socket: our end until a FORK event takes it; the child's. */
	atomic_int fork_watch;
	int fork_peer;
	/* The thread that reads our userfaultfd while a fork is in progress. */
	pthread_t fork_reader;
	bool fork_reader_started;
	atomic_bool forking;
	int fork_efd;            /* wakes the fork reader */
	atomic_int reserve_fd;   /* given up to read a FORK at the descriptor limit (events.c) */
	struct hstats wstats;    /* write-back's counters: API threads, added atomically */
	struct evictor *ev;      /* the resident budget (evict.c), or NULL: set before the
	                          * handlers start, gone after they stop */
	struct swap *swap;       /* with ev: where written anonymous pages go (swap.c) */
	/* opts.daemon: the connection to faultd (remote.c); handlers start
	 * only if faultd goes, and handlers_up says they have */
	struct remote *remote;
	atomic_bool handlers_up;
	/* with remote: the lazymap serving our fill-callback regions in
	 * process (lazymap.c), opened at the first; NULL until then */
	_Atomic(struct lazymap *) fills;
};

/* --------------------------------------------------------------- evict.c */

/* The evictor of opts.resident_limit, if set (before the handlers start). */
int lzm_evict_start(struct lazymap *lm);
/* After the handlers stopped. */
void lzm_evict_stop(struct lazymap *lm);
/* Where filled pages go in the eviction order: by use (0), first (a region
 * advised LAZYMAP_ADV_SEQUENTIAL: behind the stream), last (prefetched). */
#define EV_FIRST 1
#define EV_LAST  2
/* n pages from fp entered c by one of lm's fills. No lock held. */
void lzm_evict_filled(struct lazymap *lm, struct cache *c, uint64_t fp, size_t n, int hint);
/* A fill is about to be made: wait while lm is at its limit (at most 1 s).
 * No lock held. */
void lzm_evict_wait(struct lazymap *lm);
/* Whether n more pages fit under the budget now (none: always). Readahead
 * ahead of a stream asks: it is what nobody waits for. */
bool lzm_evict_room(struct lazymap *lm, size_t n);
/* Bytes counted resident now, or at the peak. */
uint64_t lzm_evict_resident(struct lazymap *lm, bool peak);
/* n pages of src from idx were installed at addr in lm's own mm. No lock but mm's. */
void lzm_evict_filled_src(struct lazymap *lm, struct source *src, uintptr_t addr, uint64_t idx,
			  size_t n, int hint);
/* Pages [idx, idx + n) of src left lm's own mm (their region was unmapped):
 * they leave the count now, not when eviction would find them gone. mm's
 * lock held. */
void lzm_evict_forget(struct lazymap *lm, struct source *src, uint64_t idx, uint64_t n);
/*
 * The program dropped n pages of src from idx (MADV_DONTNEED, MADV_FREE): the
 * evictor looks at them first, and finds them gone at no cost. They stay
 * counted until then: a fault may have filled one again already, and
 * counted it, before the event is applied. No lock but mm's.
 */
void lzm_evict_dropped(struct lazymap *lm, struct source *src, uint64_t idx, uint64_t n);
/* Wait for the eviction batch in flight, if any: its pages are counted until
 * it ends (lazymap_stats). No lock held. */
void lzm_evict_settle(struct lazymap *lm);
/* fork() is about to copy the address space: no page may be on its way to
 * swap meanwhile (the child's copy would have it nowhere). Until after. */
void lzm_evict_fork_hold(struct lazymap *lm);
void lzm_evict_fork_release(struct lazymap *lm);

/* ---------------------------------------------------------------- swap.c */

struct swap;
/* The swap file in opts.swap_path (or $TMPDIR, /var/tmp): unlinked, ours. */
int lzm_swap_open(struct lazymap *lm, struct swap **swp);
void lzm_swap_put(struct swap *sw);
int lzm_swap_fd(const struct swap *sw);
uint64_t lzm_swap_bytes(const struct swap *sw);
/* Up to want contiguous free slots (at least 1, or 0 when the file is full
 * and cannot grow), the first in *slot, each counted once. */
uint32_t lzm_swap_alloc(struct swap *sw, uint32_t want, uint32_t *slot);
void lzm_swap_free(struct swap *sw, uint32_t slot);
/* A write of len bytes from buf to slot on; res: bytes written or -errno. */
struct swap_io {
	char *buf;
	size_t len;
	uint32_t slot;
	int res;
};
/* Write them all on the swap's own ring (one thread calls this: the evictor). */
int lzm_swap_write(struct swap *sw, struct swap_io *io, size_t n);
/* src's slot table, made now if need be (NULL: no memory). */
_Atomic uint32_t *lzm_swap_table(struct source *src, struct swap *sw);
/* Pages [first, first + n) of src no longer need their slots. */
void lzm_swap_release(struct source *src, uint64_t first, size_t n);
/* Page idx of src no longer needs its slot. */
void lzm_swap_forget(struct source *src, uint64_t idx);
/* src is going: its slots and table. */
void lzm_swap_drop_table(struct source *src);
/* A forked child's clone c shares src's slots. */
int lzm_swap_clone(struct source *c, const struct source *src);
/* v's pages are gone from mm (unmapped): so are their copies in swap, and
 * (mm is lm's own) their places in the budget. */
void lzm_vma_pages_gone(struct mm *mm, struct vma *v);
/* The slot + 1 of page idx of src, 0: none. */
static inline uint32_t source_slot(const struct source *src, uint64_t idx)
{
	_Atomic uint32_t *t = atomic_load_explicit(&((struct source *)src)->slots,
						   memory_order_acquire);

	return t ? atomic_load_explicit(&t[idx], memory_order_relaxed) : 0;
}

/* ----------------------------------------------------------------- nbd.c */

/*
 * NBD exports (libnbd): the export behind a cache (size, limits, the
 * write-back connection), each handler's connections, and the reads on
 * them. Without libnbd every entry point returns -EPROTONOSUPPORT.
 */
struct nbd_export;
struct nbd_conn;
struct nbd_cmd;
/* Connect to uri within timeout_ms and learn the export; -errno as
 * lazymap_map_uri documents. */
int lzm_nbd_open(const char *uri, unsigned timeout_ms, struct nbd_export **xp);
void lzm_nbd_close(struct nbd_export *x);
const char *lzm_nbd_uri(const struct nbd_export *x);
uint64_t lzm_nbd_size(const struct nbd_export *x);
bool lzm_nbd_read_only(const struct nbd_export *x);
/* A handler's read of req (source_ops.submit). */
int lzm_nbd_submit(struct handler *h, struct fill_req *req);
/* A poll or timer completion of the handler's (uring.c). */
void lzm_nbd_event(struct handler *h, void *obj, unsigned kind, int res);
/* End the reads deferred to the next reap (uring.c calls it first). */
void lzm_nbd_run_done(struct handler *h);
/* The handler is leaving its loop: its reads fail, its connections close. */
void lzm_nbd_handler_stop(struct handler *h);
/* After its ring is gone: free what is left. */
void lzm_nbd_handler_free(struct handler *h);
/* Write back: n writes of len bytes from src (a window of the cache's
 * memfd, read with care: a page punched meanwhile is skipped) at off, each
 * err set; then a flush if flush. The first -errno, or 0. */
struct nbd_wio {
	const char *src;
	uint64_t off, len;
	int err;
};
int lzm_nbd_write(struct nbd_export *x, struct nbd_wio *io, size_t n, bool flush,
		  uint64_t *written);

/* -------------------------------------------------------------- remote.c */

/*
 * A lazymap served by faultd. Each call returns -ECONNRESET once faultd has
 * gone (after the take-over: in-process handlers serve then), and the
 * caller does the work itself.
 */
struct remote;
/* Connect to faultd at path and hand it our userfaultfd. */
int lzm_remote_open(struct lazymap *lm, const char *path);
void lzm_remote_close(struct lazymap *lm);
/* lazymap_close: faultd writes back everything we wrote (durably). */
int lzm_remote_bye(struct lazymap *lm);
/* fd's cache: faultd's memfd, shared with its other clients. */
int lzm_remote_cache(struct lazymap *lm, int fd, bool direct, bool write, struct cache **cp);
/* A region mapped and registered here, for faultd to serve. */
int lzm_remote_map(struct lazymap *lm, uintptr_t addr, size_t len, int prot, int flags,
		   const struct source *src);
/* MSG_UNMAP (write back first), SYNC, PROTECT, ADVISE, PREFETCH. */
int lzm_remote_range(struct lazymap *lm, unsigned type, uintptr_t addr, size_t len, unsigned arg);
/* faultd's counters of this client, in LAZYMAP_COUNTERS order (n at most). */
int lzm_remote_stats(struct lazymap *lm, uint64_t *v, size_t n);
bool lzm_remote_served(struct lazymap *lm);
/* While faultd serves us: once it returns, the events of ours that faultd
 * had read when we asked are in our tree. Not from the monitor thread. */
void lzm_remote_settle(struct lazymap *lm);
/* A region of a read-only cache was inserted in mm: if faultd has gone, the
 * take-over may have missed it; make it a copy as the take-over would have. */
void lzm_remote_placed(struct mm *mm, struct source *src);

/* --------------------------------------------------------------- serve.c */

/*
 * faultd's side of a client (daemon/faultd.c): its mm among those the
 * handlers serve, the files it opened, its requests. One session thread per
 * client calls these; the handlers serve its faults meanwhile.
 */
struct client;
struct proto_map;
struct proto_range;
struct proto_client;
struct client_limits {
	unsigned max_regions, max_files;
	uint64_t max_mapped;     /* bytes */
};
/* Serve the process pid's userfaultfd (-EBADF: not one), telling sock of the
 * events applied. The descriptors are the caller's still (copies are kept). */
int lzm_client_new(struct lazymap *lm, int uffd, uint64_t features, int pid, int sock,
		   const struct client_limits *lim, struct client **clp);
/* Stop serving it: its dirty shared pages are written back if asked. Frees. */
void lzm_client_free(struct client *cl, bool writeback);
struct mm *lzm_client_mm(struct client *cl);
/* The cache of fd's file, and a descriptor of its memfd for the client
 * (read-only unless flags has OPEN_WRITE and fd may write). */
int lzm_client_open(struct client *cl, int fd, unsigned flags, uint64_t *id, uint64_t *size,
		    int *memfd);
int lzm_client_map(struct client *cl, const struct proto_map *m);
/* UNMAP, SYNC, PROTECT, ADVISE, PREFETCH on a range the client owns. */
int lzm_client_range(struct client *cl, unsigned type, const struct proto_range *r);
void lzm_client_status(struct client *cl, struct proto_client *out);
/* A fault of a client's served in ns (handler.c, fault.c). */
void lzm_client_lat(struct mm *mm, uint64_t ns);
/* Tell a client of an event applied to its tree (events.c). */
void lzm_serve_notify(struct mm *mm, const struct uffd_msg *m);

#pragma GCC visibility pop

#endif /* LAZYMAP_INTERNAL_H */
