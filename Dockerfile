# syntax=docker/dockerfile:1

# Node 24 LTS: supported until April 2028, where Node 22 reaches its end of life in April 2027.
# package.json's `engines` stays `>=20.19`, the floor the service is tested on, so development
# machines may run an older Node. The production dependencies have no native add-ons and no
# install scripts, so nothing is built against this Node's ABI. Both stages use the same image
# (pin it by digest, node:24-slim@sha256:…, for reproducible builds).
ARG NODE_IMAGE=node:24-slim

# ---- build: compile TypeScript to dist/ with the full (dev) toolchain ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
  NPM_CONFIG_FUND=false \
  NPM_CONFIG_AUDIT=false
# Dependencies first, so editing the source does not invalidate the npm ci layer. npm ci runs
# the postinstall script, which patches the postgres driver (scripts/patch-postgres.mjs)
COPY package.json package-lock.json ./
COPY scripts/patch-postgres.mjs ./scripts/
RUN --mount=type=cache,target=/root/.npm npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, compiled code, migrations ----
FROM ${NODE_IMAGE} AS runtime
# tini as PID 1: the service spawns agent processes, and an init reaps whatever they orphan
# (a process that is PID 1 without an init's duties would leave zombies behind)
# bubblewrap: the agents' sandbox (AGENT_SANDBOX; the container needs user namespaces: README, "Sandbox")
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini bubblewrap \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
  NPM_CONFIG_UPDATE_NOTIFIER=false \
  HOST=0.0.0.0 \
  PORT=3000 \
  MOBVIBE_DATA_DIR=/app/.data \
  MOBVIBE_WORKSPACE_ROOT=/app/workspaces
# package.json must sit at /app/package.json: dist/app.js reads ../package.json for the API version.
# Production dependencies only; none needs an install script, so none is run.
# The driver patch is applied by hand: --ignore-scripts skips postinstall.
COPY package.json package-lock.json ./
COPY scripts/patch-postgres.mjs ./scripts/
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && node scripts/patch-postgres.mjs && npm cache clean --force
# Migrations are applied at start-up from /app/drizzle (dist/db/database.js resolves ../../drizzle)
COPY drizzle ./drizzle
COPY --from=build /app/dist ./dist
# The code stays owned by root (read-only for the service). The data directory (PGlite, lock
# file, agent state) and the workspaces are the only places the service writes; mount volumes
# on both to keep them across containers
RUN mkdir -p /app/.data /app/workspaces && chown node:node /app/.data /app/workspaces
# the image's non-root user (uid 1000)
USER node
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# node, not npm: signals reach the service directly and it shuts down gracefully
CMD ["node", "dist/server.js"]
