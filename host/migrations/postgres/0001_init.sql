CREATE TABLE IF NOT EXISTS usage (
    id                BIGSERIAL PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    attempt           BIGINT  NOT NULL,
    created_at_ms     BIGINT  NOT NULL,
    key_id            TEXT    NOT NULL,
    requested_model   TEXT    NOT NULL,
    group_name        TEXT,
    channel_id        TEXT,
    provider          TEXT,
    upstream_model    TEXT,
    is_stream         BIGINT  NOT NULL,
    prompt_tokens     BIGINT  NOT NULL,
    completion_tokens BIGINT  NOT NULL,
    cached_tokens     BIGINT  NOT NULL,
    reasoning_tokens  BIGINT  NOT NULL,
    cost_micros       BIGINT  NOT NULL,
    latency_ms        BIGINT  NOT NULL,
    ttft_ms           BIGINT,
    status            BIGINT  NOT NULL,
    outcome           TEXT    NOT NULL,
    error_class       TEXT,
    error_message     TEXT
);
CREATE INDEX IF NOT EXISTS usage_created ON usage (created_at_ms);
CREATE INDEX IF NOT EXISTS usage_request ON usage (request_id);
CREATE INDEX IF NOT EXISTS usage_channel_created ON usage (channel_id, created_at_ms);

CREATE TABLE IF NOT EXISTS api_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    allowed_models TEXT,
    created_at_ms  BIGINT NOT NULL,
    disabled       BIGINT  NOT NULL DEFAULT 0
);
