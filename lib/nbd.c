// SPDX-License-Identifier: MIT
/*
 * NBD exports through libnbd: the export behind a cache (its size, limits
 * and write-back connection), and each handler's connections, driven from
 * the handler's own loop: libnbd's socket is polled on the handler's
 * io_uring, so a reply wakes the handler as a file read's completion does.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/time_types.h>

#include "internal.h"

#ifndef HAVE_LIBNBD

int lzm_nbd_open(const char *uri, unsigned timeout_ms, struct nbd_export **xp)
{
	(void)uri, (void)timeout_ms, (void)xp;
	return -EPROTONOSUPPORT;
}
void lzm_nbd_close(struct nbd_export *x) { (void)x; }
const char *lzm_nbd_uri(const struct nbd_export *x) { (void)x; return ""; }
uint64_t lzm_nbd_size(const struct nbd_export *x) { (void)x; return 0; }
bool lzm_nbd_read_only(const struct nbd_export *x) { (void)x; return true; }
int lzm_nbd_submit(struct handler *h, struct fill_req *req)
{
	(void)h, (void)req;
	return -EPROTONOSUPPORT;
}
void lzm_nbd_event(struct handler *h, void *obj, unsigned kind, int res)
{
	(void)h, (void)obj, (void)kind, (void)res;
}
void lzm_nbd_run_done(struct handler *h) { (void)h; }
void lzm_nbd_handler_stop(struct handler *h) { (void)h; }
void lzm_nbd_handler_free(struct handler *h) { (void)h; }
int lzm_nbd_write(struct nbd_export *x, struct nbd_wio *io, size_t n, bool flush,
		  uint64_t *written)
{
	(void)x, (void)io, (void)n, (void)flush, (void)written;
	return -EPROTONOSUPPORT;
}

#else /* HAVE_LIBNBD */

#include <libnbd.h>

/* Largest request when the server names no maximum (the NBD spec's advice). */
#define REQ_MAX_DEFAULT (32u << 20)
/* Reconnection: the first retry at once, then backoff doubling to a second. */
#define BACKOFF_FIRST_MS 20
#define BACKOFF_MAX_MS   1000
/* How often a busy connection looks at its deadlines. */
#define TICK_MS 100
/* Writes in flight at once on the write-back connection. */
#define WB_DEPTH 32
#define WB_CHUNK (1u << 20)
/* How long a stopping handler lets the answers in flight come. */
#define STOP_DRAIN_MS 200

struct nbd_export {
	char *uri;
	uint64_t size;
	uint32_t req_max;        /* bytes per request: the server's maximum, or ours */
	bool read_only, can_flush;
	unsigned timeout_ms;     /* of the lazymap that opened it: write-back's deadline */
	/* The write-back connection: under the cache's wb_lock, or the cache
	 * closing (cache.c); wlock makes that explicit. */
	pthread_mutex_t wlock;
	struct nbd_handle *wh;
	/* writes answered on wh since its last flush; and such writes lost
	 * with a connection (the next flush fails once, as fsync reports a
	 * write-back error: the server may have dropped them) */
	bool unflushed, lost;
	uint64_t wsize;          /* the export's size as wh found it */
	uint64_t gave_up_ns;     /* write-back gave up then (0: not lately) */
};

enum conn_state {
	CONN_DOWN,       /* no connection, none being made */
	CONN_CONNECTING, /* handshake in progress */
	CONN_READY,
	CONN_BACKOFF,    /* lost: the next attempt at retry_at */
};

/*
 * One handler's connection to one export. Its commands are the handler's
 * alone: issued (on inflight, oldest first), waiting for the connection
 * (pending), or answered (moved by libnbd's callback to done, ended after
 * the libnbd call returns: a callback may not call libnbd, and ending a
 * read may start another). Polls and timers on the handler's ring name it,
 * so it lives until the ring is gone.
 */
struct nbd_conn {
	struct nbd_conn *next;
	/* the export's, copied: a connection outlives no region, but may
	 * outlive the cache (it holds no reference, so that the last region's
	 * unmap frees the cache, and is found by the cache's id, never reused) */
	uint64_t cache_id;
	char *uri;
	uint64_t size;
	uint32_t req_max;
	struct nbd_handle *nh;    /* NULL unless CONNECTING or READY */
	enum conn_state state;
	bool poll_armed, timer_armed, was_ready, closed;
	bool gave_up;             /* since it was last ready: said once */
	unsigned poll_events;     /* what the armed poll waits for */
	struct nbd_cmd *pending, **pending_tail;
	struct nbd_cmd *inflight, **inflight_tail;
	struct nbd_cmd *done;
	uint64_t down_since;      /* lost since (0: not lost, or lost while idle) */
	uint64_t retry_at, connect_at, progress_ns;
	unsigned backoff_ms;
	int last_err;
	struct __kernel_timespec ts;
} __attribute__((aligned(8)));

struct nbd_cmd {
	struct nbd_cmd *next;
	struct fill_req *req;
	char *buf;
	uint64_t off;
	size_t len;               /* asked of the server */
	size_t span;              /* of req: len, and past the export's end the zeros */
	uint64_t sent_ns;
	int err;
} __attribute__((aligned(8)));

/* ------------------------------------------------------------ errors */

