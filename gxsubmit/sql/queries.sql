-- Named queries of the outbox store. Each starts with a "-- name: <name>" line.
-- {schema} is replaced by the quoted schema (psycopg.sql.Identifier), {schema_name} by the schema's name as a
-- string literal (NOTIFY payloads are '<schema>:<command_type>'), {limit} by an integer literal.
-- Never put literal braces or percent signs in this file.

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s)

-- name: table_exists
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %(schema)s AND tablename = %(table)s
)

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: lock_migrations
SELECT pg_advisory_xact_lock(%(key)s)

-- name: create_version_table
CREATE TABLE IF NOT EXISTS {schema}.gxsubmit_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_versions
SELECT version FROM {schema}.gxsubmit_schema_version ORDER BY version

-- name: record_version
INSERT INTO {schema}.gxsubmit_schema_version (version, name) VALUES (%(version)s, %(name)s)

-- name: current_version
SELECT max(version) FROM {schema}.gxsubmit_schema_version

-- name: session_setup
-- The claim must never run on a generic plan (docs/design.md#the-claim): plan it for the actual parameters each time.
-- A stuck lock must not hang a worker for ever.
-- Timestamps come back in UTC: psycopg converts them to the session's time zone, and UTC is the cheap
-- one (created_at on every claimed row).
-- No parallel plans and no JIT: no statement here reads enough to gain from them, and both are paid
-- for by a plan's estimated cost even when a one-time filter then skips the scan (stats on a table of
-- 2 million rows: ~60 ms starting parallel workers, ~20 ms compiling; 0.3 ms without).
SET plan_cache_mode = force_custom_plan; SET statement_timeout = '30s'; SET TimeZone = 'UTC';
SET max_parallel_workers_per_gather = 0; SET jit = off

-- name: session_pooled
-- Through a transaction pooler, instead of session_setup: PgBouncer tracks TimeZone and application_name
-- per client and sets them on whichever server connection runs the client's next transaction, the
-- others would stay on that server connection. One application_name for every gxsubmit connection:
-- PgBouncer sends a SET before each transaction that lands on a server connection a client of another
-- name used last (a statement per claim), and a shared server connection names no single worker anyway.
SET TimeZone = 'UTC'; SET application_name = 'gxsubmit'

-- name: listen
LISTEN gxsubmit

-- name: unlisten
UNLISTEN gxsubmit

-- name: notify_probe
-- A wake-up probe (gxsubmit/outbox/listen.py PROBE_PREFIX): does a NOTIFY reach the worker's LISTEN connection?
SELECT pg_notify('gxsubmit', %(payload)s)

-- name: ping
-- The worker's idle liveness check (db_deadline): a blackholed link only shows when a statement waits.
SELECT 1

-- name: enqueue
INSERT INTO {schema}.outbox_commands (id, tenant_id, service, command_type, request_id, payload, order_key)
VALUES (%(id)s, %(tenant_id)s, %(service)s, %(command_type)s, %(request_id)s, %(payload)s, %(order_key)s)
ON CONFLICT (tenant_id, request_id) DO NOTHING
RETURNING id

-- name: find_request
SELECT id FROM {schema}.outbox_commands WHERE tenant_id = %(tenant_id)s AND request_id = %(request_id)s

