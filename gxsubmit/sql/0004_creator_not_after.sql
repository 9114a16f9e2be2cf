-- 0004: the expiry of the certificate a row's tx id was signed under.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- A row submitted under a certificate the worker no longer holds (rotated, then a restart) can only be
-- retried under a new tx id once its old tx id can no longer reach the ledger. Orderers refuse envelopes
-- whose creator has expired, so an hour after this time an old tx id that the ledger does not know is
-- known never to commit, and the row gets a new nonce instead of waiting for an operator (DESIGN 2.5).
-- Adding a nullable column without a default rewrites nothing and takes its lock only briefly; rows
-- written before this migration keep NULL (for them the worker still waits, as before).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS creator_not_after timestamptz;
