CREATE TABLE "service_instances" (
	"id" uuid PRIMARY KEY NOT NULL,
	"host" text NOT NULL,
	"pid" integer NOT NULL,
	"data_dir" text NOT NULL,
	"lease_seconds" integer NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL,
	"stopped_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "worker_id" uuid;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "worker_epoch" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "agent_worker" uuid;--> statement-breakpoint
CREATE INDEX "sessions_worker_idx" ON "sessions" USING btree ("worker_id") WHERE worker_id is not null;--> statement-breakpoint
CREATE INDEX "sessions_agent_worker_idx" ON "sessions" USING btree ("agent_worker") WHERE agent_worker is not null;