/* ratelog: a bound on log lines per kind of message (see ratelog.h). */
#include "ratelog.h"

void ratelog_init(struct ratelog *r, unsigned burst, double period_s)
{
	*r = (struct ratelog){.burst = burst ? burst : 1, .period_s = period_s};
}

/* True when the next message opens a new period: none is open yet, the
 * open one has ended, or the clock went back before its start. */
static bool period_over(const struct ratelog *r, double now)
{
	return !r->started || now - r->window_start >= r->period_s || now < r->window_start;
}

/* Hands back what was held and forgets it. */
static uint64_t take_held(struct ratelog *r, double now, double *held_s)
{
	uint64_t n = r->held;

	*held_s = n ? now - r->first_held : 0.0;
	r->held = 0;
	return n;
}

bool ratelog_allow(struct ratelog *r, double now, uint64_t *held, double *held_s)
{
	*held = 0;
	*held_s = 0.0;
	if (period_over(r, now)) {
		r->started = true;
		r->window_start = now;
		r->in_window = 0;
	}
	if (r->in_window < r->burst) {
		r->in_window++;
		*held = take_held(r, now, held_s);
		return true;
	}
	if (r->held++ == 0)
		r->first_held = now;
	return false;
}

uint64_t ratelog_flush(struct ratelog *r, double now, double *held_s)
{
	*held_s = 0.0;
	if (!r->held || !period_over(r, now))
		return 0;
	return take_held(r, now, held_s);
}
