// SPDX-License-Identifier: MIT
/*
 * Writes the seed corpus of proto_fuzz into a directory: one valid packet of
 * every message type (and of the map and error variants the decoder treats
 * apart), then one packet per class of malformed input. Each file is the
 * fuzz target's input: a byte giving the descriptors (0-2), then the packet.
 * Regenerate with: ./build/tests/fuzz/proto_corpus_gen tests/fuzz/corpus/proto
 * (the ranges assume 4 KiB pages).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazymap.h"
#include "proto.h"

#define PG 4096u

static const char *dir;
static int failed;

/* Write one input; a seed named bad_* must fail to decode, any other must decode. */
static void put(const char *name, unsigned nfds, const void *pkt, size_t len)
{
	static struct proto_msg m;
	char path[4096];
	unsigned char n = (unsigned char)nfds;
	int fd, ret = lzm_proto_decode(pkt, len, nfds, &m);

	if ((ret == 0) != (strncmp(name, "bad_", 4) != 0)) {
		fprintf(stderr, "%s: decodes to %d (%s)\n", name, ret, strerror(-ret));
		failed = 1;
	}

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, &n, 1) != 1 || write(fd, pkt, len) != (ssize_t)len) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		failed = 1;
	}
	if (fd >= 0)
		close(fd);
}

/* A packet of type with body (seq 7; 0 for an event). */
static void msg(const char *name, unsigned nfds, unsigned type, const void *body, size_t size)
{
	unsigned char pkt[PROTO_MAX];
	int len = lzm_proto_encode(pkt, type, type == MSG_EVENT ? 0 : 7, body, size);

	if (len < 0) {
		fprintf(stderr, "%s: encode: %s\n", name, strerror(-len));
		failed = 1;
		return;
	}
	put(name, nfds, pkt, (size_t)len);
}

