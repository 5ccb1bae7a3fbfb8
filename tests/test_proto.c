// SPDX-License-Identifier: MIT
/*
 * faultd's wire protocol (lib/proto.c): one test per class of malformed
 * packet, each expecting the errno proto.h gives it, then every message type
 * through encode, send and receive over a real SOCK_SEQPACKET socketpair,
 * with a memfd as the descriptor where one rides along.
 */
#include <criterion/criterion.h>
#include <sys/socket.h>

#include "common.h"
#include "proto.h"

#define RW (PROT_READ | PROT_WRITE)

static const unsigned all_types[] = {
	MSG_HELLO, MSG_OPEN, MSG_MAP, MSG_UNMAP, MSG_PROTECT, MSG_ADVISE,
	MSG_PREFETCH, MSG_SYNC, MSG_STATS, MSG_STATUS, MSG_BYE,
	MSG_HELLO_REPLY, MSG_OPEN_REPLY, MSG_REPLY, MSG_STATS_REPLY,
	MSG_STATUS_REPLY, MSG_EVENT, MSG_ERROR,
};
#define NTYPES (sizeof(all_types) / sizeof(all_types[0]))

static const unsigned range_types[] = { MSG_UNMAP, MSG_PROTECT, MSG_ADVISE, MSG_PREFETCH, MSG_SYNC };
#define NRANGE (sizeof(range_types) / sizeof(range_types[0]))

/* The descriptors a type must carry. */
static unsigned fds_of(unsigned type)
{
	return type == MSG_HELLO || type == MSG_OPEN || type == MSG_OPEN_REPLY;
}

static uint64_t pg(uint64_t n)
{
	return n * pgsz();
}

static void expect(int got, int want, const char *what)
{
	cr_assert_eq(got, want, "%s: %d (%s), want %d (%s)", what, got, strerror(-got), want,
		     strerror(-want));
}

/* ---- valid bodies, one per type */

#define STATUS_N 2

static struct proto_map good_map(void)
{
	return (struct proto_map){ .addr = pg(16), .len = pg(4), .cache_id = 5, .pgoff = 2,
				   .prot = RW, .flags = LAZYMAP_SHARED };
}

static struct proto_range good_range(unsigned type)
{
	return (struct proto_range){ .addr = pg(32), .len = pg(8),
				     .arg = type == MSG_PROTECT ? PROT_READ :
					    type == MSG_ADVISE  ? LAZYMAP_ADV_RANDOM : 0 };
}