/*
 * libnbd's errno for a connection that failed, as lazymap_map_uri
 * documents it. libnbd leaves some failures without one (an unknown host,
 * a TLS handshake): their message says which.
 */
static int connect_errno(int err, const char *msg)
{
	if (!msg)
		msg = "";
	if (err == ENOTSUP)
		return -EOPNOTSUPP;
	if (err == ESHUTDOWN || err == ECONNRESET)
		return -EPROTO; /* hung up on us while negotiating */
	if (err)
		return -err;
	/* no address for the name; else a TLS handshake, a hang-up: the handshake failed */
	return strstr(msg, "getaddrinfo") ? -EHOSTUNREACH : -EPROTO;
}

/* An answer that is the connection's failure, not the server's: sent again. */
static bool transport_err(int err)
{
	return err == ENOTCONN || err == ESHUTDOWN || err == ECONNRESET || err == EPIPE;
}

static bool handle_gone(struct nbd_handle *nh)
{
	return nbd_aio_is_dead(nh) || nbd_aio_is_closed(nh);
}

/* Close a connection; a disconnect first, so that a server with replies in
 * flight to us is not left writing to a closed socket (nbdkit 1.32 aborts). */
static void handle_close(struct nbd_handle *nh)
{
	if (!nh)
		return;
	if (nbd_aio_is_ready(nh) || nbd_aio_is_processing(nh))
		nbd_aio_disconnect(nh, 0);
	nbd_close(nh);
}

/* A new handle with our settings, connecting to uri (asynchronously). */
static int handle_start(const char *uri, struct nbd_handle **nhp)
{
	struct nbd_handle *nh = nbd_create();
	int ret;

	if (!nh)
		return -ENOMEM;
	if (!strncmp(uri, "nbds", 4) && !nbd_supports_tls(nh)) {
		nbd_close(nh);
		return -EPROTONOSUPPORT;
	}
	/* a read fills its buffer: libnbd need not zero it first */
	nbd_set_pread_initialize(nh, false);
	/* the program wrote the URI: its TLS key file may be read */
	nbd_set_uri_allow_local_file(nh, true);
	if (nbd_aio_connect_uri(nh, uri) < 0) {
		ret = connect_errno(nbd_get_errno(), nbd_get_error());
		nbd_close(nh);
		return ret;
	}
	*nhp = nh;
	return 0;
}

/* Drive nh with poll() until done() or its deadline: 0, -ETIMEDOUT, or the
 * connection's error (-EPIPE when it went without one). */
static int handle_run(struct nbd_handle *nh, bool (*done)(struct nbd_handle *, void *), void *arg,
		      uint64_t deadline)
{
	for (;;) {
		if (done(nh, arg))
			return 0;
		if (handle_gone(nh)) {
			int err = nbd_get_errno();

			return err ? -err : -EPIPE;
		}
		uint64_t now = lzm_now_ns();

		if (now >= deadline)
			return -ETIMEDOUT;

		unsigned dir = nbd_aio_get_direction(nh);
		struct pollfd pfd = { .fd = nbd_aio_get_fd(nh) };
		int ms = (int)((deadline - now + 999999) / 1000000), r;

		if (dir & LIBNBD_AIO_DIRECTION_READ)
			pfd.events |= POLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			pfd.events |= POLLOUT;
		r = poll(&pfd, 1, ms > 100 ? 100 : ms);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) && nbd_aio_notify_read(nh) < 0)
			continue; /* the state says what happened */
		if ((pfd.revents & POLLOUT) && nbd_aio_notify_write(nh) < 0)
			continue;
	}
}

static bool is_ready(struct nbd_handle *nh, void *arg)
{
	(void)arg;
	return nbd_aio_is_ready(nh);
}

/* A connection made synchronously (map, write-back), within deadline. */
static int handle_connect(const char *uri, uint64_t deadline, struct nbd_handle **nhp)
{
	struct nbd_handle *nh;
	int ret = handle_start(uri, &nh);

	if (ret)
		return ret;
	ret = handle_run(nh, is_ready, NULL, deadline);
	if (ret && ret != -ETIMEDOUT)
		ret = connect_errno(-ret == EPIPE ? 0 : -ret, nbd_get_error());
	if (ret) {
		handle_close(nh);
		return ret;
	}
	*nhp = nh;
	return 0;
}

/* ------------------------------------------------------------ the export */

int lzm_nbd_open(const char *uri, unsigned timeout_ms, struct nbd_export **xp)
{
	struct nbd_handle *nh;
	struct nbd_export *x;
	int64_t size, minb, maxb;
	int ret;

	ret = handle_connect(uri, lzm_now_ns() + timeout_ms * 1000000ull, &nh);
	if (ret)
		return ret;
	size = nbd_get_size(nh);
	minb = nbd_get_block_size(nh, LIBNBD_SIZE_MINIMUM);
	maxb = nbd_get_block_size(nh, LIBNBD_SIZE_MAXIMUM);
	ret = -EOPNOTSUPP;
	/* pages are read whole: a server that wants larger blocks is not one for us */
	if (size < 0 || minb > (int64_t)lzm_page_size)
		goto out;
	ret = -ENOMEM;
	x = calloc(1, sizeof(*x));
	if (!x || !(x->uri = strdup(uri))) {
		free(x);
		goto out;
	}
	x->size = (uint64_t)size;
	x->req_max = maxb >= (int64_t)lzm_page_size && maxb < REQ_MAX_DEFAULT
			     ? (uint32_t)(maxb & ~(int64_t)(lzm_page_size - 1))
			     : REQ_MAX_DEFAULT;
	x->read_only = nbd_is_read_only(nh) != 0;
	x->can_flush = nbd_can_flush(nh) == 1;
	x->timeout_ms = timeout_ms;
	pthread_mutex_init(&x->wlock, NULL);
	*xp = x;
	ret = 0;
out:
	handle_close(nh);
	return ret;
}