-- name: claim
-- Expired leases first (their rows are older work), then due PENDING rows in FIFO order. The UNION ALL
-- is pulled lazily, so "due" locks only as many rows as "expired" left room for. The outer UPDATE finds
-- the rows through the primary key (id = ANY(ARRAY(...))), never by joining the whole table.
-- "due" starts its walk at the first due row of any of its types (first_due: one probe per type in
-- outbox_commands_pending_type_idx), so other identities' PENDING rows before it are not read
-- (migration 0005). The type condition there is written as a range on purpose: with "=" the planner
-- may serve the probe from outbox_commands_pending_idx (seq order) and walk every PENDING row of
-- other types for a type that has none; a range cannot give (command_type, seq) order from that index.
-- A row with an order_key is taken only when no earlier row of its tenant and key is unfinished
-- (migration 0007): one probe of outbox_commands_order_key_idx per keyed candidate, none for the others.
-- A row set to run alone after its claims ended in crashes (run_alone, migration 0009) is not taken
-- here but by claim_suspect; taking a row over from an expired lease counts such a claim (its holder
-- stopped renewing: died, hung, or was cut off).
WITH first_due AS (
    SELECT f.seq
      FROM unnest(%(types)s::text[]) AS t(command_type)
     CROSS JOIN LATERAL (
           SELECT p.seq
             FROM {schema}.outbox_commands AS p
            WHERE p.status = 'PENDING'
              AND p.command_type >= t.command_type AND p.command_type <= t.command_type
              AND p.next_attempt_at <= now()
            ORDER BY p.command_type, p.seq
            LIMIT 1) AS f
), expired AS (
    SELECT o.id
      FROM {schema}.outbox_commands AS o
     WHERE o.status IN ('CLAIMED', 'SUBMITTED')
       AND o.lease_expires_at < now()
       AND o.command_type = ANY(%(types)s::text[])
     ORDER BY o.lease_expires_at
     LIMIT {limit}
       FOR UPDATE SKIP LOCKED
), due AS (
    SELECT o.id
      FROM {schema}.outbox_commands AS o
     WHERE o.status = 'PENDING'
       AND o.next_attempt_at <= now()
       AND o.command_type = ANY(%(types)s::text[])
       AND o.seq >= (SELECT min(first_due.seq) FROM first_due)
       AND NOT o.run_alone
       AND (o.order_key IS NULL OR NOT EXISTS (
             SELECT 1
               FROM {schema}.outbox_commands AS e
              WHERE e.tenant_id = o.tenant_id AND e.order_key = o.order_key AND e.seq < o.seq
                AND e.order_key IS NOT NULL AND e.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')))
     ORDER BY o.seq
     LIMIT {limit}
       FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT expired.id FROM expired
    UNION ALL
    SELECT due.id FROM due
    LIMIT {limit}
)
UPDATE {schema}.outbox_commands AS c
   SET status = 'CLAIMED',
       attempts = c.attempts + 1,
       counted_attempts = c.counted_attempts + 1,
       crashed_claims = c.crashed_claims + CASE WHEN c.status = 'CLAIMED' THEN 1 ELSE 0 END,
       locked_by = %(worker_id)s,
       locked_at = now(),
       lease_expires_at = now() + make_interval(secs => %(lease_s)s),
       lease_token = gen_random_uuid(),
       updated_at = now()
 WHERE c.id = ANY(ARRAY(SELECT picked.id FROM picked))
RETURNING c.id, c.seq, c.tenant_id, c.service, c.command_type, c.request_id, c.payload::text, c.attempts,
          c.counted_attempts, c.lease_token, c.tx_nonce, c.fabric_tx_id, c.creator_fingerprint, c.creator_not_after,
          c.submitted_at IS NOT NULL, c.created_at, c.crashed_claims, c.tx_generation, c.submitted_at

-- name: claim_suspect
-- One due row set to run alone (run_alone: its claims ended in its worker crashing; migration 0009), for a
-- worker with nothing else in flight: a crash then can only be this row's doing. Order keys as in claim.
WITH picked AS (
    SELECT o.id
      FROM {schema}.outbox_commands AS o
     WHERE o.status = 'PENDING' AND o.run_alone
       AND o.next_attempt_at <= now()
       AND o.command_type = ANY(%(types)s::text[])
       AND (o.order_key IS NULL OR NOT EXISTS (
             SELECT 1
               FROM {schema}.outbox_commands AS e
              WHERE e.tenant_id = o.tenant_id AND e.order_key = o.order_key AND e.seq < o.seq
                AND e.order_key IS NOT NULL AND e.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')))
     ORDER BY o.seq
     LIMIT 1
       FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.outbox_commands AS c
   SET status = 'CLAIMED',
       attempts = c.attempts + 1,
       counted_attempts = c.counted_attempts + 1,
       locked_by = %(worker_id)s,
       locked_at = now(),
       lease_expires_at = now() + make_interval(secs => %(lease_s)s),
       lease_token = gen_random_uuid(),
       updated_at = now()
 WHERE c.id = ANY(ARRAY(SELECT picked.id FROM picked))
RETURNING c.id, c.seq, c.tenant_id, c.service, c.command_type, c.request_id, c.payload::text, c.attempts,
          c.counted_attempts, c.lease_token, c.tx_nonce, c.fabric_tx_id, c.creator_fingerprint, c.creator_not_after,
          c.submitted_at IS NOT NULL, c.created_at, c.crashed_claims, c.tx_generation, c.submitted_at

-- name: suspects_due
-- Whether a row of these types waits to be claimed alone (claim_suspect); reads only the partial index.
SELECT EXISTS (
    SELECT 1 FROM {schema}.outbox_commands AS o
     WHERE o.status = 'PENDING' AND o.run_alone
       AND o.next_attempt_at <= now() AND o.command_type = ANY(%(types)s::text[]))

-- name: next_takeover
-- Seconds until the earliest lease of another holder among these types runs out (NULL: none held): an
-- idle worker claims again then, so a dead replica's rows pass on at the lease's end, not at the next
-- poll (30 s by default) or NOTIFY. Walks outbox_commands_lease_idx in expiry order.
SELECT extract(epoch FROM min(o.lease_expires_at) - now())::float8
  FROM {schema}.outbox_commands AS o
 WHERE o.status IN ('CLAIMED', 'SUBMITTED')
   AND o.command_type = ANY(%(types)s::text[])
   AND o.locked_by IS DISTINCT FROM %(worker_id)s

-- name: renew
-- The fenced batch updates (renew, record_tx_many, mark_submitted, mark_committed) return one row:
-- NULL when every lease held (the caller has those ids already), else the ids whose lease held.
WITH held AS (
    UPDATE {schema}.outbox_commands AS c
       SET lease_expires_at = now() + make_interval(secs => %(lease_s)s),
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[]) AS u(id, token)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id
)
SELECT CASE WHEN count(*) < cardinality(%(ids)b::uuid[])
            THEN coalesce(array_agg(held.id), ARRAY[]::uuid[]) END
  FROM held

-- name: record_tx_many
-- Each row's stored nonce and tx id, fenced by its lease token (the benchmarks' replay of the original
-- worker; the worker itself writes mark_submitted_tx).
WITH held AS (
    UPDATE {schema}.outbox_commands AS c
       SET tx_nonce = u.nonce,
           fabric_tx_id = u.tx_id,
           creator_fingerprint = u.fp,
           creator_not_after = u.not_after,
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[], %(nonces)b::bytea[], %(tx_ids)b::text[],
                  %(fps)b::text[], %(not_afters)b::timestamptz[]) AS u(id, token, nonce, tx_id, fp, not_after)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id
)
SELECT CASE WHEN count(*) < cardinality(%(ids)b::uuid[])
            THEN coalesce(array_agg(held.id), ARRAY[]::uuid[]) END
  FROM held

-- name: mark_submitted
WITH held AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'SUBMITTED',
           submitted_at = coalesce(c.submitted_at, now()),
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[]) AS u(id, token)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id
)
SELECT CASE WHEN count(*) < cardinality(%(ids)b::uuid[])
            THEN coalesce(array_agg(held.id), ARRAY[]::uuid[]) END
  FROM held

