-- A gateway key's tokens per minute, prompt and completion together (NULL: no limit).
ALTER TABLE api_keys ADD COLUMN tpm_limit BIGINT;
