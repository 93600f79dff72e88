/*
 * buf: one growable text buffer that fails loudly: after an allocation
 * failure every append is a no-op and buf_failed() says so, so a caller
 * checks once at the end instead of after every write, and never sends a
 * silently truncated document.
 */
#ifndef TOKENGATE_BUF_H
#define TOKENGATE_BUF_H

#include <stddef.h>

struct buf {
	char *p;
	size_t len, cap;
	int failed;
};

void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_append(struct buf *b, const char *s, size_t len);
int buf_failed(const struct buf *b);
/* Hands the text over (caller frees) and resets b; NULL if it failed. */
char *buf_take(struct buf *b, size_t *len);
void buf_free(struct buf *b);

#endif
