// SPDX-License-Identifier: MIT
/*
 * lazymap-bench: the cost of a first touch through liblazymap, side by side
 * with the kernel's own mmap doing the same work in the same run. Runs of
 * the two alternate, so that a noisy machine hits both alike; every figure
 * is printed with the ratio lazymap/kernel. Anonymous scenarios; the threads
 * matrix (faulting threads x handler threads); file scenarios over a file
 * generated once per run, read through the page cache and with
 * LAZYMAP_DIRECT, cold or hot, by one or several faulting threads, a
 * second region of a file already read, and writes to a shared mapping of a
 * copy of it with their write-back; the daemon group: anonymous and cold
 * file scenarios served by faultd against lazymap in-process and the kernel,
 * and a second client process scanning a file a first one has read (faultd
 * started by the bench unless --daemon names a running one); the nbd
 * group: the file exported by an nbdkit of the bench's own, cold, mapped
 * by lazymap_map_uri, against the kernel's mmap of the export mounted with
 * nbdfuse and lazymap's region of the file itself; and the
 * resident budget (the budget group:
 * our eviction policy against FIFO and against the kernel in a memory
 * cgroup of the budget's size, for a file and for swapped anonymous
 * memory), whose rows have three twins and a JSON list of their own; the
 * umap group: the same page faults through liblazymap-umap (umap(), the
 * compatibility layer) and through liblazymap directly, the layer's own
 * cost. The run
 * opens with a machine line (what a system call, a kernel page fault, a
 * same-CPU userfaultfd round trip and a 4 KiB disk read cost here), so that
 * tables from different machines are never compared as if alike.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <getopt.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/swap.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"
#include <umap/umap.h>

static size_t ps;

#define MAX_THREADS     64
#define MAX_THREAD_SETS 8
#define RAND_PERCENT    5 /* file-rand-*: the share of the file's pages touched */

/* ---------------------------------------------------------------- cleanup */

/*
 * The generated file and its directory go at exit, on error paths (exit())
 * and on fatal signals; `running` names the run in progress for the message
 * of a crash or a hang (the library's bugs show up as one or the other).
 */
static char tmp_dir[PATH_MAX], tmp_path[PATH_MAX + 8];
static char shared_path[2][PATH_MAX + 16]; /* file-shared-write: the kernel's copy, lazymap's */
static char running[200];
static unsigned run_timeout = 600; /* seconds one twin's run may take */

/*
 * The budget group's leftovers, undone in this order: a kernel twin's child
 * (killed and reaped), the swap turned on for it (swapoff may take seconds
 * while it pages back in: the machine is never left with our swap on), the
 * swap file, the memory cgroup, the budget file.
 */
static volatile pid_t twin_child;
static volatile sig_atomic_t swap_active;
static char swap_file[PATH_MAX + 16], cg_dir[PATH_MAX], budget_path[PATH_MAX + 16];

/*
 * The daemon group's faultd: the running one --daemon names, or one of our
 * own (pid), on a socket in a directory of ours (dir), started before the
 * runs and stopped at the end and on every way out: exit(), a fatal signal,
 * the watchdog. client1 is daemon-shared's first client, a child process.
 * faultctl, found beside faultd, says what faultd did for each client (a
 * served lazymap's own stats hold only its faults) and what it has cached.
 */
static struct {
	const char *socket;        /* where clients connect; NULL: no daemon row selected */
	char sock_buf[108];        /* ours: dir/faultd.sock */
	char bin[PATH_MAX];        /* our faultd's binary; empty: not found or not ours */
	char ctl[PATH_MAX];        /* faultctl, or empty */
	char dir[96], log[112];    /* ours: its directory, and its log there */
	volatile pid_t pid;        /* our faultd while it runs */
	volatile pid_t client1;
	unsigned threads;          /* ours: its --threads (0: one per CPU) */
	bool external;             /* --daemon: someone else's, nothing started */
	bool ok;                   /* it serves: a client could connect */
	char why[400];             /* else why not */
} fdm;

/*
 * The nbd group's servers, one set per row: nbdkit exporting the bench
 * file on a socket in a directory of ours (dir), and nbdfuse mounting that
 * export on dir/mnt for the kernel's twin. Stopped at the row's end and on
 * every way out, like faultd.
 */
static struct {
	char nbdkit[PATH_MAX];     /* its binary; empty: not found */
	char version[64];          /* what `nbdkit --version` says */
	char nbdfuse[PATH_MAX];    /* empty: not found */
	char fusermount[PATH_MAX]; /* fusermount3, or empty (umount2 then) */
	char dir[96];              /* ours: sockets, pid files, logs, the mount point */
	char sock[112], uri[160], kpidf[112], klog[112];
	char mnt[112], fpidf[112], flog[112], fuse_file[120];
	volatile pid_t kpid;       /* nbdkit while it runs */
	volatile pid_t fpid;       /* nbdfuse while it runs */
	volatile sig_atomic_t mounted;
	bool ok;                   /* nbdkit found, its directory made; else why */
	char why[400];
	bool fuse_ok;              /* nbdfuse and /dev/fuse there; else fuse_why */
	char fuse_why[300];
	unsigned deaths;           /* this row: servers that ended badly: found dead before a
	                            * run (and started again), or at their stop */
	char death[200];           /* the last one, said */
} nbd;

static pid_t main_pid; /* a child of ours leaves the parent's things alone */

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Wait at most ms for a child's exit: its wait status, or -1 if it still runs. */
static int wait_child(pid_t pid, unsigned ms)
{
	int st = -1;

	for (unsigned i = 0;; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			return st;
		if (r < 0 && errno != EINTR) /* not ours, or reaped already */
			return 0;
		if (i >= ms / 10)
			return -1;
		sleep_ms(10);
	}
}

/*
 * SIGTERM, then wait for its exit; SIGKILL after 5 s. Async-signal-safe:
 * on_signal calls it. Its wait status.
 */
static int stop_child(pid_t pid)
{
	int st;

	kill(pid, SIGTERM);
	st = wait_child(pid, 5000);
	if (st == -1) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	return st;
}

/*
 * Stop faultd: it lets its clients go and writes back first. Its wait
 * status, or -1 if it was not running.
 */
static int faultd_stop(void)
{
	pid_t pid = fdm.pid;
	int st = -1;

	if (pid > 0) {
		st = stop_child(pid);
		fdm.pid = 0;
	}
	if (fdm.dir[0]) {
		unlink(fdm.sock_buf);
		unlink(fdm.log);
		rmdir(fdm.dir);
		fdm.dir[0] = 0;
	}
	return st;
}

/*
 * nbdfuse gone, its mount with it: SIGTERM makes it unmount and exit (and
 * a mount left behind is detached). Async-signal-safe.
 */
static void nbd_fuse_kill(void)
{
	if (nbd.fpid > 0) {
		stop_child(nbd.fpid);
		nbd.fpid = 0;
	}
	if (nbd.mounted) {
		umount2(nbd.mnt, MNT_DETACH);
		nbd.mounted = 0;
	}
}

/* nbdkit stopped; its wait status, or -1 if it was not running. Async-signal-safe. */
static int nbdkit_stop(void)
{
	int st = -1;

	if (nbd.kpid > 0) {
		st = stop_child(nbd.kpid);
		nbd.kpid = 0;
	}
	if (nbd.dir[0]) { /* it leaves its socket behind, and a new one would not bind */
		unlink(nbd.sock);
		unlink(nbd.kpidf);
	}
	return st;
}

/* Everything of the nbd group's gone: servers, mount, files, directory. Async-signal-safe. */
static void nbd_cleanup(void)
{
	nbd_fuse_kill();
	nbdkit_stop();
	if (nbd.dir[0]) {
		unlink(nbd.fpidf);
		unlink(nbd.flog);
		unlink(nbd.klog);
		rmdir(nbd.mnt);
		rmdir(nbd.dir);
		nbd.dir[0] = 0;
	}
}

static void remove_file(void)
{
	if (getpid() != main_pid)
		return;
	nbd_cleanup();
	if (fdm.client1 > 0) {
		kill(fdm.client1, SIGKILL);
		waitpid(fdm.client1, NULL, 0);
		fdm.client1 = 0;
	}
	faultd_stop();
	if (twin_child > 0) {
		kill(twin_child, SIGKILL);
		waitpid(twin_child, NULL, 0);
		twin_child = 0;
	}
	if (swap_active && !swapoff(swap_file))
		swap_active = 0;
	if (swap_file[0])
		unlink(swap_file);
	if (cg_dir[0])
		rmdir(cg_dir);
	if (budget_path[0])
		unlink(budget_path);
	if (tmp_path[0])
		unlink(tmp_path);
	for (int i = 0; i < 2; i++)
		if (shared_path[i][0])
			unlink(shared_path[i]);
	if (tmp_dir[0])
		rmdir(tmp_dir);
}

static void say(const char *s)
{
	ssize_t r = write(STDERR_FILENO, s, strlen(s));

	(void)r;
}

/* Installed with SA_RESETHAND: the raise() below kills us once we return. */
static void on_signal(int sig)
{
	remove_file();
	switch (sig) {
	case SIGALRM:
		say("\nlazymap-bench: HANG? no end within --timeout: ");
		say(running);
		say("\n");
		_exit(3);
	case SIGSEGV: say("\nlazymap-bench: SIGSEGV during: "); break;
	case SIGBUS:  say("\nlazymap-bench: SIGBUS during: "); break;
	case SIGABRT: say("\nlazymap-bench: SIGABRT during: "); break;
	case SIGFPE:  say("\nlazymap-bench: SIGFPE during: "); break;
	case SIGILL:  say("\nlazymap-bench: SIGILL during: "); break;
	default:      say("\nlazymap-bench: interrupted during: "); break;
	}
	say(running);
	say("\n");
	raise(sig);
}

static void catch_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGPIPE,
				    SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL };
	struct sigaction sa;

	main_pid = getpid();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESETHAND;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	atexit(remove_file);
}

/* ---------------------------------------------------------------- scenarios */

/* SPREAD: one page at random in each block of one_in pages, the blocks in shuffled order. */
enum access { SEQ, RAND, SPREAD };
/*
 * FILE_REMAP: FILE_READ through a second region of the file, after a first
 * one read it all. FILE_WRITE: a word written in each page touched of a
 * shared mapping of a copy of the file, then the whole mapping synced.
 * FILE_SHARED (daemon-shared): FILE_READ by a second client of faultd, once
 * a first client process has read the file; in process, FILE_REMAP; the
 * kernel reads the file all cached. FILE_RMW (umap-seq-rmw): FILE_WRITE, but
 * each touch reads the word, then writes it back changed (xor the run's salt).
 */
enum kind { ZERO_READ, ZERO_WRITE, FILL, FILE_READ, FILE_REMAP, FILE_WRITE, FILE_SHARED, FILE_RMW };
enum cache { NO_FILE, COLD, HOT };
enum group { G_ANON, G_THREADS, G_FILE, G_DAEMON, G_NBD, G_UMAP };

static const char *const group_names[] = { "anon", "threads", "file", "daemon", "nbd", "umap" };

struct scenario {
	const char *name;
	enum group group;
	enum kind kind;
	enum access access;
	enum cache cache;
	unsigned one_in;         /* RAND, SPREAD: touch one page in N; 0: all */
	int threads;             /* faulting threads: 0 the --threads list; N > 0: N, or
	                          * the list when --threads is given; -1: one, always */
	const char *kernel_twin; /* the daemon group has a third twin: lazymap in-process */
};

#define ALL_THREADS 0
#define ONE_THREAD  (-1)

