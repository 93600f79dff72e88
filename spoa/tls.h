/*
 * tls: the OpenSSL server context of the SPOP listener.
 *
 * HAProxy's server line `ssl verify required ca-file CA crt CLIENT.pem`
 * speaks TLS to the agent; the agent terminates it itself with the
 * certificate and key from tls_cert/tls_key, and with tls_client_ca set
 * it requires and verifies HAProxy's client certificate. The handshake and
 * every read and write run non-blocking on the event loop (conn.c); this
 * module only builds and checks the context.
 */
#ifndef TOKENGATE_TLS_H
#define TOKENGATE_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

/*
 * A server context from PEM files: cert (the certificate, then its chain),
 * key (its private key; refused when others may read it), client_ca (if
 * not empty: client certificates are required and verified against it).
 * TLS 1.2 and later only. NULL with a message in err on failure.
 */
SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *client_ca, char *err, size_t errsz);

/* The last OpenSSL error of this thread as text (and the queue cleared),
 * or `fallback` when there is none. */
const char *tls_error_string(char *buf, size_t size, const char *fallback);

#endif
