/*
 * crypto: the server secret and the HMAC that API keys are stored as.
 * The only file that includes OpenSSL.
 *
 * Keys never appear in clear anywhere but in the request being decided:
 * the database holds hex(HMAC-SHA256(secret, key)).
 */
#ifndef TOKENGATE_CRYPTO_H
#define TOKENGATE_CRYPTO_H

#include <stddef.h>

#define CRYPTO_HMAC_HEX_LEN 64

/*
 * Loads the secret from path: the file's bytes, a trailing newline
 * stripped, at least 16 bytes. With create set and no file, makes one of
 * 32 random bytes (hex) with mode 0600. Refuses a file that group or
 * others can read or write. Returns 0, or -1 with err set.
 */
int crypto_load_secret(const char *path, int create, char *err, size_t errsz);

/* Uses these bytes as the secret (tests, fuzzing). 0, or -1 on no memory. */
int crypto_use_secret(const void *secret, size_t len);

/* hex(HMAC-SHA256(secret, key)) into out (65 bytes with the NUL). The
 * secret must be loaded. */
void crypto_key_hmac(const char *key, size_t len, char out[CRYPTO_HMAC_HEX_LEN + 1]);

/* hex(SHA-256(data)) into out (65 bytes with the NUL). */
void crypto_sha256_hex(const void *data, size_t len, char out[65]);

/* A new API key, "sk-tg-" and 40 random hex digits, into out (>= 47). */
int crypto_new_key(char *out, size_t size);

/* Compares in constant time (for tokens); true when equal. */
int crypto_equal(const void *a, const void *b, size_t len);

/* Wipes the secret from memory. */
void crypto_forget(void);

#endif
