-- Read-only reports of `gxsubmit demo` (and the acceptance tests' audits). Each starts with a
-- "-- name: <name>" line; {schema} is replaced by the quoted schema. Never writes.

-- name: progress
SELECT command_type, status, count(*) FROM {schema}.outbox_commands GROUP BY command_type, status

-- name: latency
-- Created-to-committed latency of every COMMITTED row, and the span of the run.
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[])
           WITHIN GROUP (ORDER BY extract(epoch FROM committed_at - created_at)::float8),
       extract(epoch FROM max(committed_at) - min(created_at))::float8
  FROM {schema}.outbox_commands
 WHERE status = 'COMMITTED'

-- name: failed
SELECT command_type, request_id, coalesce(error_code, ''), coalesce(error, '')
  FROM {schema}.outbox_commands
 WHERE status = 'FAILED'
 ORDER BY seq
 LIMIT %(limit)s

-- name: order_keys
-- Keys, keyed rows, and keyed rows that committed in the same or an earlier block than the row of their
-- key written before them (0 when order keys work).
SELECT count(DISTINCT order_key), count(*),
       count(*) FILTER (WHERE prev_block IS NOT NULL AND (commit_block IS NULL OR commit_block <= prev_block))
  FROM (SELECT order_key, commit_block,
               lag(commit_block) OVER (PARTITION BY tenant_id, order_key ORDER BY seq) AS prev_block
          FROM {schema}.outbox_commands
         WHERE order_key IS NOT NULL) AS k

-- name: rows_for_audit
SELECT id::text, command_type, status, fabric_tx_id FROM {schema}.outbox_commands
