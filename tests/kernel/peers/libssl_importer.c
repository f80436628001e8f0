/* A program linked against the shared libssl: it imports SSL_read and
 * SSL_write (undefined symbols) and defines neither.  It waits on stdin so
 * that the agent's exec rescans find it alive. */
#include <openssl/ssl.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	if (argc > 99) {   /* never true: only makes the imports real */
		SSL_read(NULL, NULL, 0);
		SSL_write(NULL, NULL, 0);
	}
	return getchar() == EOF ? 0 : 1;
}
