// SPDX-License-Identifier: MIT
/*
 * Each handler's io_uring: reads of backing files into pool pages, many in
 * flight, submitted in batches and completed through each request's end_io.
 * The ring's
 * eventfd sits in the handler's epoll set, so a sleeping handler wakes for
 * completions as it does for faults.
 */
#include <errno.h>
#include <liburing.h>
#include <linux/fs.h>
#include <linux/time_types.h>
#include <sys/uio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

struct uring {
	struct io_uring ring;
	int efd;          /* signalled by the kernel for each completion */
	unsigned queued;  /* prepared, not yet submitted */
	char *fixed;      /* the pool's read area, registered (pinned once), or NULL */
	size_t fixed_len;
	bool fixed_tried; /* registration was attempted (at the first read) */
};

#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ring_reuse; /* what a ring's exit releases and an init acquires */
#define ring_mapped()   __tsan_acquire(&ring_reuse)
#define ring_unmapped() __tsan_release(&ring_reuse)
#else
#define ring_mapped()   ((void)0)
#define ring_unmapped() ((void)0)
#endif

int lzm_ring_init(unsigned entries, struct io_uring *ring)
{
	int ret = io_uring_queue_init(entries, ring, 0);

	if (ret == 0)
		ring_mapped();
	return ret;
}

void lzm_ring_exit(struct io_uring *ring)
{
	ring_unmapped();
	io_uring_queue_exit(ring);
}

int lzm_uring_init(struct handler *h, unsigned entries)
{
	struct uring *u = calloc(1, sizeof(*u));
	int ret;

	if (!u)
		return -ENOMEM;
	ret = lzm_ring_init(entries, &u->ring);
	if (ret < 0) {
		free(u);
		return ret;
	}
	u->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (u->efd < 0 || io_uring_register_eventfd(&u->ring, u->efd) < 0) {
		ret = u->efd < 0 ? -errno : -EINVAL;
		if (u->efd >= 0)
			close(u->efd);
		lzm_ring_exit(&u->ring);
		free(u);
		return ret;
	}
	h->ring = u;
	return 0;
}

/*
 * Register the pool's read area at the first read: the kernel pins it once
 * instead of at every read (O_DIRECT reads gain most). Not at open: pinning
 * commits the whole area, which a lazymap that never reads a file should not
 * pay. Optional: pinned memory counts against RLIMIT_MEMLOCK, and plain reads
 * work without it.
 */
static void register_pool(struct handler *h)
{
	struct uring *u = h->ring;
	struct iovec iov = { .iov_base = h->pool.pages, .iov_len = h->pool.npages << lzm_page_shift };

	u->fixed_tried = true;
	if (h->pool.pages && io_uring_register_buffers(&u->ring, &iov, 1) == 0) {
		u->fixed = h->pool.pages;
		u->fixed_len = iov.iov_len;
	}
}

int lzm_uring_eventfd(struct handler *h)
{
	return h->ring->efd;
}

void lzm_uring_flush(struct handler *h)
{
	struct uring *u = h->ring;

	while (u->queued) {
		int ret = io_uring_submit(&u->ring);

		if (ret > 0) {
			u->queued -= (unsigned)ret < u->queued ? (unsigned)ret : u->queued;
		} else if (ret == 0 || ret == -EAGAIN || ret == -EBUSY) {
			break; /* the next flush, after completions, retries */
		} else if (ret != -EINTR) {
			/* The ring is gone (its descriptor closed under us): the
			 * reads queued on it will never complete. */
			lzm_handler_break(h, -ret, "io_uring_submit");
			break;
		}
	}
}

int lzm_uring_read(struct handler *h, int fd, void *buf, size_t len, uint64_t off, bool nowait,
		   struct fill_req *req)
{
	struct uring *u = h->ring;
	struct io_uring_sqe *sqe;

