import { lookup as dnsLookup, type LookupAddress } from 'node:dns'
import { BlockList, isIP, type LookupFunction } from 'node:net'

/**
 * Where the service may post a user's notifications. Webhook URLs and Web Push endpoints come from
 * users: without a policy, any user could make the service send requests into the operator's
 * network (a blind SSRF). The Expo API URL is the operator's own setting and is not checked.
 */
export interface AddressPolicy {
  /** plain http to 127.0.0.1 / [::1], and loopback addresses (tests, development) */
  allowLoopback: boolean
  /** private, shared and link-local ranges (a receiver on the operator's network) */
  allowPrivateNetworks: boolean
}

function blockList (v4: string[], v6: string[]): BlockList {
  const list = new BlockList()
  for (const cidr of v4) list.addSubnet(cidr.split('/')[0]!, Number(cidr.split('/')[1]), 'ipv4')
  for (const cidr of v6) list.addSubnet(cidr.split('/')[0]!, Number(cidr.split('/')[1]), 'ipv6')
  return list
}

const LOOPBACK = blockList(['127.0.0.0/8'], ['::1/128'])
const PRIVATE = blockList(
  ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '169.254.0.0/16'],
  ['fc00::/7', 'fe80::/10']
)
/** never a push receiver: "this network", documentation, benchmarking, multicast, reserved */
const NEVER = blockList(
  ['0.0.0.0/8', '192.0.0.0/24', '192.0.2.0/24', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/3'],
  ['::/128', 'ff00::/8', '2001:db8::/32', '100::/64']
)

/** `::ffff:a.b.c.d` (or its hex spelling `::ffff:7f00:1`, as URL parsing writes it) as IPv4. */
function mappedV4 (ip: string): string | null {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)
  if (dotted) return dotted[1]!
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(ip)
  if (!hex) return null
  const hi = parseInt(hex[1]!, 16)
  const lo = parseInt(hex[2]!, 16)
  return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.')
}

/** Whether the policy lets the service connect to this IP address. */
function addressAllowed (ip: string, policy: AddressPolicy): boolean {
  const v4 = isIP(ip) === 6 ? mappedV4(ip) : null
  const address = v4 ?? ip
  const family = isIP(address) === 4 ? 'ipv4' : 'ipv6'
  if (isIP(address) === 0 || NEVER.check(address, family)) return false
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

/**
 * A DNS lookup for the sockets of push requests that hands out only the addresses the policy
 * allows: checked where the connection is made, so that a name re-pointed after its registration
 * (DNS rebinding) reaches no internal host either. Literal addresses skip lookups: `refuseUrl`
 * checks them before each request.
 */
export function guardedLookup (policy: AddressPolicy): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) {
        callback(err, [])
        return
      }
      const allowed = addresses.filter((a) => addressAllowed(a.address, policy))
      if (allowed.length === 0) {
        const refused = Object.assign(new Error(`${hostname} resolves to no address that push may reach (loopback, private or reserved)`), { code: 'EPUSHADDRESS' })
        callback(refused, [])
        return
      }
      if (options.all === true) callback(null, allowed)
      else callback(null, allowed[0]!.address, allowed[0]!.family)
    })
  }
}
