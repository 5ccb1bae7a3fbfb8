// SPDX-License-Identifier: MIT
/*
 * faultd's logging to stderr (daemon/log.c): the line's form, the level
 * filter, long messages, errno, and whole lines from threads logging at once.
 * stderr goes to a scratch file for each test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static struct {
	char path[PATH_MAX];
	int saved_stderr;
	char *text; /* what was written, once read */
} fx;

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");
	int fd;

	memset(&fx, 0, sizeof(fx));
	snprintf(fx.path, sizeof(fx.path), "%s/faultd-log.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	fd = mkstemp(fx.path);
	cr_assert_geq(fd, 0, "mkstemp %s: %s", fx.path, strerror(errno));
	fx.saved_stderr = dup(STDERR_FILENO);
	cr_assert_geq(fx.saved_stderr, 0);
	cr_assert_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
	flog_init(false, LOG_INFO);
}

static void teardown(void)
{
	if (fx.saved_stderr > 0) {
		dup2(fx.saved_stderr, STDERR_FILENO);
		close(fx.saved_stderr);
	}
	unlink(fx.path);
	free(fx.text);
}

#define FIXTURE .init = setup, .fini = teardown

/* Everything written to stderr so far. */
static const char *written(void)
{
	FILE *f = fopen(fx.path, "r");
	size_t len = 0;
	char *text = NULL;

	cr_assert_not_null(f);
	cr_assert_eq(getdelim(&text, &len, '\0', f) >= 0 || feof(f), true);
	fclose(f);
	free(fx.text);
	fx.text = text ? text : strdup("");
	return fx.text;
}

Test(faultd_log, lines_name_their_level_and_those_above_it_are_dropped, FIXTURE)
{
	flog(LOG_ERR, "one %d", 1);
	flog(LOG_WARNING, "two");
	flog(LOG_INFO, "three");
	flog(LOG_DEBUG, "not this one");
	cr_expect_str_eq(written(), "faultd: error: one 1\nfaultd: warning: two\nfaultd: info: three\n");

	flog_init(false, LOG_WARNING);
	flog(LOG_NOTICE, "dropped");
	flog(LOG_CRIT, "kept");
	flog_init(false, LOG_DEBUG);
	flog(LOG_DEBUG, "debug now");
	cr_expect_str_eq(written(), "faultd: error: one 1\nfaultd: warning: two\nfaultd: info: three\n"
				    "faultd: critical: kept\nfaultd: debug: debug now\n");
}

Test(faultd_log, a_long_message_is_cut_to_one_line, FIXTURE)
{
	char big[4000];
	const char *out;

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	flog(LOG_INFO, "%s", big);
	out = written();
	cr_expect_eq(strlen(out), 1024 - 1);
	cr_expect(!strncmp(out, "faultd: info: aaa", 17));
	cr_expect_str_eq(out + strlen(out) - 4, "...\n");
}

Test(faultd_log, errno_is_kept_and_m_says_it, FIXTURE)
{
	errno = ENOENT;
	flog(LOG_ERR, "open: %m");
	cr_expect_eq(errno, ENOENT);
	cr_expect_str_eq(written(), "faultd: error: open: No such file or directory\n");
}

static void *chatter(void *arg)
{
	for (int i = 0; i < 500; i++)
		flog(LOG_INFO, "thread %ld line %d %s", (long)(intptr_t)arg, i,
		     "................................................................");
	return NULL;
}

Test(faultd_log, lines_of_threads_logging_at_once_stay_whole, FIXTURE)
{
	pthread_t t[4];
	int lines = 0;
	char *save, *line;

	for (long i = 0; i < 4; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, chatter, (void *)(intptr_t)i), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	for (line = strtok_r((char *)written(), "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		long th;
		int n, end = 0;

		cr_assert_eq(sscanf(line, "faultd: info: thread %ld line %d %n", &th, &n, &end), 2, "%s", line);
		cr_assert_eq(strspn(line + end, "."), 64, "%s", line);
		cr_assert_eq(line[end + 64], '\0', "%s", line);
		lines++;
	}
	cr_expect_eq(lines, 4 * 500);
}
