/*
 * breaker: the circuit breaker of one provider. Pure state and time
 * arithmetic on the loop thread: no I/O, the caller passes `now`.
 *
 *   closed     requests pass; each outcome lands in a sliding window of
 *              one-second buckets. Opens on `consecutive_failures` in a
 *              row, or when the window holds at least `min_requests` and
 *              failures/requests >= `error_rate`.
 *   open       nothing passes until open_until (open_s later, or the
 *              provider's own Retry-After after a 429); then half-open.
 *   half_open  at most `half_open_probes` requests in flight; one failed
 *              probe opens again, `half_open_probes` successes close it.
 *
 * HAProxy's own view counts too: a backend with no server up (nbsrv 0)
 * is skipped while it lasts, without touching the breaker's history.
 */
#ifndef TOKENGATE_BREAKER_H
#define TOKENGATE_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include "policy.h"

#define BREAKER_WINDOW_MAX 300
#define BREAKER_LAT_BUCKETS 10
/* Upper bounds (s) of the provider latency histogram; the last is +Inf. */
extern const double breaker_lat_bounds[BREAKER_LAT_BUCKETS - 1];

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_HALF_OPEN = 1, BREAKER_OPEN = 2, BREAKER_STATE_COUNT };

struct breaker {
	enum breaker_state state;
	double since;
	double open_until;
	const char *reason; /* static string: why it last opened */
	int consecutive;
	int probes_in_flight;
	int probe_successes;
	int servers_up; /* -1 unknown */
	uint64_t opened_total, requests_total, failures_total;
	bool dirty;     /* changed since the last health snapshot */
	uint64_t lat_hist[BREAKER_LAT_BUCKETS]; /* not cumulative */
	double lat_sum;
	struct {
		int64_t sec;
		uint32_t req, fail;
	} win[BREAKER_WINDOW_MAX];
	char name[64];
};

void breaker_init(struct breaker *b, const char *name, double now);

/* May a request go to this provider now? Moves open -> half-open when its
 * time has come. *probe is set when the request is a half-open probe (the
 * caller must report its outcome with probe = true). */
bool breaker_allow(struct breaker *b, const struct policy_provider *p, double now, bool *probe);

/* An answer (failure = 5xx, timeout, refused) or its absence. */
void breaker_result(struct breaker *b, const struct policy_provider *p, double now, bool failure, bool probe);

/* A 429: open now for retry_after_s (the provider's Retry-After), or the
 * provider's open_s when it gave none. */
void breaker_rate_limited(struct breaker *b, const struct policy_provider *p, double now, double retry_after_s,
			  bool probe);

/* A probe that was let through but never reported (e.g. the request was
 * refused later): frees its slot. */
void breaker_probe_done(struct breaker *b);

/* HAProxy's count of usable servers for the backend, from the request.
 * None (its health checks failed) opens the breaker for open_s. */
void breaker_servers(struct breaker *b, const struct policy_provider *p, int servers_up, double now);

/* Requests and failures in the last p->window_s seconds. */
void breaker_window(const struct breaker *b, const struct policy_provider *p, double now, uint32_t *req,
		    uint32_t *fail);

/* Time from the decision to the provider's answer (or its end). */
void breaker_latency(struct breaker *b, double seconds);

const char *breaker_state_str(enum breaker_state s);

#endif