static const struct scenario scenarios[] = {
	{ "anon-zero-write-seq", G_ANON, ZERO_WRITE, SEQ, NO_FILE, 0, 1, "mmap anonymous, write" },
	{ "anon-zero-write-rand", G_ANON, ZERO_WRITE, RAND, NO_FILE, 0, 1, "mmap anonymous, write" },
	{ "anon-zero-read-rand", G_ANON, ZERO_READ, RAND, NO_FILE, 0, 1, "mmap anonymous, read" },
	{ "anon-fill-seq", G_ANON, FILL, SEQ, NO_FILE, 0, 1, "mmap anonymous + fill in the program" },
	{ "anon-fill-rand", G_ANON, FILL, RAND, NO_FILE, 0, 1, "mmap anonymous + fill in the program" },
	/* Random writes: every touch is a round trip, so handlers are what is measured. */
	{ "threads", G_THREADS, ZERO_WRITE, RAND, NO_FILE, 0, ALL_THREADS, "mmap anonymous, write, same threads" },
	{ "file-seq-cold", G_FILE, FILE_READ, SEQ, COLD, 0, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped" },
	{ "file-seq-hot", G_FILE, FILE_READ, SEQ, HOT, 0, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached" },
	{ "file-rand-cold", G_FILE, FILE_READ, RAND, COLD, 100 / RAND_PERCENT, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped" },
	{ "file-rand-hot", G_FILE, FILE_READ, RAND, HOT, 100 / RAND_PERCENT, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached" },
	/*
	 * Every page once in shuffled order: where reading only the page touched
	 * is ruinous and read-around pays; 2 faulting threads as in issue 10.
	 */
	{ "file-rand-dense-cold", G_FILE, FILE_READ, RAND, COLD, 0, 2, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped" },
	{ "file-rand-dense-hot", G_FILE, FILE_READ, RAND, HOT, 0, 2, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached" },
	/* What a second region of a file costs once a first has read it all. */
	{ "file-remap", G_FILE, FILE_REMAP, SEQ, HOT, 0, 1, "a second mmap(MAP_PRIVATE, PROT_READ) of the file, the first scanned and kept mapped" },
	/*
	 * Write-back: 10% of the pages written, then the mapping synced; each
	 * twin on a copy of its own, reset after every run.
	 */
	{ "file-shared-write", G_FILE, FILE_WRITE, RAND, HOT, 10, 1, "mmap(MAP_SHARED, PROT_READ|PROT_WRITE) of a copy of the file, msync(MS_SYNC)" },
	/*
	 * Lone cold touches 1 MiB apart on average, one faulting thread: the
	 * cost of a fault that must wait for the disk, against the disk's own
	 * 4 KiB read. The kernel's read-around (the device's read_ahead_kb, up
	 * to its mmap_miss cut-off) may cover several blocks: rd/pg shows it.
	 */
	{ "file-sparse-touch", G_FILE, FILE_READ, SPREAD, COLD, 256, ONE_THREAD, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped" },
	/*
	 * The daemon group: lazymap served by faultd, against lazymap in-process
	 * (same handler threads) and the kernel; fill callbacks cannot be served
	 * by faultd, so the anonymous rows are demand-zero writes.
	 */
	{ "daemon-anon-seq", G_DAEMON, ZERO_WRITE, SEQ, NO_FILE, 0, 1, "mmap anonymous, write; and lazymap in-process" },
	{ "daemon-anon-rand", G_DAEMON, ZERO_WRITE, RAND, NO_FILE, 0, 1, "mmap anonymous, write; and lazymap in-process" },
	{ "daemon-file-seq-cold", G_DAEMON, FILE_READ, SEQ, COLD, 0, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped; and lazymap in-process" },
	{ "daemon-file-rand-cold", G_DAEMON, FILE_READ, RAND, COLD, 100 / RAND_PERCENT, ALL_THREADS, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped; and lazymap in-process" },
	/* A second client scanning what a first one read; the kernel's twin reads the page cache. */
	{ "daemon-shared", G_DAEMON, FILE_SHARED, SEQ, HOT, 0, ONE_THREAD, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached; and lazymap in-process, a second region (file-remap)" },
	/*
	 * The nbd group: lazymap_map_uri of the file exported by nbdkit, cold,
	 * against the kernel's mmap of the same export mounted with nbdfuse
	 * and against lazymap's region of the file itself (what the network
	 * path costs); 2 faulting threads for the random touches, as the issue.
	 */
	/* -cold: the client's caches empty, the server's file in memory (the
	 * network path alone); -disk-cold: the server's disk cold as well */
	{ "nbd-seq-cold", G_NBD, FILE_READ, SEQ, HOT, 0, ONE_THREAD, "mmap(MAP_SHARED, PROT_READ) of the export mounted with nbdfuse, its cache dropped, the server's file cached; and lazymap of the file" },
	{ "nbd-rand-cold", G_NBD, FILE_READ, RAND, HOT, 100 / RAND_PERCENT, 2, "mmap(MAP_SHARED, PROT_READ) of the export mounted with nbdfuse, its cache dropped, the server's file cached; and lazymap of the file" },
	{ "nbd-seq-disk-cold", G_NBD, FILE_READ, SEQ, COLD, 0, ONE_THREAD, "mmap(MAP_SHARED, PROT_READ) of the export mounted with nbdfuse, every cache dropped; and lazymap of the file" },
	{ "nbd-rand-disk-cold", G_NBD, FILE_READ, RAND, COLD, 100 / RAND_PERCENT, 2, "mmap(MAP_SHARED, PROT_READ) of the export mounted with nbdfuse, every cache dropped; and lazymap of the file" },
	/*
	 * The umap group (issue 14): umap() of liblazymap-umap against
	 * lazymap_map of the same file on a lazymap opened with the layer's own
	 * options, and the kernel; the layer's own cost, target within 5%.
	 */
	{ "umap-seq-read-cold", G_UMAP, FILE_READ, SEQ, COLD, 0, ONE_THREAD, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped; and lazymap_map of it" },
	{ "umap-seq-read-hot", G_UMAP, FILE_READ, SEQ, HOT, 0, ONE_THREAD, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached; and lazymap_map of it" },
	{ "umap-rand-read-cold", G_UMAP, FILE_READ, RAND, COLD, 100 / RAND_PERCENT, 2, "mmap(MAP_PRIVATE, PROT_READ) of the file, cache dropped; and lazymap_map of it" },
	{ "umap-rand-read-hot", G_UMAP, FILE_READ, RAND, HOT, 100 / RAND_PERCENT, 2, "mmap(MAP_PRIVATE, PROT_READ) of the file, all cached; and lazymap_map of it" },
	/* every page of a read-write copy read, changed and written; the sync timed apart */
	{ "umap-seq-rmw", G_UMAP, FILE_RMW, SEQ, HOT, 0, ONE_THREAD, "mmap(MAP_SHARED, PROT_READ|PROT_WRITE) of a copy of the file, msync(MS_SYNC); and lazymap_map(LAZYMAP_SHARED) of it" },
};
#define NSCENARIOS (sizeof(scenarios) / sizeof(scenarios[0]))

static bool is_file(const struct scenario *sc)
{
	return sc->kind >= FILE_READ;
}

/* A scenario that writes a read-write copy of the file, then syncs it. */
static bool is_write(const struct scenario *sc)
{
	return sc->kind == FILE_WRITE || sc->kind == FILE_RMW;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64: the same pages in the same order for both twins, run after run. */
static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* The fill both sides do in anon-fill-*: a word pattern over the page. */
static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	uint64_t *w = page;

	(void)arg;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = offset + i * 8;
	return 0;
}

/*
 * The generated file: the 8 bytes at offset off are splitmix64 of off/8, so
 * any page can be checked without keeping a copy, and no page is zero or
 * compressible.
 */
static inline uint64_t data_word(uint64_t off)
{
	uint64_t z = 0x6c617a796d6170ull + (off >> 3) * 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The word a touch of file page pg reads: a different place in each page. */
static inline size_t touch_off(uint32_t pg)
{
	return (size_t)pg * 0x9e3779b1u % (ps / 8) * 8;
}

/* The word file-shared-write puts where a touch of page pg reads: never the file's own. */
static inline uint64_t written_word(uint32_t pg, uint64_t salt)
{
	return data_word((uint64_t)pg * ps + touch_off(pg)) ^ salt;
}

/* ---------------------------------------------------------------- the touch loop */

struct slice {
	char *base;
	const uint32_t *order; /* this thread's pages, in its touch order */
	uint32_t *lat;         /* per-touch latency, ns, one per entry of order */
	size_t n;
	enum kind kind;
	bool kernel;
	uint64_t salt; /* FILE_WRITE: see written_word() */
	pthread_barrier_t *start;
	uint64_t t0, t1, sum;
	long minflt, majflt;
	pthread_t tid;
};

static void *touch_slice(void *arg)
{
	struct slice *s = arg;
	struct rusage ru0, ru1;
	uint64_t sum = 0;

	pthread_barrier_wait(s->start);
	getrusage(RUSAGE_THREAD, &ru0);
	s->t0 = now_ns();
	for (size_t i = 0; i < s->n; i++) {
		uint32_t pg = s->order[i];
		char *p = s->base + (size_t)pg * ps;
		uint64_t a = now_ns();

		switch (s->kind) {
		case ZERO_READ:
			sum += *(volatile char *)p;
			break;
		case ZERO_WRITE:
			*(volatile char *)p = 1;
			break;
		case FILL:
			if (s->kernel) /* the program fills the page itself on first touch */
				fill_pattern(p, ps, (uint64_t)pg * ps, NULL);
			sum += *(volatile uint64_t *)(p + 8);
			break;
		case FILE_READ:
		case FILE_REMAP:
		case FILE_SHARED:
			sum += *(volatile uint64_t *)(p + touch_off(pg));
			break;
		case FILE_WRITE:
			*(volatile uint64_t *)(p + touch_off(pg)) = written_word(pg, s->salt);
			break;
		case FILE_RMW: {
			/* the file's word xor salt: written_word(), as FILE_WRITE leaves it */
			volatile uint64_t *q = (volatile uint64_t *)(p + touch_off(pg));
			uint64_t v = *q;

			sum += v;
			*q = v ^ s->salt;
			break;
		}
		}
		uint64_t d = now_ns() - a;

		s->lat[i] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
	}
	s->t1 = now_ns();
	getrusage(RUSAGE_THREAD, &ru1);
	s->sum = sum;
	s->minflt = ru1.ru_minflt - ru0.ru_minflt;
	s->majflt = ru1.ru_majflt - ru0.ru_majflt;
	return NULL;
}

/*
 * The latency distribution kept of every run, for plots: quantiles 0, .01,
 * ..., .99, then the tail.
 */
#define NQ 104

static double quantile(int i)
{
	static const double tail[] = { 0.995, 0.999, 0.9999, 1 };

	return i < 100 ? i / 100.0 : tail[i - 100];
}

/* One run of one twin. */
struct run {
	double ns_per_page;        /* wall time of the whole scan (all threads) / pages touched */
	double p50, p90, p99, max; /* per-touch latency, ns, over all threads */
	double faults;             /* per touched page: kernel, the threads' minflt + majflt;
	                            * lazymap, fault messages served */
	double majflt;             /* kernel: major faults per touched page */
	double read_pages;         /* pages read from the file per touched page (kernel:
	                            * pages the run added to the page cache) */
	double cached_before, cached_after; /* share of the file in the page cache */
	uint64_t sum;              /* of the words touched */
	uint64_t msgs;             /* lazymap: fault messages served during the timed scan */
	uint64_t sync_ns;          /* file-shared-write: msync or lazymap_sync of the mapping */
	double written;            /* file-shared-write: bytes the writes made dirty (kernel:
	                            * /proc/self/io write_bytes, whole folios; lazymap:
	                            * bytes_written); < 0: not known */
	double hits;               /* faultd: faults it served from its cache, per touched
	                            * page (faultctl); < 0: not known */
	double first_ns_per_page;  /* daemon-shared: client 1's cold scan */
	double shmem_ns_per_page;  /* daemon-shared, kernel: the same scan of a memfd holding
	                            * the file's pages (what mapping the cache costs); < 0: none */
	double first_read_pages;   /* and what faultd read for it per page; < 0: not known */
	uint64_t first_msgs;       /* and the fault messages it raised */
	uint32_t cdf[NQ];          /* per-touch latency, ns, at quantile(i) */
};

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Touch each page of order once, split between nthreads threads: thread t
 * touches its own slice of order, in order. Wall time runs from the first
 * thread's start to the last one's end.
 */
static struct run scan(char *base, const uint32_t *order, size_t n, enum kind kind, bool kernel,
		       unsigned nthreads, uint64_t salt, uint32_t *lat)
{
	struct slice sl[MAX_THREADS];
	pthread_barrier_t start;
	struct run r = { 0 };
	uint64_t t0 = UINT64_MAX, t1 = 0;
	long flt = 0, maj = 0;

	if (nthreads > n)
		nthreads = (unsigned)n;
	pthread_barrier_init(&start, NULL, nthreads + 1);
	for (unsigned t = 0; t < nthreads; t++) {
		size_t a = n * t / nthreads, b = n * (t + 1) / nthreads;

		sl[t] = (struct slice){ .base = base, .order = order + a, .lat = lat + a, .n = b - a,
					.kind = kind, .kernel = kernel, .salt = salt, .start = &start };
		int err = pthread_create(&sl[t].tid, NULL, touch_slice, &sl[t]);

		if (err) {
			fprintf(stderr, "pthread_create: %s\n", strerror(err));
			exit(1);
		}
	}
	pthread_barrier_wait(&start);
	for (unsigned t = 0; t < nthreads; t++) {
		pthread_join(sl[t].tid, NULL);
		t0 = sl[t].t0 < t0 ? sl[t].t0 : t0;
		t1 = sl[t].t1 > t1 ? sl[t].t1 : t1;
		r.sum += sl[t].sum;
		flt += sl[t].minflt + sl[t].majflt;
		maj += sl[t].majflt;
	}
	pthread_barrier_destroy(&start);
	r.ns_per_page = (double)(t1 - t0) / (double)n;
	r.faults = (double)flt / (double)n;
	r.majflt = (double)maj / (double)n;
	qsort(lat, n, sizeof(*lat), cmp_u32);
	r.p50 = lat[n / 2];
	r.p90 = lat[n * 9 / 10];
	r.p99 = lat[n * 99 / 100];
	r.max = lat[n - 1];
	for (int i = 0; i < NQ; i++)
		r.cdf[i] = lat[(size_t)(quantile(i) * (double)(n - 1) + 0.5)];
	return r;
}

/* ---------------------------------------------------------------- the file and the page cache */

static int file_fd = -1;
static size_t file_size;
static unsigned char *mc_vec; /* mincore's answer, one byte per page of the file */

static const char *fs_name(long type)
{
	switch (type) {
	case 0xEF53: return "ext4";
	case 0x58465342: return "xfs";
	case 0x9123683E: return "btrfs";
	case 0x01021994: return "tmpfs";
	case 0x65735546: return "fuse";
	case 0x6969: return "nfs";
	default: return "other";
	}
}

/* Make tmp_dir under dir, where the generated files go. */
static int make_dir(const char *dir)
{
	if ((size_t)snprintf(tmp_dir, sizeof(tmp_dir), "%s/lazymap-bench.XXXXXX", dir) >= sizeof(tmp_dir)) {
		tmp_dir[0] = 0;
		return -ENAMETOOLONG;
	}
	if (!mkdtemp(tmp_dir)) {
		int err = -errno;

		tmp_dir[0] = 0;
		return err;
	}
	return 0;
}

/*
 * Create path, write size bytes of data_word() with large pwrite()s, fsync;
 * the descriptor (read-write) in *fdp.
 */
static int make_data_file(const char *path, size_t size, int *fdp)
{
	const size_t chunk = 8u << 20;
	uint64_t *buf = NULL;
	int fd = -1, err;

	err = -ENOMEM;
	buf = malloc(chunk);
	if (!buf)
		goto out;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	for (size_t off = 0; off < size; off += chunk) {
		size_t len = size - off < chunk ? size - off : chunk;

		for (size_t i = 0; i < len / 8; i++)
			buf[i] = data_word(off + i * 8);
		for (size_t done = 0; done < len;) {
			ssize_t w = pwrite(fd, (char *)buf + done, len - done, (off_t)(off + done));

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				err = w < 0 ? -errno : -EIO;
				goto out;
			}
			done += (size_t)w;
		}
		if (size > (64u << 20))
			fprintf(stderr, "\rgenerating %s: %zu/%zu MiB ", path, (off + len) >> 20, size >> 20);
	}
	if (fsync(fd)) {
		err = -errno;
		goto out;
	}
	*fdp = fd;
	fd = -1;
	err = 0;
out:
	if (size > (64u << 20))
		fprintf(stderr, "\r%*s\r", 100, "");
	if (fd >= 0)
		close(fd);
	free(buf);
	return err;
}

/* The bench file, in tmp_dir: the benchmark reads it like a reader would, read-only. */
static int make_file(size_t size)
{
	int fd = -1, err;

	snprintf(tmp_path, sizeof(tmp_path), "%s/data", tmp_dir);
	err = make_data_file(tmp_path, size, &fd);
	if (err)
		return err;
	close(fd);
	file_fd = open(tmp_path, O_RDONLY | O_CLOEXEC);
	return file_fd < 0 ? -errno : 0;
}

/* file-shared-write: the twins' copies, read-write, in tmp_dir. */
static int shared_fd[2] = { -1, -1 };
static size_t shared_size;

static int make_shared_files(size_t size)
{
	static const char *const names[2] = { "shared-kernel", "shared-lazymap" };

	shared_size = size;
	for (int i = 0; i < 2; i++) {
		snprintf(shared_path[i], sizeof(shared_path[i]), "%s/%s", tmp_dir, names[i]);
		int err = make_data_file(shared_path[i], size, &shared_fd[i]);

		if (err)
			return err;
	}
	return 0;
}

/* Share of a file of size bytes in the page cache now, from mincore on a mapping of it. */
static double cached_share(int fd, size_t size)
{
	size_t n = (size + ps - 1) / ps, in = 0;
	void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);

	if (p == MAP_FAILED || mincore(p, size, mc_vec)) {
		perror("mmap/mincore of the file");
		exit(1);
	}
	munmap(p, size);
	for (size_t i = 0; i < n; i++)
		in += mc_vec[i] & 1;
	return (double)in / (double)n;
}

/*
 * Cold: drop the file from the page cache and check that it went (pages
 * still mapped somewhere, or being written back, would stay). Hot: read it
 * all into the cache, and check, since the host may reclaim behind our back.
 * Returns the share cached now.
 */
static double prepare_cache(int fd, size_t size, enum cache cache)
{
	double in = cached_share(fd, size);

	if (cache == COLD) {
		for (int i = 0; i < 10 && in > 0; i++) {
			if (i)
				usleep(10000);
			int err = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);

			if (err) {
				fprintf(stderr, "posix_fadvise(DONTNEED): %s\n", strerror(err));
				exit(1);
			}
			in = cached_share(fd, size);
		}
	} else if (cache == HOT) {
		static char buf[1 << 20];

		for (int i = 0; i < 3 && in < 1; i++) {
			for (size_t off = 0; off < size;) {
				ssize_t r = pread(fd, buf, sizeof(buf), (off_t)off);

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					perror("pread of the file");
					exit(1);
				}
				off += (size_t)r;
			}
			in = cached_share(fd, size);
		}
	}
	return in;
}

/* ---------------------------------------------------------------- the machine */

/*
 * What kind of machine the run is on, measured at start in a few ms each:
 * tables from a KVM guest and from a paravirtualised one differ by 10x in
 * what a kernel entry costs, and must never be compared as if alike.
 */
struct machine {
	char line[800];   /* the "machine: ..." line, without its newline */
	char hv[64];      /* the hypervisor dmesg names, or empty */
	double syscall_ns, fault_ns;
	double uffd_ns;   /* < 0: not measured, uffd_why says why */
	char uffd_why[96];
	double disk_ns;   /* p50 of a 4 KiB read; < 0: not measured */
	char disk_how[160];
	const char *disk_fs;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median_of(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[n / 2];
}

#define PROBE_BATCHES 9

/* One getppid: the cheapest system call there is, so all of it is the entry and exit. */
static double probe_syscall(void)
{
	double v[PROBE_BATCHES];

	for (int b = 0; b < PROBE_BATCHES; b++) {
		uint64_t t0 = now_ns();

		for (int i = 0; i < 500; i++)
			syscall(SYS_getppid);
		v[b] = (double)(now_ns() - t0) / 500;
	}
	return median_of(v, PROBE_BATCHES);
}

/*
 * The first write to a fresh anonymous page: the kernel's own fault, against
 * which a userfaultfd round trip is judged. Timed in batches of 64 pages, so
 * that a clock read that costs a system call on some guests does not count.
 */
static double probe_anon_fault(void)
{
	const size_t per = 64, n = per * PROBE_BATCHES;
	double v[PROBE_BATCHES];
	char *p = mmap(NULL, n * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return -1;
	madvise(p, n * ps, MADV_NOHUGEPAGE);
	for (int b = 0; b < PROBE_BATCHES; b++) {
		uint64_t t0 = now_ns();

		for (size_t i = 0; i < per; i++)
			((volatile char *)p)[(b * per + i) * ps] = 1;
		v[b] = (double)(now_ns() - t0) / (double)per;
	}
	munmap(p, n * ps);
	return median_of(v, PROBE_BATCHES);
}

/*
 * A bare userfaultfd round trip: a faulting thread and a handler thread
 * pinned to one CPU (the cheapest placement: no cross-CPU wake-up), the
 * handler in a blocking read() answering each read fault with one
 * UFFDIO_ZEROPAGE. The last page of the area is the handler's signal to
 * stop once it has served it, so that no flag can race with a fault.
 */
struct uffd_probe {
	int uffd;
	char *area;
	size_t warm, per; /* untimed faults first, then PROBE_BATCHES batches of per */
	int err;          /* the handler's, or 0 */
	double v[PROBE_BATCHES];
};

static size_t uffd_probe_pages(const struct uffd_probe *u)
{
	return u->warm + u->per * PROBE_BATCHES + 1;
}

static void *uffd_probe_handler(void *arg)
{
	struct uffd_probe *u = arg;
	uintptr_t last = (uintptr_t)u->area + (uffd_probe_pages(u) - 1) * ps;

	for (;;) {
		struct uffd_msg msg;
		ssize_t n = read(u->uffd, &msg, sizeof(msg));

		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n != (ssize_t)sizeof(msg)) {
			u->err = n < 0 ? -errno : -EIO;
			break;
		}
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uintptr_t addr = (uintptr_t)msg.arg.pagefault.address & ~(uintptr_t)(ps - 1);
		struct uffdio_zeropage zp = { .range = { .start = addr, .len = ps } };

		if (ioctl(u->uffd, UFFDIO_ZEROPAGE, &zp) && errno != EEXIST) {
			u->err = -errno;
			break;
		}
		if (zp.zeropage < 0) { /* EEXIST: someone filled it; its waiters need a wake */
			struct uffdio_range r = { .start = addr, .len = ps };

			ioctl(u->uffd, UFFDIO_WAKE, &r);
		}
		if (addr == last)
			return NULL;
	}
	/* Give up without leaving the faulting thread asleep: unregistering wakes it. */
	struct uffdio_range all = { .start = (uintptr_t)u->area, .len = uffd_probe_pages(u) * ps };

	ioctl(u->uffd, UFFDIO_UNREGISTER, &all);
	return NULL;
}

static void *uffd_probe_faulter(void *arg)
{
	struct uffd_probe *u = arg;
	volatile char *p = u->area;
	size_t pg = 0;

	while (pg < u->warm)
		(void)p[pg++ * ps];
	for (int b = 0; b < PROBE_BATCHES; b++) {
		uint64_t t0 = now_ns();

		for (size_t i = 0; i < u->per; i++)
			(void)p[pg++ * ps];
		u->v[b] = (double)(now_ns() - t0) / (double)u->per;
	}
	(void)p[pg * ps]; /* the last page: the handler stops */
	return NULL;
}

/* A userfaultfd as an unprivileged program gets one: user-mode faults only, else /dev/userfaultfd. */
static int uffd_open(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);

	if (fd < 0 && errno == EINVAL)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
#ifdef USERFAULTFD_IOC_NEW
	if (fd < 0 && errno == EPERM) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
			close(dev);
		}
		if (fd < 0)
			errno = EPERM;
	}
#endif
	return fd < 0 ? -errno : fd;
}

/* Start fn pinned to cpu. */
static int start_pinned(pthread_t *t, int cpu, void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	cpu_set_t set;
	int err;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_attr_init(&attr);
	err = pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
	if (!err)
		err = pthread_create(t, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	return -err;
}

/* The round trip's median per fault, ns, or -errno (why names the step). */
static double probe_uffd(char *why, size_t whylen)
{
	struct uffd_probe u = { .warm = 16, .per = 32 };
	size_t len = uffd_probe_pages(&u) * ps;
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
	pthread_t h, f;
	cpu_set_t set;
	int cpu = 0, err;
	double ns = -1;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		while (cpu < CPU_SETSIZE - 1 && !CPU_ISSET(cpu, &set))
			cpu++;
	u.uffd = uffd_open();
	if (u.uffd < 0) {
		snprintf(why, whylen, "userfaultfd: %s", strerror(-u.uffd));
		return -1;
	}
	u.area = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (u.area == MAP_FAILED) {
		snprintf(why, whylen, "mmap: %s", strerror(errno));
		goto out_fd;
	}
	madvise(u.area, len, MADV_NOHUGEPAGE);
	reg.range.start = (uintptr_t)u.area;
	reg.range.len = len;
	if (ioctl(u.uffd, UFFDIO_API, &api) || ioctl(u.uffd, UFFDIO_REGISTER, &reg)) {
		snprintf(why, whylen, "UFFDIO_API/REGISTER: %s", strerror(errno));
		goto out_map;
	}
	err = start_pinned(&h, cpu, uffd_probe_handler, &u);
	if (err) {
		snprintf(why, whylen, "handler thread: %s", strerror(-err));
		goto out_map;
	}
	err = start_pinned(&f, cpu, uffd_probe_faulter, &u);
	if (err) {
		/* Nobody will touch the last page: wake the handler out of read() by doing it here. */
		(void)((volatile char *)u.area)[(uffd_probe_pages(&u) - 1) * ps];
		pthread_join(h, NULL);
		snprintf(why, whylen, "faulting thread: %s", strerror(-err));
		goto out_map;
	}
	pthread_join(f, NULL);
	pthread_join(h, NULL);
	if (u.err)
		snprintf(why, whylen, "handler: %s", strerror(-u.err));
	else
		ns = median_of(u.v, PROBE_BATCHES);
out_map:
	munmap(u.area, len);
out_fd:
	close(u.uffd);
	return ns;
}

/* All of n bytes at off, or -errno (-EIO at the end of the file). */
static int read_at(int fd, void *buf, size_t n, off_t off)
{
	for (size_t done = 0; done < n;) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

#define DISK_READS 64

/*
 * The disk's own latency for one 4 KiB read at a random place of the file:
 * the floor under any cold fault. O_DIRECT, so the page cache is out of the
 * way; where the file system refuses it, buffered reads of a file just
 * dropped from the cache (with readahead off), and the line says so.
 */
static void probe_disk(const char *path, size_t size, struct machine *m)
{
	double v[DISK_READS];
	uint64_t seed = 0x64697363ull;
	void *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT), err = 0;
	bool direct = fd >= 0;

	m->disk_ns = -1;
	if (!direct)
		err = errno;
	if (posix_memalign(&buf, 4096, 4096)) {
		snprintf(m->disk_how, sizeof(m->disk_how), "not measured: no memory");
		goto out;
	}
	/* Some file systems take O_DIRECT at open and refuse the read. */
	if (direct && read_at(fd, buf, 4096, 0) == -EINVAL) {
		err = EINVAL;
		close(fd);
		direct = false;
	}
	if (!direct) {
		int e;

		fd = open(path, O_RDONLY | O_CLOEXEC);
		e = fd < 0 ? errno : posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		if (!e)
			e = posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
		if (e) {
			snprintf(m->disk_how, sizeof(m->disk_how), "not measured: %s", strerror(e));
			goto out;
		}
	}
	for (int i = 0; i < DISK_READS; i++) {
		off_t off = (off_t)(next_rand(&seed) % (size / 4096)) * 4096;
		uint64_t t0 = now_ns();
		int r = read_at(fd, buf, 4096, off);

		if (r) {
			snprintf(m->disk_how, sizeof(m->disk_how), "not measured: pread: %s", strerror(-r));
			goto out;
		}
		v[i] = (double)(now_ns() - t0);
	}
	m->disk_ns = median_of(v, DISK_READS);
	if (direct)
		snprintf(m->disk_how, sizeof(m->disk_how), "O_DIRECT");
	else
		snprintf(m->disk_how, sizeof(m->disk_how),
			 "buffered after POSIX_FADV_DONTNEED: O_DIRECT refused: %s", strerror(err));
out:
	if (fd >= 0)
		close(fd);
	free(buf);
}

/* "PVM" from dmesg's "Hypervisor detected: PVM", if the kernel log is readable and still has it. */
static void hypervisor_name(char *buf, size_t len)
{
	int n = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *text = n > 0 ? malloc((size_t)n + 1) : NULL;
	const char *key = "Hypervisor detected: ";

	buf[0] = 0;
	if (text) {
		n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, text, n);
		text[n > 0 ? n : 0] = 0;
		char *s = strstr(text, key);

		if (s) {
			s += strlen(key);
			snprintf(buf, len, "%.*s", (int)strcspn(s, "\r\n"), s);
		}
		free(text);
	}
	if (!buf[0]) { /* Xen says it here */
		FILE *f = fopen("/sys/hypervisor/type", "r");

		if (f) {
			if (fgets(buf, (int)len, f))
				buf[strcspn(buf, "\n")] = 0;
			fclose(f);
		}
	}
}

/* Measure and describe the machine; disk_path NULL: no file to read. */
static void probe_machine(struct machine *m, const char *disk_path, size_t disk_size,
			  const char *fs)
{
	struct utsname un;
	char uffd[128], disk[256], hv[80] = "";

	memset(m, 0, sizeof(*m));
	snprintf(running, sizeof(running), "measuring the machine's costs");
	alarm(60); /* a userfaultfd that never answers must not hang the run */
	uname(&un);
	hypervisor_name(m->hv, sizeof(m->hv));
	m->syscall_ns = probe_syscall();
	m->fault_ns = probe_anon_fault();
	m->uffd_ns = probe_uffd(m->uffd_why, sizeof(m->uffd_why));
	m->disk_ns = -1;
	m->disk_fs = fs;
	if (disk_path)
		probe_disk(disk_path, disk_size, m);
	else
		snprintf(m->disk_how, sizeof(m->disk_how), "not measured: no file scenario");
	alarm(0);
	if (m->hv[0])
		snprintf(hv, sizeof(hv), ", %s guest", m->hv);
	if (m->uffd_ns >= 0)
		snprintf(uffd, sizeof(uffd), "%.1f us", m->uffd_ns / 1000);
	else
		snprintf(uffd, sizeof(uffd), "n/a (%s)", m->uffd_why);
	if (m->disk_ns >= 0)
		snprintf(disk, sizeof(disk), "disk 4 KiB read p50 %.0f us (%s, %s)", m->disk_ns / 1000,
			 m->disk_how, fs);
	else
		snprintf(disk, sizeof(disk), "disk 4 KiB read %s", m->disk_how);
	snprintf(m->line, sizeof(m->line),
		 "machine: Linux %s %s, %ld CPUs%s; syscall %.2f us, kernel page fault %.1f us, "
		 "uffd round trip (same CPU, ZEROPAGE) %s; %s",
		 un.release, un.machine, sysconf(_SC_NPROCESSORS_ONLN), hv, m->syscall_ns / 1000,
		 m->fault_ns / 1000, uffd, disk);
}

/* Measured once at start; file-sparse-touch compares its faults with the disk read. */
static struct machine machine;

/* ---------------------------------------------------------------- the twins */

/*
 * What runs: one scenario, through the page cache or direct, by this many
 * threads; the threads group also says how many handler threads serve it.
 */
struct job {
	const struct scenario *sc;
	bool direct;
	unsigned threads;
	unsigned handlers; /* threads group: handler threads of its own handle; else 0 */
	char name[64];     /* row name: scenario[+direct], or threads-hN */
	size_t npages;     /* of the mapping */
	size_t touched;    /* entries of order */
	const uint32_t *order;
	uint64_t want_sum; /* file scenarios: what the touched words add up to */
	uint64_t salt;     /* file-shared-write: this run's, so that a run's bytes differ from the last */
};

static bool use_advise;

static int kernel_advice(enum access a)
{
	return a == SEQ ? MADV_SEQUENTIAL : MADV_RANDOM;
}

/* A private read-only mapping of the bench file, advised as the scenario asks. */
static char *kernel_map_file(const struct job *j)
{
	size_t len = j->npages * ps;
	char *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, file_fd, 0);

	if (p == MAP_FAILED) {
		perror("mmap of the file");
		exit(1);
	}
	if (use_advise)
		madvise(p, len, kernel_advice(j->sc->access));
	return p;
}

/*
 * daemon-shared: the kernel's scan of a memfd holding the file's pages, the
 * copy untimed. A second client maps faultd's cache memfd and the kernel
 * serves its scan with no word to faultd, so this is its floor: shmem's
 * 4 KiB pages, mapped 16 per fault, against the file's large folios. The
 * latencies are overwritten (the file's scan is the row's). -1 on failure.
 */
static double kernel_shmem_scan(const struct job *j, uint32_t *lat)
{
	size_t len = j->npages * ps;
	int fd = memfd_create("bench-shmem", MFD_CLOEXEC);
	static char buf[1 << 20];
	double ns = -1;
	ssize_t n;
	char *p;

	if (fd < 0)
		return -1;
	for (size_t off = 0; off < len; off += (size_t)n) {
		n = pread(file_fd, buf, len - off < sizeof(buf) ? len - off : sizeof(buf), (off_t)off);
		if (n <= 0 || pwrite(fd, buf, (size_t)n, (off_t)off) != n)
			goto out;
	}
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (p != MAP_FAILED) {
		ns = scan(p, j->order, j->touched, FILE_READ, true, j->threads, 0, lat).ns_per_page;
		munmap(p, len);
	}
out:
	close(fd);
	return ns;
}

/*
 * file-shared-write: does the file hold exactly the written words (and the
 * rest as generated)? Read back with pread, all of it, so that a write-back
 * of a wrong page shows too. First difference in why; false if none.
 */
static bool check_written(int fd, const struct job *j, char *why, size_t whylen)
{
	const size_t chunk = 8u << 20;
	size_t len = j->npages * ps, bad = 0;
	unsigned char *hit = calloc(j->npages, 1);
	uint64_t *buf = malloc(chunk);

	if (!hit || !buf) {
		fprintf(stderr, "check_written: out of memory\n");
		exit(1);
	}
	for (size_t i = 0; i < j->touched; i++)
		hit[j->order[i]] = 1;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		int err = read_at(fd, buf, n, (off_t)off);

		if (err) {
			snprintf(why, whylen, "pread of the file: %s", strerror(-err));
			bad = 1;
			break;
		}
		for (size_t k = 0; k < n / 8; k++) {
			uint64_t at = off + k * 8;
			uint32_t pg = (uint32_t)(at / ps);
			uint64_t want = hit[pg] && at % ps == touch_off(pg) ? written_word(pg, j->salt)
									    : data_word(at);

			if (buf[k] == want)
				continue;
			if (!bad++)
				snprintf(why, whylen, "after the sync, file page %u word %zu holds 0x%016llx, "
					 "not the %s 0x%016llx", (unsigned)pg, (size_t)(at % ps / 8),
					 (unsigned long long)buf[k], want == data_word(at) ?
					 "file's own" : "word written", (unsigned long long)want);
			k = ((size_t)pg + 1) * ps / 8 - off / 8 - 1; /* on to the next page */
		}
	}
	if (bad > 1 || (bad && strncmp(why, "pread", 5))) {
		size_t l = strlen(why);

		snprintf(why + l, whylen - l, " (%zu of %zu pages wrong)", bad, j->npages);
	}
	free(hit);
	free(buf);
	return bad != 0;
}

/* Put the file's own words back where a run wrote, durably: the next run starts from the same file. */
static void reset_written(int fd, const struct job *j)
{
	for (size_t i = 0; i < j->touched; i++) {
		uint32_t pg = j->order[i];
		uint64_t at = (uint64_t)pg * ps + touch_off(pg), w = data_word(at);

		if (pwrite(fd, &w, sizeof(w), (off_t)at) != (ssize_t)sizeof(w)) {
			perror("file-shared-write: resetting the file");
			exit(1);
		}
	}
	if (fdatasync(fd)) {
		perror("file-shared-write: fdatasync");
		exit(1);
	}
}

/*
 * The bytes this process has made dirty in the page cache so far
 * (/proc/self/io write_bytes, counted as folios are dirtied); -1 if the
 * kernel does not say.
 */
static double io_write_bytes(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	unsigned long long v;
	char line[128];
	double ret = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "write_bytes: %llu", &v) == 1)
			ret = (double)v;
	fclose(f);
	return ret;
}

/*
 * file-shared-write, kernel twin: the writes, msync(MS_SYNC) timed apart,
 * the file checked. The kernel tracks dirt per folio: a word written in a
 * large folio makes all of it dirty, and r.written says how much that was.
 */
static struct run kernel_write(const struct job *j, uint32_t *lat, char *why, size_t whylen)
{
	size_t len = j->npages * ps;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd[0], 0);
	double w0 = io_write_bytes(), w1;
	struct run r;
	uint64_t t0;

	if (p == MAP_FAILED) {
		perror("mmap(MAP_SHARED) of the kernel's copy");
		exit(1);
	}
	if (use_advise)
		madvise(p, len, kernel_advice(j->sc->access));
	r = scan(p, j->order, j->touched, j->sc->kind, true, j->threads, j->salt, lat);
	t0 = now_ns();
	if (msync(p, len, MS_SYNC))
		snprintf(why, whylen, "msync: %s", strerror(errno));
	r.sync_ns = now_ns() - t0;
	w1 = io_write_bytes();
	r.written = w0 < 0 || w1 < 0 ? -1 : w1 - w0;
	if (!why[0])
		check_written(shared_fd[0], j, why, whylen);
	munmap(p, len);
	reset_written(shared_fd[0], j);
	return r;
}

static struct run run_kernel(const struct job *j, uint32_t *lat, char *why, size_t whylen)
{
	size_t len = j->npages * ps;
	char *p, *first = NULL;
	struct run r;

	switch (j->sc->kind) {
	case FILE_WRITE:
	case FILE_RMW:
		return kernel_write(j, lat, why, whylen);
	case FILE_REMAP:
		/* The first mapping is read in full, untimed, and stays mapped. */
		first = kernel_map_file(j);
		scan(first, j->order, j->touched, FILE_READ, true, j->threads, 0, lat);
		/* fall through */
	case FILE_READ:
	case FILE_SHARED: /* the kernel's twin of a second client: a scan of the cached file */
		p = kernel_map_file(j);
		break;
	default:
		p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			exit(1);
		}
		madvise(p, len, MADV_NOHUGEPAGE); /* per-4 KiB faults, like ours */
		break;
	}
	r = scan(p, j->order, j->touched, j->sc->kind, true, j->threads, 0, lat);
	munmap(p, len);
	if (first)
		munmap(first, len);
	r.shmem_ns_per_page = j->sc->kind == FILE_SHARED ? kernel_shmem_scan(j, lat) : -1;
	return r;
}

/* First wrong word of the touched pages of a file mapping, in why; false if none. */
static bool check_pages(const char *p, const struct job *j, char *why, size_t whylen)
{
	size_t bad = 0;

	for (size_t i = 0; i < j->touched; i++) {
		uint32_t pg = j->order[i];
		const uint64_t *w = (const uint64_t *)(p + (size_t)pg * ps);

		for (size_t k = 0; k < ps / 8; k++) {
			uint64_t want = data_word((uint64_t)pg * ps + k * 8);

			if (w[k] != want) {
				if (!bad++)
					snprintf(why, whylen,
						 "page %u word %zu: 0x%016llx, file has 0x%016llx",
						 (unsigned)pg, k, (unsigned long long)w[k],
						 (unsigned long long)want);
				break;
			}
		}
	}
	if (bad) {
		size_t l = strlen(why);

		snprintf(why + l, whylen - l, " (%zu of %zu touched pages wrong)", bad, j->touched);
	}
	return bad != 0;
}

/* The counters of struct lazymap_stats; level 1: a gauge or a high-water mark, not a count. */
#define STATS_FIELDS(X)                                                                         \
	X(faults, 0) X(pages_filled, 0) X(bytes_read, 0) X(bytes_written, 0) X(evictions, 0)    \
	X(io_errors, 0) X(zero_pages, 0) X(fill_calls, 0) X(copy_ioctls, 0) X(move_ioctls, 0)    \
	X(zeropage_ioctls, 0) X(coalesced, 0) X(unowned, 0) X(reads, 0) X(sleeps, 0)              \
	X(prefetched, 0) X(max_batch, 1) X(regions, 1) X(file_reads, 0) X(short_reads, 0)        \
	X(readahead_pages, 0) X(inflight_max, 1) X(wp_faults, 0) X(writebacks, 0)             \
	X(dirty_pages, 1) X(cache_pages, 1) X(remote_reconnects, 0) X(remote_timeouts, 0)

/* acc += b - a for counts; acc = the larger for levels. */
static void stats_add_delta(struct lazymap_stats *acc, const struct lazymap_stats *a,
			    const struct lazymap_stats *b)
{
#define X(f, level) acc->f = (level) ? (b->f > acc->f ? b->f : acc->f) : acc->f + (b->f - a->f);
	STATS_FIELDS(X)
#undef X
}

/* A private read-only region of the bench file (direct if the job says), advised as it asks. */
static int lazymap_map_file(struct lazymap *lm, const struct job *j, void **p, const char **what)
{
	size_t len = j->npages * ps;
	int ret;

	*what = "lazymap_map";
	ret = lazymap_map(lm, p, len, PROT_READ, LAZYMAP_PRIVATE | (j->direct ? LAZYMAP_DIRECT : 0),
			  file_fd, 0);
	/* the umap group: umap has no advice to give, so neither twin of it gets any */
	if (ret || !use_advise || j->sc->group == G_UMAP)
		return ret;
	*what = "lazymap_advise";
	ret = lazymap_advise(lm, *p, len,
			     j->sc->access == SEQ ? LAZYMAP_ADV_SEQUENTIAL : LAZYMAP_ADV_RANDOM);
	if (ret)
		lazymap_unmap(lm, *p, len);
	return ret;
}

/* The timed scan of a lazymap region, with what the handlers did for it. */
static struct run lazymap_scan(struct lazymap *lm, const struct job *j, char *p, enum kind kind,
			       uint32_t *lat, struct lazymap_stats *acc)
{
	struct lazymap_stats st0, st1;
	struct run r;

	memset(&st0, 0, sizeof(st0));
	memset(&st1, 0, sizeof(st1));
	lazymap_stats(lm, &st0);
	r = scan(p, j->order, j->touched, kind, false, j->threads, j->salt, lat);
	lazymap_stats(lm, &st1);
	stats_add_delta(acc, &st0, &st1);
	r.msgs = st1.faults - st0.faults;
	r.faults = (double)r.msgs / (double)j->touched;
	r.majflt = 0;
	r.read_pages = (double)(st1.bytes_read - st0.bytes_read) / (double)ps / (double)j->touched;
	return r;
}

/*
 * file-shared-write, lazymap twin: the writes, lazymap_sync timed apart, the
 * file checked before the region goes (so that it is the sync that wrote
 * it, not the unmap). 0, or the error of the call named in *what.
 */
static int lazymap_write(struct lazymap *lm, const struct job *j, uint32_t *lat, struct run *r,
			 struct lazymap_stats *acc, char *bad, size_t badlen, const char **what)
{
	size_t len = j->npages * ps;
	struct lazymap_stats st0, st1;
	uint64_t t0;
	void *p;
	int ret;

	*what = "lazymap_map(LAZYMAP_SHARED)";
	ret = lazymap_map(lm, &p, len, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, shared_fd[1], 0);
	if (ret)
		return ret;
	if (use_advise && j->sc->group != G_UMAP &&
	    (ret = lazymap_advise(lm, p, len, kernel_advice(j->sc->access) == MADV_SEQUENTIAL
						? LAZYMAP_ADV_SEQUENTIAL : LAZYMAP_ADV_RANDOM))) {
		*what = "lazymap_advise";
		goto out;
	}
	*r = lazymap_scan(lm, j, p, j->sc->kind, lat, acc);
	memset(&st0, 0, sizeof(st0));
	memset(&st1, 0, sizeof(st1));
	lazymap_stats(lm, &st0);
	t0 = now_ns();
	*what = "lazymap_sync";
	ret = lazymap_sync(lm, p, len);
	r->sync_ns = now_ns() - t0;
	lazymap_stats(lm, &st1);
	stats_add_delta(acc, &st0, &st1);
	r->written = (double)(st1.bytes_written - st0.bytes_written);
	if (!ret && !bad[0])
		check_written(shared_fd[1], j, bad, badlen);
out:
	lazymap_unmap(lm, p, len);
	reset_written(shared_fd[1], j);
	return ret;
}

/*
 * One lazymap run; 0, or the error of the call named in *what (the region
 * is gone then). Wrong data of the touched pages goes in bad (first error
 * only).
 */
static int run_lazymap(struct lazymap *lm, const struct job *j, uint32_t *lat, struct run *r,
		       struct lazymap_stats *acc, char *bad, size_t badlen, const char **what)
{
	size_t len = j->npages * ps;
	void *p, *first = NULL;
	int ret;

	switch (j->sc->kind) {
	case FILE_WRITE:
	case FILE_RMW:
		return lazymap_write(lm, j, lat, r, acc, bad, badlen, what);
	case FILL:
		*what = "lazymap_map_fill";
		ret = lazymap_map_fill(lm, &p, len, PROT_READ | PROT_WRITE, fill_pattern, NULL);
		break;
	case FILE_REMAP:
	case FILE_SHARED: /* in process, a second client is a second region */
		/*
		 * The first region, read in full and untimed, stays mapped: the
		 * second should find every page in the file's cache.
		 */
		ret = lazymap_map_file(lm, j, &first, what);
		if (ret)
			return ret;
		if (scan(first, j->order, j->touched, FILE_READ, false, j->threads, 0, lat).sum !=
			    j->want_sum && !bad[0])
			snprintf(bad, badlen, "first region: checksum of the touched words differs");
		/* fall through */
	case FILE_READ:
		ret = lazymap_map_file(lm, j, &p, what);
		break;
	default:
		*what = "lazymap_map";
		ret = lazymap_map(lm, &p, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE | LAZYMAP_ANON,
				  -1, 0);
		break;
	}
	if (!ret) {
		*r = lazymap_scan(lm, j, p, j->sc->kind, lat, acc);
		if (is_file(j->sc) && !bad[0])
			check_pages(p, j, bad, badlen);
		lazymap_unmap(lm, p, len);
	}
	if (first)
		lazymap_unmap(lm, first, len);
	return ret;
}

/*
 * One run of the umap twin: umap() of the bench file (read-only: a private
 * view) or of the lazymap twin's read-write copy (FILE_RMW: written back,
 * umap_flush timed apart, the file checked before uunmap), through
 * liblazymap-umap's one lazymap of the process. umap gives no counters: its
 * faults and reads per page are not known (-1). 0, or -errno of the call
 * named in *what.
 */
static int run_umap(const struct job *j, uint32_t *lat, struct run *r, char *bad, size_t badlen,
		    const char **what)
{
	bool rmw = j->sc->kind == FILE_RMW;
	size_t len = j->npages * ps;
	int ret = 0, fd = rmw ? shared_fd[1] : file_fd;
	uint64_t t0;
	char *p;

	*what = rmw ? "umap(PROT_READ|PROT_WRITE, O_RDWR file)" : "umap(PROT_READ)";
	p = umap(NULL, len, rmw ? PROT_READ | PROT_WRITE : PROT_READ, UMAP_PRIVATE, fd, 0);
	if (p == UMAP_FAILED)
		return -errno;
	*r = scan(p, j->order, j->touched, j->sc->kind, false, j->threads, j->salt, lat);
	r->faults = -1;
	r->read_pages = -1;
	r->written = -1;
	if (rmw) {
		*what = "umap_flush";
		t0 = now_ns();
		if (umap_flush())
			ret = -errno;
		r->sync_ns = now_ns() - t0;
		if (!ret && !bad[0])
			check_written(fd, j, bad, badlen);
	} else if (!bad[0]) {
		check_pages(p, j, bad, badlen);
	}
	if (uunmap(p, len) && !ret) {
		*what = "uunmap";
		ret = -errno;
	}
	if (rmw)
		reset_written(fd, j);
	return ret;
}

/* ---------------------------------------------------------------- faultd */

/* dir/name if it is an executable file (a canonical path in out). */
static bool try_prog(const char *dir, const char *name, char *out, size_t len)
{
	char path[PATH_MAX * 2], real[PATH_MAX];
	struct stat sb;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path) ||
	    access(path, X_OK) || stat(path, &sb) || !S_ISREG(sb.st_mode) || !realpath(path, real))
		return false;
	return (size_t)snprintf(out, len, "%s", real) < len;
}

