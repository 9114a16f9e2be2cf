-- Adoption of an existing outbox table (the GX services' Prisma "OutboxCommand"): gxsubmit migrate
-- --legacy-outbox installs these, --remove-legacy-outbox takes them away. Nothing here is a numbered
-- migration: outbox_commands itself is not changed, only triggers are added to it while adopted.
-- Each section starts with a "-- name: <name>" line (gxsubmit/legacy.py runs them by name).
-- {schema} is gxsubmit's quoted schema, {legacy} the adopted table (schema-qualified, quoted),
-- {legacy_name} that table's name as a string literal, {status_type} the quoted type of its "status"
-- column, {lock_timeout} the old worker's lock timeout in seconds (a numeric literal), {max_retries} its
-- MAX_RETRIES (an integer literal).
-- Never put literal braces in this file (it goes through psycopg.sql.SQL.format). The catalogue
-- lookups take %(name)s parameters; every other statement runs without parameters, so the percent
-- signs of RAISE and format() in them reach the server as written.
-- Only named columns are written, on both tables, so columns added later (by either side) do not
-- break a trigger.
-- The trigger functions run as the role that installed them (SECURITY DEFINER, with a search_path of
-- pg_catalog only; every name here is schema-qualified): the services' database role needs no grant on
-- gxsubmit's schema, nor gxsubmit's role on "OutboxCommand".

-- name: find_table
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = to_regclass(%(name)s) AND c.relkind IN ('r', 'p')

-- name: similar_tables
-- For the error when the name does not resolve: the same name in another case or schema.
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE lower(c.relname) = lower(%(relname)s) AND c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 1, 2

-- name: table_columns
-- Each column's name, its type's schema and name, and whether that type is an enum.
SELECT a.attname, tn.nspname, t.typname, t.typtype = 'e'
  FROM pg_catalog.pg_attribute AS a
  JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace AS tn ON tn.oid = t.typnamespace
 WHERE a.attrelid = to_regclass(%(name)s) AND a.attnum > 0 AND NOT a.attisdropped

-- name: enum_labels
SELECT e.enumlabel
  FROM pg_catalog.pg_enum AS e
  JOIN pg_catalog.pg_type AS t ON t.oid = e.enumtypid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
 WHERE n.nspname = %(nspname)s AND t.typname = %(typname)s
 ORDER BY e.enumsortorder

-- name: trigger_owner
-- The schema whose function a gxsubmit trigger on the table calls (another gxsubmit schema's adoption).
SELECT pn.nspname
  FROM pg_catalog.pg_trigger AS tg
  JOIN pg_catalog.pg_proc AS p ON p.oid = tg.tgfoid
  JOIN pg_catalog.pg_namespace AS pn ON pn.oid = p.pronamespace
 WHERE tg.tgrelid = to_regclass(%(name)s) AND tg.tgname = 'gxsubmit_legacy_take'

-- name: registry_exists
SELECT to_regclass(%(name)s) IS NOT NULL

-- name: adoption_lock_timeout
-- Creating the triggers waits for the producers' open transactions on the table; not for ever.
SET LOCAL lock_timeout = '10s'

-- name: create_registry
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_legacy_outbox (
    legacy_table   text             PRIMARY KEY,
    lock_timeout_s double precision NOT NULL,
    installed_at   timestamptz      NOT NULL DEFAULT now()
)

-- name: create_link
-- One row per adopted legacy row: which command runs it. old_lock_at is set when the old worker held
-- the row (LOCKED) at adoption: gxsubmit waits for that lock to go stale, and if the old worker
-- finishes the row first, the command is withdrawn. Deleting a command (prune) deletes its link.
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_legacy_link (
    legacy_id   text        PRIMARY KEY,
    command_id  uuid        NOT NULL UNIQUE REFERENCES {schema}.outbox_commands (id) ON DELETE CASCADE,
    old_lock_at timestamptz
)

-- name: command_id_function
-- The command's id: the legacy id itself when it is a UUID (writers that supply their own, such as the
-- transfer endpoint's commandId, find the same id in both tables), else a new one; the legacy id is
-- kept in gxsubmit_legacy_link either way.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_command_id(legacy_id text) RETURNS uuid
LANGUAGE sql VOLATILE AS $fn$
    SELECT CASE WHEN translate(lower(legacy_id), '0123456789abcdef', '0000000000000000')
                     = '00000000-0000-0000-0000-000000000000'
                THEN legacy_id::uuid ELSE gen_random_uuid() END
$fn$

-- name: adopt_function
-- Takes the given legacy rows (PENDING, or LOCKED by the old worker) into outbox_commands with a link
-- each; returns how many. Used by the insert trigger and by the backfill at adoption. A row whose
-- command cannot be queued (its (tenantId, requestId) or its UUID id is already a command that is not
-- this row's) is marked FAILED with an error code of gxsubmit's, never silently dropped, and the
-- statement never raises: when the set-based insert fails, each row is tried alone, and a row that
-- still fails is marked FAILED with the database's message (GXSUBMIT_REJECTED).
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_adopt(ids text[]) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    taken integer := 0;
    one_id text;
    n integer;
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    BEGIN
        WITH src AS MATERIALIZED (
            SELECT l.id AS legacy_id,
                   {schema}.gxsubmit_legacy_command_id(l.id) AS command_id,
                   l."tenantId" AS tenant_id, l.service, l."commandType"::text AS command_type,
                   l."requestId" AS request_id, l.payload, coalesce(l.attempts, 0) AS attempts,
                   CASE WHEN l.status::text = 'LOCKED' THEN coalesce(l."lockedAt", now()) END AS old_lock_at
              FROM {legacy} AS l
             WHERE l.id = ANY(ids)
               AND l.status::text IN ('PENDING', 'LOCKED')
               AND NOT EXISTS (SELECT 1 FROM {schema}.gxsubmit_legacy_link AS k WHERE k.legacy_id = l.id)
        ), ins AS (
            INSERT INTO {schema}.outbox_commands
                   (id, tenant_id, service, command_type, request_id, payload, attempts, next_attempt_at)
            SELECT s.command_id, s.tenant_id, s.service, s.command_type, s.request_id, s.payload,
                   greatest(s.attempts, 0),
                   CASE WHEN s.old_lock_at IS NULL THEN now()
                        ELSE greatest(now(), s.old_lock_at + make_interval(secs => {lock_timeout})) END
              FROM src AS s
            ON CONFLICT DO NOTHING
            RETURNING id
        ), linked AS (
            INSERT INTO {schema}.gxsubmit_legacy_link (legacy_id, command_id, old_lock_at)
            SELECT s.legacy_id, s.command_id, s.old_lock_at
              FROM src AS s JOIN ins ON ins.id = s.command_id
            RETURNING legacy_id
        ), refused AS (
            -- Only rows nobody else holds: a conflicting LOCKED row stays the old worker's.
            UPDATE {legacy} AS l
               SET status = 'FAILED',
                   "errorCode" = 'GXSUBMIT_DUPLICATE_REQUEST',
                   error = left(format('gxsubmit already has a command with request id %s of tenant %s, or '
                                       'with this row''s id, that is not this row (%s); not submitted',
                                       s.request_id, s.tenant_id, coalesce(
                                           (SELECT c.id::text FROM {schema}.outbox_commands AS c
                                             WHERE (c.tenant_id = s.tenant_id AND c.request_id = s.request_id)
                                                OR c.id = s.command_id LIMIT 1), 'unknown')), 1000),
                   "updatedAt" = now()
              FROM src AS s
             WHERE l.id = s.legacy_id AND s.old_lock_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = s.command_id)
            RETURNING l.id
        )
        SELECT count(*) INTO taken FROM linked;  -- refused runs too: a WITH statement always does
        RETURN taken;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'gxsubmit: adopting % rows of % failed (%), trying them one by one',
            cardinality(ids), {legacy_name}, SQLERRM;
    END;
    taken := 0;
    FOREACH one_id IN ARRAY ids LOOP
        BEGIN
            n := {schema}.gxsubmit_legacy_adopt_one(one_id);
            taken := taken + n;
        EXCEPTION WHEN OTHERS THEN
            BEGIN
                UPDATE {legacy} AS l
                   SET status = 'FAILED',
                       "errorCode" = 'GXSUBMIT_REJECTED',
                       error = left('gxsubmit could not queue this row: ' || SQLERRM, 1000),
                       "updatedAt" = now()
                 WHERE l.id = one_id AND l.status::text = 'PENDING';
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'gxsubmit: row % of % could not be queued nor marked FAILED: %',
                    one_id, {legacy_name}, SQLERRM;
            END;
        END;
    END LOOP;
    RETURN taken;
END
$fn$

-- name: adopt_one_function
-- One row of gxsubmit_legacy_adopt's fallback: the same statement for a single id, allowed to raise
-- (the caller catches it and marks the row).
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_adopt_one(one_id text) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    cid uuid;
    inserted uuid;
BEGIN
    SELECT l.id, l."tenantId" AS tenant_id, l.service, l."commandType"::text AS command_type,
           l."requestId" AS request_id, l.payload, coalesce(l.attempts, 0) AS attempts,
           CASE WHEN l.status::text = 'LOCKED' THEN coalesce(l."lockedAt", now()) END AS old_lock_at
      INTO r
      FROM {legacy} AS l
     WHERE l.id = one_id AND l.status::text IN ('PENDING', 'LOCKED')
       AND NOT EXISTS (SELECT 1 FROM {schema}.gxsubmit_legacy_link AS k WHERE k.legacy_id = l.id);
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    cid := {schema}.gxsubmit_legacy_command_id(r.id);
    INSERT INTO {schema}.outbox_commands
           (id, tenant_id, service, command_type, request_id, payload, attempts, next_attempt_at)
    VALUES (cid, r.tenant_id, r.service, r.command_type, r.request_id, r.payload, greatest(r.attempts, 0),
            CASE WHEN r.old_lock_at IS NULL THEN now()
                 ELSE greatest(now(), r.old_lock_at + make_interval(secs => {lock_timeout})) END)
    ON CONFLICT DO NOTHING
    RETURNING id INTO inserted;
    IF inserted IS NULL THEN
        IF r.old_lock_at IS NULL THEN
            UPDATE {legacy} AS l
               SET status = 'FAILED', "errorCode" = 'GXSUBMIT_DUPLICATE_REQUEST',
                   error = left(format('gxsubmit already has a command with request id %s of tenant %s, or '
                                       'with this row''s id, that is not this row; not submitted',
                                       r.request_id, r.tenant_id), 1000),
                   "updatedAt" = now()
             WHERE l.id = one_id;
        END IF;
        RETURN 0;
    END IF;
    INSERT INTO {schema}.gxsubmit_legacy_link (legacy_id, command_id, old_lock_at)
    VALUES (r.id, cid, r.old_lock_at);
    RETURN 1;
END
$fn$

-- name: take_function
-- The producers' side: after each INSERT statement on the legacy table, its PENDING rows are queued in
-- the same transaction (a producer's rollback takes the command with it). Never raises.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_take() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        PERFORM {schema}.gxsubmit_legacy_adopt(ARRAY(
            SELECT n.id FROM gxsubmit_new_rows AS n WHERE n.status::text = 'PENDING'));
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'gxsubmit: rows inserted into % were not queued: %', {legacy_name}, SQLERRM;
    END;
    RETURN NULL;
END
$fn$

-- name: writeback_function
-- gxsubmit's side: after each UPDATE statement on outbox_commands, the legacy rows of the commands whose
-- status or attempts changed follow them, in the same transaction, in one set-based UPDATE (a claim or
-- a commit batch of 100 rows is one statement, not 100 calls). Lease renewals and tx-id records change
-- neither, so they only pay the (empty) join. A failure here never fails gxsubmit's statement: the
-- legacy row then lags, and a WARNING says so in the server log.
-- Mapping: CLAIMED -> LOCKED (lockedBy, lockedAt = the worker's); SUBMITTED -> SUBMITTED;
-- COMMITTED -> COMMITTED with fabricTxId, commitBlock and submittedAt = commit time (the old worker's
-- meaning of that column); FAILED -> FAILED with errorCode and error cut to 1000 characters ("Unknown
-- error" when empty, as the old worker wrote); PENDING -> PENDING with the last retry's error kept.
-- A status a later release may add (not one of the five) shows as LOCKED: in progress for every reader.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_writeback() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        UPDATE {legacy} AS l
           SET status = (CASE WHEN n.status IN ('PENDING', 'SUBMITTED', 'COMMITTED', 'FAILED') THEN n.status
                              ELSE 'LOCKED' END)::{status_type},
               attempts = n.attempts,
               "lockedBy" = CASE WHEN n.status IN ('CLAIMED', 'SUBMITTED') THEN n.locked_by END,
               "lockedAt" = CASE WHEN n.status IN ('CLAIMED', 'SUBMITTED') THEN n.locked_at END,
               "fabricTxId" = CASE WHEN n.status = 'COMMITTED' THEN n.fabric_tx_id ELSE l."fabricTxId" END,
               "commitBlock" = CASE WHEN n.status = 'COMMITTED' THEN n.commit_block ELSE l."commitBlock" END,
               "submittedAt" = CASE WHEN n.status = 'COMMITTED' THEN coalesce(n.committed_at, now())
                                    ELSE l."submittedAt" END,
               "errorCode" = CASE WHEN n.status = 'COMMITTED' THEN NULL ELSE n.error_code END,
               error = CASE WHEN n.status = 'COMMITTED' THEN NULL
                            WHEN n.status = 'FAILED' THEN coalesce(nullif(left(n.error, 1000), ''), 'Unknown error')
                            ELSE left(n.error, 1000) END,
               "updatedAt" = now()
          FROM gxsubmit_new_rows AS n
          JOIN gxsubmit_old_rows AS o ON o.id = n.id
          JOIN {schema}.gxsubmit_legacy_link AS k ON k.command_id = n.id
         WHERE l.id = k.legacy_id
           AND (n.status IS DISTINCT FROM o.status OR n.attempts IS DISTINCT FROM o.attempts);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'gxsubmit: status not written back to %: %', {legacy_name}, SQLERRM;
    END;
    RETURN NULL;
END
$fn$

-- name: guard_function
-- Other writers of an adopted row's status or lock (the old worker while it still runs, hand-written
-- SQL) are ignored, so a row is never run twice: the old worker's claim simply does not get it. The
-- exception is a row the old worker held at adoption and gxsubmit has not started: finishing it
-- (COMMITTED/FAILED) withdraws gxsubmit's command, retaking its stale lock moves gxsubmit's wait.
-- gxsubmit's own write-back runs inside a trigger and is not checked (see the trigger's WHEN).
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    k record;
    c_status text;
BEGIN
    SELECT * INTO k FROM {schema}.gxsubmit_legacy_link WHERE legacy_id = OLD.id;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    IF k.old_lock_at IS NOT NULL THEN
        SELECT c.status INTO c_status FROM {schema}.outbox_commands AS c
         WHERE c.id = k.command_id FOR UPDATE SKIP LOCKED;
        IF c_status = 'PENDING' THEN
            IF NEW.status::text IN ('COMMITTED', 'FAILED') THEN
                DELETE FROM {schema}.outbox_commands WHERE id = k.command_id;
                RETURN NEW;
            ELSIF NEW.status::text = 'LOCKED' AND OLD.status::text = 'LOCKED' THEN
                UPDATE {schema}.outbox_commands
                   SET next_attempt_at = greatest(now(), coalesce(NEW."lockedAt", now())
                                                         + make_interval(secs => {lock_timeout})),
                       updated_at = now()
                 WHERE id = k.command_id;
                UPDATE {schema}.gxsubmit_legacy_link SET old_lock_at = coalesce(NEW."lockedAt", now())
                 WHERE legacy_id = OLD.id;
                RETURN NEW;
            END IF;
        END IF;
    END IF;
    RAISE NOTICE 'gxsubmit: row % of % is run by gxsubmit (command %): this change of its status is ignored; '
                 'use gxsubmit requeue', OLD.id, {legacy_name}, k.command_id;
    RETURN NULL;
END
$fn$

-- name: requeued_function
-- A row nobody runs that is set back to PENDING by hand (the operators' re-drive of the old worker's
-- dead rows: status PENDING, attempts 0) is queued like a new row.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_legacy_requeued() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        PERFORM {schema}.gxsubmit_legacy_adopt(ARRAY[NEW.id]);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'gxsubmit: row % of % set to PENDING was not queued: %', NEW.id, {legacy_name}, SQLERRM;
    END;
    RETURN NULL;
END
$fn$

-- name: drop_triggers
DROP TRIGGER IF EXISTS gxsubmit_legacy_take ON {legacy};
DROP TRIGGER IF EXISTS gxsubmit_legacy_requeued ON {legacy};
DROP TRIGGER IF EXISTS gxsubmit_legacy_guard ON {legacy};
DROP TRIGGER IF EXISTS gxsubmit_legacy_writeback ON {schema}.outbox_commands

-- name: create_triggers
-- Creating a trigger locks its table against writes until the adoption commits, so the backfill that
-- follows in the same transaction sees every row committed before, and the trigger every row after.
CREATE TRIGGER gxsubmit_legacy_take
    AFTER INSERT ON {legacy}
    REFERENCING NEW TABLE AS gxsubmit_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.gxsubmit_legacy_take();
CREATE TRIGGER gxsubmit_legacy_guard
    BEFORE UPDATE ON {legacy}
    FOR EACH ROW
    WHEN ((OLD.status IS DISTINCT FROM NEW.status OR OLD."lockedAt" IS DISTINCT FROM NEW."lockedAt"
           OR OLD."lockedBy" IS DISTINCT FROM NEW."lockedBy")
          AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION {schema}.gxsubmit_legacy_guard();
CREATE TRIGGER gxsubmit_legacy_requeued
    AFTER UPDATE ON {legacy}
    FOR EACH ROW
    WHEN (NEW.status::text = 'PENDING' AND OLD.status IS DISTINCT FROM NEW.status AND pg_trigger_depth() = 0)
    EXECUTE FUNCTION {schema}.gxsubmit_legacy_requeued();
CREATE TRIGGER gxsubmit_legacy_writeback
    AFTER UPDATE ON {schema}.outbox_commands
    REFERENCING OLD TABLE AS gxsubmit_old_rows NEW TABLE AS gxsubmit_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.gxsubmit_legacy_writeback()

-- name: backfill
-- Rows already waiting when adoption is installed: PENDING ones, and LOCKED ones (the old worker's, in
-- flight or left behind). Runs after create_triggers in the same transaction; rows already linked
-- (a second run) are skipped inside gxsubmit_legacy_adopt.
SELECT {schema}.gxsubmit_legacy_adopt(ARRAY(
           SELECT l.id FROM {legacy} AS l WHERE l.status::text IN ('PENDING', 'LOCKED') ORDER BY l."createdAt"))

-- name: backfill_summary
SELECT count(*) FILTER (WHERE k.old_lock_at IS NULL), count(*) FILTER (WHERE k.old_lock_at IS NOT NULL)
  FROM {schema}.gxsubmit_legacy_link AS k

-- name: refused_rows
SELECT count(*) FROM {legacy} AS l
 WHERE l.status::text = 'FAILED' AND l."errorCode" IN ('GXSUBMIT_DUPLICATE_REQUEST', 'GXSUBMIT_REJECTED')

-- name: record_adoption
INSERT INTO {schema}.gxsubmit_legacy_outbox (legacy_table, lock_timeout_s)
VALUES ({legacy_name}, {lock_timeout})
ON CONFLICT (legacy_table) DO UPDATE SET lock_timeout_s = EXCLUDED.lock_timeout_s

-- name: adopted_tables
SELECT legacy_table FROM {schema}.gxsubmit_legacy_outbox

-- name: lock_legacy
LOCK TABLE {legacy} IN SHARE ROW EXCLUSIVE MODE

-- name: in_flight
-- Adopted commands a running gxsubmit holds (an unexpired lease): removal waits for them.
SELECT count(*), max(c.lease_expires_at)
  FROM {schema}.gxsubmit_legacy_link AS k
  JOIN {schema}.outbox_commands AS c ON c.id = k.command_id
 WHERE c.status IN ('CLAIMED', 'SUBMITTED') AND c.lease_expires_at > now()

-- name: hand_back
-- Removal: every unfinished adopted command goes back to the legacy table in a shape the old worker
-- runs: PENDING when gxsubmit never chose a tx id for it; LOCKED (taken over after the old worker's
-- lock timeout, as it treats a crashed replica's rows) with the tx id in error when it may be on the
-- ledger. Rows the old worker held at adoption and gxsubmit never started keep the old worker's lock.
-- The commands are deleted from outbox_commands (their links go with them).
WITH unfinished AS (
    SELECT k.legacy_id, k.old_lock_at, c.id, c.attempts, c.fabric_tx_id, c.status
      FROM {schema}.gxsubmit_legacy_link AS k
      JOIN {schema}.outbox_commands AS c ON c.id = k.command_id
     WHERE c.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')
       FOR UPDATE OF c
), handed AS (
    UPDATE {legacy} AS l
       SET status = (CASE WHEN u.fabric_tx_id IS NULL THEN 'PENDING' ELSE 'LOCKED' END)::{status_type},
           "lockedBy" = CASE WHEN u.fabric_tx_id IS NULL THEN NULL ELSE 'gxsubmit-handback' END,
           "lockedAt" = CASE WHEN u.fabric_tx_id IS NULL THEN NULL ELSE now() END,
           "errorCode" = CASE WHEN u.fabric_tx_id IS NULL THEN l."errorCode" ELSE 'GXSUBMIT_IN_DOUBT' END,
           error = CASE WHEN u.fabric_tx_id IS NULL THEN l.error
                        ELSE left('gxsubmit may have submitted Fabric tx ' || u.fabric_tx_id
                                  || ': check the ledger before this row runs again', 1000) END,
           attempts = u.attempts,
           "updatedAt" = now()
      FROM unfinished AS u
     WHERE l.id = u.legacy_id
       AND NOT (u.old_lock_at IS NOT NULL AND u.status = 'PENDING' AND u.fabric_tx_id IS NULL
                AND l.status::text = 'LOCKED')
    RETURNING l.status::text AS status
), deleted AS (
    DELETE FROM {schema}.outbox_commands AS c USING unfinished AS u WHERE c.id = u.id RETURNING c.id
)
SELECT count(*) FILTER (WHERE status = 'PENDING'), count(*) FILTER (WHERE status = 'LOCKED'),
       (SELECT count(*) FROM deleted)
  FROM handed

-- name: dead_letters_stay
-- The old worker retries FAILED rows below its MAX_RETRIES: gxsubmit's dead letters (a permanent error, or
-- retries spent, possibly with a tx of uncertain fate) must stay dead after a rollback, so their attempts
-- are raised to it. Runs before the links go.
UPDATE {legacy} AS l
   SET attempts = {max_retries}, "updatedAt" = now()
  FROM {schema}.gxsubmit_legacy_link AS k
  JOIN {schema}.outbox_commands AS c ON c.id = k.command_id
 WHERE l.id = k.legacy_id AND c.status = 'FAILED' AND l.status::text = 'FAILED' AND l.attempts < {max_retries}

-- name: submitted_to_locked
-- SUBMITTED is a status the old worker never claims: any left (a row whose command was pruned or
-- deleted by hand) is handed back as LOCKED, which it takes over after its lock timeout.
UPDATE {legacy} AS l
   SET status = 'LOCKED', "lockedBy" = 'gxsubmit-handback', "lockedAt" = now(), "updatedAt" = now()
 WHERE l.status::text = 'SUBMITTED'

-- name: drop_objects
DROP TABLE IF EXISTS {schema}.gxsubmit_legacy_link;
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_take();
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_guard();
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_requeued();
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_writeback();
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_adopt(text[]);
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_adopt_one(text);
DROP FUNCTION IF EXISTS {schema}.gxsubmit_legacy_command_id(text);
DELETE FROM {schema}.gxsubmit_legacy_outbox WHERE legacy_table = {legacy_name}
