-- Migration 3: prompt and output logging, per route.
--
-- Off by default. Per route, operators choose what is kept of each
-- request's prompt (the start of the request body HAProxy passes to the
-- agent, at most a few KB) and of the provider's output (the start of the
-- response body), and for how long:
--   off       nothing (the default)
--   hash      SHA-256 of each (hex): proves what was sent, reveals nothing
--   redacted  the text with API keys, bearer tokens, e-mail addresses and
--             card-like numbers replaced by [REDACTED:<kind>]
--   full      the text as it was
-- Rows older than the route's prompt_retention_days are deleted by the
-- agent in bounded batches (0 = kept until the next purge only).

ALTER TABLE routes ADD COLUMN prompt_logging TEXT NOT NULL DEFAULT 'off'
    CONSTRAINT routes_prompt_logging
    CHECK (prompt_logging = 'off' OR prompt_logging = 'hash' OR prompt_logging = 'redacted'
           OR prompt_logging = 'full');
ALTER TABLE routes ADD COLUMN prompt_retention_days INTEGER NOT NULL DEFAULT 7
    CONSTRAINT routes_prompt_retention_days
    CHECK (typeof(prompt_retention_days) = 'integer' AND prompt_retention_days BETWEEN 0 AND 3650);

-- One row per logged request (written by the agent with the audit row).
CREATE TABLE prompt_log (
    id           INTEGER PRIMARY KEY,
    logged_at    TEXT NOT NULL,   -- ISO-8601 UTC with milliseconds
    unique_id    TEXT,            -- HAProxy unique-id: joins audit_log.unique_id
    user_id      TEXT,
    route        TEXT NOT NULL,
    mode         TEXT NOT NULL,   -- hash, redacted or full, as the route said then
    prompt       TEXT,            -- per mode; NULL when HAProxy passed no body
    output       TEXT,            -- per mode; NULL when the answer had no readable body
    prompt_bytes INTEGER,         -- size of what was logged before hashing or redaction
    output_bytes INTEGER
);

CREATE INDEX prompt_log_route_logged_at ON prompt_log (route, logged_at);

-- What is logged where, and for how long.
CREATE VIEW prompt_logging_in_force AS
SELECT name AS route, prompt_logging, prompt_retention_days,
       (SELECT count(*) FROM prompt_log p WHERE p.route = r.name) AS rows_kept
FROM routes r
ORDER BY priority, name;
