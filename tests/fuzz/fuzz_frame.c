/*
 * libFuzzer target: the frame decoder as the connection code drives it.
 * The input is a stream of length-prefixed frames; each one is decoded,
 * its payload parsed by type and NOTIFY messages handed to the engine so
 * that the ACK writer runs too. Must never read out of bounds or crash.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ack.h"
#include "config.h"
#include "crypto.h"
#include "engine.h"
#include "spop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config cfg;
	static struct engine *engine;
	static struct spop_msg msg;
	uint8_t out[16384];
	size_t off = 0;

	if (!engine) {
		config_defaults(&cfg);
		crypto_use_secret("fuzzing-secret-0123456789", 25);
		engine = engine_new(&cfg, policy_new(), 1.8e9);
	}
	while (off < size) {
		struct spop_frame f;
		uint32_t len;
		int r = spop_peek_length(data + off, size - off, 65536, &len);

		if (r != 1 || size - off - 4 < len)
			break;
		/* A copy of exactly the frame, so ASan sees any overread. */
		uint8_t *frame = malloc(len ? len : 1);
		memcpy(frame, data + off + 4, len);
		if (spop_get_frame(frame, len, &f) == 0) {
			if (f.type == SPOP_FRAME_HAPROXY_HELLO) {
				struct spop_hello h;

				if (spop_get_hello(f.payload, f.payload_len, &h) == 0)
					(void)spop_hello_check(&h);
			} else if (f.type == SPOP_FRAME_HAPROXY_DISCONNECT) {
				struct spop_disconnect d;

				(void)spop_get_disconnect(f.payload, f.payload_len, &d);
			} else if (f.type == SPOP_FRAME_NOTIFY) {
				const uint8_t *p = f.payload, *end = f.payload + f.payload_len;
				struct ack a = {.p = out, .end = out + sizeof(out)};

				while (p < end && spop_get_message(&p, end, &msg) == 0)
					engine_on_message(engine, 1.8e9, &msg, &a);
			}
		}
		free(frame);
		off += 4 + (size_t)len;
	}
	batch_free(engine_take_batch(engine, 1.8e9, false));
	return 0;
}
