-- 0003: NOTIFY payloads name the schema as well as the command type: '<schema>:<command_type>'.
-- {schema} is replaced by the quoted target schema (psycopg.sql.Identifier). Never put literal braces here.
--
-- The channel stays 'gxsubmit' (the contract). With the type alone, an insert woke every worker of every
-- schema on the database server, and each ran an empty claim; now a worker wakes only for its own schema
-- and its own command types. Rollout: workers of the previous release ignore payloads (any NOTIFY wakes
-- them), and a new worker treats a payload without ':' (this trigger before the migration) as a wake-up.
CREATE OR REPLACE FUNCTION {schema}.gxsubmit_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gxsubmit', TG_TABLE_SCHEMA || ':' || t.command_type)
       FROM (SELECT DISTINCT n.command_type FROM gxsubmit_new_rows AS n) AS t;
    RETURN NULL;
END
$$;
