// SPDX-License-Identifier: MIT
/*
 * faultd's side of a client (daemon/faultd.c calls these, one session thread
 * per client): the client's mm among those the lazymap's handlers serve, the
 * files it opened (their caches, shared with every other client of the same
 * file), its requests, and its end.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "proto.h"

struct client_file {
	struct cache *c;
	bool write;               /* opened with a descriptor that may write */
};

struct client {
	struct lazymap *lm;
	struct mm *mm;            /* holds a reference */
	struct client_limits lim;
	struct client_file *files;
	unsigned nfiles, files_cap;
	unsigned limits_logged;   /* LIMIT_* bits: each limit is logged once per client */
};

enum { LIMIT_FILES = 1, LIMIT_REGIONS = 2, LIMIT_MAPPED = 4 };

/* A request refused at one of the client's limits: err, and one log line
 * the first time (the client sees the error; the operator, why). */
static int limit_hit(struct client *cl, unsigned which, const char *what, int err)
{
	if (!(cl->limits_logged & which)) {
		cl->limits_logged |= which;
		lzm_log(cl->lm, LOG_NOTICE, "client %d: at its limit of %s ([limits] in the "
			"config): its requests past it fail with %s", atomic_load(&cl->mm->pid), what,
			strerror(-err));
	}
	return err;
}

/* Whether fd is a userfaultfd: its anonymous inode says so. */
static bool is_uffd(int fd)
{
	char path[64], name[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, name, sizeof(name) - 1);
	if (n < 0)
		return false;
	name[n] = '\0';
	return strcmp(name, "anon_inode:[userfaultfd]") == 0;
}

int lzm_client_new(struct lazymap *lm, int uffd, uint64_t features, int pid, int sock,
		   const struct client_limits *lim, struct client **clp)
{
	struct client *cl;
	struct mm *mm;
	char path[64];

	if (!is_uffd(uffd))
		return -EBADF;
	cl = calloc(1, sizeof(*cl));
	mm = calloc(1, sizeof(*mm));
	if (!cl || !mm) {
		free(cl);
		free(mm);
		return -ENOMEM;
	}
	cl->lm = lm;
	cl->lim = *lim;
	cl->mm = mm;
	/* The mm owns copies: the session's may be closed while a fill still
	 * holds the mm (it is freed with the last reference). */
	lzm_mm_init(mm, lm, fcntl(uffd, F_DUPFD_CLOEXEC, 3), features);
	mm->ops = &lzm_mm_client;
	mm->notify_fd = fcntl(sock, F_DUPFD_CLOEXEC, 3);
	if (mm->uffd < 0 || mm->notify_fd < 0) {
		int err = errno;

		if (mm->notify_fd >= 0)
			close(mm->notify_fd);
		if (mm->uffd >= 0)
			lzm_mm_fini(mm);
		free(mm);
		free(cl);
		return -err;
	}
	mm->id = atomic_fetch_add(&lm->next_mm_id, 1);
	atomic_store(&mm->pid, pid);
	/* read-around's evidence, and the presence of a page (mm.c) */
	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	mm->pagemap_fd = open(path, O_RDONLY | O_CLOEXEC);
	lzm_mm_get(mm); /* ours; the served list holds the first */
	lzm_child_add(lm, mm);
	*clp = cl;
	return 0;
}

void lzm_client_free(struct client *cl, bool writeback)
{
	struct mm *mm = cl->mm;

	lzm_child_release(cl->lm, mm);
	/*
	 * What it wrote to shared regions goes to the files now: the pages
	 * stay in the caches (other clients may map them), but its writes do
	 * not wait for a sync that will never come. They are protected again
	 * in it first, while it still shares the caches: one still alive
	 * (faultd stopping) takes its faults back once told, and counts as its
	 * own dirty pages those it can write without a fault; a sync of its
	 * would write them over what others wrote since. (A gone one's pages
	 * cannot be protected, and need not be.)
	 */
	for (unsigned i = 0; i < cl->nfiles; i++) {
		struct client_file *f = &cl->files[i];

		if (writeback && f->write) {
			int ret = lzm_cache_writeback(f->c, 0, cache_max_pages(), cl->lm,
						      WB_PROTECT | WB_DURABLE);

			if (ret)
				lzm_log(cl->lm, LOG_ERR, "client %d: write-back failed (%s): "
					"its pages stay dirty in the cache",
					atomic_load(&mm->pid), strerror(-ret));
		}
	}
	lzm_cache_unshare_all(mm);
	for (unsigned i = 0; i < cl->nfiles; i++)
		lzm_cache_put(cl->files[i].c);
	free(cl->files);
	lzm_mm_put(mm);
	free(cl);
}

