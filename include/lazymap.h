/* SPDX-License-Identifier: MIT */
/*
 * liblazymap: demand-paged buffers served by user-space page-fault handlers
 * (userfaultfd). This header is the whole public surface of the library.
 *
 * Conventions (as in liburing): every function returns 0 (or a count) on
 * success and a negative errno on failure; errno is never used. Objects come
 * back through out-parameters. All functions are thread-safe. Any call on a
 * lazymap from its own fill callback that would wait for the handler running
 * it (all but lazymap_stats) returns -EDEADLK. The library never prints: it
 * reports through return values and, if asked, a logging hook (opts.log).
 *
 * The structs that grow (lazymap_opts, lazymap_stats) are passed with their
 * size, as the kernel's openat2(how, size) and clone3(args, size) do: the
 * lazymap_open() and lazymap_stats() macros pass sizeof of the struct this
 * header declares, so a program built against an older, smaller struct keeps
 * working with a newer library (fields it does not know are zero: defaults),
 * and one built against a newer header is told -E2BIG if it sets an option
 * the library does not have. Fields are only ever added at the end.
 *
 * The program may change its lazymap ranges itself, and the library follows
 * (userfaultfd's non-cooperative events), as the kernel's own mappings do:
 *   munmap (whole, head, tail, middle)  that part is gone;
 *   mremap  shrink; grow (in place or moving): the grown tail is served from
 *           the source like the rest, its offsets continuing past the old end
 *           (a fill callback is then called with offsets the region did not
 *           have; a file region reads on, SIGBUS past the end of the file);
 *           move: a page reads the same bytes at its new address, filled or
 *           not; MREMAP_DONTUNMAP: the range left behind is emptied and
 *           produces its pages again from the source, as after MADV_DONTNEED;
 *   madvise(MADV_DONTNEED, MADV_REMOVE)  the next touch produces the
 *           page again (zeros, the callback, the file's bytes); MADV_FREE:
 *           as on the kernel's own anonymous memory, the page keeps its
 *           bytes until the kernel reclaims it (a write first cancels the
 *           free), and once it has, the next touch produces it again
 *           (zeros, or the callback's bytes); MADV_FREE is EINVAL on a file
 *           region, as on any file mapping; MADV_REMOVE
 *           on a shared file region drops the page from the cache with its
 *           unsynced writes, and leaves the file alone, where the kernel's
 *           mapping would punch a hole in the file);
 *   mmap(MAP_FIXED) over a range  that part is the program's from then on;
 *   mprotect  not seen (userfaultfd raises no event for it): the kernel
 *           applies it, lazymap_dump keeps showing the protection that
 *           lazymap_map or lazymap_protect gave. Use lazymap_protect;
 *   fork    with CAP_SYS_PTRACE (needed for userfaultfd's fork events;
 *           lazymap_stats' fork_followed is 1): the child's copies of the
 *           regions are served by this process's handler threads until the
 *           child exits or execs: pages filled or written before the fork
 *           read as they were (copy-on-write), untouched ones are produced
 *           from the source (a fill callback runs in the parent), writes
 *           stay in the process that made them. Without it (fork_followed 0):
 *           a child gets no copy of fill or file regions (a touch there is
 *           SIGSEGV, never wrong data) and keeps zero regions, whose
 *           untouched pages read zeros.
 * The call that causes such an event (munmap, mremap, madvise, fork) returns
 * once a handler thread has read it: from a fill callback, it waits for the
 * handlers like any fault. A child's own children are served too. The
 * library learns at once that a child made by fork() has exited or exec'd;
 * of a child's children, a child made with a raw clone() system call (no
 * pthread_atfork handlers run) or one that closed the descriptors it
 * inherited, it learns it when another child comes or goes, at the latest
 * at lazymap_close: what it holds for them is let go then. A child alive at the parent's lazymap_close gets SIGBUS for
 * the pages of fill and file regions it had not touched (nobody can produce
 * them any more); its zero regions read zeros.
 */
#ifndef LAZYMAP_H
#define LAZYMAP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LAZYMAP_BUILDING) && defined(__GNUC__)
#define LAZYMAP_API __attribute__((visibility("default")))
#else
#define LAZYMAP_API
#endif

#define LAZYMAP_VERSION_MAJOR 0
#define LAZYMAP_VERSION_MINOR 1

/*
 * One userfaultfd, its handler threads and its mirror of the VMAs it serves.
 * Opaque. A handle is like a file descriptor: after lazymap_close() every call
 * on it returns -EBADF (unless the allocator has handed the same address to a
 * newer lazymap, exactly as a closed fd number can be reused). A lazymap
 * belongs to the process that opened it: in a child made by fork(), every
 * call on an inherited handle returns -EBADF and leaves the parent's lazymap
 * alone (lazymap_close too: the child's copies of the regions go at its
 * exit or exec, and the parent serves them until then). Its descriptors are its own too: a program that closes or dup2()s
 * over them (a loop closing every descriptor, say) breaks it; the library
 * notices a userfaultfd that is no longer one and breaks loudly (see
 * lazymap_close), but cannot always tell.
 */
struct lazymap;

