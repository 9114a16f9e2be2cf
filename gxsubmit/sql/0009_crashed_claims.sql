-- 0009: claims that ended in a worker crash, so a row that kills its worker ends (issue 16).
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- A row that crashed its worker (or hung it until the supervisor's watchdog killed it) was handed back
-- due at once and claimed again, for ever: max_attempts is only compared when a try fails in an orderly
-- way, and a crash is not one. crashed_claims counts the claims of a row that ended with its worker
-- dying: the supervisor adds one when it hands back the rows of a worker that exited abnormally, and a
-- claim adds one when it takes a row over from an expired lease (its holder stopped renewing). At
-- max_worker_crashes the row is FAILED (WORKER_CRASH). A crash cannot say which of the rows its worker
-- held was at fault, so a row one crash short of the limit is set to run alone (run_alone): claimed only
-- by a worker with nothing else in flight. The rows that merely shared a batch with the culprit then
-- commit, and only the row that crashes its worker by itself reaches the limit. A requeue resets both.
--
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+). The index holds only the
-- PENDING rows waiting to be tried alone, normally none (a new column is false everywhere, so it starts
-- empty).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS crashed_claims integer NOT NULL DEFAULT 0;
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS run_alone boolean NOT NULL DEFAULT false;

CREATE INDEX IF NOT EXISTS outbox_commands_run_alone_idx
    ON {schema}.outbox_commands (seq)
    WHERE status = 'PENDING' AND run_alone;
