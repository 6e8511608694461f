// Bundles app.jsx (React's development build: StrictMode runs effects twice) for
// tests/browser/test_react_hooks.py: `node test/react/build.js OUTFILE`.

import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const [outfile] = process.argv.slice(2);
if (!outfile) throw new Error("usage: node test/react/build.js OUTFILE");
await build({
  entryPoints: [fileURLToPath(new URL("./app.jsx", import.meta.url))],
  bundle: true,
  format: "esm",
  jsx: "automatic",
  target: "es2022",
  define: { "process.env.NODE_ENV": '"development"' },
  outfile,
  logLevel: "warning",
});
