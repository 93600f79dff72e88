/* tls: the SPOP listener's server context (see tls.h). */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509.h>

const char *tls_error_string(char *buf, size_t size, const char *fallback)
{
	unsigned long e = ERR_peek_last_error();

	if (!e) {
		snprintf(buf, size, "%s", fallback);
		return buf;
	}
	ERR_error_string_n(e, buf, size);
	ERR_clear_error();
	return buf;
}

/* The private key is the one secret a stolen file gives away: refuse it
 * when every local user may read it. Group read is allowed, as Debian's
 * ssl-cert group does. */
static int check_key_mode(const char *key, char *err, size_t errsz)
{
	struct stat st;
	int fd = open(key, O_RDONLY | O_CLOEXEC);

	if (fd == -1) {
		snprintf(err, errsz, "tls_key %s: %s", key, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || (st.st_mode & S_IRWXO)) {
		snprintf(err, errsz, "tls_key %s: readable or writable by others (mode %03o); chmod 600 or 640 it", key,
			 (unsigned)(st.st_mode & 0777));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *client_ca, char *err, size_t errsz)
{
	SSL_CTX *ctx;
	char why[256];

	if (!cert[0] || !key[0]) {
		snprintf(err, errsz, "tls: tls_cert and tls_key must both be set");
		return NULL;
	}
	if (check_key_mode(key, err, errsz) == -1)
		return NULL;
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errsz, "tls: %s", tls_error_string(why, sizeof(why), "cannot create a context"));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* Writes resume from wherever the connection's buffer has moved. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				      SSL_MODE_RELEASE_BUFFERS);
	/* HAProxy keeps its agent connections for long; no session cache
	 * needed, and no tickets whose keys would live in this process. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
	/* HAProxy may close without close_notify; that is an ordinary EOF. */
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
	SSL_CTX_set_num_tickets(ctx, 0);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(err, errsz, "tls_cert %s: %s", cert, tls_error_string(why, sizeof(why), "cannot load"));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		snprintf(err, errsz, "tls_key %s: %s", key, tls_error_string(why, sizeof(why), "cannot load"));
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errsz, "tls_key %s does not match tls_cert %s", key, cert);
		goto fail;
	}
	if (client_ca[0]) {
		STACK_OF(X509_NAME) *names;

		if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
			snprintf(err, errsz, "tls_client_ca %s: %s", client_ca,
				 tls_error_string(why, sizeof(why), "cannot load"));
			goto fail;
		}
		names = SSL_load_client_CA_file(client_ca);
		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	ERR_clear_error();
	return ctx;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}