-- name: mark_submitted_tx
-- The write-ahead before Submit, with what the envelope carries: its tx id, the generation of its derived
-- nonce and its creator (0008). Nothing is written before Endorse: the nonce can be derived again.
WITH held AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'SUBMITTED',
           submitted_at = coalesce(c.submitted_at, now()),
           tx_nonce = u.nonce,
           fabric_tx_id = u.tx_id,
           tx_generation = u.gen,
           creator_fingerprint = u.fp,
           creator_not_after = coalesce(u.not_after, c.creator_not_after),
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[], %(tx_ids)b::text[], %(gens)b::int4[], %(fps)b::text[],
                  %(not_afters)b::timestamptz[], %(nonces)b::bytea[]) AS u(id, token, tx_id, gen, fp, not_after, nonce)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id
)
SELECT CASE WHEN count(*) < cardinality(%(ids)b::uuid[])
            THEN coalesce(array_agg(held.id), ARRAY[]::uuid[]) END
  FROM held

-- name: txid_key
-- The key of the derived nonces (0008), written once by migrate.
SELECT t.key FROM {schema}.gxsubmit_txid_key AS t

-- name: record_creator
INSERT INTO {schema}.gxsubmit_creators (fingerprint, creator) VALUES (%(fingerprint)s, %(creator)s)
ON CONFLICT (fingerprint) DO NOTHING

