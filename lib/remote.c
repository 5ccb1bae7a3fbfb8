// SPDX-License-Identifier: MIT
/*
 * A lazymap served by faultd (opts.daemon): the connection, the requests the
 * API makes over it, the copy of the tree kept true by the events faultd
 * tells, and the take-over when faultd goes: in-process handlers then serve
 * the same userfaultfd, tree and cache memfds, and no fault is lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


#include "internal.h"
#include "proto.h"

enum remote_state { SERVED, TAKING_OVER, IN_PROCESS };

/* Seconds faultd may take to answer hello. */
#define HELLO_TIMEOUT_S 10

struct remote {
	struct lazymap *lm;
	int sock;
	pthread_t monitor;
	bool monitor_started;
	/*
	 * req_lock: one request at a time, from send to reply. lock protects
	 * the state, the reply slot and closing; cond signals a reply, and
	 * the end of a take-over.
	 */
	pthread_mutex_t req_lock;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint32_t seq;             /* of the request waiting for its reply */
	bool have_reply;
	struct proto_msg reply;
	enum remote_state state;
	bool closing;             /* lazymap_close: the end of the socket is ours */
	bool served_once;         /* hello was answered: faultd serves our faults */
	int refused;              /* the error faultd hung up with, or 0 */
	struct handler mon;       /* the monitor thread, as the events code sees it */
};

static bool take_over(struct remote *r);

/* Messages from faultd until it goes: replies for the request waiting,
 * events for the tree. Then the take-over, unless we are closing. */
static void *monitor_main(void *arg)
{
	struct remote *r = arg;
	struct lazymap *lm = r->lm;
	struct proto_msg m;
	int ret;

	lzm_current_handler = &r->mon;
	lzm_logq = &r->mon.logq;
	for (;;) {
		ret = lzm_proto_recv(r->sock, &m, false);
		if (ret == -EINTR)
			continue;
		if (ret == -EMFILE) {
			/* a reply whose descriptor our full table could not
			 * take: the request fails with that, faultd serves on */
			m = (struct proto_msg){ .hdr = { .type = MSG_REPLY, .seq = m.hdr.seq },
						.u.reply.err = -EMFILE, .fd = -1 };
		} else if (ret) {
			break;
		}
		if (m.hdr.type == MSG_EVENT) {
			struct uffd_msg ev;

			memcpy(&ev, m.u.event.msg, sizeof(ev));
			pthread_mutex_lock(&lm->mm.event_lock);
			ret = lzm_event_apply(&r->mon, &lm->mm, &ev);
			pthread_mutex_unlock(&lm->mm.event_lock);
			if (ret)
				break; /* not an event: faultd is not well */
			continue;
		}
		if (m.hdr.type == MSG_ERROR) {
			/* it says why it hangs up: the request waiting gets that */
			lzm_log(lm, LOG_ERR, "faultd: %s (%s)", m.u.error_text,
				strerror(-m.u.error.err));
			pthread_mutex_lock(&r->lock);
			r->refused = m.u.error.err;
			pthread_mutex_unlock(&r->lock);
			ret = m.u.error.err;
			break;
		}
		pthread_mutex_lock(&r->lock);
		if (m.hdr.type == MSG_HELLO_REPLY)
			r->served_once = true; /* from now on, faultd's going is a take-over */
		if (m.hdr.seq == r->seq && !r->have_reply) {
			r->reply = m;
			r->have_reply = true;
			pthread_cond_broadcast(&r->cond);
			m.fd = -1;
		}
		pthread_mutex_unlock(&r->lock);
		if (m.fd >= 0)
			close(m.fd); /* a reply nobody waits for */
		lzm_log_flush(lm);
	}
	pthread_mutex_lock(&r->lock);
	/* refused at hello: lazymap_open fails, there is nothing to take over */
	bool closing = r->closing || !r->served_once;

	r->state = closing ? IN_PROCESS : TAKING_OVER;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (!closing) {
		lzm_log(lm, LOG_WARNING, "faultd went away (%s): serving in process",
			strerror(ret < 0 ? -ret : ECONNRESET));
		take_over(r);
		pthread_mutex_lock(&r->lock);
		r->state = IN_PROCESS;
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
	}
	lzm_log_flush(lm);
	return NULL;
}

