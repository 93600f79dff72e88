#!/bin/sh
# tests/test_schema.sh: the SQL schema and its audit views (POSIX sh, sqlite3).
#
# Applies schema/NNN_*.sql to a fresh database the way the agent does (one
# transaction per file, then PRAGMA user_version = NNN), loads a small fixed
# data set and checks every view's exact output, the constraints, and that
# schema/embed.sh embeds the files byte for byte (when a C compiler is found).
# Prints "ok - ..." / "not ok - ..." per check, then "N passed, N failed".
set -u

here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tg_schema.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
db=$tmp/test.db
pass=0
fail=0

ok()     { pass=$((pass + 1)); echo "ok - $1"; }
not_ok() { fail=$((fail + 1)); echo "not ok - $1"; }

# sql STATEMENTS: run against the test db with foreign keys on (as the agent).
sql() {
    sqlite3 -batch -bail -noheader -separator '|' -nullvalue NULL "$db" \
        "PRAGMA foreign_keys = ON; $1"
}

# check NAME SQL EXPECTED: SQL's output must equal EXPECTED exactly.
check() {
    got=$(sql "$2" 2>&1)
    if [ "$got" = "$3" ]; then
        ok "$1"
    else
        not_ok "$1"
        printf '%s\n' "# expected:" "$3" "# got:" "$got" | sed 's/^/#   /'
    fi
}

# rejects NAME SQL: SQL must fail on a constraint (CHECK or FOREIGN KEY).
rejects() {
    if err=$(sql "$2" 2>&1); then
        not_ok "$1 (accepted)"
    else
        case $err in
        *"constraint failed"*) ok "$1" ;;
        *) not_ok "$1 (failed, but not on a constraint)"; echo "#   $err" ;;
        esac
    fi
}

# accepts NAME SQL: SQL must succeed.
accepts() {
    if err=$(sql "$2" 2>&1); then
        ok "$1"
    else
        not_ok "$1"
        echo "#   $err"
    fi
}

command -v sqlite3 >/dev/null 2>&1 || { echo "not ok - sqlite3 shell not found"; echo "0 passed, 1 failed"; exit 1; }

# --- migrations, as the agent applies them ----------------------------------
applied=0
last=0
for f in "$here"/schema/[0-9][0-9][0-9]_*.sql; do
    v=$(basename "$f" | cut -c1-3 | sed 's/^0*//')
    last=$v
    cur=$(sqlite3 -batch "$db" "PRAGMA user_version;")
    [ "$cur" -lt "$v" ] || continue
    if { echo "PRAGMA foreign_keys = ON;"; echo "BEGIN;"; cat "$f"; echo;
         echo "PRAGMA user_version = $v;"; echo "COMMIT;"; } |
       sqlite3 -batch -bail "$db" >"$tmp/migrate.out" 2>&1; then
        applied=$((applied + 1))
    else
        not_ok "migration $(basename "$f") applies"
        sed 's/^/#   /' "$tmp/migrate.out"
        echo "$pass passed, $fail failed"
        exit 1
    fi
done
check "migrations applied, user_version = $last" "PRAGMA user_version;" "$last"
if [ "$applied" -ge 1 ]; then
    ok "$applied migration(s) applied in a transaction each"
else
    not_ok "no migration applied"
fi
check "integrity_check" "PRAGMA integrity_check;" "ok"
check "foreign_key_check is empty" "PRAGMA foreign_key_check;" ""
check "settings seeded" "SELECT name || '=' || value FROM settings ORDER BY name;" \
"audit_retention_days=30
daily_usage_interval_ms=1000
default_max_tokens=1024
default_tier=default
flush_interval_ms=100
global_ceiling_action=fallback
global_daily_cost_ceiling_usd=
reservation_ttl_s=600
time_zone=UTC
unknown_key_action=deny"
check "every setting has a description" \
    "SELECT count(*) FROM settings WHERE description = '';" "0"
check "tiers seeded" "SELECT * FROM tiers ORDER BY name;" \
"default|100000|1000|5.0|deny|Users with no row in users (see settings.default_tier). Denied with 429 once over budget.
free|10000|100|0.5|fallback|Small free allowance. Served the fallback answer once over budget.
unlimited|NULL|NULL|NULL|deny|No daily limits (internal services, on-call). Still counted and audited."
check "model prices seeded, with a '*' default" \
    "SELECT model, input_usd_per_million, output_usd_per_million FROM model_prices ORDER BY model;" \
"*|1.0|4.0
gpt-4.1-mini|0.4|1.6
gpt-4o|2.5|10.0
gpt-4o-mini|0.15|0.6"
check "config_problems is empty on a fresh database" "SELECT * FROM config_problems;" ""

# --- fixture ----------------------------------------------------------------
# Today is 2024-03-15; the 7-day window is 2024-03-09 .. 2024-03-15.
#   alice  tier default, user override daily_tokens 5000
#   bob    tier unlimited
#   carol  tier free, user override daily_cost_usd 2.0, over her tokens today
#   dave   no users row (default_tier), usage only
#   erin   only an override (daily_requests 50), no usage yet
if ! sql "
INSERT INTO agent_state (name, value) VALUES ('current_day', '2024-03-15'),
    ('started_at', '2024-03-15T00:00:01Z');
INSERT INTO users (user_id, tier, display_name) VALUES
    ('alice', 'default', 'Alice'), ('bob', 'unlimited', 'Bob'), ('carol', 'free', NULL);