/* A valid body of type into body (PROTO_MAX bytes); its size. */
static size_t good_body(unsigned type, unsigned char *body)
{
	switch (type) {
	case MSG_HELLO: {
		struct proto_hello b = { .features = 0x1234 };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_OPEN: {
		struct proto_open b = { .flags = OPEN_WRITE };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_MAP: {
		struct proto_map b = good_map();

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_UNMAP:
	case MSG_PROTECT:
	case MSG_ADVISE:
	case MSG_PREFETCH:
	case MSG_SYNC: {
		struct proto_range b = good_range(type);

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_HELLO_REPLY: {
		struct proto_hello_reply b = { .client_id = 9, .max_regions = 64, .max_mapped = 1u << 30 };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_OPEN_REPLY: {
		struct proto_open_reply b = { .cache_id = 5, .size = 12345 };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_REPLY: {
		struct proto_reply b = { .err = -ENOMEM };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_STATS_REPLY: {
		struct proto_stats_reply b = { .n = 3, .v = { 7, 8, 9 } };

		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_STATUS_REPLY: {
		struct proto_status_reply b = { .nclients = 3, .n = STATUS_N, .cache_pages = 100,
						.uptime_ns = 5000 };

		memcpy(body, &b, sizeof(b));
		for (unsigned i = 0; i < STATUS_N; i++) {
			struct proto_client c = { .client_id = i + 1, .pid = 100 + (int)i, .uid = 1000,
						  .regions = 2, .faults = 77 * i, .lat_p99_ns = 9000 };

			memcpy(body + sizeof(b) + i * sizeof(c), &c, sizeof(c));
		}
		return sizeof(b) + STATUS_N * sizeof(struct proto_client);
	}
	case MSG_EVENT: {
		struct proto_event b;

		for (unsigned i = 0; i < sizeof(b.msg); i++)
			b.msg[i] = (uint8_t)(i * 7);
		memcpy(body, &b, sizeof(b));
		return sizeof(b);
	}
	case MSG_ERROR: {
		struct proto_error b = { .err = -EBADMSG };
		static const char text[] = "map: flags 0x3";

		memcpy(body, &b, sizeof(b));
		memcpy(body + sizeof(b), text, sizeof(text) - 1);
		return sizeof(b) + sizeof(text) - 1;
	}
	default: /* STATS, STATUS, BYE */
		return 0;
	}
}

/* The seq a message carries: 0 for an event, which answers nothing. */
static uint32_t seq_of(unsigned type)
{
	return type == MSG_EVENT ? 0 : 42;
}

/* Encode and decode a body of type with nfds descriptors. */
static int dec(unsigned type, const void *body, size_t size, unsigned nfds, struct proto_msg *m)
{
	_Alignas(8) unsigned char buf[PROTO_MAX];
	int len = lzm_proto_encode(buf, type, seq_of(type), body, size);

	cr_assert_gt(len, 0, "encode %s: %d", lzm_proto_name(type), len);
	return lzm_proto_decode(buf, (size_t)len, nfds, m);
}

/* The same, with the descriptors its type must carry. */
static int check(unsigned type, const void *body, size_t size)
{
	struct proto_msg m;

	return dec(type, body, size, fds_of(type), &m);
}

static int check_map(struct proto_map b)
{
	return check(MSG_MAP, &b, sizeof(b));
}

static int check_range(unsigned type, struct proto_range b)
{
	return check(type, &b, sizeof(b));
}

/* A valid packet of type, whole (header included), into pkt; its length. */
static size_t good_packet(unsigned type, unsigned char *pkt)
{
	unsigned char body[PROTO_MAX];
	size_t size = good_body(type, body);
	int len = lzm_proto_encode(pkt, type, seq_of(type), body, size);

	cr_assert_gt(len, 0);
	return (size_t)len;
}

/* ---- sockets and descriptors */

static void seqpacket_pair(int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0, "socketpair: %s",
		     strerror(errno));
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d, "/proc/self/fd: %s", strerror(errno));
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static int memfd(const char *name)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
	return fd;
}

/* One packet of len raw bytes, with nfds descriptors in one SCM_RIGHTS. */
static void send_raw(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 32)];
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	cr_assert_leq(nfds, 32);
	if (nfds) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	cr_assert_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len, "sendmsg: %s", strerror(errno));
}

/* Send a packet with nfds fresh memfds (our copies closed after), receive
 * it: what recv returns. No descriptor may be left open by the failure. */
static int recv_with_fds(const void *pkt, size_t len, unsigned nfds)
{
	struct proto_msg m;
	int sv[2], fds[32], before, ret;

	seqpacket_pair(sv);
	before = count_fds();
	for (unsigned i = 0; i < nfds; i++)
		fds[i] = memfd("proto");
	send_raw(sv[0], pkt, len, fds, nfds);
	for (unsigned i = 0; i < nfds; i++)
		close(fds[i]);
	ret = lzm_proto_recv(sv[1], &m, false);
	if (ret == 0) {
		if (m.fd >= 0)
			close(m.fd);
	} else {
		cr_assert_eq(m.fd, -1, "a failed recv hands out descriptor %d", m.fd);
	}
	cr_assert_eq(count_fds(), before, "recv (%d) left %d descriptors open", ret,
		     count_fds() - before);
	close(sv[0]);
	close(sv[1]);
	return ret;
}

/* ---- the header */

Test(proto, every_valid_message_decodes)
{
	unsigned char body[PROTO_MAX];

	for (unsigned i = 0; i < NTYPES; i++) {
		unsigned t = all_types[i];

		expect(check(t, body, good_body(t, body)), 0, lzm_proto_name(t));
	}
}

Test(proto, a_bad_magic_is_refused_with_EPROTO)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_BYE, pkt);
	struct proto_msg m;

	pkt[0] ^= 1;
	expect(lzm_proto_decode(pkt, len, 0, &m), -EPROTO, "magic");
}

Test(proto, another_version_is_refused_with_EPROTONOSUPPORT)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_BYE, pkt);
	struct proto_msg m;
	uint16_t versions[] = { 0, PROTO_VERSION + 1, 0xffff };

	for (unsigned i = 0; i < 3; i++) {
		memcpy(pkt + offsetof(struct proto_hdr, version), &versions[i], 2);
		expect(lzm_proto_decode(pkt, len, 0, &m), -EPROTONOSUPPORT, "version");
	}
}

Test(proto, a_packet_shorter_than_the_header_is_refused_with_EPROTO)
{
	unsigned char pkt[PROTO_MAX];
	struct proto_msg m;

	good_packet(MSG_BYE, pkt);
	for (size_t len = 0; len < sizeof(struct proto_hdr); len++)
		expect(lzm_proto_decode(pkt, len, 0, &m), -EPROTO, "a truncated header");
}

