// SPDX-License-Identifier: MIT
/*
 * The library's messages: formatted here, handed to the program's hook
 * (opts.log), or to stderr when LAZYMAP_LOG asks, or dropped. Threads of the
 * library hold locks a handler needs while they work, so their messages wait
 * in a small per-thread queue until the thread holds nothing (lzm_log_flush).
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

_Thread_local struct logq *lzm_logq;

bool lzm_log_env(void)
{
	const char *e = getenv("LAZYMAP_LOG");

	return e && *e && strcmp(e, "0") != 0;
}

static void deliver(struct lazymap *lm, int level, const char *msg)
{
	if (lm->opts.log)
		lm->opts.log(lm->opts.log_arg, level, msg);
	else if (lm->log_stderr)
		fprintf(stderr, "liblazymap: %s\n", msg);
}

void lzm_log(struct lazymap *lm, int level, const char *fmt, ...)
{
	struct logq *q = lzm_logq;
	char buf[LOG_MSG_MAX];
	va_list ap;

	/* lm NULL: a message of no lazymap (a cache outliving its regions'):
	 * stderr if LAZYMAP_LOG asks, at once */
	if (lm ? !lm->opts.log && !lm->log_stderr : !lzm_log_env())
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (!lm) {
		fprintf(stderr, "liblazymap: %s\n", buf);
		return;
	}
	if (!q) {
		deliver(lm, level, buf);
		return;
	}
	if (q->n == LOG_QUEUE) {
		q->dropped++;
		return;
	}
	q->level[q->n] = level;
	memcpy(q->msg[q->n++], buf, sizeof(buf));
}

void lzm_log_flush(struct lazymap *lm)
{
	struct logq *q = lzm_logq;

	if (!q || (!q->n && !q->dropped))
		return;
	for (unsigned i = 0; i < q->n; i++)
		deliver(lm, q->level[i], q->msg[i]);
	if (q->dropped) {
		char buf[64];

		snprintf(buf, sizeof(buf), "%u more messages dropped", q->dropped);
		deliver(lm, LOG_WARNING, buf);
	}
	q->n = q->dropped = 0;
}
