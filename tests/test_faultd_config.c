// SPDX-License-Identifier: MIT
/*
 * faultd's config file (daemon/config.c): the defaults and the example file
 * that documents them, a file setting every key, each kind of error with the
 * file:line and key it names, and that a load that fails changes nothing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"

#ifndef FAULTD_CONF_EXAMPLE
#error "tests/meson.build passes the path of daemon/faultd.conf"
#endif

#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* ------------------------------------------------------------ fixture */

/* A test's scratch directory and the config it loads into; .fini frees both. */
static struct {
	char dir[PATH_MAX - 64];
	char path[PATH_MAX];
	struct faultd_config cfg;
	char err[512];
} fx;

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");

	memset(&fx, 0, sizeof(fx));
	snprintf(fx.dir, sizeof(fx.dir), "%s/faultd-config.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(fx.dir), "mkdtemp %s: %s", fx.dir, strerror(errno));
	faultd_config_defaults(&fx.cfg);
}

static void teardown(void)
{
	faultd_config_free(&fx.cfg);
	if (fx.path[0])
		unlink(fx.path);
	if (fx.dir[0])
		rmdir(fx.dir);
}

#define FIXTURE .init = setup, .fini = teardown

/* Writes text to the test's faultd.conf and returns its path. */
static const char *conf(const char *text)
{
	FILE *f;

	snprintf(fx.path, sizeof(fx.path), "%s/faultd.conf", fx.dir);
	f = fopen(fx.path, "w");
	cr_assert_not_null(f, "%s: %s", fx.path, strerror(errno));
	cr_assert_eq(fputs(text, f) >= 0, true);
	cr_assert_eq(fclose(f), 0);
	return fx.path;
}

static int load(const char *text)
{
	return faultd_config_load(&fx.cfg, conf(text), fx.err, sizeof(fx.err));
}

static void expect_defaults(const struct faultd_config *c)
{
	cr_expect_str_eq(c->socket, "/run/faultd/faultd.sock");
	cr_expect_eq(c->socket_mode, 0660);
	cr_expect_str_eq(c->socket_group, "");
	cr_expect_eq(c->socket_gid, (gid_t)-1);
	cr_expect_eq(c->threads, 0);
	cr_expect_eq(c->resident_limit, 0);
	cr_expect_eq(c->log_level, LOG_INFO);
	cr_expect_null(c->allow_uids);
	cr_expect_eq(c->nallow_uids, 0);
	cr_expect_null(c->allow_gids);
	cr_expect_eq(c->nallow_gids, 0);
	cr_expect_eq(c->max_clients, 64);
	cr_expect_eq(c->max_regions, 4096);
	cr_expect_eq(c->max_mapped, 1024 * GiB);
	cr_expect_eq(c->max_fds, 64);
}

/* ------------------------------------------------------------ what loads */

Test(faultd_config, defaults, FIXTURE)
{
	expect_defaults(&fx.cfg);
	cr_expect_str_eq(fx.cfg.socket, FAULTD_SOCKET_DEFAULT);
}

/*
 * daemon/faultd.conf shows every key commented out with its default:
 * uncommented, it loads, and gives exactly the defaults.
 */
Test(faultd_config, example_file_documents_every_key_and_its_default, FIXTURE)
{
	FILE *in = fopen(FAULTD_CONF_EXAMPLE, "r");
	char line[512], *text = NULL;
	size_t len = 0, keys = 0;
	FILE *out = open_memstream(&text, &len);

	cr_assert_not_null(in, "%s: %s", FAULTD_CONF_EXAMPLE, strerror(errno));
	cr_assert_not_null(out);
	while (fgets(line, sizeof(line), in)) {
		size_t name = strspn(line + 1, "abcdefghijklmnopqrstuvwxyz_");

		/* "#key = value": a key; "# prose" is not */
		if (line[0] == '#' && name && !strncmp(line + 1 + name, " =", 2)) {
			fputs(line + 1, out);
			keys++;
		} else {
			fputs(line, out);
		}
	}
	fclose(in);
	fclose(out);
	cr_assert_eq(keys, 12, "keys shown in %s: %zu", FAULTD_CONF_EXAMPLE, keys);
	cr_assert_eq(load(text), 0, "%s", fx.err);
	free(text);
	cr_expect_str_eq(fx.err, "");
	expect_defaults(&fx.cfg);
}

