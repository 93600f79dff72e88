/* crypto: HMAC-SHA256 with the secret's inner and outer pads hashed once
 * at load, so a request costs two SHA-256 finals on copies of them. */
#include "crypto.h"
#include "tokenfile.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SHA256_BLOCK 64
#define SHA256_LEN 32
#define SECRET_MAX 1024

static EVP_MD_CTX *inner, *outer, *work;

static void hex(const unsigned char *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int create_secret(const char *path, char *err, size_t errsz)
{
	unsigned char raw[32];
	char text[2 * sizeof(raw) + 2];
	int fd;

	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		snprintf(err, errsz, "secret: no randomness from OpenSSL");
		return -1;
	}
	hex(raw, sizeof(raw), text);
	OPENSSL_cleanse(raw, sizeof(raw));
	strcat(text, "\n");
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		snprintf(err, errsz, "secret_file %s: %s", path, strerror(errno));
		return -1;
	}
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fsync(fd) == -1) {
		snprintf(err, errsz, "secret_file %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	OPENSSL_cleanse(text, sizeof(text));
	close(fd);
	return 0;
}

int crypto_load_secret(const char *path, int create, char *err, size_t errsz)
{
	unsigned char secret[SECRET_MAX + 2];
	ssize_t n;
	size_t len;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1 && errno == ENOENT && create) {
		if (create_secret(path, err, errsz) == -1)
			return -1;
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd == -1) {
		snprintf(err, errsz, "secret_file %s: %s", path, strerror(errno));
		return -1;
	}
	if (tokenfile_owner_only(fd, "secret_file", path, err, errsz) == -1) {
		close(fd);
		return -1;
	}
	n = read(fd, secret, sizeof(secret));
	close(fd);
	if (n < 0 || n > SECRET_MAX) {
		snprintf(err, errsz, "secret_file %s: %s", path, n < 0 ? strerror(errno) : "larger than 1024 bytes");
		return -1;
	}
	len = (size_t)n;
	while (len > 0 && (secret[len - 1] == '\n' || secret[len - 1] == '\r'))
		len--;
	if (len < 16) {
		snprintf(err, errsz, "secret_file %s: shorter than 16 bytes", path);
		OPENSSL_cleanse(secret, sizeof(secret));
		return -1;
	}
	if (crypto_use_secret(secret, len) == -1) {
		snprintf(err, errsz, "secret: out of memory");
		OPENSSL_cleanse(secret, sizeof(secret));
		return -1;
	}
	OPENSSL_cleanse(secret, sizeof(secret));
	return 0;
}

int crypto_use_secret(const void *secret_bytes, size_t len)
{
	const unsigned char *secret = secret_bytes;
	unsigned char key[SHA256_BLOCK], pad[SHA256_BLOCK];

	/* RFC 2104: a key longer than a block is hashed first. */
	memset(key, 0, sizeof(key));
	if (len > SHA256_BLOCK) {
		unsigned int dl;

		EVP_Digest(secret, len, key, &dl, EVP_sha256(), NULL);
	} else {
		memcpy(key, secret, len);
	}
	if (!inner) {
		inner = EVP_MD_CTX_new();
		outer = EVP_MD_CTX_new();
		work = EVP_MD_CTX_new();
	}
	if (!inner || !outer || !work)
		return -1;
	for (int i = 0; i < SHA256_BLOCK; i++)
		pad[i] = key[i] ^ 0x36;
	EVP_DigestInit_ex(inner, EVP_sha256(), NULL);
	EVP_DigestUpdate(inner, pad, sizeof(pad));
	for (int i = 0; i < SHA256_BLOCK; i++)
		pad[i] = key[i] ^ 0x5c;
	EVP_DigestInit_ex(outer, EVP_sha256(), NULL);
	EVP_DigestUpdate(outer, pad, sizeof(pad));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(pad, sizeof(pad));
	return 0;
}

void crypto_key_hmac(const char *key, size_t len, char out[CRYPTO_HMAC_HEX_LEN + 1])
{
	unsigned char ih[SHA256_LEN], oh[SHA256_LEN];
	unsigned int n;

	EVP_MD_CTX_copy_ex(work, inner);
	EVP_DigestUpdate(work, key, len);
	EVP_DigestFinal_ex(work, ih, &n);
	EVP_MD_CTX_copy_ex(work, outer);
	EVP_DigestUpdate(work, ih, sizeof(ih));
	EVP_DigestFinal_ex(work, oh, &n);
	hex(oh, sizeof(oh), out);
	OPENSSL_cleanse(ih, sizeof(ih));
}

void crypto_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[SHA256_LEN];
	unsigned int n;

	EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
	hex(md, sizeof(md), out);
}

int crypto_new_key(char *out, size_t size)
{
	unsigned char raw[20];

	if (size < 6 + 2 * sizeof(raw) + 1 || RAND_bytes(raw, sizeof(raw)) != 1)
		return -1;
	memcpy(out, "sk-tg-", 6);
	hex(raw, sizeof(raw), out + 6);
	OPENSSL_cleanse(raw, sizeof(raw));
	return 0;
}

int crypto_equal(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

void crypto_forget(void)
{
	EVP_MD_CTX_free(inner);
	EVP_MD_CTX_free(outer);
	EVP_MD_CTX_free(work);
	inner = outer = work = NULL;
}
