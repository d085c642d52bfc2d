-- Which OpenAI API a request came in on: chat or embeddings.
ALTER TABLE usage ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat';
