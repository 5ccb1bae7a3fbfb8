// SPDX-License-Identifier: MIT
/*
 * Replays fuzz inputs without libFuzzer: every regular file in the
 * directories (or the files) named on the command line goes once through
 * LLVMFuzzerTestOneInput, so a gcc build tests the seed corpus and any crash
 * input saved next to it. A target's abort() fails the run; so does finding
 * no input at all (a wrong path must not pass).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/* Run one file through the target; 0, or -errno if it cannot be read. */
static int replay_file(int dirfd, const char *name)
{
	struct stat sb;
	uint8_t *data;
	ssize_t got = 0;
	size_t done = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0) {
		err = -errno;
		goto out;
	}
	/* exactly its size, so that a read past the end is ASan's to see */
	data = malloc(sb.st_size ? (size_t)sb.st_size : 1);
	if (!data) {
		err = -ENOMEM;
		goto out;
	}
	while (done < (size_t)sb.st_size && (got = read(fd, data + done, (size_t)sb.st_size - done)) > 0)
		done += (size_t)got;
	if (got < 0)
		err = -errno;
	else
		LLVMFuzzerTestOneInput(data, done);
	free(data);
out:
	close(fd);
	return err;
}

int main(int argc, char **argv)
{
	unsigned runs = 0;

	for (int i = 1; i < argc; i++) {
		DIR *d = opendir(argv[i]);
		struct dirent *e;
		int err;

		if (!d) {
			/* not a directory: a single input */
			err = replay_file(AT_FDCWD, argv[i]);
			if (err) {
				fprintf(stderr, "%s: %s\n", argv[i], strerror(-err));
				return 1;
			}
			runs++;
			continue;
		}
		while ((e = readdir(d))) {
			struct stat sb;

			if (fstatat(dirfd(d), e->d_name, &sb, 0) < 0 || !S_ISREG(sb.st_mode))
				continue;
			err = replay_file(dirfd(d), e->d_name);
			if (err) {
				fprintf(stderr, "%s/%s: %s\n", argv[i], e->d_name, strerror(-err));
				closedir(d);
				return 1;
			}
			runs++;
		}
		closedir(d);
	}
	printf("replayed %u inputs\n", runs);
	return runs ? 0 : 1;
}
