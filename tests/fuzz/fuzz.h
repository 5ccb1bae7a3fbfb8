/* SPDX-License-Identifier: MIT */
/* The libFuzzer entry point, shared by the fuzz targets and replay.c. */
#ifndef LAZYMAP_TESTS_FUZZ_H
#define LAZYMAP_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
