-- 0006: the attempts that count against max_attempts, apart from the claims.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- "attempts" counts claims, and the worker compared it with max_attempts. Retries that must not use up
-- attempts (gateway unavailable, open circuit breaker, in doubt, rotation unresolved) skipped that
-- comparison but their claims still counted, so the first counted failure after an outage found the
-- budget gone and dead-lettered the row (RETRIES_EXHAUSTED "after 12 attempts" for one endorsement
-- timeout, with max_attempts 3). counted_attempts is what the comparison now reads: a claim adds one; a
-- retry that does not count, and a hand-back at shutdown, give it back; a requeue sets it to 0. A
-- supervisor's hand-back of a dead worker's rows keeps it (a crash may be the row's own doing).
-- "attempts" keeps counting every claim: the backoff grows with it, and logs show it.
--
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+). Unfinished rows start at
-- their attempts, the old rule, so no row gets more tries from the upgrade; finished rows keep 0.
-- A release from before this migration (a rollback) does not maintain the column: rows it claims count
-- fewer attempts here than they made, until this release claims them again (bounded by max_attempts).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS counted_attempts integer NOT NULL DEFAULT 0;

UPDATE {schema}.outbox_commands SET counted_attempts = attempts
 WHERE status = 'PENDING' AND counted_attempts <> attempts;
UPDATE {schema}.outbox_commands SET counted_attempts = attempts
 WHERE status IN ('CLAIMED', 'SUBMITTED') AND counted_attempts <> attempts;