INSERT INTO user_limits (user_id, daily_tokens, note) VALUES ('alice', 5000, 'TICKET-1');
INSERT INTO user_limits (user_id, daily_cost_usd) VALUES ('carol', 2.0);
INSERT INTO user_limits (user_id, daily_requests) VALUES ('erin', 50);
INSERT INTO daily_usage (day, user_id, tokens_in, tokens_out, requests, cost_usd, denials, fallbacks, updated_at) VALUES
    ('2024-03-15', 'alice',  3000,  1000,  10, 1.25,   2, 0, '2024-03-15T12:00:00Z'),
    ('2024-03-15', 'bob',   20000, 30000,  40, 3.5,    0, 0, '2024-03-15T12:00:01Z'),
    ('2024-03-15', 'carol',  6000,  5000, 100, 0.25,   0, 3, '2024-03-15T12:00:02Z'),
    ('2024-03-15', 'dave',    100,    50,   1, 0.125,  0, 0, '2024-03-15T12:00:03Z'),
    ('2024-03-09', 'alice',  1000,  1000,   5, 0.5,    0, 0, '2024-03-09T23:59:59Z'),
    ('2024-03-09', 'dave',   2000,     0,   2, 0.25,   0, 0, '2024-03-09T23:59:59Z'),
    ('2024-03-08', 'bob',    1000,  1000,   1, 40.0,   0, 0, '2024-03-08T23:59:59Z'),
    ('2024-03-07', 'carol', 90000,  9000,  99, 50.0,   1, 1, '2024-03-07T23:59:59Z'),
    ('2024-03-16', 'dave',      1,     1,   1, 99.0,   0, 0, '2024-03-16T00:00:01Z');
