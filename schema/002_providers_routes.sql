-- tokengate schema, migration 2: providers, routes and provider health.
--
-- Applied by the agent inside one transaction when PRAGMA user_version < 2;
-- the agent then sets user_version = 2. Never edit this file once released:
-- add schema/003_*.sql instead (see schema/README.md).
--
--   * providers, routes and route_providers are edited by operators with plain
--     SQL while the agent runs; the agent loads them within db_poll_ms.
--   * provider_health is written by the agent: the circuit breakers as they
--     are now. Do not edit it.
--   * Timestamps in provider_health are ISO-8601 UTC with milliseconds:
--     'YYYY-MM-DDTHH:MM:SS.sssZ' (like audit_log.decided_at).
--   * CHECKs compare with = and OR and match formats with GLOB, never IN (...)
--     or date()/strftime(): SQLite builds a temporary b-tree for an IN list on
--     every row checked (see audit_log in 001_init.sql).

-- The HAProxy backends that are LLM providers, and the thresholds of each
-- one's circuit breaker.
CREATE TABLE providers (
    name                 TEXT PRIMARY KEY  -- the HAProxy backend, e.g. provider_primary
        -- HAProxy's identifier characters; the agent ignores names of 64 bytes or more.
        CONSTRAINT providers_name CHECK (name <> '' AND length(CAST(name AS BLOB)) <= 63
                                         AND name NOT GLOB '*[^A-Za-z0-9_.:-]*'),
    description          TEXT NOT NULL DEFAULT '',
    enabled              INTEGER NOT NULL DEFAULT 1  -- 0: never routed to (maintenance)
        CONSTRAINT providers_enabled CHECK (enabled = 0 OR enabled = 1),
    window_s             INTEGER NOT NULL DEFAULT 30  -- sliding window of the error rate, seconds
        CONSTRAINT providers_window_s CHECK (typeof(window_s) = 'integer' AND window_s BETWEEN 1 AND 300),
    min_requests         INTEGER NOT NULL DEFAULT 10  -- no error-rate verdict with fewer requests in the window
        CONSTRAINT providers_min_requests CHECK (typeof(min_requests) = 'integer' AND min_requests >= 1),
    error_rate           REAL NOT NULL DEFAULT 0.5  -- open when failures/requests in the window >= this
        CONSTRAINT providers_error_rate CHECK (typeof(error_rate) = 'real' AND error_rate > 0 AND error_rate <= 1),
    consecutive_failures INTEGER NOT NULL DEFAULT 5  -- open after this many failures in a row
        CONSTRAINT providers_consecutive_failures
        CHECK (typeof(consecutive_failures) = 'integer' AND consecutive_failures >= 1),
    open_s               INTEGER NOT NULL DEFAULT 30  -- seconds open before half-open (a 429 uses its Retry-After)
        CONSTRAINT providers_open_s CHECK (typeof(open_s) = 'integer' AND open_s >= 1),
    half_open_probes     INTEGER NOT NULL DEFAULT 3  -- let through in half-open; all must succeed to close
        CONSTRAINT providers_half_open_probes CHECK (typeof(half_open_probes) = 'integer' AND half_open_probes >= 1)
);

INSERT INTO providers (name, description) VALUES
    ('provider_primary', 'Primary LLM provider'),
    ('provider_secondary', 'Secondary LLM provider');

