// SPDX-License-Identifier: MIT
/*
 * faultd's wire protocol (proto.h): the one decoder that checks every packet
 * a peer sends before anything reads a field of it, the encoder, and sending
 * and receiving one message with its descriptor over a SOCK_SEQPACKET socket.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "proto.h"

/* The top of user address space a range may reach: x86-64 and arm64's
 * 4-level tables. faultd never maps above it, so a range past it is a lie. */
#define PROTO_ADDR_END (1ull << 47)

/* The kernel's largest errno (include/linux/err.h). */
#define PROTO_ERRNO_MAX 4095

/* Descriptors one recvmsg makes room for: more than PROTO_MAX_FDS, so that a
 * peer sending a few too many is seen (and its descriptors closed by us);
 * beyond this the kernel truncates (MSG_CTRUNC) and closes the rest itself.
 * The room for credentials is for a socket with SO_PASSCRED: the kernel puts
 * them first, and without it the one descriptor would not fit. */
#define PROTO_RECV_FDS 8

/* A decoded STATUS_REPLY or ERROR is its packet's body byte for byte: the
 * tail right after the fixed part, as on the wire (the tests and the fuzzer
 * encode it back from &msg.u). And every message fits in PROTO_MAX. */
_Static_assert(offsetof(struct proto_msg, u.status_c) ==
	       offsetof(struct proto_msg, u.status) + sizeof(struct proto_status_reply),
	       "status_c must follow status");
_Static_assert(offsetof(struct proto_msg, u.error_text) ==
	       offsetof(struct proto_msg, u.error) + sizeof(struct proto_error),
	       "error_text must follow error");
_Static_assert(sizeof(struct proto_hdr) + sizeof(struct proto_status_reply) +
	       PROTO_STATUS_MAX * sizeof(struct proto_client) <= PROTO_MAX, "STATUS_REPLY fits");
_Static_assert(sizeof(struct proto_hdr) + sizeof(struct proto_error) + PROTO_ERROR_MAX <= PROTO_MAX,
	       "ERROR fits");
_Static_assert(sizeof(struct proto_hdr) + sizeof(struct proto_stats_reply) <= PROTO_MAX,
	       "STATS_REPLY fits");

/* --------------------------------------------------------------- decoding */

/* The body's size for a type, or, for the two with a tail, its fixed part. */
static bool body_size(unsigned type, size_t *size, unsigned *fds)
{
	*fds = 0;
	switch (type) {
	case MSG_HELLO:
		*fds = 1;
		*size = sizeof(struct proto_hello);
		return true;
	case MSG_OPEN:
		*fds = 1;
		*size = sizeof(struct proto_open);
		return true;
	case MSG_MAP:
		*size = sizeof(struct proto_map);
		return true;
	case MSG_UNMAP:
	case MSG_PROTECT:
	case MSG_ADVISE:
	case MSG_PREFETCH:
	case MSG_SYNC:
		*size = sizeof(struct proto_range);
		return true;
	case MSG_STATS:
	case MSG_STATUS:
	case MSG_BYE:
		*size = 0;
		return true;
	case MSG_HELLO_REPLY:
		*size = sizeof(struct proto_hello_reply);
		return true;
	case MSG_OPEN_REPLY:
		*fds = 1;
		*size = sizeof(struct proto_open_reply);
		return true;
	case MSG_REPLY:
		*size = sizeof(struct proto_reply);
		return true;
	case MSG_STATS_REPLY:
		*size = sizeof(struct proto_stats_reply);
		return true;
	case MSG_STATUS_REPLY:
		*size = sizeof(struct proto_status_reply);
		return true;
	case MSG_EVENT:
		*size = sizeof(struct proto_event);
		return true;
	case MSG_ERROR:
		*size = sizeof(struct proto_error);
		return true;
	}
	return false;
}

/* Page aligned, not empty, and wholly below PROTO_ADDR_END (so no wrap). */
static bool range_ok(uint64_t addr, uint64_t len)
{
	return page_aligned(addr) && page_aligned(len) && len > 0 && addr < PROTO_ADDR_END &&
	       len <= PROTO_ADDR_END - addr;
}

static bool prot_ok(uint32_t prot)
{
	return !(prot & ~(uint32_t)(PROT_READ | PROT_WRITE));
}

/* What lazymap_map would accept, less HINT and FIXED: the client has already
 * placed the region, and the daemon must not be told how to place one. */
