import type { KnipConfig } from 'knip'

/**
 * Unused files, exports and dependencies (`npm run knip`, run by .ci/run). Knip's plugins add the
 * entry points that package.json and the tools' configs already name: src/server.ts (`main`,
 * `npm run dev`), bench/run.ts (`npm run bench`), drizzle.config.ts and eslint.config.js.
 */
const config: KnipConfig = {
  entry: [
    // loaded by URL as a worker thread (src/db/pglite-thread.ts), not imported
    'src/db/pglite-worker.ts',
    // `npm run token` (node dist/token.js)
    'src/token.ts',
    'scripts/*.ts',
    // worker threads of the bench, loaded by URL (bench/worker-rpc.ts)
    'bench/*-worker.ts',
    // agents the bench and the tests spawn as CLAUDE_BIN
    'bench/*.mjs',
    'test/fixtures/*.mjs',
    'test/**/*.test.ts',
    // type-checked on its own by test/openapi.test.ts (tsconfig.sdk.json)
    'test/fixtures/sdk-client.ts',
    // spawned with node --import tsx by test/agent-watchdog.test.ts
    'test/fixtures/watchdog-host.ts',
    'integration/*.ts',
    'integration/instances/*.test.ts'
  ],
  project: [
    'src/**/*.ts',
    'scripts/**/*.ts',
    'bench/**/*.{ts,mts,mjs}',
    'test/**/*.{ts,mjs}',
    'integration/**/*.ts',
    '!test/.generated/**'
  ],
  // PostgreSQL's benchmark tool (bench/anchors.ts) and client (a listener that stops reading in
  // test/doorbell.test.ts): system binaries, not npm packages
  ignoreBinaries: ['pgbench', 'psql']
}

export default config
