CREATE TABLE "session_usage_daily" (
	"session_id" uuid NOT NULL,
	"owner" text,
	"day" date NOT NULL,
	"input_tokens" bigint DEFAULT 0 NOT NULL,
	"output_tokens" bigint DEFAULT 0 NOT NULL,
	"cache_read_tokens" bigint DEFAULT 0 NOT NULL,
	"cache_creation_tokens" bigint DEFAULT 0 NOT NULL,
	"cost_usd" double precision DEFAULT 0 NOT NULL,
	"turns" integer DEFAULT 0 NOT NULL,
	CONSTRAINT "session_usage_daily_pkey" PRIMARY KEY("session_id","day")
);
--> statement-breakpoint
CREATE INDEX "session_usage_daily_owner_idx" ON "session_usage_daily" USING btree ("owner","day");--> statement-breakpoint
-- Backfill: sessions that spent something before this table existed have only their totals, with no
-- time dimension. Each one's whole usage goes to the UTC day of its last activity (its creation
-- when it never had any), so GET /v1/usage still counts it, once.
INSERT INTO "session_usage_daily" ("session_id", "owner", "day", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd", "turns")
SELECT "id", "owner", (coalesce("last_activity_at", "created_at") AT TIME ZONE 'UTC')::date,
  "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd", "turns"
FROM "sessions"
WHERE "turns" > 0 OR "input_tokens" > 0 OR "output_tokens" > 0 OR "cache_read_tokens" > 0
  OR "cache_creation_tokens" > 0 OR "cost_usd" > 0;