-- Which requests go where. Among the routes whose path_prefix starts the
-- request path and whose model_glob matches its model, the lowest priority
-- wins (ties by name).
CREATE TABLE routes (
    name               TEXT PRIMARY KEY
        CONSTRAINT routes_name CHECK (name <> '' AND name NOT GLOB '*[^A-Za-z0-9_.:-]*'),
    path_prefix        TEXT NOT NULL DEFAULT '/v1/'  -- the request path must start with this
        CONSTRAINT routes_path_prefix CHECK (path_prefix GLOB '/*' AND path_prefix NOT GLOB '*[^!-~]*'),
    model_glob         TEXT NOT NULL DEFAULT '*'  -- GLOB on the model ('*' = any, also when absent); case-sensitive
        CONSTRAINT routes_model_glob CHECK (model_glob <> '' AND length(model_glob) <= 127),
    priority           INTEGER NOT NULL DEFAULT 100  -- lower wins among matching routes; ties by name
        CONSTRAINT routes_priority CHECK (typeof(priority) = 'integer' AND priority BETWEEN 0 AND 1000000),
    timeout_ms         INTEGER NOT NULL DEFAULT 30000  -- HAProxy's server timeout for this route's provider requests
        CONSTRAINT routes_timeout_ms CHECK (typeof(timeout_ms) = 'integer' AND timeout_ms BETWEEN 100 AND 600000),
    -- none:     HTTP 503
    -- backend:  send the request to fallback_backend
    -- static:   answer fallback_text
    -- computed: answer fallback_text + the first paragraph of the last user message
    fallback           TEXT NOT NULL DEFAULT 'computed'
        CONSTRAINT routes_fallback
        CHECK (fallback = 'none' OR fallback = 'backend' OR fallback = 'static' OR fallback = 'computed'),
    fallback_backend   TEXT  -- an HAProxy backend; required when fallback = 'backend'
        CONSTRAINT routes_fallback_backend_name
        CHECK (fallback_backend IS NULL
               OR (fallback_backend <> '' AND fallback_backend NOT GLOB '*[^A-Za-z0-9_.:-]*')),
    fallback_text      TEXT NOT NULL
        DEFAULT 'The assistant is temporarily unavailable, so this is an automatic reply. Please try again in a few minutes.',
    fallback_max_bytes INTEGER NOT NULL DEFAULT 600  -- bound of the whole computed answer, in bytes
        CONSTRAINT routes_fallback_max_bytes
        CHECK (typeof(fallback_max_bytes) = 'integer' AND fallback_max_bytes BETWEEN 64 AND 4000),
    CONSTRAINT routes_fallback_backend_required
        CHECK (fallback <> 'backend' OR fallback_backend IS NOT NULL),
    -- The text is part of the bounded answer: it must fit on its own.
    CONSTRAINT routes_fallback_text_fits
        CHECK (length(CAST(fallback_text AS BLOB)) <= fallback_max_bytes)
);

INSERT INTO routes (name, path_prefix, model_glob, priority, timeout_ms, fallback, fallback_backend, fallback_max_bytes) VALUES
    ('chat', '/v1/chat/completions', '*', 10, 30000, 'computed', NULL, 600),
    ('default', '/v1/', '*', 1000, 30000, 'static', NULL, 600);

-- Each route's ordered chain of providers: 1 = primary, 2 = secondary, ...
-- Renaming or deleting a route carries its chain along; a provider named in a
-- chain cannot be deleted (with PRAGMA foreign_keys = ON), only renamed.
CREATE TABLE route_providers (
    route    TEXT NOT NULL REFERENCES routes (name) ON UPDATE CASCADE ON DELETE CASCADE,
    position INTEGER NOT NULL
        CONSTRAINT route_providers_position CHECK (typeof(position) = 'integer' AND position >= 1),
    provider TEXT NOT NULL REFERENCES providers (name) ON UPDATE CASCADE,
    PRIMARY KEY (route, position)
) WITHOUT ROWID;

-- Foreign key lookups when a provider is renamed or deleted.
CREATE INDEX route_providers_provider ON route_providers (provider);

INSERT INTO route_providers (route, position, provider) VALUES
    ('chat', 1, 'provider_primary'),
    ('chat', 2, 'provider_secondary'),
    ('default', 1, 'provider_primary'),
    ('default', 2, 'provider_secondary');