/* The directory of the bench's own executable. */
static bool exe_dir(char *buf, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", buf, len - 1);
	char *slash;

	if (n <= 0)
		return false;
	buf[n] = 0;
	slash = strrchr(buf, '/');
	if (!slash)
		return false;
	*slash = 0;
	return true;
}

/* A program in $PATH. */
static bool find_in_path(const char *name, char *out, size_t len)
{
	const char *path = getenv("PATH");
	char dir[PATH_MAX];

	while (path && *path) {
		size_t n = strcspn(path, ":");

		snprintf(dir, sizeof(dir), "%.*s", (int)n, path);
		if (n && try_prog(dir, name, out, len))
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

/*
 * A program of ours: in first (if given), then where the bench's build tree
 * puts it (bench/../daemon/), then beside the bench (installed: one bindir),
 * then in $PATH.
 */
static bool find_prog(const char *name, const char *first, char *out, size_t len)
{
	char dir[PATH_MAX], up[PATH_MAX + 16];

	if (first && try_prog(first, name, out, len))
		return true;
	if (exe_dir(dir, sizeof(dir))) {
		snprintf(up, sizeof(up), "%s/../daemon", dir);
		if (try_prog(up, name, out, len) || try_prog(dir, name, out, len))
			return true;
	}
	return find_in_path(name, out, len);
}

static bool can_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	bool ok;

	if (s < 0 || strlen(path) >= sizeof(sa.sun_path)) {
		if (s >= 0)
			close(s);
		return false;
	}
	strcpy(sa.sun_path, path);
	ok = connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(s);
	return ok;
}

/* The last line a server of ours logged in path, for the reason it did not start. */
static void log_tail(const char *path, char *out, size_t len)
{
	char buf[4096];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = 0;
	off_t end;

	out[0] = 0;
	if (fd < 0)
		return;
	end = lseek(fd, 0, SEEK_END);
	if (end > 0)
		n = pread(fd, buf, sizeof(buf) - 1, end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0);
	close(fd);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	if (n <= 0)
		return;
	buf[n] = 0;
	char *line = strrchr(buf, '\n');

	snprintf(out, len, "%.*s", (int)len - 1, line ? line + 1 : buf);
}

static void describe_status(int st, char *out, size_t len)
{
	if (WIFEXITED(st))
		snprintf(out, len, "exit status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(out, len, "killed by %s", strsignal(WTERMSIG(st)));
	else
		snprintf(out, len, "wait status 0x%x", st);
}

/* A directory of ours for a server's socket: short enough for a socket's path (108 bytes). */
static int make_sock_dir(char *dir, size_t len, const char *what, char *why, size_t whylen)
{
	const char *tmp = getenv("TMPDIR");

	if (!tmp || !*tmp || strlen(tmp) > 60)
		tmp = "/tmp";
	snprintf(dir, len, "%s/lazymap-bench-%s.XXXXXX", tmp, what);
	if (!mkdtemp(dir)) {
		snprintf(why, whylen, "mkdtemp(%s): %s", dir, strerror(errno));
		dir[0] = 0;
		return -1;
	}
	return 0;
}

/*
 * Start a server of ours, bin with argv, in the foreground: its output to
 * log, in a process group of its own (a ^C reaches the bench alone, which
 * stops it in order), and taken along by a SIGTERM if the bench is killed
 * outright. Its pid, or -1 with why said.
 */
static pid_t spawn_server(const char *bin, char *const argv[], const char *log, char *why,
			  size_t whylen)
{
	int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	pid_t parent = getpid(), pid = -1;

	if (logfd < 0 || nullfd < 0) {
		snprintf(why, whylen, "%s: %s", logfd < 0 ? log : "/dev/null", strerror(errno));
		goto out;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		snprintf(why, whylen, "fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		sigset_t none;

		/* Only async-signal-safe calls here: the parent has threads. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(126);
		dup2(nullfd, 0);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execv(bin, argv);
		_exit(127);
	}
out:
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return pid;
}

/* A server that exited at start, said: how, the exec's failure, its log's last line. */
static void exited_at_start(const char *name, const char *bin, int st, const char *log, char *why,
			    size_t whylen)
{
	char how[64], tail[150];

	describe_status(st, how, sizeof(how));
	log_tail(log, tail, sizeof(tail));
	snprintf(why, whylen, "%s (%.100s) exited at start: %s%s%s%s", name, bin, how,
		 WIFEXITED(st) && WEXITSTATUS(st) == 127 ? " (exec failed)" : "",
		 tail[0] ? "; it said: " : "", tail);
}

/*
 * Start our faultd (fdm.bin) on a socket in a new directory and wait until
 * it accepts connections (at most 10 s; at once if it exits). Its output
 * goes to a log there. 0, or -1 with fdm.why said.
 */
static int faultd_spawn(void)
{
	char threads[16];
	char *argv[] = { "faultd", "--foreground", "--socket", fdm.sock_buf, "--threads", threads,
			 NULL };
	pid_t pid;

	if (make_sock_dir(fdm.dir, sizeof(fdm.dir), "faultd", fdm.why, sizeof(fdm.why)))
		return -1;
	snprintf(fdm.sock_buf, sizeof(fdm.sock_buf), "%s/faultd.sock", fdm.dir);
	snprintf(fdm.log, sizeof(fdm.log), "%s/faultd.log", fdm.dir);
	snprintf(threads, sizeof(threads), "%u", fdm.threads);
	pid = spawn_server(fdm.bin, argv, fdm.log, fdm.why, sizeof(fdm.why));
	if (pid < 0)
		goto fail;
	fdm.pid = pid;
	for (uint64_t end = now_ns() + 10000000000ull; !can_connect(fdm.sock_buf);) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			fdm.pid = 0;
			exited_at_start("faultd", fdm.bin, st, fdm.log, fdm.why, sizeof(fdm.why));
			goto fail;
		}
		if (now_ns() > end) {
			snprintf(fdm.why, sizeof(fdm.why), "faultd (%s) did not listen on %s within 10 s",
				 fdm.bin, fdm.sock_buf);
			goto fail;
		}
		sleep_ms(2);
	}
	fdm.socket = fdm.sock_buf;
	return 0;
fail:
	faultd_stop();
	return -1;
}

/*
 * The daemon rows' faultd: the one on sock if given (nothing started), else
 * ours, from bin or found beside the bench. fdm.ok once a client could
 * connect; else fdm.why says why the rows are unavailable.
 */
static void faultd_setup(const char *sock, const char *bin, const struct lazymap_opts *base)
{
	char dir[PATH_MAX], *slash;
	struct lazymap_opts o = *base;
	struct lazymap *c;
	int ret;

	if (sock) {
		fdm.socket = sock;
		fdm.external = true;
		if (!find_prog("faultctl", NULL, fdm.ctl, sizeof(fdm.ctl)))
			fdm.ctl[0] = 0;
	} else {
		fdm.socket = "(none)";
		if (bin) {
			char real[PATH_MAX];

			if (access(bin, X_OK) || !realpath(bin, real)) {
				snprintf(fdm.why, sizeof(fdm.why), "--faultd %s: %s", bin, strerror(errno));
				return;
			}
			snprintf(fdm.bin, sizeof(fdm.bin), "%s", real);
		} else if (!find_prog("faultd", NULL, fdm.bin, sizeof(fdm.bin))) {
			fdm.bin[0] = 0;
			exe_dir(dir, sizeof(dir));
			snprintf(fdm.why, sizeof(fdm.why),
				 "faultd not found in %.150s/../daemon, %.150s or $PATH (--faultd PATH, "
				 "or --daemon SOCKET of a running one)", dir, dir);
			return;
		}
		snprintf(dir, sizeof(dir), "%s", fdm.bin);
		slash = strrchr(dir, '/');
		if (slash)
			*slash = 0;
		if (!find_prog("faultctl", dir, fdm.ctl, sizeof(fdm.ctl)))
			fdm.ctl[0] = 0;
		if (faultd_spawn())
			return;
	}
	o.daemon = fdm.socket;
	ret = lazymap_open(&c, &o);
	if (ret) {
		snprintf(fdm.why, sizeof(fdm.why), "lazymap_open(opts.daemon = %s): %s", fdm.socket,
			 strerror(-ret));
		return;
	}
	lazymap_close(c);
	fdm.ok = true;
}

/* What `faultctl status --json` says: faultd's cache, and per client what it served. */
#define FSTATUS_MAX 64
struct fstatus {
	uint64_t clients, cache_pages;
	unsigned n;
	struct fclient {
		long pid;
		uint64_t faults, hits, bytes_read;
	} c[FSTATUS_MAX];
};

/* The number after "key": in [s, end); false if it is not there. */
static bool json_key_u64(const char *s, const char *end, const char *key, uint64_t *v)
{
	char pat[48];
	const char *k;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	k = strstr(s, pat);
	if (!k || (end && k >= end))
		return false;
	*v = strtoull(k + strlen(pat), NULL, 10);
	return true;
}

/*
 * Run bin with argv to its end, its output in out (NUL-terminated; its
 * error output too if errors, else dropped). Its wait status, or -errno if
 * it could not be started.
 */
static int run_capture(const char *bin, char *const argv[], char *out, size_t outlen, bool errors)
{
	posix_spawn_file_actions_t fa;
	extern char **environ;
	size_t len = 0;
	int p[2], ret, wst = 0;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC))
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	if (errors)
		posix_spawn_file_actions_adddup2(&fa, p[1], 2);
	else
		posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	ret = -posix_spawn(&pid, bin, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (ret) {
		close(p[0]);
		return ret;
	}
	for (;;) {
		ssize_t n = read(p[0], out + len, outlen - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(p[0]);
	out[len] = 0;
	while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
		;
	return wst;
}

/* Run faultctl and read its answer; 0, or -errno (-ENOENT: no faultctl). */
static int faultctl_status(struct fstatus *st)
{
	char *argv[] = { "faultctl", "--socket", (char *)fdm.socket, "status", "--json", NULL };
	static char out[64 << 10];
	int wst;

	memset(st, 0, sizeof(*st));
	if (!fdm.ctl[0])
		return -ENOENT;
	wst = run_capture(fdm.ctl, argv, out, sizeof(out), false);
	if (wst < 0)
		return wst;
	if (!WIFEXITED(wst) || WEXITSTATUS(wst) || !json_key_u64(out, NULL, "clients", &st->clients) ||
	    !json_key_u64(out, NULL, "cache_pages", &st->cache_pages))
		return -EPROTO;
	for (const char *o = strstr(out, "{\"pid\": "); o && st->n < FSTATUS_MAX;
	     o = strstr(o + 1, "{\"pid\": ")) {
		const char *end = strchr(o, '}');
		struct fclient *c = &st->c[st->n++];
		uint64_t pidv = 0;

		json_key_u64(o, end, "pid", &pidv);
		c->pid = (long)pidv;
		json_key_u64(o, end, "faults", &c->faults);
		json_key_u64(o, end, "cache_hits", &c->hits);
		json_key_u64(o, end, "bytes_read", &c->bytes_read);
	}
	return 0;
}

static const struct fclient *fstatus_client(const struct fstatus *st, long pid)
{
	for (unsigned i = 0; i < st->n; i++)
		if (st->c[i].pid == pid)
			return &st->c[i];
	return NULL;
}

/*
 * Before and after a faultd run: wait until faultd has let go of our clients
 * (it drops a file's cache once the last client that opened the file has
 * gone, which it learns after our lazymap_close returns) and, if the faultd
 * is ours, holds no page at all: a cold run must find faultd's cache empty,
 * not only the kernel's. At most 5 s. Its cached pages then (a faultd that
 * others use counts their files too), or -1 when faultctl cannot tell.
 */
static double faultd_wait_cold(void)
{
	uint64_t end = now_ns() + 5000000000ull;
	struct fstatus st;

	for (;;) {
		if (faultctl_status(&st))
			return -1;
		bool done = fdm.pid > 0 ? !st.clients && !st.cache_pages
					: !fstatus_client(&st, main_pid);

		if (done || now_ns() > end)
			return (double)st.cache_pages;
		sleep_ms(2);
	}
}

/*
 * daemon-shared's client 1, a child process: connects to faultd, maps the
 * file, scans it (cold), checks it, reports on out, and stays connected
 * with the region mapped until go reaches its end (client 2 has scanned).
 */
struct client1_report {
	int err;          /* 0, or the -errno of the call named in what */
	char what[64];
	double ns_per_page;
	uint64_t msgs;
	char bad[240];    /* wrong data, empty if none */
};

static void client1_main(const struct lazymap_opts *base, const struct job *j, uint32_t *lat,
			 int out, int go)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGPIPE,
				    SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL };
	struct client1_report rep;
	struct lazymap_opts o = *base;
	struct lazymap_stats acc;
	struct lazymap *c = NULL;
	const char *what = "lazymap_open(opts.daemon)";
	void *p = NULL;
	char byte;

	/* The parent's handlers would clean up the parent's things. */
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	alarm(run_timeout);
	memset(&rep, 0, sizeof(rep));
	memset(&acc, 0, sizeof(acc));
	o.daemon = fdm.socket;
	rep.err = lazymap_open(&c, &o);
	if (!rep.err)
		rep.err = lazymap_map_file(c, j, &p, &what);
	if (!rep.err) {
		struct run r = lazymap_scan(c, j, p, FILE_READ, lat, &acc);
		char why[200] = "";

		rep.ns_per_page = r.ns_per_page;
		rep.msgs = r.msgs;
		if (r.sum != j->want_sum)
			snprintf(why, sizeof(why), "checksum of the touched words differs");
		else
			check_pages(p, j, why, sizeof(why));
		if (why[0])
			snprintf(rep.bad, sizeof(rep.bad), "client 1: %s", why);
	}
	snprintf(rep.what, sizeof(rep.what), "%s", what);
	if (write(out, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
		_exit(1);
	while (read(go, &byte, 1) < 0 && errno == EINTR)
		;
	if (p)
		lazymap_unmap(c, p, j->npages * ps);
	_exit(c && lazymap_close(c) ? 1 : 0);
}

/* client 1's exit: its wait status. */
static int client1_end(int go)
{
	int st = 0;

	if (go >= 0)
		close(go);
	if (fdm.client1 > 0) {
		while (waitpid(fdm.client1, &st, 0) < 0 && errno == EINTR)
			;
		fdm.client1 = 0;
	}
	return st;
}

/*
 * Start client 1 and wait for its report. 0 with *gop its go pipe, or the
 * error (client 1 reaped then), its name in *what.
 */
static int client1_start(const struct lazymap_opts *base, const struct job *j, uint32_t *lat,
			 struct run *r, char *bad, size_t badlen, const char **what, int *gop)
{
	static char what_buf[160];
	struct client1_report rep;
	int out[2], go[2];
	ssize_t n;
	pid_t pid;

	*what = "client 1: pipe";
	if (pipe2(out, O_CLOEXEC))
		return -errno;
	if (pipe2(go, O_CLOEXEC)) {
		int err = -errno;

		close(out[0]);
		close(out[1]);
		return err;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		close(out[0]);
		close(go[1]);
		client1_main(base, j, lat, out[1], go[0]);
	}
	close(out[1]);
	close(go[0]);
	if (pid < 0) {
		int err = -errno;

		*what = "client 1: fork";
		close(out[0]);
		close(go[1]);
		return err;
	}
	fdm.client1 = pid;
	do
		n = read(out[0], &rep, sizeof(rep));
	while (n < 0 && errno == EINTR);
	close(out[0]);
	if (n != (ssize_t)sizeof(rep) || rep.err) {
		int st = client1_end(go[1]);
		char how[64];

		describe_status(st, how, sizeof(how));
		if (n == (ssize_t)sizeof(rep))
			snprintf(what_buf, sizeof(what_buf), "client 1 (a child process): %s", rep.what);
		else
			snprintf(what_buf, sizeof(what_buf), "client 1 (a child process) died before "
				 "its report: %s", how);
		*what = what_buf;
		return n == (ssize_t)sizeof(rep) ? rep.err : -ECHILD;
	}
	if (rep.bad[0] && !bad[0])
		snprintf(bad, badlen, "%s", rep.bad);
	r->first_ns_per_page = rep.ns_per_page;
	r->first_msgs = rep.msgs;
	*gop = go[1];
	return 0;
}

/*
 * One run served by faultd, by a client of its own (lazymap_open with
 * opts.daemon), closed after the run: faultd keeps a client's files and
 * their cache until the client goes, so one client for every run would
 * read the file cold once only. Connecting is not timed. daemon-shared:
 * client 1 (a child) scans the file first and stays; this process, client
 * 2, scans it once, timed. faultctl then says what faultd read and served
 * from its cache for each.
 */
static int run_faultd(const struct lazymap_opts *base, const struct job *j, uint32_t *lat,
		      struct run *r, struct lazymap_stats *acc, char *bad, size_t badlen,
		      const char **what)
{
	bool shared = j->sc->kind == FILE_SHARED;
	struct lazymap_opts o = *base;
	struct run first = { 0 };
	pid_t c1 = 0;
	struct lazymap *c;
	int ret, go = -1;

	if (shared) {
		ret = client1_start(base, j, lat, &first, bad, badlen, what, &go);
		if (ret)
			return ret;
		c1 = fdm.client1;
	}
	o.daemon = fdm.socket;
	*what = "lazymap_open(opts.daemon)";
	ret = lazymap_open(&c, &o);
	if (!ret) {
		if (shared) {
			void *p;

			ret = lazymap_map_file(c, j, &p, what);
			if (!ret) {
				*r = lazymap_scan(c, j, p, FILE_READ, lat, acc);
				if (!bad[0])
					check_pages(p, j, bad, badlen);
				lazymap_unmap(c, p, j->npages * ps);
			}
		} else {
			ret = run_lazymap(c, j, lat, r, acc, bad, badlen, what);
		}
		if (!ret) {
			struct fstatus st;
			const struct fclient *me, *one;
			double n = (double)j->touched;

			r->hits = r->read_pages = r->first_read_pages = -1;
			if (!faultctl_status(&st)) {
				if ((me = fstatus_client(&st, main_pid))) {
					r->hits = (double)me->hits / n;
					r->read_pages = (double)me->bytes_read / (double)ps / n;
				}
				if (shared && (one = fstatus_client(&st, c1)))
					r->first_read_pages = (double)one->bytes_read / (double)ps / n;
			}
		}
		lazymap_close(c);
	}
	if (shared) {
		int st = client1_end(go);

		r->first_ns_per_page = first.first_ns_per_page;
		r->first_msgs = first.first_msgs;
		if (!ret && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			static char what_buf[128];
			char how[64];

			describe_status(st, how, sizeof(how));
			snprintf(what_buf, sizeof(what_buf), "client 1 (a child process) at its end: %s", how);
			*what = what_buf;
			ret = -ECHILD;
		}
	}
	return ret;
}

/* ---------------------------------------------------------------- nbd */

/*
 * The nbd group's programs, found once: nbdkit (without it the rows compare
 * nothing and none of them runs), nbdfuse with /dev/fuse (without them the
 * kernel's twin is unavailable), and the directory of the servers' sockets,
 * pid files, logs and mount point.
 */
static void nbd_setup(void)
{
	char *argv[] = { "nbdkit", "--version", NULL };
	char out[256];
	struct stat sb;
	int st;

	if (!find_in_path("nbdkit", nbd.nbdkit, sizeof(nbd.nbdkit))) {
		nbd.nbdkit[0] = 0;
		snprintf(nbd.why, sizeof(nbd.why), "nbdkit not found in $PATH (Debian: the nbdkit package)");
		return;
	}
	st = run_capture(nbd.nbdkit, argv, out, sizeof(out), true);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
		snprintf(nbd.why, sizeof(nbd.why), "%.200s --version: %s", nbd.nbdkit,
			 st < 0 ? strerror(-st) : "failed");
		return;
	}
	snprintf(nbd.version, sizeof(nbd.version), "%.*s", (int)strcspn(out, "\n"), out);
	if (make_sock_dir(nbd.dir, sizeof(nbd.dir), "nbd", nbd.why, sizeof(nbd.why)))
		return;
	snprintf(nbd.sock, sizeof(nbd.sock), "%s/nbdkit.sock", nbd.dir);
	snprintf(nbd.kpidf, sizeof(nbd.kpidf), "%s/nbdkit.pid", nbd.dir);
	snprintf(nbd.klog, sizeof(nbd.klog), "%s/nbdkit.log", nbd.dir);
	snprintf(nbd.mnt, sizeof(nbd.mnt), "%s/mnt", nbd.dir);
	snprintf(nbd.fpidf, sizeof(nbd.fpidf), "%s/nbdfuse.pid", nbd.dir);
	snprintf(nbd.flog, sizeof(nbd.flog), "%s/nbdfuse.log", nbd.dir);
	snprintf(nbd.fuse_file, sizeof(nbd.fuse_file), "%s/nbd", nbd.mnt);
	snprintf(nbd.uri, sizeof(nbd.uri), "nbd+unix:///?socket=%s", nbd.sock);
	nbd.ok = true;

	if (!find_in_path("nbdfuse", nbd.nbdfuse, sizeof(nbd.nbdfuse))) {
		nbd.nbdfuse[0] = 0;
		snprintf(nbd.fuse_why, sizeof(nbd.fuse_why),
			 "nbdfuse not found in $PATH (Debian: the libnbd-bin package)");
		return;
	}
	if (stat("/dev/fuse", &sb) || (S_ISCHR(sb.st_mode) && access("/dev/fuse", R_OK | W_OK))) {
		snprintf(nbd.fuse_why, sizeof(nbd.fuse_why), "/dev/fuse: %s", strerror(errno));
		return;
	}
	if (!S_ISCHR(sb.st_mode)) {
		snprintf(nbd.fuse_why, sizeof(nbd.fuse_why), "/dev/fuse is not a character device");
		return;
	}
	if (!find_in_path("fusermount3", nbd.fusermount, sizeof(nbd.fusermount)))
		nbd.fusermount[0] = 0;
	if (mkdir(nbd.mnt, 0700)) {
		snprintf(nbd.fuse_why, sizeof(nbd.fuse_why), "mkdir %s: %s", nbd.mnt, strerror(errno));
		return;
	}
	nbd.fuse_ok = true;
}

/* A pid file written (the server is ready): non-empty. */
static bool pidfile_written(const char *path)
{
	struct stat sb;

	return !stat(path, &sb) && sb.st_size > 0;
}

/*
 * Start nbdkit exporting the bench file, and wait for its pid file, which
 * it writes once it listens (at most 10 s; at once if it exits). 0, or -1
 * with why said.
 */
static int nbdkit_start(char *why, size_t whylen)
{
	char *argv[] = { "nbdkit", "-f", "-U", nbd.sock, "-P", nbd.kpidf, "--exit-with-parent",
			 "file", tmp_path, NULL };
	pid_t pid;

	unlink(nbd.sock); /* one left behind would not bind */
	unlink(nbd.kpidf);
	pid = spawn_server(nbd.nbdkit, argv, nbd.klog, why, whylen);
	if (pid < 0)
		return -1;
	nbd.kpid = pid;
	for (uint64_t end = now_ns() + 10000000000ull; !pidfile_written(nbd.kpidf);) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			nbd.kpid = 0;
			exited_at_start("nbdkit", nbd.nbdkit, st, nbd.klog, why, whylen);
			return -1;
		}
		if (now_ns() > end) {
			snprintf(why, whylen, "nbdkit (%.200s) wrote no pid file within 10 s", nbd.nbdkit);
			nbdkit_stop();
			return -1;
		}
		sleep_ms(2);
	}
	return 0;
}

/*
 * Mount the export with nbdfuse (it stays in the foreground: a child of
 * ours) and wait until its file is there with the bench file's size (at
 * most 10 s; at once if it exits). 0, or -1 with why said.
 */
static int nbd_fuse_mount(char *why, size_t whylen)
{
	char *argv[] = { "nbdfuse", "-P", nbd.fpidf, nbd.mnt, nbd.uri, NULL };
	struct stat sb;
	pid_t pid;

	unlink(nbd.fpidf);
	pid = spawn_server(nbd.nbdfuse, argv, nbd.flog, why, whylen);
	if (pid < 0)
		return -1;
	nbd.fpid = pid;
	nbd.mounted = 1; /* perhaps: what cleans up detaches it either way */
	for (uint64_t end = now_ns() + 10000000000ull;
	     !pidfile_written(nbd.fpidf) || stat(nbd.fuse_file, &sb) || (size_t)sb.st_size != file_size;) {
		int st;

		if (waitpid(pid, &st, WNOHANG) == pid) {
			nbd.fpid = 0;
			exited_at_start("nbdfuse", nbd.nbdfuse, st, nbd.flog, why, whylen);
			nbd_fuse_kill();
			return -1;
		}
		if (now_ns() > end) {
			snprintf(why, whylen, "nbdfuse (%.150s) did not show %s of %zu bytes within 10 s",
				 nbd.nbdfuse, nbd.fuse_file, file_size);
			nbd_fuse_kill();
			return -1;
		}
		sleep_ms(2);
	}
	return 0;
}

/*
 * Unmount: fusermount3 -u (umount2 without it), after which nbdfuse exits
 * by itself; killed if it has not within 5 s. false if it did not go as
 * it should, with why said.
 */
static bool nbd_fuse_unmount(char *why, size_t whylen)
{
	char *argv[] = { "fusermount3", "-u", nbd.mnt, NULL };
	char out[256] = "";
	int st = 0;

	if (nbd.fpid <= 0 && !nbd.mounted)
		return true;
	if (nbd.fusermount[0])
		st = run_capture(nbd.fusermount, argv, out, sizeof(out), true);
	else if (umount2(nbd.mnt, 0))
		st = -errno;
	if (st) {
		char how[64];

		if (st < 0)
			snprintf(how, sizeof(how), "%s", strerror(-st));
		else
			describe_status(st, how, sizeof(how));
		snprintf(why, whylen, "unmounting %s: %s %.*s", nbd.mnt, how, (int)strcspn(out, "\n"), out);
	}
	nbd.mounted = 0;
	if (nbd.fpid > 0) {
		int fst = wait_child(nbd.fpid, 5000);

		if (fst == -1 && !st)
			snprintf(why, whylen, "nbdfuse did not exit within 5 s of its unmount");
		if (fst != -1)
			nbd.fpid = 0;
	}
	nbd_fuse_kill(); /* what is left of it */
	return !st && !why[0];
}

/* A server found dead, said with its log's last line (it is started again: the log goes). */
static void nbd_death(const char *name, const char *log, int st, const char *when)
{
	char how[64], tail[120];

	describe_status(st, how, sizeof(how));
	log_tail(log, tail, sizeof(tail));
	nbd.deaths++;
	snprintf(nbd.death, sizeof(nbd.death), "%s %s: %s%s%s", name, when, how,
		 tail[0] ? "; it said: " : "", tail);
}

/*
 * Before a twin's run: nbdkit serving (a new one if it died: nbdkit 1.32
 * can abort when a client hangs up with reads in flight), and for the
 * kernel's twin the export mounted (again, if nbdkit or nbdfuse died).
 * 0, or -1 with why said.
 */
static int nbd_ensure(bool kernel, char *why, size_t whylen)
{
	int st;

	if (nbd.fpid > 0 && waitpid(nbd.fpid, &st, WNOHANG) == nbd.fpid) {
		nbd.fpid = 0;
		nbd_death("nbdfuse", nbd.flog, st, "died during the row");
		nbd_fuse_kill();
	}
	if (nbd.kpid > 0 && waitpid(nbd.kpid, &st, WNOHANG) == nbd.kpid) {
		nbd.kpid = 0;
		nbd_death("nbdkit", nbd.klog, st, "died during the row");
		nbd_fuse_kill(); /* its connection went with it */
	}
	if (nbd.kpid <= 0 && nbdkit_start(why, whylen))
		return -1;
	if (kernel && nbd.fpid <= 0 && nbd_fuse_mount(why, whylen))
		return -1;
	return 0;
}

/*
 * The kernel's twin: the export through nbdfuse, mmap(MAP_SHARED,
 * PROT_READ) of the file it shows, opened for the run, its own page cache
 * dropped too (FUSE drops it at open; checked). The touched pages checked
 * in full. 0, or -errno of the step in *what.
 */
static int nbd_kernel(const struct job *j, uint32_t *lat, struct run *r, char *bad, size_t badlen,
		      const char **what)
{
	size_t len = j->npages * ps;
	int fd = open(nbd.fuse_file, O_RDONLY | O_CLOEXEC), err;
	double in;
	char *p;

	*what = "open of the nbdfuse file";
	if (fd < 0)
		return -errno;
	in = prepare_cache(fd, len, COLD);
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		err = -errno;
		*what = "mmap(MAP_SHARED) of the nbdfuse file";
		close(fd);
		return err;
	}
	if (use_advise)
		madvise(p, len, kernel_advice(j->sc->access));
	*r = scan(p, j->order, j->touched, FILE_READ, true, j->threads, 0, lat);
	r->cached_before = in;
	if (!bad[0])
		check_pages(p, j, bad, badlen);
	munmap(p, len);
	close(fd);
	return 0;
}

