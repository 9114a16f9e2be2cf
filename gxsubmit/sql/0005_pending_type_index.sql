-- 0005: PENDING rows by type, so a claim starts where its own types' due rows start.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- The claim walks outbox_commands_pending_idx in seq order and checks the type on the heap row. PENDING
-- rows of other identities' types at the head of the queue (an identity down for hours under traffic)
-- were walked over by every claim of every other identity: with 1,000,000 of them a claim of 100 rows
-- took 220-245 ms instead of 0.3-0.6 ms (PostgreSQL 15, 2 shared cores). The claim now first looks up,
-- per type it serves, the first due row in this index (one short index probe per type) and starts its
-- walk at the smallest of those seqs: 0.4-0.6 ms in the same case, and 0.1-0.2 ms more than before
-- when nothing is in the way. Only PENDING versions are indexed: a claim moves a row out of it.
-- A plain CREATE INDEX (migrations run in one transaction) blocks inserts while it reads the table:
-- 0.22-0.28 s for 2,000,000 retained rows held in memory; a table read from disk takes longer (producers
-- wait, nothing fails). gxsubmit prune keeps the table short.
CREATE INDEX IF NOT EXISTS outbox_commands_pending_type_idx
    ON {schema}.outbox_commands (command_type, seq)
    WHERE status = 'PENDING';