INSERT INTO audit_log (decided_at, unique_id, user_id, route, model, provider, action, reason,
                       tokens_estimated, tokens_in, tokens_out, cost_usd, status, latency_ms, outcome) VALUES
    ('2024-03-15T10:00:00.000Z', 'u1',  'alice', '/v1/chat/completions', 'gpt-4o', NULL,       'deny',     'budget_tokens',      900, NULL, NULL, NULL, NULL, NULL, 'refused'),
    ('2024-03-15T10:01:00.000Z', 'u2',  'alice', '/v1/chat/completions', 'gpt-4o', 'openai',   'deny',     'budget_tokens',      900, NULL, NULL, NULL, NULL, NULL, 'refused'),
    ('2024-03-15T11:00:00.000Z', 'u3',  'carol', '/v1/chat/completions', 'gpt-4o', 'fallback', 'fallback', 'budget_cost',        100, NULL, NULL, NULL, 200,  1,    'fallback'),
    ('2024-03-15T11:00:01.000Z', 'u4',  'carol', '/v1/chat/completions', 'gpt-4o', 'fallback', 'fallback', 'budget_cost',        100, NULL, NULL, NULL, 200,  1,    'fallback'),
    ('2024-03-15T11:30:00.000Z', 'u5',  'dave',  '/v1/chat/completions', 'gpt-4o', NULL,       'fallback', 'provider_unhealthy', 100, NULL, NULL, NULL, NULL, NULL, 'fallback'),
    ('2024-03-14T09:00:00.000Z', 'u6',  NULL,    '/v1/chat/completions', NULL,     NULL,       'deny',     'unknown_key',        NULL, NULL, NULL, NULL, NULL, NULL, 'refused'),
    ('2024-03-14T09:30:00.000Z', 'u7',  'dave',  '/v1/chat/completions', 'gpt-4o', NULL,       'fallback', 'global_ceiling',     100, NULL, NULL, NULL, NULL, NULL, 'fallback'),
    ('2024-03-15T08:00:00.000Z', 'u8',  'bob',   '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, 400, 90,  0.0019, 200,  100,  'settled'),
    ('2024-03-15T08:00:01.000Z', 'u9',  'bob',   '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, NULL, NULL, NULL,  200,  300,  'estimated'),
    ('2024-03-15T08:00:02.000Z', 'u10', 'bob',   '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, NULL, NULL, NULL,  503,  50,   'settled'),
    ('2024-03-15T08:00:03.000Z', 'u11', 'bob',   '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, NULL, NULL, NULL,  429,  20,   'settled'),
    ('2024-03-15T08:00:04.000Z', 'u12', 'bob',   '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, NULL, NULL, NULL,  NULL, NULL, 'expired'),
    ('2024-03-15T08:10:00.000Z', 'u13', 'alice', '/v1/chat/completions', 'gpt-4o', 'azure',    'allow',    'ok', 500, 300, 100, 0.00175, 200, 200,  'settled'),
    ('2024-03-15T08:10:01.000Z', 'u14', 'alice', '/v1/chat/completions', 'gpt-4o', 'azure',    'allow',    'ok', 500, NULL, NULL, NULL,  500,  1000, 'settled'),
    ('2024-03-14T07:00:00.000Z', 'u15', 'dave',  '/v1/chat/completions', 'gpt-4o', 'openai',   'allow',    'ok', 500, 100, 50,  0.0005, 200,  150,  'settled'),
    ('2024-03-14T07:00:01.000Z', 'u16', 'dave',  '/v1/chat/completions', 'gpt-4o', 'anthropic','allow',    'ok', 500, NULL, NULL, NULL,  NULL, NULL, 'estimated');
" >"$tmp/fixture.out" 2>&1; then
    not_ok "fixture loads"
    sed 's/^/#   /' "$tmp/fixture.out"
else
    ok "fixture loads"
fi

# --- views ------------------------------------------------------------------
check "limits_in_force: override, tier, default tier, override-only user" \
    "SELECT * FROM limits_in_force;" \
"alice|default|5000|user|1000|tier|5.0|tier
bob|unlimited|NULL|tier|NULL|tier|NULL|tier
carol|free|10000|tier|100|tier|2.0|user
dave|default|100000|tier|1000|tier|5.0|tier
erin|default|100000|tier|50|user|5.0|tier"

check "usage_today: today's rows, biggest first, remaining clamped, NULL when unlimited" \
    "SELECT * FROM usage_today;" \
"bob|unlimited|20000|30000|50000|40|3.5|0|0|NULL|NULL|2024-03-15T12:00:01Z
carol|free|6000|5000|11000|100|0.25|0|3|10000|0|2024-03-15T12:00:02Z
alice|default|3000|1000|4000|10|1.25|2|0|5000|1000|2024-03-15T12:00:00Z
dave|default|100|50|150|1|0.125|0|0|100000|99850|2024-03-15T12:00:03Z"

check "top_spenders_7d: 2024-03-09..15 only (not 7 or 8 days ago, not tomorrow)" \
    "SELECT * FROM top_spenders_7d;" \
"bob|1|40|50000|3.5
alice|2|15|6000|1.75
dave|2|3|2150|0.375
carol|1|100|11000|0.25"

check "denials_by_reason: per day and reason, newest first" \
    "SELECT * FROM denials_by_reason;" \
"2024-03-15|budget_cost|0|2
2024-03-15|budget_tokens|2|0
2024-03-15|provider_unhealthy|0|1
2024-03-14|global_ceiling|0|1
2024-03-14|unknown_key|1|0"

check "user_history: one user's days with limits in force" \
    "SELECT * FROM user_history WHERE user_id = 'alice';" \
"2024-03-15|alice|default|3000|1000|4000|10|1.25|2|0|5000|1000|5.0|2024-03-15T12:00:00Z
2024-03-09|alice|default|1000|1000|2000|5|0.5|0|0|5000|1000|5.0|2024-03-09T23:59:59Z"

check "user_history: user without a users row gets default_tier" \
    "SELECT day, tier, tokens_total, daily_tokens FROM user_history WHERE user_id = 'dave';" \
"2024-03-16|default|2|100000
2024-03-15|default|150|100000
2024-03-09|default|2000|100000"

check "provider_outcomes: requests, 5xx/expired errors, 429s, latency (allowed requests only)" \
    "SELECT * FROM provider_outcomes;" \
"2024-03-15|azure|2|1|0|600.0|0.5
2024-03-15|openai|5|2|1|117.5|0.4
2024-03-14|anthropic|1|0|0|NULL|0.0
2024-03-14|openai|1|0|0|150.0|0.0"

# --- operators' SQL (schema/README.md) ---------------------------------------
accepts "raise a user's limit (upsert, existing override)" \
    "INSERT INTO user_limits (user_id, daily_tokens) VALUES ('alice', 8000)
     ON CONFLICT (user_id) DO UPDATE SET daily_tokens = excluded.daily_tokens,
         updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now');"
accepts "raise a user's limit (upsert, new override)" \
    "INSERT INTO user_limits (user_id, daily_tokens) VALUES ('dave', 200000)
     ON CONFLICT (user_id) DO UPDATE SET daily_tokens = excluded.daily_tokens,
         updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now');"
accepts "change a tier's limit" \
    "UPDATE tiers SET daily_tokens = 20000 WHERE name = 'free';"
check "limits_in_force follows the changes" \
    "SELECT user_id, daily_tokens, daily_tokens_from FROM limits_in_force WHERE user_id IN ('alice', 'carol', 'dave');" \
"alice|8000|user
carol|20000|tier
dave|200000|user"
check "the alice override kept its note" \
    "SELECT note FROM user_limits WHERE user_id = 'alice';" "TICKET-1"
check "usage_today remaining follows the new limits" \
    "SELECT user_id, daily_tokens, tokens_remaining FROM usage_today;" \
"bob|NULL|NULL
carol|20000|9000
alice|8000|4000
dave|200000|199850"

accepts "add an API key" \
    "INSERT INTO api_keys (key_hmac, key_prefix, user_id, label, expires_at) VALUES
     ('$(printf '%064d' 0 | tr 0 a)', 'tg_abcde', 'alice', 'laptop', '2030-01-01T00:00:00Z'),
     ('$(printf '%064d' 0 | tr 0 b)', 'tg_zzzzz', 'bob', 'ci', NULL);"
accepts "revoke a key by prefix" \
    "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE key_prefix = 'tg_abcde';"
check "only that key is revoked" \
    "SELECT key_prefix, revoked_at IS NOT NULL FROM api_keys ORDER BY key_prefix;" \
"tg_abcde|1
tg_zzzzz|0"
accepts "a global cost ceiling can be set" \
    "UPDATE settings SET value = '250.50' WHERE name = 'global_daily_cost_ceiling_usd';"
accepts "a numeric setting can be written as a number" \
    "UPDATE settings SET value = 250 WHERE name = 'flush_interval_ms';"

# --- constraints -------------------------------------------------------------
rejects "tier over_budget_action must be deny or fallback" \
    "INSERT INTO tiers (name, over_budget_action) VALUES ('x', 'maybe');"
rejects "tier limits must be integers" \
    "UPDATE tiers SET daily_tokens = '50k' WHERE name = 'free';"
rejects "limits cannot be negative" \
    "INSERT INTO user_limits (user_id, daily_requests) VALUES ('zed', -1);"
rejects "integer settings must be positive integers" \
    "UPDATE settings SET value = '100ms' WHERE name = 'flush_interval_ms';"
accepts "daily_usage_interval_ms takes an integer from 10 to 60000" \
    "UPDATE settings SET value = 60000 WHERE name = 'daily_usage_interval_ms';"
rejects "daily_usage_interval_ms under 10 ms is refused" \
    "UPDATE settings SET value = '9' WHERE name = 'daily_usage_interval_ms';"
rejects "daily_usage_interval_ms over 60000 ms is refused" \
    "UPDATE settings SET value = '60001' WHERE name = 'daily_usage_interval_ms';"
rejects "daily_usage_interval_ms must be digits" \
    "UPDATE settings SET value = '1e3' WHERE name = 'daily_usage_interval_ms';"
rejects "daily_usage_interval_ms must be text, not a blob" \
    "UPDATE settings SET value = x'3130' WHERE name = 'daily_usage_interval_ms';"
rejects "a second daily_usage_interval_ms row is checked too" \
    "INSERT OR REPLACE INTO settings (name, value) VALUES ('daily_usage_interval_ms', '5');"
rejects "global_ceiling_action must be fallback or deny" \
    "UPDATE settings SET value = 'panic' WHERE name = 'global_ceiling_action';"
rejects "cost ceiling must be a number or empty" \
    "UPDATE settings SET value = '\$250' WHERE name = 'global_daily_cost_ceiling_usd';"
rejects "key_hmac must be 64 lowercase hex digits" \
    "INSERT INTO api_keys (key_hmac, user_id) VALUES ('$(printf '%064d' 0 | tr 0 A)', 'alice');"
rejects "expires_at must be a real 'YYYY-MM-DDTHH:MM:SSZ'" \
    "UPDATE api_keys SET expires_at = '2025-02-30T00:00:00Z' WHERE key_prefix = 'tg_zzzzz';"
rejects "expires_at must not be a bare date" \
    "UPDATE api_keys SET expires_at = '2025-02-28' WHERE key_prefix = 'tg_zzzzz';"
rejects "daily_usage.day must be 'YYYY-MM-DD'" \
    "INSERT INTO daily_usage (day, user_id) VALUES ('2024-3-5', 'alice');"
rejects "audit_log.outcome is one of the five" \
    "INSERT INTO audit_log (decided_at, action, reason, outcome) VALUES ('2024-03-15T10:00:00.000Z', 'allow', 'ok', 'pending');"
rejects "audit_log.action is allow, deny or fallback" \
    "INSERT INTO audit_log (decided_at, action, reason, outcome) VALUES ('2024-03-15T10:00:00.000Z', 'block', 'ok', 'refused');"
rejects "audit_log.decided_at carries milliseconds" \
    "INSERT INTO audit_log (decided_at, action, reason, outcome) VALUES ('2024-03-15T10:00:00Z', 'deny', 'x', 'refused');"
accepts "audit_log.decided_at defaults to now with milliseconds" \
    "INSERT INTO audit_log (action, reason, outcome) VALUES ('deny', 'test', 'refused');
     DELETE FROM audit_log WHERE reason = 'test';"
rejects "users must be in an existing tier" \
    "INSERT INTO users (user_id, tier) VALUES ('zed', 'gold');"
rejects "a tier in use cannot be deleted" \
    "DELETE FROM tiers WHERE name = 'unlimited';"
accepts "renaming a tier" \
    "UPDATE tiers SET name = 'internal' WHERE name = 'unlimited';"
check "renaming a tier cascades to users" \
    "SELECT tier FROM users WHERE user_id = 'bob';" "internal"

# --- config_problems ----------------------------------------------------------
accepts "misconfiguration written without foreign keys" \
    "PRAGMA foreign_keys = OFF;
     UPDATE settings SET value = 'gold' WHERE name = 'default_tier';
     UPDATE settings SET value = 'silver' WHERE name = 'unknown_key_action';
     INSERT INTO users (user_id, tier) VALUES ('zed', 'bronze');
     DELETE FROM model_prices WHERE model = '*';"
check "config_problems lists it" "SELECT * FROM config_problems;" \
"default_tier names no tier|gold
unknown_key_action is neither deny nor a tier|silver
user in a missing tier|zed: bronze
no default model price|model_prices has no '*' row"
accepts "misconfiguration repaired" \
    "UPDATE settings SET value = 'default' WHERE name = 'default_tier';
     UPDATE settings SET value = 'free' WHERE name = 'unknown_key_action';
     DELETE FROM users WHERE user_id = 'zed';
     INSERT INTO model_prices (model, input_usd_per_million, output_usd_per_million) VALUES ('*', 1, 4);"
check "config_problems is empty again" "SELECT * FROM config_problems;" ""

# --- "today" falls back to the UTC date ---------------------------------------
accepts "agent_state without current_day" \
    "DELETE FROM agent_state WHERE name = 'current_day';
     INSERT INTO daily_usage (day, user_id, tokens_in, requests) VALUES (date('now'), 'zed', 7, 1);"
check "usage_today uses date('now') when current_day is absent" \
    "SELECT user_id, tokens_total, daily_tokens FROM usage_today;" "zed|7|100000"
check "top_spenders_7d uses date('now') when current_day is absent" \
    "SELECT user_id, tokens_total FROM top_spenders_7d;" "zed|7"

# --- migration 002: providers, routes, provider health ------------------------
text='The assistant is temporarily unavailable, so this is an automatic reply. Please try again in a few minutes.'
check "providers seeded" "SELECT * FROM providers ORDER BY name;" \
"provider_primary|Primary LLM provider|1|30|10|0.5|5|30|3
provider_secondary|Secondary LLM provider|1|30|10|0.5|5|30|3"
check "routes seeded" "SELECT name, path_prefix, model_glob, priority, timeout_ms, fallback, fallback_backend,
    fallback_text, fallback_max_bytes FROM routes ORDER BY name;" \
"chat|/v1/chat/completions|*|10|30000|computed|NULL|$text|600
default|/v1/|*|1000|30000|static|NULL|$text|600"
# --- migration 003: prompt logging -------------------------------------------
check "prompt logging is off by default, 7 days" "SELECT * FROM prompt_logging_in_force;" \
"chat|off|7|0
default|off|7|0"
rejects "prompt_logging must be off, hash, redacted or full" \
    "UPDATE routes SET prompt_logging = 'everything' WHERE name = 'chat';"
check "retention 0 is allowed (purge at the next cycle)" \
    "UPDATE routes SET prompt_retention_days = 0 WHERE name = 'chat'; SELECT prompt_retention_days FROM routes WHERE name = 'chat';" "0"
check "route_providers seeded" "SELECT * FROM route_providers ORDER BY route, position;" \
"chat|1|provider_primary
chat|2|provider_secondary
default|1|provider_primary
default|2|provider_secondary"
check "provider_health starts empty (the agent writes it)" "SELECT count(*) FROM provider_health;" "0"
check "routes_in_force: chains in position order, by priority then name" \
    "SELECT * FROM routes_in_force;" \
"chat|10|/v1/chat/completions|*|provider_primary,provider_secondary|computed|NULL|30000
default|1000|/v1/|*|provider_primary,provider_secondary|static|NULL|30000"
check "provider_status before the agent reports: every provider, state NULL" \
    "SELECT * FROM provider_status;" \
"provider_primary|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|1|Primary LLM provider|NULL
provider_secondary|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|1|Secondary LLM provider|NULL"
check "routing_problems is empty on a fresh database" "SELECT * FROM routing_problems;" ""
# Per-row CHECKs without IN lists or date functions (provider_health is
# written several times a second; the others keep the same style).
check "002 tables: no IN (...), date() or strftime() in their definitions" \
    "SELECT name FROM sqlite_master
     WHERE (name = 'providers' OR name = 'routes' OR name = 'route_providers' OR name = 'provider_health')
       AND (sql LIKE '% IN (%' OR sql LIKE '%date(%' OR sql LIKE '%strftime(%');" ""

accepts "the agent writes provider_health" \
    "INSERT INTO providers (name, description, enabled) VALUES ('provider_backup', 'Backup', 0);
     INSERT INTO provider_health (provider, state, since, open_until, reason, window_requests, window_failures,
                                  consecutive_failures, probes_in_flight, servers_up, opened_total,
                                  requests_total, failures_total, updated_at) VALUES
        ('provider_primary', 'open', '2024-03-15T12:00:00.000Z', '2024-03-15T12:00:30.000Z', 'error_rate',
         20, 12, 3, 0, 2, 1, 500, 40, '2024-03-15T12:00:05.250Z'),
        ('provider_secondary', 'closed', '2024-03-15T00:00:01.000Z', NULL, NULL,
         0, 0, 0, 0, NULL, 0, 7, 0, '2024-03-15T12:00:05.250Z'),
        ('provider_backup', 'disabled', '2024-03-15T09:00:00.000Z', NULL, NULL,
         0, 0, 0, 0, 1, 0, 0, 0, '2024-03-15T12:00:05.250Z'),
        ('provider_gone', 'closed', '2024-03-15T00:00:01.000Z', NULL, NULL,
         3, 1, 0, 0, 1, 0, 3, 1, '2024-03-15T12:00:05.250Z');"
check "provider_status: state, since, reason, window error %, servers_up, enabled (current providers only)" \
    "SELECT * FROM provider_status;" \
"provider_backup|disabled|2024-03-15T09:00:00.000Z|NULL|NULL|0|0|NULL|0|1|0|Backup|2024-03-15T12:00:05.250Z
provider_primary|open|2024-03-15T12:00:00.000Z|2024-03-15T12:00:30.000Z|error_rate|20|12|60.0|3|2|1|Primary LLM provider|2024-03-15T12:00:05.250Z
provider_secondary|closed|2024-03-15T00:00:01.000Z|NULL|NULL|0|0|NULL|0|NULL|1|Secondary LLM provider|2024-03-15T12:00:05.250Z"
accepts "the agent updates a breaker in place (upsert)" \
    "INSERT INTO provider_health (provider, state, since, reason, window_requests, window_failures, updated_at)
     VALUES ('provider_primary', 'half_open', '2024-03-15T12:00:30.000Z', 'error_rate', 3, 1, '2024-03-15T12:00:31.000Z')
     ON CONFLICT (provider) DO UPDATE SET state = excluded.state, since = excluded.since,
         open_until = NULL, window_requests = excluded.window_requests,
         window_failures = excluded.window_failures, updated_at = excluded.updated_at;"
check "provider_status follows" \
    "SELECT provider, state, since, open_until, reason, window_error_pct FROM provider_status WHERE provider = 'provider_primary';" \
    "provider_primary|half_open|2024-03-15T12:00:30.000Z|NULL|error_rate|33.3"

# --- migration 004: audit_log indexed by time only ----------------------------
# Every audit_log index must lead with decided_at: an index leading with any
# other column takes a random page per inserted row (see 004's comment).
check "audit_log: every index leads with decided_at (appends only)" \
    "SELECT count(*) FROM sqlite_master m, pragma_index_info(m.name) i
     WHERE m.type = 'index' AND m.tbl_name = 'audit_log' AND i.seqno = 0 AND i.name <> 'decided_at';" "0"
check "one user's requests in a time window read the decided_at index" \
    "EXPLAIN QUERY PLAN SELECT * FROM audit_log
     WHERE decided_at >= '2024-03-15T00:00:00.000Z' AND user_id = 'alice' ORDER BY decided_at DESC;" \
"QUERY PLAN
\`--SEARCH audit_log USING INDEX audit_log_decided_at (decided_at>?)"

# --- operators' SQL for routes and providers (schema/README.md) ---------------
rejects "swapping positions in one UPDATE trips the primary key" \
    "UPDATE route_providers SET position = 3 - position
     WHERE route = 'chat' AND (position = 1 OR position = 2);"
accepts "swap primary and secondary of a route via a temporary position" \
    "BEGIN IMMEDIATE;
     UPDATE route_providers SET position = 1000 WHERE route = 'chat' AND position = 1;
     UPDATE route_providers SET position = 1    WHERE route = 'chat' AND position = 2;
     UPDATE route_providers SET position = 2    WHERE route = 'chat' AND position = 1000;
     COMMIT;"
check "the chat chain is swapped, the default one is not" \
    "SELECT route, chain FROM routes_in_force;" \
"chat|provider_secondary,provider_primary
default|provider_primary,provider_secondary"
accepts "add a route for a model family, with its chain, in one transaction" \
    "BEGIN IMMEDIATE;
     INSERT INTO routes (name, path_prefix, model_glob, priority, timeout_ms)
     VALUES ('gpt-4o', '/v1/chat/completions', 'gpt-4o*', 5, 60000);
     INSERT INTO route_providers (route, position, provider) VALUES
         ('gpt-4o', 1, 'provider_secondary'),
         ('gpt-4o', 2, 'provider_primary');
     COMMIT;"
accepts "add a provider at the end of a chain" \
    "INSERT INTO providers (name, description) VALUES ('provider_tertiary', 'Third LLM provider');
     INSERT INTO route_providers (route, position, provider)
     SELECT 'gpt-4o', max(position) + 1, 'provider_tertiary' FROM route_providers WHERE route = 'gpt-4o';"
check "the chain has a third provider" \
    "SELECT chain FROM routes_in_force WHERE route = 'gpt-4o';" \
    "provider_secondary,provider_primary,provider_tertiary"
accepts "remove it again" \
    "DELETE FROM route_providers WHERE provider = 'provider_tertiary';
     DELETE FROM providers WHERE name = 'provider_tertiary';"
accepts "add a route with one provider, no fallback, same priority as chat" \
    "INSERT INTO routes (name, path_prefix, priority, fallback) VALUES ('embeddings', '/v1/embeddings', 10, 'none');
     INSERT INTO route_providers (route, position, provider) VALUES ('embeddings', 1, 'provider_primary');"
check "routes_in_force: the model route first, the tie at priority 10 by name" \
    "SELECT * FROM routes_in_force;" \
"gpt-4o|5|/v1/chat/completions|gpt-4o*|provider_secondary,provider_primary|computed|NULL|60000
chat|10|/v1/chat/completions|*|provider_secondary,provider_primary|computed|NULL|30000
embeddings|10|/v1/embeddings|*|provider_primary|none|NULL|30000
default|1000|/v1/|*|provider_primary,provider_secondary|static|NULL|30000"
check "model_glob is a GLOB (case-sensitive)" \
    "SELECT name FROM routes WHERE 'gpt-4o-mini' GLOB model_glob AND 'GPT-4o' NOT GLOB model_glob AND model_glob <> '*';" \
    "gpt-4o"
accepts "put a provider in maintenance" \
    "UPDATE providers SET enabled = 0 WHERE name = 'provider_primary';"
check "maintenance: other chains still have an enabled provider, embeddings has none" \
    "SELECT provider, enabled FROM provider_status WHERE provider = 'provider_primary';
     SELECT * FROM routing_problems;" \
"provider_primary|0
every provider of the route is disabled|embeddings"
accepts "change breaker thresholds" \
    "UPDATE providers SET error_rate = 0.25, window_s = 60, min_requests = 20,
         consecutive_failures = 3, open_s = 10, half_open_probes = 1
     WHERE name = 'provider_secondary';"
check "thresholds changed" \
    "SELECT window_s, min_requests, error_rate, consecutive_failures, open_s, half_open_probes
     FROM providers WHERE name = 'provider_secondary';" "60|20|0.25|3|10|1"
accepts "error_rate = 1 (an integer) is a rate of 100%" \
    "UPDATE providers SET error_rate = 1 WHERE name = 'provider_backup';"
accepts "change a route's timeout and fallback text" \
    "UPDATE routes SET timeout_ms = 5000, fallback = 'static',
         fallback_text = 'Our assistant is busy. Please retry shortly.'
     WHERE name = 'chat';"
accepts "send a route's fallback to a backend" \
    "UPDATE routes SET fallback = 'backend', fallback_backend = 'fallback_small_model' WHERE name = 'default';"
check "routes_in_force follows" \
    "SELECT route, fallback, fallback_backend, timeout_ms FROM routes_in_force WHERE route = 'chat' OR route = 'default';" \
"chat|static|NULL|5000
default|backend|fallback_small_model|30000"

# --- constraints (002) ---------------------------------------------------------
rejects "providers.enabled is 0 or 1" "UPDATE providers SET enabled = 2 WHERE name = 'provider_secondary';"
rejects "providers.window_s is at least 1" "UPDATE providers SET window_s = 0 WHERE name = 'provider_secondary';"
rejects "providers.window_s is at most 300" "UPDATE providers SET window_s = 301 WHERE name = 'provider_secondary';"
rejects "providers.window_s is an integer" "UPDATE providers SET window_s = '30s' WHERE name = 'provider_secondary';"
rejects "providers.min_requests is at least 1" "UPDATE providers SET min_requests = 0 WHERE name = 'provider_secondary';"
rejects "providers.error_rate is above 0" "UPDATE providers SET error_rate = 0 WHERE name = 'provider_secondary';"
rejects "providers.error_rate is at most 1" "UPDATE providers SET error_rate = 1.5 WHERE name = 'provider_secondary';"
rejects "providers.error_rate is a number" "UPDATE providers SET error_rate = 'half' WHERE name = 'provider_secondary';"
rejects "providers.consecutive_failures is at least 1" \
    "UPDATE providers SET consecutive_failures = 0 WHERE name = 'provider_secondary';"
rejects "providers.open_s is at least 1" "UPDATE providers SET open_s = 0 WHERE name = 'provider_secondary';"
rejects "providers.half_open_probes is at least 1" "UPDATE providers SET half_open_probes = 0 WHERE name = 'provider_secondary';"
rejects "providers.name is an HAProxy backend name" "INSERT INTO providers (name) VALUES ('provider one');"
rejects "providers.name is not empty" "INSERT INTO providers (name) VALUES ('');"
rejects "providers.name is under 64 bytes" "INSERT INTO providers (name) VALUES ('$(printf '%064d' 0)');"
rejects "routes.timeout_ms is at least 100" "UPDATE routes SET timeout_ms = 99 WHERE name = 'chat';"
rejects "routes.timeout_ms is at most 600000" "UPDATE routes SET timeout_ms = 600001 WHERE name = 'chat';"
rejects "routes.timeout_ms is an integer" "UPDATE routes SET timeout_ms = '5s' WHERE name = 'chat';"
rejects "routes.fallback is one of the four" "UPDATE routes SET fallback = 'retry' WHERE name = 'chat';"
rejects "fallback 'backend' needs fallback_backend" "UPDATE routes SET fallback = 'backend' WHERE name = 'chat';"
rejects "fallback_backend is not empty" "UPDATE routes SET fallback_backend = '' WHERE name = 'default';"
rejects "routes.fallback_max_bytes is at least 64" "UPDATE routes SET fallback_max_bytes = 63 WHERE name = 'chat';"
rejects "routes.fallback_max_bytes is at most 4000" "UPDATE routes SET fallback_max_bytes = 4001 WHERE name = 'chat';"
rejects "fallback_text fits in fallback_max_bytes" \
    "UPDATE routes SET fallback_max_bytes = 64 WHERE name = 'default';"
rejects "routes.path_prefix starts with /" "UPDATE routes SET path_prefix = 'v1/' WHERE name = 'chat';"
rejects "routes.path_prefix has no space" "UPDATE routes SET path_prefix = '/v1/ chat' WHERE name = 'chat';"
rejects "routes.model_glob is not empty" "UPDATE routes SET model_glob = '' WHERE name = 'chat';"
rejects "routes.priority is an integer" "UPDATE routes SET priority = 'high' WHERE name = 'chat';"
rejects "route_providers.position is at least 1" \
    "INSERT INTO route_providers (route, position, provider) VALUES ('chat', 0, 'provider_backup');"
rejects "route_providers names an existing provider" \
    "INSERT INTO route_providers (route, position, provider) VALUES ('chat', 3, 'provider_nope');"
rejects "route_providers names an existing route" \
    "INSERT INTO route_providers (route, position, provider) VALUES ('nope', 1, 'provider_primary');"
rejects "provider_health.state is one of the four" \
    "UPDATE provider_health SET state = 'broken' WHERE provider = 'provider_secondary';"
rejects "provider_health.reason is one of the five" \
    "UPDATE provider_health SET reason = 'bad_luck' WHERE provider = 'provider_secondary';"
rejects "provider_health.since carries milliseconds" \
    "UPDATE provider_health SET since = '2024-03-15T12:00:00Z' WHERE provider = 'provider_secondary';"
rejects "provider_health counters are not negative" \
    "UPDATE provider_health SET window_failures = -1 WHERE provider = 'provider_secondary';"

# --- cascades -------------------------------------------------------------------
accepts "rename a route" "UPDATE routes SET name = 'chat_v2' WHERE name = 'chat';"
check "renaming a route carries its chain" \
    "SELECT route, position, provider FROM route_providers WHERE route LIKE 'chat%' ORDER BY route, position;" \
"chat_v2|1|provider_secondary
chat_v2|2|provider_primary"
accepts "rename a provider" "UPDATE providers SET name = 'provider_main' WHERE name = 'provider_primary';"
check "renaming a provider cascades to every chain" \
    "SELECT route, chain FROM routes_in_force;" \
"gpt-4o|provider_secondary,provider_main
chat_v2|provider_secondary,provider_main
embeddings|provider_main
default|provider_main,provider_secondary"
rejects "a provider in a chain cannot be deleted" "DELETE FROM providers WHERE name = 'provider_main';"
accepts "a provider in no chain can be deleted" "DELETE FROM providers WHERE name = 'provider_backup';"
accepts "delete a route" "DELETE FROM routes WHERE name = 'gpt-4o';"
check "deleting a route deletes its chain" \
    "SELECT count(*) FROM route_providers WHERE route = 'gpt-4o';" "0"
check "foreign_key_check is still empty" "PRAGMA foreign_key_check;" ""

# --- routing_problems -----------------------------------------------------------
accepts "misrouting written without foreign keys or checks" \
    "PRAGMA foreign_keys = OFF;
     UPDATE providers SET enabled = 0;
     INSERT INTO routes (name, priority) VALUES ('empty', 50);
     DELETE FROM routes WHERE name = 'embeddings';
     INSERT INTO route_providers (route, position, provider) VALUES ('chat_v2', 3, 'provider_nope');
     WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9)
     INSERT INTO route_providers (route, position, provider)
         SELECT 'default', i + 10, 'provider_main' FROM n;
     PRAGMA ignore_check_constraints = ON;
     UPDATE routes SET fallback = 'backend', fallback_backend = NULL WHERE name = 'chat_v2';"
check "routing_problems lists it" "SELECT * FROM routing_problems;" \
"route has no provider|empty
every provider of the route is disabled|chat_v2
every provider of the route is disabled|default
route has more than 8 providers (the agent uses the first 8)|default
route_providers names a missing provider|chat_v2 3: provider_nope
route_providers names a missing route|embeddings 1: provider_main
fallback backend without fallback_backend|chat_v2"
accepts "misrouting repaired" \
    "UPDATE providers SET enabled = 1 WHERE name = 'provider_secondary';
     DELETE FROM routes WHERE name = 'empty';
     DELETE FROM route_providers WHERE route = 'embeddings' OR provider = 'provider_nope' OR position > 10;
     UPDATE routes SET fallback = 'computed' WHERE name = 'chat_v2';"
check "routing_problems is empty again" "SELECT * FROM routing_problems;" ""
check "config_problems and routing_problems combine (README)" \
    "SELECT * FROM config_problems UNION ALL SELECT * FROM routing_problems;" ""
accepts "the agent reports on the renamed provider: a 429 opened it" \
    "INSERT INTO provider_health (provider, state, since, open_until, reason, window_requests, window_failures,
                                  servers_up, updated_at)
     VALUES ('provider_main', 'open', '2024-03-15T13:00:00.000Z', '2024-03-15T13:00:05.000Z', 'rate_limited',
             8, 1, 2, '2024-03-15T13:00:00.500Z');"
check "breakers that are not closed (README)" \
    "SELECT provider, state, since, open_until, reason, window_error_pct, servers_up
     FROM provider_status WHERE state <> 'closed';" \
    "provider_main|open|2024-03-15T13:00:00.000Z|2024-03-15T13:00:05.000Z|rate_limited|12.5|2"
check "foreign_key_check is empty again" "PRAGMA foreign_key_check;" ""

# --- upgrading a version-1 database ---------------------------------------------
# migrate DB FILE VERSION: as the agent does; fails (rolled back) on any error.
migrate() {
    { echo "PRAGMA foreign_keys = ON;"; echo "BEGIN;"; cat "$2"; echo;
      echo "PRAGMA user_version = $3;"; echo "COMMIT;"; } | sqlite3 -batch -bail "$1" >/dev/null 2>&1
}
up=$tmp/upgrade.db
if migrate "$up" "$here/schema/001_init.sql" 1 &&
   sqlite3 -batch "$up" "INSERT INTO users (user_id, tier) VALUES ('alice', 'free');" &&
   migrate "$up" "$here/schema/002_providers_routes.sql" 2 &&
   [ "$(sqlite3 -batch "$up" "PRAGMA user_version; SELECT tier FROM users; SELECT count(*) FROM routes_in_force;")" = "2
free
2" ]; then
    ok "002 upgrades a version-1 database with data, keeping it"
else
    not_ok "002 upgrades a version-1 database with data, keeping it"
fi
up=$tmp/upgrade_fail.db
if migrate "$up" "$here/schema/001_init.sql" 1 &&
   sqlite3 -batch "$up" "CREATE TABLE route_providers (x);" &&
   ! migrate "$up" "$here/schema/002_providers_routes.sql" 2 &&
   [ "$(sqlite3 -batch "$up" "PRAGMA user_version; SELECT count(*) FROM sqlite_master WHERE name = 'providers' OR name = 'routes';")" = "1
0" ]; then
    ok "a failing 002 is rolled back whole (no BEGIN/COMMIT of its own)"
else
    not_ok "a failing 002 is rolled back whole (no BEGIN/COMMIT of its own)"
fi
bad=$(for f in "$here"/schema/[0-9][0-9][0-9]_*.sql; do
          sed 's/--.*//' "$f" |
          grep -Eiq '^[[:space:]]*(BEGIN|COMMIT|END|ROLLBACK)([[:space:]]+(TRANSACTION|DEFERRED|IMMEDIATE|EXCLUSIVE))?[[:space:]]*;|PRAGMA[[:space:]]+user_version' &&
          basename "$f"
      done)
if [ -z "$bad" ]; then
    ok "no migration holds BEGIN/COMMIT or PRAGMA user_version"
else
    not_ok "no migration holds BEGIN/COMMIT or PRAGMA user_version"
    echo "$bad" | sed 's/^/#   /'
fi

# --- schema/embed.sh ----------------------------------------------------------
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "ok - embed.sh round trip # SKIP no C compiler"
elif ! sh "$here/schema/embed.sh" >"$tmp/schema_sql.c" 2>"$tmp/embed.err"; then
    not_ok "embed.sh runs"
    sed 's/^/#   /' "$tmp/embed.err"
else
    cat >"$tmp/dump.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include "schema.h"
int main(int argc, char **argv)
{
    for (unsigned i = 0; i < schema_migration_count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argc > 1 ? argv[1] : ".", schema_migrations[i].name);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(schema_migrations[i].sql, 1, strlen(schema_migrations[i].sql), f)
                      != strlen(schema_migrations[i].sql) || fclose(f))
            return 1;
        printf("%u %s\n", schema_migrations[i].version, schema_migrations[i].name);
    }
    return 0;
}
EOF
    if "$cc" -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wundef \
            -I"$here/spoa" -o "$tmp/dump" "$tmp/schema_sql.c" "$tmp/dump.c" >"$tmp/cc.err" 2>&1; then
        ok "embed.sh output compiles with -Wall -Wextra -Werror"
        mkdir "$tmp/out"
        expected_list=$(for f in "$here"/schema/[0-9][0-9][0-9]_*.sql; do
                            n=$(basename "$f"); echo "$(echo "$n" | cut -c1-3 | sed 's/^0*//') $n"; done)
        if [ "$("$tmp/dump" "$tmp/out")" = "$expected_list" ]; then
            ok "embed.sh lists every migration in order with its version"
        else
            not_ok "embed.sh lists every migration in order with its version"
        fi
        if [ "$("$tmp/dump" "$tmp/out" | sed -n 1,2p)" = "1 001_init.sql
2 002_providers_routes.sql" ]; then
            ok "embed.sh embeds 001_init.sql as version 1, then 002_providers_routes.sql as version 2"
        else
            not_ok "embed.sh embeds 001_init.sql as version 1, then 002_providers_routes.sql as version 2"
        fi
        # Awkward bytes: escapes, trigraphs, quotes, tab, UTF-8, CRLF, no final newline.
        mkdir "$tmp/odd" "$tmp/odd/out"
        cp "$here/schema/embed.sh" "$tmp/odd/"
        printf -- '-- a \\ b "c" ??= ??/ ?\t\303\251t\303\251 %%s \\n\r\nSELECT '"'??('"';\n\nSELECT 1' \
            >"$tmp/odd/001_odd.sql"
        printf 'SELECT 2;\n' >"$tmp/odd/012_next.sql"
        if sh "$tmp/odd/embed.sh" >"$tmp/odd/schema_sql.c" 2>"$tmp/embed.err" &&
           "$cc" -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wundef -Wtrigraphs \
               -I"$here/spoa" -o "$tmp/odd/dump" "$tmp/odd/schema_sql.c" "$tmp/dump.c" >"$tmp/cc.err" 2>&1 &&
           [ "$("$tmp/odd/dump" "$tmp/odd/out")" = "1 001_odd.sql
12 012_next.sql" ] &&
           tr -d '\r' <"$tmp/odd/001_odd.sql" | cmp -s - "$tmp/odd/out/001_odd.sql" &&
           cmp -s "$tmp/odd/012_next.sql" "$tmp/odd/out/012_next.sql"; then
            ok "embed.sh escapes backslash, quotes, trigraphs, tab, UTF-8; version 012 is 12"
        else
            not_ok "embed.sh escapes backslash, quotes, trigraphs, tab, UTF-8; version 012 is 12"
            cat "$tmp/embed.err" "$tmp/cc.err" | sed 's/^/#   /'
        fi
        cp "$tmp/odd/012_next.sql" "$tmp/odd/012_dup.sql"
        if sh "$tmp/odd/embed.sh" >"$tmp/odd/dup.c" 2>/dev/null || [ -s "$tmp/odd/dup.c" ]; then
            not_ok "embed.sh refuses two migrations with one number, writing nothing"
        else
            ok "embed.sh refuses two migrations with one number, writing nothing"
        fi

        same=1
        for f in "$here"/schema/[0-9][0-9][0-9]_*.sql; do
            tr -d '\r' <"$f" >"$tmp/want"
            cmp -s "$tmp/want" "$tmp/out/$(basename "$f")" || { same=0; echo "#   $(basename "$f") differs"; }
        done
        if [ "$same" = 1 ]; then
            ok "embed.sh embeds each file byte for byte"
        else
            not_ok "embed.sh embeds each file byte for byte"
        fi
    else
        not_ok "embed.sh output compiles with -Wall -Wextra -Werror"
        sed 's/^/#   /' "$tmp/cc.err"
    fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

