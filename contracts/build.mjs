// Compile contracts/src/*.sol (and the test-only contracts/test/*.sol) with the pinned solcjs
// through its standard-JSON API, and write one artifact per deployable contract into the Python
// package, which is their one home (a wheel ships them; tensorgrid/chain/artifacts.py reads them):
//   ../tensorgrid/chain/compiled/<Name>.json and ../tensorgrid/chain/compiled/test/<Name>.json
//   = {compiler, evmVersion, optimizer, sourceName, sourceHash, abi, bytecode}
// sourceHash = sha256 over every source the compiler read (ours and OpenZeppelin's), sorted
// by source name, each as "<name>\n<sha256 of content>\n": any change to any input shows.
// Usage: node build.mjs [--out DIR]   (prefer `python -m tensorgrid.chain.build`)
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const HERE = dirname(fileURLToPath(import.meta.url));
const EVM_VERSION = "cancun";
const OPTIMIZER = { enabled: true, runs: 200 };
const SOURCE_DIRS = ["src", "test"];

function parseOut(argv) {
  const i = argv.indexOf("--out");
  return i >= 0 ? argv[i + 1] : join(HERE, "..", "tensorgrid", "chain", "compiled");
}

function collectSources() {
  const sources = {};
  for (const dir of SOURCE_DIRS) {
    for (const file of readdirSync(join(HERE, dir)).sort()) {
      if (file.endsWith(".sol")) {
        sources[`${dir}/${file}`] = { content: readFileSync(join(HERE, dir, file), "utf8") };
      }
    }
  }
  return sources;
}

const read = {}; // every imported file's content, for sourceHash
function findImports(path) {
  const base = path.startsWith("@") ? join(HERE, "node_modules", path) : join(HERE, path);
  try {
    read[path] = readFileSync(base, "utf8");
    return { contents: read[path] };
  } catch {
    return { error: `not found: ${path}` };
  }
}

function sha256(text) {
  return createHash("sha256").update(text).digest("hex");
}

const sources = collectSources();
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: OPTIMIZER,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
// OpenZeppelin's own warnings (e.g. its transient-storage notice) are known; show ours.
for (const e of output.errors || []) {
  if (e.severity === "error" || !e.sourceLocation?.file?.startsWith("@")) console.error(e.formattedMessage);
}
if (errors.length > 0) process.exit(1);

const all = { ...Object.fromEntries(Object.entries(sources).map(([k, v]) => [k, v.content])), ...read };
const sourceHash = sha256(
  Object.keys(all)
    .sort()
    .map((name) => `${name}\n${sha256(all[name])}\n`)
    .join(""),
);
const outDir = parseOut(process.argv);
for (const sourceName of Object.keys(sources)) {
  for (const [name, contract] of Object.entries(output.contracts[sourceName] || {})) {
    if (!contract.evm.bytecode.object) continue; // abstract contracts and interfaces
    const dir = sourceName.startsWith("test/") ? join(outDir, "test") : outDir;
    mkdirSync(dir, { recursive: true });
    const artifact = {
      compiler: `solc ${solc.version()}`,
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      sourceName,
      sourceHash,
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
    };
    writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(artifact, null, 1)}\n`);
    console.log(`wrote ${join(dir, `${name}.json`)}`);
  }
}