/* Options; an all-zero struct gives the defaults. Fields are only ever added at the end. */
struct lazymap_opts {
	unsigned handler_threads; /* 0: 1; LAZYMAP_HANDLERS_PER_CPU: one pinned per CPU */
	unsigned queue_depth;     /* io_uring entries per handler thread; 0: default */
	size_t readahead_max;     /* most bytes one fault fills on a sequential stream (the
	                           * window grows to it); a file stream at full window
	                           * also reads the next two windows ahead; 0: 512 KiB */
	size_t resident_limit;    /* bytes of filled pages kept resident; 0: unlimited
	                           * (see "The resident budget" below) */
	const char *daemon;       /* NULL: in-process handlers; else faultd's socket path
	                           * (see "Served by faultd" below) */
	unsigned install;         /* LAZYMAP_INSTALL_*: how pool pages are installed; 0: COPY */
	unsigned spin_us;         /* how long an idle handler polls before it sleeps;
	                           * 0: default (50 us), LAZYMAP_SPIN_NONE: never spin */
	/* -- end of version 0 (LAZYMAP_OPTS_SIZE_VER0) -- */
	/*
	 * Where the library's messages go: a page poisoned because it could
	 * not be installed, a handler that had to stop. NULL: nowhere, unless
	 * the environment variable LAZYMAP_LOG is set to a non-empty value
	 * other than "0" (then stderr). level is a syslog level (LOG_ERR,
	 * LOG_WARNING...); msg has no trailing newline. Called on the library's
	 * threads, never while it holds a lock; it must not call into this
	 * lazymap but for lazymap_stats.
	 */
	void (*log)(void *log_arg, int level, const char *msg);
	void *log_arg;
	/*
	 * The directory of the swap file that written pages of anonymous and
	 * fill regions go to under resident_limit (an unlinked file of the
	 * library's own, O_TMPFILE). NULL or "": $TMPDIR, else /var/tmp; a
	 * relative path is from the current directory at lazymap_open. Only
	 * looked at when resident_limit is set; a directory that cannot take
	 * the file fails lazymap_open with its errno.
	 */
	const char *swap_path;
	/*
	 * Regions of remote exports (lazymap_map_uri), in milliseconds (0:
	 * 5000; at most 86400000, else -EINVAL; looked at every 100 ms, so
	 * times below that act as about 100):
	 * - a connection that breaks (the server killed, or stopping: its
	 *   ESHUTDOWN answers count as that, not as failed reads) is made
	 *   again, with backoff from 20 ms to 1 s and a last attempt at the
	 *   end, for this long after the break; faults wait meanwhile, and
	 *   what was sent is sent again;
	 * - a connection whose requests go unanswered this long (a server
	 *   stopped, a network cut) is taken as broken: such a server's pages
	 *   get SIGBUS after about twice this time;
	 * - past it the reads that waited are given up (remote_timeouts):
	 *   their pages get SIGBUS (io_errors) and keep giving it, as a page
	 *   whose read failed does, until dropped (MADV_DONTNEED, unmap);
	 *   a touch of another page tries the server once more;
	 * - a write-back (sync, unmap, close, eviction) fails with -EIO, its
	 *   pages dirty for the next, once this long has passed with neither
	 *   an answer nor a connection (about twice for a stopped server);
	 *   for as long again after that, a write-back tries the server once,
	 *   a quarter of this time at most (lazymap_close writes back more
	 *   than once: it does not wait the whole time each time);
	 * - lazymap_map_uri's own connection gives up after it (-ETIMEDOUT).
	 * lazymap_close does not wait for a server to read: the answers in
	 * flight get 200 ms, then the reads fail (their pages SIGBUS); only
	 * the write-back of dirty pages waits, bounded as above.
	 */
	unsigned remote_timeout_ms;
};
/* The size of the first struct lazymap_opts, the smallest lazymap_open_sized() takes. */
#define LAZYMAP_OPTS_SIZE_VER0 (offsetof(struct lazymap_opts, spin_us) + sizeof(unsigned))

#define LAZYMAP_INSTALL_COPY 0u /* UFFDIO_COPY from the handler's pool (default; fastest here) */
#define LAZYMAP_INSTALL_MOVE 1u /* UFFDIO_MOVE of the pool page itself (private anonymous only) */
#define LAZYMAP_SPIN_NONE    (~0u)
/*
 * handler_threads = LAZYMAP_HANDLERS_PER_CPU: one handler per CPU this process
 * may run on, each pinned to its CPU, so that a fault is usually served on
 * the CPU of the thread that raised it (no cross-CPU wake-up). The fastest
 * setting on small VMs; it costs one thread per CPU.
 */
#define LAZYMAP_HANDLERS_PER_CPU (~0u)

