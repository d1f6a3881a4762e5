import { randomBytes, randomUUID } from 'node:crypto'
import { and, asc, count, eq, sql } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { devices, type DeviceRow } from '../db/schema.js'

/** A device as its user registers it; `address` is the Expo token, the Web Push endpoint or the webhook URL. */
export type DeviceRegistration = { address: string, name?: string | undefined } & (
  | { kind: 'expo' }
  | { kind: 'webpush', p256dh: string, auth: string }
  /** no secret: a new webhook gets a generated one, a known one keeps its own */
  | { kind: 'webhook', secret?: string | undefined }
)

export type RegisterResult =
  | { status: 'created' | 'existing', device: DeviceRow, /** a webhook's generated secret, given once */ generatedSecret?: string | undefined }
  | { status: 'limit' }

/** A webhook's generated HMAC key: 256 random bits. */
const newSecret = () => randomBytes(32).toString('base64url')

/**
 * The users' devices. Registration is idempotent (the same address again is the same device, its
 * keys and name refreshed), bounded per user, and serialised per user by a transaction-scoped
 * advisory lock so that concurrent registrations cannot pass the bound together.
 */
export function createDeviceRepository (db: Database) {
  return {
    async register (owner: string, reg: DeviceRegistration, o: { maxPerUser: number, now: Date }): Promise<RegisterResult> {
      return db.transaction(async (tx) => {
        await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${'mobvibe.devices:' + owner}, 0))`)
        const keys = {
          p256dh: reg.kind === 'webpush' ? reg.p256dh : null,
          auth: reg.kind === 'webpush' ? reg.auth : null
        }
        const [known] = await tx.select().from(devices)
          .where(and(eq(devices.owner, owner), eq(devices.kind, reg.kind), eq(devices.address, reg.address)))
        if (known) {
          const [device] = await tx.update(devices).set({
            ...keys,
            ...(reg.kind === 'webhook' && reg.secret !== undefined ? { secret: reg.secret } : {}),
            ...(reg.name === undefined ? {} : { name: reg.name }),
            updatedAt: o.now
          }).where(eq(devices.id, known.id)).returning()
          return { status: 'existing', device: device ?? known }
        }
        const [mine] = await tx.select({ n: count() }).from(devices).where(eq(devices.owner, owner))
        if ((mine?.n ?? 0) >= o.maxPerUser) return { status: 'limit' }
        const generatedSecret = reg.kind === 'webhook' && reg.secret === undefined ? newSecret() : undefined
        const row = {
          id: randomUUID(),
          owner,
          kind: reg.kind,
          address: reg.address,
          name: reg.name ?? null,
          ...keys,
          secret: reg.kind === 'webhook' ? reg.secret ?? generatedSecret! : null,
          createdAt: o.now,
          updatedAt: o.now
        }
        // A push token or endpoint registered by another user moves here, under a new id: the
        // phone or browser is now signed in as this user (devices_address_idx)
        const inserted = reg.kind === 'webhook'
          ? await tx.insert(devices).values(row).returning()
          : await tx.insert(devices).values(row).onConflictDoUpdate({
            target: [devices.kind, devices.address],
            targetWhere: sql`kind <> 'webhook'`,
            set: { id: row.id, owner, name: row.name, p256dh: row.p256dh, auth: row.auth, createdAt: o.now, updatedAt: o.now }
          }).returning()
        return { status: 'created', device: inserted[0]!, generatedSecret }
      })
    },

    /** The user's devices, oldest first. */
    async list (owner: string): Promise<DeviceRow[]> {
      return db.select().from(devices).where(eq(devices.owner, owner)).orderBy(asc(devices.createdAt), asc(devices.id))
    },

    /** false: the user has no such device (another user's is not theirs). */
    async remove (owner: string, id: string): Promise<boolean> {
      const gone = await db.delete(devices).where(and(eq(devices.owner, owner), eq(devices.id, id))).returning({ id: devices.id })
      return gone.length > 0
    },

    /** The provider said the device is gone for good. */
    async removeGone (id: string): Promise<void> {
      await db.delete(devices).where(eq(devices.id, id))
    }
  }
}

export type DeviceRepository = ReturnType<typeof createDeviceRepository>
