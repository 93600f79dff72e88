/*
 * redact: masks secrets and personal data in text before it is logged:
 * API keys (sk-..., and any token after "Bearer "), e-mail addresses and
 * card-like numbers (13 to 19 digits, spaces or dashes between groups).
 * Each becomes [REDACTED:key], [REDACTED:email] or [REDACTED:card].
 *
 * Deliberately greedy: a false positive costs a few characters of log, a
 * false negative leaks a secret. Linear in the input; pure.
 */
#ifndef TOKENGATE_REDACT_H
#define TOKENGATE_REDACT_H

#include <stddef.h>

/* Writes the redacted text into out (NUL-terminated, truncated to size)
 * and returns its length. */
size_t redact(const char *in, size_t len, char *out, size_t size);

#endif