/*
 * The resident budget (resident_limit): the pages the library filled and
 * still holds count against it: pages in the page caches of files, and
 * pages it installed in anonymous and fill regions. Past 15/16 of it an
 * evictor thread drops pages until they are under 7/8:
 * - a clean cache page is dropped from the cache (the next touch reads it
 *   again); a dirty page of a shared region is written back first;
 * - a page of a writable anonymous, fill or private file region that the
 *   program wrote goes to the swap file (swap_path), and the next touch
 *   reads it back from there; a page never written is dropped, and made
 *   again (zeros, the fill callback, or the file). Pages of such regions are installed write-protected
 *   under a budget (one write-protect fault on their first write: wp_faults)
 *   so that the library knows which were written; a page read back from swap
 *   keeps its copy there until written, and leaves again with no write.
 * A fill that finds the budget full waits for eviction (evict_wait_ns), at
 * most 1 s, then goes on over it (budget_overruns); at once while eviction
 * can free nothing (every page dirty and its write-back failing, or the
 * swap full: they stay, nothing is lost, and go later if they can).
 * Which pages go: 2Q, from what the library sees of use (fills, and
 * refaults of pages evicted lately: refaults); pages of regions advised
 * LAZYMAP_ADV_SEQUENTIAL first, pages lazymap_prefetch brought in last.
 * Not counted nor evicted: the shared zero page (a page read and never
 * written costs nothing), pages of read-only anonymous and fill regions,
 * of LAZYMAP_SHARED|LAZYMAP_ANON regions, and the copies a private file
 * region mapped read-only and made writable later (lazymap_protect) made
 * of the pages it wrote.
 * Under a budget a private file region mapped writable holds copies of its
 * own (an anonymous mapping, as the program sees in /proc/self/maps): a
 * page is copied from the cache when the cache holds it, else read from
 * the file, on its first touch, and counts against the budget as the
 * program's own. It shows the writes of shared regions made before that
 * touch, not later ones (Linux shows those until the page is written;
 * POSIX leaves it open). MADV_REMOVE on it is -EINVAL (Linux: -EACCES).
 * A page evicted unwritten is made again
 * by the fill callback: if the callback fails then, the page is poisoned
 * (SIGBUS) as any failed fill. lazymap_prefetch waits for the budget as a
 * fault does, and does not read back pages that are in swap (their touch
 * does).
 * A forked child shares the parent's swapped pages (it reads them from the
 * parent's swap file); its own pages are not counted. Pages the parent had
 * in memory at the fork cannot be taken out (UFFDIO_MOVE moves only pages
 * no other process ever shared) until the parent writes them again, even
 * after the child is gone: until then they stay over the budget
 * (budget_overruns).
 * lazymap_stats' resident_bytes counts a page until it has left memory (a
 * page on its way out still counts: lazymap_stats waits for the eviction
 * batch in flight), and pages of anonymous, fill and copied file regions no
 * longer once their region is unmapped; resident_peak is the most it has
 * been, never below resident_bytes in the same snapshot. Pages the program
 * drops with MADV_DONTNEED or MADV_FREE count until the evictor next runs:
 * it looks at them first and finds them gone at no cost.
 */

/*
 * Served by faultd (opts.daemon): the library connects to faultd's socket
 * and hands it this lazymap's userfaultfd; faultd's handler threads serve
 * the faults, and file pages live in faultd's page cache, one per file for
 * every client: a page one process read is mapped by the next with no read
 * and no copy. Every call behaves as in process, with these differences:
 * - fill-callback regions (lazymap_map_fill) are served in process, as
 *   without opts.daemon: the callback runs here. Handler threads of this
 *   process start with the first such region; the calls on their ranges
 *   work as on any, but a range may not span both kinds (-EINVAL);
 *   lazymap_dump lists them with the others, by address;
 * - resident_limit and LAZYMAP_INSTALL_MOVE are -EINVAL at open (the
 *   budget is faultd's, from its config; pages cannot be moved between
 *   processes);
 * - a forked child gets no copy of file regions (as without fork events);
 * - lazymap_stats counts what faultd did for us in faults, bytes_read and
 *   io_errors (with what this process's own threads did), and only this
 *   process's own work in the rest (dirty_pages: faultd holds ours);
 * - faultd's per-client limits (its config's [limits]) bound what the
 *   library asks of it: past them a map is -ENOMEM (regions, mapped bytes)
 *   or -EMFILE (files), a split by lazymap_protect or lazymap_advise
 *   -ENOMEM. The program's own munmap and mremap cannot be refused, and
 *   may take a client past them. faultd keeps every file a client mapped,
 *   counted in its files, until the client disconnects.
 * If faultd goes (killed, stopped with SIGTERM, or it drops us), no thread
 * hangs and nothing is lost: the library starts its own handler threads on
 * the same userfaultfd, the pages already in faultd's caches stay mapped,
 * the faults faultd had read and not answered are raised again, and the
 * pages this process wrote that faultd had not written back are written by
 * the next sync (only those: a page another process wrote stays theirs).
 * From then on this process keeps its own copy of those files' pages: it no
 * longer sees other processes' writes to them before they reach the file
 * (as with read(2) and write(2)), nor they its writes before its sync. A
 * faultd started again serves new lazymaps, not this one. faultd writes
 * back what we wrote when it lets us go (SIGTERM) and at lazymap_close.
 * faultd never opens a path we name: it pages a file through the
 * descriptor lazymap_map gives it, and hands back its cache read-only
 * unless that descriptor could write.
 */

/* Mapping flags: mmap's vocabulary. */
#define LAZYMAP_PRIVATE 0x01 /* like MAP_PRIVATE: writes stay in memory */
#define LAZYMAP_SHARED  0x02 /* like MAP_SHARED */
#define LAZYMAP_ANON    0x04 /* no file: fd = -1, offset = 0; pages read as zeros */
#define LAZYMAP_DIRECT  0x08 /* read the backing file with O_DIRECT */
#define LAZYMAP_HINT    0x10 /* lazymap_map: *addrp is a hint, like mmap's addr */
#define LAZYMAP_FIXED   0x20 /* lazymap_map: exactly at *addrp or fail, never replacing
                              * (MAP_FIXED_NOREPLACE, not MAP_FIXED) */

