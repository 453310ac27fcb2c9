/* hello-lib: what the hello server says, and how it checks the admin password. */
#ifndef HELLO_H
#define HELLO_H

#include <stddef.h>

/* Writes "<greeting>, <name>!\n" into buf (at most size bytes, always terminated).
 * Returns the length the full text needs, like snprintf. */
int hello_greet(char *buf, size_t size, const char *greeting, const char *name);

/* 1 when the two strings are equal, 0 otherwise; the time taken does not depend on where
 * they differ, so a password cannot be guessed byte by byte from response times. */
int hello_secret_equal(const char *given, const char *expected);

#endif