struct mm *lzm_client_mm(struct client *cl)
{
	return cl->mm;
}

/*
 * A file the client may page: its cache (one per file for every client),
 * and a descriptor of the cache's memfd for the client to map. A client
 * whose descriptor cannot write gets a read-only one: it may map the
 * cache, never change what others read.
 */
int lzm_client_open(struct client *cl, int fd, unsigned flags, uint64_t *id, uint64_t *size,
		    int *memfd)
{
	bool write = flags & OPEN_WRITE;
	struct cache *c;
	int ret, mfd;

	if (cl->nfiles == cl->files_cap) {
		unsigned cap = cl->files_cap ? 2 * cl->files_cap : 8;
		struct client_file *more = realloc(cl->files, cap * sizeof(*more));

		if (!more)
			return -ENOMEM;
		cl->files = more;
		cl->files_cap = cap;
	}
	ret = lzm_cache_open(fd, flags & OPEN_DIRECT, write, &c);
	if (ret)
		return ret;
	/* a file opened before is one slot still (a descriptor that may write
	 * makes it writable from now on) */
	struct client_file *f = NULL;

	for (unsigned i = 0; i < cl->nfiles && !f; i++)
		if (cl->files[i].c == c)
			f = &cl->files[i];
	if (f) {
		lzm_cache_put(c); /* the slot holds one reference */
		write = f->write = f->write || write;
	} else if (cl->nfiles >= cl->lim.max_files) {
		lzm_cache_put(c);
		return limit_hit(cl, LIMIT_FILES, "files (descriptors)", -EMFILE);
	}
	mfd = lzm_cache_memfd(c, write);
	if (mfd < 0) {
		if (!f)
			lzm_cache_put(c);
		return mfd;
	}
	if (!f)
		cl->files[cl->nfiles++] = (struct client_file){ c, write };
	*id = c->id;
	*size = lzm_cache_refresh_size(c);
	*memfd = mfd;
	return 0;
}

/* Bytes the client's tree maps now. Lock held. */
static uint64_t mapped_bytes(const struct mm *mm)
{
	uint64_t n = 0;

	for (const struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v))
		n += v->end - v->start;
	return n;
}

int lzm_client_map(struct client *cl, const struct proto_map *m)
{
	struct client_file *f = NULL;
	struct mm *mm = cl->mm;
	struct source *src;
	bool regions, mapped;
	int ret;

	if (!(m->flags & LAZYMAP_ANON)) {
		for (unsigned i = 0; i < cl->nfiles && !f; i++)
			if (cl->files[i].c->id == m->cache_id)
				f = &cl->files[i];
		if (!f)
			return -EBADF; /* not a file this client opened */
		if ((m->flags & LAZYMAP_SHARED) && (m->prot & PROT_WRITE) && !f->write)
			return -EACCES;
	}
	pthread_rwlock_rdlock(&mm->lock);
	regions = mm->tree.count >= cl->lim.max_regions;
	mapped = mapped_bytes(mm) + m->len > cl->lim.max_mapped;
	pthread_rwlock_unlock(&mm->lock);
	/* -ENOMEM, as mmap past the map count or an rlimit */
	if (regions)
		return limit_hit(cl, LIMIT_REGIONS, "regions", -ENOMEM);
	if (mapped)
		return limit_hit(cl, LIMIT_MAPPED, "mapped bytes", -ENOMEM);
	if (f) {
		ret = lzm_source_new_file(m->len >> lzm_page_shift, f->c, m->pgoff,
					  m->flags & LAZYMAP_DIRECT, false, &src);
		if (ret == 0)
			src->maywrite = (m->flags & LAZYMAP_SHARED) && f->write;
	} else {
		ret = lzm_source_new_zero(m->len >> lzm_page_shift, &src);
	}
	if (ret)
		return ret;
	ret = lzm_mm_adopt(mm, m->addr, m->len, (int)m->prot, (int)m->flags, src);
	lzm_source_put(src);
	return ret;
}

