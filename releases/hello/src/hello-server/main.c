/*
 * hello-server: a small HTTP/1.0 server, the quickstart's example process.
 *
 *   hello-server CONFIG
 *
 * CONFIG holds key=value lines: address, port, greeting, admin_password, drain_file.
 *   GET /         -> "<greeting>, world!"
 *   GET /healthz  -> 200 "ok", or 503 "draining" once drain_file exists (bin/drain makes it)
 *   GET /admin    -> the request count, with header X-Admin-Password: <admin_password>
 * SIGTERM or SIGINT stops it after the request in progress.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "hello.h"

struct config {
    char address[64];
    int port;
    char greeting[128];
    char admin_password[256];
    char drain_file[512];
};

static volatile sig_atomic_t stopping = 0;

static void stop(int signal_number)
{
    (void)signal_number;
    stopping = 1;
}

static void copy_value(char *to, size_t size, const char *value)
{
    snprintf(to, size, "%s", value);
}

static int read_config(const char *path, struct config *config)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        fprintf(stderr, "hello-server: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    copy_value(config->address, sizeof config->address, "0.0.0.0");
    config->port = 8080;
    copy_value(config->greeting, sizeof config->greeting, "hello");
    config->admin_password[0] = '\0';
    config->drain_file[0] = '\0';
    char line[1024];
    while (fgets(line, sizeof line, file) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *equals = strchr(line, '=');
        if (line[0] == '#' || equals == NULL) {
            continue;
        }
        *equals = '\0';
        const char *key = line;
        const char *value = equals + 1;
        if (strcmp(key, "address") == 0) {
            copy_value(config->address, sizeof config->address, value);
        } else if (strcmp(key, "port") == 0) {
            config->port = atoi(value);
        } else if (strcmp(key, "greeting") == 0) {
            copy_value(config->greeting, sizeof config->greeting, value);
        } else if (strcmp(key, "admin_password") == 0) {
            copy_value(config->admin_password, sizeof config->admin_password, value);
        } else if (strcmp(key, "drain_file") == 0) {
            copy_value(config->drain_file, sizeof config->drain_file, value);
        }
    }
    fclose(file);
    if (config->port <= 0 || config->port > 65535) {
        fprintf(stderr, "hello-server: port %d is not a TCP port\n", config->port);
        return -1;
    }
    return 0;
}

static void respond(int client, int status, const char *reason, const char *body)
{
    char head[256];
    int length = snprintf(head, sizeof head,
                          "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          status, reason, strlen(body));
    if (write(client, head, (size_t)length) < 0 || write(client, body, strlen(body)) < 0) {
        perror("hello-server: write");
    }
}

/* The value of header `name` in the request, or NULL. Cuts the request text. */
static char *header(char *request, const char *name)
{
    size_t length = strlen(name);
    for (char *line = strstr(request, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, length) == 0 && line[length] == ':') {
            char *value = line + length + 1;
            value += strspn(value, " \t");
            value[strcspn(value, "\r\n")] = '\0';
            return value;
        }
    }
    return NULL;
}

static void serve(int client, const struct config *config, unsigned long *served)
{
    char request[8192];
    size_t used = 0;
    while (used < sizeof request - 1) {
        ssize_t n = read(client, request + used, sizeof request - 1 - used);
        if (n <= 0) {
            break;
        }
        used += (size_t)n;
        request[used] = '\0';
        if (strstr(request, "\r\n\r\n") != NULL) {
            break;
        }
    }
    request[used] = '\0';
    char method[16] = "", path[1024] = "";
    if (sscanf(request, "%15s %1023s", method, path) != 2) {
        respond(client, 400, "Bad Request", "bad request\n");
        return;
    }
    (*served)++;
    char *query = strchr(path, '?');
    if (query != NULL) {
        *query = '\0';
    }
    printf("%s %s\n", method, path);
    fflush(stdout);
    if (strcmp(method, "GET") != 0) {
        respond(client, 405, "Method Not Allowed", "only GET\n");
    } else if (strcmp(path, "/") == 0) {
        char body[512];
        hello_greet(body, sizeof body, config->greeting, "world");
        respond(client, 200, "OK", body);
    } else if (strcmp(path, "/healthz") == 0) {
        if (config->drain_file[0] != '\0' && access(config->drain_file, F_OK) == 0) {
            respond(client, 503, "Service Unavailable", "draining\n");
        } else {
            respond(client, 200, "OK", "ok\n");
        }
    } else if (strcmp(path, "/admin") == 0) {
        const char *given = header(request, "X-Admin-Password");
        if (config->admin_password[0] == '\0' || given == NULL ||
            !hello_secret_equal(given, config->admin_password)) {
            respond(client, 401, "Unauthorized", "unauthorized\n");
        } else {
            char body[64];
            snprintf(body, sizeof body, "requests served: %lu\n", *served);
            respond(client, 200, "OK", body);
        }
    } else {
        respond(client, 404, "Not Found", "not found\n");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: hello-server CONFIG\n");
        return 2;
    }
    struct config config;
    if (read_config(argv[1], &config) != 0) {
        return 1;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = stop; /* no SA_RESTART: accept() returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)config.port);
    if (inet_pton(AF_INET, config.address, &address.sin_addr) != 1) {
        fprintf(stderr, "hello-server: '%s' is not an IPv4 address\n", config.address);
        return 1;
    }
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 64) != 0) {
        fprintf(stderr, "hello-server: cannot listen on %s:%d: %s\n", config.address,
                config.port, strerror(errno));
        return 1;
    }
    printf("listening on %s:%d\n", config.address, config.port);
    fflush(stdout);

    unsigned long served = 0;
    while (!stopping) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("hello-server: accept");
            continue;
        }
        struct timeval timeout = {5, 0};
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        serve(client, &config, &served);
        close(client);
    }
    close(listener);
    printf("stopped after %lu requests\n", served);
    return 0;
}
