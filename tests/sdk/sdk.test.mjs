// The official OpenAI Node SDK as the client of tokengate: through HAProxy it
// gets normal completions, parses every fallback HAProxy renders as a normal
// completion (JSON and stream), and gets a RateLimitError whose Retry-After
// it can read for an over-budget user.
//
// Run by tests/e2e/test_openai_sdk.sh, which starts the mock provider, the
// agent and HAProxy, and sets:
//   TG_SDK_BASE_URL     e.g. http://127.0.0.1:8080/v1 (required)
//   TG_SDK_USER         X-User of the normal requests (default sdk-user)
//   TG_SDK_BROKE_USER   X-User of a user whose daily budget is spent
//                       (default sdk-broke)
//   TG_SDK_TIMEOUT_MS   the route's timeout (default 1000): bounds the wait
//                       for the timeout fallback
// Failures are forced per request with the mock provider's x-mock-mode header,
// which HAProxy passes on to it.
//
//   cd tests/sdk && npm ci && TG_SDK_BASE_URL=... node --test

import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.TG_SDK_BASE_URL;
const user = process.env.TG_SDK_USER || 'sdk-user';
const brokeUser = process.env.TG_SDK_BROKE_USER || 'sdk-broke';
const routeTimeoutMs = Number(process.env.TG_SDK_TIMEOUT_MS || 1000);

if (!baseURL) {
	throw new Error('TG_SDK_BASE_URL is not set (e.g. http://127.0.0.1:8080/v1)');
}

// maxRetries 0: a 429 or a 5xx must reach the test as it is, not be retried.
const client = new OpenAI({
	baseURL,
	apiKey: 'sk-tokengate-sdk-test',
	maxRetries: 0,
	timeout: 15000,
	defaultHeaders: { 'x-user': user },
});

// The same with the SDK's default retries, for the provider resetting the
// connection: HAProxy 2.6 answers nothing then, on any request after the
// first of a client connection, and closes that connection so that the client
// retries (its keep-alive contract); the retry, on a new connection, gets the
// fallback. With maxRetries 0 the SDK reports "Connection error." instead.
const retryingClient = new OpenAI({
	baseURL,
	apiKey: 'sk-tokengate-sdk-test',
	maxRetries: 2,
	timeout: 15000,
	defaultHeaders: { 'x-user': user },
});

const request = {
	model: 'gpt-4o-mini',
	max_tokens: 16,
	messages: [
		{ role: 'system', content: 'You are terse.' },
		{ role: 'user', content: 'Is my order on its way?\n\nIt is order 42.' },
	],
};

// The text HAProxy renders for this request: the route's computed fallback
// carries the first paragraph of the last user message.
const firstParagraph = 'Is my order on its way?';

async function collect(stream) {
	let text = '';
	let chunks = 0;
	let finish = null;
	for await (const chunk of stream) {
		assert.equal(chunk.object, 'chat.completion.chunk');
		chunks++;
		for (const choice of chunk.choices) {
			if (typeof choice.delta?.content === 'string') text += choice.delta.content;
			if (choice.finish_reason) finish = choice.finish_reason;
		}
	}
	return { text, chunks, finish };
}

test('a normal completion', async () => {
	const { data, response } = await client.chat.completions.create(request).withResponse();
	assert.equal(response.status, 200);
	assert.equal(response.headers.get('x-llm-decision'), 'allow/ok');
	assert.equal(response.headers.get('x-llm-fallback'), null);
	assert.equal(data.object, 'chat.completion');
	assert.ok(data.choices[0].message.content.length > 0, 'content is not empty');
	assert.ok(data.usage.completion_tokens > 0, 'usage from the provider');
});

test('a normal stream', async () => {
	const { data: stream, response } = await client.chat.completions
		.create({ ...request, stream: true })
		.withResponse();
	assert.equal(response.headers.get('x-llm-fallback'), null);
	const { text, finish } = await collect(stream);
	assert.ok(text.length > 0, 'the deltas carry text');
	assert.ok(finish, 'a chunk has a finish_reason');
});

