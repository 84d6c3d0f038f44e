// Copies the front-end packages' built files into the Python package (meshgate/web/static/vendor/),
// so pages load them from the gateway itself: no CDN, works with no internet.
// One entry per file: [file under node_modules/, name under static/vendor/]. Add entries; keep it sorted by package.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "..", "meshgate", "web", "static", "vendor");

// The chat (static/chat.js): highlight.js's languages are ES modules already; its core is CommonJS (below).
const HLJS_LANGUAGES = [
  "bash", "c", "cpp", "css", "diff", "dockerfile", "go", "ini", "java", "javascript", "json", "markdown",
  "plaintext", "python", "rust", "shell", "sql", "typescript", "xml", "yaml",
];

export const FILES = [
  ["dompurify/dist/purify.es.mjs", "dompurify/purify.es.js"],
  ["dompurify/LICENSE", "dompurify/LICENSE"],
  ...HLJS_LANGUAGES.map((name) => [`highlight.js/es/languages/${name}.js`, `highlight/languages/${name}.js`]),
  ["highlight.js/styles/github.min.css", "highlight/github.min.css"],
  ["highlight.js/LICENSE", "highlight/LICENSE"],
  ["marked/lib/marked.esm.js", "marked/marked.esm.js"],
  ["marked/LICENSE", "marked/LICENSE"],
  ["uplot/dist/uPlot.iife.min.js", "uplot/uPlot.iife.min.js"],
  ["uplot/dist/uPlot.min.css", "uplot/uPlot.min.css"],
  ["uplot/LICENSE", "uplot/LICENSE"],
];

rmSync(vendor, { recursive: true, force: true });
for (const [from, to] of FILES) {
  const target = join(vendor, to);
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(join(here, "node_modules", from), target);
}
// highlight.js's core ships as CommonJS with no imports: wrapped as an ES module for the browser.
const core = readFileSync(join(here, "node_modules", "highlight.js/lib/core.js"), "utf8");
writeFileSync(
  join(vendor, "highlight", "core.js"),
  `const module = { exports: {} };\n${core}\nexport default module.exports;\n`,
);
writeFileSync(join(vendor, "README"), "Built by web/frontend/build.mjs from package-lock.json; not committed.\n");
console.log(`copied ${FILES.length} files into ${vendor}`);