static bool map_ok(const struct proto_map *m)
{
	uint32_t kind = m->flags & (LAZYMAP_PRIVATE | LAZYMAP_SHARED);
	uint32_t known = LAZYMAP_PRIVATE | LAZYMAP_SHARED | LAZYMAP_ANON | LAZYMAP_DIRECT;

	if (!range_ok(m->addr, m->len) || !prot_ok(m->prot))
		return false;
	if ((m->flags & ~known) || (kind != LAZYMAP_PRIVATE && kind != LAZYMAP_SHARED))
		return false;
	if (m->flags & LAZYMAP_ANON)
		return !(m->flags & LAZYMAP_DIRECT) && m->cache_id == 0 && m->pgoff == 0;
	/* The file pages it maps must have offsets the page cache can index
	 * (pgoff + pages <= 2^47 / page): written so that it cannot overflow. */
	return m->cache_id != 0 && m->pgoff <= (PROTO_ADDR_END - m->len) / lzm_page_size;
}

static bool range_arg_ok(unsigned type, const struct proto_range *r)
{
	if (!range_ok(r->addr, r->len) || r->pad)
		return false;
	switch (type) {
	case MSG_PROTECT:
		return prot_ok(r->arg);
	case MSG_ADVISE:
		if (r->arg & LZM_ADV_FILL_UNIT)
			return (r->arg & ~LZM_ADV_FILL_UNIT) <= LAZYMAP_FILL_UNIT_MAX / lzm_page_size;
		return r->arg <= LAZYMAP_ADV_WILLNEED;
	default:
		return r->arg == 0;
	}
}

static bool errno_ok(int32_t err)
{
	return err <= 0 && err >= -PROTO_ERRNO_MAX;
}

/* Every field's range, on the copy in m (tail sizes are checked already). */
static bool fields_ok(const struct proto_msg *m)
{
	switch (m->hdr.type) {
	case MSG_HELLO:
		return m->u.hello.flags == 0 && m->u.hello.pad == 0;
	case MSG_OPEN:
		return !(m->u.open.flags & ~(OPEN_DIRECT | OPEN_WRITE)) && m->u.open.pad == 0;
	case MSG_MAP:
		return map_ok(&m->u.map);
	case MSG_UNMAP:
	case MSG_PROTECT:
	case MSG_ADVISE:
	case MSG_PREFETCH:
	case MSG_SYNC:
		return range_arg_ok(m->hdr.type, &m->u.range);
	case MSG_HELLO_REPLY:
		return m->u.hello_reply.pad == 0;
	case MSG_REPLY:
		return errno_ok(m->u.reply.err) && m->u.reply.pad == 0;
	case MSG_STATS_REPLY:
		return m->u.stats.n <= PROTO_STATS_MAX && m->u.stats.pad == 0;
	case MSG_EVENT:
		return m->hdr.seq == 0; /* unasked: it answers no request */
	case MSG_ERROR:
		return errno_ok(m->u.error.err) && m->u.error.err != 0 && m->u.error.pad == 0;
	default:
		return true; /* STATUS_REPLY's counts are checked with its size */
	}
}

int lzm_proto_decode(const void *buf, size_t len, unsigned nfds, struct proto_msg *out)
{
	const unsigned char *p = buf;
	size_t fixed, body;
	unsigned want_fds;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	if (len < sizeof(out->hdr))
		return -EPROTO;
	/* Nothing past the header is looked at before len is known to be
	 * what the header says, and the body what the type says. */
	memcpy(&out->hdr, p, sizeof(out->hdr));
	if (out->hdr.magic != PROTO_MAGIC)
		return -EPROTO;
	if (out->hdr.version != PROTO_VERSION)
		return -EPROTONOSUPPORT;
	if (len > PROTO_MAX || out->hdr.len != len)
		return -EMSGSIZE;
	if (!body_size(out->hdr.type, &fixed, &want_fds))
		return -EBADMSG;
	body = len - sizeof(out->hdr);
	p += sizeof(out->hdr);

	switch (out->hdr.type) {
	case MSG_STATUS_REPLY: {
		struct proto_status_reply *s = &out->u.status;

		if (body < fixed)
			return -EBADMSG;
		memcpy(s, p, fixed);
		if (s->n > PROTO_STATUS_MAX || s->n > s->nclients ||
		    body != fixed + s->n * sizeof(struct proto_client))
			return -EBADMSG;
		memcpy(out->u.status_c, p + fixed, body - fixed);
		break;
	}
	case MSG_ERROR:
		if (body < fixed || body - fixed > PROTO_ERROR_MAX)
			return -EBADMSG;
		memcpy(&out->u.error, p, fixed);
		memcpy(out->u.error_text, p + fixed, body - fixed);
		/* error_text[body - fixed] is the memset's NUL */
		break;
	default:
		if (body != fixed)
			return -EBADMSG;
		memcpy(&out->u, p, body);
	}
	if (nfds != want_fds)
		return -EBADF;
	if (!fields_ok(out))
		return -EBADMSG;
	return 0;
}

