#include "fs.h"

#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int atomic_open(AtomicFile *file, const char *path, Error *err) {
    memset(file, 0, sizeof *file);
    if (strlen(path) >= sizeof file->path) return error_set(err, "%s: path too long", path);
    strcpy(file->path, path);
    snprintf(file->temp_path, sizeof file->temp_path, "%s.tmp.%ld", path, (long)getpid());
    file->fp = fopen(file->temp_path, "wb");
    if (file->fp == NULL) return error_set(err, "%s: cannot create: %s", file->temp_path, strerror(errno));
    return 0;
}

void atomic_abort(AtomicFile *file) {
    if (file->fp) fclose(file->fp);
    file->fp = NULL;
    if (file->temp_path[0]) unlink(file->temp_path);
}

int atomic_write(AtomicFile *file, const void *data, size_t size, Error *err) {
    if (size > 0 && fwrite(data, 1, size, file->fp) != size) {
        int saved = errno;
        atomic_abort(file);
        return error_set(err, "%s: write failed: %s", file->path, strerror(saved));
    }
    return 0;
}

static void fsync_parent_dir(const char *path) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int atomic_commit(AtomicFile *file, Error *err) {
    if (fflush(file->fp) != 0 || fsync(fileno(file->fp)) != 0) {
        int saved = errno;
        atomic_abort(file);
        return error_set(err, "%s: write failed: %s", file->path, strerror(saved));
    }
    if (fclose(file->fp) != 0) {
        int saved = errno;
        file->fp = NULL;
        atomic_abort(file);
        return error_set(err, "%s: write failed: %s", file->path, strerror(saved));
    }
    file->fp = NULL;
    if (rename(file->temp_path, file->path) != 0) {
        int saved = errno;
        unlink(file->temp_path);
        return error_set(err, "%s: cannot rename into place: %s", file->path, strerror(saved));
    }
    fsync_parent_dir(file->path);
    return 0;
}

int write_file_atomic(const char *path, const void *data, size_t size, Error *err) {
    AtomicFile file;
    if (atomic_open(&file, path, err) != 0) return -1;
    if (atomic_write(&file, data, size, err) != 0) return -1;
    return atomic_commit(&file, err);
}

int read_file(const char *path, size_t max_size, char **out, size_t *out_size, Error *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) return error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return error_set(err, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > max_size) {
        fclose(fp);
        return error_set(err, "%s: file too large (%lld bytes, limit %zu)", path, (long long)st.st_size, max_size);
    }
    size_t size = (size_t)st.st_size;
    char *buffer = malloc(size + 1);
    if (buffer == NULL) {
        fclose(fp);
        return error_set(err, "%s: out of memory", path);
    }
    size_t got = fread(buffer, 1, size, fp);
    fclose(fp);
    if (got != size) {
        free(buffer);
        return error_set(err, "%s: short read", path);
    }
    buffer[size] = '\0';
    *out = buffer;
    if (out_size) *out_size = size;
    return 0;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int make_dirs(const char *path, Error *err) {
    char buffer[4096];
    if (snprintf(buffer, sizeof buffer, "%s", path) >= (int)sizeof buffer)
        return error_set(err, "%s: path too long", path);
    for (char *p = buffer + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buffer, 0755) != 0 && errno != EEXIST)
            return error_set(err, "%s: cannot create directory: %s", buffer, strerror(errno));
        *p = '/';
    }
    if (mkdir(buffer, 0755) != 0 && errno != EEXIST)
        return error_set(err, "%s: cannot create directory: %s", buffer, strerror(errno));
    if (!dir_exists(buffer)) return error_set(err, "%s: exists and is not a directory", buffer);
    return 0;
}

int path_join(char *dst, size_t dst_size, const char *a, const char *b, Error *err) {
    int n = (a[0] == '\0') ? snprintf(dst, dst_size, "%s", b) : snprintf(dst, dst_size, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= dst_size) return error_set(err, "%s/%s: path too long", a, b);
    return 0;
}

int copy_file(const char *src, const char *dst, Error *err) {
    char *data;
    size_t size;
    if (read_file(src, (size_t)1 << 32, &data, &size, err) != 0) return -1;
    int rc = write_file_atomic(dst, data, size, err);
    free(data);
    return rc;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

int remove_tree(const char *path, Error *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return error_set(err, "%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int replace_dir(const char *tmp_dir, const char *dst, Error *err) {
    char old[4200];
    snprintf(old, sizeof old, "%s.old.%ld", dst, (long)getpid());
    int had_old = 0;
    struct stat st;
    if (lstat(dst, &st) == 0) {
        if (rename(dst, old) != 0) return error_set(err, "%s: cannot move aside: %s", dst, strerror(errno));
        had_old = 1;
    }
    if (rename(tmp_dir, dst) != 0) {
        int saved = errno;
        if (had_old) rename(old, dst);
        return error_set(err, "%s: cannot move into place: %s", dst, strerror(saved));
    }
    fsync_parent_dir(dst);
    if (had_old) return remove_tree(old, err);
    return 0;
}