/*
 * Send one request and wait for its reply (of type want). -ECONNRESET when
 * faultd is gone or goes meanwhile: it returns once the take-over is done,
 * and the caller does the work in process. The reply's descriptor, if any,
 * is the caller's.
 */
static int call(struct remote *r, unsigned type, const void *body, size_t size, int fd,
		unsigned want, struct proto_msg *out)
{
	/* hello is answered at once, or faultd is not well (stopped, or not
	 * faultd): lazymap_open says so instead of waiting for ever */
	struct timespec deadline;
	int ret;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += HELLO_TIMEOUT_S;

	pthread_mutex_lock(&r->req_lock);
	pthread_mutex_lock(&r->lock);
	r->seq = r->seq + 1 ? r->seq + 1 : 1;
	r->have_reply = false;
	ret = r->state == SERVED ? 0 : -ECONNRESET;
	pthread_mutex_unlock(&r->lock);
	if (ret == 0)
		ret = lzm_proto_send(r->sock, type, r->seq, body, size, fd, false);
	pthread_mutex_lock(&r->lock);
	while (ret == 0 && !r->have_reply && r->state == SERVED)
		if (type == MSG_HELLO ? pthread_cond_timedwait(&r->cond, &r->lock, &deadline)
				      : pthread_cond_wait(&r->cond, &r->lock))
			ret = -ETIMEDOUT;
	if (ret == -ETIMEDOUT) {
		pthread_mutex_unlock(&r->lock);
		pthread_mutex_unlock(&r->req_lock);
		return ret;
	}
	if (ret == 0 && r->have_reply) {
		*out = r->reply;
		r->have_reply = false;
	} else if (ret == 0 || ret == -EPIPE || ret == -ECONNRESET) {
		/*
		 * Gone: wait until the handlers here serve, then say so (or why
		 * faultd would not serve us, if it never did). A send can learn
		 * it before the monitor does: the work done in process must not
		 * start before the take-over has marked our dirty pages.
		 */
		while (r->state != IN_PROCESS)
			pthread_cond_wait(&r->cond, &r->lock);
		ret = !r->served_once && r->refused ? r->refused : -ECONNRESET;
	}
	pthread_mutex_unlock(&r->lock);
	pthread_mutex_unlock(&r->req_lock);
	if (ret)
		return ret;
	if (out->hdr.type == MSG_REPLY && out->u.reply.err) {
		if (out->fd >= 0)
			close(out->fd);
		return out->u.reply.err;
	}
	if (out->hdr.type != want) {
		if (out->fd >= 0)
			close(out->fd);
		return -EPROTO;
	}
	return 0;
}

int lzm_remote_open(struct lazymap *lm, const char *path)
{
	struct remote *r = calloc(1, sizeof(*r));
	struct proto_hello hello = { .features = lm->mm.features };
	struct proto_msg m;
	int ret;

	if (!r)
		return -ENOMEM;
	r->lm = lm;
	r->mon.lm = lm;
	r->mon.epfd = -1;
	r->state = SERVED;
	pthread_mutex_init(&r->req_lock, NULL);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	ret = lzm_proto_connect(path, &r->sock);
	if (ret) {
		free(r);
		return ret;
	}
	lm->remote = r;

	sigset_t all, old;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&r->monitor, NULL, monitor_main, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		return ret; /* lzm_remote_close frees */
	r->monitor_started = true;
	pthread_setname_np(r->monitor, "lazymap-faultd");
	ret = call(r, MSG_HELLO, &hello, sizeof(hello), lm->mm.uffd, MSG_HELLO_REPLY, &m);
	/* refused (credentials, limits): faultd said why, and closed */
	return ret == -ECONNRESET ? -ECONNREFUSED : ret;
}

void lzm_remote_close(struct lazymap *lm)
{
	struct remote *r = lm->remote;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->closing = true;
	pthread_mutex_unlock(&r->lock);
	shutdown(r->sock, SHUT_RDWR);
	if (r->monitor_started)
		pthread_join(r->monitor, NULL);
	close(r->sock);
	pthread_mutex_destroy(&r->req_lock);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	lm->remote = NULL;
	free(r);
}

