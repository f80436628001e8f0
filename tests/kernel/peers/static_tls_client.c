/* An HTTPS client with OpenSSL linked in statically: the agent finds it by
 * the SSL_read/SSL_write symbols in its executable, not by a libssl file.
 *
 * Usage: static_tls_client PORT PATH TRACEPARENT
 * Connects to 127.0.0.1:PORT once a line arrives on stdin (so the test can
 * wait for the agent to probe the new executable), sends one GET with that
 * traceparent, reads the response to the end, prints its status line. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    char line[16];
    if (!fgets(line, sizeof(line), stdin))
        return 3;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
        return 4;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        return 5;
    char request[512];
    int n = snprintf(request, sizeof(request),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\ntraceparent: %s\r\n"
                     "Connection: close\r\n\r\n", argv[2], argv[1], argv[3]);
    if (SSL_write(ssl, request, n) != n)
        return 6;
    /* Connection: close: the response ends with the connection. */
    char response[4096];
    int got = 0, n_read;
    while (got < (int)sizeof(response) - 1 &&
           (n_read = SSL_read(ssl, response + got, sizeof(response) - 1 - got)) > 0)
        got += n_read;
    if (got <= 0)
        return 7;
    response[got] = 0;
    char *end = strstr(response, "\r\n");
    if (end)
        *end = 0;
    printf("%s\n", response);
    SSL_shutdown(ssl);
    close(fd);
    return 0;
}
