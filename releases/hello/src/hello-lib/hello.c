#include "hello.h"

#include <stdio.h>
#include <string.h>

int hello_greet(char *buf, size_t size, const char *greeting, const char *name)
{
    return snprintf(buf, size, "%s, %s!\n", greeting, name);
}

int hello_secret_equal(const char *given, const char *expected)
{
    size_t given_length = strlen(given);
    size_t expected_length = strlen(expected);
    unsigned char difference = given_length != expected_length;
    for (size_t i = 0; i < expected_length; i++) {
        unsigned char g = i < given_length ? (unsigned char)given[i] : 0;
        difference |= g ^ (unsigned char)expected[i];
    }
    return difference == 0;
}
