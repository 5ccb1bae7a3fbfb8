// SPDX-License-Identifier: MIT
/*
 * faultd: serves other processes' page faults from one page cache. The
 * listening socket, the credentials check, one session thread per client
 * (its requests, in order), and the daemon's life: signals, reload, stop.
 * The paging itself is the library's (lib/serve.c): one lazymap whose
 * handlers serve every client's userfaultfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "proto.h"
#include "config.h"
#include "log.h"

/* Seconds a connection may take to send its first message. */
#define HELLO_WAIT_S 5
#define STR(x)  #x
#define XSTR(x) STR(x)

struct session {
	struct session *next;     /* sessions, under sessions_lock */
	pthread_t thread;
	int sock;
	struct ucred cred;
	struct client *cl;        /* after HELLO; read by status under sessions_lock */
	bool hello;               /* counted among the clients from its hello on */
	bool done;                /* the thread has finished: join and free it */
};

static struct faultd_config cfg;
static const char *config_path;
static struct lazymap *engine;
static uint64_t started_ns;

static pthread_mutex_t sessions_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session *sessions;
static unsigned nsessions;
static pthread_rwlock_t cfg_lock = PTHREAD_RWLOCK_INITIALIZER; /* cfg's lists (SIGHUP) */

/* Make s one of the clients, if the config allows one more (sessions past
 * hello, or in it). */
static bool client_slot(struct session *s)
{
	unsigned n = 0;

	pthread_mutex_lock(&sessions_lock);
	for (struct session *o = sessions; o; o = o->next)
		n += o->cl || o->hello;
	s->hello = n < cfg.max_clients;
	pthread_mutex_unlock(&sessions_lock);
	return s->hello;
}

static int reply(struct session *s, uint32_t seq, int err)
{
	struct proto_reply r = { .err = err };

	return lzm_proto_send(s->sock, MSG_REPLY, seq, &r, sizeof(r), -1, false);
}

/* A bad message: say why, log one line, and hang up. */
static void refuse(struct session *s, int err, const char *why)
{
	struct {
		struct proto_error e;
		char text[PROTO_ERROR_MAX];
	} msg = { .e.err = err };
	size_t n = strlen(why) < PROTO_ERROR_MAX ? strlen(why) : PROTO_ERROR_MAX;

	memcpy(msg.text, why, n);
	lzm_proto_send(s->sock, MSG_ERROR, 0, &msg, sizeof(msg.e) + n, -1, true);
	flog(LOG_WARNING, "client pid %d uid %u: %s (%s): disconnected", (int)s->cred.pid,
	     (unsigned)s->cred.uid, why, strerror(-err));
}

static void status_reply(struct session *s, uint32_t seq)
{
	struct {
		struct proto_status_reply st;
		struct proto_client c[PROTO_STATUS_MAX];
	} msg;
	struct proto_status_reply *st = &msg.st;
	uint64_t cached = 0, dirty = 0;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&sessions_lock);
	for (struct session *o = sessions; o; o = o->next) {
		if (!o->cl)
			continue;
		st->nclients++;
		if (st->n < PROTO_STATUS_MAX) {
			struct proto_client *c = &msg.c[st->n++];

			lzm_client_status(o->cl, c);
			c->uid = o->cred.uid;
			c->gid = o->cred.gid;
		}
	}
	pthread_mutex_unlock(&sessions_lock);
	lzm_cache_count_all(&cached, &dirty);
	st->cache_pages = cached;
	st->uptime_ns = lzm_now_ns() - started_ns;
	lzm_proto_send(s->sock, MSG_STATUS_REPLY, seq, &msg,
		       sizeof(*st) + st->n * sizeof(struct proto_client), -1, false);
}

