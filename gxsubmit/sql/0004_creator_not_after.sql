-- 0004: the expiry of the certificate a row's tx id was signed under.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- A row submitted under a certificate the worker no longer holds (rotated, then a restart) can only be
-- retried under a new tx id once its old tx id can no longer reach the ledger. Orderers refuse envelopes
-- whose creator has expired, so an hour after this time an old tx id that the ledger does not know is
-- known never to commit, and the row gets a new nonce instead of waiting for an operator (docs/design.md#rotated-certificates).
-- Adding a nullable column without a default rewrites nothing and takes its lock only briefly; rows
-- written before this migration keep NULL (for them the worker still waits, as before).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS creator_not_after timestamptz;

-- The expiry must never outlive its certificate: a release from before this migration (a rollback)
-- records a new creator without touching this column, which would leave the previous certificate's
-- expiry on the row. Such an update clears it (the row then waits for an operator, the safe side).
-- This release writes both together, so for it the function runs only if a rotated certificate expires
-- at exactly the old one's time (the row then also just waits). The WHEN is checked only for statements
-- that set creator_fingerprint (the record of a new tx id, a burnt nonce, a requeue).
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_forget_stale_not_after() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.creator_not_after := NULL;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS gxsubmit_forget_stale_not_after ON {schema}.outbox_commands;
CREATE TRIGGER gxsubmit_forget_stale_not_after
    BEFORE UPDATE OF creator_fingerprint ON {schema}.outbox_commands
    FOR EACH ROW
    WHEN (NEW.creator_fingerprint IS DISTINCT FROM OLD.creator_fingerprint
          AND NEW.creator_not_after IS NOT DISTINCT FROM OLD.creator_not_after
          AND NEW.creator_not_after IS NOT NULL)
    EXECUTE FUNCTION {schema}.gxsubmit_forget_stale_not_after();
