/* SPDX-License-Identifier: MIT */
/*
 * faultd's configuration: the settings, their defaults, the file that sets
 * them (faultd.conf, ini format, read with libinih) and the one question the
 * access list answers: may this peer connect.
 */
#ifndef FAULTD_CONFIG_H
#define FAULTD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Where systemd's RuntimeDirectory=faultd (faultd.service) puts the socket. */
#define FAULTD_SOCKET_DEFAULT "/run/faultd/faultd.sock"

/*
 * Every setting, with its key in the file. faultd_config_defaults() gives
 * the values faultd.conf documents. The two lists are the struct's own
 * (faultd_config_free); everything else is plain data.
 */
struct faultd_config {
	/* [socket] */
	char socket[108];         /* path: absolute, fits sockaddr_un.sun_path */
	unsigned socket_mode;     /* mode: octal, at most 0777; 0660 */
	char socket_group[64];    /* group: as written, "" for none (the socket keeps faultd's) */
	gid_t socket_gid;         /* group resolved; (gid_t)-1 when socket_group is "" */
	/* [server] */
	unsigned threads;         /* threads: handler threads, 0 = one per CPU */
	size_t resident_limit;    /* resident_limit: bytes, 0 = none, else >= 4 MiB */
	int log_level;            /* log_level: a syslog LOG_* level; LOG_INFO */
	/* [access]: who may connect besides root and faultd's own euid */
	uid_t *allow_uids;        /* allow_users */
	size_t nallow_uids;
	gid_t *allow_gids;        /* allow_groups */
	size_t nallow_gids;
	/* [limits]: per client unless said; none may be 0 */
	unsigned max_clients;     /* clients: connected at once, in all */
	unsigned max_regions;     /* regions */
	uint64_t max_mapped;      /* mapped: bytes in all its regions */
	unsigned max_fds;         /* descriptors: faultd holds for it (backing files) */
};

/* The defaults, with empty access lists. Allocates nothing. */
void faultd_config_defaults(struct faultd_config *c);

/*
 * Reads path and applies the keys it sets over *c, which holds defaults or
 * an earlier load: a key the file leaves out keeps its value. A list the
 * file sets replaces the one in *c; allow_users and allow_groups may be
 * repeated or continued on indented lines, and add up within the file.
 *
 * On failure *c is unchanged and err holds a message for the user (when
 * errlen > 0): "path:line: [section] key: what is wrong" for the content,
 * "path: reason" when the file cannot be read. err is "" on success.
 *
 * Returns 0, or -errno: fopen's and read's own (-ENOENT, -EACCES, -EISDIR,
 * -EIO ...); -EINVAL for the content (a syntax error, an unknown section or
 * key, a key set twice, a value that is not a number, a size, an octal mode
 * or a level name, a value out of range, an unknown user or group, a line
 * longer than libinih takes); -ENOMEM; a name service's errno when a user
 * or group lookup fails other than by not finding it.
 */
int faultd_config_load(struct faultd_config *c, const char *path, char *err, size_t errlen);

/* Frees the lists and empties them; the rest keeps its values. Idempotent. */
void faultd_config_free(struct faultd_config *c);

/*
 * May a peer with these credentials (SO_PEERCRED: its effective uid and gid
 * when it connected) talk to faultd? Root and faultd's own euid always may;
 * anyone else if its uid is in allow_users or its gid in allow_groups.
 * Supplementary groups are NOT checked (SO_PEERCRED does not carry them;
 * SO_PEERGROUPS would): a user let in through a group must connect with it
 * as the effective group of the connecting process (its primary group, or
 * after newgrp/sg).
 */
bool faultd_config_allows(const struct faultd_config *c, uid_t uid, gid_t gid);

#endif
