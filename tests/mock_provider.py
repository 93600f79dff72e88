#!/usr/bin/python3
"""Mock OpenAI-compatible LLM provider for tokengate end-to-end tests and benchmarks.

Standard library only (runs under Debian 12's /usr/bin/python3, 3.11).

Endpoints
---------
  POST /v1/chat/completions   chat.completion JSON, or SSE stream when "stream": true
  GET  /v1/models             small OpenAI-shaped model list
  GET  /v1/models/<id>        one model
  GET  /healthz               200 "ok" (for HAProxy health checks)
  GET  /__mock/stats          accounting (see Stats below)
  GET  /__mock/last           headers/body of the last /v1 (or unknown-path) request
  GET  /__mock/mode           current server-wide mode settings
  POST /__mock/mode           {"mode": "...", "retry_after": 5, "delay_ms": 0, "healthy": true}
  POST /__mock/reset          zero stats, forget last request, mode back to "ok"

Modes (server-wide via POST /__mock/mode, per request via header x-mock-mode;
the header wins):
  ok            normal answer
  error500      500 + OpenAI error JSON (type "server_error")
  error503      503 + OpenAI error JSON (type "server_error")
  ratelimit429  429 + Retry-After + x-ratelimit-* + OpenAI rate limit error JSON
  slow          wait delay_ms (or header x-mock-delay-ms) then answer normally;
                when streaming the delay is spread between the SSE events
  hang          read the request, never answer; hold the socket until the client
                goes away or the server stops
  reset         read the request, then close the connection with an RST

Other request headers understood:
  x-mock-completion-tokens: N   force the (untruncated) completion length
  x-mock-delay-ms: N            delay for "slow" mode
  x-mock-retry-after: N         Retry-After seconds for "ratelimit429"
  x-user: NAME                  user for accounting (else the Bearer token, else "anonymous")
  x-request-id: ID              echoed back (generated when absent)

Token formula (deterministic):
  prompt_tokens     = 3 + sum over messages of (ceil(len(utf8(content)) / 4) + 4)
                      where content is a string, or a list of parts whose "text"
                      fields are concatenated (other parts count as 0 bytes)
  N                 = x-mock-completion-tokens if given, else 8 + prompt_tokens % 17
  limit             = max_completion_tokens if given, else max_tokens if given
  completion_tokens = min(limit, N)   (finish_reason "length" when limit < N)
  total_tokens      = prompt_tokens + completion_tokens
The content is completion_tokens whitespace-separated words (one token each).
"""

import argparse
import ipaddress
import json
import os
import secrets
import select
import signal
import socket
import socketserver
import string
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "error500", "error503", "ratelimit429", "slow", "hang", "reset")
DEFAULT_MODEL = "gpt-4o-mini"
SYSTEM_FINGERPRINT = "fp_m0ck7e5t01"
MAX_BODY = 64 * 1024 * 1024
WORDS = ("This", "is", "a", "mock", "completion", "from", "the", "tokengate",
         "test", "provider.")
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini")
MODELS_CREATED = 1715367049
RATELIMIT_REQUESTS = 10000
RATELIMIT_TOKENS = 10000000
_ID_ALPHABET = string.ascii_letters + string.digits

STOP = threading.Event()


# --------------------------------------------------------------------------
# Shared state
# --------------------------------------------------------------------------