-- name: find_creator
SELECT c.creator FROM {schema}.gxsubmit_creators AS c WHERE c.fingerprint = %(fingerprint)s

-- name: mark_committed
WITH held AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'COMMITTED',
           committed_at = now(),
           submitted_at = coalesce(c.submitted_at, now()),
           fabric_tx_id = coalesce(u.tx_id, c.fabric_tx_id),
           commit_block = u.block,
           validation_code = u.code,
           error_code = NULL,
           error = NULL,
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[], %(tx_ids)b::text[], %(blocks)b::bigint[],
                  %(codes)b::text[]) AS u(id, token, tx_id, block, code)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id, c.tenant_id, c.order_key, c.seq
), woken AS (
    -- the next row of each finished key may be another identity's: wake its worker (0007)
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(held.tenant_id), array_agg(held.order_key),
                                       array_agg(held.seq)) AS n
      FROM held
     WHERE held.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT CASE WHEN count(*) < cardinality(%(ids)b::uuid[])
            THEN coalesce(array_agg(held.id), ARRAY[]::uuid[]) END,
       (SELECT woken.n FROM woken)
  FROM held

-- name: retry_later
-- Burning the nonce (after a definite INVALID commit of that tx id) forgets the tx id and its
-- submission: the next attempt derives the next generation's nonce (docs/design.md#recovery-walks-the-ledger). A retry that does
-- not count (gateway unavailable, breaker open, in doubt) gives the claim's counted attempt back (0006).
-- tx_generation is the generation the next attempt derives its nonce at (0008): after a burn, one past
-- the tx id found INVALID (which may be beyond the stored one when the worker walked the ledger).
UPDATE {schema}.outbox_commands AS c
   SET status = 'PENDING',
       tx_generation = greatest(c.tx_generation, %(generation)s),
       counted_attempts = CASE WHEN %(counts)s THEN c.counted_attempts
                               ELSE greatest(c.counted_attempts - 1, 0) END,
       next_attempt_at = now() + make_interval(secs => %(delay_s)s),
       error_code = %(error_code)s,
       error = %(error)s,
       lease_expires_at = NULL,
       lease_token = NULL,
       tx_nonce = CASE WHEN %(burn)s THEN NULL ELSE c.tx_nonce END,
       fabric_tx_id = CASE WHEN %(burn)s THEN NULL ELSE c.fabric_tx_id END,
       creator_fingerprint = CASE WHEN %(burn)s THEN NULL ELSE c.creator_fingerprint END,
       creator_not_after = CASE WHEN %(burn)s THEN NULL ELSE c.creator_not_after END,
       submitted_at = CASE WHEN %(burn)s THEN NULL ELSE c.submitted_at END,
       validation_code = CASE WHEN %(burn)s THEN NULL ELSE c.validation_code END,
       commit_block = CASE WHEN %(burn)s THEN NULL ELSE c.commit_block END,
       updated_at = now()
 WHERE c.id = %(id)s AND c.lease_token = %(token)s AND c.status IN ('CLAIMED', 'SUBMITTED')