/*
 * Open a lazymap: creates the userfaultfd and starts the handler threads.
 * opts may be NULL. Call it as lazymap_open(&lm, &opts); the function itself
 * is lazymap_open_sized(lmp, opts, size), size being the caller's
 * sizeof(struct lazymap_opts) (for bindings from other languages).
 * Memory: a lazymap commits nothing up front beyond its threads, their
 * io_uring rings and bookkeeping (about 100 KiB per handler). Each handler
 * reserves staging pages that cost memory once fills use them: one run of
 * readahead_max, and up to eight more for file reads in flight (as many as
 * fit in 16 MiB, but at least three); a handler pins its file-read area
 * (RLIMIT_MEMLOCK permitting) at its first file read.
 * Errors: -EINVAL size below LAZYMAP_OPTS_SIZE_VER0 (size is not looked at
 *         when opts is NULL); -E2BIG size larger than this library's struct
 *         with non-zero bytes beyond it (an option this library does not
 *         have), or larger than 4096; -EINVAL an option out of its range
 *         (handler_threads <= 256, queue_depth <= 32768, readahead_max <=
 *         64 MiB, spin_us <= 1000000, each but for its special values;
 *         resident_limit 0 or >= 4 MiB);
 *         -EPERM userfaultfd is not available to this process (not root and
 *         vm.unprivileged_userfaultfd=0 and no access to /dev/userfaultfd);
 *         -ENOSYS kernel without userfaultfd; -EINVAL bad option;
 *         with opts->daemon: what connect(2) gives (-ENOENT no socket there,
 *         -ECONNREFUSED nobody listening, -EACCES), -ENAMETOOLONG a path
 *         longer than a UNIX socket's, -EACCES faultd refused this user (its
 *         allow-lists), -EUSERS faultd serves as many clients as it may,
 *         -ETIMEDOUT nothing answered within 10 s (a stopped faultd, or a
 *         socket that is not faultd's),
 *         -EINVAL an empty path, or with resident_limit or LAZYMAP_INSTALL_MOVE;
 *         -EOPNOTSUPP a kernel before 6.6 (no UFFDIO_POISON, or no minor faults
 *         and write protection on shared memory), or
 *         LAZYMAP_INSTALL_MOVE on a kernel before 6.8;
 *         -ENOMEM, -EMFILE, -EAGAIN (threads) as the system reports them;
 *         with resident_limit, what creating the swap file in swap_path
 *         gives (-ENOENT, -ENOTDIR, -EACCES, -EROFS ...).
 */
LAZYMAP_API int lazymap_open_sized(struct lazymap **lmp, const struct lazymap_opts *opts,
				   size_t size);
#define lazymap_open(lmp, opts) lazymap_open_sized((lmp), (opts), sizeof(struct lazymap_opts))

/*
 * A lazymap breaks when a handler thread meets an error it cannot go on
 * from (its userfaultfd or its epoll set failing). It never leaves a thread
 * hanging: from then on every fault on its regions, and every fault that was
 * waiting, is answered with SIGBUS, as an I/O error would be; every call but
 * lazymap_stats and lazymap_close returns -EIO; lazymap_stats' broken says
 * which errno it was, and the log (opts.log) says what happened.
 *
 * Stop the handler threads, unmap every region, free everything.
 * Pages of unmapped regions are gone, exactly as after munmap(). A thread still
 * touching a region while it is closed is woken and then sees what the kernel
 * gives it (zeros, or SIGSEGV once the range is unmapped). It waits for what
 * is in progress: fill callbacks running, and file reads in flight, which the
 * kernel cannot cancel (a read held up by a stuck file system, such as a
 * stopped FUSE server, holds up lazymap_close as long). The dirty pages of
 * shared file regions are written back and their files fdatasync'ed first.
 * Errors: -EBADF lm is not an open lazymap; a write-back error as
 *         lazymap_sync gives it: the lazymap is closed all the same; the
 *         pages that could not be written stay in the process, and a later
 *         lazymap_close (of any lazymap), or a region of the file mapped
 *         again and synced, writes them; they are lost only if the process
 *         exits first (call lazymap_sync first, and retry it, to be sure).
 */
LAZYMAP_API int lazymap_close(struct lazymap *lm);

