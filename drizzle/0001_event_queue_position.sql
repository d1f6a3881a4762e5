ALTER TABLE "session_event_seqs" ADD COLUMN "delivered_seq" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
-- the queue position moves to the event log's own table, with what each session had delivered
UPDATE "session_event_seqs" q SET "delivered_seq" = s."delivered_seq" FROM "sessions" s WHERE s."id" = q."session_id" AND s."delivered_seq" > 0;--> statement-breakpoint
ALTER TABLE "sessions" DROP COLUMN "delivered_seq";