	if (!u->fixed_tried)
		register_pool(h);
	sqe = io_uring_get_sqe(&u->ring);
	while (!sqe) {
		/* Ring full: submit, and make room by completing what is done. */
		if (lzm_uring_reap(h, true) <= 0 && !io_uring_sq_space_left(&u->ring))
			return -EBUSY;
		sqe = io_uring_get_sqe(&u->ring);
	}
	if (u->fixed && (char *)buf >= u->fixed && (char *)buf + len <= u->fixed + u->fixed_len)
		io_uring_prep_read_fixed(sqe, fd, buf, (unsigned)len, off, 0);
	else
		io_uring_prep_read(sqe, fd, buf, (unsigned)len, off);
	if (nowait)
		sqe->rw_flags = RWF_NOWAIT;
	io_uring_sqe_set_data(sqe, req);
	u->queued++;
	h->inflight++;
	stat_max(&h->stats.inflight_max, h->inflight);
	return 0;
}

/* user_data of a completion that is no read: an object with a URING_NBD_* kind
 * in its low bits, or this alone (a cancel's own completion: nothing to do). */
#define TAG_MASK   7u
#define TAG_CANCEL 4u

static struct io_uring_sqe *sqe_get(struct uring *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe && io_uring_submit(&u->ring) > 0) {
		u->queued = 0;
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

int lzm_uring_poll(struct handler *h, int fd, unsigned events, void *obj)
{
	struct io_uring_sqe *sqe = sqe_get(h->ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, fd, events);
	io_uring_sqe_set_data64(sqe, (uintptr_t)obj | URING_NBD_POLL);
	h->ring->queued++;
	return 0;
}

void lzm_uring_poll_cancel(struct handler *h, void *obj)
{
	struct io_uring_sqe *sqe = sqe_get(h->ring);

	if (!sqe)
		return; /* it completes when its socket hangs up */
	io_uring_prep_poll_remove(sqe, (uintptr_t)obj | URING_NBD_POLL);
	io_uring_sqe_set_data64(sqe, TAG_CANCEL);
	h->ring->queued++;
}

int lzm_uring_timeout(struct handler *h, struct __kernel_timespec *ts, void *obj)
{
	struct io_uring_sqe *sqe = sqe_get(h->ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, (uintptr_t)obj | URING_NBD_TIMER);
	h->ring->queued++;
	return 0;
}

/* Drain the completion eventfd; a handler does so before it sleeps, then
 * reaps once more, so that no completion is left behind unsignalled. */
void lzm_uring_quiet(struct handler *h)
{
	lzm_efd_drain(h->ring->efd);
}

int lzm_uring_reap(struct handler *h, bool wait)
{
	struct uring *u = h->ring;
	struct io_uring_cqe *cqe;
	int n = 0;

	/* reads of NBD connections that ended inside a submit */
	if (h->nbd_done)
		lzm_nbd_run_done(h);
	if (!h->inflight)
		return 0;
	lzm_uring_flush(h);
	if (wait && h->inflight > u->queued) {
		int ret;

		do
			ret = io_uring_wait_cqe(&u->ring, &cqe);
		while (ret == -EINTR);
		if (ret < 0)
			return ret;
	}
	while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
		uint64_t data = io_uring_cqe_get_data64(cqe);
		struct fill_req *req = (struct fill_req *)(uintptr_t)data;
		int res = cqe->res;

		io_uring_cqe_seen(&u->ring, cqe);
		if (data & TAG_MASK) {
			if (data != TAG_CANCEL)
				lzm_nbd_event(h, (void *)(uintptr_t)(data & ~(uint64_t)TAG_MASK),
					      (unsigned)(data & TAG_MASK), res);
			n++;
			continue;
		}
		h->inflight--;
		stat_add(&h->stats.file_reads, 1);
		req->end_io(h, req, res);
		n++;
	}
	lzm_uring_flush(h);
	return n;
}

void lzm_uring_exit(struct handler *h)
{
	struct uring *u = h->ring;

	if (!u)
		return;
	/* The kernel writes into pool pages until every read has completed. */
	while (h->inflight && lzm_uring_reap(h, true) > 0)
		;
	lzm_ring_exit(&u->ring);
	close(u->efd);
	free(u);
	h->ring = NULL;
}
