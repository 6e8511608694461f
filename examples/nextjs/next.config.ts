import path from "node:path";

import type { NextConfig } from "next";

const config: NextConfig = {
  // @fal-jobs/client comes from ../../clients/js (a `file:` dependency, so a link): Turbopack reads
  // files only under its root, which must hold both this app and the package.
  turbopack: { root: path.resolve(process.cwd(), "..", "..") },
  // `next dev` would otherwise write AGENTS.md and CLAUDE.md into this folder.
  agentRules: false,
  experimental: { agentUpgrade: false },
};

export default config;
