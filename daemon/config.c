// SPDX-License-Identifier: MIT
/*
 * faultd.conf: libinih splits the file into sections and keys; each key is
 * checked against one table (keys[]) and applied to a copy of the config,
 * which replaces the caller's only when the whole file is good. The first
 * error stops the parse and is reported with its file and line.
 */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "log.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MiB (1024ull * 1024)

/* ---- the keys */

enum kind {
	K_PATH,   /* an absolute path that fits sun_path */
	K_MODE,   /* octal digits */
	K_GROUP,  /* a group name or number, or "" */
	K_COUNT,  /* unsigned, decimal */
	K_SIZE,   /* size_t, decimal with an optional K, M or G */
	K_BYTES,  /* uint64_t, the same */
	K_LEVEL,  /* a level name: flog_level_name(LOG_ERR..LOG_DEBUG) */
	K_USERS,  /* a list of users: allow_uids */
	K_GROUPS, /* a list of groups: allow_gids */
};

struct key {
	const char *section, *name;
	enum kind kind;
	size_t off;        /* of the field in struct faultd_config */
	uint64_t min, max; /* K_MODE, K_COUNT, K_SIZE, K_BYTES */
	bool zero_ok;      /* 0 ("none") is allowed below min */
};

#define KEY(sec, key, k, field, ...) \
	{ .section = sec, .name = key, .kind = k, .off = offsetof(struct faultd_config, field), __VA_ARGS__ }

static const struct key keys[] = {
	KEY("socket", "path",           K_PATH,   socket),
	KEY("socket", "mode",           K_MODE,   socket_mode, .max = 0777),
	KEY("socket", "group",          K_GROUP,  socket_group),
	KEY("server", "threads",        K_COUNT,  threads, .max = 1024),
	/* the library refuses a budget below 4 MiB (lazymap_open: -EINVAL) */
	KEY("server", "resident_limit", K_SIZE,   resident_limit, .min = 4 * MiB, .max = SIZE_MAX,
	    .zero_ok = true),
	KEY("server", "log_level",      K_LEVEL,  log_level),
	KEY("access", "allow_users",    K_USERS,  allow_uids),
	KEY("access", "allow_groups",   K_GROUPS, allow_gids),
	KEY("limits", "clients",        K_COUNT,  max_clients, .min = 1, .max = 65536),
	KEY("limits", "regions",        K_COUNT,  max_regions, .min = 1, .max = 1u << 20),
	KEY("limits", "mapped",         K_BYTES,  max_mapped, .min = 1, .max = UINT64_MAX),
	/* fs.nr_open's default: more could never be held anyway */
	KEY("limits", "descriptors",    K_COUNT,  max_fds, .min = 1, .max = 1u << 20),
};

void faultd_config_defaults(struct faultd_config *c)
{
	*c = (struct faultd_config){
		.socket = FAULTD_SOCKET_DEFAULT,
		.socket_mode = 0660,
		.socket_gid = (gid_t)-1,
		.threads = 0,
		.resident_limit = 0,
		.log_level = LOG_INFO,
		.max_clients = 64,
		.max_regions = 4096,
		.max_mapped = 1024 * 1024 * MiB, /* 1 TiB */
		.max_fds = 64,
	};
}

void faultd_config_free(struct faultd_config *c)
{
	free(c->allow_uids);
	free(c->allow_gids);
	c->allow_uids = NULL;
	c->allow_gids = NULL;
	c->nallow_uids = 0;
	c->nallow_gids = 0;
}

bool faultd_config_allows(const struct faultd_config *c, uid_t uid, gid_t gid)
{
	if (uid == 0 || uid == geteuid())
		return true;
	for (size_t i = 0; i < c->nallow_uids; i++)
		if (c->allow_uids[i] == uid)
			return true;
	for (size_t i = 0; i < c->nallow_gids; i++)
		if (c->allow_gids[i] == gid)
			return true;
	return false;
}

/* ---- one load */

