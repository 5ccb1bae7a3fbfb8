// SPDX-License-Identifier: MIT
/*
 * faultd's logging. Threads log at any time, so a line on stderr is built
 * whole and written with one write(2) (at most PIPE_BUF bytes: atomic on a
 * pipe, such as the journal's stream): lines never interleave.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define LINE_MAX_BYTES 1024

/* Read by every thread on every message; flog_init may change them at any time. */
static atomic_int max_level = LOG_INFO;
static atomic_bool use_syslog;

static const char *const level_names[] = {
	[LOG_EMERG] = "emergency", [LOG_ALERT] = "alert",   [LOG_CRIT] = "critical",
	[LOG_ERR] = "error",       [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",       [LOG_DEBUG] = "debug",
};

static int clamp(int level)
{
	return level < LOG_EMERG ? LOG_EMERG : level > LOG_DEBUG ? LOG_DEBUG : level;
}

const char *flog_level_name(int level)
{
	return level_names[clamp(level)];
}

void flog_init(bool to_syslog, int level)
{
	if (to_syslog)
		openlog("faultd", LOG_PID, LOG_DAEMON);
	atomic_store(&use_syslog, to_syslog);
	atomic_store(&max_level, clamp(level));
	if (!to_syslog)
		closelog(); /* nothing if it was never opened */
}

void flog(int level, const char *fmt, ...)
{
	char line[LINE_MAX_BYTES];
	int saved = errno, head, n;
	size_t len, room;
	va_list ap;

	level = clamp(level);
	if (level > atomic_load_explicit(&max_level, memory_order_relaxed))
		return;
	va_start(ap, fmt);
	if (atomic_load_explicit(&use_syslog, memory_order_relaxed)) {
		vsyslog(level, fmt, ap);
		va_end(ap);
		errno = saved;
		return;
	}
	head = snprintf(line, sizeof(line), "faultd: %s: ", level_names[level]);
	room = sizeof(line) - (size_t)head - 1; /* one byte kept for the '\n' */
	errno = saved;                          /* for %m */
	n = vsnprintf(line + head, room, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	len = (size_t)head + ((size_t)n < room ? (size_t)n : room - 1);
	if ((size_t)n >= room)
		memcpy(line + len - 3, "...", 3);
	line[len++] = '\n';
	for (size_t off = 0; off < len;) {
		ssize_t w = write(STDERR_FILENO, line + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break; /* nowhere to say it */
		off += (size_t)w;
	}
	errno = saved;
}
