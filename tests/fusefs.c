// SPDX-License-Identifier: MIT
/*
 * Test fixture server: a FUSE file system with one read-only file, /data,
 * whose byte at offset o is fusefs_byte(o) and whose chosen pages fail every
 * read with EIO, so that a real read of a backing file fails in the kernel.
 * Tests drive it through tests/fusefs.h; run by hand:
 *
 *	fusefs --size BYTES [--bad 10-12,4000] [--page-cache] [--rmdir] [--debug] MOUNTPOINT
 *
 * It stays in the foreground, serves until SIGTERM/SIGINT or an unmount, then
 * unmounts (and with --rmdir removes MOUNTPOINT, so that a test process that
 * dies without fusefs_stop() leaves nothing behind). Exit status: 0, or an
 * errno when it could not start (EINVAL for bad arguments), which
 * fusefs_start() hands back negated. One thread serves all requests.
 *
 * Caching. By default every open gets FOPEN_DIRECT_IO: each read(2), pread,
 * O_DIRECT read and io_uring read reaches this server as it is (split into
 * requests of at most max_pages pages, 1 MiB here), never served from the
 * page cache, so a bad page fails every time and a good one is read afresh
 * each time; that is what a test of a file backend wants. The kernel still
 * maps such a file MAP_PRIVATE, through the page cache (dropped at each
 * mmap); MAP_SHARED needs FUSE_CAP_DIRECT_IO_ALLOW_MMAP, which we ask for
 * where libfuse has it (not Debian 12's 3.14: there it fails with ENODEV).
 * --page-cache opens without direct_io (and without keep_cache, so each open
 * drops the cache): MAP_SHARED works, reads go through readahead and the
 * page cache, O_DIRECT reads still come here. A page whose read failed is
 * never marked up to date, so bad pages fail every time in both modes; only
 * good pages get cached.
 *
 * A request that touches a bad page fails whole; it is never shortened to
 * the good part (to the kernel a short read means EOF, and in page-cache
 * mode it would shrink i_size). What read(2) returns is then the kernel's
 * choice: -1/EIO when the read's first request fails, else a short count up
 * to the failed request (direct_io) or the first bad page (page cache);
 * except O_DIRECT in page-cache mode, where any failed request fails the
 * whole read with EIO.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define FUSE_USE_VERSION 31
#define FUSEFS_SERVER

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fusefs.h"

#define DATA_INO 2
#define DATA_NAME "data"

/* Set once in main() before the session starts; read-only afterwards. */
struct fusefs_range {
	uint64_t first, last;   /* page indexes, inclusive */
};

static struct {
	uint64_t size;
	uint64_t page_size;
	struct fusefs_range *bad;
	size_t nbad;
	bool page_cache;
	bool rmdir;
	time_t mtime;
} cfg;

/* ---- the bad-page list */

/* "10-12,4000" → ranges; false on anything else. */
static bool parse_bad(const char *spec)
{
	const char *p = spec;

	while (*p) {
		struct fusefs_range r, *grown;
		char *end;

		if (*p < '0' || *p > '9')
			return false;
		errno = 0;
		r.first = strtoull(p, &end, 10);
		if (errno)
			return false;
		r.last = r.first;
		p = end;
		if (*p == '-') {
			p++;
			if (*p < '0' || *p > '9')
				return false;
			r.last = strtoull(p, &end, 10);
			if (errno || r.last < r.first)
				return false;
			p = end;
		}
		if (*p == ',' && p[1])
			p++;
		else if (*p)
			return false;

		grown = realloc(cfg.bad, (cfg.nbad + 1) * sizeof(*grown));
		if (!grown)
			return false;
		cfg.bad = grown;
		cfg.bad[cfg.nbad++] = r;
	}
	return true;
}

/* Does [off, off + len) touch a bad page? len > 0. */
static bool touches_bad(uint64_t off, uint64_t len)
{
	uint64_t first = off / cfg.page_size;
	uint64_t last = (off + len - 1) / cfg.page_size;

	for (size_t i = 0; i < cfg.nbad; i++)
		if (cfg.bad[i].first <= last && cfg.bad[i].last >= first)
			return true;
	return false;
}

/* ---- FUSE operations */

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = (blksize_t)cfg.page_size;
	st->st_atime = st->st_mtime = st->st_ctime = cfg.mtime;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)cfg.size;
		st->st_blocks = (blkcnt_t)((cfg.size + 511) / 512);
	}
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	(void)conn;
#ifdef FUSE_CAP_DIRECT_IO_ALLOW_MMAP
	if (conn->capable & FUSE_CAP_DIRECT_IO_ALLOW_MMAP)
		conn->want |= FUSE_CAP_DIRECT_IO_ALLOW_MMAP;
