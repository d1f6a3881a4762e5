// Architecture rules for src/ (`npm run lint:deps`, run by .ci/run).
// Layers, lowest first: src/domain → src/db → src/sessions → src/events → src/agents →
// src/plugins → src/routes; src/push (push notifications) sits on src/db beside the middle three.
// src/schemas holds the TypeBox schemas; src/app.ts and src/server.ts assemble the service.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'domain-is-pure',
      comment: 'src/domain is pure: it imports nothing from src outside src/domain and no npm package (type-only imports included)',
      severity: 'error',
      from: { path: '^src/domain/' },
      to: {
        pathNot: '^src/domain/',
        dependencyTypesNot: ['core']
      }
    },
    {
      name: 'schemas-only-typebox-and-domain',
      comment: 'src/schemas imports only src/schemas, src/domain and the typebox package: no runtime module of ours, no other package',
      severity: 'error',
      from: { path: '^src/schemas/' },
      to: { pathNot: '^(src/schemas/|src/domain/)|(^|/)node_modules/typebox/' }
    },
    {
      name: 'sessions-below-events-and-agents',
      comment: 'src/sessions never imports src/agents, src/events, src/routes or src/plugins',
      severity: 'error',
      from: { path: '^src/sessions/' },
      to: { path: '^src/(agents|events|routes|plugins)/' }
    },
    {
      name: 'cluster-below-the-core',
      comment: 'the instances\' lease and doorbell know the database, the pure domain and nothing of sessions, events or agents',
      severity: 'error',
      from: { path: '^src/cluster/' },
      to: { path: '^src/(sessions|events|agents|routes|plugins|push)/' }
    },
    {
      name: 'events-below-agents',
      comment: 'src/events never imports src/agents, src/routes or src/plugins',
      severity: 'error',
      from: { path: '^src/events/' },
      to: { path: '^src/(agents|routes|plugins)/' }
    },
    {
      name: 'agents-below-web',
      comment: 'src/agents never imports src/routes or src/plugins',
      severity: 'error',
      from: { path: '^src/agents/' },
      to: { path: '^src/(routes|plugins)/' }
    },
    {
      name: 'push-beside-the-core',
      comment: 'src/push (devices, providers, the notifier) imports no session, event, agent, route or plugin module: src/plugins/push.ts wires it to them',
      severity: 'error',
      from: { path: '^src/push/' },
      to: { path: '^src/(sessions|events|agents|routes|plugins)/' }
    },
    {
      name: 'core-knows-no-push',
      comment: 'push notifications hang off the core: nothing in src/domain, src/db, src/schemas, src/sessions, src/events or src/agents imports src/push',
      severity: 'error',
      from: { path: '^src/(domain|db|schemas|sessions|events|agents)/' },
      to: { path: '^src/push/' }
    },
    {
      name: 'agents-no-fastify',
      comment: 'src/agents knows nothing of fastify: no fastify, @fastify/* or fastify-* import, type-only imports included',
      severity: 'error',
      from: { path: '^src/agents/' },
      to: { path: '(^|/)node_modules/(fastify|fastify-[^/]+|@fastify/[^/]+)/' }
    },
    {
      name: 'fastify-only-in-web-layer',
      comment: 'only src/plugins, src/routes, src/app.ts and src/server.ts import fastify-related packages: the components below them run without a web server',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(plugins/|routes/|app\\.ts$|server\\.ts$)' },
      to: { path: '(^|/)node_modules/(fastify|fastify-[^/]+|@fastify/[^/]+)/' }
    },
    {
      name: 'no-circular',
      comment: 'no dependency cycles (type-only imports included)',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true }
    },
    {
      name: 'no-orphans',
      comment: 'every module in src is imported by another or imports one; src/server.ts is the entry point',
      severity: 'error',
      from: { orphan: true, path: '^src/', pathNot: ['^src/server\\.ts$', '\\.d\\.ts$'] },
      to: {}
    },
    {
      name: 'not-to-unresolvable',
      comment: 'every import resolves (a typo, or a package missing from package.json)',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true }
    }
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|coverage|\\.tap)/' },
    // type-only imports are dependencies too (`import type { FastifyInstance } from 'fastify'`)
    tsPreCompilationDeps: true,
    // `.js` specifiers resolve to the `.ts` sources through the tsconfig (module nodenext)
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings']
    },
    reporterOptions: {
      archi: {
        // one node per top-level folder of src (and one per file at src's root)
        collapsePattern: '^src/[^/]+|^node_modules/(@[^/]+/[^/]+|[^/]+)'
      },
      text: { highlightFocused: true }
    }
  }
}