int lzm_remote_bye(struct lazymap *lm)
{
	struct proto_msg m;
	int ret = lm->remote ? call(lm->remote, MSG_BYE, NULL, 0, -1, MSG_REPLY, &m) : 0;

	return ret == -ECONNRESET ? 0 : ret;
}

int lzm_remote_cache(struct lazymap *lm, int fd, bool direct, bool write, struct cache **cp)
{
	struct proto_open o = { .flags = (direct ? OPEN_DIRECT : 0) | (write ? OPEN_WRITE : 0) };
	struct proto_msg m;
	int ret = call(lm->remote, MSG_OPEN, &o, sizeof(o), fd, MSG_OPEN_REPLY, &m);

	if (ret == -ECONNRESET) { /* ours now: the cache of this file faultd had, or a new one */
		ret = lzm_cache_open_remote(fd, direct, write, -1, lm->remote, 0, cp);
		/*
		 * Given to us read-only, it takes no page from us: a region that
		 * may write shares no page with the regions made of it (they read
		 * the file: copy_read_only) and gets a cache of our own.
		 */
		if (ret == 0 && write && (*cp)->memfd_ro) {
			lzm_cache_put(*cp);
			ret = lzm_cache_open(fd, direct, write, cp);
		}
		return ret;
	}
	if (ret)
		return ret;
	return lzm_cache_open_remote(fd, direct, write, m.fd, lm->remote, m.u.open_reply.cache_id, cp);
}

int lzm_remote_map(struct lazymap *lm, uintptr_t addr, size_t len, int prot, int flags,
		   const struct source *src)
{
	struct proto_map map = {
		.addr = addr,
		.len = len,
		.cache_id = src->cache ? src->cache->remote_id : 0,
		.pgoff = src->cache ? src->base : 0,
		.prot = (uint32_t)prot,
		.flags = (uint32_t)(flags & (LAZYMAP_PRIVATE | LAZYMAP_SHARED | LAZYMAP_ANON |
					     LAZYMAP_DIRECT)),
	};
	struct proto_msg m;
	int ret;

	/* a cache made after faultd went has no id: nothing to tell */
	if (src->cache && !map.cache_id)
		return 0;
	ret = call(lm->remote, MSG_MAP, &map, sizeof(map), -1, MSG_REPLY, &m);
	return ret == -ECONNRESET ? 0 : ret;
}

int lzm_remote_range(struct lazymap *lm, unsigned type, uintptr_t addr, size_t len, unsigned arg)
{
	struct proto_range rg = { .addr = addr, .len = len, .arg = arg };
	struct proto_msg m;

	return call(lm->remote, type, &rg, sizeof(rg), -1, MSG_REPLY, &m);
}

int lzm_remote_stats(struct lazymap *lm, uint64_t *v, size_t n)
{
	struct proto_msg m;
	int ret = call(lm->remote, MSG_STATS, NULL, 0, -1, MSG_STATS_REPLY, &m);

	if (ret)
		return ret;
	for (size_t i = 0; i < n && i < m.u.stats.n; i++)
		v[i] = m.u.stats.v[i];
	return 0;
}

void lzm_remote_settle(struct lazymap *lm)
{
	/* faultd answers a stats request once it has applied (and told us
	 * of) every event it read; the monitor applies them before the reply */
	if (lzm_current_handler != &lm->remote->mon && lzm_remote_served(lm))
		(void)lzm_remote_stats(lm, NULL, 0);
}

bool lzm_remote_served(struct lazymap *lm)
{
	struct remote *r = lm->remote;
	bool served;

	if (!r)
		return false;
	pthread_mutex_lock(&r->lock);
	served = r->state == SERVED;
	pthread_mutex_unlock(&r->lock);
	return served;
}

static void cache_take_over(struct cache *c, void *arg)
{
	size_t *n = arg;

	/* a read-only one takes no page from us: its regions read the file */
	if (!c->memfd_ro)
		*n += lzm_cache_take_over(c);
}

/*
 * Which cached pages we wrote and faultd did not write back: faultd makes a
 * page of a shared region writable only once it is dirty, and protects it
 * again before it writes it back, so our pages mapped without write
 * protection are exactly the dirty ones (/proc/self/pagemap's uffd-wp bit).
 * Other processes' writes are theirs to write back: a sync of ours never
 * writes a page we did not write (it could undo theirs).
 */