Test(proto, a_len_that_is_not_the_packets_is_refused_with_EMSGSIZE)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_MAP, pkt);
	struct proto_msg m;
	uint32_t hlen;

	/* a packet cut short, and one with a byte too many */
	expect(lzm_proto_decode(pkt, len - 1, 0, &m), -EMSGSIZE, "a packet shorter than its len");
	expect(lzm_proto_decode(pkt, len + 1, 0, &m), -EMSGSIZE, "a packet longer than its len");
	/* the header lying about the packet */
	hlen = (uint32_t)len + 8;
	memcpy(pkt + offsetof(struct proto_hdr, len), &hlen, 4);
	expect(lzm_proto_decode(pkt, len, 0, &m), -EMSGSIZE, "a len past the packet");
	hlen = 0;
	memcpy(pkt + offsetof(struct proto_hdr, len), &hlen, 4);
	expect(lzm_proto_decode(pkt, len, 0, &m), -EMSGSIZE, "a len of 0");
}

/* A header claiming len bytes of type, at the start of a len-byte buffer. */
static unsigned char *oversize_packet(unsigned type, size_t len)
{
	unsigned char *pkt = calloc(1, len);
	struct proto_hdr h = { .magic = PROTO_MAGIC, .version = PROTO_VERSION, .type = (uint16_t)type,
			       .len = (uint32_t)len, .seq = 1 };

	cr_assert_not_null(pkt);
	memcpy(pkt, &h, sizeof(h));
	return pkt;
}

Test(proto, a_packet_over_PROTO_MAX_is_refused_with_EMSGSIZE)
{
	unsigned char *pkt = oversize_packet(MSG_STATUS_REPLY, PROTO_MAX + 1);
	struct proto_msg m;

	expect(lzm_proto_decode(pkt, PROTO_MAX + 1, 0, &m), -EMSGSIZE, "PROTO_MAX + 1 bytes");
	free(pkt);
}

Test(proto, an_oversize_packet_on_a_socket_is_refused_and_its_descriptor_closed)
{
	size_t sizes[] = { PROTO_MAX + 1, PROTO_MAX + 2, 3 * PROTO_MAX };

	for (unsigned i = 0; i < 3; i++) {
		unsigned char *pkt = oversize_packet(MSG_HELLO, sizes[i]);

		expect(recv_with_fds(pkt, sizes[i], 1), -EMSGSIZE, "an oversize hello");
		expect(recv_with_fds(pkt, sizes[i], 0), -EMSGSIZE, "an oversize hello, no descriptor");
		free(pkt);
	}
}

Test(proto, an_oversize_packet_of_garbage_is_refused_with_EMSGSIZE)
{
	unsigned char *pkt = calloc(1, 2 * PROTO_MAX);

	/* cut short by the kernel (MSG_TRUNC): what the first bytes say is moot */
	cr_assert_not_null(pkt);
	expect(recv_with_fds(pkt, 2 * PROTO_MAX, 1), -EMSGSIZE, "2 * PROTO_MAX zeros");
	free(pkt);
}

