// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * asyncapi.yaml is the contract of the WebSocket stream: it must be a valid AsyncAPI 3.0 document
 * for the real parser, its frames must be the TypeBox schemas the code uses (not a copy that
 * drifts), it must be what the service serves, and what a real stream sends and accepts must
 * match it.
 */
import { readFile } from 'node:fs/promises'
import { Parser } from '@asyncapi/parser'
import { Ajv } from 'ajv'
import addFormatsModule from 'ajv-formats'
import t from 'tap'
import { Compile } from 'typebox/compile'
import type { TSchema } from 'typebox'
import WebSocket from 'ws'
import YAML from 'yaml'
import { EVENT_TYPES } from '../src/domain/event-types.js'
import { STREAM_LIMITS } from '../src/events/stream-connection.js'
import { asyncApiDocument, STREAM_CLOSE_CODES } from '../src/schemas/asyncapi.js'
import {
  AckReplySchema,
  ErrorReplySchema,
  InterruptReplySchema,
  PermissionReplySchema,
  EVENT_FRAME_SCHEMAS,
  EventFrameSchema,
  HeartbeatReplySchema,
  InboundFrameSchema,
  StreamQuery
} from '../src/schemas/events.js'
import { HeartbeatSchema, SessionStateSchema } from '../src/schemas/session.js'
import { agentEnv } from './helpers/agents.js'
import { authHeader, createSession } from './helpers/api.js'
import { build } from './helpers/build.js'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv
const WAIT_MS = 15_000

const specUrl = new URL('../asyncapi.yaml', import.meta.url)
const committedText = await readFile(specUrl, 'utf8')
const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
interface MessageObject { name: string, payload: { $ref: string }, examples?: { payload: Json }[] }
interface AsyncApiDocument {
  asyncapi: string
  channels: Record<string, { address: string, description: string, parameters: Record<string, unknown>, messages: Record<string, { $ref: string }>, bindings: { ws: { query: Json } } }>
  operations: Record<string, { action: 'send' | 'receive', messages: { $ref: string }[], reply?: { messages: { $ref: string }[] } }>
  components: { schemas: Record<string, Json>, messages: Record<string, MessageObject> }
}
const committed = YAML.parse(committedText) as AsyncApiDocument

/** Schemas registered by $id that the frame schemas reference with `$ref: '<id>'`. */
const REGISTERED: Record<string, TSchema> = { SessionState: SessionStateSchema }

/** A TypeBox schema as plain JSON with every `$ref` to a registered schema inlined (without its `$id`). */
function inlined (schema: TSchema | Json): Json {
  const walk = (node: Json): Json => {
    if (Array.isArray(node)) return node.map(walk)
    if (node === null || typeof node !== 'object') return node
    const ref = node.$ref
    if (typeof ref === 'string' && REGISTERED[ref]) return walk(JSON.parse(JSON.stringify(REGISTERED[ref])) as Json)
    return Object.fromEntries(Object.entries(node).filter(([k]) => k !== '$id').map(([k, v]) => [k, walk(v)]))
  }
  return walk(JSON.parse(JSON.stringify(schema)) as Json)
}

/** A parsed (dereferenced) schema without the parser's own `x-parser-*` annotations. */
function withoutParserKeys (node: unknown): Json {
  if (Array.isArray(node)) return node.map(withoutParserKeys)
  if (node === null || typeof node !== 'object') return node as Json
  return Object.fromEntries(Object.entries(node).filter(([k]) => !k.startsWith('x-parser-')).map(([k, v]) => [k, withoutParserKeys(v)]))
}

const parser = new Parser()
const refName = (ref: { $ref: string }) => ref.$ref.split('/').pop() ?? ''

/** Validators of the committed document's own payload schemas, by message id. */
function payloadValidators (doc: AsyncApiDocument) {
  const ajv = addFormats(new Ajv({ strict: false, allErrors: true }))
  ajv.addSchema({ $id: 'asyncapi', components: { schemas: doc.components.schemas } })
  return Object.fromEntries(Object.entries(doc.components.messages).map(([id, m]) => {
    const validate = ajv.getSchema(`asyncapi${m.payload.$ref}`)
    if (!validate) throw new Error(`no schema for ${id}: ${m.payload.$ref}`)
    return [id, validate]
  }))
}

