// fuzz_input.h - shared by the fuzz targets: hand fuzzer bytes to a parser
// that reads from a path, through an in-memory file (memfd) so no disk I/O.
#ifndef VLFT_FUZZ_INPUT_H
#define VLFT_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

// Writes data to a fresh memfd and puts its /proc path into path; returns the
// fd (close it after use) or -1.
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t path_size) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