// Each way the provider can fail, and the reason HAProxy gives. The 429 comes
// last: it opens the provider's circuit breaker for its Retry-After, after
// which the agent itself answers with the fallback (provider_unhealthy).
const failures = [
	{ mode: 'error500', reasons: ['provider_error'] },
	{ mode: 'error503', reasons: ['provider_error'] },
	{ mode: 'hang', reasons: ['provider_timeout'], slow: true },
	{ mode: 'reset', reasons: ['provider_unavailable'], retries: true },
	{ mode: 'ratelimit429', reasons: ['provider_rate_limited', 'provider_unhealthy'] },
];

for (const f of failures) {
	const headers = { 'x-mock-mode': f.mode, 'x-mock-retry-after': '1' };
	const bound = (f.slow ? routeTimeoutMs : 0) + (f.retries ? 4000 : 1000);
	const sdk = f.retries ? retryingClient : client;

	test(`provider ${f.mode}: the fallback parses as a chat.completion`, async () => {
		const t0 = Date.now();
		const { data, response } = await sdk.chat.completions
			.create(request, { headers })
			.withResponse();
		const took = Date.now() - t0;
		assert.equal(response.status, 200);
		assert.ok(f.reasons.includes(response.headers.get('x-llm-fallback')),
			`x-llm-fallback is ${response.headers.get('x-llm-fallback')}, want ${f.reasons.join(' or ')}`);
		assert.equal(data.object, 'chat.completion');
		assert.equal(data.choices[0].message.role, 'assistant');
		const content = data.choices[0].message.content;
		assert.ok(content.length > 0, 'content is not empty');
		assert.ok(content.includes(firstParagraph), `content ${JSON.stringify(content)} has the first paragraph`);
		assert.ok(!content.includes('order 42'), 'only the first paragraph');
		assert.ok(took < bound, `answered in ${took} ms, within ${bound} ms`);
	});

	test(`provider ${f.mode}: the fallback parses as a stream`, async () => {
		const t0 = Date.now();
		const { data: stream, response } = await sdk.chat.completions
			.create({ ...request, stream: true }, { headers })
			.withResponse();
		assert.equal(response.status, 200);
		assert.ok(f.reasons.includes(response.headers.get('x-llm-fallback')),
			`x-llm-fallback is ${response.headers.get('x-llm-fallback')}, want ${f.reasons.join(' or ')}`);
		const { text, chunks, finish } = await collect(stream);
		const took = Date.now() - t0;
		assert.ok(chunks > 0, 'at least one chunk');
		assert.ok(text.includes(firstParagraph), `streamed text ${JSON.stringify(text)} has the first paragraph`);
		assert.equal(finish, 'stop');
		assert.ok(took < bound, `answered in ${took} ms, within ${bound} ms`);
	});
}

test('an over-budget user gets RateLimitError with a Retry-After', async () => {
	let err;
	try {
		await client.chat.completions.create(request, { headers: { 'x-user': brokeUser } });
	} catch (e) {
		err = e;
	}
	assert.ok(err, 'the request was refused');
	assert.ok(err instanceof OpenAI.RateLimitError, `a RateLimitError, got ${err?.constructor?.name}: ${err?.message}`);
	assert.equal(err.status, 429);
	// SDK 6 hands the headers over as a fetch Headers object.
	const retryAfter = typeof err.headers?.get === 'function' ? err.headers.get('retry-after') : err.headers?.['retry-after'];
	assert.match(String(retryAfter), /^[0-9]+$/, `Retry-After ${retryAfter} is an integer`);
	assert.ok(Number(retryAfter) > 0, `Retry-After ${retryAfter} is positive`);
	assert.equal(err.error?.code ?? err.code, 'rate_limit_exceeded');
});
