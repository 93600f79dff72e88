/* breaker: per-provider circuit breaker (see breaker.h). */
#include "breaker.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

const double breaker_lat_bounds[BREAKER_LAT_BUCKETS - 1] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

static const char *const state_names[BREAKER_STATE_COUNT] = {"closed", "half_open", "open"};

const char *breaker_state_str(enum breaker_state s)
{
	return (unsigned)s < BREAKER_STATE_COUNT ? state_names[s] : "?";
}

void breaker_init(struct breaker *b, const char *name, double now)
{
	memset(b, 0, sizeof(*b));
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->state = BREAKER_CLOSED;
	b->since = now;
	b->servers_up = -1;
	b->dirty = true;
}

static void set_state(struct breaker *b, enum breaker_state s, double now, const char *reason)
{
	if (b->state == s)
		return;
	LOG_INFO("provider %s: breaker %s -> %s%s%s", b->name, breaker_state_str(b->state), breaker_state_str(s),
		 reason ? ": " : "", reason ? reason : "");
	b->state = s;
	b->since = now;
	b->dirty = true;
	if (s == BREAKER_OPEN) {
		b->opened_total++;
		b->reason = reason;
		b->probes_in_flight = 0;
	}
	if (s == BREAKER_HALF_OPEN)
		b->probe_successes = 0;
	if (s == BREAKER_CLOSED) {
		b->consecutive = 0;
		/* A fresh window: the failures that opened it are history. */
		memset(b->win, 0, sizeof(b->win));
	}
}

static void open_for(struct breaker *b, double now, double seconds, const char *reason)
{
	b->open_until = now + seconds;
	b->dirty = true;
	set_state(b, BREAKER_OPEN, now, reason);
}

bool breaker_allow(struct breaker *b, const struct policy_provider *p, double now, bool *probe)
{
	*probe = false;
	if (b->state == BREAKER_OPEN) {
		if (now < b->open_until)
			return false;
		set_state(b, BREAKER_HALF_OPEN, now, NULL);
	}
	if (b->state == BREAKER_HALF_OPEN) {
		if (b->probes_in_flight >= p->half_open_probes)
			return false;
		b->probes_in_flight++;
		b->dirty = true;
		*probe = true;
	}
	return true;
}

void breaker_window(const struct breaker *b, const struct policy_provider *p, double now, uint32_t *req,
		    uint32_t *fail)
{
	int64_t cur = (int64_t)now;

	*req = *fail = 0;
	for (int i = 0; i < p->window_s && i < BREAKER_WINDOW_MAX; i++) {
		int64_t sec = cur - i;
		int slot = (int)(((sec % BREAKER_WINDOW_MAX) + BREAKER_WINDOW_MAX) % BREAKER_WINDOW_MAX);

		if (b->win[slot].sec == sec) {
			*req += b->win[slot].req;
			*fail += b->win[slot].fail;
		}
	}
}

static void record(struct breaker *b, double now, bool failure)
{
	int64_t sec = (int64_t)now;
	int slot = (int)(((sec % BREAKER_WINDOW_MAX) + BREAKER_WINDOW_MAX) % BREAKER_WINDOW_MAX);

	if (b->win[slot].sec != sec) {
		b->win[slot].sec = sec;
		b->win[slot].req = b->win[slot].fail = 0;
	}
	b->win[slot].req++;
	b->win[slot].fail += failure;
	b->requests_total++;
	b->failures_total += failure;
	b->dirty = true;
}

static void probe_outcome(struct breaker *b, const struct policy_provider *p, double now, bool failure)
{
	if (b->probes_in_flight > 0)
		b->probes_in_flight--;
	if (b->state != BREAKER_HALF_OPEN)
		return;
	if (failure) {
		open_for(b, now, p->open_s, "probe_failed");
		return;
	}
	if (++b->probe_successes >= p->half_open_probes)
		set_state(b, BREAKER_CLOSED, now, NULL);
}

void breaker_result(struct breaker *b, const struct policy_provider *p, double now, bool failure, bool probe)
{
	uint32_t req, fail;

	record(b, now, failure);
	b->consecutive = failure ? b->consecutive + 1 : 0;
	if (probe) {
		probe_outcome(b, p, now, failure);
		return;
	}
	if (b->state != BREAKER_CLOSED || !failure)
		return;
	if (b->consecutive >= p->consecutive_failures) {
		open_for(b, now, p->open_s, "consecutive_failures");
		return;
	}
	breaker_window(b, p, now, &req, &fail);
	if (req >= (uint32_t)p->min_requests && (double)fail >= p->error_rate * (double)req)
		open_for(b, now, p->open_s, "error_rate");
}

void breaker_rate_limited(struct breaker *b, const struct policy_provider *p, double now, double retry_after_s,
			  bool probe)
{
	record(b, now, true);
	b->consecutive++;
	if (probe && b->probes_in_flight > 0)
		b->probes_in_flight--;
	/* The provider says when to come back: believe it, within reason. */
	if (retry_after_s <= 0)
		retry_after_s = p->open_s;
	if (retry_after_s > 3600)
		retry_after_s = 3600;
	open_for(b, now, retry_after_s, "rate_limited");
}

void breaker_probe_done(struct breaker *b)
{
	if (b->probes_in_flight > 0) {
		b->probes_in_flight--;
		b->dirty = true;
	}
}

void breaker_servers(struct breaker *b, const struct policy_provider *p, int servers_up, double now)
{
	if (b->servers_up != servers_up) {
		b->servers_up = servers_up;
		b->dirty = true;
	}
	if (servers_up == 0 && b->state != BREAKER_OPEN)
		open_for(b, now, p->open_s, "haproxy_down");
}

void breaker_latency(struct breaker *b, double seconds)
{
	int i = 0;

	if (seconds < 0)
		seconds = 0;
	while (i < BREAKER_LAT_BUCKETS - 1 && seconds > breaker_lat_bounds[i])
		i++;
	b->lat_hist[i]++;
	b->lat_sum += seconds;
}