RETURNING c.id

-- name: mark_failed
-- validation_code is set exactly (not coalesced): on a FAILED row it is the definite commit result of
-- the row's current fabric_tx_id, or NULL. requeue relies on that. A FAILED row no longer holds its
-- order key: the next row of the key is woken (0007).
WITH failed AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'FAILED',
           error_code = %(error_code)s,
           error = %(error)s,
           fabric_tx_id = coalesce(%(tx_id)s, c.fabric_tx_id),
           validation_code = %(validation_code)s,
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
     WHERE c.id = %(id)s AND c.lease_token = %(token)s AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.id, c.tenant_id, c.order_key, c.seq
)
SELECT failed.id,
       CASE WHEN failed.order_key IS NOT NULL
            THEN {schema}.gxsubmit_wake_next({schema_name}, ARRAY[failed.tenant_id], ARRAY[failed.order_key],
                                             ARRAY[failed.seq]) END
  FROM failed

-- name: release
-- Shutdown hand-back: immediately claimable again, and the claim's attempt is given back.
WITH released AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'PENDING',
           attempts = greatest(c.attempts - 1, 0),
           counted_attempts = greatest(c.counted_attempts - 1, 0),
           next_attempt_at = now(),
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(tokens)b::uuid[]) AS u(id, token)
     WHERE c.id = u.id AND c.lease_token = u.token AND c.status IN ('CLAIMED', 'SUBMITTED')
    RETURNING c.command_type
), notified AS (
    SELECT pg_notify('gxsubmit', {schema_name} || ':' || t.command_type) FROM (SELECT DISTINCT command_type FROM released) AS t
)
SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM notified)

-- name: fail_unroutable
WITH failed AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'FAILED',
           error_code = 'UNROUTABLE',
           error = 'no route for command type ' || c.command_type,
           updated_at = now()
     WHERE c.status = 'PENDING' AND NOT (c.command_type = ANY(%(types)s::text[]))
    RETURNING c.tenant_id, c.order_key, c.seq
), woken AS (
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(failed.tenant_id),
                                       array_agg(failed.order_key), array_agg(failed.seq)) AS n
      FROM failed
     WHERE failed.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT count(*), (SELECT woken.n FROM woken) FROM failed

-- name: waiting_for_key
-- PENDING rows held back by an earlier unfinished row of their order key (0007), and on how many keys.
-- For `gxsubmit status` only: its cost grows with the unfinished keyed rows, so the supervisor's periodic
-- statistics do not pay it.
SELECT count(*), count(DISTINCT (o.tenant_id, o.order_key))
  FROM {schema}.outbox_commands AS o
 WHERE o.order_key IS NOT NULL AND o.status = 'PENDING'
   AND EXISTS (SELECT 1
                 FROM {schema}.outbox_commands AS e
                WHERE e.tenant_id = o.tenant_id AND e.order_key = o.order_key AND e.seq < o.seq
                  AND e.order_key IS NOT NULL AND e.status IN ('PENDING', 'CLAIMED', 'SUBMITTED'))

-- name: requeue
-- Back to PENDING with a fresh attempt budget. The nonce is kept (a copy of that tx id may be on the
-- ledger, and re-endorsing with it is what makes a retry safe) unless the row's tx id definitely
-- committed INVALID: then the nonce is burnt, as retry_later(burn_nonce=True) would have done.
WITH requeued AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'PENDING',
           attempts = 0,
           counted_attempts = 0,
           crashed_claims = 0,
           run_alone = false,
           next_attempt_at = now(),
           error_code = NULL,
           error = NULL,
           lease_expires_at = NULL,
           lease_token = NULL,
           tx_nonce = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID') THEN NULL
                           ELSE c.tx_nonce END,
           fabric_tx_id = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID') THEN NULL
                               ELSE c.fabric_tx_id END,
           creator_fingerprint = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID') THEN NULL
                                      ELSE c.creator_fingerprint END,
           creator_not_after = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID') THEN NULL
                                    ELSE c.creator_not_after END,
           submitted_at = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID') THEN NULL
                               ELSE c.submitted_at END,
           tx_generation = CASE WHEN c.validation_code NOT IN ('VALID', 'DUPLICATE_TXID')
                                THEN c.tx_generation + 1 ELSE c.tx_generation END,
           validation_code = NULL,
           commit_block = NULL,
           updated_at = now()
     WHERE c.status = 'FAILED'
       AND (c.id = ANY(%(ids)b::uuid[]) OR c.error_code = %(error_code)s OR %(all_failed)s)
    RETURNING c.command_type
), notified AS (
    SELECT pg_notify('gxsubmit', {schema_name} || ':' || t.command_type) FROM (SELECT DISTINCT command_type FROM requeued) AS t
)
SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM notified)