struct parse {
	struct faultd_config cfg;     /* the caller's, with what the file set so far */
	bool own_uids, own_gids;      /* cfg's list was made by this load (else the caller's) */
	int seen[ARRAY_SIZE(keys)];   /* the line each key was set on, 0: not yet */
	FILE *f;
	char *buf;                    /* getline's */
	size_t cap;
	int line;                     /* lines read: the one libinih is on */
	bool indented;                /* that line starts with white space */
	int err;                      /* the first error, -errno; 0: none yet */
	int err_line;                 /* its line; 0: the file as a whole */
	char msg[320];
};

__attribute__((format(printf, 3, 4)))
static int fail(struct parse *p, int err, const char *fmt, ...)
{
	va_list ap;

	if (p->err)
		return 0;
	p->err = err;
	p->err_line = p->line;
	va_start(ap, fmt);
	vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
	va_end(ap);
	return 0; /* libinih's "error" */
}

static bool section_known(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (!strcmp(keys[i].section, name))
			return true;
	return false;
}

/*
 * libinih's reader, in place of fgets: it counts lines, so that errors
 * found in on_key can name theirs, and refuses a line libinih would cut
 * into pieces. It also finds section headers, since libinih says nothing of
 * a section without keys; it reads them as libinih does (after a first
 * line's BOM and leading space, up to ']'). Returns NULL at the end or the
 * first error, which ends the parse.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct parse *p = stream;
	const char *s, *end;
	ssize_t n;

	if (p->err)
		return NULL;
	errno = 0;
	n = getline(&p->buf, &p->cap, p->f);
	if (n < 0) {
		int e = errno;

		if (ferror(p->f)) {
			e = e ? e : EIO;
			p->line = 0; /* the file, not a line: "path: reason" */
			fail(p, -e, "%s", strerror(e));
		} else if (e == ENOMEM) {
			fail(p, -ENOMEM, "out of memory");
		}
		return NULL;
	}
	p->line++;
	if (memchr(p->buf, '\0', (size_t)n)) {
		fail(p, -EINVAL, "a NUL byte: not a text file");
		return NULL;
	}
	if (n > num - 1) {
		fail(p, -EINVAL, "line longer than %d characters", num - 2);
		return NULL;
	}
	s = p->buf;
	if (p->line == 1 && !strncmp(s, "\xef\xbb\xbf", 3))
		s += 3;
	p->indented = isspace((unsigned char)*s);
	while (isspace((unsigned char)*s))
		s++;
	if (*s == '[' && (end = strchr(s, ']'))) {
		char name[64];

		snprintf(name, sizeof(name), "%.*s", (int)(end - s - 1), s + 1);
		if ((size_t)(end - s - 1) >= sizeof(name) || !section_known(name)) {
			fail(p, -EINVAL, "unknown section [%.*s]", (int)(end - s - 1), s + 1);
			return NULL;
		}
	}
	memcpy(str, p->buf, (size_t)n + 1);
	return str;
}

/* ---- values */

/* Digits of base, at least one: no sign, space or prefix (strtoull takes all three). */
static int parse_digits(const char *s, unsigned base, uint64_t *v, const char **end)
{
	uint64_t x = 0;
	const char *d = s;

	for (; *d >= '0' && *d < (char)('0' + base); d++) {
		if (x > (UINT64_MAX - (uint64_t)(*d - '0')) / base)
			return -ERANGE;
		x = x * base + (uint64_t)(*d - '0');
	}
	if (d == s)
		return -EINVAL;
	*v = x;
	*end = d;
	return 0;
}

static int parse_number(const char *s, unsigned base, uint64_t *v)
{
	const char *end;
	int err = parse_digits(s, base, v, &end);

	return err ? err : *end ? -EINVAL : 0;
}