void lzm_nbd_close(struct nbd_export *x)
{
	if (!x)
		return;
	handle_close(x->wh);
	pthread_mutex_destroy(&x->wlock);
	free(x->uri);
	free(x);
}

const char *lzm_nbd_uri(const struct nbd_export *x)
{
	return x->uri;
}

uint64_t lzm_nbd_size(const struct nbd_export *x)
{
	return x->size;
}

bool lzm_nbd_read_only(const struct nbd_export *x)
{
	return x->read_only;
}

/* ------------------------------------------------------------ commands */

static void cmd_push(struct nbd_cmd ***tail, struct nbd_cmd *cmd)
{
	cmd->next = NULL;
	**tail = cmd;
	*tail = &cmd->next;
}

/* libnbd's callback, inside one of its calls: only note it. */
static int cmd_answered(void *arg, int *error)
{
	struct nbd_cmd *cmd = arg;

	cmd->err = *error;
	cmd->sent_ns = 0; /* answered: conn_reap moves it to done */
	return 1;
}

/* End one command of its request; the last one ends the read. */
static void cmd_end(struct handler *h, struct nbd_cmd *cmd)
{
	struct fill_req *req = cmd->req;

	if (cmd->err) {
		if (!req->nbd_err)
			req->nbd_err = -cmd->err;
	} else if (cmd->span > cmd->len) {
		/* past the export's end: zeros, as a file's last page */
		memset(cmd->buf + cmd->len, 0, cmd->span - cmd->len);
	}
	free(cmd);
	h->inflight--;
	if (--req->nbd_parts)
		return;
	stat_add(&h->stats.file_reads, 1);
	req->end_io(h, req, req->nbd_err ? req->nbd_err : (int)req->nbd_bytes);
}

/* End the answered commands of cn (libnbd's call has returned). */
static void conn_end_done(struct handler *h, struct nbd_conn *cn)
{
	struct nbd_cmd *cmd = cn->done;

	cn->done = NULL;
	while (cmd) {
		struct nbd_cmd *next = cmd->next;

		cmd_end(h, cmd);
		cmd = next;
	}
}

/* Move the commands libnbd answered from inflight to done. */
static void conn_reap(struct nbd_conn *cn)
{
	struct nbd_cmd **pp = &cn->inflight;

	while (*pp) {
		struct nbd_cmd *cmd = *pp;

		if (cmd->sent_ns) {
			pp = &cmd->next;
			continue;
		}
		*pp = cmd->next;
		cmd->next = cn->done;
		cn->done = cmd;
		cn->progress_ns = lzm_now_ns();
	}
	cn->inflight_tail = pp;
}

static void conn_lost(struct handler *h, struct nbd_conn *cn, int err);

/* Send cmd on cn (READY); false if the connection broke (cmd is pending again). */
static bool cmd_issue(struct handler *h, struct nbd_conn *cn, struct nbd_cmd *cmd)
{
	nbd_completion_callback cb = { .callback = cmd_answered, .user_data = cmd };

	/* (an answer inside the call, which libnbd does not promise never to
	 * give, clears sent_ns: the next conn_reap finds it) */
	cmd->sent_ns = lzm_now_ns();
	if (nbd_aio_pread(cn->nh, cmd->buf, cmd->len, cmd->off, cb, 0) >= 0) {
		cmd_push(&cn->inflight_tail, cmd);
		return true;
	}
	cmd->sent_ns = 0;
	if (handle_gone(cn->nh)) {
		cmd_push(&cn->pending_tail, cmd);
		conn_lost(h, cn, nbd_get_errno());
		return false;
	}
	/* refused by libnbd itself (out of the export's bounds: it shrank):
	 * ended on the next reap, not inside the submit that made it */
	cmd->err = nbd_get_errno() ? nbd_get_errno() : EIO;
	cmd->next = h->nbd_done;
	h->nbd_done = cmd;
	return true;
}

/* Send what waited for the connection. */
static void conn_flush_pending(struct handler *h, struct nbd_conn *cn)
{
	while (cn->state == CONN_READY && cn->pending) {
		struct nbd_cmd *cmd = cn->pending;

		cn->pending = cmd->next;
		if (!cn->pending)
			cn->pending_tail = &cn->pending;
		if (!cmd_issue(h, cn, cmd))
			break;
	}
}

/* ------------------------------------------------------------ connections */

static uint64_t ms_ns(unsigned ms)
{
	return ms * 1000000ull;
}

static unsigned conn_timeout_ms(struct handler *h)
{
	return h->lm->opts.remote_timeout_ms;
}