/* ---------------------------------------------------------------- rows */

struct side {
	const char *status; /* "ok", "unavailable", "error" or "failed" (wrong bytes in the file) */
	char why[400];
	struct run *runs;
	int n;
};

/*
 * A row's twins: the kernel's mmap (k: in the nbd group, of the export
 * mounted with nbdfuse), lazymap (l: served by faultd in the daemon group,
 * lazymap_map_uri of the export in the nbd group, umap() of liblazymap-umap
 * in the umap group) and a third (p) in three groups: lazymap in-process
 * (daemon), lazymap of the file itself (nbd), lazymap_map of it on a
 * lazymap with the layer's options (umap).
 */
enum twin { T_KERNEL, T_LAZYMAP, T_INPROC, T_LZFILE = T_INPROC, T_DIRECT = T_INPROC };

struct row {
	struct job job;
	struct side k, l, p;
	struct lazymap_stats st;  /* lazymap's counters over all its runs (faultd's: faults only) */
	struct lazymap_stats pst; /* the third twin's */
	char bad[320];            /* wrong data seen from lazymap (any), empty if none */
	unsigned nbd_deaths;      /* nbd rows: servers found dead (and started again), or not */
	char nbd_death[200];      /* stopped cleanly at the row's end; the last one said */
};

static int ntwins(const struct job *j)
{
	return j->sc->group == G_DAEMON || j->sc->group == G_NBD || j->sc->group == G_UMAP ? 3 : 2;
}

/* What the third twin's wrong data in rw->bad starts with. */
static const char *third_prefix(const struct job *j)
{
	return j->sc->group == G_NBD ? "lazymap-file: " : j->sc->group == G_UMAP ? "lazymap-direct: "
										  : "in-process: ";
}

static struct side *twin_side(struct row *rw, enum twin t)
{
	return t == T_KERNEL ? &rw->k : t == T_LAZYMAP ? &rw->l : &rw->p;
}

static const struct side *twin_cside(const struct row *rw, enum twin t)
{
	return t == T_KERNEL ? &rw->k : t == T_LAZYMAP ? &rw->l : &rw->p;
}

/*
 * What a twin's run assumes of the file's caches: the scenario's, but for
 * daemon-shared, whose lazymap twins read the file cold first (client 1,
 * the first region) and whose kernel twin scans it all cached.
 */
static enum cache twin_cache(const struct job *j, enum twin t)
{
	return j->sc->kind == FILE_SHARED && t != T_KERNEL ? COLD : j->sc->cache;
}

/* The median run by ns per page (the upper one of an even count). */
static struct run median(const struct side *s)
{
	struct run *r = malloc((size_t)s->n * sizeof(*r)), m;

	memcpy(r, s->runs, (size_t)s->n * sizeof(*r));
	for (int i = 1; i < s->n; i++)
		for (int j = i; j > 0 && r[j].ns_per_page < r[j - 1].ns_per_page; j--) {
			struct run t = r[j];

			r[j] = r[j - 1];
			r[j - 1] = t;
		}
	m = r[s->n / 2];
	free(r);
	return m;
}

/* Not fmin/fmax: libm is linked for budget-zipf's pow() alone. */
static double dmin(double a, double b)
{
	return a < b ? a : b;
}

static double dmax(double a, double b)
{
	return a > b ? a : b;
}

/* Over the runs of a side: the worst share cached for what the scenario assumes. */
static double cache_worst(const struct side *s, enum cache c, bool after)
{
	double w = c == COLD ? 0 : 1;

	for (int i = 0; i < s->n; i++) {
		double v = after ? s->runs[i].cached_after : s->runs[i].cached_before;

		w = c == COLD ? dmax(w, v) : dmin(w, v);
	}
	return w;
}

static void shuffle(uint32_t *v, size_t n, uint64_t *seed)
{
	for (size_t i = n ? n - 1 : 0; i > 0; i--) {
		size_t j = next_rand(seed) % (i + 1);
		uint32_t t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
}

/* The pages a scenario touches, in its order: the first touched entries are used. */
static void make_order(uint32_t *order, size_t npages, const struct scenario *sc, uint64_t seed)
{
	if (sc->access == SPREAD) {
		size_t nb = (npages + sc->one_in - 1) / sc->one_in;

		for (size_t b = 0; b < nb; b++) {
			size_t first = b * sc->one_in, span = npages - first;

			span = span < sc->one_in ? span : sc->one_in;
			order[b] = (uint32_t)(first + next_rand(&seed) % span);
		}
		shuffle(order, nb, &seed);
		return;
	}
	for (size_t i = 0; i < npages; i++)
		order[i] = (uint32_t)i;
	if (sc->access == RAND)
		shuffle(order, npages, &seed);
}

/* The twins' names. */
static const char *tw_name(const struct job *j, enum twin t)
{
	if (j->sc->group == G_NBD)
		return t == T_KERNEL ? "nbdfuse" : t == T_LZFILE ? "lz-file" : "lz-nbd";
	if (j->sc->group == G_UMAP)
		return t == T_KERNEL ? "kernel" : t == T_DIRECT ? "lazymap" : "umap";
	if (t == T_KERNEL)
		return "kernel";
	if (t == T_INPROC)
		return "in-proc";
	return j->sc->group == G_DAEMON ? "faultd" : "lazymap";
}

/*
 * One run of an nbd row's twin: the kernel's through nbdfuse, or a lazymap
 * of its own (opened for the run, so that its cache starts empty): of the
 * file (lz-file), or lazymap_map_uri of the export (lz-nbd). 0, or the
 * error of the call named in *what.
 */
static int run_nbd(const struct lazymap_opts *base, const struct job *j, enum twin tw,
		   uint32_t *lat, struct run *r, struct lazymap_stats *acc, char *bad, size_t badlen,
		   const char **what)
{
	static char what_buf[200];
	size_t len = j->npages * ps;
	struct lazymap *lm;
	void *p;
	int ret;

	if (tw == T_KERNEL)
		return nbd_kernel(j, lat, r, bad, badlen, what);
	*what = "lazymap_open";
	ret = lazymap_open(&lm, base);
	if (ret)
		return ret;
	if (tw == T_LZFILE) {
		ret = run_lazymap(lm, j, lat, r, acc, bad, badlen, what);
		goto out;
	}
	snprintf(what_buf, sizeof(what_buf), "lazymap_map_uri(%s)", nbd.uri);
	*what = what_buf;
	ret = lazymap_map_uri(lm, &p, len, PROT_READ, LAZYMAP_PRIVATE, nbd.uri, 0);
	if (ret)
		goto out;
	if (use_advise && (ret = lazymap_advise(lm, p, len, j->sc->access == SEQ ? LAZYMAP_ADV_SEQUENTIAL
										  : LAZYMAP_ADV_RANDOM))) {
		*what = "lazymap_advise";
	} else {
		*r = lazymap_scan(lm, j, p, FILE_READ, lat, acc);
		if (!bad[0])
			check_pages(p, j, bad, badlen);
	}
	lazymap_unmap(lm, p, len);
out:
	lazymap_close(lm);
	return ret;
}

/*
 * Run one row: repeat runs of each twin, the order rotating from run to run
 * (kernel first, then lazymap first, ...), so that a noisy machine hits
 * every twin alike. lm serves the lazymap twin, or in the daemon group the
 * in-process one (faultd serves the lazymap twin there, base its client's
 * options); the nbd group's lazymap twins open their own for each run, with
 * base, and nbdkit (the caller's) must be serving before each run; in the
 * umap group lm serves the direct twin, and umap() (its own lazymap) the
 * lazymap one. A side whose status the caller set already (unavailable)
 * does not run.
 */
static void run_row(struct lazymap *lm, const struct lazymap_opts *base, struct row *rw, int repeat,
		    uint32_t *lat)
{
	const struct job *j = &rw->job;
	int nt = ntwins(j);

	for (int t = 0; t < nt; t++) {
		struct side *s = twin_side(rw, (enum twin)t);

		if (!s->status)
			s->status = "ok";
		s->runs = calloc((size_t)repeat, sizeof(struct run));
	}
	for (int i = 0; i < repeat; i++) {
		for (int k = 0; k < nt; k++) {
			enum twin tw = (enum twin)((i + k) % nt);
			bool kernel = tw == T_KERNEL, faultd = tw == T_LAZYMAP && j->sc->group == G_DAEMON;
			bool nbdrow = j->sc->group == G_NBD, umaprow = j->sc->group == G_UMAP;
			struct side *s = twin_side(rw, tw);
			enum cache c = twin_cache(j, tw);
			struct run r = { 0 };
			double before = 0, held = 0;
			/* file-shared-write: each twin writes a copy of its own */
			bool own = is_write(j->sc);
			int fd = own ? shared_fd[!kernel] : file_fd;
			size_t fsize = own ? shared_size : file_size;
			/* Wrong data: the kernel's goes in its why, either lazymap's in bad. */
			char *w = kernel ? rw->k.why : rw->bad;
			size_t wl = kernel ? sizeof(rw->k.why) : sizeof(rw->bad);

			if (strcmp(s->status, "ok"))
				continue;
			rw->job.salt = (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull | 1;
			fprintf(stderr, "\r%s thr %u: run %d/%d %-8s", j->name, j->threads, i + 1, repeat,
				tw_name(j, tw));
			snprintf(running, sizeof(running), "%s, %u thread(s), %s twin, run %d/%d",
				 j->name, j->threads, tw_name(j, tw), i + 1, repeat);
			alarm(run_timeout); /* the watchdog: a hang kills us with its name */
			if (faultd)
				held = faultd_wait_cold(); /* its cache too must be cold */
			if (nbdrow && nbd_ensure(kernel, s->why, sizeof(s->why))) {
				s->status = "error";
				continue;
			}
			/*
			 * daemon-shared's kernel twin: the file read into the page cache
			 * afresh, by read(), every run. The folios a scan maps whole depend
			 * on who read the file in (our 4 KiB reads, the kernel's readahead),
			 * and the lazymap twins just read it their way: left as they leave
			 * it, the kernel's scan moved 8x from run to run.
			 */
			if (kernel && j->sc->kind == FILE_SHARED)
				prepare_cache(fd, fsize, COLD);
			if (c != NO_FILE)
				before = prepare_cache(fd, fsize, c);
			if (kernel && !nbdrow) {
				r = run_kernel(j, lat, rw->k.why, sizeof(rw->k.why));
			} else {
				const char *what = "lazymap";
				char prefixed[320] = "";
				bool third = tw == T_INPROC;
				int ret = nbdrow ? run_nbd(base, j, tw, lat, &r, third ? &rw->pst : &rw->st,
							   third ? prefixed : w, third ? sizeof(prefixed) : wl, &what)
					  : faultd ? run_faultd(base, j, lat, &r, &rw->st, w, wl, &what)
					  : umaprow && !third ? run_umap(j, lat, &r, w, wl, &what)
					  : third ? run_lazymap(lm, j, lat, &r, &rw->pst, prefixed,
								sizeof(prefixed), &what)
						  : run_lazymap(lm, j, lat, &r, &rw->st, w, wl, &what);

				/*
				 * And idle after it: faultd frees a client's cache (and client 1
				 * its mapping) after the client has gone, on this machine's CPUs,
				 * and that must not overlap the next twin's timed scan (it made
				 * in-process cold scans up to 2x slower after a faultd run).
				 */
				if (faultd)
					faultd_wait_cold();
				if (prefixed[0] && !w[0])
					snprintf(w, wl, "%s%s", third_prefix(j), prefixed);
				if (ret) {
					/* nbd: a lazymap without NBD (no libnbd) */
					bool na = ret == -EOPNOTSUPP || (j->direct && ret == -EINVAL) ||
						  (nbdrow && ret == -EPROTONOSUPPORT);

					s->status = na && !s->n ? "unavailable" : "error";
					snprintf(s->why, sizeof(s->why), "%s%s: -%s (%s)%s", what,
						 j->direct ? " (LAZYMAP_DIRECT)" : "",
						 strerrorname_np(-ret), strerror(-ret),
						 nbdrow && ret == -EPROTONOSUPPORT
						 ? ": this liblazymap has no NBD support" : "");
					continue;
				}
			}
			if (own && w[0]) {
				/* The file does not hold what was written: no figure of this twin stands. */
				s->status = "failed";
				if (!kernel)
					snprintf(s->why, sizeof(s->why), "the file is wrong after the sync");
				continue;
			}
			if (c != NO_FILE) {
				/* faultd's cache: its pages over the file's, a bound where others use it */
				if (faultd)
					before = held < 0 ? before
							  : dmax(before, dmin(1, held / (double)j->npages));
				/* nbd's kernel twin: and the nbdfuse file's own share */
				r.cached_before = dmax(before, r.cached_before);
				r.cached_after = cached_share(fd, fsize);
				if (kernel)
					r.read_pages = (r.cached_after - before) * (double)j->npages /
						       (double)j->touched;
				if (r.sum != j->want_sum && !w[0])
					snprintf(w, wl, "%schecksum of touched words 0x%016llx, file gives 0x%016llx (run %d)",
						 tw == T_INPROC ? third_prefix(j) : "", (unsigned long long)r.sum,
						 (unsigned long long)j->want_sum, i + 1);
			}
			s->runs[s->n++] = r;
		}
	}
	alarm(0);
	fprintf(stderr, "\r%*s\r", 70, "");
}

/*
 * Before an nbd row: its nbdkit, and the export mounted with nbdfuse for
 * the kernel's twin. Without nbdkit none of the row runs; without nbdfuse
 * the kernel's twin does not.
 */
static void nbd_row_start(struct row *rw)
{
	char why[400] = "";

	nbd.deaths = 0;
	nbd.death[0] = 0;
	snprintf(running, sizeof(running), "%s: starting nbdkit and nbdfuse", rw->job.name);
	if (!nbd.ok || nbdkit_start(why, sizeof(why))) {
		rw->l.status = rw->k.status = rw->p.status = "unavailable";
		snprintf(rw->l.why, sizeof(rw->l.why), "%s", nbd.ok ? why : nbd.why);
		snprintf(rw->k.why, sizeof(rw->k.why), "not run: nbdkit is unavailable");
		snprintf(rw->p.why, sizeof(rw->p.why), "not run: nbdkit is unavailable");
		return;
	}
	if (!nbd.fuse_ok || nbd_fuse_mount(why, sizeof(why))) {
		rw->k.status = "unavailable";
		snprintf(rw->k.why, sizeof(rw->k.why), "%s", nbd.fuse_ok ? why : nbd.fuse_why);
	}
}

/*
 * After it: unmounted, nbdkit stopped (SIGTERM, waitpid). A server that
 * ended otherwise than asked counts with those found dead during the row.
 */
static void nbd_row_stop(struct row *rw)
{
	char why[400] = "";
	int st;

	snprintf(running, sizeof(running), "%s: stopping nbdfuse and nbdkit", rw->job.name);
	if (!nbd_fuse_unmount(why, sizeof(why))) {
		nbd.deaths++;
		snprintf(nbd.death, sizeof(nbd.death), "nbdfuse: %s", why);
	}
	if (nbd.kpid > 0) {
		st = nbdkit_stop();
		if (!(WIFEXITED(st) && !WEXITSTATUS(st)) && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM))
			nbd_death("nbdkit", nbd.klog, st, "at its stop");
	}
	rw->nbd_deaths = nbd.deaths;
	snprintf(rw->nbd_death, sizeof(rw->nbd_death), "%s", nbd.death);
}

/* ---------------------------------------------------------------- output */

static const char *handlers_name(const struct lazymap_opts *o, char *buf, size_t len)
{
	if (o->handler_threads == LAZYMAP_HANDLERS_PER_CPU)
		return "per-CPU";
	snprintf(buf, len, "%u", o->handler_threads ? o->handler_threads : 1);
	return buf;
}

/* One layout for every group: a line per twin, the ratio on lazymap's line. */
static void print_columns(void)
{
	printf("%-27s %3s %-7s %9s %6s %8s | %8s %8s %8s %8s | %7s | %6s %6s %6s\n", "scenario",
	       "thr", "twin", "Kpages/s", "GB/s", "ns/page", "p50", "p90", "p99", "max", "ratio",
	       "flt/pg", "rd/pg", "cache");
	printf("%-27s %3s %-7s %9s %6s %8s | %8s %8s %8s %8s | %7s | %6s %6s %6s\n", "", "", "", "",
	       "", "", "us", "us", "us", "us", "", "", "", "");
}

static void print_anon_header(size_t mib)
{
	printf("\nanonymous scenarios: %zu MiB per run; kernel twin: mmap(MAP_ANONYMOUS), "
	       "MADV_NOHUGEPAGE (anon-fill: the program fills each page on first touch)\n", mib);
	print_columns();
}

static void print_threads_header(size_t mib)
{
	printf("\nthreads: random first-touch writes over %zu MiB of demand-zero memory by thr "
	       "faulting threads,\nserved by N unpinned handler threads (threads-hN); the kernel "
	       "twin runs the same faulting threads\n", mib);
	print_columns();
}

static void print_file_header(const char *fs, bool shared)
{
	if (file_size) /* else file-shared-write alone: no bench file */
		printf("\nfile scenarios: %zu MiB file on %s\n", file_size >> 20, fs);
	else
		printf("\nfile scenarios: files in %s\n", fs);
	printf("file-rand-{cold,hot} touch %d%% of the pages at random, file-rand-dense-* every page "
	       "once in shuffled order,\nfile-sparse-touch one page at random in each 256 by one "
	       "thread (p50 against the disk's raw 4 KiB read),\nfile-remap a second mapping of the "
	       "file scanned while the first, already scanned, stays mapped\n"
	       "rd/pg: pages read from the file per page touched; cache: share of the file in the "
	       "page cache before\nthe runs (cold: the most; hot: the least); +direct: "
	       "LAZYMAP_DIRECT (same kernel twin)\n", RAND_PERCENT);
	if (shared)
		printf("file-shared-write: a word written in 10%% of the pages of a %zu MiB copy of the "
		       "file (one copy per twin),\nall cached, then the whole mapping synced: the line "
		       "times the writes, the line below it the sync\n", shared_size >> 20);
	print_columns();
}

static void print_side(const struct row *rw, enum twin t)
{
	const struct side *s = twin_cside(rw, t);
	const char *lead = t == T_KERNEL ? rw->job.name : "";
	enum cache c = twin_cache(&rw->job, t);
	char thr[8] = "", ratio[16] = "", rd[16] = "-", cache[16] = "-", flt[16] = "-";

	if (t == T_KERNEL)
		snprintf(thr, sizeof(thr), "%u", rw->job.threads);
	if (strcmp(s->status, "ok") || !s->n) {
		printf("%-27s %3s %-7s %s: %s\n", lead, thr, tw_name(&rw->job, t), s->status, s->why);
		return;
	}
	struct run m = median(s);

	if (t != T_KERNEL && !strcmp(rw->k.status, "ok") && rw->k.n)
		snprintf(ratio, sizeof(ratio), "%6.2fx", m.ns_per_page / median(&rw->k).ns_per_page);
	if (c != NO_FILE) {
		if (m.read_pages >= 0)
			snprintf(rd, sizeof(rd), "%6.2f", m.read_pages);
		snprintf(cache, sizeof(cache), "%5.1f%%", cache_worst(s, c, false) * 100);
	}
	if (m.faults >= 0) /* umap's twin: not known */
		snprintf(flt, sizeof(flt), "%6.2f", m.faults);
	printf("%-27s %3s %-7s %9.1f %6.2f %8.0f | %8.2f %8.2f %8.2f %8.1f | %7s | %6s %6s %6s\n",
	       lead, thr, tw_name(&rw->job, t), 1e6 / m.ns_per_page, (double)ps / m.ns_per_page,
	       m.ns_per_page, m.p50 / 1000, m.p90 / 1000, m.p99 / 1000, m.max / 1000, ratio,
	       flt, rd, cache);
}

static bool side_ok(const struct side *s)
{
	return !strcmp(s->status, "ok") && s->n;
}

/* Median of a side's sync times, ns. */
static double median_sync(const struct side *s)
{
	double v[101]; /* --repeat is at most 101 */

	for (int i = 0; i < s->n; i++)
		v[i] = (double)s->runs[i].sync_ns;
	return median_of(v, (size_t)s->n);
}

/* daemon-shared: the kernel's scan of the memfd copy, median over the runs; < 0: none. */
static double median_shmem(const struct side *s)
{
	double v[101]; /* --repeat is at most 101 */
	size_t n = 0;

	for (int i = 0; i < s->n; i++)
		if (s->runs[i].shmem_ns_per_page > 0)
			v[n++] = s->runs[i].shmem_ns_per_page;
	return n ? median_of(v, n) : -1;
}

/* file-shared-write: the write-back, timed apart from the writes of the table's line. */
static void print_sync(const struct row *rw)
{
	static const char *const call[2] = { "msync(MS_SYNC)", "lazymap_sync" };
	double dirty = (double)rw->job.touched * (double)ps, t[2] = { -1, -1 };

	printf("  sync of %zu dirty pages (%.1f MB):", rw->job.touched, dirty / 1e6);
	for (int k = 0; k < 2; k++) {
		const struct side *s = k ? &rw->l : &rw->k;

		if (!side_ok(s)) {
			printf("%s %s %s", k ? ";" : "", call[k], s->status);
			continue;
		}
		t[k] = median_sync(s);
		printf("%s %s %.1f ms, %.0f MB/s", k ? ";" : "", call[k], t[k] / 1e6, dirty / t[k] * 1e3);
		if (median(s).written >= 0)
			printf(" (%s %.1f MB)", k ? "wrote" : "dirtied", median(s).written / 1e6);
	}
	if (t[0] > 0 && t[1] > 0)
		printf("; ratio %.2fx time, %.2fx throughput (target >= 0.8x)", t[1] / t[0], t[0] / t[1]);
	printf("\n");
}

/* file-remap: the second region's pages should all come from the cache, with no fault message. */
static void print_remap(const struct row *rw)
{
	uint64_t lo = UINT64_MAX, hi = 0;

	for (int i = 0; i < rw->l.n; i++) {
		lo = rw->l.runs[i].msgs < lo ? rw->l.runs[i].msgs : lo;
		hi = rw->l.runs[i].msgs > hi ? rw->l.runs[i].msgs : hi;
	}
	printf("  lazymap fault messages during the timed scan: %llu (median run; %llu..%llu over "
	       "the runs); 0 once the second region maps the first one's cached pages\n",
	       (unsigned long long)median(&rw->l).msgs, (unsigned long long)lo,
	       (unsigned long long)hi);
}

/* file-sparse-touch: what a cold fault costs beyond the disk's own read, at p50. */
static void print_sparse(const struct row *rw)
{
	printf("  raw 4 KiB read p50 %.1f us (%s); p50 - raw:", machine.disk_ns / 1000,
	       machine.disk_how);
	for (int t = 0; t < 2; t++) {
		const struct side *s = t ? &rw->l : &rw->k;

		if (strcmp(s->status, "ok") || !s->n)
			continue;
		printf(" %s %+.1f us%s", tw_name(&rw->job, t ? T_LAZYMAP : T_KERNEL),
		       (median(s).p50 - machine.disk_ns) / 1000,
		       t ? " (target <= 20 us)" : ",");
	}
	printf("\n");
}

/*
 * The daemon group's targets (issue 12): a fault served by faultd at most
 * 1.5x in-process; the second client's scan at most 1.5x the kernel's scan
 * of the file all cached.
 */
#define DAEMON_TARGET 1.5

/* A daemon row's target ratio and what it compares; -1 if a side did not run. */
static double daemon_ratio(const struct row *rw, const char **what)
{
	bool shared = rw->job.sc->kind == FILE_SHARED;
	const struct side *base = shared ? &rw->k : &rw->p;

	*what = shared ? "client 2 / kernel's cached scan" : "faultd / in-process";
	if (!side_ok(&rw->l) || !side_ok(base))
		return -1;
	return median(&rw->l).ns_per_page / median(base).ns_per_page;
}

static void print_daemon_header(size_t anon_mib, const char *handlers)
{
	printf("\ndaemon scenarios: lazymap served by faultd (");
	if (fdm.ok && !fdm.external)
		printf("started here: %s --threads %u, socket %s", fdm.bin, fdm.threads, fdm.socket);
	else if (fdm.ok)
		printf("the running faultd on %s, its own settings", fdm.socket);
	else
		printf("unavailable: %s", fdm.why);
	printf("),\nagainst lazymap in-process (in-proc, handlers %s) and the kernel, the order rotating "
	       "from run to run;\na new faultd client for each run, faultd seen idle with its cache "
	       "empty before and after it\n(%s; cache: the larger of the kernel's share and "
	       "faultd's)\n"
	       "daemon-anon-*: first-touch writes over %zu MiB; daemon-file-*-cold: the %zu MiB file, "
	       "cache dropped (rand: %d%% of its pages)\n"
	       "daemon-shared: client 1 (a child process) scans the file through faultd, cold, and "
	       "stays; then client 2 (this\nprocess) scans it: its line is faultd's; kernel: the same "
	       "scan of the file all cached; in-proc: a second region\n"
	       "targets: faultd <= %.1fx in-process; daemon-shared: client 2 <= %.1fx the kernel's "
	       "cached scan\n", handlers, fdm.ctl[0] ? "faultctl status" : "not checked: no faultctl",
	       anon_mib, file_size >> 20, RAND_PERCENT, DAEMON_TARGET, DAEMON_TARGET);
	print_columns();
}

/* Under a daemon row: its target, and what faultd did. */
static void print_daemon(const struct row *rw)
{
	const char *what;
	double v = daemon_ratio(rw, &what);

	if (v < 0) {
		printf("  target %s <= %.1fx: not measured\n", what, DAEMON_TARGET);
		return;
	}
	struct run l = median(&rw->l);

	printf("  target %s <= %.1fx: %.2fx, %s", what, DAEMON_TARGET, v,
	       v <= DAEMON_TARGET ? "met" : "NOT met");
	if (rw->job.sc->kind == FILE_SHARED) {
		printf("; client 2: %llu fault messages", (unsigned long long)l.msgs);
		if (l.hits >= 0)
			printf(", %.3f cache hits and %.3f pages read per page", l.hits, l.read_pages);
		printf("; client 1 (cold): %.0f ns/page, %llu fault messages", l.first_ns_per_page,
		       (unsigned long long)l.first_msgs);
		if (l.first_read_pages >= 0)
			printf(", %.2f pages read per page", l.first_read_pages);
		double sh = side_ok(&rw->k) ? median_shmem(&rw->k) : -1;

		if (sh > 0)
			printf("\n  the kernel's scan of a memfd holding the file's pages (mapping the "
			       "cache's floor): %.0f ns/page;\n  client 2 / it: %.2fx, it / the kernel's "
			       "cached scan: %.2fx", sh, l.ns_per_page / sh,
			       sh / median(&rw->k).ns_per_page);
	} else if (side_ok(&rw->p) && side_ok(&rw->k)) {
		printf(" (in-process/kernel %.2fx)",
		       median(&rw->p).ns_per_page / median(&rw->k).ns_per_page);
		if (l.hits >= 0)
			printf("; faultd served %.3f faults per page from its cache", l.hits);
	}
	printf("\n");
}

/*
 * The nbd group's targets (issue 13), in throughput (time per page of the
 * other / lz-nbd's): nbd-seq-cold at least 2x nbdfuse and 0.7x lazymap of
 * the file; nbd-rand-cold at least 5x nbdfuse.
 */
struct nbd_target {
	const char *what;
	enum twin base; /* lz-nbd against it */
	double min;
};

static int nbd_targets(const struct job *j, struct nbd_target t[2])
{
	t[0] = (struct nbd_target){ "lazymap-nbd / nbdfuse throughput", T_KERNEL,
				    j->sc->access == SEQ ? 2.0 : 5.0 };
	if (j->sc->access != SEQ)
		return 1;
	t[1] = (struct nbd_target){ "lazymap-nbd / lazymap-file throughput", T_LZFILE, 0.7 };
	return 2;
}

/* lz-nbd's throughput over a twin's; -1 if either did not run. */
static double nbd_ratio(const struct row *rw, enum twin base)
{
	const struct side *b = twin_cside(rw, base);

	if (!side_ok(&rw->l) || !side_ok(b))
		return -1;
	return median(b).ns_per_page / median(&rw->l).ns_per_page;
}

static void print_nbd_header(const char *handlers)
{
	printf("\nnbd scenarios: the %zu MiB file exported by ", file_size >> 20);
	if (!nbd.ok) {
		printf("nbdkit: unavailable: %s\n", nbd.why);
	} else {
		printf("%s (%s), one started for each row:\n  %s -f -U %s -P %s --exit-with-parent "
		       "file %s\n", nbd.nbdkit, nbd.version, nbd.nbdkit, nbd.sock, nbd.kpidf, tmp_path);
		printf("nbdfuse: the kernel's mmap(MAP_SHARED, PROT_READ) of the export mounted with ");
		if (nbd.fuse_ok)
			printf("%s -P %s %s \"%s\"\n  (the file %s; unmounted with %s -u)\n", nbd.nbdfuse,
			       nbd.fpidf, nbd.mnt, nbd.uri, nbd.fuse_file,
			       nbd.fusermount[0] ? nbd.fusermount : "umount2: no fusermount3");
		else
			printf("nbdfuse: unavailable: %s\n", nbd.fuse_why);
	}
	printf("lz-file: lazymap_map of the file itself, LAZYMAP_PRIVATE, PROT_READ (what the network "
	       "path costs)\nlz-nbd:  lazymap_map_uri of the export, LAZYMAP_PRIVATE, PROT_READ "
	       "(handlers %s)\n"
	       "every run cold on the client: the nbdfuse file's page cache dropped, the region "
	       "mapped afresh, each lazymap\nopened for the run; the order rotating from run to run. "
	       "nbd-*-cold: the server's file in the page\ncache (the network path alone); "
	       "nbd-*-disk-cold: dropped too (the disk bounds all three).\n"
	       "nbd-seq-*: every page in order, one thread; nbd-rand-*: %d%% of the pages at "
	       "random, split between 2\nthreads (the --threads list when given), the same pages "
	       "for all three; every touched page checked\nagainst the file's pattern. "
	       "ratio: time per page / nbdfuse's; targets in throughput (lz-nbd / the other):\n"
	       "nbd-seq-cold >= 2x nbdfuse and >= 0.7x lz-file; nbd-rand-cold >= 5x nbdfuse "
	       "(shown for the disk-cold rows too)\n",
	       handlers, RAND_PERCENT);
	print_columns();
}

/* Under an nbd row: its targets, met or not, and servers that died. */
static void print_nbd(const struct row *rw)
{
	struct nbd_target t[2];
	int n = nbd_targets(&rw->job, t);

	printf("  target");
	for (int i = 0; i < n; i++) {
		double v = nbd_ratio(rw, t[i].base);

		printf("%s lz-nbd / %s throughput >= %gx: ", i ? ";" : "", tw_name(&rw->job, t[i].base),
		       t[i].min);
		if (v < 0)
			printf("not measured");
		else
			printf("%.2fx, %s", v, v >= t[i].min ? "met" : "NOT met");
	}
	if (side_ok(&rw->p) && side_ok(&rw->k))
		printf(" (lz-file / nbdfuse %.2fx)", median(&rw->k).ns_per_page / median(&rw->p).ns_per_page);
	printf("\n");
	if (side_ok(&rw->l) && (rw->st.remote_reconnects || rw->st.remote_timeouts))
		printf("  ! lz-nbd: %llu reconnects and %llu remote timeouts over its runs\n",
		       (unsigned long long)rw->st.remote_reconnects,
		       (unsigned long long)rw->st.remote_timeouts);
	if (rw->nbd_deaths)
		printf("  ! nbdkit or nbdfuse ended badly %u time(s) (started again before the next run "
		       "when found dead); the last: %s\n", rw->nbd_deaths, rw->nbd_death);
}

/*
 * The umap group's target (issue 14): the layer's own cost, umap's time per
 * page at most 5% over lazymap_map's on a lazymap with the same options.
 */
#define UMAP_TARGET 1.05

/* What the umap group's runs were given (main fills it). */
static struct {
	unsigned fillers;     /* UMAP_PAGE_FILLERS: handler threads of both lazymaps */
	uint64_t buf_pages;   /* UMAP_BUFSIZE: the resident budget, in pages */
	uint64_t read_ahead;  /* UMAP_READ_AHEAD (0: not set) */
	size_t readahead_max; /* what the layer makes of it, given to the direct twin too */
	size_t budget;        /* resident_limit of both */
	char why[300];        /* the direct twin's lazymap could not be opened */
} um;

/* umap / lazymap-direct time per page; -1 if either did not run. */
static double umap_ratio(const struct row *rw)
{
	if (!side_ok(&rw->l) || !side_ok(&rw->p))
		return -1;
	return median(&rw->l).ns_per_page / median(&rw->p).ns_per_page;
}

static void print_umap_header(void)
{
	printf("\numap scenarios: umap() of liblazymap-umap (umap) against lazymap_map of the same "
	       "file (lazymap) and the kernel's\nmmap, the order rotating from run to run. umap: the "
	       "layer's ONE lazymap of the process, opened at its first\ncall and shared by every run "
	       "of the group, a fresh region per run; lazymap: one lazymap of the bench's\nown for the "
	       "group, opened with the options the layer gave its own (%u handler thread(s),\n"
	       "resident_limit %zu MiB, readahead_max %s), a fresh region per run; environment:\n"
	       "UMAP_PAGE_FILLERS=%u UMAP_BUFSIZE=%llu (pages: no eviction)%s%s, UMAP_PAGESIZE unset; "
	       "no advice to\neither lazymap twin (umap has none)\n"
	       "umap-seq-read-*: the %zu MiB file, every page in order, one thread; umap-rand-read-*: "
	       "%d%% of its pages\nat random, split between 2 threads (the --threads list when given); "
	       "the read-only file mapped\nLAZYMAP_PRIVATE, PROT_READ, as the layer maps it; cold/hot "
	       "as the file rows. umap-seq-rmw: every page\nof a %zu MiB read-write copy read, changed "
	       "and written by one thread (LAZYMAP_SHARED, as the layer\nmaps an O_RDWR file; the "
	       "kernel: MAP_SHARED), all cached; the line times the touches, the sync\n(msync, "
	       "umap_flush, lazymap_sync) is timed apart below it. flt/pg, rd/pg of umap: not known\n"
	       "(the layer's lazymap gives no counters). ratio: time per page / the kernel's; "
	       "target: umap / lazymap <= %.2fx\n",
	       um.fillers, um.budget >> 20, um.readahead_max ? "set" : "default", um.fillers,
	       (unsigned long long)um.buf_pages, um.read_ahead ? ", UMAP_READ_AHEAD=" : "",
	       um.read_ahead ? "from --readahead" : "", file_size >> 20, RAND_PERCENT,
	       shared_size >> 20, UMAP_TARGET);
	print_columns();
}

/* Under a umap row: the target, and the sync of umap-seq-rmw. */
static void print_umap(const struct row *rw)
{
	double v = umap_ratio(rw);

	printf("  target umap / lazymap <= %.2fx: ", UMAP_TARGET);
	if (v < 0)
		printf("not measured");
	else
		printf("%.3fx, %s", v, v <= UMAP_TARGET ? "met" : "NOT met");
	if (side_ok(&rw->p) && side_ok(&rw->k))
		printf(" (lazymap/kernel %.2fx)", median(&rw->p).ns_per_page / median(&rw->k).ns_per_page);
	/* the runs' spread: a gap inside it is noise, not the layer */
	for (int t = 0; v >= 0 && t < 2; t++) {
		const struct side *s = t ? &rw->p : &rw->l;
		double lo = s->runs[0].ns_per_page, hi = lo;

		for (int i = 1; i < s->n; i++) {
			lo = dmin(lo, s->runs[i].ns_per_page);
			hi = dmax(hi, s->runs[i].ns_per_page);
		}
		printf("%s %s %.0f..%.0f", t ? "," : "; runs ns/page:", t ? "lazymap" : "umap", lo, hi);
	}
	printf("\n");
	if (!is_write(rw->job.sc))
		return;
	static const char *const call[3] = { "msync", "umap_flush", "lazymap_sync" };
	double dirty = (double)rw->job.touched * (double)ps, t[3] = { -1, -1, -1 };

	printf("  sync of %zu dirty pages (%.1f MB):", rw->job.touched, dirty / 1e6);
	for (int k = 0; k < 3; k++) {
		const struct side *s = twin_cside(rw, (enum twin)k);

		if (!side_ok(s)) {
			printf("%s %s %s", k ? ";" : "", call[k], s->status);
			continue;
		}
		t[k] = median_sync(s);
		printf("%s %s %.1f ms", k ? ";" : "", call[k], t[k] / 1e6);
	}
	if (t[1] > 0 && t[2] > 0)
		printf("; umap_flush / lazymap_sync %.3fx", t[1] / t[2]);
	printf("\n");
}

static void print_row(const struct row *rw)
{
	print_side(rw, T_KERNEL);
	if (ntwins(&rw->job) == 3)
		print_side(rw, T_INPROC);
	print_side(rw, T_LAZYMAP);
	if (rw->job.sc->group == G_DAEMON)
		print_daemon(rw);
	if (rw->job.sc->group == G_NBD)
		print_nbd(rw);
	if (rw->job.sc->group == G_UMAP)
		print_umap(rw);
	if (rw->job.sc->access == SPREAD && machine.disk_ns >= 0)
		print_sparse(rw);
	if (rw->job.sc->kind == FILE_REMAP && side_ok(&rw->l))
		print_remap(rw);
	if (rw->job.sc->kind == FILE_WRITE)
		print_sync(rw);
	if (rw->k.why[0] && !strcmp(rw->k.status, "ok"))
		printf("  ! %s twin data: %s\n", tw_name(&rw->job, T_KERNEL), rw->k.why);
	if (rw->bad[0])
		printf("  ! WRONG DATA from lazymap: %s\n", rw->bad);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, "%.12g", v);
	else
		fputs("null", f);
}