/* ------------------------------------------------------- encoding, sending */

int lzm_proto_encode(void *buf, unsigned type, uint32_t seq, const void *body, size_t size)
{
	struct proto_hdr hdr = {
		.magic = PROTO_MAGIC,
		.version = PROTO_VERSION,
		.type = (uint16_t)type,
		.seq = seq,
	};

	if (size > PROTO_MAX - sizeof(hdr))
		return -EMSGSIZE;
	hdr.len = (uint32_t)(sizeof(hdr) + size);
	memcpy(buf, &hdr, sizeof(hdr));
	if (size)
		memcpy((char *)buf + sizeof(hdr), body, size);
	return (int)hdr.len;
}

int lzm_proto_send(int sock, unsigned type, uint32_t seq, const void *body, size_t size, int fd,
		   bool nowait)
{
	unsigned char buf[PROTO_MAX];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = buf };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int len = lzm_proto_encode(buf, type, seq, body, size);
	ssize_t n;

	if (len < 0)
		return len;
	iov.iov_len = (size_t)len;
	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | (nowait ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* A SEQPACKET send is whole or fails; a short one would be a stream. */
	return n == len ? 0 : -EMSGSIZE;
}

/* ---------------------------------------------------------------- receiving */

static void close_fds(const int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

int lzm_proto_connect(const char *path, int *sockp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s, ret = 0;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		ret = -errno;
		close(s);
		return ret;
	}
	*sockp = s;
	return 0;
}

int lzm_proto_recv(int sock, struct proto_msg *out, bool nowait)
{
	/* One byte over the largest message: a longer packet is cut there and
	 * flagged MSG_TRUNC, never mistaken for a shorter one. */
	unsigned char buf[PROTO_MAX + 1];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * PROTO_RECV_FDS)];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	int fds[PROTO_RECV_FDS];
	unsigned nfds = 0;
	bool too_many = false;
	ssize_t n;
	int err;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | (nowait ? MSG_DONTWAIT : 0));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;

	/* Every descriptor the kernel installed is ours to close, whatever
	 * else is wrong with the packet: gather them all before judging it. */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		size_t k;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (nfds < PROTO_RECV_FDS)
				fds[nfds++] = fd;
			else {
				close(fd);
				too_many = true;
			}
		}
	}

	/* A SEQPACKET peer that has gone reads as a 0-byte packet; so does an
	 * empty one, which is malformed anyway: either way the session ends. */
	if (n == 0)
		err = -ECONNRESET;
	else if (mh.msg_flags & MSG_TRUNC)
		err = -EMSGSIZE;
	else if ((mh.msg_flags & MSG_CTRUNC) && !nfds && (size_t)n >= sizeof(out->hdr)) {
		/*
		 * Descriptors sent, none installed: our own table is full (or
		 * at RLIMIT_NOFILE). The limit is ours, not the peer's fault:
		 * the header tells the caller which message it could not take.
		 */
		memcpy(&out->hdr, buf, sizeof(out->hdr));
		err = -EMFILE;
	} else if ((mh.msg_flags & MSG_CTRUNC) || too_many || nfds > PROTO_MAX_FDS)
		err = -EBADF;
	else
		err = lzm_proto_decode(buf, (size_t)n, nfds, out);
	if (err) {
		close_fds(fds, nfds);
		out->fd = -1;
		return err;
	}
	out->fd = nfds ? fds[0] : -1;
	return 0;
}

/* ------------------------------------------------------------------- names */

const char *lzm_proto_name(unsigned type)
{
	switch (type) {
	case MSG_HELLO:        return "hello";
	case MSG_OPEN:         return "open";
	case MSG_MAP:          return "map";
	case MSG_UNMAP:        return "unmap";
	case MSG_PROTECT:      return "protect";
	case MSG_ADVISE:       return "advise";
	case MSG_PREFETCH:     return "prefetch";
	case MSG_SYNC:         return "sync";
	case MSG_STATS:        return "stats";
	case MSG_STATUS:       return "status";
	case MSG_BYE:          return "bye";
	case MSG_HELLO_REPLY:  return "hello_reply";
	case MSG_OPEN_REPLY:   return "open_reply";
	case MSG_REPLY:        return "reply";
	case MSG_STATS_REPLY:  return "stats_reply";
	case MSG_STATUS_REPLY: return "status_reply";
	case MSG_EVENT:        return "event";
	case MSG_ERROR:        return "error";
	}
	return "?";
}
