CREATE TABLE "session_event_seqs" (
	"session_id" uuid PRIMARY KEY NOT NULL,
	"last_seq" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "session_events" (
	"session_id" uuid NOT NULL,
	"seq" bigint NOT NULL,
	"type" text NOT NULL,
	"payload" json NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"client_message_id" text,
	CONSTRAINT "session_events_pkey" PRIMARY KEY("session_id","seq")
);
--> statement-breakpoint
CREATE TABLE "session_snapshots" (
	"id" uuid PRIMARY KEY NOT NULL,
	"session_id" uuid NOT NULL,
	"version" integer NOT NULL,
	"data" jsonb NOT NULL,
	"created_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "session_transitions" (
	"session_id" uuid NOT NULL,
	"from_state" text,
	"to_state" text NOT NULL,
	"reason" text,
	"actor" text NOT NULL,
	"version" integer NOT NULL,
	"at" timestamp with time zone NOT NULL,
	CONSTRAINT "session_transitions_pkey" PRIMARY KEY("session_id","version")
);
--> statement-breakpoint
CREATE TABLE "sessions" (
	"id" uuid PRIMARY KEY NOT NULL,
	"owner" text,
	"state" text NOT NULL,
	"previous_state" text,
	"version" integer DEFAULT 1 NOT NULL,
	"title" text,
	"workdir" text NOT NULL,
	"model" text,
	"agent_session_id" uuid,
	"idle_timeout_seconds" integer NOT NULL,
	"ttl_seconds" integer NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"idle_deadline_at" timestamp with time zone,
	"last_activity_at" timestamp with time zone,
	"last_heartbeat_at" timestamp with time zone,
	"busy" boolean DEFAULT false NOT NULL,
	"active_ms" bigint DEFAULT 0 NOT NULL,
	"active_since" timestamp with time zone,
	"input_tokens" bigint DEFAULT 0 NOT NULL,
	"output_tokens" bigint DEFAULT 0 NOT NULL,
	"cache_read_tokens" bigint DEFAULT 0 NOT NULL,
	"cache_creation_tokens" bigint DEFAULT 0 NOT NULL,
	"cost_usd" double precision DEFAULT 0 NOT NULL,
	"conversation_cost_usd" double precision DEFAULT 0 NOT NULL,
	"turns" integer DEFAULT 0 NOT NULL,
	"transition_count" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"delivered_seq" bigint DEFAULT 0 NOT NULL,
	"state_changed_at" timestamp with time zone NOT NULL,
	"started_at" timestamp with time zone,
	"ended_at" timestamp with time zone,
	"created_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL,
	"deleted_at" timestamp with time zone,
	CONSTRAINT "sessions_state_check" CHECK (state in ('pending', 'active', 'suspended', 'paused', 'completed', 'failed', 'expired')),
	CONSTRAINT "sessions_version_check" CHECK (version > 0)
);
--> statement-breakpoint
ALTER TABLE "session_snapshots" ADD CONSTRAINT "session_snapshots_session_id_sessions_id_fk" FOREIGN KEY ("session_id") REFERENCES "public"."sessions"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "session_events_client_message_idx" ON "session_events" USING btree ("session_id","client_message_id") WHERE client_message_id is not null;--> statement-breakpoint
CREATE INDEX "session_snapshots_session_idx" ON "session_snapshots" USING btree ("session_id","created_at" DESC NULLS FIRST,"id" DESC NULLS FIRST);--> statement-breakpoint
CREATE INDEX "sessions_expiry_idx" ON "sessions" USING btree ("expires_at") WHERE state in ('pending', 'active', 'suspended', 'paused');--> statement-breakpoint
CREATE INDEX "sessions_idle_idx" ON "sessions" USING btree ("idle_deadline_at") WHERE state = 'active';--> statement-breakpoint
CREATE INDEX "sessions_list_idx" ON "sessions" USING btree ("created_at" DESC NULLS FIRST,"id" DESC NULLS FIRST) WHERE deleted_at is null;--> statement-breakpoint
CREATE INDEX "sessions_live_list_idx" ON "sessions" USING btree ("state","created_at" DESC NULLS FIRST,"id" DESC NULLS FIRST) WHERE deleted_at is null and state in ('pending', 'active', 'suspended', 'paused');--> statement-breakpoint
-- room on each page for the new version of an updated row (heartbeats, transitions, sweeps)
ALTER TABLE "sessions" SET (fillfactor = 80);