class State:
    def __init__(self, name, mode):
        self.lock = threading.Lock()
        self.name = name
        self.initial_mode = mode
        self.quiet = False
        self._reset_locked(mode)

    def _reset_locked(self, mode="ok"):
        self.mode = mode
        self.retry_after = 5
        self.delay_ms = 0
        self.healthy = True
        self.requests = 0
        self.by_mode = {}
        self.by_status = {}
        self.ok_requests = 0
        self.streamed_requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.users = {}
        self.last = None

    def reset(self):
        with self.lock:
            self._reset_locked("ok")

    def settings(self):
        with self.lock:
            return {"mode": self.mode, "retry_after": self.retry_after,
                    "delay_ms": self.delay_ms, "healthy": self.healthy}

    def count_request(self, mode):
        with self.lock:
            self.requests += 1
            self.by_mode[mode] = self.by_mode.get(mode, 0) + 1

    def count_status(self, status):
        key = str(status)
        with self.lock:
            self.by_status[key] = self.by_status.get(key, 0) + 1

    def count_success(self, user, prompt_tokens, completion_tokens, streamed):
        with self.lock:
            self.ok_requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if streamed:
                self.streamed_requests += 1
            u = self.users.get(user)
            if u is None:
                u = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                     "total_tokens": 0, "streamed_requests": 0}
                self.users[user] = u
            u["requests"] += 1
            u["prompt_tokens"] += prompt_tokens
            u["completion_tokens"] += completion_tokens
            u["total_tokens"] += prompt_tokens + completion_tokens
            if streamed:
                u["streamed_requests"] += 1

    def snapshot(self):
        with self.lock:
            return {
                "name": self.name,
                "mode": self.mode,
                "requests": self.requests,
                "modes": dict(self.by_mode),
                "status": dict(self.by_status),
                "ok_requests": self.ok_requests,
                "streamed_requests": self.streamed_requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "users": {k: dict(v) for k, v in self.users.items()},
            }


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, status, message, etype="invalid_request_error",
                 param=None, code=None, close=False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.param = param
        self.code = code
        self.close = close


