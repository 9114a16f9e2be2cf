-- Named queries of the fleet registry (gxsubmit.fleet, gxsubmit.verify); table from migration 0011.
-- Each starts with a "-- name: <name>" line. {schema} is replaced by the quoted schema, {schema_name} by
-- the schema's name as a string literal. Never put literal braces or percent signs in this file.
-- A replica counts as live while it has not stopped and heartbeat_at + stale_after_s is in the future.

-- name: beat
-- A supervisor's heartbeat: the whole row rewritten in one statement, which also forgets rows of other
-- replicas silent for longer than forget_s past their staleness. Returns how many were forgotten and
-- whether a live replica of another host held this worker id (two supervisors configured alike).
WITH prior AS (
    SELECT r.host, r.pid
      FROM {schema}.gxsubmit_replicas AS r
     WHERE r.worker_id = %(worker_id)s AND NOT r.stopped
       AND r.heartbeat_at + make_interval(secs => r.stale_after_s) > now()
), forgotten AS (
    DELETE FROM {schema}.gxsubmit_replicas AS r
     WHERE r.worker_id <> %(worker_id)s
       AND r.heartbeat_at < now() - make_interval(secs => r.stale_after_s + %(forget_s)s)
    RETURNING r.worker_id
), written AS (
    INSERT INTO {schema}.gxsubmit_replicas AS r (worker_id, node, host, pid, version, catalog_digest,
                                                 catalog_source, routed_types, identities, db_ok,
                                                 db_error_code, db_error_at, stale_after_s, stopped,
                                                 started_at, heartbeat_at)
    VALUES (%(worker_id)s, %(node)s, %(host)s, %(pid)s, %(version)s, %(digest)s, %(source)s, %(types)s,
            %(identities)s, %(db_ok)s, %(db_error_code)s, %(db_error_at)s, %(stale_after_s)s, false,
            %(started_at)s, now())
    ON CONFLICT (worker_id) DO UPDATE
       SET node = excluded.node, host = excluded.host, pid = excluded.pid, version = excluded.version,
           catalog_digest = excluded.catalog_digest, catalog_source = excluded.catalog_source,
           routed_types = excluded.routed_types, identities = excluded.identities, db_ok = excluded.db_ok,
           db_error_code = excluded.db_error_code, db_error_at = excluded.db_error_at,
           stale_after_s = excluded.stale_after_s, stopped = false, started_at = excluded.started_at,
           heartbeat_at = now()
    RETURNING r.worker_id
)
SELECT (SELECT count(*) FROM forgotten),
       (SELECT prior.host FROM prior WHERE prior.host <> %(host)s LIMIT 1),
       (SELECT count(*) FROM written)

-- name: stop
-- Graceful shutdown: the row stays (its types keep counting as routed for the unroutable grace period,
-- and `fleet` shows the replica as stopped) but the replica is no longer live.
UPDATE {schema}.gxsubmit_replicas AS r
   SET stopped = true, identities = %(identities)s, heartbeat_at = now()
 WHERE r.worker_id = %(worker_id)s AND r.host = %(host)s AND r.pid = %(pid)s

-- name: fail_unroutable
-- The fleet-aware dead-letter sweep (replaces the single-catalogue one): a PENDING row fails UNROUTABLE
-- only when it has waited the grace period and no replica has routed its type within the grace period,
-- counting a live replica as routing until now and a gone one until it stopped or went stale. So during
-- a rolling update the replica that lacks a type never fails rows another replica's catalogue knows.
WITH routed AS (
    SELECT DISTINCT t.command_type
      FROM {schema}.gxsubmit_replicas AS r
     CROSS JOIN LATERAL unnest(r.routed_types) AS t(command_type)
     WHERE CASE WHEN r.stopped THEN r.heartbeat_at
                ELSE r.heartbeat_at + make_interval(secs => r.stale_after_s) END
           > now() - make_interval(secs => %(grace_s)s)
), failed AS (
    UPDATE {schema}.outbox_commands AS c
       SET status = 'FAILED',
           error_code = 'UNROUTABLE',
           error = 'no route for command type ' || c.command_type,
           updated_at = now()
     WHERE c.status = 'PENDING' AND NOT (c.command_type = ANY(%(types)s::text[]))
       AND c.updated_at < now() - make_interval(secs => %(grace_s)s)
       AND NOT EXISTS (SELECT 1 FROM routed WHERE routed.command_type = c.command_type)
    RETURNING c.tenant_id, c.order_key, c.seq
), woken AS (
    SELECT {schema}.gxsubmit_wake_next({schema_name}, array_agg(failed.tenant_id),
                                       array_agg(failed.order_key), array_agg(failed.seq)) AS n
      FROM failed
     WHERE failed.order_key IS NOT NULL
    HAVING count(*) > 0
)
SELECT count(*), (SELECT woken.n FROM woken) FROM failed

-- name: replicas
-- Every registered replica with its liveness and ages by the server's clock.
SELECT r.worker_id, r.node, r.host, r.pid, r.version, r.catalog_digest, r.catalog_source, r.routed_types,
       r.identities, r.db_ok, r.db_error_code, extract(epoch FROM now() - r.db_error_at)::float8,
       r.stale_after_s, r.stopped, extract(epoch FROM now() - r.heartbeat_at)::float8,
       extract(epoch FROM now() - r.started_at)::float8,
       NOT r.stopped AND r.heartbeat_at + make_interval(secs => r.stale_after_s) > now()
  FROM {schema}.gxsubmit_replicas AS r
 ORDER BY r.worker_id

-- name: flow
-- What `verify` needs of the queue beyond the statistics: due PENDING rows and how long the oldest has
-- been due, rows in flight, and rows dead-lettered within the window. PENDING and in-flight rows are read
-- through their partial indexes; FAILED rows through outbox_commands_failed_idx.
SELECT (SELECT count(*) FROM {schema}.outbox_commands AS o
         WHERE o.status = 'PENDING' AND o.next_attempt_at <= now()),
       (SELECT extract(epoch FROM now() - min(o.next_attempt_at))::float8 FROM {schema}.outbox_commands AS o
         WHERE o.status = 'PENDING' AND o.next_attempt_at <= now()),
       (SELECT count(*) FROM {schema}.outbox_commands AS o WHERE o.status IN ('CLAIMED', 'SUBMITTED')),
       (SELECT count(*) FROM {schema}.outbox_commands AS o
         WHERE o.status = 'FAILED' AND o.updated_at > now() - make_interval(secs => %(window_s)s))