-- Written by the agent (do not edit): each provider's breaker as it is now.
-- Counters ending in _total count since the agent started. No foreign key to
-- providers: the agent's write must not fail because an operator just renamed
-- or deleted a provider; provider_status shows only current providers.
CREATE TABLE provider_health (
    provider             TEXT PRIMARY KEY,
    state                TEXT NOT NULL
        CONSTRAINT provider_health_state
        CHECK (state = 'closed' OR state = 'open' OR state = 'half_open' OR state = 'disabled'),
    since                TEXT NOT NULL  -- when it entered this state
        CONSTRAINT provider_health_since_format
        CHECK (since GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    open_until           TEXT  -- when an open breaker turns half-open
        CONSTRAINT provider_health_open_until_format
        CHECK (open_until IS NULL
               OR open_until GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    reason               TEXT  -- why it last opened
        CONSTRAINT provider_health_reason
        CHECK (reason IS NULL OR reason = 'error_rate' OR reason = 'consecutive_failures'
               OR reason = 'rate_limited' OR reason = 'haproxy_down' OR reason = 'probe_failed'),
    window_requests      INTEGER NOT NULL DEFAULT 0 CHECK (window_requests >= 0),
    window_failures      INTEGER NOT NULL DEFAULT 0 CHECK (window_failures >= 0),
    consecutive_failures INTEGER NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    probes_in_flight     INTEGER NOT NULL DEFAULT 0 CHECK (probes_in_flight >= 0),
    servers_up           INTEGER  -- HAProxy's nbsrv of the backend at the last request; NULL = unknown
        CHECK (servers_up IS NULL OR servers_up >= 0),
    opened_total         INTEGER NOT NULL DEFAULT 0 CHECK (opened_total >= 0),
    requests_total       INTEGER NOT NULL DEFAULT 0 CHECK (requests_total >= 0),
    failures_total       INTEGER NOT NULL DEFAULT 0 CHECK (failures_total >= 0),
    updated_at           TEXT NOT NULL
        CONSTRAINT provider_health_updated_at_format
        CHECK (updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z')
);

---------------------------------------------------------------------------
-- Views
---------------------------------------------------------------------------

-- Every route as the agent applies it, in matching order (priority, name):
-- chain is its providers in position order, e.g. 'provider_primary,provider_secondary'
-- (NULL: no provider, see routing_problems).
CREATE VIEW routes_in_force AS
WITH chains AS (
    -- group_concat as a window function concatenates in the window's order
    -- (SQLite before 3.44 has no ORDER BY inside an aggregate).
    SELECT route,
           group_concat(provider, ',') OVER (PARTITION BY route ORDER BY position
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS chain,
           row_number() OVER (PARTITION BY route ORDER BY position) AS n
    FROM route_providers
)
SELECT r.name AS route,
       r.priority AS priority,
       r.path_prefix AS path_prefix,
       r.model_glob AS model_glob,
       c.chain AS chain,
       r.fallback AS fallback,
       r.fallback_backend AS fallback_backend,
       r.timeout_ms AS timeout_ms
FROM routes AS r
LEFT JOIN chains AS c ON c.route = r.name AND c.n = 1
ORDER BY r.priority, r.name;

-- Every provider with its breaker as the agent last wrote it (state NULL:
-- the agent has not reported on it yet). window_error_pct is
-- failures/requests in the sliding window, in percent (NULL: no request).
CREATE VIEW provider_status AS
SELECT p.name AS provider,
       h.state AS state,
       h.since AS since,
       h.open_until AS open_until,
       h.reason AS reason,
       h.window_requests AS window_requests,
       h.window_failures AS window_failures,
       CASE WHEN h.window_requests > 0
            THEN round(100.0 * h.window_failures / h.window_requests, 1) END AS window_error_pct,
       h.consecutive_failures AS consecutive_failures,
       h.servers_up AS servers_up,
       p.enabled AS enabled,
       p.description AS description,
       h.updated_at AS updated_at
FROM providers AS p
LEFT JOIN provider_health AS h ON h.provider = p.name
ORDER BY p.name;

-- Routing the agent cannot honour as written; empty when all is well. Same
-- columns as config_problems (001):
--   SELECT * FROM config_problems UNION ALL SELECT * FROM routing_problems;
CREATE VIEW routing_problems AS
SELECT 'route has no provider' AS problem, r.name AS detail
FROM routes AS r
WHERE NOT EXISTS (SELECT 1 FROM route_providers AS rp WHERE rp.route = r.name)
UNION ALL
SELECT 'every provider of the route is disabled', r.name
FROM routes AS r
WHERE EXISTS (SELECT 1 FROM route_providers AS rp WHERE rp.route = r.name)
  AND NOT EXISTS (SELECT 1 FROM route_providers AS rp JOIN providers AS p ON p.name = rp.provider
                  WHERE rp.route = r.name AND p.enabled = 1)
UNION ALL
SELECT 'route has more than 8 providers (the agent uses the first 8)', route
FROM route_providers
GROUP BY route
HAVING count(*) > 8
UNION ALL
SELECT 'route_providers names a missing provider', rp.route || ' ' || rp.position || ': ' || rp.provider
FROM route_providers AS rp
WHERE NOT EXISTS (SELECT 1 FROM providers AS p WHERE p.name = rp.provider)
UNION ALL
SELECT 'route_providers names a missing route', rp.route || ' ' || rp.position || ': ' || rp.provider
FROM route_providers AS rp
WHERE NOT EXISTS (SELECT 1 FROM routes AS r WHERE r.name = rp.route)
UNION ALL
-- Only reachable with PRAGMA ignore_check_constraints.
SELECT 'fallback backend without fallback_backend', name
FROM routes
WHERE fallback = 'backend' AND COALESCE(fallback_backend, '') = '';
