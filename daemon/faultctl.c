// SPDX-License-Identifier: MIT
/*
 * faultctl: asks a running faultd how it is doing. `faultctl status` prints
 * each client it serves (pid, uid, regions, faults, what came from the
 * cache), `--json` the same for scripts.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "proto.h"

static int status(const char *path, bool json)
{
	struct proto_msg m;
	int s, ret = lzm_proto_connect(path, &s);

	if (ret) {
		fprintf(stderr, "faultctl: %s: %s%s\n", path, strerror(-ret),
			ret == -ENAMETOOLONG ? "" : " (is faultd running?)");
		return 1;
	}
	/* a faultd that does not answer (stopped, or not faultd) is an error */
	struct timeval limit = { .tv_sec = 5 };

	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
	ret = lzm_proto_send(s, MSG_STATUS, 1, NULL, 0, -1, false);
	if (ret == 0)
		ret = lzm_proto_recv(s, &m, false);
	close(s);
	if (ret == 0 && m.hdr.type == MSG_ERROR) {
		fprintf(stderr, "faultctl: faultd refused: %s (%s)\n", m.u.error_text,
			strerror(-m.u.error.err));
		return 1;
	}
	if (ret || m.hdr.type != MSG_STATUS_REPLY) {
		fprintf(stderr, "faultctl: %s: %s\n", path,
			ret == -EAGAIN ? "no answer within 5 s"
			: ret	       ? strerror(-ret)
				       : "an answer that is not a status");
		return 1;
	}
	const struct proto_status_reply *st = &m.u.status;

	if (json) {
		printf("{\"clients\": %u, \"cache_pages\": %llu, \"uptime_s\": %.3f, \"list\": [",
		       st->nclients, (unsigned long long)st->cache_pages, st->uptime_ns / 1e9);
		for (unsigned i = 0; i < st->n; i++) {
			const struct proto_client *c = &m.u.status_c[i];

			printf("%s\n  {\"pid\": %d, \"uid\": %u, \"gid\": %u, \"regions\": %u, "
			       "\"mapped\": %llu, \"faults\": %llu, \"cache_hits\": %llu, "
			       "\"bytes_read\": %llu, \"bytes_written\": %llu, \"lat_p50_ns\": %llu, "
			       "\"lat_p99_ns\": %llu}",
			       i ? "," : "", c->pid, c->uid, c->gid, c->regions,
			       (unsigned long long)c->mapped, (unsigned long long)c->faults,
			       (unsigned long long)c->cache_hits, (unsigned long long)c->bytes_read,
			       (unsigned long long)c->bytes_written, (unsigned long long)c->lat_p50_ns,
			       (unsigned long long)c->lat_p99_ns);
		}
		printf("\n]}\n");
		return 0;
	}
	printf("faultd on %s: %u client%s, %llu pages cached, up %.1f s\n", path, st->nclients,
	       st->nclients == 1 ? "" : "s", (unsigned long long)st->cache_pages,
	       st->uptime_ns / 1e9);
	if (st->n)
		printf("%8s %6s %7s %10s %9s %10s %9s %9s %9s\n", "pid", "uid", "regions",
		       "mapped MiB", "faults", "cache hits", "read MiB", "p50 us", "p99 us");
	for (unsigned i = 0; i < st->n; i++) {
		const struct proto_client *c = &m.u.status_c[i];

		printf("%8d %6u %7u %10.1f %9llu %10llu %9.1f %9.0f %9.0f\n", c->pid, c->uid,
		       c->regions, c->mapped / 1048576.0, (unsigned long long)c->faults,
		       (unsigned long long)c->cache_hits, c->bytes_read / 1048576.0,
		       c->lat_p50_ns / 1e3, c->lat_p99_ns / 1e3);
	}
	if (st->nclients > st->n)
		printf("(%u more not listed)\n", st->nclients - st->n);
	if (st->n)
		printf("(latency: from faultd's read of a fault to its page in place, to a factor of 2)\n");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: faultctl [--socket PATH] status [--json]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *path = "/run/faultd/faultd.sock";
	bool json = false;
	int c;

	while ((c = getopt_long(argc, argv, "s:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			path = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc || strcmp(argv[optind], "status") || optind + 1 != argc) {
		usage(stderr);
		return 2;
	}
	return status(path, json);
}
