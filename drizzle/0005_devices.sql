CREATE TABLE "devices" (
	"id" uuid PRIMARY KEY NOT NULL,
	"owner" text NOT NULL,
	"kind" text NOT NULL,
	"address" text NOT NULL,
	"name" text,
	"p256dh" text,
	"auth" text,
	"secret" text,
	"created_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL,
	CONSTRAINT "devices_kind_check" CHECK (kind in ('expo', 'webpush', 'webhook')),
	CONSTRAINT "devices_keys_check" CHECK ((kind = 'webpush') = (p256dh is not null and auth is not null) and (kind = 'webhook') = (secret is not null))
);
--> statement-breakpoint
CREATE INDEX "devices_owner_idx" ON "devices" USING btree ("owner","created_at","id");--> statement-breakpoint
CREATE UNIQUE INDEX "devices_address_idx" ON "devices" USING btree ("kind","address") WHERE kind <> 'webhook';--> statement-breakpoint
CREATE UNIQUE INDEX "devices_webhook_idx" ON "devices" USING btree ("owner","address") WHERE kind = 'webhook';