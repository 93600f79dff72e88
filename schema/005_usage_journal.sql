-- Migration 5: daily_usage is written every second; each flush in between
-- goes to usage_journal.
--
-- Writing daily_usage costs one B-tree update per user that changed, and on
-- a busy gateway a 100 ms flush holds most of the active users: with
-- 100,000 of them the writer thread spent most of a CPU on those updates.
-- Now each flush commits the users that changed as one row of
-- usage_journal (a single sequential insert), and daily_usage gets every
-- changed user's counters once per daily_usage_interval_ms, in the same
-- transaction that empties the journal. So:
--   * a crash still loses at most flush_interval_ms of usage: the agent
--     replays what the journal holds into daily_usage when it starts again;
--   * daily_usage, as SQL readers see it, is at most daily_usage_interval_ms
--     (1 s by default) behind the agent's counters while it runs; setting it
--     to flush_interval_ms writes daily_usage at every flush, as before.
-- usage_journal.counters is a binary encoding (spoa/journal.h), not meant
-- to be read or edited by hand.

CREATE TABLE usage_journal (
    id         INTEGER PRIMARY KEY,
    written_at TEXT    NOT NULL,  -- ISO-8601 UTC
    rows       INTEGER NOT NULL,  -- user-days in counters
    counters   BLOB    NOT NULL
);

INSERT INTO settings (name, value, description) VALUES
    ('daily_usage_interval_ms', '1000',
     'How often daily_usage is brought up to date, in milliseconds (10..60000). In between, flushes go to usage_journal, replayed at start after a crash. Set it to flush_interval_ms to write daily_usage at every flush.');

UPDATE settings SET description =
    'How often changed usage counters are committed to this database (usage_journal, and daily_usage every daily_usage_interval_ms), in milliseconds. A crash loses at most about this much usage.'
WHERE name = 'flush_interval_ms';

-- settings' CHECKs cannot be extended by a migration: the same rule as
-- flush_interval_ms, as triggers.
CREATE TRIGGER settings_daily_usage_interval_insert
BEFORE INSERT ON settings
WHEN NEW.name = 'daily_usage_interval_ms'
     AND (typeof(NEW.value) <> 'text' OR NEW.value = '' OR NEW.value GLOB '*[^0-9]*' OR length(NEW.value) > 5
          OR CAST(NEW.value AS INTEGER) NOT BETWEEN 10 AND 60000)
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: settings_daily_usage_interval (an integer from 10 to 60000)'); END;

CREATE TRIGGER settings_daily_usage_interval_update
BEFORE UPDATE ON settings
WHEN NEW.name = 'daily_usage_interval_ms'
     AND (typeof(NEW.value) <> 'text' OR NEW.value = '' OR NEW.value GLOB '*[^0-9]*' OR length(NEW.value) > 5
          OR CAST(NEW.value AS INTEGER) NOT BETWEEN 10 AND 60000)
BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: settings_daily_usage_interval (an integer from 10 to 60000)'); END;
