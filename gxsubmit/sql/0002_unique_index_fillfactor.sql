-- 0002: half-empty leaf pages for the two unique indexes whose new entries land at their right edge.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- Every status change rewrites the row without HOT (status is in the partial indexes' predicates), so
-- each unique index gets one more entry per update, next to the row's previous one. seq only grows and
-- request ids often do, so new rows fill those leaf pages to the default 90 percent; the claim and the
-- completion then find them full and split them or run bottom-up deletion, both on the hot path.
-- With half of each page free, the next version's entry usually fits without either.
-- Measured (PostgreSQL 15, 2 shared cores, one connection, 60 000 rows claimed 1000 at a time and
-- completed; backend CPU from /proc, two to four runs each): claim + complete 28.5-30.0 us of server
-- CPU per row before, 25.2-26.2 after; the worker's four updates per row 67.5-71.2 before, 62.0-63.8 after.
-- The indexes were no larger afterwards (seq 2.4 MB instead of 2.7 MB, tenant/request 3.5 MB instead
-- of 4.1 MB): the splits used to leave the pages about half full anyway.
-- The primary key is left alone: its keys are random uuids, whose splits are 50:50 whatever the setting.
-- Only new page splits use the setting; existing pages keep theirs until a REINDEX (not needed). The
-- ALTER takes a SHARE UPDATE EXCLUSIVE lock: producers and workers carry on meanwhile.
ALTER INDEX {schema}.outbox_commands_seq_key SET (fillfactor = 50);
ALTER INDEX {schema}.outbox_commands_tenant_request_key SET (fillfactor = 50);