static bool conn_busy(const struct nbd_conn *cn)
{
	return cn->pending || cn->inflight || cn->done;
}

/* Arm what the connection waits for: its socket, and its deadlines. */
static void conn_arm(struct handler *h, struct nbd_conn *cn)
{
	if (cn->closed)
		return;
	/* one poll at a time: a stale one (of a socket since closed) is
	 * cancelled, and its completion arms the next */
	if (cn->nh && !cn->poll_armed && (cn->state == CONN_CONNECTING || cn->inflight)) {
		unsigned dir = nbd_aio_get_direction(cn->nh), ev = 0;

		if (dir & LIBNBD_AIO_DIRECTION_READ)
			ev |= POLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			ev |= POLLOUT;
		if (ev && lzm_uring_poll(h, nbd_aio_get_fd(cn->nh), ev, cn) == 0) {
			cn->poll_armed = true;
			cn->poll_events = ev;
		}
	}
	if (!cn->timer_armed && (conn_busy(cn) || cn->state == CONN_CONNECTING ||
				 cn->state == CONN_BACKOFF)) {
		uint64_t now = lzm_now_ns(), wait = ms_ns(TICK_MS);

		if (cn->state == CONN_BACKOFF)
			wait = cn->retry_at > now ? cn->retry_at - now : 0;
		if (wait > ms_ns(TICK_MS))
			wait = ms_ns(TICK_MS);
		cn->ts.tv_sec = (long long)(wait / 1000000000u);
		cn->ts.tv_nsec = (long long)(wait % 1000000000u);
		if (lzm_uring_timeout(h, &cn->ts, cn) == 0)
			cn->timer_armed = true;
	}
}

/* Close cn's connection; a poll of its socket still armed is cancelled. */
static void conn_drop(struct handler *h, struct nbd_conn *cn)
{
	if (cn->nh && cn->poll_armed)
		lzm_uring_poll_cancel(h, cn);
	handle_close(cn->nh);
	cn->nh = NULL;
}

/* The server stayed away too long: what waited for it fails (SIGBUS). */
static void conn_give_up(struct handler *h, struct nbd_conn *cn)
{
	size_t n = 0;

	if (!cn->gave_up)
		lzm_log(h->lm, LOG_ERR, "%s: no server for %u ms (%s): the pages waiting for it "
			"get SIGBUS", cn->uri, conn_timeout_ms(h),
			strerror(cn->last_err ? cn->last_err : ETIMEDOUT));
	cn->gave_up = true;
	conn_drop(h, cn);
	cn->state = CONN_DOWN;
	while (cn->pending) {
		struct nbd_cmd *cmd = cn->pending;

		cn->pending = cmd->next;
		cmd->err = ETIMEDOUT;
		cmd->next = cn->done;
		cn->done = cmd;
		n++;
	}
	cn->pending_tail = &cn->pending;
	stat_add(&h->stats.remote_timeouts, n);
	conn_end_done(h, cn);
}

/* Start a connection; a failure at once is a lost one. */
static void conn_connect(struct handler *h, struct nbd_conn *cn)
{
	int ret = handle_start(cn->uri, &cn->nh);

	if (ret) {
		cn->nh = NULL;
		conn_lost(h, cn, -ret);
		return;
	}
	cn->state = CONN_CONNECTING;
	cn->connect_at = lzm_now_ns();
	/* a UNIX socket's handshake may be done already */
	if (nbd_aio_is_ready(cn->nh)) {
		cn->state = CONN_READY;
		cn->progress_ns = lzm_now_ns();
	}
}

/*
 * The connection broke (err: why, 0 if libnbd does not say). What was sent
 * and not answered is sent again on the next one: reads are idempotent.
 * Answers that came are ended first (the caller's conn_end_done).
 */
static void conn_lost(struct handler *h, struct nbd_conn *cn, int err)
{
	uint64_t now = lzm_now_ns();
	struct nbd_cmd *resend = NULL, **tail = &resend;

	if (cn->nh) {
		conn_reap(cn);
		/* answered with the transport's error: sent again, not failed */
		for (struct nbd_cmd **pp = &cn->done; *pp;) {
			struct nbd_cmd *cmd = *pp;

			if (transport_err(cmd->err)) {
				*pp = cmd->next;
				cmd->err = 0;
				cmd_push(&tail, cmd);
			} else {
				pp = &cmd->next;
			}
		}
		for (struct nbd_cmd *cmd = cn->inflight, *next; cmd; cmd = next) {
			next = cmd->next;
			cmd->sent_ns = 0;
			cmd_push(&tail, cmd);
		}
		cn->inflight = NULL;
		cn->inflight_tail = &cn->inflight;
		/* before the ones that waited: they were first */
		if (resend) {
			*tail = cn->pending;
			if (!cn->pending)
				cn->pending_tail = tail;
			cn->pending = resend;
		}
		conn_drop(h, cn);
		if (cn->state == CONN_READY)
			lzm_log(h->lm, LOG_WARNING, "%s: connection lost (%s): connecting again",
				cn->uri, strerror(err ? err : EPIPE));
	}
	cn->last_err = err ? err : cn->last_err;
	if (!cn->pending) {
		/* nobody waits: the next read connects again */
		cn->state = CONN_DOWN;
		cn->down_since = 0;
		return;
	}
	if (!cn->down_since)
		cn->down_since = now;
	if (now - cn->down_since >= ms_ns(conn_timeout_ms(h))) {
		conn_give_up(h, cn);
		return;
	}
	cn->state = CONN_BACKOFF;
	cn->backoff_ms = cn->backoff_ms ? cn->backoff_ms * 2 : BACKOFF_FIRST_MS;
	if (cn->backoff_ms > BACKOFF_MAX_MS)
		cn->backoff_ms = BACKOFF_MAX_MS;
	/* the last attempt at the deadline itself, not a backoff short of it */
	cn->retry_at = now + ms_ns(cn->backoff_ms);
	if (cn->retry_at > cn->down_since + ms_ns(conn_timeout_ms(h)))
		cn->retry_at = cn->down_since + ms_ns(conn_timeout_ms(h));
}