int main(int argc, char **argv)
{
	struct proto_hello hello = { .features = 0x3f };
	struct proto_open open_ = { .flags = OPEN_WRITE };
	struct proto_map map = { .addr = 16 * PG, .len = 4 * PG, .cache_id = 3, .pgoff = 1,
				 .prot = PROT_READ | PROT_WRITE, .flags = LAZYMAP_SHARED };
	struct proto_map anon = { .addr = 64 * PG, .len = 16 * PG, .prot = PROT_READ,
				  .flags = LAZYMAP_PRIVATE | LAZYMAP_ANON };
	struct proto_range range = { .addr = 32 * PG, .len = 2 * PG };
	struct proto_hello_reply hello_reply = { .client_id = 1, .max_regions = 256,
						 .max_mapped = 1ull << 32 };
	struct proto_open_reply open_reply = { .cache_id = 3, .size = 123456 };
	struct proto_reply reply = { .err = -ENOENT };
	struct proto_stats_reply stats = { .n = PROTO_STATS_MAX };
	struct proto_event event = { .msg = { 0x12, 0, 0, 0, 0, 0, 0, 0, 1 } };
	unsigned char body[PROTO_MAX] = { 0 }, pkt[PROTO_MAX];
	struct proto_status_reply status = { .nclients = 3, .n = 2, .cache_pages = 10 };
	struct proto_client client = { .client_id = 1, .pid = 4242, .uid = 1000, .gid = 1000,
				       .regions = 2, .mapped = 8 * PG, .faults = 99 };
	struct proto_error error = { .err = -EBADMSG };
	unsigned char big[PROTO_MAX + 1];
	uint32_t hdr_len;
	size_t size;
	int len;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	dir = argv[1];

	/* ---- valid: every type */
	msg("hello", 1, MSG_HELLO, &hello, sizeof(hello));
	msg("open", 1, MSG_OPEN, &open_, sizeof(open_));
	msg("map", 0, MSG_MAP, &map, sizeof(map));
	msg("map_anon", 0, MSG_MAP, &anon, sizeof(anon));
	msg("unmap", 0, MSG_UNMAP, &range, sizeof(range));
	range.arg = PROT_READ;
	msg("protect", 0, MSG_PROTECT, &range, sizeof(range));
	range.arg = LAZYMAP_ADV_SEQUENTIAL;
	msg("advise", 0, MSG_ADVISE, &range, sizeof(range));
	range.arg = 0;
	msg("prefetch", 0, MSG_PREFETCH, &range, sizeof(range));
	msg("sync", 0, MSG_SYNC, &range, sizeof(range));
	msg("stats", 0, MSG_STATS, NULL, 0);
	msg("status", 0, MSG_STATUS, NULL, 0);
	msg("bye", 0, MSG_BYE, NULL, 0);
	msg("hello_reply", 0, MSG_HELLO_REPLY, &hello_reply, sizeof(hello_reply));
	msg("open_reply", 1, MSG_OPEN_REPLY, &open_reply, sizeof(open_reply));
	msg("reply", 0, MSG_REPLY, &reply, sizeof(reply));
	for (unsigned i = 0; i < PROTO_STATS_MAX; i++)
		stats.v[i] = i + 1; /* every counter set: they overlap the other bodies in the union */
	msg("stats_reply", 0, MSG_STATS_REPLY, &stats, sizeof(stats));
	memcpy(body, &status, sizeof(status));
	for (unsigned i = 0; i < status.n; i++) {
		client.client_id = i + 1;
		memcpy(body + sizeof(status) + i * sizeof(client), &client, sizeof(client));
	}
	size = sizeof(status) + status.n * sizeof(client);
	msg("status_reply", 0, MSG_STATUS_REPLY, body, size);
	msg("event", 0, MSG_EVENT, &event, sizeof(event));
	memcpy(body, &error, sizeof(error));
	memcpy(body + sizeof(error), "map: no such cache", 18);
	msg("error", 0, MSG_ERROR, body, sizeof(error) + 18);
	memset(body + sizeof(error), 'e', PROTO_ERROR_MAX + 1);
	msg("error_text_max", 0, MSG_ERROR, body, sizeof(error) + PROTO_ERROR_MAX);

	/* ---- malformed: one defect each */
	msg("bad_error_text_over", 0, MSG_ERROR, body, sizeof(error) + PROTO_ERROR_MAX + 1);
	memcpy(body, &status, sizeof(status));
	((struct proto_status_reply *)body)->nclients = 1;
	msg("bad_status_n_over_nclients", 0, MSG_STATUS_REPLY, body, size);
	msg("bad_hello_without_fd", 0, MSG_HELLO, &hello, sizeof(hello));
	msg("bad_map_with_fd", 1, MSG_MAP, &map, sizeof(map));
	msg("bad_hello_two_fds", 2, MSG_HELLO, &hello, sizeof(hello));
	map.addr += 8;
	msg("bad_map_unaligned", 0, MSG_MAP, &map, sizeof(map));
	map.addr = UINT64_MAX - PG + 1;
	msg("bad_map_wraps", 0, MSG_MAP, &map, sizeof(map));
	map.addr = 16 * PG;
	map.flags |= LAZYMAP_FIXED;
	msg("bad_map_fixed", 0, MSG_MAP, &map, sizeof(map));
	anon.cache_id = 3;
	msg("bad_map_anon_with_cache", 0, MSG_MAP, &anon, sizeof(anon));
	range.pad = 1;
	msg("bad_range_pad", 0, MSG_SYNC, &range, sizeof(range));
	msg("bad_unknown_type", 0, 12, NULL, 0);
	msg("bad_body_long", 0, MSG_REPLY, body, sizeof(reply) + 1);

	len = lzm_proto_encode(pkt, MSG_BYE, 1, NULL, 0);
	pkt[0] ^= 0xff;
	put("bad_magic", 0, pkt, (size_t)len);
	pkt[0] ^= 0xff;
	pkt[offsetof(struct proto_hdr, version)] = 2;
	put("bad_version", 0, pkt, (size_t)len);
	pkt[offsetof(struct proto_hdr, version)] = PROTO_VERSION;
	put("bad_short_header", 0, pkt, sizeof(struct proto_hdr) - 1);
	pkt[offsetof(struct proto_hdr, len)] += 4;
	put("bad_len_mismatch", 0, pkt, (size_t)len);

	/* a header true to a packet one byte over PROTO_MAX */
	memset(big, 0, sizeof(big));
	lzm_proto_encode(big, MSG_STATUS_REPLY, 1, NULL, 0);
	hdr_len = PROTO_MAX + 1;
	memcpy(big + offsetof(struct proto_hdr, len), &hdr_len, sizeof(hdr_len));
	put("bad_oversize", 0, big, sizeof(big));
	return failed;
}
