// SPDX-License-Identifier: MIT
/*
 * Filler threads: they run the fill callbacks of sources that have shown
 * themselves slow (one call over a millisecond), so that a slow producer
 * stalls only the faults that need its pages while the handlers serve the
 * rest. None runs until a source is slow; then up to MAX_FILLERS start, one
 * more whenever work is queued and none is idle. Runs a fault waits for go
 * first, and runs nobody waits for yet (prefetch) may take all fillers but
 * one: a slow prefetch never holds up a fault for longer than one call. A
 * filler is a struct handler without a userfaultfd or a ring: its counters,
 * staging run and log queue are a handler's.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>

#include "internal.h"

int lzm_fillers_init(struct lazymap *lm)
{
	struct fillers *fs = &lm->fillers;

	fs->f = calloc(MAX_FILLERS, sizeof(*fs->f));
	if (!fs->f)
		return -ENOMEM;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_cond_init(&fs->cond, NULL);
	return 0;
}

static void queue_push(struct fill_queue *q, struct fill_req *req)
{
	req->next = NULL;
	if (q->tail)
		q->tail->next = req;
	else
		q->head = req;
	q->tail = req;
}

static struct fill_req *queue_pop(struct fill_queue *q)
{
	struct fill_req *req = q->head;

	if (req) {
		q->head = req->next;
		if (!q->head)
			q->tail = NULL;
	}
	return req;
}

/* The next run for a filler, or NULL; lock held. */
static struct fill_req *next_run(struct fillers *fs, bool *ahead)
{
	struct fill_req *req = queue_pop(&fs->asked);

	*ahead = false;
	if (!req && fs->ahead_running < MAX_FILLERS - 1) {
		req = queue_pop(&fs->ahead);
		*ahead = req != NULL;
	}
	return req;
}

static void *filler_main(void *arg)
{
	struct handler *h = arg;
	struct lazymap *lm = h->lm;
	struct fillers *fs = &lm->fillers;

	lzm_current_handler = h; /* a fill callback calling its own lazymap: -EDEADLK */
	lzm_logq = &h->logq;
	pthread_mutex_lock(&fs->lock);
	for (;;) {
		struct fill_req *req;
		bool ahead;

		while (!fs->stop && !(req = next_run(fs, &ahead))) {
			fs->idle++;
			pthread_cond_wait(&fs->cond, &fs->lock);
			fs->idle--;
		}
		if (fs->stop)
			break;
		fs->ahead_running += ahead;
		pthread_mutex_unlock(&fs->lock);

		stat_add(&h->stats.offloaded_fills, 1);
		lzm_fill_req_run(h, req, h->pool.run);
		lzm_log_flush(lm);
		pthread_mutex_lock(&fs->lock);
		if (ahead && fs->ahead_running-- == MAX_FILLERS - 1)
			pthread_cond_signal(&fs->cond); /* an ahead run may start again */
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* Start filler number fs->started; lock held. */
static int filler_start(struct lazymap *lm)
{
	struct fillers *fs = &lm->fillers;
	struct handler *h = &fs->f[fs->started];
	sigset_t all, old;
	char name[16];
	int ret;

	h->lm = lm;
	h->cpu = -1;
	ret = lzm_pool_init(&h->pool, lm->ra_pages, 0);
	if (ret)
		return ret;
	/* The program's signals are not for us, as for the handlers. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&h->thread, NULL, filler_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		lzm_pool_destroy(&h->pool);
		return ret;
	}
	h->started = true;
	snprintf(name, sizeof(name), "lazymap-f%u", fs->started);
	pthread_setname_np(h->thread, name);
	fs->started++;
	return 0;
}

int lzm_fillers_queue(struct lazymap *lm, struct fill_req *req)
{
	struct fillers *fs = &lm->fillers;
	int ret = 0;

	pthread_mutex_lock(&fs->lock);
	if (fs->stop) {
		ret = -ESHUTDOWN;
		goto out;
	}
	if (!fs->idle && fs->started < MAX_FILLERS) {
		ret = filler_start(lm);
		if (ret && fs->started)
			ret = 0; /* the others will get to it */
		if (ret)
			goto out;
	}
	queue_push(req->asked ? &fs->asked : &fs->ahead, req);
	pthread_cond_signal(&fs->cond);
out:
	pthread_mutex_unlock(&fs->lock);
	return ret;
}

void lzm_fillers_stop(struct lazymap *lm)
{
	struct fillers *fs = &lm->fillers;
	struct fill_req *req, *next;

	if (!fs->f)
		return;
	pthread_mutex_lock(&fs->lock);
	fs->stop = true;
	pthread_cond_broadcast(&fs->cond);
	pthread_mutex_unlock(&fs->lock);
	/* Joined first: none of them takes from the queues any more. */
	for (unsigned i = 0; i < fs->started; i++) {
		pthread_join(fs->f[i].thread, NULL);
		lzm_pool_destroy(&fs->f[i].pool);
	}
	struct fill_queue *queues[] = { &fs->asked, &fs->ahead };

	for (unsigned i = 0; i < 2; i++) {
		struct fill_queue *q = queues[i];

		for (req = q->head; req; req = next) {
			next = req->next;
			lzm_fault_abandon(req);
		}
		q->head = q->tail = NULL;
	}
}