/* One message of a client; false: hang up. */
static bool serve_one(struct session *s, struct proto_msg *m)
{
	unsigned type = m->hdr.type;
	uint32_t seq = m->hdr.seq;
	int ret;

	if (type == MSG_STATUS) {
		status_reply(s, seq);
		return true;
	}
	if (!s->cl && type != MSG_HELLO) {
		refuse(s, -EPROTO, "a request before hello");
		return false;
	}
	switch (type) {
	case MSG_HELLO: {
		struct client_limits lim = { cfg.max_regions, cfg.max_fds, cfg.max_mapped };
		struct proto_hello_reply hr = { 0 };
		struct client *cl;

		if (s->cl) {
			refuse(s, -EPROTO, "a second hello");
			return false;
		}
		if (!client_slot(s)) {
			refuse(s, -EUSERS, "as many clients as the config allows");
			return false;
		}
		ret = lzm_client_new(engine, m->fd, m->u.hello.features, s->cred.pid, s->sock,
				     &lim, &cl);
		if (ret) {
			refuse(s, ret, ret == -EBADF ? "hello without a userfaultfd"
						     : "cannot serve this client");
			return false;
		}
		pthread_mutex_lock(&sessions_lock);
		s->cl = cl;
		pthread_mutex_unlock(&sessions_lock);
		struct timeval none = { 0 };

		setsockopt(s->sock, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
		hr.client_id = lzm_client_mm(cl)->id;
		hr.max_regions = cfg.max_regions;
		hr.max_mapped = cfg.max_mapped;
		flog(LOG_INFO, "client pid %d uid %u connected", (int)s->cred.pid,
		     (unsigned)s->cred.uid);
		return lzm_proto_send(s->sock, MSG_HELLO_REPLY, seq, &hr, sizeof(hr), -1, false) == 0;
	}
	case MSG_OPEN: {
		struct proto_open_reply orp;
		int memfd;

		ret = lzm_client_open(s->cl, m->fd, m->u.open.flags, &orp.cache_id, &orp.size, &memfd);
		if (ret)
			return reply(s, seq, ret) == 0;
		ret = lzm_proto_send(s->sock, MSG_OPEN_REPLY, seq, &orp, sizeof(orp), memfd, false);
		close(memfd);
		return ret == 0;
	}
	case MSG_MAP:
		return reply(s, seq, lzm_client_map(s->cl, &m->u.map)) == 0;
	case MSG_UNMAP:
	case MSG_PROTECT:
	case MSG_ADVISE:
	case MSG_PREFETCH:
	case MSG_SYNC:
		return reply(s, seq, lzm_client_range(s->cl, type, &m->u.range)) == 0;
	case MSG_STATS: {
		/* in lazymap_stats' order, up to the last faultd counts per
		 * client (the rest are 0) */
		struct proto_stats_reply sr = { .n = LZM_STAT_io_errors + 1 };
		struct mm *mm = lzm_client_mm(s->cl);
		struct proto_client c;

		/* the client's events read so far are applied, and told, first:
		 * the library asks this to bring its tree up to date */
		lzm_mm_sync_events(mm);
		lzm_client_status(s->cl, &c);
		sr.v[LZM_STAT_faults] = c.faults;
		sr.v[LZM_STAT_bytes_read] = c.bytes_read;
		sr.v[LZM_STAT_io_errors] = atomic_load(&mm->io_errors);
		return lzm_proto_send(s->sock, MSG_STATS_REPLY, seq, &sr, sizeof(sr), -1, false) == 0;
	}
	case MSG_BYE: {
		struct mm *mm = lzm_client_mm(s->cl);

		/* everything it wrote, durably: it unmaps next */
		ret = lzm_mm_writeback(mm, lzm_page_size, UINTPTR_MAX - 2 * lzm_page_size + 1,
				       WB_DURABLE);
		return reply(s, seq, ret) == 0;
	}
	}
	refuse(s, -EBADMSG, "a message only faultd sends");
	return false;
}

static void *session_main(void *arg)
{
	struct session *s = arg;

	for (;;) {
		struct proto_msg m;
		int ret = lzm_proto_recv(s->sock, &m, false);
		bool go_on;

		if (ret == -EINTR)
			continue;
		if (ret == -ECONNRESET)
			break;
		if (ret == -EAGAIN && !s->cl) {
			refuse(s, -ETIMEDOUT, "nothing asked within " XSTR(HELLO_WAIT_S) " s");
			break;
		}
		if (ret == -EMFILE) {
			/* our table is full, not the client's fault: its request fails */
			flog(LOG_WARNING, "client pid %d: a descriptor it sent found no room here "
			     "(%s)", (int)s->cred.pid, strerror(EMFILE));
			if (reply(s, m.hdr.seq, -EMFILE))
				break;
			continue;
		}
		if (ret) {
			refuse(s, ret, "malformed message");
			break;
		}
		go_on = serve_one(s, &m);
		if (m.fd >= 0)
			close(m.fd);
		lzm_log_flush(engine);
		if (!go_on)
			break;
	}
	if (s->cl) {
		struct client *cl = s->cl;

		pthread_mutex_lock(&sessions_lock);
		s->cl = NULL;
		pthread_mutex_unlock(&sessions_lock);
		lzm_client_free(cl, true);
		flog(LOG_INFO, "client pid %d gone", (int)s->cred.pid);
	}
	shutdown(s->sock, SHUT_RDWR);
	pthread_mutex_lock(&sessions_lock);
	s->done = true;
	pthread_mutex_unlock(&sessions_lock);
	return NULL;
}

/* Join and free the sessions that have ended. */
static void reap_sessions(void)
{
	struct session **pp, *s, *done = NULL;

	pthread_mutex_lock(&sessions_lock);
	for (pp = &sessions; (s = *pp);) {
		if (s->done) {
			*pp = s->next;
			s->next = done;
			done = s;
			nsessions--;
		} else {
			pp = &s->next;
		}
	}
	pthread_mutex_unlock(&sessions_lock);
	while ((s = done)) {
		done = s->next;
		pthread_join(s->thread, NULL);
		close(s->sock);
		free(s);
	}
}

static void accept_one(int lfd)
{
	struct session *s = calloc(1, sizeof(*s));
	socklen_t len = sizeof(s ? s->cred : (struct ucred){ 0 });
	bool allowed;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0 || !s) {
		if (fd >= 0)
			close(fd);
		free(s);
		return;
	}
	s->sock = fd;
	reap_sessions(); /* those that ended count no more */
	/* room for a burst of events (a munmap storm) while the client's
	 * monitor catches up: one it cannot take is dropped, never waited for */
	int sndbuf = 4 << 20;

	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	/* a connection says what it wants at once, or goes (hello clears it) */
	struct timeval first = { .tv_sec = HELLO_WAIT_S };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &first, sizeof(first));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &s->cred, &len)) {
		close(fd);
		free(s);
		return;
	}
	pthread_rwlock_rdlock(&cfg_lock);
	allowed = faultd_config_allows(&cfg, s->cred.uid, s->cred.gid);
	pthread_rwlock_unlock(&cfg_lock);
	/* clients are counted at hello; connections (faultctl's too) are
	 * bounded here, a few beyond them */
	if (!allowed || nsessions >= cfg.max_clients + 16) {
		refuse(s, allowed ? -EUSERS : -EACCES,
		       allowed ? "too many connections" : "this user may not use faultd");
		close(fd);
		free(s);
		return;
	}
	sigset_t all, old;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int ret = pthread_create(&s->thread, NULL, session_main, s);

	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		refuse(s, -ret, "no thread for this client");
		close(fd);
		free(s);
		return;
	}
	pthread_mutex_lock(&sessions_lock);
	s->next = sessions;
	sessions = s;
	nsessions++;
	pthread_mutex_unlock(&sessions_lock);
}

