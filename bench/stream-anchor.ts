// What the agent and stream figures are compared with, in the same run: a plain `ws` server fanning
// out the same frames as fast as its clients drain; the same paced agent's stdout relayed by a plain
// `ws` server (no database); a raw child_process.spawn of the same fake agent.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'
import { frameText } from '../src/events/event-log.js'
import { agentLine } from './agent-lines.mjs'

/** Above this many unsent bytes for any client the raw fan-out waits for it to drain. */
const FANOUT_HIGH_WATER = 1024 * 1024

const socketOf = (ws: WebSocket) => (ws as unknown as { _socket: Duplex & { writableNeedDrain: boolean } })._socket
const tick = () => new Promise<void>((resolve) => setImmediate(resolve))

async function wsServer (): Promise<{ wss: WebSocketServer, url: string, close: () => Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await once(wss, 'listening')
  const { port } = wss.address() as AddressInfo
  return {
    wss,
    url: `ws://127.0.0.1:${port}/`,
    close: async () => {
      for (const ws of wss.clients) ws.terminate()
      await new Promise<void>((resolve) => wss.close(() => resolve()))
    }
  }
}

/**
 * A plain `ws` WebSocketServer sending the service's frames (`{"seq":…,"type":"agent","at":…,
 * "data":<agent line>}`, built once per line and shared by every client, as the service's hub
 * does) to all its clients as fast as they drain.
 */
export async function rawFanout () {
  const server = await wsServer()
  return {
    url: server.url,
    close: server.close,
    /** sends `lines` frames of `bytes`-byte agent lines to every connected client */
    async send (lines: number, bytes: number, sessionId: string): Promise<void> {
      const clients = [...server.wss.clients]
      for (let i = 0; i < lines; i++) {
        const json = agentLine(sessionId, i, process.hrtime.bigint(), bytes)
        const frame = Buffer.from(frameText({ seq: i + 1, type: 'agent', at: new Date(), json }))
        for (const ws of clients) ws.send(frame, { binary: false })
        if (i % 8 === 7) {
          for (const ws of clients) {
            while (ws.readyState === ws.OPEN && ws.bufferedAmount > FANOUT_HIGH_WATER) {
              const socket = socketOf(ws)
              if (socket.writableNeedDrain) await once(socket, 'drain')
              else await tick()
            }
          }
        }
        if (i % 256 === 255) await tick()
      }
    }
  }
}

export interface AgentCommand {
  bin: string
  args: string[]
  env: Record<string, string>
  cwd: string
}

/** Runs one turn of the agent: its stdout lines go to `onLine`; resolves when the process is gone. */
function runAgent (cmd: AgentCommand, message: string, onLine: (line: string) => void, timeoutMs: number) {
  const t0 = performance.now()
  const child = spawn(cmd.bin, cmd.args, { cwd: cmd.cwd, env: cmd.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true })
  child.stdin.on('error', () => {})
  child.stdin.write(JSON.stringify({ type: 'user', message: { role: 'user', content: message }, parent_tool_use_id: null, session_id: '' }) + '\n')
  let firstByteMs = NaN
  let rest = ''
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000) })
  child.stdout.on('data', (chunk: Buffer) => {
    if (Number.isNaN(firstByteMs)) firstByteMs = performance.now() - t0
    const parts = (rest + chunk.toString('utf8')).split('\n')
    rest = parts.pop()!
    for (const line of parts) {
      if (line === '') continue
      onLine(line)
      if (line.startsWith('{"type":"result"')) child.stdin.end()
    }
  })
  const timer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL') } catch {} }, timeoutMs)
  const exited = new Promise<{ code: number | null, firstByteMs: number, stderr: string }>((resolve, reject) => {
    child.once('error', (err) => { clearTimeout(timer); reject(err) })
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, firstByteMs, stderr })
    })
  })
  return exited
}

/**
 * A raw spawn of the agent, as the service spawns it (same binary, arguments, environment,
 * working directory, own process group): spawn → first stdout byte, with the message written at
 * once. The turn then runs to its result and the process exits (stdin closed).
 */
export async function rawSpawn (cmd: AgentCommand, message: string, timeoutMs = 30_000): Promise<number> {
  let result = ''
  const r = await runAgent(cmd, message, (line) => { if (line.startsWith('{"type":"result"')) result = line }, timeoutMs)
  if (!result.includes('"is_error":false')) throw new Error(`raw spawn: no successful result (exit ${r.code}): ${result || r.stderr}`)
  return r.firstByteMs
}

/**
 * The latency anchor: the same agent's stdout lines wrapped in the service's frame and sent at once
 * by a plain `ws` server to its clients (no parsing beyond the line split, no database).
 */
export async function rawRelay () {
  const server = await wsServer()
  return {
    url: server.url,
    close: server.close,
    async run (cmd: AgentCommand, message: string, timeoutMs: number): Promise<void> {
      let seq = 0
      const r = await runAgent(cmd, message, (line) => {
        const frame = Buffer.from(frameText({ seq: ++seq, type: 'agent', at: new Date(), json: line }))
        for (const ws of server.wss.clients) ws.send(frame, { binary: false })
      }, timeoutMs)
      if (r.code !== 0) throw new Error(`relayed agent exited ${r.code}: ${r.stderr}`)
    }
  }
}
