/* SPDX-License-Identifier: MIT */
/*
 * umap's C API, served by liblazymap: a program written for LLNL umap
 * builds against this header by adding -I<includedir>/lazymap-umap (it
 * keeps #include <umap/umap.h>) and links -llazymap-umap instead of -lumap
 * (pkg-config lazymap-umap gives both). Our own words, from umap's
 * documentation; the names, types and values are umap's.
 *
 * Where this differs from umap (README, "Coming from umap"):
 * - bad arguments return UMAP_FAILED (or -1) with errno set, where umap
 *   throws a C++ exception (an abort in C);
 * - offset is honoured (page aligned, else EINVAL), where umap maps the
 *   file from byte 0 whatever offset says;
 * - a file open for writing is written back (umap_flush, uunmap,
 *   eviction); one open read-only is mapped read-only: PROT_WRITE on it
 *   is EACCES;
 * - umap_fetch_and_pin reads the range in at once; the budget may still
 *   evict it later (liblazymap does not pin);
 * - UMAP_FIXED replaces what the program mapped there, as MAP_FIXED does,
 *   but never another umap region (EEXIST);
 * - pages wholly past the file's end are SIGBUS, as with mmap;
 * - after fork(), a region of a file open for writing is shared with the
 *   child (what either writes, the other sees); the child's own calls work
 *   on a lazymap of its own.
 * The C++ interface (Umap::umap_ex, stores), umap's server and client, and
 * the umapcfg_set_* setters of old releases are not provided.
 */
#ifndef _UMAP_H_
#define _UMAP_H_

#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UMAP_PRIVATE MAP_PRIVATE /* required: umap has no shared mode of its own */
#define UMAP_FIXED   MAP_FIXED
#define UMAP_FAILED  ((void *)-1)

/* A region of fd's file: flags UMAP_PRIVATE, optionally | UMAP_FIXED (addr
 * then aligned to umapcfg_get_umap_page_size()); prot PROT_READ and/or
 * PROT_WRITE. UMAP_FAILED with errno on failure. */
void *umap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
/* The same with a region page size (a multiple of the umap page size). */
void *umap_variable(void *addr, size_t length, int prot, int flags, int fd, off_t offset,
		    uint64_t page_size);
/* Make page_size (a multiple of the umap page size) the page of the region
 * umap returned at addr: a fault there reads that much. EINVAL in errno if
 * addr starts no region or page_size is no such multiple. */
void umap_adapt_pagesize(void *addr, uint64_t page_size);
/* Unmap the region umap returned at addr (length is not looked at, as in
 * umap), writing back what was written. 0, or -1 with errno. */
int uunmap(void *addr, size_t length);
/* Write back every region's written pages; they stay in memory. 0, or -1
 * with errno (the pages that could not be written stay dirty). */
int umap_flush(void);

struct umap_prefetch_item {
	void *page_base_addr;
};
/* Start reading these umap pages in. */
void umap_prefetch(int npages, struct umap_prefetch_item *page_array);
/* Read [paddr, paddr + size) in now. */
void umap_fetch_and_pin(char *paddr, uint64_t size);
/* 1: regions of files open for writing are written back. */
int umap_has_write_support(void);

/* The configuration, from the environment at the first call (see README). */
long umapcfg_get_system_page_size(void);
uint64_t umapcfg_get_umap_page_size(void);
uint64_t umapcfg_get_max_fault_events(void);
uint64_t umapcfg_get_num_fillers(void);
uint64_t umapcfg_get_num_evictors(void);
uint64_t umapcfg_get_max_pages_in_buffer(void);
uint64_t umapcfg_get_read_ahead(void);
int umapcfg_get_evict_low_water_threshold(void);
int umapcfg_get_evict_high_water_threshold(void);

#ifdef __cplusplus
}
#endif
#endif /* _UMAP_H_ */