/* Whether an answer says the connection is going (a server stopping
 * answers ESHUTDOWN before it hangs up). */
static bool done_says_gone(const struct nbd_conn *cn)
{
	for (const struct nbd_cmd *cmd = cn->done; cmd; cmd = cmd->next)
		if (transport_err(cmd->err))
			return true;
	return false;
}

/* After libnbd ran on cn: what changed (ready, lost), then end what was answered. */
static void conn_after(struct handler *h, struct nbd_conn *cn)
{
	conn_reap(cn);
	if (cn->nh && (handle_gone(cn->nh) || done_says_gone(cn))) {
		conn_lost(h, cn, nbd_get_errno());
	} else if (cn->nh && cn->state == CONN_CONNECTING && nbd_aio_is_ready(cn->nh)) {
		/* a smaller export now: reads past its end fail in libnbd (EIO) */
		if (nbd_get_size(cn->nh) != (int64_t)cn->size)
			lzm_log(h->lm, LOG_WARNING, "%s: the export changed size", cn->uri);
		cn->state = CONN_READY;
		cn->progress_ns = lzm_now_ns();
		if (cn->was_ready) {
			stat_add(&h->stats.remote_reconnects, 1);
			lzm_log(h->lm, LOG_INFO, "%s: connected again", cn->uri);
		}
		cn->was_ready = true;
		cn->gave_up = false;
		cn->down_since = 0;
		cn->backoff_ms = 0;
		cn->last_err = 0;
		conn_flush_pending(h, cn);
	}
	conn_end_done(h, cn);
	conn_arm(h, cn);
}

/* Nothing in flight, waiting or armed on the ring: it may be freed. */
static bool conn_idle(const struct nbd_conn *cn)
{
	return !conn_busy(cn) && !cn->poll_armed && !cn->timer_armed;
}

/*
 * Close the idle connections of exports no region maps any more (no cache
 * of their last id): a program that maps and unmaps export after export
 * must not hold a connection to each until lazymap_close.
 */
static void conns_prune(struct handler *h)
{
	for (struct nbd_conn **pp = &h->nbd, *cn; (cn = *pp);) {
		struct cache *c = conn_idle(cn) ? lzm_cache_find_id(cn->cache_id) : NULL;

		if (c || !conn_idle(cn)) {
			lzm_cache_put(c);
			pp = &cn->next;
			continue;
		}
		*pp = cn->next;
		handle_close(cn->nh);
		free(cn->uri);
		free(cn);
	}
}

/* h's connection to c's export: one per URI, kept when its cache goes and
 * another of the same URI comes (map, unmap, map again). */
static struct nbd_conn *conn_get(struct handler *h, struct cache *c)
{
	struct nbd_conn *cn;

	for (cn = h->nbd; cn; cn = cn->next)
		if (cn->cache_id == c->id || !strcmp(cn->uri, c->nbd->uri))
			break;
	if (cn) {
		cn->cache_id = c->id;
		cn->size = c->nbd->size;
		cn->req_max = c->nbd->req_max;
		return cn;
	}
	conns_prune(h);
	cn = calloc(1, sizeof(*cn));
	if (!cn || !(cn->uri = strdup(c->nbd->uri))) {
		free(cn);
		return NULL;
	}
	cn->cache_id = c->id;
	cn->size = c->nbd->size;
	cn->req_max = c->nbd->req_max;
	cn->pending_tail = &cn->pending;
	cn->inflight_tail = &cn->inflight;
	cn->next = h->nbd;
	h->nbd = cn;
	return cn;
}