-- name: stats
-- Everything the gauges, /status and `gxsubmit status` show, in one statement, without reading the
-- retained history: the unfinished and FAILED rows are counted exactly through their partial indexes,
-- COMMITTED rows only while the table is small (fewer rows than the store's exact limit by the planner's
-- estimate; the subquery is a one-time filter, so a large table's branch never starts its scan).
-- The last row carries that estimate (pg_class.reltuples; -1 before the first ANALYZE), from which
-- the store derives the COMMITTED count of a large table. The PENDING groups carry the age of their
-- oldest row (by the server's clock).
WITH estimate AS (
    SELECT c.reltuples
      FROM pg_catalog.pg_class AS c
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname = {schema_name} AND c.relname = 'outbox_commands'
)
SELECT o.status, o.command_type, o.error_code, count(*), extract(epoch FROM now() - min(o.created_at))::float8
  FROM {schema}.outbox_commands AS o
 WHERE o.status = 'PENDING'
 GROUP BY 1, 2, 3
UNION ALL
SELECT o.status, o.command_type, o.error_code, count(*), NULL
  FROM {schema}.outbox_commands AS o
 WHERE o.status IN ('CLAIMED', 'SUBMITTED')
 GROUP BY 1, 2, 3
UNION ALL
SELECT o.status, o.command_type, o.error_code, count(*), NULL
  FROM {schema}.outbox_commands AS o
 WHERE o.status = 'FAILED'
 GROUP BY 1, 2, 3
UNION ALL
SELECT o.status, o.command_type, NULL, count(*), NULL
  FROM {schema}.outbox_commands AS o
 WHERE o.status = 'COMMITTED'
   AND (SELECT estimate.reltuples FROM estimate) < %(exact_below)s
 GROUP BY 1, 2
UNION ALL
SELECT NULL, NULL, NULL, estimate.reltuples::bigint, NULL FROM estimate

-- name: release_owned
-- A supervisor hands back the rows of worker processes it saw exit: claimable at once instead of
-- after their leases. The attempt stays counted (a crash may be caused by the row itself) and the
-- nonce is kept (the dead worker may have submitted).
WITH released AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'PENDING',
           next_attempt_at = now(),
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
     WHERE c.status IN ('CLAIMED', 'SUBMITTED') AND c.locked_by = ANY(%(owners)s::text[])
    RETURNING c.command_type
), notified AS (
    SELECT pg_notify('gxsubmit', {schema_name} || ':' || t.command_type) FROM (SELECT DISTINCT command_type FROM released) AS t
)
SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM notified)