/* A measurement that may be missing (< 0): null then. */
static void json_opt(FILE *f, double v)
{
	if (v < 0)
		fputs("null", f);
	else
		json_num(f, v);
}

/* Whose wrong data rw->bad holds: the third twin's say so. */
static bool bad_of(const struct row *rw, enum twin t)
{
	const char *third = third_prefix(&rw->job);
	bool of_third = !strncmp(rw->bad, third, strlen(third));

	return rw->bad[0] && (t == T_INPROC) == of_third;
}

static void json_side(FILE *f, const struct row *rw, enum twin tw)
{
	const struct side *s = twin_cside(rw, tw);
	enum cache c = twin_cache(&rw->job, tw);
	bool kernel = tw == T_KERNEL, faultd = tw == T_LAZYMAP && rw->job.sc->group == G_DAEMON;

	fputs("{\"status\": ", f);
	json_str(f, s->status);
	if (strcmp(s->status, "ok") || !s->n) {
		fputs(", \"reason\": ", f);
		json_str(f, s->why);
		fputs("}", f);
		return;
	}
	struct run m = median(s);

	fputs(", \"ns_per_page\": ", f);
	json_num(f, m.ns_per_page);
	fputs(", \"pages_per_s\": ", f);
	json_num(f, 1e9 / m.ns_per_page);
	fputs(", \"gb_per_s\": ", f);
	json_num(f, (double)ps / m.ns_per_page);
	fputs(", \"latency_ns\": {\"p50\": ", f);
	json_num(f, m.p50);
	fputs(", \"p90\": ", f);
	json_num(f, m.p90);
	fputs(", \"p99\": ", f);
	json_num(f, m.p99);
	fputs(", \"max\": ", f);
	json_num(f, m.max);
	fputs("}, \"latency_cdf_ns\": [", f);
	for (int i = 0; i < NQ; i++)
		fprintf(f, "%s%u", i ? ", " : "", (unsigned)m.cdf[i]);
	fputs("], \"faults_per_page\": ", f);
	json_opt(f, m.faults); /* umap's twin: null, not known */
	if (kernel) {
		fputs(", \"major_faults_per_page\": ", f);
		json_num(f, m.majflt);
	}
	if (c != NO_FILE) {
		fputs(", \"read_pages_per_page\": ", f);
		json_opt(f, m.read_pages);
		fputs(", \"cached_before_worst\": ", f);
		json_num(f, cache_worst(s, c, false));
		fputs(", \"cached_after\": [", f);
		for (int i = 0; i < s->n; i++) {
			fputs(i ? ", " : "", f);
			json_num(f, s->runs[i].cached_after);
		}
		fputs("], \"checksum_ok\": ", f);
		fputs(kernel ? (rw->k.why[0] ? "false" : "true") : (bad_of(rw, tw) ? "false" : "true"), f);
	}
	if (faultd) {
		/* faultctl's counters of the client: what faultd read and served from its cache */
		fputs(", \"faultd_cache_hits_per_page\": ", f);
		json_opt(f, m.hits);
		fputs(", \"fault_messages\": ", f);
		fprintf(f, "%llu", (unsigned long long)m.msgs);
	}
	if (faultd && rw->job.sc->kind == FILE_SHARED) {
		fputs(", \"client1_ns_per_page\": ", f);
		json_num(f, m.first_ns_per_page);
		fprintf(f, ", \"client1_fault_messages\": %llu, \"client1_read_pages_per_page\": ",
			(unsigned long long)m.first_msgs);
		json_opt(f, m.first_read_pages);
	}
	if (kernel && rw->job.sc->kind == FILE_SHARED) {
		fputs(", \"memfd_ns_per_page\": ", f);
		json_opt(f, median_shmem(s));
	}
	if (!kernel && rw->job.sc->kind == FILE_REMAP) {
		fprintf(f, ", \"fault_messages\": %llu, \"runs_fault_messages\": [",
			(unsigned long long)m.msgs);
		for (int i = 0; i < s->n; i++)
			fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)s->runs[i].msgs);
		fputs("]", f);
	}
	if (is_write(rw->job.sc)) {
		double t = median_sync(s);

		fputs(", \"sync_ns\": ", f);
		json_num(f, t);
		fputs(", \"sync_mb_per_s\": ", f);
		json_num(f, (double)rw->job.touched * (double)ps / t * 1e3);
		fputs(", \"written_bytes\": ", f);
		json_opt(f, m.written);
		fputs(", \"runs_sync_ns\": [", f);
		for (int i = 0; i < s->n; i++)
			fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)s->runs[i].sync_ns);
		fputs("]", f);
	}
	fputs(", \"runs_ns_per_page\": [", f);
	for (int i = 0; i < s->n; i++) {
		fputs(i ? ", " : "", f);
		json_num(f, s->runs[i].ns_per_page);
	}
	fputs("]", f);
	if (faultd) {
		/* A served lazymap's stats hold faultd's faults, and nothing else of faultd's. */
		fputs(", \"stats_per_run\": {\"faults\": ", f);
		json_num(f, (double)rw->st.faults / s->n);
		fputs("}", f);
	} else if (!kernel && !(rw->job.sc->group == G_UMAP && tw == T_LAZYMAP)) {
		/* Counters per run, levels as they were at the end (umap's twin: none). */
		const struct lazymap_stats *st = tw == T_INPROC ? &rw->pst : &rw->st;
		const char *sep = "";

		fputs(", \"stats_per_run\": {", f);
#define X(fl, level)                                                                              \
	fprintf(f, "%s\"" #fl "\": ", sep);                                                       \
	json_num(f, (level) ? (double)st->fl : (double)st->fl / s->n);                            \
	sep = ", ";
		STATS_FIELDS(X)
#undef X
		fputs("}", f);
	}
	fputs("}", f);
}

/* file-sparse-touch: the disk's raw read p50 and each twin's p50 beyond it. */
static void json_sparse(FILE *f, const struct row *rw)
{
	fputs(", \"raw_read_p50_ns\": ", f);
	json_opt(f, machine.disk_ns);
	for (int t = 0; t < 2; t++) {
		const struct side *s = t ? &rw->l : &rw->k;

		fprintf(f, ", \"%s_margin_p50_ns\": ", t ? "lazymap" : "kernel");
		if (machine.disk_ns >= 0 && !strcmp(s->status, "ok") && s->n)
			json_num(f, median(s).p50 - machine.disk_ns);
		else
			fputs("null", f);
	}
}

static void json_machine(FILE *f, const struct machine *m)
{
	fputs(",\n \"machine_line\": ", f);
	json_str(f, m->line);
	fputs(",\n \"machine_costs\": {\"hypervisor\": ", f);
	json_str(f, m->hv);
	fputs(", \"syscall_ns\": ", f);
	json_num(f, m->syscall_ns);
	fputs(", \"page_fault_ns\": ", f);
	json_opt(f, m->fault_ns);
	fputs(", \"uffd_round_trip_ns\": ", f);
	json_opt(f, m->uffd_ns);
	fputs(", \"uffd_round_trip\": ", f);
	json_str(f, m->uffd_ns >= 0 ? "same CPU, UFFDIO_ZEROPAGE, median per fault" : m->uffd_why);
	fputs(", \"disk_read_4k_p50_ns\": ", f);
	json_opt(f, m->disk_ns);
	fputs(", \"disk_read\": ", f);
	json_str(f, m->disk_how);
	fputs(", \"disk_fs\": ", f);
	json_str(f, m->disk_fs ? m->disk_fs : "");
	fputs("}", f);
}

/* ---------------------------------------------------------------- the resident budget */

/*
 * The budget group (issue 11): lazymap under opts.resident_limit against
 * the kernel under a memory cgroup (v1) of the same size, in the same run.
 * budget-zipf reads one word of a page at a time from a file mapped
 * read-only, in a Zipf(0.99) order and a uniform one, with three twins
 * each: our policy (2Q), the same library with LAZYMAP_EVICT_POLICY=fifo,
 * and the kernel's mmap in a child placed in a cgroup whose limit is the
 * budget (the file's page cache is charged there, which is what holds it
 * to the budget). budget-anon-swap writes, then reads back, an anonymous
 * region several times the budget: lazymap swapping to a file of its own,
 * the kernel to a swap file turned on for that run alone. A kernel twin
 * whose cgroup or swap cannot be had is "unavailable" and fails nothing.
 *
 * lazymap maps the file LAZYMAP_DIRECT: read through the kernel's page
 * cache, the whole file would stay there beside our budgeted cache, and a
 * miss would cost a copy from memory where the kernel twin's costs the
 * disk. Where O_DIRECT is refused, buffered, and the line says so.
 */
#define ZIPF_S 0.99

struct budget_cfg {
	size_t file_size, budget, anon_size;
	size_t warm[2], n[2]; /* accesses per pattern (zipf, uniform): warm-up, then measured */
	const char *dir;      /* where the swap files go (--dir) */
	char fs[32];          /* its file system */
};

static const char *const pattern_names[2] = { "zipf0.99", "uniform" };
static const char *const btwin_names[3] = { "ours", "fifo", "kernel" };

/* One twin of budget-zipf, over the measured accesses. */
struct btwin {
	const char *status;    /* "ok", "unavailable", "error", "failed" (wrong data) */
	char why[200];
	double hit;            /* share of accesses that waited for no read */
	double rd;             /* pages read from the file per access */
	double ns;             /* per access */
	uint64_t bad;          /* words that differed from the file, warm-up included */
	char bad_what[160];
	/* lazymap */
	struct lazymap_stats st; /* at the end of the measured pass */
	uint64_t evictions, refaults; /* during the measured pass */
	bool buffered;         /* O_DIRECT refused: read through the kernel's page cache */
	double cached_after;   /* share of the file in the kernel's page cache after the twin */
	/* kernel */
	long long cg_peak, cg_failcnt; /* the cgroup's max_usage_in_bytes and failcnt; -1: unknown */
};

/* budget-anon-swap: one twin. */
struct atwin {
	const char *status;
	char why[200];
	double ns[2];          /* per page: write phase, read phase */
	uint64_t bad;
	char bad_what[160];
	uint64_t swap_out, swap_in; /* lazymap: its counters; kernel: /proc/vmstat pswpout/pswpin */
	long long rss_grew;    /* lazymap: RssAnon after the write phase minus before, bytes */
	struct lazymap_stats st;
	long long cg_peak, cg_failcnt;
	uint64_t majflt;       /* kernel: major faults of the read phase (swap-ins) */
};

static struct budget_res {
	bool zipf_ran, anon_ran;
	struct budget_cfg cfg;
	struct btwin z[2][3];  /* [pattern][ours, fifo, kernel] */
	struct atwin a[2];     /* [kernel, lazymap] */
	char swap_how[200];
} bres;

static int budget_fd = -1;

