-- tokengate schema, migration 1.
--
-- Applied by the agent inside one transaction when PRAGMA user_version < 1;
-- the agent then sets user_version = 1. Never edit this file once released:
-- add schema/002_*.sql instead (see schema/README.md).
--
-- Conventions
--   * Timestamps are ISO-8601 UTC text: 'YYYY-MM-DDTHH:MM:SSZ'
--     (audit_log.decided_at carries milliseconds: 'YYYY-MM-DDTHH:MM:SS.sssZ').
--   * daily_usage.day is 'YYYY-MM-DD' in settings.time_zone.
--   * A NULL limit means unlimited (tiers) or "use the tier's" (user_limits).
--   * Operators edit settings, tiers, users, user_limits, api_keys and
--     model_prices with plain SQL while the agent runs; the agent picks the
--     change up within about a second. Run PRAGMA foreign_keys = ON in your
--     shell so tier renames cascade and in-use tiers cannot be deleted.

-- Operator-tunable settings, one row per name.
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    CONSTRAINT settings_positive_integer CHECK (
        name NOT IN ('flush_interval_ms', 'default_max_tokens', 'reservation_ttl_s')
        OR (value <> '' AND value NOT GLOB '*[^0-9]*' AND length(value) <= 12
            AND CAST(value AS INTEGER) > 0)),
    -- Bounds the agent enforces too: a flush at least every 10 ms..60 s.
    CONSTRAINT settings_flush_interval CHECK (
        name <> 'flush_interval_ms'
        OR CAST(value AS INTEGER) BETWEEN 10 AND 60000),
    -- 0 = keep no audit rows past the next purge.
    CONSTRAINT settings_retention_days CHECK (
        name <> 'audit_retention_days'
        OR (value <> '' AND value NOT GLOB '*[^0-9]*' AND length(value) <= 5)),
    CONSTRAINT settings_cost_ceiling_number CHECK (
        name <> 'global_daily_cost_ceiling_usd'
        OR value = ''
        OR (value GLOB '[0-9]*' AND value NOT GLOB '*[^0-9.]*'
            AND value NOT GLOB '*.*.*' AND value NOT GLOB '*.')),
    CONSTRAINT settings_global_ceiling_action CHECK (
        name <> 'global_ceiling_action' OR value IN ('fallback', 'deny')),
    CONSTRAINT settings_not_empty CHECK (
        name NOT IN ('time_zone', 'unknown_key_action', 'default_tier')
        OR value <> '')
);

INSERT INTO settings (name, value, description) VALUES
    ('time_zone', 'UTC',
     'IANA time zone name (e.g. Europe/Paris). Daily budgets reset at midnight in this zone.'),
    ('flush_interval_ms', '100',
     'How often usage counters are written to this database, in milliseconds. A crash loses at most this much usage.'),
    ('audit_retention_days', '30',
     'Days of audit_log rows kept; older rows are deleted by the agent.'),
    ('global_daily_cost_ceiling_usd', '',
     'Organisation-wide spend per day in USD across all users. Empty = no ceiling.'),
    ('global_ceiling_action', 'fallback',
     'What happens once the global ceiling is reached: fallback (serve the fallback answer) or deny (HTTP 429).'),
    ('unknown_key_action', 'deny',
     'Requests with an unknown, revoked or expired API key: deny (HTTP 401), or the name of a tier to serve them with.'),
    ('default_tier', 'default',
     'Tier of users that have no row in users.'),
    ('default_max_tokens', '1024',
     'Completion tokens reserved for a request that does not set max_tokens.'),
    ('reservation_ttl_s', '600',
     'Seconds after which a request never settled by a response is charged at its estimate.');

-- Budget tiers. A NULL limit means unlimited.
CREATE TABLE tiers (
    name               TEXT PRIMARY KEY CHECK (name <> ''),
    daily_tokens       INTEGER   -- tokens in + out per day; NULL = unlimited
        CHECK (daily_tokens IS NULL OR (typeof(daily_tokens) = 'integer' AND daily_tokens >= 0)),
    daily_requests     INTEGER   -- requests per day; NULL = unlimited
        CHECK (daily_requests IS NULL OR (typeof(daily_requests) = 'integer' AND daily_requests >= 0)),
    daily_cost_usd     REAL      -- USD per day; NULL = unlimited
        CHECK (daily_cost_usd IS NULL OR (typeof(daily_cost_usd) IN ('real', 'integer') AND daily_cost_usd >= 0)),
    over_budget_action TEXT NOT NULL DEFAULT 'deny'
        CHECK (over_budget_action IN ('deny', 'fallback')),
    description        TEXT NOT NULL DEFAULT ''
);