-- name: release_crashed
-- release_owned for workers that exited abnormally (a crash, or killed as hung): each row's claim ended
-- in a crash (migration 0009). Only a row still CLAIMED counts one: a SUBMITTED row's copy had already
-- left for the orderer, and what was left of its work (the commit wait) does not read the row. Below the
-- limit the row is handed back as release_owned does, from alone_from crashes on to be run alone; at the
-- limit, the row is FAILED (WORKER_CRASH) and no longer holds its order key. A row an earlier try may
-- have put on the ledger gets twice the limit: its next claim re-endorses the same tx id and finds a
-- committed copy (COMMITTED) instead of being dead-lettered while the ledger holds it. Its tx id and
-- nonce stay either way, so a requeue resolves that tx id before sending again.
WITH crashed AS (
    SELECT o.id,
           o.crashed_claims + CASE WHEN o.status = 'CLAIMED' THEN 1 ELSE 0 END AS crashes,
           o.status = 'CLAIMED'
             AND o.crashed_claims + 1 >= CASE WHEN o.submitted_at IS NULL THEN %(limit)s
                                              ELSE 2 * %(limit)s END AS dead
      FROM {schema}.outbox_commands AS o
     WHERE o.status IN ('CLAIMED', 'SUBMITTED') AND o.locked_by = ANY(%(owners)s::text[])
       FOR UPDATE
), released AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = CASE WHEN k.dead THEN 'FAILED' ELSE 'PENDING' END,
           crashed_claims = k.crashes,
           run_alone = c.run_alone OR k.crashes >= %(alone_from)s,
           error_code = CASE WHEN k.dead THEN 'WORKER_CRASH' ELSE c.error_code END,
           error = CASE WHEN k.dead
                        THEN 'its worker died or was killed as hung in ' || k.crashes::text
                             || ' claims of this row (the last with nothing else in flight)'
                             || CASE WHEN c.submitted_at IS NOT NULL
                                     THEN '; transaction ' || coalesce(c.fabric_tx_id, '?')
                                          || ' may be on the ledger: a requeue resolves it before sending again'
                                     ELSE '' END
                        ELSE c.error END,
           validation_code = CASE WHEN k.dead THEN NULL ELSE c.validation_code END,
           next_attempt_at = now(),
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
      FROM crashed AS k
     WHERE c.id = k.id
    RETURNING c.command_type, c.status, c.tenant_id, c.order_key, c.seq
), notified AS (
    SELECT pg_notify('gxsubmit', {schema_name} || ':' || t.command_type)
      FROM (SELECT DISTINCT released.command_type FROM released WHERE released.status = 'PENDING') AS t
), woken AS (
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(released.tenant_id),
                                       array_agg(released.order_key), array_agg(released.seq)) AS n
      FROM released
     WHERE released.status = 'FAILED' AND released.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM released WHERE released.status = 'PENDING'),
       (SELECT coalesce(array_agg(released.command_type), ARRAY[]::text[]) FROM released
         WHERE released.status = 'FAILED'),
       (SELECT count(*) FROM notified), (SELECT woken.n FROM woken)

-- name: cancel_candidates
-- gxsubmit cancel: the rows an operator named (any status: the command reports finished ones), or the
-- unfinished rows whose last try failed with an error code. Unfinished rows come through their partial
-- indexes.
SELECT o.id, o.status, o.command_type, o.fabric_tx_id, o.submitted_at IS NOT NULL, o.request_id
  FROM {schema}.outbox_commands AS o
 WHERE o.id = ANY(%(ids)s::uuid[])
    OR (o.tenant_id = %(tenant)s AND o.request_id = ANY(%(request_ids)s::text[]))
    OR (o.status IN ('PENDING', 'CLAIMED', 'SUBMITTED') AND o.error_code = %(error_code)s)
 ORDER BY o.seq

-- name: cancel_unsent
-- Cancel rows never handed to the orderer. The condition is re-checked here: a worker writes SUBMITTED
-- (fenced by its lease) before Submit, so either that write came first and the row is left for
-- resolution, or this one did and the worker's write, and so its Submit, never happens.
WITH cancelled AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'FAILED',
           error_code = 'CANCELLED',
           error = 'cancelled by an operator (gxsubmit cancel) before it was submitted',
           validation_code = NULL,
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
     WHERE c.id = ANY(%(ids)s::uuid[]) AND c.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')
       AND c.submitted_at IS NULL
    RETURNING c.id, c.tenant_id, c.order_key, c.seq
), woken AS (
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(cancelled.tenant_id),
                                       array_agg(cancelled.order_key), array_agg(cancelled.seq)) AS n
      FROM cancelled
     WHERE cancelled.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT array_agg(cancelled.id), (SELECT woken.n FROM woken) FROM cancelled