t.test('the committed asyncapi.yaml', async (t) => {
  t.test('is a valid AsyncAPI 3.0 document for @asyncapi/parser', async (t) => {
    t.match(committed.asyncapi, /^3\.0\.\d+$/, 'declares AsyncAPI 3.0')
    const diagnostics = await parser.validate(committedText)
    const errors = diagnostics.filter((d) => d.severity === 0)
    t.same(errors.map((d) => `${d.code}: ${d.message} at ${d.path.join('.')}`), [], 'no error diagnostics')
    // the validator is no rubber stamp: the same document with a defect is refused
    const broken = structuredClone(committed)
    const op = broken.operations.receiveMessage
    t.ok(op, 'the receiveMessage operation exists')
    if (op) op.messages = [{ $ref: '#/channels/stream/messages/noSuchMessage' }]
    const brokenErrors = (await parser.validate(JSON.stringify(broken))).filter((d) => d.severity === 0)
    t.ok(brokenErrors.length > 0, 'a reference to a missing message is an error')
  })

  t.test('is what the frame schemas produce (npm run asyncapi)', async (t) => {
    t.strictSame(committed, JSON.parse(JSON.stringify(asyncApiDocument(pkg.version))), 'run `npm run asyncapi` if not')
  })

  t.test('its frames are the TypeBox schemas the code uses', async (t) => {
    const { document, diagnostics } = await parser.parse(committedText)
    t.ok(document, 'parsed', { diagnostics: diagnostics.filter((d) => d.severity === 0) })
    if (!document) return
    const payload = (id: string) => withoutParserKeys(document.messages().get(id)?.payload()?.json())

    // client frames: exactly the variants of InboundFrameSchema, which the stream validates with
    const variants = InboundFrameSchema.anyOf as TSchema[]
    const clientIds = Object.values(committed.operations).filter((o) => o.action === 'receive').flatMap((o) => o.messages.map(refName))
    t.same(clientIds.sort(), ['heartbeatFrame', 'interruptFrame', 'messageFrame', 'permissionFrame'], 'the service receives the four client frames')
    t.strictSame(payload('messageFrame'), inlined(variants[0]!), 'the message frame is InboundFrameSchema.anyOf[0]')
    t.strictSame(payload('heartbeatFrame'), inlined(variants[1]!), 'the heartbeat frame is InboundFrameSchema.anyOf[1]')
    t.strictSame(payload('permissionFrame'), inlined(variants[2]!), 'the permission frame is InboundFrameSchema.anyOf[2]')
    t.strictSame(payload('interruptFrame'), inlined(variants[3]!), 'the interrupt frame is InboundFrameSchema.anyOf[3]')
    t.equal(variants.length, 4, 'InboundFrameSchema has no other variant')

    // replies
    t.strictSame(payload('ackReply'), inlined(AckReplySchema), 'ack')
    t.strictSame(payload('heartbeatReply'), inlined(HeartbeatReplySchema), 'heartbeat reply')
    t.strictSame(payload('errorReply'), inlined(ErrorReplySchema), 'error reply')
    t.strictSame(payload('permissionReply'), inlined(PermissionReplySchema), 'permission reply')
    t.strictSame(payload('interruptReply'), inlined(InterruptReplySchema), 'interrupt reply')
    const heartbeatReply = payload('heartbeatReply') as { properties: Record<string, Json> }
    const { type: _type, ...heartbeatBody } = heartbeatReply.properties
    t.strictSame(heartbeatBody, (inlined(HeartbeatSchema) as { properties: Record<string, Json> }).properties, 'the heartbeat reply is the body of POST /heartbeat')

    // events: one message per event type, each EventFrameSchema with its type fixed
    const sent = Object.values(committed.operations).filter((o) => o.action === 'send').flatMap((o) => o.messages.map(refName))
    t.same(sent, EVENT_TYPES.map((type) => `${type}Event`), 'the service sends one message per event type')
    const generic = inlined(EventFrameSchema) as { required: string[], properties: Record<string, Json & { enum?: string[] }> }
    for (const type of EVENT_TYPES) {
      const frame = payload(`${type}Event`) as { required: string[], properties: Record<string, Json> }
      t.strictSame(frame, inlined(EVENT_FRAME_SCHEMAS[type]), `${type} event is EVENT_FRAME_SCHEMAS.${type}`)
      t.same(frame.required, generic.required, `${type} event requires what EventFrameSchema requires`)
      t.strictSame(frame.properties.seq, generic.properties.seq, `${type} event seq is EventFrameSchema's`)
      t.strictSame(frame.properties.at, generic.properties.at, `${type} event at is EventFrameSchema's`)
      t.ok(generic.properties.type?.enum?.includes(type), `${type} is one of EventFrameSchema's types`)
    }

    // the channel: the id parameter and the ?after= query the route validates with
    const channel = committed.channels.stream
    t.equal(channel?.address, '/sessions/{id}/stream')
    t.ok(channel?.parameters.id, 'the id parameter')
    t.strictSame(channel?.bindings.ws.query, inlined(StreamQuery), 'the ws query binding is StreamQuery')
  })

  t.test('the close codes are the ones the stream uses, and described', async (t) => {
    t.equal(STREAM_CLOSE_CODES.goingAway, STREAM_LIMITS.goingAwayCloseCode)
    t.equal(STREAM_CLOSE_CODES.slowConsumer, STREAM_LIMITS.slowConsumerCloseCode)
    const description = committed.channels.stream?.description ?? ''
    for (const code of [1001, 4008, 1011]) t.match(description, new RegExp(`\\| ${code} \\|`), `close code ${code} is described`)
  })

  t.test('every message has an example that its payload schema accepts', async (t) => {
    const validators = payloadValidators(committed)
    const checkInbound = Compile(InboundFrameSchema)
    for (const [id, message] of Object.entries(committed.components.messages)) {
      const examples = message.examples ?? []
      t.ok(examples.length > 0, `${id} has an example`)
      for (const example of examples) {
        t.ok(validators[id]!(example.payload), `${id} example matches its payload`, { errors: validators[id]!.errors })
        if (id.endsWith('Frame')) t.ok(checkInbound.Check(example.payload), `${id} example is accepted by the stream's own check`)
      }
    }
  })
})