static double urand(uint64_t *s)
{
	return (double)(next_rand(s) >> 11) * 0x1p-53;
}

/*
 * n pages of npages in access order: Zipf(ZIPF_S) over the ranks, ranks
 * placed on pages by a fixed permutation so that hot pages lie apart; or
 * uniform. Fixed seeds: every twin, every run, the same accesses.
 */
static void budget_sequence(uint32_t *seq, size_t n, size_t npages, bool zipf)
{
	uint64_t seed = zipf ? 0x7a697066ull : 0x756e6966ull, pseed = 0x7065726dull;
	double *cdf, sum = 0;
	uint32_t *perm;

	if (!zipf) {
		for (size_t i = 0; i < n; i++)
			seq[i] = (uint32_t)(next_rand(&seed) % npages);
		return;
	}
	cdf = malloc(npages * sizeof(*cdf));
	perm = malloc(npages * sizeof(*perm));
	if (!cdf || !perm) {
		fprintf(stderr, "budget: out of memory\n");
		exit(1);
	}
	for (size_t k = 0; k < npages; k++) {
		sum += pow((double)(k + 1), -ZIPF_S);
		cdf[k] = sum;
		perm[k] = (uint32_t)k;
	}
	shuffle(perm, npages, &pseed);
	for (size_t i = 0; i < n; i++) {
		double u = urand(&seed) * sum;
		size_t lo = 0, hi = npages - 1;

		while (lo < hi) { /* the first rank whose cumulative weight passes u */
			size_t mid = lo + (hi - lo) / 2;

			if (cdf[mid] > u)
				hi = mid;
			else
				lo = mid + 1;
		}
		seq[i] = perm[lo];
	}
	free(cdf);
	free(perm);
}

struct pass {
	uint64_t ns, bad;
	size_t done;    /* accesses made: fewer than asked if the deadline came first */
	char what[160]; /* the first wrong word */
};

/*
 * One word of each page of seq, checked against the file; stops at the
 * deadline (now_ns()), checked every 64 accesses: a twin that thrashes
 * (the kernel's read-around as large as its cgroup's limit does) must not
 * take the run with it.
 */
static void budget_reads(const char *base, const uint32_t *seq, size_t n, struct pass *p,
			 uint64_t deadline)
{
	uint64_t t0 = now_ns();

	for (size_t i = 0; i < n; i++) {
		if (!(i & 63) && now_ns() > deadline) {
			n = i;
			break;
		}
		uint32_t pg = seq[i];
		uint64_t off = (uint64_t)pg * ps + touch_off(pg);
		uint64_t v = *(volatile const uint64_t *)(base + off);

		if (v != data_word(off) && !p->bad++)
			snprintf(p->what, sizeof(p->what), "access %zu, page %u word %zu: 0x%016llx, "
				 "file has 0x%016llx", i, (unsigned)pg, (size_t)touch_off(pg) / 8,
				 (unsigned long long)v, (unsigned long long)data_word(off));
	}
	p->done = n;
	p->ns = now_ns() - t0;
}

static uint64_t twin_deadline_ns; /* seconds a budget-zipf twin may take, in ns */

/* A twin that met its deadline: how far it got, in why; true if so. */
static bool too_slow(const struct pass *w, const struct pass *m, size_t warm, size_t n, char *why,
		     size_t whylen)
{
	if (w->done == warm && m->done == n)
		return false;
	snprintf(why, whylen, "gave up after %.0f s: %zu of %zu warm-up and %zu of %zu measured "
		 "accesses made", (double)twin_deadline_ns / 1e9, w->done, warm, m->done, n);
	return true;
}

/* budget-anon-swap's words: distinct everywhere, never zero, cheap to make. */
static inline uint64_t anon_word(uint64_t off)
{
	return (off + 8) * 0x9e3779b97f4a7c15ull;
}

static uint64_t anon_write(char *base, size_t size)
{
	uint64_t t0 = now_ns();

	for (size_t pg = 0; pg < size / ps; pg++) {
		uint64_t *w = (uint64_t *)(base + pg * ps), off = (uint64_t)pg * ps;

		for (size_t i = 0; i < ps / 8; i++)
			w[i] = anon_word(off + i * 8);
	}
	return now_ns() - t0;
}

/* Every byte read back; the first wrong word in what. */
static uint64_t anon_check(const char *base, size_t size, struct pass *p)
{
	uint64_t t0 = now_ns();

	for (size_t pg = 0; pg < size / ps; pg++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(base + pg * ps);
		uint64_t off = (uint64_t)pg * ps;

		for (size_t i = 0; i < ps / 8; i++) {
			uint64_t v = w[i];

			if (v != anon_word(off + i * 8) && !p->bad++)
				snprintf(p->what, sizeof(p->what), "page %zu word %zu: 0x%016llx, "
					 "written 0x%016llx", pg, i, (unsigned long long)v,
					 (unsigned long long)anon_word(off + i * 8));
		}
	}
	return now_ns() - t0;
}

/* Share of the file in the kernel's page cache, from mincore on a mapping of it. */
static double budget_cached(void)
{
	size_t n = bres.cfg.file_size / ps, in = 0;
	unsigned char *vec = malloc(n);
	void *p = mmap(NULL, bres.cfg.file_size, PROT_READ, MAP_SHARED, budget_fd, 0);

	if (!vec || p == MAP_FAILED || mincore(p, bres.cfg.file_size, vec)) {
		perror("budget: mmap/mincore of the file");
		exit(1);
	}
	munmap(p, bres.cfg.file_size);
	for (size_t i = 0; i < n; i++)
		in += vec[i] & 1;
	free(vec);
	return (double)in / (double)n;
}

/*
 * Every twin starts cold: the file's pages leave the page cache (clean
 * since its fsync, and mapped nowhere). Not /proc/sys/vm/drop_caches: the
 * machine may be shared, and that drops everyone's cache.
 */
static void budget_drop(void)
{
	double in = budget_cached();

	for (int i = 0; i < 10 && in > 0; i++) {
		if (i)
			usleep(10000);
		posix_fadvise(budget_fd, 0, 0, POSIX_FADV_DONTNEED);
		in = budget_cached();
	}
	if (in > 0)
		fprintf(stderr, "\nbudget: %.2f%% of the file stayed cached after DONTNEED\n", in * 100);
}

/* A number from a /proc or /sys file: the first one after key (NULL: at the start); -1 if none. */
static long long read_num(const char *path, const char *key)
{
	static char buf[32768];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;
	const char *p;

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = 0;
	p = buf;
	if (key) {
		size_t kl = strlen(key);

		while (p && (strncmp(p, key, kl) || (p[kl] != ' ' && p[kl] != ':')))
			if ((p = strchr(p, '\n')))
				p++;
		if (!p)
			return -1;
		p += kl;
	}
	while (*p == ' ' || *p == '\t' || *p == ':')
		p++;
	return *p >= '0' && *p <= '9' ? strtoll(p, NULL, 10) : -1;
}

/* 0, or -errno: write val to file of the cgroup. */
static int cg_write(const char *file, const char *val)
{
	char path[PATH_MAX + 64];
	int fd, err = 0;

	snprintf(path, sizeof(path), "%s/%s", cg_dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		err = -errno;
	close(fd);
	return err;
}

static long long cg_read(const char *file)
{
	char path[PATH_MAX + 64];

	snprintf(path, sizeof(path), "%s/%s", cg_dir, file);
	return read_num(path, NULL);
}

/*
 * A cgroup v1 memory cgroup of ours limited to limit bytes, at the top of
 * the memory hierarchy; 0, or -errno with the step in why.
 */
static int cg_create(const char *tag, size_t limit, char *why, size_t whylen)
{
	char val[32];
	int err;

	snprintf(cg_dir, sizeof(cg_dir), "/sys/fs/cgroup/memory/lazymap-bench.%d.%s", (int)getpid(),
		 tag);
	if (mkdir(cg_dir, 0755)) {
		err = -errno;
		snprintf(why, whylen, "no cgroup v1 memory cgroup: mkdir %s: %s", cg_dir, strerror(-err));
		cg_dir[0] = 0;
		return err;
	}
	snprintf(val, sizeof(val), "%zu", limit);
	err = cg_write("memory.limit_in_bytes", val);
	/* Swappiness 0 in a cgroup means no swapping at all there; the system's is 60 by default. */
	if (!err && cg_read("memory.swappiness") == 0)
		err = cg_write("memory.swappiness", "60");
	if (err) {
		snprintf(why, whylen, "setting up %.120s: %s", cg_dir, strerror(-err));
		rmdir(cg_dir);
		cg_dir[0] = 0;
	}
	return err;
}

/* Empty it (charges of the file's page cache stay after the child) and remove it. */
static void cg_remove(void)
{
	if (!cg_dir[0])
		return;
	cg_write("memory.force_empty", "0");
	if (rmdir(cg_dir))
		fprintf(stderr, "\nbudget: rmdir %s: %s\n", cg_dir, strerror(errno));
	cg_dir[0] = 0;
}

/*
 * A swap file of size bytes in dir, made and turned on: fallocate (no
 * holes, as swapon wants), mkswap's header written here, swapon. 0, or
 * -errno with the step in why (nothing left behind).
 */
static int swap_make(const char *dir, size_t size, char *why, size_t whylen)
{
	struct {
		char bootbits[1024];
		uint32_t version, last_page, nr_badpages;
		unsigned char uuid[16];
		char volume[16];
	} hdr;
	char *page = calloc(1, ps);
	int fd = -1, err = -ENOMEM;
	const char *step = "calloc";

	snprintf(swap_file, sizeof(swap_file), "%s/lazymap-bench-swap.%d", dir, (int)getpid());
	if (!page)
		goto out;
	step = "open";
	fd = open(swap_file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		swap_file[0] = 0;
		goto out;
	}
	step = "fallocate";
	if (fallocate(fd, 0, 0, (off_t)size)) {
		err = -errno;
		goto out;
	}
	memset(&hdr, 0, sizeof(hdr));
	hdr.version = 1;
	hdr.last_page = (uint32_t)(size / ps - 1);
	memcpy(page, &hdr, sizeof(hdr));
	memcpy(page + ps - 10, "SWAPSPACE2", 10);
	step = "writing the header";
	if (pwrite(fd, page, ps, 0) != (ssize_t)ps || fsync(fd)) {
		err = -errno;
		goto out;
	}
	close(fd);
	fd = -1;
	step = "swapon";
	if (swapon(swap_file, 0)) {
		err = -errno;
		goto out;
	}
	swap_active = 1;
	err = 0;
out:
	if (err) {
		snprintf(why, whylen, "no swap: %s %s: %s", step, swap_file[0] ? swap_file : dir,
			 strerror(-err));
		if (swap_file[0])
			unlink(swap_file);
		swap_file[0] = 0;
	}
	if (fd >= 0)
		close(fd);
	free(page);
	return err;
}

static void swap_remove(void)
{
	if (swap_active) {
		uint64_t t0 = now_ns();

		if (swapoff(swap_file))
			fprintf(stderr, "\nbudget: swapoff %s: %s\n", swap_file, strerror(errno));
		else
			swap_active = 0;
		if (now_ns() - t0 > 1000000000u)
			fprintf(stderr, "\nbudget: swapoff took %.1f s\n", (double)(now_ns() - t0) / 1e9);
	}
	if (swap_file[0] && !swap_active) {
		unlink(swap_file);
		swap_file[0] = 0;
	}
}

/* What a kernel twin's child tells its parent through a pipe. */
struct kid_result {
	int err; /* 0, or -errno of the step in why */
	char why[160];
	uint64_t ns[2];
	uint64_t majflt;
	long long read_bytes; /* /proc/self/io; -1: not known */
	struct pass check;
};

/*
 * Run fn in a child that first joins cg_dir: the kernel twin, with the
 * cgroup charging its page cache and its anonymous memory. Signals are back
 * to their defaults there (our handlers would remove the files), and it
 * leaves by _exit alone. 0, or -errno with what happened in why.
 */
static int run_in_cgroup(void (*fn)(void *arg, struct kid_result *r), void *arg,
			 struct kid_result *r, char *why, size_t whylen)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGALRM, SIGPIPE,
				    SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL };
	int pfd[2], wst;
	size_t got = 0;
	pid_t pid;

	memset(r, 0, sizeof(*r));
	if (pipe2(pfd, O_CLOEXEC)) {
		snprintf(why, whylen, "pipe: %s", strerror(errno));
		return -EIO;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		snprintf(why, whylen, "fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return -EIO;
	}
	if (!pid) {
		struct kid_result res;
		char path[PATH_MAX + 32], val[24];
		int fd, len;

		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
			signal(sigs[i], SIG_DFL);
		close(pfd[0]);
		memset(&res, 0, sizeof(res));
		snprintf(path, sizeof(path), "%s/cgroup.procs", cg_dir);
		len = snprintf(val, sizeof(val), "%d", (int)getpid());
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, val, (size_t)len) != len) {
			res.err = -errno;
			snprintf(res.why, sizeof(res.why), "joining %.100s: %s", path, strerror(errno));
		} else {
			fn(arg, &res);
		}
		if (write(pfd[1], &res, sizeof(res)) != (ssize_t)sizeof(res))
			_exit(1);
		_exit(0);
	}
	twin_child = pid;
	close(pfd[1]);
	while (got < sizeof(*r)) {
		ssize_t n = read(pfd[0], (char *)r + got, sizeof(*r) - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(pfd[0]);
	while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
		;
	twin_child = 0;
	if (got != sizeof(*r)) {
		if (WIFSIGNALED(wst))
			snprintf(why, whylen, "the child died of %s%s", strsignal(WTERMSIG(wst)),
				 "");
		else
			snprintf(why, whylen, "the child exited %d without a result", WEXITSTATUS(wst));
		return -EIO;
	}
	if (r->err) {
		snprintf(why, whylen, "%s", r->why);
		return r->err;
	}
	return 0;
}

/*
 * A kernel twin whose child the cgroup's OOM killer took: the kernel's own
 * outcome under the limit, reported, not a failure of the run.
 */
static const char *kid_failed(char *why, size_t whylen)
{
	char path[PATH_MAX + 32];
	long long kills;

	snprintf(path, sizeof(path), "%s/memory.oom_control", cg_dir);
	kills = read_num(path, "oom_kill");
	if (kills > 0) {
		size_t l = strlen(why);

		snprintf(why + l, whylen - l, "; the cgroup's OOM killer (oom_kill %lld)", kills);
		return "killed";
	}
	return "error";
}

/* ------------------------------------------------ budget-zipf */

struct zipf_kid {
	const uint32_t *seq;
	size_t warm, n;
	uint64_t deadline;
};

/* The kernel twin, in its cgroup: the same accesses through mmap(MAP_PRIVATE, PROT_READ). */
static void zipf_kid_fn(void *arg, struct kid_result *r)
{
	const struct zipf_kid *k = arg;
	size_t size = bres.cfg.file_size;
	struct rusage a, b;
	struct pass w = { 0 };
	long long io0, io1;
	char *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, budget_fd, 0);

	if (p == MAP_FAILED) {
		r->err = -errno;
		snprintf(r->why, sizeof(r->why), "mmap of the file: %s", strerror(errno));
		return;
	}
	if (use_advise)
		madvise(p, size, MADV_RANDOM);
	budget_reads(p, k->seq, k->warm, &w, k->deadline);
	getrusage(RUSAGE_SELF, &a);
	io0 = read_num("/proc/self/io", "read_bytes");
	budget_reads(p, k->seq + k->warm, k->n, &r->check, k->deadline);
	if (too_slow(&w, &r->check, k->warm, k->n, r->why, sizeof(r->why)))
		r->err = -ETIME;
	getrusage(RUSAGE_SELF, &b);
	io1 = read_num("/proc/self/io", "read_bytes");
	r->ns[0] = r->check.ns;
	r->majflt = (uint64_t)(b.ru_majflt - a.ru_majflt);
	r->read_bytes = io0 < 0 || io1 < 0 ? -1 : io1 - io0;
	if (w.bad) {
		r->check.bad += w.bad;
		memcpy(r->check.what, w.what, sizeof(w.what));
	}
	munmap(p, size);
}

static void zipf_kernel(struct btwin *t, const uint32_t *seq, size_t warm, size_t n)
{
	struct zipf_kid k = { seq, warm, n, now_ns() + twin_deadline_ns };
	struct kid_result r;

	t->cg_peak = t->cg_failcnt = -1;
	if (cg_create("zipf", bres.cfg.budget, t->why, sizeof(t->why))) {
		t->status = "unavailable";
		return;
	}
	budget_drop();
	if (run_in_cgroup(zipf_kid_fn, &k, &r, t->why, sizeof(t->why))) {
		t->status = r.err == -ETIME ? "slow" : kid_failed(t->why, sizeof(t->why));
		goto out;
	}
	t->status = "ok";
	t->ns = (double)r.ns[0] / (double)n;
	t->hit = 1 - (double)r.majflt / (double)n;
	t->rd = r.read_bytes < 0 ? -1 : (double)r.read_bytes / (double)ps / (double)n;
	t->bad = r.check.bad;
	memcpy(t->bad_what, r.check.what, sizeof(t->bad_what));
	t->cg_peak = cg_read("memory.max_usage_in_bytes");
	t->cg_failcnt = cg_read("memory.failcnt");
out:
	cg_remove();
	budget_drop();
}

/* A lazymap with the budget; LAZYMAP_EVICT_POLICY is read at open, and only there. */
static int budget_open(struct lazymap **lm, const struct lazymap_opts *base, bool fifo)
{
	struct lazymap_opts o = *base;
	int ret;

	o.resident_limit = bres.cfg.budget;
	o.swap_path = bres.cfg.dir;
	if (fifo)
		setenv("LAZYMAP_EVICT_POLICY", "fifo", 1);
	ret = lazymap_open(lm, &o);
	if (fifo)
		unsetenv("LAZYMAP_EVICT_POLICY");
	return ret;
}

static void zipf_lazymap(struct btwin *t, const struct lazymap_opts *base, bool fifo,
			 const uint32_t *seq, size_t warm, size_t n)
{
	size_t size = bres.cfg.file_size;
	struct lazymap_stats s0, s1;
	struct pass w = { 0 }, m = { 0 };
	const char *what = "lazymap_open(resident_limit)";
	struct lazymap *lm;
	void *p;
	int ret;

	ret = budget_open(&lm, base, fifo);
	if (ret)
		goto fail;
	budget_drop();
	what = "lazymap_map(LAZYMAP_DIRECT)";
	ret = lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, budget_fd, 0);
	if (ret == -EINVAL) {
		t->buffered = true;
		what = "lazymap_map";
		ret = lazymap_map(lm, &p, size, PROT_READ, LAZYMAP_PRIVATE, budget_fd, 0);
	}
	if (ret)
		goto close;
	if (use_advise && (ret = lazymap_advise(lm, p, size, LAZYMAP_ADV_RANDOM))) {
		what = "lazymap_advise";
		lazymap_unmap(lm, p, size);
		goto close;
	}
	memset(&s0, 0, sizeof(s0));
	memset(&s1, 0, sizeof(s1));
	uint64_t deadline = now_ns() + twin_deadline_ns;

	budget_reads(p, seq, warm, &w, deadline);
	lazymap_stats(lm, &s0);
	budget_reads(p, seq + warm, n, &m, deadline);
	lazymap_stats(lm, &s1);
	t->status = too_slow(&w, &m, warm, n, t->why, sizeof(t->why)) ? "slow" : "ok";
	t->ns = (double)m.ns / (double)n;
	t->hit = 1 - (double)(s1.faults - s0.faults) / (double)n;
	t->rd = (double)(s1.bytes_read - s0.bytes_read) / (double)ps / (double)n;
	t->st = s1;
	t->evictions = s1.evictions - s0.evictions;
	t->refaults = s1.refaults - s0.refaults;
	t->bad = w.bad + m.bad;
	memcpy(t->bad_what, w.bad ? w.what : m.what, sizeof(t->bad_what));
	what = "lazymap_unmap";
	ret = lazymap_unmap(lm, p, size);
close:
	lazymap_close(lm);
	t->cached_after = budget_cached();
	budget_drop();
	if (!ret)
		return;
fail:
	t->status = "error";
	snprintf(t->why, sizeof(t->why), "%s: -%s (%s)", what, strerrorname_np(-ret), strerror(-ret));
}

static void budget_zipf(const struct lazymap_opts *base)
{
	struct budget_cfg *cfg = &bres.cfg;
	size_t most = cfg->warm[0] + cfg->n[0] > cfg->warm[1] + cfg->n[1] ? cfg->warm[0] + cfg->n[0]
									   : cfg->warm[1] + cfg->n[1];
	uint32_t *seq = malloc(most * sizeof(*seq));

	if (!seq) {
		fprintf(stderr, "budget: out of memory\n");
		exit(1);
	}
	for (int pat = 0; pat < 2; pat++) {
		budget_sequence(seq, cfg->warm[pat] + cfg->n[pat], cfg->file_size / ps, pat == 0);
		for (int tw = 0; tw < 3; tw++) {
			struct btwin *t = &bres.z[pat][tw];

			fprintf(stderr, "\rbudget-zipf %s: %-8s", pattern_names[pat], btwin_names[tw]);
			snprintf(running, sizeof(running), "budget-zipf, %s, %s twin", pattern_names[pat],
				 btwin_names[tw]);
			alarm(run_timeout);
			if (tw == 2)
				zipf_kernel(t, seq, cfg->warm[pat], cfg->n[pat]);
			else
				zipf_lazymap(t, base, tw == 1, seq, cfg->warm[pat], cfg->n[pat]);
			alarm(0);
			if (t->bad)
				t->status = "failed";
		}
	}
	fprintf(stderr, "\r%*s\r", 70, "");
	free(seq);
	bres.zipf_ran = true;
}

/* ------------------------------------------------ budget-anon-swap */

static void anon_kid_fn(void *arg, struct kid_result *r)
{
	size_t size = bres.cfg.anon_size;
	struct rusage a, b;
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);

	(void)arg;
	if (p == MAP_FAILED) {
		r->err = -errno;
		snprintf(r->why, sizeof(r->why), "mmap: %s", strerror(errno));
		return;
	}
	madvise(p, size, MADV_NOHUGEPAGE); /* 4 KiB pages, like ours */
	r->ns[0] = anon_write(p, size);
	getrusage(RUSAGE_SELF, &a);
	r->ns[1] = anon_check(p, size, &r->check);
	getrusage(RUSAGE_SELF, &b);
	r->majflt = (uint64_t)(b.ru_majflt - a.ru_majflt);
	munmap(p, size);
}

static void anon_kernel(struct atwin *t)
{
	size_t npages = bres.cfg.anon_size / ps;
	long long out0, in0;
	struct kid_result r;

	t->cg_peak = t->cg_failcnt = -1;
	if (cg_create("swap", bres.cfg.budget, t->why, sizeof(t->why))) {
		t->status = "unavailable";
		return;
	}
	if (swap_make(bres.cfg.dir, bres.cfg.anon_size, t->why, sizeof(t->why))) {
		t->status = "unavailable";
		goto out;
	}
	snprintf(bres.swap_how, sizeof(bres.swap_how), "%zu MiB swap file in %s (%s), cgroup swappiness %lld",
		 bres.cfg.anon_size >> 20, bres.cfg.dir, bres.cfg.fs, cg_read("memory.swappiness"));
	out0 = read_num("/proc/vmstat", "pswpout");
	in0 = read_num("/proc/vmstat", "pswpin");
	if (run_in_cgroup(anon_kid_fn, NULL, &r, t->why, sizeof(t->why))) {
		t->status = kid_failed(t->why, sizeof(t->why));
		goto out;
	}
	t->status = r.check.bad ? "failed" : "ok";
	t->ns[0] = (double)r.ns[0] / (double)npages;
	t->ns[1] = (double)r.ns[1] / (double)npages;
	t->bad = r.check.bad;
	memcpy(t->bad_what, r.check.what, sizeof(t->bad_what));
	t->majflt = r.majflt;
	t->swap_out = (uint64_t)(read_num("/proc/vmstat", "pswpout") - out0);
	t->swap_in = (uint64_t)(read_num("/proc/vmstat", "pswpin") - in0);
	t->cg_peak = cg_read("memory.max_usage_in_bytes");
	t->cg_failcnt = cg_read("memory.failcnt");
out:
	swap_remove();
	cg_remove();
}

static void anon_lazymap(struct atwin *t, const struct lazymap_opts *base)
{
	size_t size = bres.cfg.anon_size, npages = size / ps;
	const char *what = "lazymap_open(resident_limit)";
	struct pass chk = { 0 };
	long long rss0;
	struct lazymap *lm;
	void *p;
	int ret;

	ret = budget_open(&lm, base, false);
	if (ret)
		goto fail;
	what = "lazymap_map(LAZYMAP_ANON)";
	ret = lazymap_map(lm, &p, size, PROT_READ | PROT_WRITE, LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0);
	if (ret) {
		lazymap_close(lm);
		goto fail;
	}
	rss0 = read_num("/proc/self/status", "RssAnon");
	t->ns[0] = (double)anon_write(p, size) / (double)npages;
	t->rss_grew = rss0 < 0 ? -1 : (read_num("/proc/self/status", "RssAnon") - rss0) * 1024;
	t->ns[1] = (double)anon_check(p, size, &chk) / (double)npages;
	memset(&t->st, 0, sizeof(t->st));
	lazymap_stats(lm, &t->st);
	t->swap_out = t->st.swap_outs;
	t->swap_in = t->st.swap_ins;
	t->bad = chk.bad;
	memcpy(t->bad_what, chk.what, sizeof(t->bad_what));
	t->status = chk.bad ? "failed" : "ok";
	what = "lazymap_unmap";
	ret = lazymap_unmap(lm, p, size);
	lazymap_close(lm);
	if (!ret)
		return;
fail:
	t->status = "error";
	snprintf(t->why, sizeof(t->why), "%s: -%s (%s)", what, strerrorname_np(-ret), strerror(-ret));
}

static void budget_anon(const struct lazymap_opts *base)
{
	for (int tw = 0; tw < 2; tw++) {
		fprintf(stderr, "\rbudget-anon-swap: %-8s", tw ? "lazymap" : "kernel");
		snprintf(running, sizeof(running), "budget-anon-swap, %s twin", tw ? "lazymap" : "kernel");
		alarm(run_timeout);
		if (tw)
			anon_lazymap(&bres.a[1], base);
		else
			anon_kernel(&bres.a[0]);
		alarm(0);
	}
	fprintf(stderr, "\r%*s\r", 70, "");
	bres.anon_ran = true;
}

/* ------------------------------------------------ output */

static bool bt_ok(const char *status)
{
	return status && !strcmp(status, "ok");
}

/* The kernel's read-around for a file's device (its read_ahead_kb), or -1. */
static long long read_ahead_kb(int fd)
{
	char path[96];
	struct stat st;
	long long kb;

	if (fstat(fd, &st))
		return -1;
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/read_ahead_kb", major(st.st_dev),
		 minor(st.st_dev));
	kb = read_num(path, NULL);
	if (kb < 0) { /* a partition: its disk's queue */
		snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/../queue/read_ahead_kb",
			 major(st.st_dev), minor(st.st_dev));
		kb = read_num(path, NULL);
	}
	return kb;
}