#define PM_PRESENT (1ull << 63)
#define PM_UFFD_WP (1ull << 57)

static size_t find_dirty(struct mm *mm)
{
	uint64_t pm[512];
	size_t n = 0;

	if (mm->pagemap_fd < 0)
		return 0;
	pthread_rwlock_rdlock(&mm->lock);
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v)) {
		struct cache *c = v->src->cache;

		if (!vma_writeback(v))
			continue;
		for (uintptr_t a = v->start; a < v->end;) {
			size_t k = (v->end - a) >> lzm_page_shift;
			ssize_t got;

			k = k < 512 ? k : 512;
			got = pread(mm->pagemap_fd, pm, k * sizeof(pm[0]),
				    (off_t)((a >> lzm_page_shift) * sizeof(pm[0])));
			if (got <= 0)
				break;
			k = (size_t)got / sizeof(pm[0]);
			for (size_t i = 0; i < k; i++) {
				if (!(pm[i] & PM_PRESENT) || (pm[i] & PM_UFFD_WP))
					continue;
				pthread_mutex_lock(&c->lock);
				lzm_cache_dirty(c, vma_file_page(v, a + (i << lzm_page_shift)));
				pthread_mutex_unlock(&c->lock);
				n++;
			}
			a += k << lzm_page_shift;
		}
	}
	pthread_rwlock_unlock(&mm->lock);
	return n;
}

/*
 * A cache whose memfd we were given read-only (our descriptor of the file
 * could not write) takes no page from us: its regions' missing pages become
 * copies, read from the file into the region itself (a private map of the
 * memfd takes them as anonymous pages).
 */
static void copy_read_only(struct mm *mm)
{
	struct source *old = NULL, *copy = NULL;

	pthread_rwlock_wrlock(&mm->lock);
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v)) {
		if (!v->src->ops->cached || !v->src->cache->memfd_ro)
			continue;
		if (v->src != old) {
			lzm_source_put(copy);
			copy = NULL;
			if (lzm_source_copied_of(v->src, &copy))
				break; /* no memory: its holes are SIGBUS */
			old = v->src;
		}
		lzm_source_get(copy);
		lzm_source_put(v->src);
		v->src = copy;
	}
	lzm_mm_write_unlock(mm);
	lzm_source_put(copy);
}

void lzm_remote_placed(struct mm *mm, struct source *src)
{
	/*
	 * The take-over flips the state before it walks the tree: a region
	 * inserted before we read SERVED here is in its walk; one inserted
	 * after it started is seen here. A second walk changes nothing else.
	 */
	if (src->ops->cached && src->cache->memfd_ro && !lzm_remote_served(mm->lm))
		copy_read_only(mm);
}

/*
 * faultd went. Its faults are ours now: the pages its caches hold become
 * our caches' (dirty where they may have been written: the next sync
 * writes them all), the handlers start on our userfaultfd, where the
 * faults faultd never read are waiting, and every range is woken, so that
 * the threads whose faults faultd read and never answered fault again.
 */
static bool take_over(struct remote *r)
{
	struct lazymap *lm = r->lm;
	struct mm *mm = &lm->mm;
	size_t pages = 0;
	int ret;

	lzm_cache_each(r, cache_take_over, &pages);
	size_t dirty = find_dirty(mm);

	copy_read_only(mm);
	ret = lzm_handlers_start(lm);
	if (ret) {
		lzm_log(lm, LOG_ERR, "cannot start handler threads (%s): faults get SIGBUS",
			strerror(-ret));
		atomic_store(&lm->broken, -ret);
		return false;
	}
	atomic_store_explicit(&lm->handlers_up, true, memory_order_release);
	pthread_rwlock_rdlock(&mm->lock);
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v))
		lzm_uffd_wake(mm->uffd, v->start, v->end - v->start);
	pthread_rwlock_unlock(&mm->lock);
	lzm_log(lm, LOG_INFO, "in-process handlers serve now; %zu cached pages kept, %zu of ours "
		"dirty", pages, dirty);
	return true;
}