/*
 * Map len bytes, mmap-style: prot is a subset of PROT_READ|PROT_WRITE, flags
 * is LAZYMAP_PRIVATE or LAZYMAP_SHARED, optionally | LAZYMAP_ANON (then fd is
 * -1 and offset 0) or | LAZYMAP_DIRECT, and at most one of LAZYMAP_HINT and
 * LAZYMAP_FIXED. The address is returned in *addrp; where it is:
 *   neither          where the kernel puts it (*addrp is not read)
 *   LAZYMAP_HINT     at *addrp (NULL: no hint) if nothing is mapped there,
 *                    else in the lowest free range above it between lazymap's
 *                    regions that fits and that the kernel accepts (a few are
 *                    tried: the program's own mappings may sit there), else
 *                    where the kernel puts it, as mmap does with a hint
 *   LAZYMAP_FIXED    exactly at *addrp (page aligned) or not at all: never
 *                    over anything already mapped, lazymap's or not
 * Nothing is populated up front: every page is filled
 * by a handler thread on first touch (zeros for LAZYMAP_ANON). A lone fault
 * on a private LAZYMAP_ANON region also fills the untouched rest of its
 * aligned 64 KiB (at most readahead_max), so that later touches there are
 * the kernel's own cheap faults: after a read with the shared zero page,
 * which costs no memory; after a write with zeroed pages, like the kernel's
 * 64 KiB anonymous folios (LAZYMAP_ADV_RANDOM turns this off). File
 * mappings read only what is touched, and around it on sequential access.
 *
 * A file mapping (no LAZYMAP_ANON) shows the file from offset as mmap
 * would: the part of the last page beyond the end of the file reads as
 * zeros; a touch of a page wholly beyond the end, or of a page whose read
 * fails, raises SIGBUS in the touching thread (and counts in io_errors). The
 * end is the file's size when the page is first touched: a file that grows
 * shows its new pages, as with mmap, but for a page that raised SIGBUS
 * before the growth: it keeps raising it until dropped (MADV_DONTNEED,
 * unmap), where the kernel's mapping would show it. The library keeps its own reference to
 * the file: fd may be closed at once.
 *
 * Under an RLIMIT_FSIZE smaller than a file, the pages past the limit
 * cannot enter the cache: a touch there is SIGBUS (io_errors).
 *
 * The page cache. Every file has one cache in the process (files are told
 * apart by device and inode, so two descriptors or two lazymaps of one file
 * share it): a memfd holding the pages read so far at the file's own
 * offsets, which every region of the file maps. A page is read from the file
 * once (with io_uring, with readahead on sequential access) and then mapped
 * by the kernel with no copy and no round trip through the library: a second
 * region of the file, a region mapped again, a private page dropped with
 * MADV_DONTNEED find it there. The cache lives as long as a region maps the
 * file. Its pages are shared memory: they count as Shmem in /proc/meminfo
 * and against the memory cgroup, not as the file's page cache. It holds
 * 4 KiB pages, whatever shmem_enabled says (README: how pages enter it).
 * LAZYMAP_DIRECT reads the file with O_DIRECT (the library reopens it
 * through /proc/self/fd), so that the data is not held twice (the kernel's
 * page cache and ours).
 *
 * LAZYMAP_PRIVATE: writes go to private copies of the pages (copy on
 * write), never to the cache or the file; until it writes a page itself, a
 * private region sees the writes of shared regions of the file, as with
 * MAP_PRIVATE (under a resident budget, a writable one: those made before
 * its first touch of the page; see opts.resident_limit). LAZYMAP_SHARED: writes go to the cache page itself, which
 * every region of the file shows at once, and reach the file when written
 * back: by lazymap_sync (durably), by lazymap_unmap of the range and by
 * lazymap_close. Until then the file, and read(2) of it, show the old bytes
 * (the kernel's page cache is not ours), and a write(2) to the file does
 * not change pages already in our cache, which write back whole pages: on
 * one range of a file, use write(2) or shared regions, not both. Pages
 * wholly past the file's end at write-back are dropped, as the kernel drops
 * them. As mmap, a shared mapping with
 * PROT_WRITE needs fd open for reading and writing (-EACCES; O_APPEND is
 * fine: pages are written back where they belong), and lazymap_protect
 * may give PROT_WRITE to a shared region only if its fd was writable. The
 * library tracks writes with userfaultfd's write protection: the first
 * write to a page after it was written back costs one round trip through a
 * handler thread. Writes the program made through a range it unmapped or
 * shrank itself are not lost: those pages stay dirty in the cache and are
 * written back by the next lazymap_sync of any region of that file, or when
 * the file's last region goes (lazymap_close at the latest).
 *
 * Errors: -EINVAL zero or overflowing len, bad prot/flags, offset negative,
 *         unaligned or overflowing (offset + len beyond 2^47, the largest
 *         file the cache holds), LAZYMAP_DIRECT on a file system that
 *         refuses O_DIRECT, LAZYMAP_HINT with LAZYMAP_FIXED, a LAZYMAP_FIXED
 *         address unaligned or too high for len; -EEXIST LAZYMAP_FIXED over
 *         something already mapped (nothing is changed); -EPERM LAZYMAP_FIXED
 *         below vm.mmap_min_addr without CAP_SYS_RAWIO; -EBADF bad fd;
 *         -EACCES fd not open for reading, or LAZYMAP_SHARED with PROT_WRITE
 *         and fd not open for writing; -ENODEV fd is not a
 *         regular file; -ENOSYS no memfd_create (Linux < 3.17); -EMFILE
 *         the first region of a file costs three or four descriptors
 *         (ours of the file, the cache's memfd and a userfaultfd of its
 *         own, and one to write back through), one more with
 *         LAZYMAP_DIRECT;
 *         -ENOMEM out of memory or address space (a LAZYMAP_FIXED range
 *         beyond it too).
 */
LAZYMAP_API int lazymap_map(struct lazymap *lm, void **addrp, size_t len, int prot, int flags,
			    int fd, off_t offset);

