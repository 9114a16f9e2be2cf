-- 0001: the outbox table, its claim indexes and the NOTIFY trigger.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
-- Migrations are additive: later files add columns/indexes, they never drop or rename.

CREATE TABLE IF NOT EXISTS {schema}.outbox_commands (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                 bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id           text        NOT NULL DEFAULT 'default',
    service             text        NOT NULL,
    command_type        text        NOT NULL,
    request_id          text        NOT NULL,
    payload             jsonb       NOT NULL,
    status              text        NOT NULL DEFAULT 'PENDING',
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    locked_by           text,
    locked_at           timestamptz,
    lease_expires_at    timestamptz,
    lease_token         uuid,
    tx_nonce            bytea,
    fabric_tx_id        text,
    creator_fingerprint text,
    submitted_at        timestamptz,
    committed_at        timestamptz,
    commit_block        bigint,
    validation_code     text,
    error_code          text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_commands_status_check
        CHECK (status IN ('PENDING', 'CLAIMED', 'SUBMITTED', 'COMMITTED', 'FAILED')),
    CONSTRAINT outbox_commands_attempts_check CHECK (attempts >= 0),
    CONSTRAINT outbox_commands_tenant_request_key UNIQUE (tenant_id, request_id)
);

-- The claim walks this index in FIFO order; only PENDING rows are in it, so it stays small however
-- many COMMITTED rows accumulate. Type and due-time are checked on the heap row.
CREATE INDEX IF NOT EXISTS outbox_commands_pending_idx
    ON {schema}.outbox_commands (seq)
    WHERE status = 'PENDING';

-- Lease takeover: in-flight rows ordered by expiry. Bounded by workers x batch size.
CREATE INDEX IF NOT EXISTS outbox_commands_lease_idx
    ON {schema}.outbox_commands (lease_expires_at)
    WHERE status IN ('CLAIMED', 'SUBMITTED');

-- Dead-letter views (status, requeue --error-code) and lookups by Fabric transaction id.
CREATE INDEX IF NOT EXISTS outbox_commands_failed_idx
    ON {schema}.outbox_commands (error_code)
    WHERE status = 'FAILED';
CREATE INDEX IF NOT EXISTS outbox_commands_tx_idx
    ON {schema}.outbox_commands (fabric_tx_id)
    WHERE fabric_tx_id IS NOT NULL;

-- One NOTIFY per inserting statement and distinct command type (not one per row): a producer's
-- multi-row insert costs one trigger call. NOTIFY payloads are de-duplicated per transaction anyway.
-- Measured producer cost (PostgreSQL 15, 2 shared cores, psycopg async, autocommit): a single-row
-- enqueue took 0.44-0.59 ms per row with or without this trigger (difference within run-to-run noise,
-- under 5 percent); one 10 000-row INSERT took 74-77 ms with it and 86-106 ms without (noise again).
-- Not measured: NOTIFY serialises the commits of notifying transactions on a global lock, which only
-- matters for many concurrent producers.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gxsubmit', t.command_type)
       FROM (SELECT DISTINCT n.command_type FROM gxsubmit_new_rows AS n) AS t;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS gxsubmit_outbox_notify ON {schema}.outbox_commands;
CREATE TRIGGER gxsubmit_outbox_notify
    AFTER INSERT ON {schema}.outbox_commands
    REFERENCING NEW TABLE AS gxsubmit_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.gxsubmit_outbox_notify();
