-- Statements that find out how a connection reaches the server (gxsubmit/dbroute.py). Each starts with a
-- "-- name: <name>" line; none takes the schema.

-- name: client_endpoint
-- The address and port the server sees for this connection: ours when direct, the pooler's otherwise.
SELECT inet_client_addr()::text, inet_client_port()

-- name: backend_pid
SELECT pg_backend_pid()

-- name: first_of_two
SELECT 1

-- name: second_of_two
SELECT 2