/*
 * Anonymous private region whose pages are produced by fill() on first touch.
 * fill writes len bytes for the region offset given, into a staging buffer
 * that is then installed; len is a multiple of the page size, since the
 * library fills runs of pages at once: on sequential access, and around a
 * lone fault the untouched rest of its aligned 64 KiB (unless the range is
 * advised LAZYMAP_ADV_RANDOM). It returns 0, or a negative value when it
 * cannot: the page a fault asked for is then poisoned, and the toucher gets
 * SIGBUS, as for an I/O error of a file mapping; pages only filled ahead are
 * left unfilled, and asked for again when they are touched. It produces each
 * page once, and again only when the page was dropped (madvise(MADV_DONTNEED):
 * the next touch produces it anew), was left unfilled, or after a multi-page
 * call failed (the pages are then asked for one by one, to find the bad ones).
 *
 * Where fill runs: on a handler thread while its calls are quick; once one
 * call of a region has taken over a millisecond, that region's calls run on
 * filler threads of the lazymap (up to 4, started when first needed), so
 * that a slow producer holds up only the faults that wait for its pages
 * (after that first slow call, which the handler running it does wait for:
 * use handler_threads >= 2 if even one such wait matters). No lock of the
 * library is held while fill runs: lazymap_map and lazymap_unmap never wait
 * for it.
 *
 * What fill must not do: touch regions of its own lazymap (that fault would
 * wait for the thread running it); call its own lazymap's API but for
 * lazymap_stats (-EDEADLK); call another lazymap whose own fill callbacks
 * call back into this one (two handlers waiting for each other: a deadlock
 * the library cannot see); leave its thread (pthread_exit, longjmp out of
 * it): the pages it was producing then wait for ever, and so does
 * lazymap_close; munmap, mremap or madvise(MADV_DONTNEED...) a range of its
 * own lazymap, with a single handler thread: the call waits until a handler
 * has read the event it raises, and the only handler is the one running
 * fill (fork() is fine: a thread of its own reads fork events).
 * lazymap_close waits for calls in progress to return.
 */
typedef int (*lazymap_fill_fn)(void *page, size_t len, uint64_t offset, void *arg);
LAZYMAP_API int lazymap_map_fill(struct lazymap *lm, void **addrp, size_t len, int prot,
				 lazymap_fill_fn fill, void *arg);

/*
 * A region whose pages come from a network block device export (NBD),
 * through libnbd: uri is an NBD URI as libnbd parses it (nbd://host[:port]/
 * export, nbds:// with TLS, nbd+unix:///export?socket=/path, nbds+unix://,
 * nbd+vsock://), offset a byte offset in the export (page aligned). The
 * export is paged like a file (see lazymap_map): read on the handler
 * threads, each driving its own connection to the server asynchronously
 * (many requests in flight, none larger than the server's maximum block
 * size), with readahead on sequential access; its pages live in a page
 * cache of their own, one per URI in the process (the same string: two
 * spellings of one export are two caches), shared by every region that
 * maps it. LAZYMAP_PRIVATE: writes stay in memory. LAZYMAP_SHARED: writes
 * go to the cache and reach the export when written back (lazymap_sync,
 * lazymap_unmap, lazymap_close, eviction under resident_limit) on a
 * connection of the cache's own; lazymap_sync ends with an NBD flush when
 * the server offers one. Pages past the export's end are SIGBUS, and so is
 * a page the server fails to read (io_errors). A server that goes away is
 * reconnected for opts.remote_timeout_ms (see there), and the faults wait;
 * the URI is connected to again as given (a name is resolved again).
 * Resolving a host name blocks the thread that connects (libnbd): give
 * addresses where that matters. Served by faultd (opts.daemon), such
 * regions are served in process, as fill-callback regions are.
 *
 * The server is asked at once: lazymap_map_uri connects, checks the export
 * and disconnects (the handler threads connect at their first fault there);
 * a second region of the same URI asks nothing. Without multi-conn
 * (NBD_FLAG_CAN_MULTI_CONN) the server does not promise that a write one
 * connection made is seen by another: regions of one URI are then kept
 * consistent by the cache alone (every page read once, written back on
 * one connection), which holds while nobody else writes the export and no
 * page written back is read again: under resident_limit a page written
 * back and evicted is read again on a handler's connection, which such a
 * server may answer with the old bytes (use multi-conn there).
 * TLS: libnbd's rules (nbds:// requires it); a tls-psk-file= in the URI is
 * read (the program is trusted with its own URIs).
 *
 * flags: LAZYMAP_PRIVATE or LAZYMAP_SHARED, with LAZYMAP_HINT or
 * LAZYMAP_FIXED as lazymap_map. Write-back writes no byte past the
 * export's end (the part of its last page past it stays in memory: an
 * export does not grow). A connection made again to an export whose size
 * changed reads what it can (past the new end: SIGBUS); the region keeps
 * the size it was mapped with.
 *
 * Errors (nothing is mapped, nothing is kept); the arguments are checked
 * first, then the URI:
 *   -EINVAL       len, prot, flags, offset as lazymap_map (LAZYMAP_ANON and
 *                 LAZYMAP_DIRECT are -EINVAL here); uri NULL, unparsable,
 *                 of an unknown scheme, or without what its scheme needs
 *                 (nbd+unix:// without socket=)
 *   -EPROTONOSUPPORT  the library was built without libnbd, or libnbd
 *                 without that transport (vsock) or TLS
 *   -ENOENT       the server has no export of that name; a UNIX socket
 *                 path that does not exist
 *   -ECONNREFUSED nothing listens there
 *   -EHOSTUNREACH the host cannot be reached, or its name has no address
 *   -ETIMEDOUT    no answer within opts.remote_timeout_ms
 *   -EOPNOTSUPP   the server requires TLS and the URI did not ask for it,
 *                 or the URI asked for it and the server refuses it; an
 *                 export whose minimum block size is larger than a page
 *   -EPROTO       the handshake failed (TLS credentials refused, the server
 *                 hung up while negotiating)
 *   -EACCES       LAZYMAP_SHARED with PROT_WRITE on a read-only export
 *   -ENOMEM, -EMFILE (the first region of an export costs a memfd, a
 *                 userfaultfd, and the probe's socket for the call's time)
 * lazymap_protect may give PROT_WRITE to a shared region only if the
 * export is writable (-EACCES).
 */
