-- The client's own id for a request (X-Client-Request-Id), when it sent one. Only rows that
-- carry one are indexed, so rows without one cost the writer nothing more.
ALTER TABLE usage ADD COLUMN client_request_id TEXT;
CREATE INDEX IF NOT EXISTS usage_client_request ON usage (client_request_id)
    WHERE client_request_id IS NOT NULL;
