/* libgreet: a tiny C library that formats greetings. */
#ifndef GREET_H
#define GREET_H

#include <stddef.h>

#define GREET_VERSION "1.0"

/* The library's version string, e.g. "1.0". */
const char *greet_version(void);

/*
 * Formats a greeting for `name` into `buf` (at most `size` bytes, always NUL-terminated
 * when size > 0). A NULL or empty name greets "world". Returns the length the full
 * greeting needs (like snprintf), or -1 on error.
 */
int greet_format(char *buf, size_t size, const char *name);

#endif /* GREET_H */