def error_body(message, etype="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def content_bytes(content):
    """UTF-8 byte length of a message content (string or list of parts)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"].encode("utf-8"))
            elif isinstance(part, str):
                total += len(part.encode("utf-8"))
        return total
    return 0


def count_prompt_tokens(messages):
    total = 3
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        n = content_bytes(content)
        total += (n + 3) // 4 + 4
    return total


def make_words(n):
    return [WORDS[i % len(WORDS)] for i in range(n)]


def new_completion_id():
    return "chatcmpl-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(29))


def parse_int(value, what, minimum=0):
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            value = value.strip()
        n = int(value)
        if isinstance(value, float) and value != n:
            raise ValueError
    except (TypeError, ValueError):
        raise HttpError(400, "Invalid value for %s: %r" % (what, value), param=what)
    if n < minimum:
        raise HttpError(400, "Invalid value for %s: must be >= %d" % (what, minimum),
                        param=what)
    return n


# --------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-openai/1.0"

    def version_string(self):
        return self.server_version

    # ---- plumbing ---------------------------------------------------------

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    @property
    def state(self):
        return self.server.state

    def log_message(self, fmt, *args):
        if self.state.quiet:
            return
        sys.stderr.write("[mock:%s] %s - %s\n" % (self.state.name,
                                                  self.address_string(), fmt % args))

    def _req_id(self):
        rid = getattr(self, "_request_id", None)
        if rid is None:
            rid = (self.headers.get("x-request-id") or "").strip() if self.headers else ""
            if not rid:
                rid = "req_" + uuid.uuid4().hex
            self._request_id = rid
        return rid

    def _start(self, status, ctype, extra=None):
        """Queue status line and common headers (not yet sent)."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("x-mock-provider", self.state.name)
        self.send_header("x-request-id", self._req_id())
        for k, v in (extra or ()):
            self.send_header(k, v)

    def _send(self, status, body, ctype="application/json", extra=None, close=False):
        """Send a complete response with Content-Length in a single write."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":")).encode("utf-8")
        elif isinstance(body, str):
            body = body.encode("utf-8")
        self._start(status, ctype, extra)
        self.send_header("Content-Length", str(len(body)))
        if close or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _send_error(self, status, message, etype="invalid_request_error",
                    param=None, code=None, extra=None, close=False):
        self._send(status, error_body(message, etype, param, code), extra=extra,
                   close=close)

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return self._read_chunked()
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl.strip())
            if n < 0:
                raise ValueError
        except ValueError:
            raise HttpError(400, "Invalid Content-Length", close=True)
        if n > MAX_BODY:
            raise HttpError(413, "Request body too large", close=True)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionError("short body")
        return data

    def _read_chunked(self):
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("eof in chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "Invalid chunked encoding", close=True)
            if size == 0:
                while True:  # trailers
                    t = self.rfile.readline(65537)
                    if not t or t in (b"\r\n", b"\n"):
                        break
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise HttpError(413, "Request body too large", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("short chunk")
            parts.append(chunk)
            self.rfile.readline(16)  # CRLF after chunk

    def _path(self):
        return self.path.split("?", 1)[0]

    def _user(self):
        u = (self.headers.get("x-user") or "").strip()
        if u:
            return u
        auth = (self.headers.get("Authorization") or "").strip()
        if auth[:7].lower() == "bearer ":
            tok = auth[7:].strip()
            if tok:
                return tok
        return "anonymous"

    def _record_last(self, body, mode):
        parsed = None
        if body:
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = body[:65536].decode("utf-8", "replace")
        hdrs = {}
        for k, v in self.headers.items():
            lk = k.lower()
            hdrs[lk] = hdrs[lk] + ", " + v if lk in hdrs else v
        rec = {
            "time": time.time(),
            "method": self.command,
            "path": self.path,
            "http_version": self.request_version,
            "client": "%s:%s" % self.client_address[:2],
            "headers": hdrs,
            "raw_headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": len(body),
            "body": parsed,
            "user": self._user(),
            "mode": mode,
            "request_id": self._req_id(),
        }
        with self.state.lock:
            self.state.last = rec

    def _dispatch(self, fn):
        self._request_id = None
        try:
            fn()
        except HttpError as e:
            try:
                if self._path() == "/v1/chat/completions":
                    self.state.count_status(e.status)
                self._send_error(e.status, e.message, e.etype, e.param, e.code,
                                 close=e.close)
            except OSError:
                self.close_connection = True
        except (ConnectionError, BrokenPipeError, TimeoutError, OSError):
            self.close_connection = True

    # ---- methods ----------------------------------------------------------

    def do_GET(self):
        self._dispatch(self._handle_get)

    def do_HEAD(self):
        self._dispatch(self._handle_get)

    def do_POST(self):
        self._dispatch(self._handle_post)

    def _other(self):
        body = self._read_body()
        path = self._path()
        if not path.startswith("/__mock/") and path != "/healthz":
            self._record_last(body, None)
        raise HttpError(404 if not self._known(path) else 405,
                        "Invalid URL (%s %s)" % (self.command, path))

    def do_PUT(self):
        self._dispatch(self._other)

    def do_DELETE(self):
        self._dispatch(self._other)

    def do_PATCH(self):
        self._dispatch(self._other)

    def do_OPTIONS(self):
        self._dispatch(self._other)

    @staticmethod
    def _known(path):
        return path in ("/v1/chat/completions", "/v1/models", "/healthz",
                        "/__mock/stats", "/__mock/last", "/__mock/mode",
                        "/__mock/reset") or path.startswith("/v1/models/")

    def _handle_get(self):
        self._read_body()
        path = self._path()
        if path == "/healthz":
            if self.state.settings()["healthy"]:
                self._send(200, "ok\n", "text/plain")
            else:
                self._send(503, "unhealthy\n", "text/plain")
            return
        if path == "/__mock/stats":
            self._send(200, self.state.snapshot())
            return
        if path == "/__mock/last":
            with self.state.lock:
                last = self.state.last
            if last is None:
                last = {"method": None, "path": None, "headers": {},
                        "raw_headers": [], "body": None, "body_bytes": 0}
            self._send(200, last)
            return
        if path == "/__mock/mode":
            self._send(200, self.state.settings())
            return
        self._record_last(b"", None)
        if path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": MODELS_CREATED,
                 "owned_by": "system"} for m in MODELS]})
            return
        if path.startswith("/v1/models/"):
            mid = path[len("/v1/models/"):]
            if mid in MODELS:
                self._send(200, {"id": mid, "object": "model",
                                 "created": MODELS_CREATED, "owned_by": "system"})
                return
            raise HttpError(404, "The model '%s' does not exist or you do not have "
                            "access to it." % mid, param="model",
                            code="model_not_found")
        raise HttpError(404 if not self._known(path) else 405,
                        "Invalid URL (%s %s)" % (self.command, path))

    def _handle_post(self):
        body = self._read_body()
        path = self._path()
        if path == "/__mock/mode":
            self._set_mode(body)
            return
        if path == "/__mock/reset":
            self.state.reset()
            self._send(200, {"ok": True, **self.state.settings()})
            return
        if path == "/v1/chat/completions":
            self._chat(body)
            return
        if path not in ("/healthz",) and not path.startswith("/__mock/"):
            self._record_last(body, None)
        raise HttpError(404 if not self._known(path) else 405,
                        "Invalid URL (%s %s)" % (self.command, path))

    # ---- control ----------------------------------------------------------

    def _set_mode(self, body):
        try:
            req = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "We could not parse the JSON body of your request.")
        if not isinstance(req, dict):
            raise HttpError(400, "Body must be a JSON object.")
        mode = req.get("mode")
        if mode is not None and mode not in MODES:
            raise HttpError(400, "Unknown mode %r (known: %s)" % (mode, ", ".join(MODES)),
                            param="mode")
        retry_after = delay_ms = None
        if req.get("retry_after") is not None:
            retry_after = parse_int(req["retry_after"], "retry_after")
        if req.get("delay_ms") is not None:
            delay_ms = parse_int(req["delay_ms"], "delay_ms")
        healthy = req.get("healthy")
        if healthy is not None and not isinstance(healthy, bool):
            raise HttpError(400, "healthy must be a boolean", param="healthy")
        st = self.state
        with st.lock:
            if mode is not None:
                st.mode = mode
            if retry_after is not None:
                st.retry_after = retry_after
            if delay_ms is not None:
                st.delay_ms = delay_ms
            if healthy is not None:
                st.healthy = healthy
        if not st.quiet:
            sys.stderr.write("[mock:%s] settings now %s\n" % (st.name,
                                                             json.dumps(st.settings())))
        self._send(200, {"ok": True, **st.settings()})

    # ---- chat completions ---------------------------------------------------

    def _ratelimit_headers(self, limited, retry_after=0):
        return [
            ("x-ratelimit-limit-requests", str(RATELIMIT_REQUESTS)),
            ("x-ratelimit-limit-tokens", str(RATELIMIT_TOKENS)),
            ("x-ratelimit-remaining-requests",
             "0" if limited else str(RATELIMIT_REQUESTS - 1)),
            ("x-ratelimit-remaining-tokens",
             "0" if limited else str(RATELIMIT_TOKENS - 1000)),
            ("x-ratelimit-reset-requests", "%ds" % retry_after if limited else "6ms"),
            ("x-ratelimit-reset-tokens", "%ds" % retry_after if limited else "6ms"),
        ]

    def _chat(self, body):
        st = self.state
        settings = st.settings()
        hmode = (self.headers.get("x-mock-mode") or "").strip()
        if hmode:
            if hmode not in MODES:
                self._record_last(body, hmode)
                raise HttpError(400, "Unknown x-mock-mode %r (known: %s)"
                                % (hmode, ", ".join(MODES)))
            mode = hmode
        else:
            mode = settings["mode"]
        self._record_last(body, mode)
        st.count_request(mode)

        if mode == "reset":
            self.log_message('"%s" reset (RST, no answer)', self.requestline)
            self._reset_connection()
            return
        if mode == "hang":
            self.log_message('"%s" hang (no answer)', self.requestline)
            self._hang()
            return
        if mode in ("error500", "error503"):
            status = 500 if mode == "error500" else 503
            st.count_status(status)
            msg = ("The server had an error while processing your request. Sorry about that!"
                   if status == 500 else
                   "The engine is currently overloaded, please try again later.")
            self._send_error(status, msg, etype="server_error")
            return
        if mode == "ratelimit429":
            ra = settings["retry_after"]
            if self.headers.get("x-mock-retry-after"):
                ra = parse_int(self.headers["x-mock-retry-after"], "x-mock-retry-after")
            st.count_status(429)
            self._send_error(
                429,
                "Rate limit reached for %s in organization org-mock on requests per "
                "min (RPM): Limit %d, Used %d, Requested 1. Please try again in %ds."
                % (DEFAULT_MODEL, RATELIMIT_REQUESTS, RATELIMIT_REQUESTS, ra),
                etype="requests", code="rate_limit_exceeded",
                extra=[("Retry-After", str(ra))] + self._ratelimit_headers(True, ra))
            return

        delay = 0.0
        if mode == "slow":
            dms = settings["delay_ms"]
            if self.headers.get("x-mock-delay-ms"):
                dms = parse_int(self.headers["x-mock-delay-ms"], "x-mock-delay-ms")
            delay = dms / 1000.0

        # Parse and validate the request.
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "We could not parse the JSON body of your request. "
                            "(HINT: This likely means you aren't using your HTTP "
                            "library correctly. The OpenAI API expects a JSON payload, "
                            "but what was sent was not valid JSON.)")
        if not isinstance(req, dict):
            raise HttpError(400, "Invalid request body: expected a JSON object.")
        messages = req.get("messages")
        if not isinstance(messages, list):
            raise HttpError(400, "Missing required parameter: 'messages'.",
                            param="messages", code="missing_required_parameter")
        model = req.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL

        prompt_tokens = count_prompt_tokens(messages)
        forced = self.headers.get("x-mock-completion-tokens")
        if forced is not None and forced.strip():
            natural = parse_int(forced, "x-mock-completion-tokens")
        else:
            natural = 8 + prompt_tokens % 17
        limit = None
        if req.get("max_completion_tokens") is not None:
            limit = parse_int(req["max_completion_tokens"], "max_completion_tokens")
        elif req.get("max_tokens") is not None:
            limit = parse_int(req["max_tokens"], "max_tokens")
        if limit is not None and limit < natural:
            completion_tokens, finish = limit, "length"
        else:
            completion_tokens, finish = natural, "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }
        words = make_words(completion_tokens)
        cid = new_completion_id()
        created = int(time.time())
        user = self._user()

        if req.get("stream") is True:
            so = req.get("stream_options")
            include_usage = isinstance(so, dict) and so.get("include_usage") is True
            self._stream(cid, created, model, words, finish, usage, include_usage,
                         delay, user)
            return

        if delay > 0:
            time.sleep(delay)
        resp = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words),
                            "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        # Count before sending so that a client that has the answer sees it in stats.
        st.count_status(200)
        st.count_success(user, prompt_tokens, completion_tokens, False)
        self._send(200, resp, extra=self._common_openai_headers(delay))

    def _common_openai_headers(self, delay):
        return [("openai-version", "2020-10-01"),
                ("openai-organization", "org-mock"),
                ("openai-processing-ms", str(int(delay * 1000) + 1))] + \
            self._ratelimit_headers(False)

    def _stream(self, cid, created, model, words, finish, usage, include_usage,
                delay, user):
        st = self.state

        def chunk(choices, with_usage=None):
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "service_tier": "default",
                   "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
            if include_usage:
                obj["usage"] = with_usage
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def choice(delta, fr=None):
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}]

        events = [chunk(choice({"role": "assistant", "content": "", "refusal": None}))]
        for i, w in enumerate(words):
            events.append(chunk(choice({"content": w if i == 0 else " " + w})))
        events.append(chunk(choice({}, finish)))
        if include_usage:
            events.append(chunk([], usage))
        events.append(b"data: [DONE]\n\n")
        pause = delay / len(events) if delay > 0 else 0.0

        chunked = self.request_version != "HTTP/1.0"
        self._start(200, "text/event-stream; charset=utf-8",
                    [("Cache-Control", "no-cache")] + self._common_openai_headers(delay))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        last = len(events) - 1
        for i, ev in enumerate(events):
            if pause:
                time.sleep(pause)
            if i == last:
                # About to complete: account now so the client sees it in stats.
                st.count_status(200)
                st.count_success(user, usage["prompt_tokens"],
                                 usage["completion_tokens"], True)
            if chunked:
                data = b"%x\r\n%s\r\n" % (len(ev), ev)
                if i == last:
                    data += b"0\r\n\r\n"
            else:
                data = ev
            self.wfile.write(data)

    # ---- failure modes -----------------------------------------------------

    def _reset_connection(self):
        """Close abruptly with an RST (SO_LINGER 0)."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # drop the makefile() reference so close() is real
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _hang(self):
        """Never answer; return when the peer closes or the server stops."""
        self.close_connection = True
        sock = self.connection
        while not STOP.is_set():
            try:
                r, _, _ = select.select([sock], [], [], 0.25)
            except (OSError, ValueError):
                return
            if r:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, family, state):
        self.address_family = family
        self.state = state
        super().__init__(addr, Handler)

    def server_bind(self):
        # Skip HTTPServer.server_bind's getfqdn() (can be a slow DNS lookup).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def resolve_loopback(host, port):
    """Resolve host; return (family, sockaddr) or raise SystemExit if not loopback."""
    if not host:
        raise SystemExit("mock_provider: refusing to bind all interfaces: "
                         "--host must be a loopback address")
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SystemExit("mock_provider: cannot resolve --host %r: %s" % (host, e))
    if not infos:
        raise SystemExit("mock_provider: cannot resolve --host %r" % host)
    for fam, _, _, _, sa in infos:
        try:
            ip = ipaddress.ip_address(sa[0].split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is None or not ip.is_loopback:
            raise SystemExit("mock_provider: refusing to bind non-loopback address %s "
                             "(--host %s); only 127.0.0.0/8 and ::1 are allowed"
                             % (sa[0], host))
    fam, _, _, _, sa = infos[0]
    return fam, sa


def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, ".%s.tmp.%d" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mock OpenAI-compatible provider "
                                 "(tokengate tests).")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind "
                    "(default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="port (default 0 = ephemeral)")
    ap.add_argument("--port-file", help="write the bound port here (atomically) "
                    "once listening")
    ap.add_argument("--pid-file", help="write our PID here")
    ap.add_argument("--name", default="primary",
                    help="value of the x-mock-provider response header")
    ap.add_argument("--mode", default="ok", choices=MODES, help="initial mode")
    ap.add_argument("--quiet", action="store_true", help="no per-request logging")
    args = ap.parse_args(argv)

    if not 0 <= args.port <= 65535:
        ap.error("--port must be in 0..65535")
    family, sockaddr = resolve_loopback(args.host, args.port)

    state = State(args.name, args.mode)
    state.quiet = args.quiet

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    written = []
    server = None
    try:
        try:
            server = Server(sockaddr, family, state)
        except OSError as e:
            raise SystemExit("mock_provider: cannot listen on %s port %d: %s"
                             % (sockaddr[0], args.port, e))
        port = server.server_address[1]
        if args.pid_file:
            write_atomic(args.pid_file, "%d\n" % os.getpid())
            written.append(args.pid_file)
        if args.port_file:
            write_atomic(args.port_file, "%d\n" % port)
            written.append(args.port_file)
        sys.stderr.write("[mock:%s] listening on %s port %d (mode %s, pid %d)\n"
                         % (args.name, sockaddr[0], port, args.mode, os.getpid()))
        sys.stderr.flush()
        server.serve_forever(poll_interval=0.2)
    except _Stop:
        pass
    finally:
        STOP.set()
        if server is not None:
            try:
                server.server_close()
            except OSError:
                pass
        for p in written:
            try:
                os.unlink(p)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
