-- Migration 6: daily_usage_interval_ms is the shortest interval between two
-- writes of daily_usage, no longer a fixed one.
--
-- A write of daily_usage costs one B-tree update per user that changed
-- since the last one (about 1.5 us each here): with 100,000 users changing
-- every second, 15 % of a CPU at an interval of 1 s, taken from the
-- decisions and from whatever shares the machine. The agent now spaces
-- these writes out to ten times the CPU time the last one took, when that
-- is longer than daily_usage_interval_ms (at most 60 s), so they never take
-- more than a tenth of a CPU. The interval in use is the metric
-- tokengate_db_daily_usage_interval_seconds. A crash still loses at most
-- flush_interval_ms of usage (usage_journal).

UPDATE settings SET description =
    'Shortest interval between two writes of daily_usage, in milliseconds (10..60000); the agent waits longer, up to 60 s, when writing it would otherwise take more than a tenth of a CPU (see the metric tokengate_db_daily_usage_interval_seconds). In between, flushes go to usage_journal, replayed at start after a crash. Set it to flush_interval_ms to write daily_usage at every flush while that is cheap.'
WHERE name = 'daily_usage_interval_ms';

UPDATE settings SET description =
    'How often changed usage counters are committed to this database (usage_journal, and daily_usage at most every daily_usage_interval_ms), in milliseconds. A crash loses at most about this much usage.'
WHERE name = 'flush_interval_ms';