static void print_budget_zipf(void)
{
	const struct budget_cfg *cfg = &bres.cfg;
	long long ra = read_ahead_kb(budget_fd);

	printf("\nbudget-zipf: %zu MiB file (%s), budget %zu MiB; one 8-byte word read and checked per "
	       "access; every twin starts cold\n"
	       "twins: ours = lazymap (2Q), LAZYMAP_PRIVATE|LAZYMAP_DIRECT; fifo = the same with "
	       "LAZYMAP_EVICT_POLICY=fifo;\n"
	       "kernel = mmap(MAP_PRIVATE, PROT_READ) in a child in a cgroup v1 memory cgroup limited "
	       "to %zu MiB%s; the device's read_ahead_kb %lld\n"
	       "hit: measured accesses that waited for no read (lazymap: 1 - fault messages/access; "
	       "kernel: 1 - major faults/access,\ngetrusage in the child); rd/acc: pages read per access "
	       "(lazymap: bytes_read; kernel: the child's /proc/self/io read_bytes)\n",
	       cfg->file_size >> 20, cfg->fs, cfg->budget >> 20, cfg->budget >> 20,
	       use_advise ? "; both advised RANDOM" : "", ra);
	printf("%-16s %-9s %-6s %8s %8s %7s %7s %9s | %8s %9s %8s %8s %8s\n", "scenario", "pattern",
	       "twin", "warm-up", "measured", "hit%", "rd/acc", "ns/acc", "peak MiB", "evictions",
	       "refaults", "overruns", "wait ms");
	for (int pat = 0; pat < 2; pat++) {
		const struct btwin *z = bres.z[pat];

		for (int tw = 0; tw < 3; tw++) {
			const struct btwin *t = &z[tw];
			const char *lead = pat == 0 && tw == 0 ? "budget-zipf" : "";
			const char *pn = tw == 0 ? pattern_names[pat] : "";

			if (!bt_ok(t->status) && strcmp(t->status, "failed")) {
				printf("%-16s %-9s %-6s %s: %s\n", lead, pn, btwin_names[tw], t->status, t->why);
				continue;
			}
			printf("%-16s %-9s %-6s %8zu %8zu %7.2f %7.3f %9.0f |", lead, pn, btwin_names[tw],
			       cfg->warm[pat], cfg->n[pat], t->hit * 100, t->rd, t->ns);
			if (tw < 2)
				printf(" %8.1f %9llu %8llu %8llu %8.1f%s\n", t->st.resident_peak / 1048576.0,
				       (unsigned long long)t->evictions, (unsigned long long)t->refaults,
				       (unsigned long long)t->st.budget_overruns, t->st.evict_wait_ns / 1e6,
				       t->buffered ? "  (buffered: O_DIRECT refused)" : "");
			else
				printf(" cgroup peak %.1f MiB, limit hit %lld times\n", t->cg_peak / 1048576.0,
				       t->cg_failcnt);
			if (t->bad)
				printf("  ! WRONG DATA from %s: %llu words; first: %s\n", tw == 2 ? "the kernel twin"
				       : "lazymap", (unsigned long long)t->bad, t->bad_what);
		}
		printf("  %s:", pattern_names[pat]);
		if (bt_ok(z[0].status) && bt_ok(z[1].status))
			printf(" ours - fifo %+.1f points (target >= +10);", (z[0].hit - z[1].hit) * 100);
		if (bt_ok(z[0].status) && bt_ok(z[2].status))
			printf(" ours - kernel %+.1f points (target >= -5); time ours/kernel %.2fx "
			       "(target <= 1.5x)", (z[0].hit - z[2].hit) * 100, z[0].ns / z[2].ns);
		else
			printf(" no kernel ratio (kernel %s)", z[2].status);
		printf("\n");
	}
	for (int tw = 0; tw < 2; tw++)
		for (int pat = 0; pat < 2; pat++)
			if (bt_ok(bres.z[pat][tw].status) && bres.z[pat][tw].cached_after > 0.01)
				printf("  ! %s, %s: %.1f%% of the file in the kernel's page cache after the run\n",
				       pattern_names[pat], btwin_names[tw], bres.z[pat][tw].cached_after * 100);
}

static void print_budget_anon(void)
{
	const struct budget_cfg *cfg = &bres.cfg;
	const struct atwin *k = &bres.a[0], *l = &bres.a[1];

	printf("\nbudget-anon-swap: %zu MiB anonymous region, every word written (phase 1) then read "
	       "back and checked (phase 2),\nbudget %zu MiB; lazymap: LAZYMAP_ANON|LAZYMAP_PRIVATE, "
	       "resident_limit, its swap file in %s;\nkernel: mmap(MAP_ANONYMOUS), MADV_NOHUGEPAGE, in a "
	       "child in a cgroup v1 memory cgroup limited to %zu MiB, %s\n"
	       "swap out/in: lazymap's swap_outs/swap_ins; kernel: /proc/vmstat pswpout/pswpin over its "
	       "run (the whole machine's)\n", cfg->anon_size >> 20, cfg->budget >> 20, cfg->dir,
	       cfg->budget >> 20, bres.swap_how[0] ? bres.swap_how : "swap turned on for the run");
	printf("%-16s %-7s %9s %9s %9s | %-17s | %9s %9s %9s %9s\n", "scenario", "twin", "write", "read",
	       "total", "ratio w/r/total", "swap out", "swap in", "peak MiB", "rss+ MiB");
	printf("%-16s %-7s %9s %9s %9s | %-17s |\n", "", "", "ns/page", "ns/page", "ns/page",
	       "(target <= 1.0)");
	for (int tw = 0; tw < 2; tw++) {
		const struct atwin *t = &bres.a[tw];
		const char *lead = tw ? "" : "budget-anon-swap";
		char ratio[40] = "";

		if (!bt_ok(t->status) && strcmp(t->status, "failed")) {
			printf("%-16s %-7s %s: %s\n", lead, tw ? "lazymap" : "kernel", t->status, t->why);
			continue;
		}
		if (tw && bt_ok(k->status))
			snprintf(ratio, sizeof(ratio), "%.2f/%.2f/%.2f", t->ns[0] / k->ns[0],
				 t->ns[1] / k->ns[1], (t->ns[0] + t->ns[1]) / (k->ns[0] + k->ns[1]));
		printf("%-16s %-7s %9.0f %9.0f %9.0f | %-17s | %9llu %9llu", lead, tw ? "lazymap" : "kernel",
		       t->ns[0], t->ns[1], t->ns[0] + t->ns[1], ratio, (unsigned long long)t->swap_out,
		       (unsigned long long)t->swap_in);
		if (tw)
			printf(" %9.1f %9.1f\n", t->st.resident_peak / 1048576.0, t->rss_grew / 1048576.0);
		else
			printf(" %9.1f %9s  (cgroup peak; limit hit %lld times; %llu major faults reading)\n",
			       t->cg_peak / 1048576.0, "-", t->cg_failcnt, (unsigned long long)t->majflt);
		if (t->bad)
			printf("  ! WRONG DATA from %s: %llu words; first: %s\n", tw ? "lazymap" : "the kernel twin",
			       (unsigned long long)t->bad, t->bad_what);
	}
	if (bt_ok(l->status) && !l->swap_out)
		printf("  ! lazymap swapped nothing out (swap_outs 0, resident_peak %.1f MiB, RssAnon grew "
		       "%.1f MiB over a %zu MiB budget):\n    its times are of RAM, not of swapping\n",
		       l->st.resident_peak / 1048576.0, l->rss_grew / 1048576.0, cfg->budget >> 20);
}

/* A budget twin's status; false when that is all there is to say (closed). */
static bool json_bstatus(FILE *f, const char *status, const char *why)
{
	fputs("{\"status\": ", f);
	json_str(f, status);
	if (!bt_ok(status) && strcmp(status, "failed")) {
		fputs(", \"reason\": ", f);
		json_str(f, why);
		fputs("}", f);
		return false;
	}
	return true;
}

static void json_btwin(FILE *f, const struct btwin *t, bool kernel)
{
	if (!json_bstatus(f, t->status, t->why))
		return;
	fputs(", \"hit_rate\": ", f);
	json_num(f, t->hit);
	fputs(", \"read_pages_per_access\": ", f);
	json_opt(f, t->rd);
	fputs(", \"ns_per_access\": ", f);
	json_num(f, t->ns);
	fprintf(f, ", \"wrong_words\": %llu", (unsigned long long)t->bad);
	if (kernel) {
		fputs(", \"cgroup_max_usage_bytes\": ", f);
		json_opt(f, (double)t->cg_peak);
		fputs(", \"cgroup_failcnt\": ", f);
		json_opt(f, (double)t->cg_failcnt);
	} else {
		fprintf(f, ", \"direct\": %s, \"resident_peak_bytes\": %llu, \"evictions\": %llu, "
			"\"refaults\": %llu, \"budget_overruns\": %llu, \"evict_wait_ns\": %llu, "
			"\"kernel_cache_after\": ", t->buffered ? "false" : "true",
			(unsigned long long)t->st.resident_peak, (unsigned long long)t->evictions,
			(unsigned long long)t->refaults, (unsigned long long)t->st.budget_overruns,
			(unsigned long long)t->st.evict_wait_ns);
		json_num(f, t->cached_after);
	}
	fputs("}", f);
}

static void json_atwin(FILE *f, const struct atwin *t, bool kernel)
{
	if (!json_bstatus(f, t->status, t->why))
		return;
	fputs(", \"write_ns_per_page\": ", f);
	json_num(f, t->ns[0]);
	fputs(", \"read_ns_per_page\": ", f);
	json_num(f, t->ns[1]);
	fprintf(f, ", \"wrong_words\": %llu, \"swap_outs\": %llu, \"swap_ins\": %llu",
		(unsigned long long)t->bad, (unsigned long long)t->swap_out,
		(unsigned long long)t->swap_in);
	if (kernel)
		fprintf(f, ", \"cgroup_max_usage_bytes\": %lld, \"cgroup_failcnt\": %lld, "
			"\"read_major_faults\": %llu", t->cg_peak, t->cg_failcnt,
			(unsigned long long)t->majflt);
	else
		fprintf(f, ", \"resident_peak_bytes\": %llu, \"evictions\": %llu, \"budget_overruns\": %llu, "
			"\"rss_anon_grew_bytes\": %lld", (unsigned long long)t->st.resident_peak,
			(unsigned long long)t->st.evictions, (unsigned long long)t->st.budget_overruns,
			t->rss_grew);
	fputs("}", f);
}

/* The budget group: a list of its own beside "results", whose rows have two twins. */
static void json_budget(FILE *f)
{
	const struct budget_cfg *cfg = &bres.cfg;
	const char *sep = "\n  ";

	fputs(",\n \"budget\": [", f);
	for (int pat = 0; bres.zipf_ran && pat < 2; pat++) {
		const struct btwin *z = bres.z[pat];

		fprintf(f, "%s{\"row\": \"budget-zipf\", \"group\": \"budget\", \"pattern\": ", sep);
		json_str(f, pattern_names[pat]);
		fprintf(f, ", \"file_bytes\": %zu, \"budget_bytes\": %zu, \"warmup_accesses\": %zu, "
			"\"accesses\": %zu, \"advise\": %s", cfg->file_size, cfg->budget, cfg->warm[pat],
			cfg->n[pat], use_advise ? "true" : "false");
		for (int tw = 0; tw < 3; tw++) {
			fprintf(f, ",\n   \"%s\": ", btwin_names[tw]);
			json_btwin(f, &z[tw], tw == 2);
		}
		fputs(",\n   \"hit_ours_minus_fifo_points\": ", f);
		if (bt_ok(z[0].status) && bt_ok(z[1].status))
			json_num(f, (z[0].hit - z[1].hit) * 100);
		else
			fputs("null", f);
		fputs(", \"hit_ours_minus_kernel_points\": ", f);
		if (bt_ok(z[0].status) && bt_ok(z[2].status))
			json_num(f, (z[0].hit - z[2].hit) * 100);
		else
			fputs("null", f);
		fputs(", \"time_ratio_ours_kernel\": ", f);
		if (bt_ok(z[0].status) && bt_ok(z[2].status))
			json_num(f, z[0].ns / z[2].ns);
		else
			fputs("null", f);
		fputs("}", f);
		sep = ",\n  ";
	}
	if (bres.anon_ran) {
		const struct atwin *k = &bres.a[0], *l = &bres.a[1];

		fprintf(f, "%s{\"row\": \"budget-anon-swap\", \"group\": \"budget\", \"region_bytes\": %zu, "
			"\"budget_bytes\": %zu, \"kernel_swap\": ", sep, cfg->anon_size, cfg->budget);
		json_str(f, bres.swap_how);
		fputs(",\n   \"kernel\": ", f);
		json_atwin(f, k, true);
		fputs(",\n   \"lazymap\": ", f);
		json_atwin(f, l, false);
		fputs(",\n   \"ratio_total\": ", f);
		if (bt_ok(k->status) && bt_ok(l->status))
			json_num(f, (l->ns[0] + l->ns[1]) / (k->ns[0] + k->ns[1]));
		else
			fputs("null", f);
		fputs("}", f);
	}
	fputs("\n ]", f);
}

/* An nbd row: lz-file against nbdfuse, the targets, and whether the servers held. */
static void json_nbd_row(FILE *f, const struct row *rw)
{
	struct nbd_target t[2];
	int n = nbd_targets(&rw->job, t);

	fputs(", \"ratio_lazymap_file_kernel\": ", f);
	if (side_ok(&rw->p) && side_ok(&rw->k))
		json_num(f, median(&rw->p).ns_per_page / median(&rw->k).ns_per_page);
	else
		fputs("null", f);
	fputs(",\n   \"targets\": [", f);
	for (int i = 0; i < n; i++) {
		double v = nbd_ratio(rw, t[i].base);

		fputs(i ? ", {\"ratio\": " : "{\"ratio\": ", f);
		json_str(f, t[i].what);
		fprintf(f, ", \"min\": %g, \"value\": ", t[i].min);
		json_opt(f, v);
		fprintf(f, ", \"met\": %s}", v < 0 ? "null" : v >= t[i].min ? "true" : "false");
	}
	fprintf(f, "], \"server_deaths\": %u, \"server_death\": ", rw->nbd_deaths);
	if (rw->nbd_deaths)
		json_str(f, rw->nbd_death);
	else
		fputs("null", f);
}

/* The nbd group's servers: which, and whether they could be had. */
static void json_nbd(FILE *f)
{
	fputs(",\n \"nbd\": {\"status\": ", f);
	json_str(f, nbd.ok ? "ok" : "unavailable");
	fputs(", \"reason\": ", f);
	if (nbd.ok)
		fputs("null", f);
	else
		json_str(f, nbd.why);
	fputs(", \"nbdkit\": ", f);
	if (nbd.nbdkit[0])
		json_str(f, nbd.nbdkit);
	else
		fputs("null", f);
	fputs(", \"nbdkit_version\": ", f);
	json_str(f, nbd.version);
	fputs(", \"uri\": ", f);
	json_str(f, nbd.uri);
	fputs(", \"nbdfuse\": {\"status\": ", f);
	json_str(f, nbd.fuse_ok ? "ok" : "unavailable");
	fputs(", \"reason\": ", f);
	if (nbd.fuse_ok)
		fputs("null", f);
	else
		json_str(f, nbd.ok ? nbd.fuse_why : "nbdkit is unavailable");
	fputs(", \"binary\": ", f);
	if (nbd.nbdfuse[0])
		json_str(f, nbd.nbdfuse);
	else
		fputs("null", f);
	fputs("}}", f);
}

/* A umap row: umap against lazymap direct, lazymap direct against the kernel, the target. */
static void json_umap_row(FILE *f, const struct row *rw)
{
	double v = umap_ratio(rw);

	fputs(", \"ratio_lazymap_direct_kernel\": ", f);
	if (side_ok(&rw->p) && side_ok(&rw->k))
		json_num(f, median(&rw->p).ns_per_page / median(&rw->k).ns_per_page);
	else
		fputs("null", f);
	fputs(",\n   \"target\": {\"ratio\": \"umap / lazymap_direct time per page\", ", f);
	fprintf(f, "\"max\": %g, \"value\": ", UMAP_TARGET);
	json_opt(f, v);
	fprintf(f, ", \"met\": %s}", v < 0 ? "null" : v <= UMAP_TARGET ? "true" : "false");
	if (is_write(rw->job.sc)) {
		fputs(", \"flush_ratio_umap_lazymap_direct\": ", f);
		if (side_ok(&rw->l) && side_ok(&rw->p))
			json_num(f, median_sync(&rw->l) / median_sync(&rw->p));
		else
			fputs("null", f);
	}
}

/* The umap group's configuration: the layer's environment, and what both lazymaps got. */
static void json_umap(FILE *f)
{
	fprintf(f, ",\n \"umap\": {\"page_fillers\": %u, \"bufsize_pages\": %llu, "
		"\"read_ahead\": %llu, \"handler_threads\": %u, \"resident_limit_bytes\": %zu, "
		"\"readahead_max_bytes\": %zu, \"lazymap_direct\": ", um.fillers,
		(unsigned long long)um.buf_pages, (unsigned long long)um.read_ahead, um.fillers,
		um.budget, um.readahead_max);
	if (um.why[0]) {
		fputs("{\"status\": \"unavailable\", \"reason\": ", f);
		json_str(f, um.why);
		fputs("}", f);
	} else {
		fputs("{\"status\": \"ok\"}", f);
	}
	fputs(", \"note\": \"umap: the layer's one lazymap of the process, opened at its first"
	      " call, shared by every umap run (a fresh region per run); lazymap_direct: one lazymap"
	      " of the bench for the group, with the same options, a fresh region per run\"}", f);
}

/* The daemon group's faultd: which, and whether it served. */
static void json_faultd(FILE *f)
{
	fputs(",\n \"faultd\": {\"status\": ", f);
	json_str(f, fdm.ok ? "ok" : "unavailable");
	fputs(", \"reason\": ", f);
	if (fdm.ok)
		fputs("null", f);
	else
		json_str(f, fdm.why);
	fprintf(f, ", \"started_here\": %s, \"binary\": ", fdm.external ? "false" : "true");
	if (fdm.bin[0])
		json_str(f, fdm.bin);
	else
		fputs("null", f);
	fputs(", \"socket\": ", f);
	json_str(f, fdm.socket);
	fputs(", \"threads\": ", f);
	if (!fdm.external)
		fprintf(f, "%u", fdm.threads);
	else
		fputs("null", f);
	fputs(", \"faultctl\": ", f);
	if (fdm.ctl[0])
		json_str(f, fdm.ctl);
	else
		fputs("null", f);
	fputs("}", f);
}

static int write_json(const char *path, const struct row *rows, size_t nrows, const char *head,
		      const struct machine *m, const char *handlers)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -errno;
	fprintf(f, "{%s", head);
	json_machine(f, m);
	fputs(",\n \"cdf_quantiles\": [", f);
	for (int i = 0; i < NQ; i++)
		fprintf(f, "%s%g", i ? ", " : "", quantile(i));
	fprintf(f, "],\n \"ratio\": \"lazymap/kernel time per page (daemon group: lazymap served by"
		" faultd/kernel; their in_process side is lazymap in-process, their target the ratio"
		" it names; nbd group: lazymap_map_uri/the kernel's mmap through nbdfuse, their"
		" lazymap_file side lazymap of the file itself, their targets throughput ratios, at"
		" least min; umap group: umap()/the kernel's mmap, their lazymap_direct side lazymap_map"
		" on a lazymap with the layer's options, their target umap/lazymap_direct);"
		" < 1 = lazymap faster\",\n \"results\": [");
	for (size_t i = 0; i < nrows; i++) {
		const struct row *rw = &rows[i];
		const struct job *j = &rw->job;

		fputs(i ? ",\n  {" : "\n  {", f);
		fputs("\"scenario\": ", f);
		json_str(f, j->sc->name);
		fputs(", \"row\": ", f);
		json_str(f, j->name);
		fputs(", \"group\": ", f);
		json_str(f, group_names[j->sc->group]);
		fputs(", \"variant\": ", f);
		json_str(f, !is_file(j->sc) ? "anon" : j->direct ? "direct" :
			    is_write(j->sc) ? "shared" : j->sc->group == G_NBD ? "nbd" : "buffered");
		fprintf(f, ", \"threads\": %u, \"handler_threads\": ", j->threads);
		if (j->handlers)
			fprintf(f, "\"%u\"", j->handlers);
		else
			json_str(f, handlers);
		fputs(", \"twin\": \"kernel\"", f);
		if (j->sc->group == G_DAEMON)
			fputs(", \"lazymap_served_by\": \"faultd\"", f);
		if (j->sc->group == G_NBD) {
			fputs(", \"kernel_via\": \"nbdfuse\", \"lazymap_uri\": ", f);
			json_str(f, nbd.uri);
		}
		fprintf(f, ",\n   \"pages_mapped\": %zu, \"pages_touched\": %zu, \"kernel_twin\": ",
			j->npages, j->touched);
		json_str(f, j->sc->kernel_twin);
		fputs(",\n   \"kernel\": ", f);
		json_side(f, rw, T_KERNEL);
		fputs(",\n   \"lazymap\": ", f);
		json_side(f, rw, T_LAZYMAP);
		if (j->sc->group == G_DAEMON) {
			fputs(",\n   \"in_process\": ", f);
			json_side(f, rw, T_INPROC);
		}
		if (j->sc->group == G_NBD) {
			fputs(",\n   \"lazymap_file\": ", f);
			json_side(f, rw, T_LZFILE);
		}
		if (j->sc->group == G_UMAP) {
			fputs(",\n   \"lazymap_direct\": ", f);
			json_side(f, rw, T_DIRECT);
		}
		fputs(",\n   \"ratio\": ", f);
		if (side_ok(&rw->k) && side_ok(&rw->l))
			json_num(f, median(&rw->l).ns_per_page / median(&rw->k).ns_per_page);
		else
			fputs("null", f);
		if (j->sc->group == G_DAEMON) {
			const char *what;
			double v = daemon_ratio(rw, &what);

			fputs(", \"ratio_faultd_in_process\": ", f);
			if (side_ok(&rw->l) && side_ok(&rw->p))
				json_num(f, median(&rw->l).ns_per_page / median(&rw->p).ns_per_page);
			else
				fputs("null", f);
			fputs(", \"ratio_in_process_kernel\": ", f);
			if (side_ok(&rw->p) && side_ok(&rw->k))
				json_num(f, median(&rw->p).ns_per_page / median(&rw->k).ns_per_page);
			else
				fputs("null", f);
			fputs(",\n   \"target\": {\"ratio\": ", f);
			json_str(f, what);
			fprintf(f, ", \"max\": %g, \"value\": ", DAEMON_TARGET);
			json_opt(f, v);
			fprintf(f, ", \"met\": %s}", v < 0 ? "null" : v <= DAEMON_TARGET ? "true" : "false");
		}
		if (j->sc->group == G_NBD)
			json_nbd_row(f, rw);
		if (j->sc->group == G_UMAP)
			json_umap_row(f, rw);
		if (j->sc->access == SPREAD)
			json_sparse(f, rw);
		if (is_write(j->sc)) {
			fprintf(f, ", \"dirty_bytes\": %zu, \"sync_ratio\": ", j->touched * ps);
			if (side_ok(&rw->k) && side_ok(&rw->l))
				json_num(f, median_sync(&rw->l) / median_sync(&rw->k));
			else
				fputs("null", f);
		}
		fputs(", \"data_ok\": ", f);
		fputs(rw->bad[0] ? "false" : "true", f);
		fputs(", \"data_error\": ", f);
		if (rw->bad[0])
			json_str(f, rw->bad);
		else
			fputs("null", f);
		fputs("}", f);
	}
	fputs("\n ]", f);
	if (bres.zipf_ran || bres.anon_ran)
		json_budget(f);
	if (fdm.socket)
		json_faultd(f);
	if (nbd.ok || nbd.why[0])
		json_nbd(f);
	if (um.fillers)
		json_umap(f);
	fputs("\n}\n", f);
	if (fclose(f))
		return -errno;
	return 0;
}

/*
 * The budget group's sizes (--quick: seconds) and, for budget-zipf, its
 * file in the run's directory. Accesses, in pages of budget B: Zipf warms
 * up with 4 B (fewer leave the cache short of full: Zipf repeats itself;
 * 4 B touch about 1.3 B distinct pages), then 2 B are measured; uniform,
 * where every policy hits about B/file of the time, warms up with B (0.94 B
 * distinct pages: past the evictor's 15/16) and measures B/4. Nearly every
 * uniform access and a quarter of the Zipf ones wait for the disk: the
 * group costs about 300 k disk reads at full size.
 */
static void budget_setup(const char *dir, bool quick, bool zipf)
{
	struct budget_cfg *c = &bres.cfg;
	struct statfs sf;
	size_t bp;
	int fd, err;

	c->file_size = (size_t)(quick ? 32 : 1024) << 20;
	c->budget = (size_t)(quick ? 4 : 128) << 20; /* 4 MiB: the least the library takes */
	c->anon_size = (size_t)(quick ? 16 : 1024) << 20;
	bp = c->budget / ps;
	c->warm[0] = 4 * bp;
	c->n[0] = 2 * bp;
	c->warm[1] = bp;
	c->n[1] = bp / 4;
	c->dir = dir;
	twin_deadline_ns = (uint64_t)(quick ? 3 : 90) * 1000000000u;
	snprintf(c->fs, sizeof(c->fs), "%s", statfs(dir, &sf) ? "?" : fs_name((long)sf.f_type));
	if (!zipf)
		return;
	snprintf(running, sizeof(running), "generating the budget file in %s", dir);
	err = tmp_dir[0] ? 0 : make_dir(dir);
	if (!err) {
		snprintf(budget_path, sizeof(budget_path), "%s/budget", tmp_dir);
		err = make_data_file(budget_path, c->file_size, &fd);
	}
	if (err) {
		fprintf(stderr, "cannot make the budget file in %s: %s\n", dir, strerror(-err));
		exit(1);
	}
	close(fd);
	budget_fd = open(budget_path, O_RDONLY | O_CLOEXEC);
	if (budget_fd < 0) {
		perror(budget_path);
		exit(1);
	}
}

/* ---------------------------------------------------------------- main */

/*
 * The files the selected rows read: the bench file (main_size bytes, 0: not
 * needed) and file-shared-write's two copies (shared_sz, 0: not needed), in
 * a new directory under dir. Returns the file system's name; exits if it
 * cannot make them.
 */
static const char *make_files(const char *dir, size_t main_size, size_t shared_sz, char *desc,
			      size_t desclen)
{
	struct statfs sf;
	int ret;

	snprintf(running, sizeof(running), "generating the test files in %s", dir);
	ret = make_dir(dir);
	if (!ret && main_size) {
		file_size = main_size;
		ret = make_file(main_size);
	}
	if (!ret && shared_sz)
		ret = make_shared_files(shared_sz);
	if (ret) {
		fprintf(stderr, "cannot make the test files in %s: %s\n", dir, strerror(-ret));
		exit(1);
	}
	mc_vec = malloc((main_size > shared_sz ? main_size : shared_sz) / ps + 1);
	fstatfs(main_size ? file_fd : shared_fd[0], &sf);
	snprintf(desc, desclen, "%s (%s)", main_size ? tmp_path : tmp_dir, fs_name((long)sf.f_type));
	if (sf.f_type == 0x01021994)
		fprintf(stderr, "warning: %s is tmpfs: the page cache is the file, cold runs cannot drop it\n",
			dir);
	return fs_name((long)sf.f_type);
}

/*
 * The umap group: the layer's environment set before its first call (it
 * reads it once, then opens its one lazymap): as many fillers (handler
 * threads) as --handlers gives the bench's own lazymap, a buffer (the
 * resident budget) holding the files the group maps with room to spare, so
 * that nothing is evicted, read-ahead from --readahead, the system's page
 * size. Then the direct twin's lazymap, opened with what the layer gave its
 * own. NULL (um.why says why) if that cannot be opened.
 */