Test(proto, a_receiver_passing_credentials_still_gets_its_descriptor)
{
	struct proto_hello h = { 0 };
	struct proto_msg m;
	int sv[2], on = 1, fd = memfd("hello");

	/* SO_PASSCRED puts a credentials message ahead of the descriptors */
	seqpacket_pair(sv);
	cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
	expect(lzm_proto_send(sv[0], MSG_HELLO, 1, &h, sizeof(h), fd, false), 0, "send");
	expect(lzm_proto_recv(sv[1], &m, false), 0, "recv");
	cr_assert_geq(m.fd, 0);
	close(m.fd);
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

Test(proto, an_unknown_type_is_refused_with_EBADMSG)
{
	unsigned types[] = { 0, MSG_BYE + 1, MSG_HELLO_REPLY - 1, MSG_ERROR + 1, 0xffff };
	struct proto_msg m;

	for (unsigned i = 0; i < 5; i++) {
		expect(dec(types[i], NULL, 0, 0, &m), -EBADMSG, "an unknown type");
		cr_assert_str_eq(lzm_proto_name(types[i]), "?");
	}
}

/* ---- bodies */

Test(proto, a_body_one_byte_short_or_long_is_refused_with_EBADMSG)
{
	unsigned char body[PROTO_MAX] = { 0 };

	for (unsigned i = 0; i < NTYPES; i++) {
		unsigned t = all_types[i];
		size_t size = good_body(t, body);
		char what[64];

		snprintf(what, sizeof(what), "%s, one byte long", lzm_proto_name(t));
		/* ERROR's tail is text: one more byte of it is still an ERROR */
		if (t != MSG_ERROR)
			expect(check(t, body, size + 1), -EBADMSG, what);
		snprintf(what, sizeof(what), "%s, one byte short", lzm_proto_name(t));
		if (size && t != MSG_ERROR)
			expect(check(t, body, size - 1), -EBADMSG, what);
	}
	expect(check(MSG_ERROR, body, sizeof(struct proto_error) - 1), -EBADMSG,
	       "an error shorter than its fixed part");
	expect(check(MSG_STATUS_REPLY, body, sizeof(struct proto_status_reply) - 1), -EBADMSG,
	       "a status reply shorter than its fixed part");
}

Test(proto, a_status_reply_with_fewer_or_more_clients_than_its_n_is_refused)
{
	unsigned char body[PROTO_MAX];
	size_t size = good_body(MSG_STATUS_REPLY, body), one = sizeof(struct proto_client);

	expect(check(MSG_STATUS_REPLY, body, size - one), -EBADMSG, "one client missing");
	memset(body + size, 0, one);
	expect(check(MSG_STATUS_REPLY, body, size + one), -EBADMSG, "one client too many");
}

Test(proto, a_status_reply_listing_more_than_nclients_is_refused)
{
	unsigned char body[PROTO_MAX];
	size_t size = good_body(MSG_STATUS_REPLY, body);
	struct proto_status_reply s;

	memcpy(&s, body, sizeof(s));
	s.nclients = STATUS_N - 1;
	memcpy(body, &s, sizeof(s));
	expect(check(MSG_STATUS_REPLY, body, size), -EBADMSG, "n > nclients");
}

Test(proto, a_status_reply_listing_more_than_PROTO_STATUS_MAX_is_refused)
{
	unsigned char body[PROTO_MAX] = { 0 };
	struct proto_status_reply s = { .nclients = 1000, .n = PROTO_STATUS_MAX };
	size_t size = sizeof(s) + PROTO_STATUS_MAX * sizeof(struct proto_client);

	memcpy(body, &s, sizeof(s));
	expect(check(MSG_STATUS_REPLY, body, size), 0, "n = PROTO_STATUS_MAX");
	/* one more still fits in PROTO_MAX: only the count refuses it */
	s.n++;
	memcpy(body, &s, sizeof(s));
	size += sizeof(struct proto_client);
	cr_assert_leq(sizeof(struct proto_hdr) + size, PROTO_MAX);
	expect(check(MSG_STATUS_REPLY, body, size), -EBADMSG, "n = PROTO_STATUS_MAX + 1");
}

Test(proto, an_error_text_over_the_limit_is_refused_and_one_at_it_is_terminated)
{
	unsigned char body[PROTO_MAX];
	struct proto_error e = { .err = -EINVAL };
	struct proto_msg m;

	memcpy(body, &e, sizeof(e));
	memset(body + sizeof(e), 'x', PROTO_ERROR_MAX + 1);
	expect(check(MSG_ERROR, body, sizeof(e) + PROTO_ERROR_MAX + 1), -EBADMSG,
	       "PROTO_ERROR_MAX + 1 bytes of text");
	expect(dec(MSG_ERROR, body, sizeof(e) + PROTO_ERROR_MAX, 0, &m), 0,
	       "PROTO_ERROR_MAX bytes of text");
	cr_assert_eq(strlen(m.u.error_text), PROTO_ERROR_MAX);
	expect(dec(MSG_ERROR, body, sizeof(e), 0, &m), 0, "no text");
	cr_assert_str_eq(m.u.error_text, "");
}

Test(proto, a_stats_reply_with_more_than_PROTO_STATS_MAX_counters_is_refused)
{
	struct proto_stats_reply s = { .n = PROTO_STATS_MAX };

	expect(check(MSG_STATS_REPLY, &s, sizeof(s)), 0, "n = PROTO_STATS_MAX");
	s.n++;
	expect(check(MSG_STATS_REPLY, &s, sizeof(s)), -EBADMSG, "n = PROTO_STATS_MAX + 1");
}

Test(proto, a_reply_or_error_whose_err_is_not_a_negative_errno_is_refused)
{
	struct proto_reply r = { .err = 1 };
	unsigned char body[PROTO_MAX];
	struct proto_error e = { .err = 0 };

	expect(check(MSG_REPLY, &r, sizeof(r)), -EBADMSG, "reply err 1");
	r.err = -4096;
	expect(check(MSG_REPLY, &r, sizeof(r)), -EBADMSG, "reply err -4096");
	r.err = 0;
	expect(check(MSG_REPLY, &r, sizeof(r)), 0, "reply err 0");
	memcpy(body, &e, sizeof(e));
	expect(check(MSG_ERROR, body, sizeof(e)), -EBADMSG, "error err 0");
}

Test(proto, an_event_with_a_seq_is_refused)
{
	_Alignas(8) unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_EVENT, pkt);
	struct proto_msg m;
	uint32_t seq = 3;

	memcpy(pkt + offsetof(struct proto_hdr, seq), &seq, 4);
	expect(lzm_proto_decode(pkt, len, 0, &m), -EBADMSG, "an event answering seq 3");
}

