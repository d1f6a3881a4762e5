# syntax=docker/dockerfile:1

# ---- build: compile TypeScript to dist/ with the full (dev) toolchain ----
FROM node:20-bookworm-slim AS build
WORKDIR /app
# Dependencies first, so editing the source does not invalidate the npm ci layer
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, compiled code, migrations ----
FROM node:20-bookworm-slim AS runtime
# tini as PID 1: the service spawns agent processes, and an init reaps whatever they orphan
# (a process that is PID 1 without an init's duties would leave zombies behind)
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production \
  HOST=0.0.0.0 \
  PORT=3000 \
  MOBVIBE_DATA_DIR=/app/.data \
  MOBVIBE_WORKSPACE_ROOT=/app/workspaces
# package.json must sit at /app/package.json: dist/app.js reads ../package.json for the API version
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Migrations are applied at start-up from /app/drizzle (dist/db/database.js resolves ../../drizzle)
COPY drizzle ./drizzle
COPY --from=build /app/dist ./dist
# The data directory (PGlite, lock file, agent state) and the workspaces are the only places the
# service writes; mount volumes on both to keep them across containers
RUN mkdir -p /app/.data /app/workspaces && chown node:node /app/.data /app/workspaces
USER node
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# node, not npm: signals reach the service directly and it shuts down gracefully
CMD ["node", "dist/server.js"]
