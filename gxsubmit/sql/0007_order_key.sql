-- 0007: order keys. Commands that share a producer-chosen key run one at a time, in seq order.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- gxsubmit submits many commands at once, so two commands about the same account could be endorsed
-- in either order, or together: an UNFREEZE_WALLET endorsed before the FREEZE_WALLET it follows has
-- committed fails ("wallet is not frozen"), and the FREEZE then leaves the wallet frozen; a transfer
-- endorsed before the MINT that funds it fails for lack of balance. A producer that needs an order sets
-- order_key (an account or user id, say; NULL, the default, means no order). A row is claimed only when
-- no earlier row (lower seq) of the same tenant and key is unfinished; FAILED rows do not hold the key.
--
-- Only unfinished rows with a key are indexed: rows without one cost nothing more. A plain CREATE INDEX
-- reads the table once while it blocks inserts, as in 0005 (a new column is NULL everywhere, so the
-- index starts empty).
ALTER TABLE {schema}.outbox_commands ADD COLUMN IF NOT EXISTS order_key text;

CREATE INDEX IF NOT EXISTS outbox_commands_order_key_idx
    ON {schema}.outbox_commands (tenant_id, order_key, seq)
    WHERE order_key IS NOT NULL AND status IN ('PENDING', 'CLAIMED', 'SUBMITTED');

-- When keyed rows finish (COMMITTED or FAILED), the next row of each key may be for another identity,
-- whose worker would otherwise learn of it only at its next fallback poll: NOTIFY its type, as an
-- insert does. Called by the statements that finish rows, with the finished rows' tenant, key and seq.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_wake_next(schema_name text, tenants text[], keys text[],
                                                       seqs bigint[]) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT count(pg_notify('gxsubmit', schema_name || ':' || t.command_type))
      FROM (SELECT DISTINCT n.command_type
              FROM unnest(tenants, keys, seqs) AS k(tenant_id, order_key, seq)
             CROSS JOIN LATERAL (
                   SELECT p.command_type
                     FROM {schema}.outbox_commands AS p
                    WHERE p.tenant_id = k.tenant_id AND p.order_key = k.order_key AND p.seq > k.seq
                      AND p.order_key IS NOT NULL AND p.status IN ('PENDING', 'CLAIMED', 'SUBMITTED')
                    ORDER BY p.seq
                    LIMIT 1) AS n) AS t
$$;