/* ---- descriptors */

Test(proto, hello_open_and_open_reply_without_a_descriptor_are_refused_with_EBADF)
{
	unsigned types[] = { MSG_HELLO, MSG_OPEN, MSG_OPEN_REPLY };
	unsigned char body[PROTO_MAX];
	struct proto_msg m;

	for (unsigned i = 0; i < 3; i++) {
		size_t size = good_body(types[i], body);

		expect(dec(types[i], body, size, 0, &m), -EBADF, lzm_proto_name(types[i]));
		expect(dec(types[i], body, size, 2, &m), -EBADF, lzm_proto_name(types[i]));
	}
}

Test(proto, a_descriptor_on_a_map_or_any_other_type_is_refused_with_EBADF)
{
	unsigned char body[PROTO_MAX];
	struct proto_msg m;

	for (unsigned i = 0; i < NTYPES; i++) {
		unsigned t = all_types[i];

		if (!fds_of(t))
			expect(dec(t, body, good_body(t, body), 1, &m), -EBADF, lzm_proto_name(t));
	}
}

Test(proto, a_map_with_a_descriptor_on_a_socket_is_refused_and_the_descriptor_closed)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_MAP, pkt);

	expect(recv_with_fds(pkt, len, 1), -EBADF, "a map carrying a memfd");
}

Test(proto, two_descriptors_in_one_message_are_refused_and_both_closed)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_HELLO, pkt);

	expect(recv_with_fds(pkt, len, 2), -EBADF, "a hello with two descriptors");
}

Test(proto, descriptors_the_kernel_truncates_are_refused_and_all_closed)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_HELLO, pkt);

	/* more than recv makes room for: MSG_CTRUNC */
	expect(recv_with_fds(pkt, len, 32), -EBADF, "a hello with 32 descriptors");
}

/* A descriptor our full table cannot take: -EMFILE, and the header, which
 * says what the message was (faultd's reply: the request fails, the
 * connection goes on). */
Test(proto, a_descriptor_a_full_table_cannot_take_is_EMFILE_with_the_header)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_OPEN_REPLY, pkt);
	struct proto_msg m;
	struct fd_fill full;
	int sv[2], fd;

	seqpacket_pair(sv);
	fd = memfd("proto");
	send_raw(sv[0], pkt, len, &fd, 1);
	fd_table_fill(&full, sv[0]);
	int ret = lzm_proto_recv(sv[1], &m, false);

	fd_table_free(&full);
	expect(ret, -EMFILE, "an open reply at a full table");
	cr_assert_eq(m.fd, -1);
	cr_assert_eq(m.hdr.type, MSG_OPEN_REPLY);
	struct proto_hdr h;

	memcpy(&h, pkt, sizeof(h));
	cr_assert_eq(m.hdr.seq, h.seq);
	close(fd);
	close(sv[0]);
	close(sv[1]);
}

Test(proto, a_malformed_packet_on_a_socket_closes_its_descriptor)
{
	unsigned char pkt[PROTO_MAX];
	size_t len = good_packet(MSG_HELLO, pkt);

	pkt[0] ^= 1;
	expect(recv_with_fds(pkt, len, 1), -EPROTO, "a hello with a bad magic");
}

/* ---- ranges and their arguments */

Test(proto, an_unaligned_range_is_refused)
{
	struct proto_map m = good_map();

	m.addr += 8;
	expect(check_map(m), -EBADMSG, "map, addr unaligned");
	m = good_map();
	m.len -= 1;
	expect(check_map(m), -EBADMSG, "map, len unaligned");
	for (unsigned i = 0; i < NRANGE; i++) {
		struct proto_range r = good_range(range_types[i]);

		r.addr += pgsz() / 2;
		expect(check_range(range_types[i], r), -EBADMSG, lzm_proto_name(range_types[i]));
		r = good_range(range_types[i]);
		r.len += 1;
		expect(check_range(range_types[i], r), -EBADMSG, lzm_proto_name(range_types[i]));
	}
}

Test(proto, an_empty_range_is_refused)
{
	struct proto_map m = good_map();

	m.len = 0;
	expect(check_map(m), -EBADMSG, "map, len 0");
	for (unsigned i = 0; i < NRANGE; i++) {
		struct proto_range r = good_range(range_types[i]);

		r.len = 0;
		expect(check_range(range_types[i], r), -EBADMSG, lzm_proto_name(range_types[i]));
	}
}

