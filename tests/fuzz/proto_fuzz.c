// SPDX-License-Identifier: MIT
/*
 * Fuzz target for lzm_proto_decode (lib/proto.c), the one function that sees
 * a peer's bytes before anything trusts them. data[0] % 3 is the number of
 * descriptors the packet came with, the rest is the packet. A packet that
 * decodes must encode back to the same bytes and decode to the same message:
 * the decoder keeps nothing back and invents nothing.
 *
 * libFuzzer build (clang; tests/fuzz/meson.build builds proto_fuzz when the
 * compiler takes -fsanitize=fuzzer):
 *   CC=clang meson setup build-fuzz -Db_sanitize=address,undefined -Db_lundef=false
 *   ninja -C build-fuzz tests/fuzz/proto_fuzz
 *   mkdir -p /tmp/proto-corpus
 *   ./build-fuzz/tests/fuzz/proto_fuzz -max_len=4200 -max_total_time=300 \
 *       /tmp/proto-corpus tests/fuzz/corpus/proto
 * (new inputs go to the first directory; the committed seeds stay as they
 * are). Without clang, `meson test proto_corpus` replays the seeds through
 * this same function (replay.c).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct proto_msg m, again;
	static unsigned char buf[PROTO_MAX];
	unsigned nfds;
	size_t len;
	int ret;

	if (size < 1)
		return 0;
	nfds = data[0] % 3;
	len = size - 1;
	if (lzm_proto_decode(data + 1, len, nfds, &m))
		return 0;

	/* what a caller relies on, checked apart from the decoder's own code */
	if (m.hdr.len != len || len > PROTO_MAX || m.fd != -1 ||
	    (m.hdr.type == MSG_ERROR &&
	     (len - sizeof(m.hdr) - sizeof(m.u.error) > PROTO_ERROR_MAX ||
	      m.u.error_text[len - sizeof(m.hdr) - sizeof(m.u.error)] != '\0')) ||
	    (m.hdr.type == MSG_STATUS_REPLY &&
	     (m.u.status.n > PROTO_STATUS_MAX || m.u.status.n > m.u.status.nclients)) ||
	    (m.hdr.type == MSG_STATS_REPLY && m.u.stats.n > PROTO_STATS_MAX))
		abort();

	/* the body's tail (clients, text) follows its fixed part in the union */
	ret = lzm_proto_encode(buf, m.hdr.type, m.hdr.seq, &m.u, len - sizeof(m.hdr));
	if (ret != (int)len || memcmp(buf, data + 1, len))
		abort();
	if (lzm_proto_decode(buf, len, nfds, &again) || memcmp(&m, &again, sizeof(m)))
		abort();
	return 0;
}