t.test('against a real server', async (t) => {
  const { app, baseUrl } = await build(t, { listen: true, env: agentEnv() })

  t.test('the document served at /asyncapi.json is the committed asyncapi.yaml', async (t) => {
    const res = await fetch(`${baseUrl}/asyncapi.json`)
    t.equal(res.status, 200)
    t.strictSame(await res.json(), committed)
    const openapi = await (await fetch(`${baseUrl}/openapi.json`)).json() as { paths: Record<string, unknown>, info: { description: string } }
    t.notOk(Object.keys(openapi.paths).includes('/asyncapi.json'), '/asyncapi.json is not an API operation')
    t.match(openapi.info.description, /asyncapi\.yaml/, 'openapi.yaml points to asyncapi.yaml')
  })

  t.test('what a stream sends matches the document', async (t) => {
    const validators = payloadValidators(committed)
    const serverIds = Object.values(committed.operations).flatMap((o) => o.action === 'send' ? o.messages.map(refName) : (o.reply?.messages ?? []).map(refName))
    /** the server messages of the document that a frame matches */
    const matches = (frame: unknown) => [...new Set(serverIds)].filter((id) => validators[id]!(frame))

    const session = await createSession(app, { title: 'asyncapi' })
    const ws = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/v1/sessions/${session.id}/stream?after=0`, { headers: authHeader(app) })
    const frames: unknown[] = []
    let notify = () => {}
    ws.on('message', (data) => { frames.push(JSON.parse(String(data))); notify() })
    t.teardown(() => ws.terminate())
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    const waitFor = async (what: string, found: (f: Record<string, any>) => boolean) => {
      const deadline = Date.now() + WAIT_MS
      while (!frames.some((f) => found(f as Record<string, any>))) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(frames)}`)
        await new Promise<void>((resolve) => { notify = resolve; setTimeout(resolve, 50) })
      }
    }

    ws.send(JSON.stringify({ type: 'message', text: 'hello', clientMessageId: 'asyncapi-1' }))
    ws.send(JSON.stringify({ type: 'heartbeat' }))
    ws.send(JSON.stringify({ type: 'nonsense' }))
    await waitFor('the ack', (f) => f.type === 'ack')
    await waitFor('the heartbeat reply', (f) => f.type === 'heartbeat')
    await waitFor('the error reply', (f) => f.type === 'error' && f.seq === undefined)
    await waitFor('the end of the turn', (f) => f.type === 'agent' && f.data?.type === 'result')

    const seen = new Set<string>()
    for (const frame of frames) {
      const ids = matches(frame)
      t.equal(ids.length, 1, `${JSON.stringify(frame).slice(0, 120)} is exactly one of the document's server messages (${ids.join(', ')})`)
      for (const id of ids) seen.add(id)
    }
    for (const id of ['userEvent', 'stateEvent', 'agentEvent', 'ackReply', 'heartbeatReply', 'errorReply']) t.ok(seen.has(id), `seen: ${id}`)
  })
})