Test(proto, a_wrapping_range_or_one_past_user_space_is_refused)
{
	uint64_t top = 1ull << 47;
	struct proto_map m = good_map();

	m.addr = UINT64_MAX - pg(1) + 1;
	m.len = pg(2);
	expect(check_map(m), -EBADMSG, "map wrapping past 2^64");
	m.addr = top - pg(1);
	expect(check_map(m), -EBADMSG, "map crossing 2^47");
	m.addr = top;
	m.len = pg(1);
	expect(check_map(m), -EBADMSG, "map at 2^47");
	m.addr = top - pg(2);
	m.len = pg(2);
	m.pgoff = 0;
	expect(check_map(m), 0, "map ending at 2^47");
	for (unsigned i = 0; i < NRANGE; i++) {
		struct proto_range r = good_range(range_types[i]);

		r.addr = pg(4);
		r.len = UINT64_MAX - pg(1) + 1;
		expect(check_range(range_types[i], r), -EBADMSG, lzm_proto_name(range_types[i]));
		r.addr = top - pg(1);
		r.len = pg(2);
		expect(check_range(range_types[i], r), -EBADMSG, lzm_proto_name(range_types[i]));
	}
}

Test(proto, a_prot_beyond_read_and_write_is_refused)
{
	struct proto_map m = good_map();
	struct proto_range r = good_range(MSG_PROTECT);

	m.prot = PROT_READ | PROT_EXEC;
	expect(check_map(m), -EBADMSG, "map PROT_EXEC");
	m.prot = 0x100;
	expect(check_map(m), -EBADMSG, "map prot 0x100");
	m.prot = PROT_NONE;
	expect(check_map(m), 0, "map PROT_NONE");
	r.arg = PROT_EXEC;
	expect(check_range(MSG_PROTECT, r), -EBADMSG, "protect PROT_EXEC");
	r.arg = RW;
	expect(check_range(MSG_PROTECT, r), 0, "protect RW");
}

Test(proto, a_map_neither_or_both_private_and_shared_is_refused)
{
	struct proto_map m = good_map();

	m.flags = 0;
	expect(check_map(m), -EBADMSG, "flags 0");
	m.flags = LAZYMAP_DIRECT;
	expect(check_map(m), -EBADMSG, "DIRECT alone");
	m.flags = LAZYMAP_PRIVATE | LAZYMAP_SHARED;
	expect(check_map(m), -EBADMSG, "PRIVATE | SHARED");
}

Test(proto, an_anonymous_direct_map_is_refused)
{
	struct proto_map m = good_map();

	m.cache_id = 0;
	m.pgoff = 0;
	m.flags = LAZYMAP_PRIVATE | LAZYMAP_ANON;
	expect(check_map(m), 0, "PRIVATE | ANON");
	m.flags |= LAZYMAP_DIRECT;
	expect(check_map(m), -EBADMSG, "PRIVATE | ANON | DIRECT");
}

Test(proto, a_map_with_hint_fixed_or_an_unknown_flag_is_refused)
{
	uint32_t extra[] = { LAZYMAP_HINT, LAZYMAP_FIXED, 0x40, 0x80000000u };

	for (unsigned i = 0; i < 4; i++) {
		struct proto_map m = good_map();

		m.flags |= extra[i];
		expect(check_map(m), -EBADMSG, "an extra flag");
	}
}

Test(proto, an_anonymous_map_with_a_cache_or_an_offset_is_refused)
{
	struct proto_map m = good_map();

	m.flags = LAZYMAP_SHARED | LAZYMAP_ANON;
	m.pgoff = 0;
	expect(check_map(m), -EBADMSG, "ANON with a cache");
	m.cache_id = 0;
	m.pgoff = 1;
	expect(check_map(m), -EBADMSG, "ANON at page 1");
	m.pgoff = 0;
	expect(check_map(m), 0, "SHARED | ANON");
}

Test(proto, a_map_without_a_cache_for_a_file_is_refused)
{
	struct proto_map m = good_map();

	m.cache_id = 0;
	expect(check_map(m), -EBADMSG, "a file map of cache 0");
	m.flags = LAZYMAP_PRIVATE | LAZYMAP_DIRECT;
	expect(check_map(m), -EBADMSG, "a direct file map of cache 0");
}

Test(proto, a_file_map_past_the_last_indexable_page_is_refused)
{
	uint64_t last = (1ull << 47) / pgsz();
	struct proto_map m = good_map();

	m.pgoff = last - m.len / pgsz();
	expect(check_map(m), 0, "a map ending at page 2^47 / page");
	m.pgoff++;
	expect(check_map(m), -EBADMSG, "a map one page past it");
	m.pgoff = UINT64_MAX;
	expect(check_map(m), -EBADMSG, "pgoff 2^64 - 1");
}