void lzm_nbd_event(struct handler *h, void *obj, unsigned kind, int res)
{
	struct nbd_conn *cn = obj;
	uint64_t now = lzm_now_ns();

	if (kind == URING_NBD_POLL)
		cn->poll_armed = false;
	else
		cn->timer_armed = false;
	if (cn->closed)
		return;
	if (kind == URING_NBD_POLL && cn->nh && res > 0) {
		if (res & (POLLIN | POLLHUP | POLLERR))
			nbd_aio_notify_read(cn->nh);
		if ((res & POLLOUT) && cn->nh && !handle_gone(cn->nh))
			nbd_aio_notify_write(cn->nh);
		conn_after(h, cn);
		return;
	}
	if (kind != URING_NBD_TIMER) {
		conn_arm(h, cn);
		return;
	}
	uint64_t limit = ms_ns(conn_timeout_ms(h));

	switch (cn->state) {
	case CONN_BACKOFF:
		/* a failed attempt past the deadline gives up (conn_lost) */
		if (now >= cn->retry_at)
			conn_connect(h, cn);
		break;
	case CONN_CONNECTING:
		if (now - cn->connect_at >= limit ||
		    (cn->down_since && now - cn->down_since >= limit))
			conn_lost(h, cn, ETIMEDOUT);
		break;
	case CONN_READY:
		/* a server that answers nothing (stopped, cut off) is one gone */
		if (cn->inflight && now - cn->progress_ns >= limit &&
		    now - cn->inflight->sent_ns >= limit) {
			lzm_log(h->lm, LOG_WARNING, "%s: no answer for %u ms", cn->uri,
				conn_timeout_ms(h));
			conn_lost(h, cn, ETIMEDOUT);
		}
		break;
	case CONN_DOWN:
		break;
	}
	conn_after(h, cn);
}

int lzm_nbd_submit(struct handler *h, struct fill_req *req)
{
	struct source *src = req->src;
	struct cache *c = src->cache;
	struct nbd_export *x = c->nbd;
	uint64_t off = ((src->base + req->idx) << lzm_page_shift) + req->done;
	size_t len = (req->n << lzm_page_shift) - req->done;
	struct nbd_conn *cn;

	if (h->nbd_stopping)
		return -ESHUTDOWN;
	if (off >= x->size)
		return -EIO; /* a page wholly past the end: extent() keeps them out */
	cn = conn_get(h, c);
	if (!cn)
		return -ENOMEM;
	req->nbd_parts = 1; /* held while we queue: no part ends the read early */
	req->nbd_bytes = len;
	req->nbd_err = 0;
	for (size_t at = 0; at < len;) {
		struct nbd_cmd *cmd = calloc(1, sizeof(*cmd));
		size_t span = len - at < cn->req_max ? len - at : cn->req_max;

		if (!cmd) {
			req->nbd_err = -ENOMEM;
			break;
		}
		cmd->req = req;
		cmd->buf = req->buf + req->done + at;
		cmd->off = off + at;
		cmd->span = span;
		cmd->len = cmd->off + span > x->size ? (size_t)(x->size - cmd->off) : span;
		at += span;
		req->nbd_parts++;
		h->inflight++;
		if (cn->state == CONN_READY) {
			if (cmd_issue(h, cn, cmd))
				continue;
		} else {
			cmd_push(&cn->pending_tail, cmd);
		}
		if (cn->state == CONN_DOWN)
			conn_connect(h, cn);
		if (cn->state == CONN_READY)
			conn_flush_pending(h, cn);
	}
	stat_max(&h->stats.inflight_max, h->inflight);
	/* our hold: if every part ended already (failed), end it on the next reap */
	if (--req->nbd_parts == 0) {
		int err = req->nbd_err ? req->nbd_err : -EIO;

		req->nbd_err = 0;
		return err;
	}
	conn_after(h, cn);
	return 0;
}

void lzm_nbd_run_done(struct handler *h)
{
	struct nbd_cmd *cmd = h->nbd_done;

	h->nbd_done = NULL;
	while (cmd) {
		struct nbd_cmd *next = cmd->next;

		cmd_end(h, cmd);
		cmd = next;
	}
}

static bool none_in_flight(struct nbd_handle *nh, void *arg)
{
	(void)arg;
	return nbd_aio_in_flight(nh) <= 0;
}

void lzm_nbd_handler_stop(struct handler *h)
{
	uint64_t drain_end = lzm_now_ns() + ms_ns(STOP_DRAIN_MS);

	h->nbd_stopping = true;
	lzm_nbd_run_done(h);
	for (struct nbd_conn *cn = h->nbd; cn; cn = cn->next) {
		/* the answers on their way, briefly: a server is not left
		 * writing to a socket we closed (nbdkit 1.32 aborts then) */
		if (cn->nh && cn->state == CONN_READY && cn->inflight)
			handle_run(cn->nh, none_in_flight, NULL, drain_end);
		conn_reap(cn);
		conn_drop(h, cn);
		cn->closed = true;
		/* what is left fails: its pages are let go, their touchers woken */
		*cn->inflight_tail = cn->pending;
		for (struct nbd_cmd *cmd = cn->inflight, *next; cmd; cmd = next) {
			next = cmd->next;
			cmd->err = ESHUTDOWN;
			cmd->next = cn->done;
			cn->done = cmd;
		}
		cn->inflight = cn->pending = NULL;
		cn->inflight_tail = &cn->inflight;
		cn->pending_tail = &cn->pending;
		conn_end_done(h, cn);
	}
	lzm_nbd_run_done(h);
}

void lzm_nbd_handler_free(struct handler *h)
{
	while (h->nbd) {
		struct nbd_conn *cn = h->nbd;

		h->nbd = cn->next;
		handle_close(cn->nh);
		free(cn->uri);
		free(cn);
	}
}

/* ------------------------------------------------------------ write-back */

/*
 * Write-back runs in the caller's thread (lazymap_sync, unmap, close, the
 * evictor), on the export's own connection, driven by poll(): it may wait,
 * the fault path may not. A connection that breaks is made again and what
 * it had not answered sent again, until remote_timeout_ms pass without
 * progress.
 */
