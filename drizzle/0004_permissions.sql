CREATE TABLE "session_permission_requests" (
	"session_id" uuid NOT NULL,
	"request_id" text NOT NULL,
	"kind" text NOT NULL,
	"tool_name" text NOT NULL,
	"request" jsonb NOT NULL,
	"seq" bigint,
	"status" text DEFAULT 'pending' NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"closed_at" timestamp with time zone,
	CONSTRAINT "session_permission_requests_pkey" PRIMARY KEY("session_id","request_id")
);
--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "permission_mode" text;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "permission_timeout_seconds" integer;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "pending_permissions" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "session_permission_requests_open_idx" ON "session_permission_requests" USING btree ("session_id") WHERE status = 'pending';