/* A number of bytes, optionally followed by K, M or G (powers of 1024). */
static int parse_size(const char *s, uint64_t *v)
{
	const char *end;
	unsigned shift = 0;
	int err = parse_digits(s, 10, v, &end);

	if (err)
		return err;
	switch (*end) {
	case '\0': break;
	case 'K': case 'k': shift = 10; break;
	case 'M': case 'm': shift = 20; break;
	case 'G': case 'g': shift = 30; break;
	default: return -EINVAL;
	}
	if (shift && end[1])
		return -EINVAL;
	if (*v > UINT64_MAX >> shift)
		return -ERANGE;
	*v <<= shift;
	return 0;
}

/* v in bytes, with the largest suffix that divides it. */
static void format_size(char *out, size_t len, uint64_t v)
{
	static const char suffix[] = "GMK";

	for (unsigned i = 0; i < 3; i++) {
		unsigned shift = 30 - 10 * i;

		if (v && !(v & ((1ull << shift) - 1))) {
			snprintf(out, len, "%llu%c", (unsigned long long)(v >> shift), suffix[i]);
			return;
		}
	}
	snprintf(out, len, "%llu", (unsigned long long)v);
}

static void format_value(const struct key *k, char *out, size_t len, uint64_t v)
{
	if (k->kind == K_MODE)
		snprintf(out, len, "%#llo", (unsigned long long)v);
	else if (k->kind == K_SIZE || k->kind == K_BYTES)
		format_size(out, len, v);
	else
		snprintf(out, len, "%llu", (unsigned long long)v);
}

/* "1 to 65536", "0, or at least 4M" */
static void format_range(const struct key *k, char *out, size_t len)
{
	char lo[32], hi[32];

	format_value(k, lo, sizeof(lo), k->min);
	format_value(k, hi, sizeof(hi), k->max);
	if (k->max == UINT64_MAX || (k->kind == K_SIZE && k->max == SIZE_MAX))
		snprintf(out, len, "%sat least %s", k->zero_ok ? "0, or " : "", lo);
	else
		snprintf(out, len, "%s%s to %s", k->zero_ok ? "0, or " : "", lo, hi);
}

/*
 * A user or group: all digits, its number (which need not have a name);
 * else its name (getpwnam_r/getgrnam_r). Returns 0, -ENOENT when there is no
 * such name, -ERANGE for (uid_t)-1 and beyond, or the name service's -errno.
 */
static int resolve_id(const char *s, bool group, uint32_t *id)
{
	struct passwd pw, *pwp = NULL;
	struct group gr, *grp = NULL;
	size_t len = 1024;
	uint64_t v;
	char *buf;
	int err;

	if (!s[strspn(s, "0123456789")]) {
		err = parse_number(s, 10, &v);
		if (err)
			return err;
		if (v >= UINT32_MAX)
			return -ERANGE;
		*id = (uint32_t)v;
		return 0;
	}
	for (;;) {
		buf = malloc(len);
		if (!buf)
			return -ENOMEM;
		if (group)
			err = getgrnam_r(s, &gr, buf, len, &grp);
		else
			err = getpwnam_r(s, &pw, buf, len, &pwp);
		if (err != ERANGE || len >= (1u << 20))
			break;
		free(buf);
		len *= 2;
	}
	if (!err && (grp || pwp))
		*id = group ? grp->gr_gid : pwp->pw_uid;
	free(buf);
	if (grp || pwp)
		return 0;
	/* getpwnam(3): these, or 0, say "not found" */
	if (!err || err == ENOENT || err == ESRCH || err == EBADF || err == EPERM)
		return -ENOENT;
	return -err;
}