Test(proto, advice_beyond_willneed_a_fill_unit_too_large_or_an_arg_where_none_belongs_is_refused)
{
	struct proto_range r = good_range(MSG_ADVISE);

	r.arg = LAZYMAP_ADV_WILLNEED;
	expect(check_range(MSG_ADVISE, r), 0, "LAZYMAP_ADV_WILLNEED");
	r.arg = LAZYMAP_ADV_WILLNEED + 1;
	expect(check_range(MSG_ADVISE, r), -EBADMSG, "advice WILLNEED + 1");
	r.arg = UINT32_MAX;
	expect(check_range(MSG_ADVISE, r), -EBADMSG, "advice -1");
	/* lazymap_fill_unit's: pages up to LAZYMAP_FILL_UNIT_MAX */
	r.arg = LZM_ADV_FILL_UNIT | (unsigned)(LAZYMAP_FILL_UNIT_MAX / pgsz());
	expect(check_range(MSG_ADVISE, r), 0, "the largest fill unit");
	r.arg = LZM_ADV_FILL_UNIT;
	expect(check_range(MSG_ADVISE, r), 0, "fill unit 0");
	r.arg = LZM_ADV_FILL_UNIT | (unsigned)(LAZYMAP_FILL_UNIT_MAX / pgsz() + 1);
	expect(check_range(MSG_ADVISE, r), -EBADMSG, "a fill unit past the largest");
	for (unsigned i = 0; i < NRANGE; i++) {
		unsigned t = range_types[i];

		if (t == MSG_PROTECT || t == MSG_ADVISE)
			continue;
		r = good_range(t);
		r.arg = 1;
		expect(check_range(t, r), -EBADMSG, lzm_proto_name(t));
	}
}

Test(proto, hello_flags_or_unknown_open_flags_are_refused)
{
	struct proto_hello h = { .flags = 1 };
	struct proto_open o = { .flags = OPEN_DIRECT | OPEN_WRITE };

	expect(check(MSG_HELLO, &h, sizeof(h)), -EBADMSG, "hello flags 1");
	expect(check(MSG_OPEN, &o, sizeof(o)), 0, "open DIRECT | WRITE");
	o.flags = 0x4;
	expect(check(MSG_OPEN, &o, sizeof(o)), -EBADMSG, "open flags 4");
}

Test(proto, a_nonzero_pad_is_refused)
{
	struct proto_hello h = { .pad = 1 };
	struct proto_hello_reply hr = { .pad = 1 };
	struct proto_open o = { .pad = 1 };
	struct proto_reply r = { .pad = 1 };
	struct proto_stats_reply s = { .pad = 1 };
	unsigned char body[PROTO_MAX];
	struct proto_error e = { .err = -EIO, .pad = 1 };

	expect(check(MSG_HELLO, &h, sizeof(h)), -EBADMSG, "hello");
	expect(check(MSG_HELLO_REPLY, &hr, sizeof(hr)), -EBADMSG, "hello_reply");
	expect(check(MSG_OPEN, &o, sizeof(o)), -EBADMSG, "open");
	expect(check(MSG_REPLY, &r, sizeof(r)), -EBADMSG, "reply");
	expect(check(MSG_STATS_REPLY, &s, sizeof(s)), -EBADMSG, "stats_reply");
	memcpy(body, &e, sizeof(e));
	expect(check(MSG_ERROR, body, sizeof(e)), -EBADMSG, "error");
	for (unsigned i = 0; i < NRANGE; i++) {
		struct proto_range g = good_range(range_types[i]);

		g.pad = 0x100;
		expect(check_range(range_types[i], g), -EBADMSG, lzm_proto_name(range_types[i]));
	}
}

/* ---- reading: alignment and bounds */

Test(proto, a_packet_at_any_alignment_decodes)
{
	unsigned char pkt[PROTO_MAX], buf[PROTO_MAX + 8];

	for (unsigned i = 0; i < NTYPES; i++) {
		unsigned t = all_types[i];
		size_t len = good_packet(t, pkt);

		for (unsigned off = 1; off < 8; off++) {
			struct proto_msg m;

			memcpy(buf + off, pkt, len);
			expect(lzm_proto_decode(buf + off, len, fds_of(t), &m), 0, lzm_proto_name(t));
		}
	}
}

