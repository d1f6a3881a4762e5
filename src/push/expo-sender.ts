import { Expo, type ExpoPushMessage, type ExpoPushTicket } from 'expo-server-sdk'
import { Agent, type Dispatcher } from 'undici'
import type { DeviceRow } from '../db/schema.js'
import { isUrgent } from '../domain/push-policy.js'
import { headline, openData, outcomeOfError, type Notification, type Sender, type SendOutcome } from './delivery.js'

/** Expo ticket errors that another attempt may pass; the others (DeveloperError, MessageTooBig, InvalidCredentials…) would fail again. */
const RETRYABLE_TICKET_ERRORS = new Set(['MessageRateExceeded', 'ExpoError', 'ProviderError'])

/**
 * A dispatcher that sends the SDK's requests to `apiUrl`. The SDK fixes its URL when it is first
 * imported, from `process.env.EXPO_BASE_URL` (meant for Expo's own tests); it takes a dispatcher,
 * though, and every request it makes goes through this one, whose origin and path prefix are
 * `EXPO_API_URL`'s.
 */
function routedTo (apiUrl: string, agent: Agent): Dispatcher {
  const base = new URL(apiUrl)
  const prefix = base.pathname.replace(/\/+$/, '')
  return agent.compose((dispatch) => (opts, handler) => dispatch({ ...opts, origin: base.origin, path: prefix + opts.path }, handler))
}

/** A ticket (the push service's immediate answer for one message) as an outcome. */
function outcomeOfTicket (ticket: ExpoPushTicket | undefined): SendOutcome {
  if (ticket === undefined) return { status: 'retry', reason: 'Expo answered without a ticket' }
  if (ticket.status === 'ok') return { status: 'delivered' }
  const error = ticket.details?.error
  if (error === 'DeviceNotRegistered') return { status: 'gone', reason: error }
  // the code, not the message: Expo's messages quote the push token, which stays out of the logs
  const reason = error ?? 'Expo ticket error'
  return error !== undefined && RETRYABLE_TICKET_ERRORS.has(error) ? { status: 'retry', reason } : { status: 'failed', reason }
}

/** A failed request: 429 and 5xx pass, other statuses (a 400 of a malformed request) do not. */
function outcomeOfRequestError (err: unknown): SendOutcome {
  const status = (err as { statusCode?: unknown }).statusCode
  if (typeof status !== 'number') return outcomeOfError(err)
  // the status and Expo's error code only: its messages may quote the push token
  const code = (err as { code?: unknown }).code
  const reason = `Expo HTTP ${status}${typeof code === 'string' ? ` ${code}` : ''}`
  return status === 429 || status >= 500 ? { status: 'retry', reason } : { status: 'failed', reason }
}

/**
 * Expo push notifications through expo-server-sdk, one message per device so that each device's
 * ticket decides its own fate: `DeviceNotRegistered` removes the device. Receipts (Expo's later
 * word on the delivery to Apple or Google) are not polled.
 */
export function createExpoSender (o: { apiUrl: string, accessToken: string | undefined, timeoutMs: number, retryBaseMs: number }): Sender {
  const agent = new Agent({ connect: { timeout: o.timeoutMs }, headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs })
  const expo = new Expo({
    httpAgent: routedTo(o.apiUrl, agent),
    // the SDK retries a 429 twice by itself, from this delay on; the notifier's backoff comes after
    retryMinTimeout: o.retryBaseMs,
    ...(o.accessToken === undefined ? {} : { accessToken: o.accessToken })
  })
  return {
    async send (device: DeviceRow, n: Notification): Promise<SendOutcome> {
      const message: ExpoPushMessage = {
        to: device.address,
        ...headline(n),
        data: openData(n),
        sound: 'default',
        priority: isUrgent(n.kind) ? 'high' : 'default'
      }
      try {
        const [ticket] = await expo.sendPushNotificationsAsync([message])
        return outcomeOfTicket(ticket)
      } catch (err) {
        return outcomeOfRequestError(err)
      }
    },
    // the SDK takes no abort signal: ending the connections ends its requests
    async close () { await agent.destroy() }
  }
}