/* Names are well under libinih's line; ids are 32 bits wide. */
static int add_ids(struct parse *p, const struct key *k, const char *value)
{
	bool group = k->kind == K_GROUPS;
	uint32_t **list = group ? (uint32_t **)&p->cfg.allow_gids : (uint32_t **)&p->cfg.allow_uids;
	size_t *n = group ? &p->cfg.nallow_gids : &p->cfg.nallow_uids;
	const char *what = group ? "group" : "user";
	char name[256];

	_Static_assert(sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t),
		       "uid_t and gid_t are 32 bits");
	while (*value) {
		size_t len = strcspn(value, ",");
		const char *s = value, *e = value + len;
		uint32_t id, *grown;
		int err;

		value = *e ? e + 1 : e;
		while (s < e && isspace((unsigned char)*s))
			s++;
		while (e > s && isspace((unsigned char)e[-1]))
			e--;
		if (s == e)
			continue; /* "a, b," and the like */
		snprintf(name, sizeof(name), "%.*s", (int)(e - s), s);
		err = resolve_id(name, group, &id);
		if (err == -ENOENT)
			return fail(p, -EINVAL, "[%s] %s: unknown %s '%s'", k->section, k->name, what, name);
		if (err == -EINVAL || err == -ERANGE)
			return fail(p, -EINVAL, "[%s] %s: '%s' is not a %s id (0 to %u)", k->section, k->name,
				    name, what, UINT32_MAX - 1);
		if (err)
			return fail(p, err, "[%s] %s: cannot look up %s '%s': %s", k->section, k->name,
				    what, name, strerror(-err));
		grown = realloc(*list, (*n + 1) * sizeof(**list));
		if (!grown)
			return fail(p, -ENOMEM, "out of memory");
		*list = grown;
		(*list)[(*n)++] = id;
	}
	return 1;
}

static int set(struct parse *p, const struct key *k, const char *value)
{
	void *field = (char *)&p->cfg + k->off;
	char range[96];
	uint64_t v = 0;
	uint32_t gid;
	int err;

	switch (k->kind) {
	case K_PATH:
		if (value[0] != '/')
			return fail(p, -EINVAL, "[%s] %s: '%s' is not an absolute path", k->section,
				    k->name, value);
		if (strlen(value) >= sizeof(p->cfg.socket))
			return fail(p, -EINVAL, "[%s] %s: longer than a socket's path may be (%zu bytes)",
				    k->section, k->name, sizeof(p->cfg.socket) - 1);
		strcpy(field, value);
		return 1;
	case K_GROUP:
		if (!*value) {
			p->cfg.socket_group[0] = '\0';
			p->cfg.socket_gid = (gid_t)-1;
			return 1;
		}
		if (strlen(value) >= sizeof(p->cfg.socket_group))
			return fail(p, -EINVAL, "[%s] %s: a group name is shorter than %zu bytes",
				    k->section, k->name, sizeof(p->cfg.socket_group));
		err = resolve_id(value, true, &gid);
		if (err == -ENOENT)
			return fail(p, -EINVAL, "[%s] %s: unknown group '%s'", k->section, k->name, value);
		if (err == -EINVAL || err == -ERANGE)
			return fail(p, -EINVAL, "[%s] %s: '%s' is not a group id (0 to %u)", k->section,
				    k->name, value, UINT32_MAX - 1);
		if (err)
			return fail(p, err, "[%s] %s: cannot look up group '%s': %s", k->section, k->name,
				    value, strerror(-err));
		strcpy(field, value);
		p->cfg.socket_gid = gid;
		return 1;
	case K_LEVEL:
		for (int l = LOG_ERR; l <= LOG_DEBUG; l++) {
			if (!strcmp(value, flog_level_name(l))) {
				*(int *)field = l;
				return 1;
			}
		}
		return fail(p, -EINVAL, "[%s] %s: '%s' is not a level (error, warning, notice, info or debug)",
			    k->section, k->name, value);
	case K_USERS:
	case K_GROUPS:
		return add_ids(p, k, value);
	case K_MODE:
		err = parse_number(value, 8, &v);
		if (err == -EINVAL)
			return fail(p, -EINVAL, "[%s] %s: '%s' is not an octal mode (such as 0660)",
				    k->section, k->name, value);
		break;
	case K_COUNT:
		err = parse_number(value, 10, &v);
		if (err == -EINVAL)
			return fail(p, -EINVAL, "[%s] %s: '%s' is not a number", k->section, k->name, value);
		break;
	case K_SIZE:
	case K_BYTES:
		err = parse_size(value, &v);
		if (err == -EINVAL)
			return fail(p, -EINVAL, "[%s] %s: '%s' is not a size (a number of bytes, "
				    "optionally followed by K, M or G)", k->section, k->name, value);
		break;
	default:
		return fail(p, -EINVAL, "[%s] %s: no parser for this key", k->section, k->name);
	}

	/* the numbers */
	format_range(k, range, sizeof(range));
	if (err == -ERANGE || v > k->max || (v < k->min && !(v == 0 && k->zero_ok)))
		return fail(p, -EINVAL, "[%s] %s: '%s' is out of range (%s)", k->section, k->name,
			    value, range);
	switch (k->kind) {
	case K_SIZE:
		*(size_t *)field = (size_t)v;
		break;
	case K_BYTES:
		*(uint64_t *)field = v;
		break;
	default: /* K_MODE, K_COUNT: max fits an unsigned */
		*(unsigned *)field = (unsigned)v;
		break;
	}
	return 1;
}

