// Builds notifier.global.js, the classic-script build (`<script src>` defines `window.Notifier`),
// from notifier.js, the single source. The output is committed so that it can be served and
// copied as it is; test/build.test.js rebuilds it in memory and fails if the two differ.
//
//   node build.mjs           write notifier.global.js
//   node build.mjs --check   exit 1 if notifier.global.js is not what the build produces

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const SOURCE = new URL("./notifier.js", import.meta.url);
export const GLOBAL_BUILD = new URL("./notifier.global.js", import.meta.url);

const EXPORT_RE = /^export (?:const|let|function|async function|class) ([A-Za-z_$][\w$]*)/;

/**
 * The classic-script build of an ES module that has no imports and exports only top-level
 * `const`/`function`/`class` declarations: the same code in a function scope, its exports
 * gathered into one frozen `Notifier` object on the global object.
 * @param {string} source
 * @returns {string}
 */
export function buildGlobal(source) {
  /** @type {string[]} */
  const names = [];
  const lines = source.split("\n").map((line, index) => {
    if (/^\s*import[\s{*"']/.test(line)) {
      throw new Error(`notifier.js:${index + 1}: imports cannot be bundled into the classic build`);
    }
    const match = EXPORT_RE.exec(line);
    if (match) {
      names.push(match[1]);
      return line.slice("export ".length);
    }
    if (/^\s*export\b/.test(line)) {
      throw new Error(`notifier.js:${index + 1}: only "export const|function|class NAME" is supported: ${line}`);
    }
    return line;
  });
  if (names.length === 0) throw new Error("notifier.js exports nothing");
  const body = lines.join("\n").replace(/\n+$/, "");
  return [
    "// GENERATED from notifier.js by build.mjs (`npm run build`): do not edit by hand.",
    "// The classic-script build of the notifier client. <script src=\".../notifier.global.js\">",
    `// defines window.Notifier = { ${names.join(", ")} }.`,
    "(function (root) {",
    '"use strict";',
    body,
    "",
    `root.Notifier = Object.freeze({ ${names.join(", ")} });`,
    "})(globalThis);",
    "",
  ].join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const built = buildGlobal(readFileSync(SOURCE, "utf8"));
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(GLOBAL_BUILD, "utf8");
    } catch {
      // missing: reported below
    }
    if (current !== built) {
      console.error("notifier.global.js is out of date: run `npm run build` in clients/js");
      process.exit(1);
    }
    console.log("notifier.global.js is up to date");
  } else {
    writeFileSync(GLOBAL_BUILD, built);
    console.log(`wrote ${fileURLToPath(GLOBAL_BUILD)}`);
  }
}