LAZYMAP_API int lazymap_map_uri(struct lazymap *lm, void **addrp, size_t len, int prot, int flags,
				const char *uri, uint64_t offset);

/*
 * Unmap the whole or a part of one or several regions: addr must be page
 * aligned (len is rounded up to pages, as munmap does), and [addr, addr+len)
 * lie entirely inside regions of this lazymap. The dirty
 * pages of shared file regions in the range are written back first, and
 * fdatasync'ed when there were any (a disk that refuses them then fails the
 * call, rather than a later sync with the pages gone); if that fails,
 * nothing is unmapped.
 * Errors: -EINVAL unaligned, zero or overflowing range, or a part of the
 *         range that lazymap does not own (then nothing is unmapped);
 *         -ENOMEM no memory to split a region; a write-back error as
 *         lazymap_sync gives it (then nothing is unmapped, the pages stay
 *         dirty).
 */
LAZYMAP_API int lazymap_unmap(struct lazymap *lm, void *addr, size_t len);

/*
 * Start filling the missing pages of a range in the background and return at
 * once. Errors: as lazymap_unmap.
 */
LAZYMAP_API int lazymap_prefetch(struct lazymap *lm, void *addr, size_t len);

/*
 * Write back the dirty pages of the shared file regions in the range, with
 * io_uring, and fdatasync their files: when it returns 0, every write made
 * to those pages before the call is on the file, durably. A page written
 * again while it is being written back stays dirty for the next sync. The
 * range may span several regions and gaps between them only if every page
 * of it is in a region (as lazymap_unmap). Private and anonymous regions
 * have nothing to write: 0.
 * Errors: as lazymap_unmap; a write or fdatasync that failed (-ENOSPC disk
 *         full, -EFBIG RLIMIT_FSIZE or the file system's limit, -EIO,
 *         -EDQUOT...): the first such errno; the pages that could not be
 *         written stay dirty and are written by a later sync (nothing is
 *         dropped); SIGXFSZ is never raised by the library's writes.
 */
LAZYMAP_API int lazymap_sync(struct lazymap *lm, void *addr, size_t len);

/*
 * Change the protection of a range, like mprotect(): prot is a subset of
 * PROT_READ|PROT_WRITE. Regions split and merge as the kernel's VMAs do.
 * Errors: as lazymap_unmap; -EINVAL bad prot; -EACCES PROT_WRITE on a
 *         LAZYMAP_SHARED file region whose fd was not open for writing.
 */
LAZYMAP_API int lazymap_protect(struct lazymap *lm, void *addr, size_t len, int prot);

/*
 * Tell lazymap how a range will be touched, like madvise(): the range is
 * split from its neighbours if need be.
 *   LAZYMAP_ADV_NORMAL      the default: fill-around grows on sequential faults
 *   LAZYMAP_ADV_SEQUENTIAL  fill readahead_max from the first fault on
 *   LAZYMAP_ADV_RANDOM      fill only the page touched (no zero-page block either)
 *   LAZYMAP_ADV_WILLNEED    start filling the range now (lazymap_prefetch)
 * Errors: as lazymap_unmap; -EINVAL unknown advice.
 */
#define LAZYMAP_ADV_NORMAL     0
#define LAZYMAP_ADV_SEQUENTIAL 1
#define LAZYMAP_ADV_RANDOM     2
#define LAZYMAP_ADV_WILLNEED   3
LAZYMAP_API int lazymap_advise(struct lazymap *lm, void *addr, size_t len, int advice);

/*
 * The smallest read of a file or export region in [addr, addr + len), as a
 * filesystem's block larger than a page: a fault there fills every hole of
 * the block of unit bytes of the file that holds the page touched (blocks
 * start at file offsets that are multiples of unit), as far as the region
 * and the file go, whatever the advice (LAZYMAP_ADV_RANDOM too); read-ahead
 * comes on top. Pages are still kept, written back and evicted one by one.
 * unit: a multiple of the page size up to LAZYMAP_FILL_UNIT_MAX; 0 or the
 * page size: one page (the default). The range is split from its
 * neighbours if need be. Anonymous and fill regions keep the unit and
 * ignore it.
 * Errors: as lazymap_unmap; -EINVAL a unit that is not such a multiple.
 */
#define LAZYMAP_FILL_UNIT_MAX (64u << 20)
LAZYMAP_API int lazymap_fill_unit(struct lazymap *lm, void *addr, size_t len, size_t unit);

/*
 * The counters, one list (the kernel's vm_event_item): X(name, how, what),
 * how being SUM (added over the handler threads), MAX (the largest any
 * handler saw) or NOW (a value of the moment). struct lazymap_stats holds
 * them in this order; new ones are only ever added at the end. Programs may
 * use the list too, e.g. to print every counter by name.
 */