Test(faultd_config, a_file_setting_every_key, FIXTURE)
{
	int ret = load("; every key\n"
		       "[socket]\n"
		       "path = /run/other/f.sock\n"
		       "mode = 600\n"
		       "group = root\n"
		       "\n"
		       "[server]\n"
		       "threads = 8\n"
		       "resident_limit = 512M ; half a GiB\n"
		       "log_level = debug\n"
		       "[access]\n"
		       "allow_users = root, 1234,\n"
		       "allow_groups = 5678\n"
		       "[limits]\n"
		       "clients = 3\n"
		       "regions = 100\n"
		       "mapped = 2g\n"
		       "descriptors = 7\n");

	cr_assert_eq(ret, 0, "%s", fx.err);
	cr_expect_str_eq(fx.err, "");
	cr_expect_str_eq(fx.cfg.socket, "/run/other/f.sock");
	cr_expect_eq(fx.cfg.socket_mode, 0600);
	cr_expect_str_eq(fx.cfg.socket_group, "root");
	cr_expect_eq(fx.cfg.socket_gid, 0);
	cr_expect_eq(fx.cfg.threads, 8);
	cr_expect_eq(fx.cfg.resident_limit, 512 * MiB);
	cr_expect_eq(fx.cfg.log_level, LOG_DEBUG);
	cr_assert_eq(fx.cfg.nallow_uids, 2);
	cr_expect_eq(fx.cfg.allow_uids[0], 0);
	cr_expect_eq(fx.cfg.allow_uids[1], 1234);
	cr_assert_eq(fx.cfg.nallow_gids, 1);
	cr_expect_eq(fx.cfg.allow_gids[0], 5678);
	cr_expect_eq(fx.cfg.max_clients, 3);
	cr_expect_eq(fx.cfg.max_regions, 100);
	cr_expect_eq(fx.cfg.max_mapped, 2 * GiB);
	cr_expect_eq(fx.cfg.max_fds, 7);
}

Test(faultd_config, sizes_take_k_m_g_in_either_case, FIXTURE)
{
	static const struct {
		const char *value;
		uint64_t bytes;
	} sizes[] = {
		{ "4096", 4096 }, { "1k", 1024 }, { "3K", 3072 }, { "4m", 4 * MiB },
		{ "5M", 5 * MiB }, { "1g", GiB }, { "16G", 16 * GiB }, { "1048576G", 1ull << 50 },
	};
	char text[128];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(text, sizeof(text), "[limits]\nmapped = %s\n", sizes[i].value);
		cr_assert_eq(load(text), 0, "%s", fx.err);
		cr_expect_eq(fx.cfg.max_mapped, sizes[i].bytes, "%s: %llu", sizes[i].value,
			     (unsigned long long)fx.cfg.max_mapped);
	}
	cr_assert_eq(load("[server]\nresident_limit = 4M\n"), 0, "%s", fx.err);
	cr_expect_eq(fx.cfg.resident_limit, 4 * MiB);
	cr_assert_eq(load("[server]\nresident_limit = 0\n"), 0, "%s", fx.err);
	cr_expect_eq(fx.cfg.resident_limit, 0);
}

/* A load applies over what the config holds; a list the file sets replaces the old one. */
Test(faultd_config, a_load_applies_over_the_config_and_lists_add_up_within_a_file, FIXTURE)
{
	cr_assert_eq(load("[access]\n"
			  "allow_users = 1, 2\n"
			  "  3\n"                 /* a continuation line */
			  "allow_users = 4\n"     /* repeated */
			  "allow_groups = 10\n"
			  "[limits]\nclients = 5\n"), 0, "%s", fx.err);
	cr_assert_eq(fx.cfg.nallow_uids, 4);
	for (unsigned i = 0; i < 4; i++)
		cr_expect_eq(fx.cfg.allow_uids[i], i + 1);

	/* keys left out keep their values, lists too; a list set is replaced */
	cr_assert_eq(load("[access]\nallow_users = 7\n"), 0, "%s", fx.err);
	cr_assert_eq(fx.cfg.nallow_uids, 1);
	cr_expect_eq(fx.cfg.allow_uids[0], 7);
	cr_assert_eq(fx.cfg.nallow_gids, 1);
	cr_expect_eq(fx.cfg.allow_gids[0], 10);
	cr_expect_eq(fx.cfg.max_clients, 5);

	/* an empty list: only root and faultd's own user */
	cr_assert_eq(load("[access]\nallow_users =\n"), 0, "%s", fx.err);
	cr_expect_eq(fx.cfg.nallow_uids, 0);
	cr_expect_eq(fx.cfg.nallow_gids, 1);
}

Test(faultd_config, socket_group_none_and_numeric, FIXTURE)
{
	cr_assert_eq(load("[socket]\ngroup = 4321\n"), 0, "%s", fx.err);
	cr_expect_str_eq(fx.cfg.socket_group, "4321");
	cr_expect_eq(fx.cfg.socket_gid, 4321);
	cr_assert_eq(load("[socket]\ngroup =\n"), 0, "%s", fx.err);
	cr_expect_str_eq(fx.cfg.socket_group, "");
	cr_expect_eq(fx.cfg.socket_gid, (gid_t)-1);
}