#endif
}

/* Nothing here ever changes: let the kernel keep names and attributes. */
#define TIMEOUT 3600.0

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, DATA_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DATA_INO;
	e.attr_timeout = TIMEOUT;
	e.entry_timeout = TIMEOUT;
	fill_attr(DATA_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != DATA_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, TIMEOUT);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const struct {
		const char *name;
		fuse_ino_t ino;
	} ents[] = { { ".", FUSE_ROOT_ID }, { "..", FUSE_ROOT_ID }, { DATA_NAME, DATA_INO } };
	char buf[512];
	size_t used = 0;

	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	/* off is the index of the next entry; each entry carries off + 1. */
	for (size_t i = (size_t)off; off >= 0 && i < sizeof(ents) / sizeof(ents[0]); i++) {
		struct stat st;
		size_t n;

		fill_attr(ents[i].ino, &st);
		n = fuse_add_direntry(req, buf + used, size - used, ents[i].name, &st,
				      (off_t)(i + 1));
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DATA_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	fi->direct_io = !cfg.page_cache;
	fi->keep_cache = 0;
	fuse_reply_open(req, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t len, off_t off,
		    struct fuse_file_info *fi)
{
	uint64_t o = (uint64_t)off;
	uint8_t *buf;

	(void)fi;
	if (ino != DATA_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (o >= cfg.size || len == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (len > cfg.size - o)
		len = (size_t)(cfg.size - o);   /* short read at EOF */
	if (touches_bad(o, len)) {
		fuse_reply_err(req, EIO);
		return;
	}
	buf = malloc(len);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = 0; i < len; i++)
		buf[i] = fusefs_byte(o + i);
	fuse_reply_buf(req, (const char *)buf, len);
	free(buf);
}

static const struct fuse_lowlevel_ops ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.read = fs_read,
};

/* ---- main */

static void usage(FILE *f, const char *prog)
{
	fprintf(f, "usage: %s --size BYTES [--bad PAGE[-PAGE],...] [--page-cache] [--rmdir] [--debug] MOUNTPOINT\n",
		prog);
}

/* Exit status for a failure at start: an errno that fusefs_start() returns. */
static int start_errno(void)
{
	return errno > 0 && errno < 127 ? errno : EIO;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "bad", required_argument, NULL, 'b' },
		{ "page-cache", no_argument, NULL, 'c' },
		{ "rmdir", no_argument, NULL, 'r' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se;
	bool have_size = false, debug = false;
	const char *mnt;
	int opt, err;

	cfg.page_size = (uint64_t)sysconf(_SC_PAGESIZE);
	cfg.mtime = time(NULL);
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		char *end;

		switch (opt) {
		case 's':
			errno = 0;
			cfg.size = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' ||
			    cfg.size > (uint64_t)INT64_MAX) {
				fprintf(stderr, "fusefs: bad --size '%s'\n", optarg);
				return EINVAL;
			}
			have_size = true;
			break;
		case 'b':
			if (!parse_bad(optarg)) {
				fprintf(stderr, "fusefs: bad --bad '%s' (want e.g. 10-12,4000)\n",
					optarg);
				return EINVAL;
			}
			break;
		case 'c':
			cfg.page_cache = true;
			break;
		case 'r':
			cfg.rmdir = true;
			break;
		case 'd':
			debug = true;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 0;
		default:
			usage(stderr, argv[0]);
			return EINVAL;
		}
	}
	if (!have_size || optind != argc - 1) {
		usage(stderr, argv[0]);
		return EINVAL;
	}
	mnt = argv[optind];

	/*
	 * ro: write opens fail with EROFS even for root. fsname/subtype show
	 * up in /proc/mounts as "lazymap-fusefs ... fuse.fusefs".
	 */
	if (fuse_opt_add_arg(&args, argv[0]) ||
	    fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, "ro,default_permissions,fsname=lazymap-fusefs,subtype=fusefs") ||
	    (debug && fuse_opt_add_arg(&args, "-d")))
		return ENOMEM;

	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		return EINVAL;
	/* SIGTERM/SIGINT/SIGHUP end the loop, after which we unmount. */
	if (fuse_set_signal_handlers(se) != 0) {
		err = start_errno();
		goto out_destroy;
	}
	if (fuse_session_mount(se, mnt) != 0) {
		err = start_errno();
		goto out_signals;
	}
	err = fuse_session_loop(se) ? EIO : 0;
	fuse_session_unmount(se);
	if (cfg.rmdir)
		rmdir(mnt);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	free(cfg.bad);
	return err;
}