Test(proto, no_byte_past_len_is_read)
{
	size_t ps = pgsz();
	unsigned char pkt[PROTO_MAX], *area;

	/* every packet, and every prefix of it, ending on a page whose next
	 * page is PROT_NONE: a read past len would fault */
	cr_assert_leq(PROTO_MAX, 2 * ps);
	area = mmap(NULL, 3 * ps, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(area, MAP_FAILED);
	cr_assert_eq(mprotect(area + 2 * ps, ps, PROT_NONE), 0);
	for (unsigned i = 0; i < NTYPES; i++) {
		size_t len = good_packet(all_types[i], pkt);

		for (size_t cut = 0; cut <= len; cut++) {
			unsigned char *at = area + 2 * ps - cut;
			struct proto_msg m;

			memcpy(at, pkt, cut);
			lzm_proto_decode(at, cut, fds_of(all_types[i]), &m);
		}
	}
	munmap(area, 3 * ps);
}

/* ---- encode, send, receive */

Test(proto, a_body_over_PROTO_MAX_is_not_encoded_or_sent)
{
	unsigned char buf[PROTO_MAX], body[PROTO_MAX] = { 0 };
	size_t most = PROTO_MAX - sizeof(struct proto_hdr);
	int sv[2];

	cr_assert_eq(lzm_proto_encode(buf, MSG_ERROR, 1, body, most), (int)PROTO_MAX);
	expect(lzm_proto_encode(buf, MSG_ERROR, 1, body, most + 1), -EMSGSIZE, "encode");
	seqpacket_pair(sv);
	expect(lzm_proto_send(sv[0], MSG_ERROR, 1, body, most + 1, -1, false), -EMSGSIZE, "send");
	close(sv[0]);
	close(sv[1]);
}

Test(proto, every_type_round_trips_through_a_socket)
{
	unsigned char body[PROTO_MAX];
	int sv[2];

	seqpacket_pair(sv);
	for (unsigned i = 0; i < NTYPES; i++) {
		unsigned t = all_types[i];
		size_t size = good_body(t, body);
		int fd = fds_of(t) ? memfd(lzm_proto_name(t)) : -1;
		struct proto_msg m;
		const char *name = lzm_proto_name(t);

		expect(lzm_proto_send(sv[0], t, seq_of(t), body, size, fd, false), 0, name);
		expect(lzm_proto_recv(sv[1], &m, false), 0, name);
		cr_assert_eq(m.hdr.type, t, "%s came back as type %u", name, m.hdr.type);
		cr_assert_eq(m.hdr.seq, seq_of(t), "%s: seq %u", name, m.hdr.seq);
		cr_assert_eq(m.hdr.len, sizeof(struct proto_hdr) + size);
		/* the tails (clients, text) follow their fixed parts in the union */
		cr_assert_eq(memcmp(&m.u, body, size), 0, "%s: the body differs", name);
		if (fd >= 0) {
			struct stat a, b;

			cr_assert_geq(m.fd, 0, "%s: no descriptor came", name);
			cr_assert_neq(m.fd, fd);
			cr_assert_eq(fstat(fd, &a), 0);
			cr_assert_eq(fstat(m.fd, &b), 0);
			cr_assert(a.st_ino == b.st_ino && a.st_dev == b.st_dev,
				  "%s: the descriptor is another file", name);
			cr_assert_eq(fcntl(m.fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC,
				     "%s: the descriptor is not close-on-exec", name);
			close(m.fd);
			close(fd);
		} else {
			cr_assert_eq(m.fd, -1, "%s: a descriptor came", name);
		}
		if (t == MSG_ERROR)
			cr_assert_str_eq(m.u.error_text, "map: flags 0x3");
	}
	close(sv[0]);
	close(sv[1]);
}

Test(proto, a_peer_that_closed_reads_as_ECONNRESET_and_writes_as_EPIPE)
{
	struct proto_msg m;
	int sv[2];

	seqpacket_pair(sv);
	close(sv[0]);
	expect(lzm_proto_recv(sv[1], &m, false), -ECONNRESET, "recv");
	expect(lzm_proto_recv(sv[1], &m, true), -ECONNRESET, "recv, nowait");
	/* MSG_NOSIGNAL: no SIGPIPE kills the test */
	expect(lzm_proto_send(sv[1], MSG_BYE, 1, NULL, 0, -1, false), -EPIPE, "send");
	close(sv[1]);
}

Test(proto, nothing_to_read_without_waiting_is_EAGAIN)
{
	struct proto_msg m;
	int sv[2];

	seqpacket_pair(sv);
	expect(lzm_proto_recv(sv[1], &m, true), -EAGAIN, "recv, nowait");
	cr_assert_eq(m.fd, -1);
	close(sv[0]);
	close(sv[1]);
}

Test(proto, every_type_has_a_name)
{
	for (unsigned i = 0; i < NTYPES; i++)
		cr_assert(strcmp(lzm_proto_name(all_types[i]), "?") != 0, "type %u has no name", all_types[i]);
	cr_assert_str_eq(lzm_proto_name(MSG_MAP), "map");
	cr_assert_str_eq(lzm_proto_name(MSG_HELLO), "hello");
}
