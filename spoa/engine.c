/*
 * engine: decisions. Until the budget engine lands every llm-request is
 * allowed to the configured default backend.
 */
#include "engine.h"

#include <stdlib.h>

struct engine {
	const struct config *cfg;
};

struct engine *engine_new(const struct config *cfg)
{
	struct engine *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->cfg = cfg;
	return e;
}

void engine_free(struct engine *e)
{
	free(e);
}

void engine_on_message(struct engine *e, const struct spop_msg *msg, struct ack *out)
{
	if (spop_str_eq(msg->name, "llm-request")) {
		ack_set_cstr(out, "action", "allow");
		ack_set_cstr(out, "backend", e->cfg->default_backend);
		ack_set_cstr(out, "reason", "ok");
	}
}
