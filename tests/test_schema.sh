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
