// SPDX-License-Identifier: MIT
/*
 * A slow producer stalls only the faults that need its pages: while a fill
 * callback is held up, other faults are served and map/unmap go through.
 * The callback here blocks until the test lets it go (no timing involved);
 * a stall shows as an operation that never finishes, caught by a deadline.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sys/mman.h>
#include <time.h>

#include "common.h"

struct gate {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool hold;      /* callbacks for pages >= hold_from wait while set */
	uint64_t hold_from;
	int waiting;    /* callbacks waiting at the gate */
	unsigned delay_us; /* every call sleeps this long first */
};

static struct gate gate = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static int gated_fill(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)arg;
	if (gate.delay_us)
		usleep(gate.delay_us);
	pthread_mutex_lock(&gate.lock);
	if (offset >= gate.hold_from) {
		gate.waiting++;
		pthread_cond_broadcast(&gate.cond);
		while (gate.hold)
			pthread_cond_wait(&gate.cond, &gate.lock);
		gate.waiting--;
	}
	pthread_mutex_unlock(&gate.lock);
	for (size_t i = 0; i < len / 8; i++)
		((uint64_t *)page)[i] = offset + i * 8;
	return 0;
}

static void gate_wait_for_a_caller(void)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 20;
	pthread_mutex_lock(&gate.lock);
	while (!gate.waiting)
		cr_assert_neq(pthread_cond_timedwait(&gate.cond, &gate.lock, &dl), ETIMEDOUT,
			      "the held fill was never called");
	pthread_mutex_unlock(&gate.lock);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.hold = false;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

/* ---- operations run with a deadline */

struct op {
	struct lazymap *lm;
	char *p;        /* a page to read */
	int ret;
	char seen;
};

static void *touch_page(void *arg)
{
	struct op *op = arg;

	op->seen = *(volatile char *)op->p;
	return NULL;
}

static void *map_and_unmap(void *arg)
{
	struct op *op = arg;
	void *q;

	op->ret = lazymap_map(op->lm, &q, 1 << 20, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);
	if (op->ret == 0)
		op->ret = lazymap_unmap(op->lm, q, 1 << 20);
	return NULL;
}

/* Run fn on a thread; it must finish within the deadline, not after the gate opens. */
static void must_finish(const char *what, void *(*fn)(void *), struct op *op)
{
	struct timespec dl;
	pthread_t t;
	int ret;

	cr_assert_eq(pthread_create(&t, NULL, fn, op), 0);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 20;
	ret = pthread_timedjoin_np(t, NULL, &dl);
	if (ret) {
		gate_open(); /* let everything go before failing */
		pthread_join(t, NULL);
		cr_assert(0, "%s waited for an unrelated fill callback", what);
	}
}

static struct lazymap *open_one_handler(void)
{
	struct lazymap_opts o = { .handler_threads = 1 };

	return open_or_skip(&o);
}

Test(slow_fill, map_and_unmap_never_wait_for_a_fill_callback, .timeout = 120)
{
	struct lazymap *lm = open_one_handler();
	size_t ps = pgsz();
	struct op slow, mu = { 0 };
	pthread_t t;
	char *a;

	gate.hold = true;
	gate.hold_from = 0;
	gate.delay_us = 0;
	cr_assert_eq(lazymap_map_fill(lm, (void **)&a, 64 * ps, PROT_READ, gated_fill, NULL), 0);
	cr_assert_eq(lazymap_advise(lm, a, 64 * ps, LAZYMAP_ADV_RANDOM), 0);
	/* The source's first call: on the handler itself, held at the gate. */
	slow = (struct op){ .p = a + 3 * ps };
	cr_assert_eq(pthread_create(&t, NULL, touch_page, &slow), 0);
	gate_wait_for_a_caller();

	mu.lm = lm;
	must_finish("lazymap_map/unmap", map_and_unmap, &mu);
	cr_assert_eq(mu.ret, 0);

	gate_open();
	pthread_join(t, NULL);
	cr_assert_eq(slow.seen, (char)(3 * ps));
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(slow_fill, a_slow_callback_stalls_only_its_own_faults, .timeout = 120)
{
	struct lazymap *lm = open_one_handler();
	size_t ps = pgsz();
	struct lazymap_stats st;
	struct op slow, other, mu = { 0 };
	pthread_t t;
	char *a, *z;

	gate.hold = false;
	gate.hold_from = 32 * ps;
	gate.delay_us = 5000; /* over the 1 ms that marks a source slow */
	cr_assert_eq(lazymap_map_fill(lm, (void **)&a, 64 * ps, PROT_READ, gated_fill, NULL), 0);
	cr_assert_eq(lazymap_advise(lm, a, 64 * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_map(lm, (void **)&z, 64 * ps, PROT_READ,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	/* A first, slow call: the source is known slow from now on. */
	cr_assert_eq(a[ps], (char)ps);

	/* A call held for as long as the test likes. */
	pthread_mutex_lock(&gate.lock);
	gate.hold = true;
	pthread_mutex_unlock(&gate.lock);
	slow = (struct op){ .p = a + 40 * ps };
	cr_assert_eq(pthread_create(&t, NULL, touch_page, &slow), 0);
	gate_wait_for_a_caller();

	/* Meanwhile: a fault elsewhere, another page of the same region, map and unmap. */
	other = (struct op){ .p = z + 7 * ps };
	must_finish("a fault on a zero region", touch_page, &other);
	cr_assert_eq(other.seen, 0);
	other = (struct op){ .p = a + 2 * ps };
	must_finish("a fault on another page of the slow region", touch_page, &other);
	cr_assert_eq(other.seen, (char)(2 * ps));
	mu.lm = lm;
	must_finish("lazymap_map/unmap", map_and_unmap, &mu);
	cr_assert_eq(mu.ret, 0);

	gate_open();
	pthread_join(t, NULL);
	cr_assert_eq(slow.seen, (char)(40 * ps));
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_geq(st.offloaded_fills, 2, "fills run on filler threads: %lu",
		      (unsigned long)st.offloaded_fills);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A prefetch of a slow region may keep fillers busy, never all of them. */
Test(slow_fill, a_held_up_prefetch_leaves_a_filler_for_faults, .timeout = 120)
{
	struct lazymap *lm = open_one_handler();
	size_t ps = pgsz(), npages = 1024;
	struct op other;
	char *a;

	gate.hold = false;
	gate.hold_from = 512 * ps;
	gate.delay_us = 2000; /* over the 1 ms that marks a source slow */
	cr_assert_eq(lazymap_map_fill(lm, (void **)&a, npages * ps, PROT_READ, gated_fill, NULL), 0);
	cr_assert_eq(a[ps], (char)ps); /* known slow from now on */

	pthread_mutex_lock(&gate.lock);
	gate.hold = true;
	pthread_mutex_unlock(&gate.lock);
	/* Far more runs than fillers, every one held at the gate. */
	cr_assert_eq(lazymap_prefetch(lm, a + 512 * ps, 512 * ps), 0);
	gate_wait_for_a_caller();

	other = (struct op){ .p = a + 100 * ps };
	must_finish("a fault while a prefetch holds the fillers", touch_page, &other);
	cr_assert_eq(other.seen, (char)(100 * ps));

	gate_open();
	cr_assert_eq(lazymap_close(lm), 0);
}
