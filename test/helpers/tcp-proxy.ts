import net from 'node:net'

/**
 * A TCP proxy on 127.0.0.1 (random port) in front of a server, for tests where the network to the
 * database fails: `cut()` destroys every connection through it and stops listening, so new ones
 * are refused (ECONNREFUSED, as from a database that is down); `restore()` listens again on the
 * same port. Nothing is buffered or delayed while it is up: bytes go straight through.
 */
export interface TcpProxy {
  readonly port: number
  /** connections through the proxy right now */
  readonly open: number
  /** connections the proxy has forwarded since it started */
  readonly accepted: number
  /** connections it destroyed when cut */
  readonly destroyed: number
  readonly isCut: boolean
  /** `url` with its host and port replaced by the proxy's (the path, user and options kept) */
  via (url: string): string
  cut (): void
  restore (): Promise<void>
  close (): Promise<void>
}

export async function startTcpProxy (target: { host: string, port: number }): Promise<TcpProxy> {
  const pairs = new Set<{ client: net.Socket, upstream: net.Socket }>()
  let accepted = 0
  let destroyed = 0
  let server: net.Server | undefined
  let port = 0
  let closed = false

  function onConnection (client: net.Socket): void {
    accepted++
    client.setNoDelay(true)
    const upstream = net.connect({ host: target.host, port: target.port, noDelay: true })
    const pair = { client, upstream }
    pairs.add(pair)
    const end = () => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end)
    upstream.on('error', end)
    client.on('close', end)
    upstream.on('close', end)
    client.pipe(upstream)
    upstream.pipe(client)
  }

  async function listen (at: number): Promise<void> {
    // the port was ours a moment ago; another process taking it meanwhile is unlikely, but retry
    for (let attempt = 0; ; attempt++) {
      const s = net.createServer(onConnection)
      try {
        await new Promise<void>((resolve, reject) => {
          s.once('error', reject)
          s.listen({ host: '127.0.0.1', port: at, exclusive: true }, () => { s.off('error', reject); resolve() })
        })
        server = s
        port = (s.address() as net.AddressInfo).port
        return
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  }

  function stopListening (): Promise<void> {
    const s = server
    server = undefined
    if (!s) return Promise.resolve()
    return new Promise((resolve) => s.close(() => resolve()))
  }

  function destroyAll (): void {
    for (const pair of pairs) {
      destroyed++
      pair.upstream.destroy()
      pair.client.destroy()
    }
    pairs.clear()
  }

  await listen(0)
  return {
    get port () { return port },
    get open () { return pairs.size },
    get accepted () { return accepted },
    get destroyed () { return destroyed },
    get isCut () { return server === undefined },
    via (url: string): string {
      const u = new URL(url)
      u.hostname = '127.0.0.1'
      u.port = String(port)
      return u.toString()
    },
    cut (): void {
      // synchronous: from the moment this returns, nothing reaches the target
      stopListening().catch(() => {})
      destroyAll()
    },
    async restore (): Promise<void> {
      if (closed || server) return
      await listen(port)
    },
    async close (): Promise<void> {
      closed = true
      const stopped = stopListening()
      destroyAll()
      await stopped
    }
  }
}
