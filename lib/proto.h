/* SPDX-License-Identifier: MIT */
/*
 * faultd's wire protocol: the messages a client (lib/remote.c), faultd
 * (daemon/) and faultctl exchange over a SOCK_SEQPACKET UNIX socket, one
 * message per packet, and the one function that decodes and checks them
 * (proto.c; the fuzzer's target, tests/fuzz/).
 *
 * Every message is a fixed header and a body whose size the type fixes
 * (STATUS_REPLY and ERROR: a fixed part and a bounded tail). Integers are
 * in the host's byte order: both ends are on one machine. Descriptors ride
 * with SCM_RIGHTS, and only on the messages listed below; a message with
 * descriptors it should not have, or without the ones it must have, is
 * malformed. A peer that sends a malformed message is answered with ERROR
 * and disconnected; nothing it sent is acted on.
 */
#ifndef LAZYMAP_PROTO_H
#define LAZYMAP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

#define PROTO_MAGIC   0x6c7a6d70u /* "lzmp" */
#define PROTO_VERSION 1u
#define PROTO_MAX     4096u        /* bytes of the largest message, header included */
#define PROTO_MAX_FDS 1u           /* descriptors one message may carry */

enum proto_type {
	/* client -> faultd; each is answered by REPLY (or the reply named) */
	MSG_HELLO = 1,    /* fd: the client's userfaultfd; -> HELLO_REPLY */
	MSG_OPEN,         /* fd: a backing file; -> OPEN_REPLY with the cache's memfd */
	MSG_MAP,          /* a region the client has mapped and registered */
	MSG_UNMAP,        /* write back [addr, addr+len) (the client munmaps after) */
	MSG_PROTECT,      /* the client changed the protection of a range */
	MSG_ADVISE,       /* lazymap_advise on a range */
	MSG_PREFETCH,     /* fill the missing pages of a range in the background */
	MSG_SYNC,         /* write back a range durably */
	MSG_STATS,        /* -> STATS_REPLY */
	MSG_STATUS,       /* (faultctl) -> STATUS_REPLY */
	MSG_BYE,          /* closing: faultd writes back what it wrote, durably -> REPLY */
	/* faultd -> client */
	MSG_HELLO_REPLY = 64,
	MSG_OPEN_REPLY,   /* fd: the cache's memfd */
	MSG_REPLY,        /* the result of a request */
	MSG_STATS_REPLY,
	MSG_STATUS_REPLY,
	MSG_EVENT,        /* a change of the client's layout faultd applied (unasked) */
	MSG_ERROR,        /* a malformed message: the connection is closed after it */
};

struct proto_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t len;     /* bytes, header included: exactly the packet's */
	uint32_t seq;     /* a request's number, echoed by its reply; 0 for unasked messages */
};

struct proto_hello {
	uint64_t features; /* what the client's UFFDIO_API enabled */
	uint32_t flags;    /* 0 (none defined yet) */
	uint32_t pad;
};

struct proto_hello_reply {
	uint64_t client_id;
	uint32_t max_regions;
	uint32_t pad;
	uint64_t max_mapped;  /* bytes */
};

struct proto_open {
	uint32_t flags;   /* OPEN_DIRECT, OPEN_WRITE */
	uint32_t pad;
};
#define OPEN_DIRECT 0x1u /* read the file with O_DIRECT */
#define OPEN_WRITE  0x2u /* a shared writable map will write back through it */

struct proto_open_reply {
	uint64_t cache_id;
	uint64_t size;    /* the file's size */
};

struct proto_map {
	uint64_t addr, len;   /* page aligned, len > 0, no wrap */
	uint64_t cache_id;    /* 0: anonymous (LAZYMAP_ANON) */
	uint64_t pgoff;       /* the file page at addr (0 for anonymous) */
	uint32_t prot;        /* subset of PROT_READ | PROT_WRITE */
	uint32_t flags;       /* LAZYMAP_PRIVATE or LAZYMAP_SHARED, | LAZYMAP_ANON, | LAZYMAP_DIRECT */
};

/* UNMAP, PROTECT, ADVISE, PREFETCH, SYNC */
/* lazymap_fill_unit as an advice (MSG_ADVISE, lzm_mm_advise): this | pages. */
#define LZM_ADV_FILL_UNIT 0x80000000u

struct proto_range {
	uint64_t addr, len;   /* page aligned, len > 0, no wrap */
	uint32_t arg;         /* PROTECT: prot; ADVISE: LAZYMAP_ADV_*, or
	                       * LZM_ADV_FILL_UNIT | pages; else 0 */
	uint32_t pad;
};

struct proto_reply {
	int32_t err;          /* 0 or -errno */
	uint32_t pad;
};

#define PROTO_STATS_MAX 64 /* counters a STATS_REPLY carries at most */
struct proto_stats_reply {
	uint32_t n;            /* counters that follow, in lazymap_stats' order */
	uint32_t pad;
	uint64_t v[PROTO_STATS_MAX];
};