static struct lazymap *umap_setup(const struct lazymap_opts *base, size_t pages)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	char v[32];
	struct lazymap *l;
	int ret;

	um.fillers = base->handler_threads == LAZYMAP_HANDLERS_PER_CPU ? (unsigned)(ncpu > 0 ? ncpu : 1)
		     : base->handler_threads ? base->handler_threads : 1;
	snprintf(v, sizeof(v), "%u", um.fillers);
	setenv("UMAP_PAGE_FILLERS", v, 1);
	/* budget never below what lazymap takes (4 MiB), and 64 MiB over the files */
	um.buf_pages = pages + (64u << 20) / ps;
	snprintf(v, sizeof(v), "%llu", (unsigned long long)um.buf_pages);
	setenv("UMAP_BUFSIZE", v, 1);
	unsetenv("UMAP_PAGESIZE");
	if (base->readahead_max > ps) {
		um.read_ahead = base->readahead_max / ps - 1; /* the window: a page and this many */
		snprintf(v, sizeof(v), "%llu", (unsigned long long)um.read_ahead);
		setenv("UMAP_READ_AHEAD", v, 1);
	} else {
		unsetenv("UMAP_READ_AHEAD");
	}
	/* the layer's first call: it reads the environment and opens its lazymap */
	um.fillers = (unsigned)umapcfg_get_num_fillers();
	um.buf_pages = umapcfg_get_max_pages_in_buffer();
	um.read_ahead = umapcfg_get_read_ahead();

	/* the same options, as umap.c derives them */
	uint64_t upage = umapcfg_get_umap_page_size(), window = upage * (1 + um.read_ahead);
	struct lazymap_opts o = { 0 };

	um.budget = (size_t)(um.buf_pages * upage);
	um.budget = um.budget < (4u << 20) ? 4u << 20 : um.budget;
	um.readahead_max = window > (64u << 20) ? 64u << 20 : window > (512u << 10) ? window : 0;
	o.handler_threads = um.fillers;
	o.readahead_max = um.readahead_max;
	o.resident_limit = um.budget;
	ret = lazymap_open(&l, &o);
	if (ret) {
		snprintf(um.why, sizeof(um.why), "lazymap_open(%u handlers, resident_limit %zu MiB): %s",
			 um.fillers, um.budget >> 20, strerror(-ret));
		return NULL;
	}
	return l;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--size MiB] [--repeat N] [--handlers N|percpu] [--spin US] [--readahead KiB]\n"
		"          [--install copy|move] [--threads LIST] [--file-size MiB] [--dir DIR]\n"
		"          [--scenario PATTERN[,PATTERN...]] [--scenario-set SET]\n"
		"          [--daemon SOCKET | --faultd PATH] [--advise] [--timeout S] [--json FILE]\n"
		"          [--quick] [--list]\n"
		"  --size        anonymous scenarios: MiB per run (64)\n"
		"  --file-size   file scenarios: size of the generated file, MiB (1024), and of\n"
		"                file-shared-write's two copies (256)\n"
		"  --dir         where the file's temporary directory goes (/var/tmp; not tmpfs,\n"
		"                or LAZYMAP_DIRECT is unavailable)\n"
		"  --threads     faulting threads, each on its own slice: of the file and daemon\n"
		"                scenarios (1,2; file-rand-dense-*: 2), of nbd-rand-cold (2) and\n"
		"                of the threads matrix (1,2,4)\n"
		"  --scenario    rows whose name (file-seq-cold, file-seq-cold+direct, threads-h2,\n"
		"                ...) or scenario matches a pattern (fnmatch: 'file-*'); --list\n"
		"  --scenario-set  anon, threads, file, daemon, nbd, umap, budget or all (the default);\n"
		"                the budget group's rows, budget-zipf and budget-anon-swap, are\n"
		"                not in --list (their twins are three: see the JSON's \"budget\");\n"
		"                nbd: the file (--file-size) exported by nbdkit, nbdfuse for the\n"
		"                kernel's twin (both from $PATH; rows unavailable without them);\n"
		"                umap: umap() of liblazymap-umap against lazymap_map (sets\n"
		"                UMAP_PAGE_FILLERS from --handlers, UMAP_BUFSIZE to hold the files)\n"
		"  --daemon      the socket of a running faultd to serve the daemon scenarios;\n"
		"                default: the bench starts its own on a socket in a temporary\n"
		"                directory (as many handler threads as --handlers) and stops it\n"
		"  --faultd      the faultd binary to start (default: bench/../daemon/faultd of\n"
		"                the build tree, else faultd beside the bench, else in $PATH)\n"
		"  --advise      madvise / lazymap_advise both twins of file scenarios with their\n"
		"                access pattern (SEQUENTIAL, RANDOM); default: no advice\n"
		"  --timeout     seconds one run may take before we call it a hang (600)\n"
		"  --quick       seconds-long smoke run of every scenario (4 MiB, 1 run; budget:\n"
		"                a 32 MiB file, a 16 MiB region, under a 4 MiB budget)\n", argv0);
	exit(2);
}

static int parse_threads(const char *s, unsigned *t)
{
	int n = 0;

	while (*s) {
		char *end;
		unsigned long v = strtoul(s, &end, 10);

		if (end == s || !v || v > MAX_THREADS || n == MAX_THREAD_SETS)
			return -1;
		t[n++] = (unsigned)v;
		s = *end == ',' ? end + 1 : end;
		if (*end && *end != ',')
			return -1;
	}
	return n ? n : -1;
}

static bool selected(const char *patterns, const char *row, const char *scenario)
{
	char buf[512], *save, *pat;

	if (!patterns)
		return true;
	snprintf(buf, sizeof(buf), "%s", patterns);
	for (pat = strtok_r(buf, ",", &save); pat; pat = strtok_r(NULL, ",", &save))
		if (!fnmatch(pat, row, 0) || !fnmatch(pat, scenario, 0))
			return true;
	return false;
}

/* Rows per scenario: file ones through the page cache and direct; threads-h1, -h2. */
static int variants(const struct scenario *sc)
{
	if (is_write(sc))
		return 1;
	return sc->group == G_FILE || sc->group == G_THREADS ? 2 : 1;
}

static void row_name(char *buf, size_t len, const struct scenario *sc, int variant)
{
	if (sc->group == G_THREADS)
		snprintf(buf, len, "%s-h%d", sc->name, variant + 1);
	else
		snprintf(buf, len, "%s%s", sc->name, variant ? "+direct" : "");
}

/* Open descriptors now, to see whether file mappings leak them. */
static int count_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 4096; fd++)
		n += fcntl(fd, F_GETFD) != -1;
	return n;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "repeat", required_argument, NULL, 'r' },
		{ "handlers", required_argument, NULL, 'H' },
		{ "spin", required_argument, NULL, 'S' },
		{ "readahead", required_argument, NULL, 'R' },
		{ "install", required_argument, NULL, 'I' },
		{ "scenario", required_argument, NULL, 'c' },
		{ "scenario-set", required_argument, NULL, 'C' },
		{ "threads", required_argument, NULL, 't' },
		{ "file-size", required_argument, NULL, 'f' },
		{ "dir", required_argument, NULL, 'd' },
		{ "daemon", required_argument, NULL, 'D' },
		{ "faultd", required_argument, NULL, 'F' },
		{ "json", required_argument, NULL, 'j' },
		{ "advise", no_argument, NULL, 'a' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "quick", no_argument, NULL, 'q' },
		{ "list", no_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct lazymap_opts opts = { 0 };
	size_t size_mib = 64, file_mib = 1024, shared_mib = 256;
	int repeat = 5, c, ret, status = 0, nthr = 2, nmthr = 3;
	unsigned thr[MAX_THREAD_SETS] = { 1, 2 }, mthr[MAX_THREAD_SETS] = { 1, 2, 4 };
	bool threads_given = false, quick = false;
	const char *only = NULL, *dir = "/var/tmp", *json = NULL, *daemon = NULL, *faultd_bin = NULL;
	char hbuf[16], head[1024], fsdesc[PATH_MAX + 64] = "";
	const char *fs = NULL;
	struct lazymap *lm;

	while ((c = getopt_long(argc, argv, "s:r:H:S:R:I:c:C:t:f:d:D:F:j:aT:qlh", longopts, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoul(optarg, NULL, 0); break;
		case 'r': repeat = atoi(optarg); break;
		case 'H':
			opts.handler_threads = strcmp(optarg, "percpu") ? (unsigned)atoi(optarg)
								       : LAZYMAP_HANDLERS_PER_CPU;
			break;
		case 'S': opts.spin_us = (unsigned)atoi(optarg); break;
		case 'R': opts.readahead_max = strtoul(optarg, NULL, 0) << 10; break;
		case 'I': opts.install = strcmp(optarg, "move") ? LAZYMAP_INSTALL_COPY : LAZYMAP_INSTALL_MOVE; break;
		case 'c': only = optarg; break;
		case 'C':
			if (!strcmp(optarg, "all"))
				only = NULL;
			else if (!strcmp(optarg, "anon"))
				only = "anon-*";
			else if (!strcmp(optarg, "file"))
				only = "file-*";
			else if (!strcmp(optarg, "threads"))
				only = "threads";
			else if (!strcmp(optarg, "daemon"))
				only = "daemon-*";
			else if (!strcmp(optarg, "nbd"))
				only = "nbd-*";
			else if (!strcmp(optarg, "umap"))
				only = "umap-*";
			else if (!strcmp(optarg, "budget"))
				only = "budget-*";
			else
				usage(argv[0]);
			break;
		case 't':
			nthr = nmthr = parse_threads(optarg, thr);
			if (nthr < 0)
				usage(argv[0]);
			memcpy(mthr, thr, sizeof(thr));
			threads_given = true;
			break;
		case 'f': file_mib = shared_mib = strtoul(optarg, NULL, 0); break;
		case 'd': dir = optarg; break;
		case 'D': daemon = optarg; break;
		case 'F': faultd_bin = optarg; break;
		case 'j': json = optarg; break;
		case 'a': use_advise = true; break;
		case 'T': run_timeout = (unsigned)atoi(optarg); break;
		case 'q':
			size_mib = file_mib = shared_mib = 4;
			repeat = 1;
			run_timeout = 60;
			quick = true;
			break;
		case 'l':
			for (size_t i = 0; i < NSCENARIOS; i++)
				for (int v = 0; v < variants(&scenarios[i]); v++) {
					char n[64];

					row_name(n, sizeof(n), &scenarios[i], v);
					printf("%-24s %s\n", n, scenarios[i].kernel_twin);
				}
			return 0;
		default: usage(argv[0]);
		}
	}
	if (daemon && faultd_bin) {
		fprintf(stderr, "--daemon uses a running faultd, --faultd starts one: not both\n");
		usage(argv[0]);
	}
	if (optind != argc || !size_mib || !file_mib || repeat < 1 || repeat > 101 ||
	    (size_mib << 20) / 4096 > UINT32_MAX || (file_mib << 20) / 4096 > UINT32_MAX)
		usage(argv[0]);
	ps = (size_t)sysconf(_SC_PAGESIZE);
	catch_signals();

	/*
	 * The rows: anonymous scenarios once; file and daemon ones x threads, file
	 * ones through the page cache and direct; the threads matrix.
	 */
	struct row *rows = calloc(NSCENARIOS * 2 * MAX_THREAD_SETS, sizeof(*rows));
	size_t nrows = 0, anon_pages = (size_mib << 20) / ps, file_pages = (file_mib << 20) / ps;
	size_t shared_pages = (shared_mib << 20) / ps;
	bool need_main = false, need_shared = false, need_daemon = false, need_nbd = false;
	bool need_umap = false;

	for (size_t s = 0; s < NSCENARIOS; s++) {
		const struct scenario *sc = &scenarios[s];
		bool file = is_file(sc);
		unsigned fixed[1] = { sc->threads > 0 ? (unsigned)sc->threads : 1 };
		const unsigned *tl = sc->group == G_THREADS ? mthr : thr;
		int nt = sc->group == G_THREADS ? nmthr : nthr;

		if (sc->threads == ONE_THREAD || (sc->threads > 0 && !(file && threads_given))) {
			tl = fixed;
			nt = 1;
		}

		for (int v = 0; v < variants(sc); v++)
			for (int t = 0; t < nt; t++) {
				struct job *j = &rows[nrows].job;

				j->sc = sc;
				j->direct = sc->group == G_FILE && v;
				j->handlers = sc->group == G_THREADS ? (unsigned)v + 1 : 0;
				j->threads = tl[t];
				row_name(j->name, sizeof(j->name), sc, v);
				if (!selected(only, j->name, sc->name))
					continue;
				j->npages = is_write(sc) ? shared_pages : file ? file_pages : anon_pages;
				j->touched = sc->one_in ? (j->npages + sc->one_in - 1) / sc->one_in
							: j->npages;
				need_main |= file && !is_write(sc);
				need_shared |= is_write(sc);
				need_umap |= sc->group == G_UMAP;
				need_daemon |= sc->group == G_DAEMON;
				need_nbd |= sc->group == G_NBD;
				nrows++;
			}
	}
	bool budget_z = selected(only, "budget-zipf", "budget-zipf");
	bool budget_a = selected(only, "budget-anon-swap", "budget-anon-swap");

	if (!nrows && !budget_z && !budget_a) {
		fprintf(stderr, "no scenario matches %s (--list)\n", only);
		return 2;
	}

	ret = lazymap_open(&lm, &opts);
	if (ret) {
		fprintf(stderr, "lazymap_open: %s\n", strerror(-ret));
		return 1;
	}
	int fds_before = count_fds();

	if (need_main || need_shared) {
		fs = make_files(dir, need_main ? file_mib << 20 : 0, need_shared ? shared_mib << 20 : 0,
				fsdesc, sizeof(fsdesc));
		fds_before = count_fds();
	}
	if (budget_z || budget_a) {
		budget_setup(dir, quick, budget_z);
		fds_before = count_fds();
	}
	if (!fs && budget_z)
		fs = bres.cfg.fs;
	if (need_daemon) {
		/* As many handler threads as in process: PER_CPU is faultd's 0 */
		fdm.threads = opts.handler_threads == LAZYMAP_HANDLERS_PER_CPU ? 0
			      : opts.handler_threads ? opts.handler_threads : 1;
		snprintf(running, sizeof(running), "starting faultd");
		faultd_setup(daemon, faultd_bin, &opts);
		fds_before = count_fds();
	}
	if (need_nbd) {
		snprintf(running, sizeof(running), "looking for nbdkit and nbdfuse");
		nbd_setup();
		fds_before = count_fds();
	}
	struct lazymap *ulm = NULL; /* the umap group's direct twin */

	if (need_umap) {
		snprintf(running, sizeof(running), "opening the umap layer's lazymap");
		ulm = umap_setup(&opts, (need_main ? file_pages : 0) + (need_shared ? shared_pages : 0));
		fds_before = count_fds();
	}

	size_t maxpages = anon_pages > file_pages ? anon_pages : file_pages;

	maxpages = maxpages > shared_pages ? maxpages : shared_pages;
	uint32_t *order = malloc(maxpages * sizeof(*order)), *lat = malloc(maxpages * sizeof(*lat));
	struct utsname un;
	time_t tnow = time(NULL);
	char date[64];

	uname(&un);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %z", localtime(&tnow));
	probe_machine(&machine, need_main ? tmp_path : need_shared ? shared_path[0] :
			  budget_z ? budget_path : NULL,
		      need_main ? file_size : need_shared ? shared_size : bres.cfg.file_size, fs);
	printf("lazymap-bench, %s, Linux %s %s, %ld CPUs\n%s\n", date, un.release, un.machine,
	       sysconf(_SC_NPROCESSORS_ONLN), machine.line);
	printf("%d runs per twin (median), handlers %s%s%s, kernel twin in the same run%s\n"
	       "ratio = lazymap/kernel time per page: < 1 = lazymap faster; latencies per touch; "
	       "flt/pg: faults per page touched\n(kernel: the thread's minor and major faults; "
	       "lazymap: fault messages served)\n", repeat, handlers_name(&opts, hbuf, sizeof(hbuf)),
	       opts.install == LAZYMAP_INSTALL_MOVE ? ", install move" : "",
	       opts.readahead_max ? ", readahead set" : "", use_advise ? ", advise on" : "");
	snprintf(head, sizeof(head),
		 "\n \"tool\": \"lazymap-bench\", \"date\": \"%s\", \"kernel\": \"%s\", \"machine\": \"%s\","
		 " \"cpus\": %ld, \"page_size\": %zu, \"repeat\": %d,\n \"handlers\": \"%s\", \"spin_us\": %u,"
		 " \"readahead_kib\": %zu, \"install\": \"%s\", \"advise\": %s, \"anon_size_bytes\": %zu,"
		 " \"file_size_bytes\": %zu, \"shared_file_size_bytes\": %zu, \"random_percent\": %d",
		 date, un.release, un.machine, sysconf(_SC_NPROCESSORS_ONLN), ps, repeat,
		 handlers_name(&opts, hbuf, sizeof(hbuf)), opts.spin_us, opts.readahead_max >> 10,
		 opts.install == LAZYMAP_INSTALL_MOVE ? "move" : "copy", use_advise ? "true" : "false",
		 anon_pages * ps, file_size, shared_size, RAND_PERCENT);

	bool anon_head = false, threads_head = false, file_head = false, daemon_head = false;
	bool nbd_head = false, umap_head = false, any_file = false;
	int umap_goals = 0, umap_goals_met = 0;
	double worst_cold = 0, worst_hot = 1, worst_hot_after = 1;
	int targets = 0, targets_met = 0, nbd_goals = 0, nbd_goals_met = 0;

	for (size_t i = 0; i < nrows; i++) {
		struct row *rw = &rows[i];
		struct job *j = &rw->job;
		bool file = is_file(j->sc);

		/* The same pages in the same order for both twins; seeds as before for anon. */
		make_order(order, j->npages, j->sc,
			   0x9e3779b97f4a7c15ull + (uint64_t)(j->sc - scenarios));
		j->order = order;
		j->want_sum = 0;
		if (file && j->sc->kind != FILE_WRITE)
			for (size_t k = 0; k < j->touched; k++)
				j->want_sum += data_word((uint64_t)order[k] * ps + touch_off(order[k]));
		if (j->sc->group == G_ANON && !anon_head) {
			print_anon_header(size_mib);
			anon_head = true;
		}
		if (j->sc->group == G_THREADS && !threads_head) {
			print_threads_header(size_mib);
			threads_head = true;
		}
		if (j->sc->group == G_FILE && !file_head) {
			print_file_header(fsdesc, need_shared);
			file_head = true;
		}
		if (j->sc->group == G_DAEMON && !daemon_head) {
			print_daemon_header(size_mib, handlers_name(&opts, hbuf, sizeof(hbuf)));
			daemon_head = true;
		}
		if (j->sc->group == G_NBD && !nbd_head) {
			if (daemon_head && targets)
				printf("daemon targets met: %d of %d\n", targets_met, targets);
			print_nbd_header(handlers_name(&opts, hbuf, sizeof(hbuf)));
			nbd_head = true;
		}
		if (j->sc->group == G_UMAP && !umap_head) {
			print_umap_header();
			umap_head = true;
		}
		if (j->sc->group == G_THREADS) {
			/* A handle of its own, with this row's number of handler threads. */
			struct lazymap_opts o = opts;
			struct lazymap *lh;

			o.handler_threads = j->handlers;
			ret = lazymap_open(&lh, &o);
			if (ret) {
				rw->l.status = "error";
				snprintf(rw->l.why, sizeof(rw->l.why), "lazymap_open(%u handlers): %s",
					 j->handlers, strerror(-ret));
				lh = NULL;
			}
			run_row(lh, &opts, rw, repeat, lat);
			if (lh)
				lazymap_close(lh);
		} else {
			if (j->sc->group == G_DAEMON && !fdm.ok) {
				/* Without faultd the row compares nothing: none of it runs. */
				rw->l.status = rw->k.status = rw->p.status = "unavailable";
				snprintf(rw->l.why, sizeof(rw->l.why), "%s", fdm.why);
				snprintf(rw->k.why, sizeof(rw->k.why), "not run: faultd is unavailable");
				snprintf(rw->p.why, sizeof(rw->p.why), "not run: faultd is unavailable");
			}
#ifdef __SANITIZE_THREAD__
			/* client 1 is a child of this multi-threaded process that starts
			 * threads of its own: ThreadSanitizer cannot follow it */
			if (!strcmp(j->sc->name, "daemon-shared")) {
				rw->l.status = rw->k.status = rw->p.status = "unavailable";
				snprintf(rw->l.why, sizeof(rw->l.why), "not run under ThreadSanitizer: "
					 "client 1, a child of a multi-threaded process, starts threads");
				snprintf(rw->k.why, sizeof(rw->k.why), "%s", rw->l.why);
				snprintf(rw->p.why, sizeof(rw->p.why), "%s", rw->l.why);
			}
#endif
			if (j->sc->group == G_NBD)
				nbd_row_start(rw);
			if (j->sc->group == G_UMAP && !ulm) {
				rw->p.status = "unavailable";
				snprintf(rw->p.why, sizeof(rw->p.why), "%s", um.why);
			}
			run_row(j->sc->group == G_UMAP ? ulm : lm, &opts, rw, repeat, lat);
			if (j->sc->group == G_NBD)
				nbd_row_stop(rw);
		}
		print_row(rw);
		fflush(stdout);
		if (rw->bad[0] || !strcmp(rw->l.status, "error") ||
		    (rw->p.status && !strcmp(rw->p.status, "error")) ||
		    (file && rw->k.why[0] && strcmp(rw->k.status, "unavailable")))
			status = 1;
		if (j->sc->group == G_DAEMON) {
			const char *what;
			double v = daemon_ratio(rw, &what);

			targets += v >= 0;
			targets_met += v >= 0 && v <= DAEMON_TARGET;
		}
		if (j->sc->group == G_UMAP) {
			double v = umap_ratio(rw);

			umap_goals += v >= 0;
			umap_goals_met += v >= 0 && v <= UMAP_TARGET;
		}
		if (j->sc->group == G_NBD) {
			struct nbd_target t[2];
			int n = nbd_targets(j, t);

			for (int k = 0; k < n; k++) {
				double v = nbd_ratio(rw, t[k].base);

				nbd_goals += v >= 0;
				nbd_goals_met += v >= 0 && v >= t[k].min;
			}
		}
		if (file && !strcmp(rw->k.status, "ok")) {
			any_file = true;
			for (int t = 0; t < ntwins(j); t++) {
				const struct side *s = twin_cside(rw, (enum twin)t);

				if (strcmp(s->status, "ok") || !s->n)
					continue;
				if (twin_cache(j, (enum twin)t) == COLD)
					worst_cold = dmax(worst_cold, cache_worst(s, COLD, false));
				else {
					worst_hot = dmin(worst_hot, cache_worst(s, HOT, false));
					worst_hot_after = dmin(worst_hot_after, cache_worst(s, HOT, true));
				}
			}
		}
	}
	if (daemon_head && targets && !nbd_head)
		printf("daemon targets met: %d of %d\n", targets_met, targets);
	if (nbd_head && nbd_goals)
		printf("nbd targets met: %d of %d\n", nbd_goals_met, nbd_goals);
	if (umap_head && umap_goals)
		printf("umap targets met (umap / lazymap <= %.2fx): %d of %d\n", UMAP_TARGET,
		       umap_goals_met, umap_goals);

	/* What the handlers did for the file rows, and the nbd rows' lazymap twins, per run. */
	if (file_head || nbd_head) {
		bool any = false;

		for (size_t i = 0; i < nrows; i++) {
			enum group g = rows[i].job.sc->group;

			any |= (g == G_FILE || g == G_NBD) && side_ok(&rows[i].l);
			any |= g == G_NBD && side_ok(&rows[i].p);
		}
		if (any) {
			printf("\nlazymap counters per run: %-2s %3s %9s %9s %9s %9s %8s %9s %6s %9s %8s\n",
			       "", "thr", "faults", "filled", "readahd", "io reads", "short", "MiB read",
			       "io err", "wp faults", "MiB wr");
			for (size_t i = 0; i < nrows; i++) {
				const struct row *rw = &rows[i];
				bool nbdrow = rw->job.sc->group == G_NBD;

				if (rw->job.sc->group != G_FILE && !nbdrow)
					continue;
				/* nbd rows: lz-file, then lz-nbd */
				for (int t = nbdrow ? T_LZFILE : T_LAZYMAP; t >= T_LAZYMAP; t--) {
					const struct side *s = twin_cside(rw, (enum twin)t);
					const struct lazymap_stats *st = t == T_LZFILE ? &rw->pst : &rw->st;
					double n = s->n;
					char name[80];

					if (!side_ok(s))
						continue;
					snprintf(name, sizeof(name), "%s%s%s", rw->job.name, nbdrow ? " " : "",
						 nbdrow ? tw_name(&rw->job, (enum twin)t) : "");
					printf("%-28s %3u %9.0f %9.0f %9.0f %9.0f %8.0f %9.1f %6.0f %9.0f %8.1f\n",
					       name, rw->job.threads, st->faults / n, st->pages_filled / n,
					       st->readahead_pages / n, st->file_reads / n, st->short_reads / n,
					       st->bytes_read / n / 1048576.0, st->io_errors / n,
					       st->wp_faults / n, st->bytes_written / n / 1048576.0);
				}
			}
		}
	}
	if (any_file && worst_cold > 0)
		printf("! cache: up to %.2f%% of the file stayed cached (the kernel's, or faultd's) in "
		       "cold runs\n", worst_cold * 100);
	if (any_file && (worst_hot < 1 || worst_hot_after < 1))
		printf("! cache: hot runs found as little as %.2f%% cached before, %.2f%% after\n",
		       worst_hot * 100, worst_hot_after * 100);

	if (budget_z) {
		budget_zipf(&opts);
		print_budget_zipf();
		for (int pat = 0; pat < 2; pat++)
			for (int tw = 0; tw < 3; tw++)
				if (bres.z[pat][tw].bad || !strcmp(bres.z[pat][tw].status, "error"))
					status = 1;
		fflush(stdout);
	}
	if (budget_a) {
		budget_anon(&opts);
		print_budget_anon();
		for (int tw = 0; tw < 2; tw++)
			if (bres.a[tw].bad || !strcmp(bres.a[tw].status, "error"))
				status = 1;
		fflush(stdout);
	}

	struct lazymap_stats st;

	memset(&st, 0, sizeof(st));
	lazymap_stats(lm, &st);
	printf("handlers: %lu faults, %lu pages filled, %lu sleeps, %lu reads, %lu file reads, "
	       "%lu io errors, %lu in flight at most\n",
	       (unsigned long)st.faults, (unsigned long)st.pages_filled, (unsigned long)st.sleeps,
	       (unsigned long)st.reads, (unsigned long)st.file_reads, (unsigned long)st.io_errors,
	       (unsigned long)st.inflight_max);
	int fds_after = count_fds();

	if (fds_after != fds_before) {
		printf("! %d file descriptors open before the runs, %d after\n", fds_before, fds_after);
	}
	if (json) {
		ret = write_json(json, rows, nrows, head, &machine,
				 handlers_name(&opts, hbuf, sizeof(hbuf)));
		if (ret) {
			fprintf(stderr, "%s: %s\n", json, strerror(-ret));
			status = 1;
		}
	}
	lazymap_close(lm);
	if (ulm)
		lazymap_close(ulm);
	if (fdm.pid > 0) {
		int wst = faultd_stop();

		if (!WIFEXITED(wst) || WEXITSTATUS(wst)) {
			char how[64];

			describe_status(wst, how, sizeof(how));
			printf("! faultd ended with %s\n", how);
			status = 1;
		}
	}
	for (size_t i = 0; i < nrows; i++) {
		free(rows[i].k.runs);
		free(rows[i].l.runs);
		free(rows[i].p.runs);
	}
	free(rows);
	free(order);
	free(lat);
	free(mc_vec);
	if (file_fd >= 0)
		close(file_fd);
	if (budget_fd >= 0)
		close(budget_fd);
	for (int k = 0; k < 2; k++)
		if (shared_fd[k] >= 0)
			close(shared_fd[k]);
	remove_file();
	return status;
}
