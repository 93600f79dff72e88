/*
 * ratelog: a bound on how many lines one kind of message writes to the log.
 * At most `burst` lines per `period_s`; the rest are held back and counted,
 * and reported as one summary line ("suppressed K similar messages in the
 * last S s") when that kind is next written, or by ratelog_flush() from a
 * timer when the flood has stopped. A peer opening thousands of bad
 * connections then costs a few lines a second, not one line each.
 *
 * Pure: no I/O and no clock; the caller passes the time and writes the
 * lines. It decides what is written, never what is counted: metrics keep
 * exact counts whatever is held back here.
 */
#ifndef TOKENGATE_RATELOG_H
#define TOKENGATE_RATELOG_H

#include <stdbool.h>
#include <stdint.h>

struct ratelog {
	unsigned burst;          /* lines per period; >= 1 */
	double period_s;
	bool started;            /* a period has been opened */
	double window_start;     /* start of the current period */
	unsigned in_window;      /* lines let through in it */
	uint64_t held;           /* held back since the last summary */
	double first_held;       /* when the first of them came */
};

/* Starts r with no period open: the first message is always written. */
void ratelog_init(struct ratelog *r, unsigned burst, double period_s);

/*
 * One message at time now. Returns true when it may be written, false
 * when it is held back (and counted). On true, *held is the number of
 * messages held back before it and not yet reported (0 most of the time):
 * when non-zero, write the summary first, with *held_s, the seconds since
 * the first of them. A clock that goes back opens a new period.
 */
bool ratelog_allow(struct ratelog *r, double now, uint64_t *held, double *held_s);

/*
 * For a periodic timer: when messages were held back in a period that has
 * ended, returns their number (and *held_s) and forgets them, so that the
 * summary of a flood that stopped is still written, once. 0 otherwise.
 */
uint64_t ratelog_flush(struct ratelog *r, double now, double *held_s);

#endif