struct wstate;

struct wcmd {
	struct wstate *s;
	struct nbd_wio *io;
	char *buf;
	uint64_t off;
	size_t len;
	bool sent, answered;
	int err;
};

struct wstate {
	struct wcmd *w;
	size_t n, cap;
	size_t unanswered;       /* sent, not yet answered */
	size_t freed;            /* the copies of w[0, freed) are let go */
	bool shrunk;             /* writes past the export's end were dropped */
	size_t below;            /* wait until fewer than this are unanswered */
	bool flush_answered;
	int flush_err;
};

static int wcmd_answered(void *arg, int *error)
{
	struct wcmd *w = arg;

	w->err = *error;
	w->answered = true;
	w->s->unanswered--;
	return 1;
}

static int flush_answered(void *arg, int *error)
{
	struct wstate *s = arg;

	s->flush_err = *error;
	s->flush_answered = true;
	return 1;
}

static bool room(struct nbd_handle *nh, void *arg)
{
	const struct wstate *s = arg;

	(void)nh;
	return s->unanswered < s->below;
}

static bool flush_done(struct nbd_handle *nh, void *arg)
{
	(void)nh;
	return ((struct wstate *)arg)->flush_answered;
}

/*
 * Copy len bytes of the cache's window to buf as a system call reads them:
 * a page the program punched meanwhile is a hole that the cache's own
 * userfaultfd refuses (EFAULT), never a page of zeros. Returns the bytes
 * copied before the first such page.
 */
static size_t window_copy(char *buf, const char *src, size_t len)
{
	struct iovec local = { buf, len }, remote = { (void *)src, len };
	ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);

	return got > 0 ? (size_t)got : 0;
}

/* The writes as commands of at most WB_CHUNK bytes (and the server's
 * maximum), with room for the pieces a hole may split one into. */
static int wcmds_make(struct nbd_export *x, struct nbd_wio *io, size_t n, struct wstate *s)
{
	size_t cap = 0, chunk = WB_CHUNK < x->req_max ? WB_CHUNK : x->req_max;

	for (size_t i = 0; i < n; i++)
		cap += (io[i].len + chunk - 1) / chunk + io[i].len / lzm_page_size + 1;
	s->w = calloc(cap ? cap : 1, sizeof(*s->w));
	if (!s->w)
		return -ENOMEM;
	s->cap = cap;
	for (size_t i = 0; i < n; i++)
		for (uint64_t at = 0; at < io[i].len; at += chunk)
			s->w[s->n++] = (struct wcmd){
				.io = &io[i], .off = io[i].off + at,
				.len = io[i].len - at < chunk ? (size_t)(io[i].len - at) : chunk };
	return 0;
}

/*
 * The bytes of w, copied from the cache's window when it is sent (so that
 * what is held is bounded by the writes in flight). A page punched since
 * write-back took it is left out, and the export keeps its bytes there: w
 * ends before it, and the rest after it becomes a command of its own.
 * false: nothing to send (w began with the hole), or no memory (w->buf NULL).
 */
static bool wcmd_fill(struct wstate *s, struct wcmd *w)
{
	const char *src = w->io->src + (w->off - w->io->off);
	size_t got, skip;

	if (!w->buf && !(w->buf = malloc(w->len)))
		return false;
	got = window_copy(w->buf, src, w->len);
	if (got == w->len)
		return true;
	skip = got + (lzm_page_size < w->len - got ? lzm_page_size : w->len - got);
	if (skip < w->len && s->n < s->cap)
		s->w[s->n++] = (struct wcmd){ .io = w->io, .off = w->off + skip, .len = w->len - skip };
	w->len = got;
	return got != 0;
}

static void wcmds_free(struct wstate *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->w[i].buf);
	free(s->w);
}

/* One attempt on x->wh: every write not yet answered well, then the flush.
 * Fails with -ETIMEDOUT after limit_ns without an answer. */
static int write_once(struct nbd_export *x, struct wstate *s, bool flush, uint64_t limit_ns)
{
	int ret;

	for (size_t next = 0;;) {
		for (; next < s->n && s->unanswered < WB_DEPTH; next++) {
			struct wcmd *w = &s->w[next];
			nbd_completion_callback cb = { .callback = wcmd_answered, .user_data = w };

			if (w->answered && !w->err)
				continue; /* written on an earlier connection */
			w->answered = w->sent = false;
			w->err = 0;
			/* an export that shrank since: what is past its end is
			 * dropped, as a file's pages past its end are */
			if (w->off + w->len > x->wsize) {
				w->len = w->off < x->wsize ? (size_t)(x->wsize - w->off) : 0;
				s->shrunk = true;
				if (!w->len) {
					w->answered = true;
					continue;
				}
			}
			if (!wcmd_fill(s, w)) {
				/* a hole (nothing to write), or no memory */
				w->answered = true;
				w->err = w->buf ? 0 : ENOMEM;
				continue;
			}
			w->sent = true;
			w->s = s;
			s->unanswered++;
			if (nbd_aio_pwrite(x->wh, w->buf, w->len, w->off, cb, 0) >= 0)
				continue;
			s->unanswered--;
			w->sent = false;
			if (handle_gone(x->wh))
				return -EPIPE;
			w->answered = true; /* refused by libnbd (ENOSPC past the end) */
			w->err = nbd_get_errno() ? nbd_get_errno() : EIO;
		}
		/* answered well: its copy is not needed again (a failed flush
		 * sends everything again, copied anew) */
		for (; s->freed < next; s->freed++) {
			struct wcmd *w = &s->w[s->freed];

			if (w->sent && !w->answered)
				break;
			free(w->buf);
			w->buf = NULL;
		}
		s->below = next < s->n ? WB_DEPTH : 1;
		if (next >= s->n && room(x->wh, s))
			break;
		ret = handle_run(x->wh, room, s, lzm_now_ns() + limit_ns);
		if (ret)
			return ret;
	}
	if (!flush || !x->can_flush)
		return 0;
	nbd_completion_callback fcb = { .callback = flush_answered, .user_data = s };

	s->flush_answered = false;
	if (nbd_aio_flush(x->wh, fcb, 0) < 0)
		return handle_gone(x->wh) ? -EPIPE : -EIO;
	ret = handle_run(x->wh, flush_done, s, lzm_now_ns() + limit_ns);
	return ret; /* an answer that refuses the flush is the caller's to read */
}

