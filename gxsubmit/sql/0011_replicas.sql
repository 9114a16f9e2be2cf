-- 0011: the fleet registry. Every supervisor records itself here, so the database (the one place all
-- replicas share, under Kubernetes and systemd alike) can tell the whole fleet's state: gxsubmit fleet,
-- gxsubmit verify, and the unroutable sweep, which must not dead-letter a type another replica routes.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- One row per worker id, rewritten by its supervisor's heartbeat (one statement every fleet_interval).
-- A replica is live while heartbeat_at + stale_after_s is in the future and it has not stopped; a
-- graceful stop marks the row stopped; rows silent for long are deleted by the other replicas' beats.
-- The table is separate from outbox_commands: an older release never reads it, so it is additive.
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_replicas (
    worker_id       text        PRIMARY KEY,
    node            text        NOT NULL,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    version         text        NOT NULL,
    catalog_digest  text        NOT NULL,
    catalog_source  text        NOT NULL DEFAULT '',
    routed_types    text[]      NOT NULL DEFAULT ARRAY[]::text[],
    -- per identity: state, gateway/database connected, in flight, committed, last error code and when
    identities      jsonb       NOT NULL DEFAULT jsonb_build_object(),
    db_ok           boolean,
    db_error_code   text,
    db_error_at     timestamptz,
    stale_after_s   float8      NOT NULL,
    stopped         boolean     NOT NULL DEFAULT false,
    started_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);