/* One client in STATUS_REPLY. */
struct proto_client {
	uint64_t client_id;
	int32_t pid;
	uint32_t uid;
	uint32_t gid;
	uint32_t regions;
	uint64_t mapped;       /* bytes */
	uint64_t resident;     /* bytes of its regions in memory, as far as faultd knows */
	uint64_t faults;
	uint64_t cache_hits;   /* faults served from a page already in the cache */
	uint64_t bytes_read, bytes_written;
	uint64_t lat_p50_ns, lat_p99_ns;
};

#define PROTO_STATUS_MAX 32 /* clients one STATUS_REPLY lists (PROTO_MAX bounds it) */
struct proto_status_reply {
	uint32_t nclients;     /* connected now */
	uint32_t n;            /* listed below: min(nclients, PROTO_STATUS_MAX) */
	uint64_t cache_pages;  /* pages in every cache */
	uint64_t uptime_ns;
	/* followed by n struct proto_client (struct proto_msg: status_c) */
};

/* MSG_EVENT: one userfaultfd event message (struct uffd_msg), as read. */
struct proto_event {
	uint8_t msg[32];
};

#define PROTO_ERROR_MAX 200
struct proto_error {
	int32_t err;
	uint32_t pad;
	/* followed by up to PROTO_ERROR_MAX bytes of text, not NUL-terminated
	 * (struct proto_msg: error_text) */
};

/* A decoded message: the header, and the body of its type (copied). */
struct proto_msg {
	struct proto_hdr hdr;
	union {
		struct proto_hello hello;
		struct proto_hello_reply hello_reply;
		struct proto_open open;
		struct proto_open_reply open_reply;
		struct proto_map map;
		struct proto_range range;
		struct proto_reply reply;
		struct proto_stats_reply stats;
		struct proto_event event;
		struct {
			struct proto_status_reply status;
			struct proto_client status_c[PROTO_STATUS_MAX];
		};
		struct {
			struct proto_error error;
			char error_text[PROTO_ERROR_MAX + 1]; /* NUL-terminated copy */
		};
	} u;
	int fd;                /* the descriptor it carried, or -1 */
};

/*
 * Decode and check one packet of len bytes that carried nfds descriptors:
 * magic, version, len equal to the header's, a known type, the body's exact
 * size (or its bounds), the descriptors it must carry (and no others), and
 * every field's range (page-aligned ranges that do not wrap, prot, flags,
 * advice, counts within their arrays). 0 and *out filled (out->fd is -1:
 * the caller sets it), or:
 *   -EPROTO     bad magic, or len shorter than the header;
 *   -EPROTONOSUPPORT  another version;
 *   -EMSGSIZE   len larger than PROTO_MAX, or not the header's len;
 *   -EBADMSG    unknown type, a body of the wrong size, a field out of range;
 *   -EBADF      descriptors missing, or present where none belong.
 * Never reads beyond len; never fails on alignment of buf.
 */
int lzm_proto_decode(const void *buf, size_t len, unsigned nfds, struct proto_msg *out);

/*
 * Encode a message of type with seq and body (size bytes, the type's body)
 * into buf (PROTO_MAX bytes); returns its length, or -EMSGSIZE.
 */
int lzm_proto_encode(void *buf, unsigned type, uint32_t seq, const void *body, size_t size);

/*
 * Send one message on sock, with fd (-1: none) by SCM_RIGHTS; MSG_NOSIGNAL
 * always, MSG_DONTWAIT if nowait. 0 or -errno (-EAGAIN, -EPIPE ...).
 */
int lzm_proto_send(int sock, unsigned type, uint32_t seq, const void *body, size_t size, int fd,
		   bool nowait);

/*
 * Receive and decode one message from sock (blocking unless nowait). The
 * descriptor it carried is in out->fd (close-on-exec), or -1; on any error
 * every descriptor received is closed. 0, -ECONNRESET on end of file or a
 * reset peer, -EAGAIN (nowait), a decode error above, -EBADF for more
 * descriptors than PROTO_MAX_FDS (the kernel's MSG_CTRUNC too), -EMFILE when
 * our descriptor table had no room for any (out->hdr is the message's
 * header, unchecked: its seq says which request it answers), or -errno.
 */
int lzm_proto_recv(int sock, struct proto_msg *out, bool nowait);

/* Connect a SOCK_SEQPACKET socket (close-on-exec) to path: 0 and *sockp,
 * -ENAMETOOLONG, or what connect(2) gives (-ENOENT nothing there,
 * -ECONNREFUSED nobody listening, -EACCES ...). */
int lzm_proto_connect(const char *path, int *sockp);

/* The name of a message type, for logs ("map", "hello" ...); "?" if unknown. */
const char *lzm_proto_name(unsigned type);

#pragma GCC visibility pop

#endif /* LAZYMAP_PROTO_H */