/* Fill the missing pages of a range in the background (lazymap_prefetch). */
static int queue_prefetch(struct client *cl, const struct proto_range *r)
{
	struct prefetch *pf = malloc(sizeof(*pf));

	if (!pf)
		return -ENOMEM;
	lzm_mm_get(cl->mm);
	*pf = (struct prefetch){ .mm = cl->mm, .start = r->addr, .end = r->addr + r->len };
	lzm_handlers_queue(cl->lm, pf);
	return 0;
}

/* A change of part of a region may split it in three: within the limit, or
 * -ENOMEM as mprotect at the kernel's map count. */
static int room_to_split(struct client *cl)
{
	size_t n;

	pthread_rwlock_rdlock(&cl->mm->lock);
	n = cl->mm->tree.count;
	pthread_rwlock_unlock(&cl->mm->lock);
	return n + 2 > cl->lim.max_regions ? limit_hit(cl, LIMIT_REGIONS, "regions", -ENOMEM) : 0;
}

int lzm_client_range(struct client *cl, unsigned type, const struct proto_range *r)
{
	struct mm *mm = cl->mm;
	int ret = lzm_mm_owned(mm, r->addr, r->len);

	if (ret)
		return ret;
	switch (type) {
	case MSG_UNMAP:
		/* its writes go to the file and the range leaves the tree; the
		 * client then makes it inaccessible, unregisters it and unmaps
		 * it (unregistered: no event) */
		return lzm_mm_unmap(mm, r->addr, r->len);
	case MSG_SYNC:
		return lzm_mm_writeback(mm, r->addr, r->len, WB_DURABLE);
	case MSG_PROTECT:
		return room_to_split(cl) ?: lzm_mm_protect(mm, r->addr, r->len, (int)r->arg);
	case MSG_ADVISE:
		if (r->arg == LAZYMAP_ADV_WILLNEED)
			return queue_prefetch(cl, r);
		return room_to_split(cl) ?: lzm_mm_advise(mm, r->addr, r->len, r->arg);
	case MSG_PREFETCH:
		return queue_prefetch(cl, r);
	}
	return -EINVAL;
}

void lzm_client_lat(struct mm *mm, uint64_t ns)
{
	unsigned b = ns ? 63 - (unsigned)__builtin_clzll(ns) : 0;

	atomic_fetch_add_explicit(&mm->lat[b < MM_LAT_BUCKETS ? b : MM_LAT_BUCKETS - 1], 1,
				  memory_order_relaxed);
}

/* The latency below which a share q of the faults fell, to a factor of 2
 * (the middle of its bucket), or 0 with none. */
static uint64_t lat_quantile(const struct mm *mm, double q)
{
	uint64_t n = 0, seen = 0, c[MM_LAT_BUCKETS];

	for (unsigned b = 0; b < MM_LAT_BUCKETS; b++)
		n += c[b] = atomic_load_explicit(&mm->lat[b], memory_order_relaxed);
	for (unsigned b = 0; b < MM_LAT_BUCKETS && n; b++) {
		seen += c[b];
		if (seen >= q * n)
			return (3ull << b) / 2;
	}
	return 0;
}

void lzm_client_status(struct client *cl, struct proto_client *out)
{
	struct mm *mm = cl->mm;

	memset(out, 0, sizeof(*out));
	out->pid = atomic_load(&mm->pid);
	pthread_rwlock_rdlock(&mm->lock);
	out->regions = (uint32_t)mm->tree.count;
	out->mapped = mapped_bytes(mm);
	pthread_rwlock_unlock(&mm->lock);
	out->faults = atomic_load_explicit(&mm->faults, memory_order_relaxed);
	out->cache_hits = atomic_load_explicit(&mm->cache_hits, memory_order_relaxed);
	out->bytes_read = atomic_load_explicit(&mm->bytes_read, memory_order_relaxed);
	out->lat_p50_ns = lat_quantile(mm, 0.50);
	out->lat_p99_ns = lat_quantile(mm, 0.99);
}

void lzm_serve_notify(struct mm *mm, const struct uffd_msg *m)
{
	int ret = lzm_proto_send(mm->notify_fd, MSG_EVENT, 0, m, sizeof(*m), -1, true);

	/*
	 * A client that does not read its socket cannot hold up a handler: its
	 * copy of the tree misses this change, which it learns of when it
	 * takes over (it then checks its tree against the kernel's).
	 */
	if (ret && ret != -EPIPE && !atomic_exchange(&mm->notify_lost, true))
		lzm_log(mm->lm, LOG_WARNING, "client %d does not read its socket (%s): "
			"an event was not told", atomic_load(&mm->pid), strerror(-ret));
}
