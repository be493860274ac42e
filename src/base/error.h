// error.h - one error record passed down every call that can fail.
//
// vlft never prints from deep inside a parser: a failing function fills an
// Error with one line naming the file and the cause and returns -1; the
// command at the top prints it and picks the exit code. No globals.
#ifndef VLFT_ERROR_H
#define VLFT_ERROR_H

#include <stddef.h>

typedef struct {
    char message[1024];
} Error;

// Formats the message into err (when err is not NULL) and returns -1, so a
// failing path reads `return error_set(err, "%s: ...", path);`.
int error_set(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Prepends "prefix: " to the message already held, returns -1.
int error_prefix(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