INSERT INTO tiers (name, daily_tokens, daily_requests, daily_cost_usd, over_budget_action, description) VALUES
    ('default', 100000, 1000, 5.0, 'deny',
     'Users with no row in users (see settings.default_tier). Denied with 429 once over budget.'),
    ('free', 10000, 100, 0.5, 'fallback',
     'Small free allowance. Served the fallback answer once over budget.'),
    ('unlimited', NULL, NULL, NULL, 'deny',
     'No daily limits (internal services, on-call). Still counted and audited.');

-- Known users and their tier. Users without a row get settings.default_tier.
CREATE TABLE users (
    user_id      TEXT PRIMARY KEY CHECK (user_id <> ''),
    tier         TEXT NOT NULL DEFAULT 'default'
                 REFERENCES tiers (name) ON UPDATE CASCADE,
    display_name TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE INDEX users_tier ON users (tier);

-- Per-user overrides of the tier's limits. NULL = use the tier's value.
CREATE TABLE user_limits (
    user_id        TEXT PRIMARY KEY CHECK (user_id <> ''),
    daily_tokens   INTEGER
        CHECK (daily_tokens IS NULL OR (typeof(daily_tokens) = 'integer' AND daily_tokens >= 0)),
    daily_requests INTEGER
        CHECK (daily_requests IS NULL OR (typeof(daily_requests) = 'integer' AND daily_requests >= 0)),
    daily_cost_usd REAL
        CHECK (daily_cost_usd IS NULL OR (typeof(daily_cost_usd) IN ('real', 'integer') AND daily_cost_usd >= 0)),
    note           TEXT,      -- why (ticket, who asked)
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

-- API keys. The key itself is never stored, only its HMAC.
CREATE TABLE api_keys (
    key_hmac   TEXT PRIMARY KEY   -- lowercase hex HMAC-SHA256 of the key under the server secret
        CONSTRAINT api_keys_hmac_hex CHECK (length(key_hmac) = 64 AND key_hmac NOT GLOB '*[^0-9a-f]*'),
    key_prefix TEXT               -- first 8 characters of the key, to recognise it in audits
        CHECK (key_prefix IS NULL OR length(key_prefix) <= 8),
    user_id    TEXT NOT NULL CHECK (user_id <> ''),
    tier       TEXT REFERENCES tiers (name) ON UPDATE CASCADE,  -- NULL = the user's tier
    label      TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    expires_at TEXT               -- 'YYYY-MM-DDTHH:MM:SSZ' UTC; NULL = never
        CONSTRAINT api_keys_expires_at_format
        CHECK (expires_at IS NULL OR strftime('%Y-%m-%dT%H:%M:%SZ', expires_at, '+0 days') IS expires_at),
    revoked_at TEXT               -- 'YYYY-MM-DDTHH:MM:SSZ' UTC; NULL = not revoked
        CONSTRAINT api_keys_revoked_at_format
        CHECK (revoked_at IS NULL OR strftime('%Y-%m-%dT%H:%M:%SZ', revoked_at, '+0 days') IS revoked_at)
);

CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_prefix ON api_keys (key_prefix);

-- Prices in USD per million tokens. Model '*' prices models not listed.
CREATE TABLE model_prices (
    model                  TEXT PRIMARY KEY CHECK (model <> ''),
    input_usd_per_million  REAL NOT NULL CHECK (input_usd_per_million >= 0),
    output_usd_per_million REAL NOT NULL CHECK (output_usd_per_million >= 0),
    updated_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

INSERT INTO model_prices (model, input_usd_per_million, output_usd_per_million) VALUES
    ('gpt-4o-mini',  0.15,  0.60),
    ('gpt-4o',       2.50, 10.00),
    ('gpt-4.1-mini', 0.40,  1.60),
    ('*',            1.00,  4.00);

-- Usage per user per day, written behind by the agent. Do not edit by hand
-- while the agent runs: it holds the live counters and overwrites the row.
CREATE TABLE daily_usage (
    day        TEXT NOT NULL      -- 'YYYY-MM-DD' in settings.time_zone
        -- A GLOB, not date(): this check runs on every write-behind upsert.
        CONSTRAINT daily_usage_day_format CHECK (day GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]'),
    user_id    TEXT NOT NULL,
    tokens_in  INTEGER NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out INTEGER NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    requests   INTEGER NOT NULL DEFAULT 0 CHECK (requests >= 0),
    cost_usd   REAL    NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    denials    INTEGER NOT NULL DEFAULT 0 CHECK (denials >= 0),
    fallbacks  INTEGER NOT NULL DEFAULT 0 CHECK (fallbacks >= 0),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    PRIMARY KEY (day, user_id)
) WITHOUT ROWID;

CREATE INDEX daily_usage_user_day ON daily_usage (user_id, day);

-- One row per decided request.
CREATE TABLE audit_log (
    id               INTEGER PRIMARY KEY,
    decided_at       TEXT NOT NULL      -- 'YYYY-MM-DDTHH:MM:SS.sssZ' UTC
        DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT audit_log_decided_at_format
        CHECK (decided_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    unique_id        TEXT,              -- HAProxy unique-id of the request
    user_id          TEXT,
    route            TEXT,
    model            TEXT,
    provider         TEXT,              -- HAProxy backend the request was sent to
    action           TEXT NOT NULL      -- what the agent answered
        -- Comparisons, not IN (...): SQLite builds a temporary b-tree for
        -- an IN list on every row, and this table takes one row per request.
        CHECK (action = 'allow' OR action = 'deny' OR action = 'fallback'),
    reason           TEXT NOT NULL,     -- ok, budget_tokens, budget_requests, budget_cost, global_ceiling, ...
    tokens_estimated INTEGER,
    tokens_in        INTEGER,
    tokens_out       INTEGER,
    cost_usd         REAL,
    status           INTEGER,           -- HTTP status from the provider; NULL = no response
    latency_ms       INTEGER,
    outcome          TEXT NOT NULL
        -- settled:   real usage from the response
        -- estimated: streamed or unreadable response, estimate kept
        -- expired:   no response before reservation_ttl_s, charged at the estimate
        -- refused:   denied
        -- fallback:  served the fallback answer
        CHECK (outcome = 'settled' OR outcome = 'estimated' OR outcome = 'expired'
               OR outcome = 'refused' OR outcome = 'fallback')
);

CREATE INDEX audit_log_decided_at ON audit_log (decided_at);
CREATE INDEX audit_log_user_decided_at ON audit_log (user_id, decided_at);
-- No index on unique_id: a random key per request makes every insert
-- touch a random page; find one request with its time range instead:
--   WHERE decided_at >= '...' AND unique_id = '...'
-- Covers denials_by_reason: only deny/fallback rows are indexed.
CREATE INDEX audit_log_refusals ON audit_log (decided_at, reason, action)
    WHERE action = 'deny' OR action = 'fallback';

-- Written by the agent: current_day, started_at, last_flush_at.
CREATE TABLE agent_state (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

---------------------------------------------------------------------------
-- Views for audits. "Today" is agent_state.current_day (kept current by the
-- agent in settings.time_zone), else the UTC date.
---------------------------------------------------------------------------

-- Limits in force for every known user (users, daily_usage, user_limits):
-- the user's override where set, else the tier's. *_from says which.
-- A key with its own api_keys.tier is limited by that tier instead.
CREATE VIEW limits_in_force AS
WITH who (user_id) AS (
    SELECT user_id FROM users
    UNION SELECT user_id FROM daily_usage
    UNION SELECT user_id FROM user_limits
)
SELECT w.user_id AS user_id,
       COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default') AS tier,
       COALESCE(ul.daily_tokens, t.daily_tokens) AS daily_tokens,
       CASE WHEN ul.daily_tokens IS NOT NULL THEN 'user' ELSE 'tier' END AS daily_tokens_from,
       COALESCE(ul.daily_requests, t.daily_requests) AS daily_requests,
       CASE WHEN ul.daily_requests IS NOT NULL THEN 'user' ELSE 'tier' END AS daily_requests_from,
       COALESCE(ul.daily_cost_usd, t.daily_cost_usd) AS daily_cost_usd,
       CASE WHEN ul.daily_cost_usd IS NOT NULL THEN 'user' ELSE 'tier' END AS daily_cost_usd_from
FROM who AS w
LEFT JOIN users AS u ON u.user_id = w.user_id
LEFT JOIN user_limits AS ul ON ul.user_id = w.user_id
LEFT JOIN tiers AS t
       ON t.name = COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default')
ORDER BY w.user_id;

-- Today's usage per user against the tokens limit, biggest first.
CREATE VIEW usage_today AS
SELECT d.user_id AS user_id,
       COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default') AS tier,
       d.tokens_in AS tokens_in,
       d.tokens_out AS tokens_out,
       d.tokens_in + d.tokens_out AS tokens_total,
       d.requests AS requests,
       d.cost_usd AS cost_usd,
       d.denials AS denials,
       d.fallbacks AS fallbacks,
       COALESCE(ul.daily_tokens, t.daily_tokens) AS daily_tokens,
       CASE WHEN COALESCE(ul.daily_tokens, t.daily_tokens) IS NULL THEN NULL
            ELSE max(COALESCE(ul.daily_tokens, t.daily_tokens) - (d.tokens_in + d.tokens_out), 0)
       END AS tokens_remaining,
       d.updated_at AS updated_at
FROM daily_usage AS d
LEFT JOIN users AS u ON u.user_id = d.user_id
LEFT JOIN user_limits AS ul ON ul.user_id = d.user_id
LEFT JOIN tiers AS t
       ON t.name = COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default')
WHERE d.day = COALESCE((SELECT value FROM agent_state WHERE name = 'current_day'), date('now'))
ORDER BY tokens_total DESC, d.user_id;

-- Spend over the last 7 days including today, biggest spender first.
CREATE VIEW top_spenders_7d AS
SELECT d.user_id AS user_id,
       count(*) AS days_active,
       sum(d.requests) AS requests,
       sum(d.tokens_in + d.tokens_out) AS tokens_total,
       sum(d.cost_usd) AS cost_usd
FROM daily_usage AS d
WHERE d.day BETWEEN date(COALESCE((SELECT value FROM agent_state WHERE name = 'current_day'), date('now')), '-6 days')
                AND COALESCE((SELECT value FROM agent_state WHERE name = 'current_day'), date('now'))
GROUP BY d.user_id
ORDER BY cost_usd DESC, tokens_total DESC, d.user_id;

-- Refused and fallback answers per UTC day and reason, newest day first.
CREATE VIEW denials_by_reason AS
SELECT substr(decided_at, 1, 10) AS day,
       reason,
       sum(action = 'deny') AS denials,
       sum(action = 'fallback') AS fallbacks
FROM audit_log
WHERE action = 'deny' OR action = 'fallback'  -- the partial index's own terms
GROUP BY day, reason
ORDER BY day DESC, denials + fallbacks DESC, reason;

-- One row per user per day with the limits in force now (limits are not
-- versioned: a past day shows today's limits). Filter on user_id.
CREATE VIEW user_history AS
SELECT d.day AS day,
       d.user_id AS user_id,
       COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default') AS tier,
       d.tokens_in AS tokens_in,
       d.tokens_out AS tokens_out,
       d.tokens_in + d.tokens_out AS tokens_total,
       d.requests AS requests,
       d.cost_usd AS cost_usd,
       d.denials AS denials,
       d.fallbacks AS fallbacks,
       COALESCE(ul.daily_tokens, t.daily_tokens) AS daily_tokens,
       COALESCE(ul.daily_requests, t.daily_requests) AS daily_requests,
       COALESCE(ul.daily_cost_usd, t.daily_cost_usd) AS daily_cost_usd,
       d.updated_at AS updated_at
FROM daily_usage AS d
LEFT JOIN users AS u ON u.user_id = d.user_id
LEFT JOIN user_limits AS ul ON ul.user_id = d.user_id
LEFT JOIN tiers AS t
       ON t.name = COALESCE(u.tier, (SELECT value FROM settings WHERE name = 'default_tier'), 'default')
ORDER BY d.user_id, d.day DESC;

-- Requests sent to each provider (action 'allow') per UTC day: errors are
-- 5xx, or no response at all before the reservation expired.
CREATE VIEW provider_outcomes AS
SELECT substr(decided_at, 1, 10) AS day,
       provider,
       count(*) AS requests,
       sum(CASE WHEN status >= 500 OR (status IS NULL AND outcome = 'expired') THEN 1 ELSE 0 END) AS errors,
       sum(CASE WHEN status = 429 THEN 1 ELSE 0 END) AS rate_limited,
       round(avg(latency_ms), 1) AS avg_latency_ms,
       round(1.0 * sum(CASE WHEN status >= 500 OR (status IS NULL AND outcome = 'expired') THEN 1 ELSE 0 END)
             / count(*), 4) AS error_rate
FROM audit_log
WHERE action = 'allow'
GROUP BY day, provider
ORDER BY day DESC, provider;

-- Configuration the agent cannot honour as written; empty when all is well.
-- (The sqlite3 shell does not enforce foreign keys unless told to.)
CREATE VIEW config_problems AS
SELECT 'default_tier names no tier' AS problem, value AS detail
FROM settings
WHERE name = 'default_tier' AND value NOT IN (SELECT name FROM tiers)
UNION ALL
SELECT 'unknown_key_action is neither deny nor a tier', value
FROM settings
WHERE name = 'unknown_key_action' AND value <> 'deny' AND value NOT IN (SELECT name FROM tiers)
UNION ALL
SELECT 'user in a missing tier', user_id || ': ' || tier
FROM users
WHERE tier NOT IN (SELECT name FROM tiers)
UNION ALL
SELECT 'api key in a missing tier', COALESCE(key_prefix, key_hmac) || ': ' || tier
FROM api_keys
WHERE tier IS NOT NULL AND tier NOT IN (SELECT name FROM tiers)
UNION ALL
SELECT 'no default model price', 'model_prices has no ''*'' row'
WHERE NOT EXISTS (SELECT 1 FROM model_prices WHERE model = '*');