/* libinih's handler: one key = value (or an indented continuation line). */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
	struct parse *p = user;
	const struct key *k = NULL;
	size_t i;

	if (p->err)
		return 1; /* already failed; read_line ends the parse */
	if (!*section)
		return fail(p, -EINVAL, "%s: a key before any [section]", name);
	if (!section_known(section))
		return fail(p, -EINVAL, "unknown section [%s]", section);
	for (i = 0; i < ARRAY_SIZE(keys) && !k; i++)
		if (!strcmp(keys[i].section, section) && !strcmp(keys[i].name, name))
			k = &keys[i];
	if (!k)
		return fail(p, -EINVAL, "[%s] %s: unknown key", section, name);
	i = (size_t)(k - keys);

	if (k->kind == K_USERS || k->kind == K_GROUPS) {
		/* The file's first mention replaces the list; later ones add to it. */
		bool *own = k->kind == K_USERS ? &p->own_uids : &p->own_gids;

		if (!*own) {
			*own = true;
			if (k->kind == K_USERS) {
				p->cfg.allow_uids = NULL;
				p->cfg.nallow_uids = 0;
			} else {
				p->cfg.allow_gids = NULL;
				p->cfg.nallow_gids = 0;
			}
		}
	} else if (p->seen[i]) {
		return fail(p, -EINVAL, "[%s] %s: set twice (first on line %d)%s", section, name,
			    p->seen[i], p->indented ? "; an indented line continues the key above it" : "");
	}
	p->seen[i] = p->line;
	if (!*value && k->kind != K_GROUP && k->kind != K_USERS && k->kind != K_GROUPS)
		return fail(p, -EINVAL, "[%s] %s: no value", section, name);
	return set(p, k, value);
}

int faultd_config_load(struct faultd_config *c, const char *path, char *err, size_t errlen)
{
	struct parse p = { .cfg = *c };
	int ret;

	if (errlen)
		err[0] = '\0';
	p.f = fopen(path, "re");
	if (!p.f) {
		ret = -errno;
		if (errlen)
			snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	ret = ini_parse_stream(read_line, &p, on_key, &p);
	if (ret < 0) /* libinih's own allocation (a build without INI_USE_STACK) */
		fail(&p, -ENOMEM, "out of memory");
	else if (ret > 0 && (!p.err || (p.err_line && ret < p.err_line))) {
		/* a line libinih could not split, before any error of ours */
		p.err = 0;
		p.line = ret;
		fail(&p, -EINVAL, "syntax error: expected [section], key = value or a comment");
	}
	fclose(p.f);
	free(p.buf);

	if (p.err) {
		if (p.own_uids)
			free(p.cfg.allow_uids);
		if (p.own_gids)
			free(p.cfg.allow_gids);
		if (errlen && p.err_line)
			snprintf(err, errlen, "%s:%d: %s", path, p.err_line, p.msg);
		else if (errlen)
			snprintf(err, errlen, "%s: %s", path, p.msg);
		return p.err;
	}
	if (p.own_uids)
		free(c->allow_uids);
	if (p.own_gids)
		free(c->allow_gids);
	*c = p.cfg;
	return 0;
}