/* ------------------------------------------------------------ what does not */

static const struct bad {
	const char *text;
	int line;          /* the line the message names */
	const char *says;  /* a part of it, which names the key */
} bad_files[] = {
	/* not numbers */
	{ "[limits]\nclients = 12x\n", 2, "[limits] clients: '12x' is not a number" },
	{ "[limits]\nclients = -1\n", 2, "[limits] clients: '-1' is not a number" },
	{ "[server]\nthreads = 0x10\n", 2, "[server] threads: '0x10' is not a number" },
	{ "[server]\nthreads = +3\n", 2, "[server] threads: '+3' is not a number" },
	{ "[server]\nthreads =\n", 2, "[server] threads: no value" },
	/* unknown keys and sections */
	{ "[limits]\nclient = 3\n", 2, "[limits] client: unknown key" },
	{ "[socket]\nclients = 3\n", 2, "[socket] clients: unknown key" },
	{ "\n[limit]\nclients = 3\n", 2, "unknown section [limit]" },
	{ "[socket]\nmode = 0600\n[bogus]\n", 3, "unknown section [bogus]" }, /* no keys in it */
	{ "clients = 3\n[limits]\n", 1, "clients: a key before any [section]" },
	/* users and groups */
	{ "[access]\nallow_users = root, faultd-test-no-such-user\n", 2,
	  "[access] allow_users: unknown user 'faultd-test-no-such-user'" },
	{ "[access]\nallow_groups = faultd-test-no-such-group\n", 2,
	  "[access] allow_groups: unknown group 'faultd-test-no-such-group'" },
	{ "[access]\nallow_users = 4294967295\n", 2, "[access] allow_users: '4294967295' is not a user id" },
	{ "[socket]\ngroup = faultd-test-no-such-group\n", 2,
	  "[socket] group: unknown group 'faultd-test-no-such-group'" },
	/* modes */
	{ "[socket]\nmode = 0689\n", 2, "[socket] mode: '0689' is not an octal mode" },
	{ "[socket]\nmode = rw-rw----\n", 2, "[socket] mode: 'rw-rw----' is not an octal mode" },
	{ "[socket]\nmode = 0x1b0\n", 2, "[socket] mode: '0x1b0' is not an octal mode" },
	{ "[socket]\nmode = 01777\n", 2, "[socket] mode: '01777' is out of range (0 to 0777)" },
	/* sizes */
	{ "[limits]\nmapped = 4T\n", 2, "[limits] mapped: '4T' is not a size" },
	{ "[limits]\nmapped = 16GiB\n", 2, "[limits] mapped: '16GiB' is not a size" },
	{ "[limits]\nmapped = 1.5G\n", 2, "[limits] mapped: '1.5G' is not a size" },
	{ "[limits]\nmapped = 17179869184G\n", 2, "[limits] mapped: '17179869184G' is out of range" },
	{ "[limits]\nmapped = 99999999999999999999\n", 2, "[limits] mapped: '99999999999999999999' is out of range" },
	{ "[server]\nresident_limit = 1M\n", 2,
	  "[server] resident_limit: '1M' is out of range (0, or at least 4M)" },
	/* limits of 0, and others out of range */
	{ "[limits]\nclients = 0\n", 2, "[limits] clients: '0' is out of range (1 to 65536)" },
	{ "[limits]\nregions = 0\n", 2, "[limits] regions: '0' is out of range (1 to 1048576)" },
	{ "[limits]\nmapped = 0\n", 2, "[limits] mapped: '0' is out of range (at least 1)" },
	{ "[limits]\ndescriptors = 0\n", 2, "[limits] descriptors: '0' is out of range (1 to 1048576)" },
	{ "[server]\nthreads = 1025\n", 2, "[server] threads: '1025' is out of range (0 to 1024)" },
	{ "[limits]\nclients = 4294967296\n", 2, "[limits] clients: '4294967296' is out of range" },
	/* the rest */
	{ "[server]\nlog_level = verbose\n", 2, "[server] log_level: 'verbose' is not a level" },
	{ "[socket]\npath = faultd.sock\n", 2, "[socket] path: 'faultd.sock' is not an absolute path" },
	{ "[socket]\nmode = 0600\n\nmode = 0640\n", 4, "[socket] mode: set twice (first on line 2)" },
	{ "[limits]\nclients = 3\n  4\n", 3, "[limits] clients: set twice (first on line 2); an indented line" },
	{ "[socket]\nthis is not a key\n", 2, "syntax error" },
	{ "[socket\nmode = 0600\n", 1, "syntax error" },
};

