// The browser side of the package as one ES module for the service's own page
// (service/web/vendor/fal-jobs-client.js, committed: `python3 -m service run` needs no Node).
// Built from tsc's output (dist/, run `tsc -p tsconfig.json` first), so the page runs exactly what
// the package ships: `node scripts/bundle-page.js OUTFILE`, or `npm run build:page`.
// tests/test_page_client.py rebuilds it and fails if the committed file differs.

import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const [outfile] = process.argv.slice(2);
if (!outfile) throw new Error("usage: node scripts/bundle-page.js OUTFILE");
const root = fileURLToPath(new URL("..", import.meta.url));
await build({
  stdin: {
    contents: [
      'export { subscribeJob, subscribeJobs } from "./dist/browser.js";',
      'export { FalJobsError } from "./dist/errors.js";',
      'export { uploadFile } from "./dist/upload.js";',
      'export { TERMINAL_STATUSES, isSettled, isTerminal, uploadRef } from "./dist/types.js";',
    ].join("\n"),
    resolveDir: root,
    sourcefile: "page-entry.js",
  },
  absWorkingDir: root, // the path comments in the output are relative to the package, not the caller
  bundle: true,
  format: "esm",
  target: "es2022",
  banner: { js: "// Generated from clients/js (@fal-jobs/client) by `npm run build:page` there: do not edit." },
  legalComments: "none",
  outfile,
  logLevel: "warning",
});
