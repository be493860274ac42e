// fs.h - small filesystem helpers: whole-file reads, atomic writes, paths.
//
// Every output vlft writes goes through AtomicFile: data lands in
// "<path>.tmp.<pid>", is fsynced, and is renamed over <path> only when
// complete, so a kill at any moment leaves either the old file or the new
// one, never half of one.
#ifndef VLFT_FS_H
#define VLFT_FS_H

#include <stddef.h>
#include <stdio.h>

#include "error.h"

typedef struct {
    FILE *fp;
    char path[4096];
    char temp_path[4096 + 32];
} AtomicFile;

int atomic_open(AtomicFile *file, const char *path, Error *err);
// Writes size bytes; on failure the temp file is removed.
int atomic_write(AtomicFile *file, const void *data, size_t size, Error *err);
// fsync + rename into place; closes the file either way.
int atomic_commit(AtomicFile *file, Error *err);
// Removes the temp file (after an error on the caller's side).
void atomic_abort(AtomicFile *file);

// Writes a whole buffer to path atomically.
int write_file_atomic(const char *path, const void *data, size_t size, Error *err);

// Reads a whole file into a malloc'd NUL-terminated buffer (size excludes
// the NUL). Refuses files larger than max_size.
int read_file(const char *path, size_t max_size, char **out, size_t *out_size, Error *err);

int file_exists(const char *path);
int dir_exists(const char *path);
// mkdir -p.
int make_dirs(const char *path, Error *err);
// dst = a "/" b, error when it does not fit.
int path_join(char *dst, size_t dst_size, const char *a, const char *b, Error *err);
// Copies a file byte for byte (atomically).
int copy_file(const char *src, const char *dst, Error *err);

// rm -rf path (no error when it does not exist).
int remove_tree(const char *path, Error *err);
// Moves a finished folder into place: dst is replaced whole (an old dst is
// renamed aside first and removed after), so readers see old or new, never a mix.
int replace_dir(const char *tmp_dir, const char *dst, Error *err);

#endif
