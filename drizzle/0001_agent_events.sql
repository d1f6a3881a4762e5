ALTER TABLE "session_events" ADD COLUMN "client_message_id" text;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "last_event_seq" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "delivered_seq" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "session_events_client_message_idx" ON "session_events" USING btree ("session_id","client_message_id") WHERE client_message_id is not null;