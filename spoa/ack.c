/* ack: actions appended to an ACK (see ack.h). */
#include "ack.h"

#include <string.h>

static void put_set(struct ack *a, const char *name, const struct spop_data *d)
{
	uint8_t *q = a->p;

	if (spop_put_set_var(&q, a->end, SPOP_SCOPE_TXN, name, d) == -1) {
		a->dropped++;
		return;
	}
	a->p = q;
	a->nactions++;
}

void ack_set_str(struct ack *a, const char *name, const char *s, size_t len)
{
	struct spop_data d = spop_data_str(s, len);

	put_set(a, name, &d);
}

void ack_set_cstr(struct ack *a, const char *name, const char *s)
{
	ack_set_str(a, name, s, strlen(s));
}

void ack_set_int(struct ack *a, const char *name, int64_t v)
{
	struct spop_data d = spop_data_int(v);

	put_set(a, name, &d);
}

void ack_unset(struct ack *a, const char *name)
{
	uint8_t *q = a->p;

	if (spop_put_unset_var(&q, a->end, SPOP_SCOPE_TXN, name) == -1) {
		a->dropped++;
		return;
	}
	a->p = q;
	a->nactions++;
}
