/*
 * fallback: the deterministic answer of a route whose providers cannot
 * answer. "static" is the route's text; "computed" is that text followed
 * by the first paragraph of the last user message found in the start of
 * the request body (HAProxy sends at most a few KB of it), so the user
 * sees their question was received.
 *
 * The body slice may be cut anywhere and is never parsed as a whole: a
 * tolerant scanner looks for the last "role": "user" and the "content"
 * of the same message (a string, or an array of parts with "text"). Work
 * is linear in the slice; the answer is bounded by the route's
 * fallback_max_bytes and is valid UTF-8.
 */
#ifndef TOKENGATE_FALLBACK_H
#define TOKENGATE_FALLBACK_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"

/*
 * Writes the route's fallback answer into out (size bytes, NUL-terminated,
 * never more than the route's bound) and returns its length. For routes
 * without a text fallback (none, backend) writes nothing and returns 0.
 */
size_t fallback_compose(const struct policy_route *r, const uint8_t *body, size_t len, char *out, size_t size);

/*
 * Finds the first paragraph of the last user message in a JSON chat body
 * slice; decodes JSON escapes into out (NUL-terminated). Returns its
 * length, or 0 when there is none.
 */
size_t fallback_last_user_paragraph(const uint8_t *body, size_t len, char *out, size_t size);

#endif
