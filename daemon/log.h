/* SPDX-License-Identifier: MIT */
/*
 * faultd's messages: "faultd: <level>: message" lines on stderr when it runs
 * in the foreground (under systemd: the journal), syslog(3) otherwise.
 * Levels are syslog's LOG_* (<syslog.h>).
 */
#ifndef FAULTD_LOG_H
#define FAULTD_LOG_H

#include <stdbool.h>
#include <syslog.h>

/*
 * Where messages go and the least important level kept (LOG_ERR keeps
 * errors and worse, LOG_DEBUG everything). Before flog_init: stderr, up to
 * LOG_INFO. May be called again (a reloaded log_level) while other threads log.
 */
void flog_init(bool to_syslog, int level);

/* One message, printf-style (%m too); a line longer than 1 KiB is cut, ending in "...". */
__attribute__((format(printf, 2, 3)))
void flog(int level, const char *fmt, ...);

/* "error", "warning", ...: the name of a LOG_* level (config.c reads them). */
const char *flog_level_name(int level);

#endif