/* Each bad file: -EINVAL, a message naming file:line and key, the config untouched. */
Test(faultd_config, each_error_names_file_line_and_key_and_changes_nothing, FIXTURE)
{
	struct faultd_config before;
	char where[PATH_MAX + 16];

	/* a config with lists of its own, which a failed load must neither free nor change */
	cr_assert_eq(load("[access]\nallow_users = 11, 12\nallow_groups = 13\n[limits]\nclients = 9\n"), 0,
		     "%s", fx.err);
	memcpy(&before, &fx.cfg, sizeof(before));

	for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
		const struct bad *b = &bad_files[i];
		int ret = load(b->text);

		snprintf(where, sizeof(where), "%s:%d: ", fx.path, b->line);
		cr_expect_eq(ret, -EINVAL, "file %zu: %d (%s)", i, ret, fx.err);
		cr_expect(!strncmp(fx.err, where, strlen(where)), "file %zu: '%s' does not start with '%s'", i,
			  fx.err, where);
		cr_expect_not_null(strstr(fx.err, b->says), "file %zu: '%s' does not say '%s'", i, fx.err,
				   b->says);
		cr_assert(!memcmp(&before, &fx.cfg, sizeof(before)), "file %zu changed the config", i);
	}
	cr_expect_eq(fx.cfg.allow_uids[0], 11);
	cr_expect_eq(fx.cfg.allow_uids[1], 12);
	cr_expect_eq(fx.cfg.allow_gids[0], 13);
}

/* Keys applied before the error are not kept either: the file is parsed into a copy. */
Test(faultd_config, a_failed_load_keeps_nothing_it_read_before_the_error, FIXTURE)
{
	struct faultd_config before;

	memcpy(&before, &fx.cfg, sizeof(before));
	cr_assert_eq(load("[socket]\nmode = 0600\n[access]\nallow_users = 5, 6\n"
			  "[limits]\nclients = 2\ndescriptors = 0\n"), -EINVAL);
	cr_expect_not_null(strstr(fx.err, ":7: [limits] descriptors:"), "%s", fx.err);
	cr_assert(!memcmp(&before, &fx.cfg, sizeof(before)));
	expect_defaults(&fx.cfg);
}

Test(faultd_config, a_line_longer_than_inih_takes_is_an_error, FIXTURE)
{
	char text[400];

	memset(text, 'x', sizeof(text));
	memcpy(text, "[limits]\n#", 10);
	memcpy(text + sizeof(text) - 16, "\nclients = 3\n", 14); /* with its NUL */
	cr_assert_eq(load(text), -EINVAL);
	cr_expect_not_null(strstr(fx.err, ":2: line longer than"), "%s", fx.err);
	cr_expect_eq(fx.cfg.max_clients, 64);

	/* the longest line that is taken: 198 characters and its newline */
	memset(text, ' ', sizeof(text));
	memcpy(text, "[limits]\nclients = 3", 20);
	text[9 + 198] = '\n';
	text[9 + 199] = '\0';
	cr_assert_eq(load(text), 0, "%s", fx.err);
	cr_expect_eq(fx.cfg.max_clients, 3);
}

Test(faultd_config, a_file_that_cannot_be_read, FIXTURE)
{
	char missing[PATH_MAX];

	snprintf(missing, sizeof(missing), "%s/none.conf", fx.dir);
	cr_expect_eq(faultd_config_load(&fx.cfg, missing, fx.err, sizeof(fx.err)), -ENOENT);
	cr_expect_not_null(strstr(fx.err, "none.conf: No such file or directory"), "%s", fx.err);
	cr_expect_eq(faultd_config_load(&fx.cfg, fx.dir, fx.err, sizeof(fx.err)), -EISDIR);
	cr_expect_not_null(strstr(fx.err, ": Is a directory"), "%s", fx.err);
	cr_expect_eq(faultd_config_load(&fx.cfg, missing, NULL, 0), -ENOENT);
	expect_defaults(&fx.cfg);
}

/* ------------------------------------------------------------ access */

Test(faultd_config, who_may_connect, FIXTURE)
{
	uid_t self = geteuid();

	cr_assert(self != 54321 && self != 7777 && self != 2002, "the test's ids include ours (%u)", self);
	/* empty lists: root and faultd's own user only */
	cr_expect(faultd_config_allows(&fx.cfg, 0, 12345));
	cr_expect(faultd_config_allows(&fx.cfg, self, 12345));
	cr_expect_not(faultd_config_allows(&fx.cfg, 54321, 54321));

	cr_assert_eq(load("[access]\nallow_users = 1001\nallow_groups = 2002\n"), 0, "%s", fx.err);
	cr_expect(faultd_config_allows(&fx.cfg, 1001, 7));
	cr_expect(faultd_config_allows(&fx.cfg, 7777, 2002));
	cr_expect_not(faultd_config_allows(&fx.cfg, 7777, 7));
	cr_expect_not(faultd_config_allows(&fx.cfg, 2002, 1001)); /* uids and gids are not mixed */
}