#define LAZYMAP_COUNTERS(X)                                                                    \
	X(faults, SUM, "missing-page fault messages served")                                   \
	X(pages_filled, SUM, "pages installed (faults, fault-around and prefetch)")             \
	X(bytes_read, SUM, "bytes read from backing files and NBD exports")                     \
	X(bytes_written, SUM, "bytes written back to backing files")                            \
	X(evictions, SUM, "pages evicted under resident_limit")                                 \
	X(io_errors, SUM, "pages poisoned because their fill failed")                           \
	X(zero_pages, SUM, "pages mapped to the shared zero page (read faults)")                \
	X(fill_calls, SUM, "calls of lazymap_fill_fn")                                          \
	X(copy_ioctls, SUM, "UFFDIO_COPY calls")                                                \
	X(move_ioctls, SUM, "UFFDIO_MOVE calls")                                                \
	X(zeropage_ioctls, SUM, "UFFDIO_ZEROPAGE calls")                                        \
	X(coalesced, SUM, "fault messages for a page another fill was serving")                 \
	X(unowned, SUM, "fault messages outside every region (woken, not filled)")              \
	X(reads, SUM, "read() calls on the userfaultfd that returned messages")                 \
	X(sleeps, SUM, "times a handler slept because it found nothing to do")                  \
	X(prefetched, SUM, "pages filled by lazymap_prefetch")                                  \
	X(max_batch, MAX, "most messages one read() returned")                                  \
	X(regions, NOW, "VMAs in the tree now")                                                 \
	X(file_reads, SUM, "io_uring reads completed (continuations of short reads too), and NBD reads") \
	X(short_reads, SUM, "reads that returned less than asked and were continued")           \
	X(readahead_pages, SUM, "pages filled beyond the one a fault asked for")                \
	X(inflight_max, MAX, "most reads one handler had in flight at once")                    \
	/* -- end of version 0 (LAZYMAP_STATS_SIZE_VER0) -- */                                  \
	X(broken, NOW, "0, or the errno that stopped the handler threads (see lazymap_open)")   \
	X(offloaded_fills, SUM, "fill calls run on a filler thread (the callback was slow)")    \
	X(events, SUM, "the program's munmap, mremap, madvise and fork, applied to the tree")   \
	X(children, NOW, "forked children served now (one that exited is let go shortly after)") \
	X(fork_followed, NOW, "1: forked children are served; 0: not (see lazymap_open)")     \
	X(wp_faults, SUM, "first writes to clean pages of shared file regions, and under a budget to pages of anonymous and fill regions (write-protect faults)") \
	X(writebacks, SUM, "writes of dirty runs of pages to backing files")                   \
	X(dirty_pages, NOW, "pages of shared file regions written and not yet written back")    \
	X(cache_pages, NOW, "pages in the page caches of the files this lazymap maps")          \
	X(resident_bytes, NOW, "bytes of pages counted against resident_limit now")            \
	X(resident_peak, NOW, "the most resident_bytes has been")                              \
	X(refaults, SUM, "pages filled again soon after they were evicted")                     \
	X(evict_wait_ns, SUM, "time fills waited for eviction at resident_limit")               \
	X(budget_overruns, SUM, "fills that went on over resident_limit (eviction could free nothing in time)") \
	X(swap_outs, SUM, "pages written to the swap file (written pages of anonymous and fill regions)") \
	X(swap_ins, SUM, "pages read back from the swap file")                                  \
	X(swap_bytes, NOW, "bytes of the swap file in use")                                     \
	X(remote_reconnects, SUM, "connections to NBD servers made again after one was lost")   \
	X(remote_timeouts, SUM, "NBD reads given up: the server stayed away past remote_timeout_ms (their pages get SIGBUS, counted in io_errors)")

/* Counters since lazymap_open. */
struct lazymap_stats {
#define LAZYMAP_STAT_FIELD(name, how, what) uint64_t name;
	LAZYMAP_COUNTERS(LAZYMAP_STAT_FIELD)
#undef LAZYMAP_STAT_FIELD
};
/* The size of the first struct lazymap_stats, the smallest lazymap_stats_sized() takes. */
#define LAZYMAP_STATS_SIZE_VER0 (offsetof(struct lazymap_stats, inflight_max) + sizeof(uint64_t))

/*
 * Fill *st. Call it as lazymap_stats(lm, &st); the function writes exactly
 * size bytes (the caller's sizeof), zeroing any it has no counter for.
 * Works on a broken lazymap too (st.broken says why it is).
 * Errors: -EINVAL st NULL or size below LAZYMAP_STATS_SIZE_VER0; -EBADF.
 */
LAZYMAP_API int lazymap_stats_sized(struct lazymap *lm, struct lazymap_stats *st, size_t size);
#define lazymap_stats(lm, st) lazymap_stats_sized((lm), (st), sizeof(struct lazymap_stats))

/*
 * Print every address space lm serves, this process first, then each forked
 * child it serves: a line "# pid N faults F events E" (fault messages and
 * mapping events of that address space; N is 0 for a child made with a raw
 * clone() instead of fork(), which never tells it), then its VMAs, one line
 * each, in
 * /proc/PID/maps style:
 *   start-end perms offset 00:00 0 [lazymap:source]
 * from a copy taken at once, with no lock held while writing: out may be
 * any stream, even one whose buffer lies in a region of this lazymap.
 * Returns the number of VMA lines printed (all address spaces), after
 * flushing out.
 * Errors: -EINVAL out is NULL; -ENOMEM no memory for the copy; the errno of
 *         a write to out that failed (-ENOSPC, -EPIPE...; -EIO if none).
 */
LAZYMAP_API int lazymap_dump(struct lazymap *lm, FILE *out);

#ifdef __cplusplus
}
#endif
#endif /* LAZYMAP_H */
