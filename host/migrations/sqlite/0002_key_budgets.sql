ALTER TABLE api_keys ADD COLUMN budget_daily_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN budget_monthly_micros BIGINT;
