-- A gateway key's requests per minute (NULL: no limit).
ALTER TABLE api_keys ADD COLUMN rpm_limit BIGINT;