-- name: cancel_resolved
-- Cancel a row whose tx id committed INVALID (so it can never commit), if the row still carries that tx
-- id. validation_code records that outcome, so a requeue draws a new nonce (see requeue).
WITH cancelled AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'FAILED',
           error_code = 'CANCELLED',
           error = %(error)s,
           validation_code = %(code)s,
           lease_expires_at = NULL,
           lease_token = NULL,
           updated_at = now()
     WHERE c.id = %(id)s AND c.status IN ('PENDING', 'CLAIMED', 'SUBMITTED') AND c.fabric_tx_id = %(tx_id)s
    RETURNING c.id, c.tenant_id, c.order_key, c.seq
), woken AS (
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(cancelled.tenant_id),
                                       array_agg(cancelled.order_key), array_agg(cancelled.seq)) AS n
      FROM cancelled
     WHERE cancelled.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT count(*), (SELECT woken.n FROM woken) FROM cancelled

-- name: prune_cutoff
-- One cutoff for a whole prune run, by the server's clock.
SELECT now() - make_interval(secs => %(older_than_s)s)

-- name: prune_seq_range
SELECT min(o.seq), max(o.seq) FROM {schema}.outbox_commands AS o

-- name: prune_probe
-- The first row at or after a seq, and whether it was created before the cutoff (one index lookup):
-- the prune's binary search for the seq where recent rows begin, so no batch reads the recent table.
SELECT o.seq, o.created_at < %(cutoff)s
  FROM {schema}.outbox_commands AS o
 WHERE o.seq >= %(seq)s
 ORDER BY o.seq
 LIMIT 1

-- name: prune_batch
-- Delete up to a batch of COMMITTED rows committed before the cutoff, oldest first, walking the seq index
-- only between the previous batch's last row and the start of the recent rows. FAILED and unfinished rows
-- are never deleted. Returns how many went and the last seq, where the next batch starts.
WITH doomed AS (
    SELECT o.id
      FROM {schema}.outbox_commands AS o
     WHERE o.seq > %(after_seq)s AND o.seq < %(below_seq)s
       AND o.status = 'COMMITTED'
       AND o.committed_at < %(cutoff)s
     ORDER BY o.seq
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {schema}.outbox_commands AS c
     WHERE c.id = ANY(ARRAY(SELECT doomed.id FROM doomed))
    RETURNING c.seq
)
SELECT count(*), max(deleted.seq) FROM deleted

-- name: prune_count
-- What prune_batch would delete (prune --dry-run).
SELECT count(*)
  FROM {schema}.outbox_commands AS o
 WHERE o.seq < %(below_seq)s
   AND o.status = 'COMMITTED'
   AND o.committed_at < %(cutoff)s

-- name: record_creator_expiry
-- An operator supplies the expiry of a certificate that signed unfinished rows recorded without one
-- (before migration 0004, or re-recorded by an older release after a rollback): gxsubmit record-expiry.
-- The worker then applies its usual rule to them (docs/design.md#rotated-certificates). Rows are found through the partial
-- indexes of unfinished rows, not by reading the table.
WITH recorded AS (
    UPDATE {schema}.outbox_commands AS c
       SET creator_not_after = %(not_after)s,
           updated_at = now()
     WHERE c.id = ANY(ARRAY(
               SELECT o.id FROM {schema}.outbox_commands AS o
                WHERE o.status = 'PENDING' AND o.creator_fingerprint = %(fingerprint)s
               UNION ALL
               SELECT o.id FROM {schema}.outbox_commands AS o
                WHERE o.status IN ('CLAIMED', 'SUBMITTED') AND o.creator_fingerprint = %(fingerprint)s))
       AND c.creator_fingerprint = %(fingerprint)s
       AND c.creator_not_after IS NULL
       AND c.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')
    RETURNING 1
)
SELECT count(*) FROM recorded