int lzm_nbd_write(struct nbd_export *x, struct nbd_wio *io, size_t n, bool flush,
		  uint64_t *written)
{
	uint64_t limit = ms_ns(x->timeout_ms), down_since = 0;
	unsigned backoff = BACKOFF_FIRST_MS;
	struct wstate s = { 0 };
	int ret;

	if (x->read_only)
		return n ? -EROFS : 0;
	pthread_mutex_lock(&x->wlock);
	/* nothing to write, nothing written before on a connection alive: no flush due */
	if (n == 0 && !x->wh) {
		ret = x->lost && flush ? -EIO : 0;
		x->lost = x->lost && !flush;
		pthread_mutex_unlock(&x->wlock);
		return ret;
	}
	/* the server stayed away past the limit a moment ago: one short try
	 * (lazymap_close writes back more than once, and must not wait for
	 * it each time) */
	bool quick = x->gave_up_ns && lzm_now_ns() - x->gave_up_ns < limit;

	if (quick)
		limit = limit / 4 > ms_ns(TICK_MS) ? limit / 4 : ms_ns(TICK_MS);
	ret = wcmds_make(x, io, n, &s);
	while (ret == 0) {
		uint64_t now = lzm_now_ns();

		/* a last attempt at the deadline, and at least a tick for it */
		if (!x->wh) {
			uint64_t until = down_since ? down_since + limit : now + limit;

			ret = handle_connect(x->uri, until > now + ms_ns(TICK_MS) ? until
										 : now + ms_ns(TICK_MS),
					     &x->wh);
			if (ret)
				x->wh = NULL;
			else
				x->wsize = (uint64_t)nbd_get_size(x->wh);
		}
		if (ret == 0 && (ret = write_once(x, &s, flush, limit)) == 0)
			break;
		/* the connection broke, or stalled: a new one takes what was not
		 * answered (a flush covers its own connection's writes only: all
		 * of them go again when one is asked) */
		if (x->wh)
			x->lost |= x->unflushed;
		x->unflushed = false;
		handle_close(x->wh);
		x->wh = NULL;
		for (size_t i = 0; i < s.n; i++)
			if (flush || !s.w[i].answered || transport_err(s.w[i].err))
				s.w[i].answered = s.w[i].sent = false;
		s.unanswered = s.freed = 0;
		now = lzm_now_ns();
		if (!down_since)
			down_since = now;
		if (now - down_since >= limit || quick) {
			x->gave_up_ns = now;
			ret = -EIO;
			break;
		}
		uint64_t wait = ms_ns(backoff), left = down_since + limit - now;

		usleep((useconds_t)((wait < left ? wait : left) / 1000));
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
		ret = 0;
	}
	if (ret == 0)
		x->gave_up_ns = 0;
	if (s.shrunk)
		lzm_log(NULL, LOG_WARNING, "%s: the export is smaller than it was: what was "
			"written past its end is dropped", x->uri);
	if (ret == 0 && flush && s.flush_err) {
		/* the server refused the flush: the writes stay unflushed, and
		 * the caller's pages dirty for the next sync */
		ret = -s.flush_err;
		x->unflushed = true;
	} else if (ret == 0 && flush) {
		/* what an earlier connection had not flushed may be gone */
		ret = x->lost ? -EIO : 0;
		x->lost = x->unflushed = false;
	} else if (ret == 0 && s.n) {
		x->unflushed = true;
	}
	/* each write's outcome, on the run it belongs to */
	for (size_t i = 0; i < s.n; i++) {
		struct wcmd *w = &s.w[i];
		int e = ret ? ret : !w->answered ? -EIO : -w->err;

		if (e && !w->io->err)
			w->io->err = e;
		if (!e)
			*written += w->len;
	}
	for (size_t i = 0; i < n; i++) {
		if (ret && !io[i].err)
			io[i].err = ret;
		if (!ret && io[i].err)
			ret = io[i].err;
	}
	wcmds_free(&s);
	pthread_mutex_unlock(&x->wlock);
	return ret;
}

#endif /* HAVE_LIBNBD */
