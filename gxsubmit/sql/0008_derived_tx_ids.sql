-- 0008: derived transaction ids (docs/design.md#exactly-once-effect-on-the-ledger). A command's nonce becomes a pure function of its tenant,
-- request id, content and generation, keyed by a secret that lives in this schema.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- tx_generation counts the definite INVALID outcomes of the row's earlier tx ids: the nonce of
-- generation n is derived again by any replica, restart or restore, so Fabric refuses a second copy.
-- A NOT NULL column with a constant default rewrites nothing (PostgreSQL 11+).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS tx_generation integer NOT NULL DEFAULT 0;

-- The derivation key: 32 bytes from two random (v4) uuids, written once by the first migrate and never
-- changed, so every replica and every backup of the schema holds the same key without a setting.
-- Rows that hold a stored nonce (tx_nonce, from before this migration) keep it.
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_txid_key (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.gxsubmit_txid_key (key)
SELECT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
ON CONFLICT (one) DO NOTHING;

-- The serialized creators (MSP id + certificate bytes as read) that rows' creator_fingerprint names,
-- recorded once per creator by the first worker that submits under it. A worker that holds the same
-- key under other bytes (the certificate re-encoded in its Secret: CRLF line ends, no final newline)
-- signs as the recorded creator again, so it reproduces the stored tx id instead of parking the row.
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_creators (
    fingerprint text        PRIMARY KEY,
    creator     bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