/* A socket left by a faultd that died is removed; a live one is not. */
static int listen_on(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, probe, ret;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		flog(LOG_ERR, "socket path too long: %s", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	ret = lzm_proto_connect(path, &probe);
	if (ret == 0) {
		flog(LOG_ERR, "%s: another faultd is listening there", path);
		close(probe);
		return -1;
	}
	if (ret == -ECONNREFUSED)
		unlink(path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    chmod(path, cfg.socket_mode) || listen(fd, 128)) {
		flog(LOG_ERR, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (cfg.socket_gid != (gid_t)-1 && chown(path, (uid_t)-1, cfg.socket_gid))
		flog(LOG_WARNING, "%s: cannot give the socket to group %s: %s", path,
		     cfg.socket_group, strerror(errno));
	return fd;
}

static void reload(void)
{
	struct faultd_config fresh;
	char err[256];

	if (!config_path) {
		flog(LOG_NOTICE, "SIGHUP: no config file to reload");
		return;
	}
	pthread_rwlock_rdlock(&cfg_lock);
	fresh = cfg;
	pthread_rwlock_unlock(&cfg_lock);
	/* only the access lists change while running */
	fresh.allow_uids = NULL, fresh.nallow_uids = 0;
	fresh.allow_gids = NULL, fresh.nallow_gids = 0;
	if (faultd_config_load(&fresh, config_path, err, sizeof(err))) {
		flog(LOG_ERR, "SIGHUP: %s: the old access lists stay", err);
		return;
	}
	pthread_rwlock_wrlock(&cfg_lock);
	free(cfg.allow_uids);
	free(cfg.allow_gids);
	cfg.allow_uids = fresh.allow_uids, cfg.nallow_uids = fresh.nallow_uids;
	cfg.allow_gids = fresh.allow_gids, cfg.nallow_gids = fresh.nallow_gids;
	pthread_rwlock_unlock(&cfg_lock);
	flog(LOG_NOTICE, "SIGHUP: access lists reloaded from %s", config_path);
}

/* Stop: every client is let go (its shared writes written back), and each
 * takes its faults back in process. */
static void stop_all(void)
{
	/* Reading only: each session writes its client back (and protects its
	 * pages again) before the hang-up tells the client to take over. */
	pthread_mutex_lock(&sessions_lock);
	for (struct session *s = sessions; s; s = s->next)
		shutdown(s->sock, SHUT_RD);
	pthread_mutex_unlock(&sessions_lock);
	for (;;) {
		reap_sessions();
		pthread_mutex_lock(&sessions_lock);
		unsigned n = nsessions;

		pthread_mutex_unlock(&sessions_lock);
		if (!n)
			break;
		usleep(1000);
	}
}

/*
 * Into the background: a child in a session of its own, at /, with no
 * terminal; the parent returns once the child listens (its exit status
 * says whether it does), so that `faultd && client` works. The write end
 * of the pipe is the child's *ready.
 */
static int daemonize(int *ready)
{
	int p[2];
	char c;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC))
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		_exit(read(p[0], &c, 1) == 1 ? 0 : 1);
	}
	close(p[0]);
	setsid();
	if (chdir("/")) {
	}
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		close(null);
	}
	*ready = p[1];
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: faultd [--config FILE] [--socket PATH] [--foreground] [--threads N]\n"
		   "Serves the page faults of processes that ask it (lazymap_opts.daemon).\n");
}

