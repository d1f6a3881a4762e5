import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns'
import { BlockList, isIP, type LookupFunction } from 'node:net'

/**
 * Where the service may post a user's notifications. Webhook URLs and Web Push endpoints come from
 * users: without a policy, any user could make the service send requests into the operator's
 * network (a blind SSRF). The Expo API URL is the operator's own setting and is not checked.
 */
export interface AddressPolicy {
  /** plain http to 127.0.0.1 / [::1], and loopback addresses (tests, development) */
  allowLoopback: boolean
  /** private and shared ranges (a receiver on the operator's network); never link-local */
  allowPrivateNetworks: boolean
}

function blockList (v4: string[], v6: string[]): BlockList {
  const list = new BlockList()
  for (const cidr of v4) list.addSubnet(cidr.split('/')[0]!, Number(cidr.split('/')[1]), 'ipv4')
  for (const cidr of v6) list.addSubnet(cidr.split('/')[0]!, Number(cidr.split('/')[1]), 'ipv6')
  return list
}

const LOOPBACK = blockList(['127.0.0.0/8'], ['::1/128'])
const PRIVATE = blockList(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'], ['fc00::/7'])
/**
 * Refused whatever the switches. Link-local, where the clouds' instance metadata services answer
 * (169.254.169.254 for AWS, GCP, Azure…, AWS's fd00:ec2::254 inside fc00::/7, Alibaba's
 * 100.100.100.200 inside 100.64/10): a receiver on the operator's network is never there, and
 * their credentials must stay out of reach. Then "this network", documentation, benchmarking,
 * multicast and reserved addresses; Teredo (2001::/32), whose IPv4 server and client are no
 * receiver's address; local-use NAT64 (64:ff9b:1::/48), whose embedded IPv4 address sits where
 * the operator's prefix length puts it, which the service does not know; deprecated site-local.
 */
const NEVER = blockList(
  [
    '169.254.0.0/16', '100.100.100.200/32',
    '0.0.0.0/8', '192.0.0.0/24', '192.0.2.0/24', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/3'
  ],
  [
    'fe80::/10', 'fd00:ec2::254/128',
    '::/128', 'ff00::/8', '2001:db8::/32', '100::/64', '2001::/32', '64:ff9b:1::/48', 'fec0::/10'
  ]
)

/** An IPv6 address, in any spelling (no zone), as its eight 16-bit groups. */
function ipv6Groups (ip: string): number[] {
  let s = ip
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s)
  if (dotted) {
    const [a, b, c, d] = dotted.slice(2).map(Number) as [number, number, number, number]
    s = `${dotted[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, tail] = s.split('::') as [string, string | undefined]
  const h = head === '' ? [] : head.split(':')
  const t = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  return groups.map((g) => parseInt(g, 16))
}

const v4From = (hi: number, lo: number) => [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.')

/**
 * The IPv4 address an IPv6 one stands for, which the IPv4 policy then judges: IPv4-mapped
 * `::ffff:a.b.c.d` (URL parsing writes it `::ffff:7f00:1`), IPv4-translated `::ffff:0:a.b.c.d`,
 * IPv4-compatible `::a.b.c.d` (`::7f00:1`; `::` and `::1` apart), the well-known NAT64 prefix
 * `64:ff9b::/96`, and 6to4 `2002:aabb:ccdd::/48`. Null for any other address.
 */
function embeddedV4 (g: number[]): string | null {
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0)
  if (zeros(0, 5) && g[5] === 0xffff) return v4From(g[6]!, g[7]!)
  if (zeros(0, 4) && g[4] === 0xffff && g[5] === 0) return v4From(g[6]!, g[7]!)
  if (zeros(0, 6) && (g[6] !== 0 || g[7]! > 1)) return v4From(g[6]!, g[7]!)
  if (g[0] === 0x64 && g[1] === 0xff9b && zeros(2, 6)) return v4From(g[6]!, g[7]!)
  if (g[0] === 0x2002) return v4From(g[1]!, g[2]!)
  return null
}

/** Whether the policy lets the service connect to this IP address. */
function addressAllowed (ip: string, policy: AddressPolicy): boolean {
  // a zone (`fe80::1%eth0`) names the interface, not the address
  let address = ip.replace(/%.*$/, '')
  if (isIP(address) === 0) return false
  if (isIP(address) === 6) address = embeddedV4(ipv6Groups(address)) ?? address
  const family = isIP(address) === 4 ? 'ipv4' : 'ipv6'
  if (NEVER.check(address, family)) return false
  if (LOOPBACK.check(address, family)) return policy.allowLoopback
  if (PRIVATE.check(address, family)) return policy.allowPrivateNetworks
  return true
}

/** A URL's host as an address or a name: no IPv6 brackets, no root dot (`localhost.` is localhost). */
const bare = (hostname: string) => hostname.replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '')

/**
 * Why the service may not post to this URL (`must …`, to follow the field's name), or null when it
 * may: https (plain http only to the loopback address, when allowed), no credentials in the URL,
 * and no literal address the policy refuses. A host name is checked after DNS, on every request
 * (`guardedLookup`): what it resolves to may change after the registration.
 */
export function refuseUrl (raw: string, policy: AddressPolicy): string | null {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return 'must be an absolute URL'
  }
  if (url.username !== '' || url.password !== '') return 'must not carry a user name or password'
  const host = bare(url.hostname)
  if (url.protocol === 'http:') {
    if (policy.allowLoopback && (host === '127.0.0.1' || host === '::1')) return null
    return policy.allowLoopback ? 'must be an https URL (or http://127.0.0.1 or http://[::1])' : 'must be an https URL'
  }
  if (url.protocol !== 'https:') return 'must be an https URL'
  if (isIP(host) !== 0 && !addressAllowed(host, policy)) return 'must not lead to a loopback, private, link-local or reserved address'
  if (!policy.allowLoopback && (host === 'localhost' || host.endsWith('.localhost'))) return 'must not lead to localhost'
  return null
}

/** How `guardedLookup` resolves a name: node's `dns.lookup` with `all: true`, or a test's own. */
export type ResolveName = (
  hostname: string,
  options: LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void
) => void

/**
 * A DNS lookup for the sockets of push requests that hands out only the addresses the policy
 * allows: checked where the connection is made, so that a name re-pointed after its registration
 * (DNS rebinding) reaches no internal host either. Literal addresses skip lookups: `refuseUrl`
 * checks them before each request.
 */
export function guardedLookup (policy: AddressPolicy, resolve: ResolveName = dnsLookup): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) {
        callback(err, [])
        return
      }
      const allowed = addresses.filter((a) => addressAllowed(a.address, policy))
      if (allowed.length === 0) {
        const refused = Object.assign(new Error(`${hostname} resolves to no address that push may reach (loopback, private, link-local or reserved)`), { code: 'EPUSHADDRESS' })
        callback(refused, [])
        return
      }
      if (options.all === true) callback(null, allowed)
      else callback(null, allowed[0]!.address, allowed[0]!.family)
    })
  }
}
