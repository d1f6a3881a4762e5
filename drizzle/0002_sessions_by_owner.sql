DROP INDEX "sessions_list_idx";--> statement-breakpoint
DROP INDEX "sessions_live_list_idx";--> statement-breakpoint
CREATE INDEX "sessions_owner_list_idx" ON "sessions" USING btree ("owner","created_at" DESC NULLS FIRST,"id" DESC NULLS FIRST) WHERE deleted_at is null;--> statement-breakpoint
CREATE INDEX "sessions_owner_live_list_idx" ON "sessions" USING btree ("owner","state","created_at" DESC NULLS FIRST,"id" DESC NULLS FIRST) WHERE deleted_at is null and state in ('pending', 'active', 'suspended', 'paused');