static void engine_log(void *arg, int level, const char *msg)
{
	(void)arg;
	flog(level, "%s", msg);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *socket_path = NULL;
	bool foreground = false;
	long threads = -1;
	char err[256];
	int c;

	faultd_config_defaults(&cfg);
	while ((c = getopt_long(argc, argv, "c:s:ft:h", opts, NULL)) != -1) {
		char *end;

		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 's':
			socket_path = optarg;
			break;
		case 'f':
			foreground = true;
			break;
		case 't':
			errno = 0;
			threads = strtol(optarg, &end, 10);
			if (errno || *end || threads < 0 || threads > 256) {
				fprintf(stderr, "faultd: --threads: a number from 0 (one per CPU) to 256\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (config_path && faultd_config_load(&cfg, config_path, err, sizeof(err))) {
		fprintf(stderr, "faultd: %s\n", err);
		return 2;
	}
	if (socket_path) {
		if (strlen(socket_path) >= sizeof(cfg.socket)) {
			fprintf(stderr, "faultd: --socket: path too long\n");
			return 2;
		}
		strcpy(cfg.socket, socket_path);
	}
	if (threads >= 0)
		cfg.threads = (unsigned)threads;
	/* the socket is named from / once in the background */
	if (cfg.socket[0] != '/') {
		char cwd[4096], abs_path[sizeof(cfg.socket)];

		if (!getcwd(cwd, sizeof(cwd)) ||
		    snprintf(abs_path, sizeof(abs_path), "%s/%s", cwd, cfg.socket) >= (int)sizeof(abs_path)) {
			fprintf(stderr, "faultd: --socket: path too long once made absolute\n");
			return 2;
		}
		strcpy(cfg.socket, abs_path);
	}
	int ready = -1;

	if (!foreground && daemonize(&ready)) {
		fprintf(stderr, "faultd: cannot go into the background: %s\n", strerror(errno));
		return 1;
	}
	flog_init(!foreground, cfg.log_level);

	/* Signals are read from a signalfd here; every thread has them blocked. */
	sigset_t sigs;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

	struct lazymap_opts o = {
		.handler_threads = cfg.threads ? cfg.threads : LAZYMAP_HANDLERS_PER_CPU,
		.resident_limit = cfg.resident_limit,
		.log = engine_log,
	};
	int ret = lazymap_open(&engine, &o);

	if (ret) {
		flog(LOG_ERR, "cannot start the handlers: %s", strerror(-ret));
		return 1;
	}
	int lfd = listen_on(cfg.socket);

	if (lfd < 0 || sfd < 0) {
		lazymap_close(engine);
		return 1;
	}
	started_ns = lzm_now_ns();
	flog(LOG_NOTICE, "serving on %s", cfg.socket);
	if (ready >= 0) {
		if (write(ready, "", 1) != 1) {
		}
		close(ready);
	}

	bool stop = false;

	while (!stop) {
		struct pollfd pfd[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };

		if (poll(pfd, 2, 1000) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP)
					reload();
				else if (si.ssi_signo != SIGPIPE)
					stop = true;
			}
		}
		if (!stop && (pfd[0].revents & POLLIN))
			accept_one(lfd);
		reap_sessions();
	}
	flog(LOG_NOTICE, "stopping: clients take their faults back");
	close(lfd);
	unlink(cfg.socket);
	stop_all();
	ret = lazymap_close(engine);
	if (ret)
		flog(LOG_ERR, "write-back at exit: %s", strerror(-ret));
	faultd_config_free(&cfg);
	return ret ? 1 : 0;
}
