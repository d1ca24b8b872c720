// Translate CQL libraries to ELM JSON with the official CQL-to-ELM translator.
//
// Usage:
//   node node/translate.mjs [--out DIR] [--force] [SOURCE_DIR ...]
//
// Every `*.cql` file directly inside each SOURCE_DIR (default: <project>/cql) is translated to
// `<out>/<LibraryName>-<version>.json` (default out: <project>/build/elm). `include`s resolve by
// library name and version across all the source directories, so test libraries kept elsewhere
// can include cql/FHIRHelpers.cql by passing both directories.
//
// The models are FHIR 4.0.1 (the model info shipped in cql-exec-fhir, the same one the engine
// reads at run time, so translation and execution agree on types) and System; unit literals are
// checked by the UCUM service of @lhncbc/ucum-lhc.
//
// Exit status: 0 when every library translated (or nothing changed since the last run, see
// below); 1 when any library has a translation ERROR, each printed on stderr as
// `path/to/File.cql:LINE:COL: message`; 2 on bad usage. Warnings do not fail the run. On
// errors nothing is written, so the output never mixes old and new ELM.
//
// Up-to-date check: `<out>/.manifest.json` records a hash of the translator version, the
// options, this script and every source file's path and text. When it matches and every
// output still exists, translation is skipped (--force translates anyway). One hash over all
// sources keeps this correct when an included library changes.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

import {
  CqlCompilerOptions,
  CqlTranslator,
  LibraryManager,
  ModelManager,
  createLibrarySourceProvider,
  createModelInfoProvider,
  createUcumService,
  stringAsSource,
} from '@cqframework/cql/cql-to-elm';
import { SystemModelInfoProvider } from '@cqframework/cql/cql';

const require = createRequire(import.meta.url);
const ucum = require('@lhncbc/ucum-lhc');
// The package's exports hide package.json; read it beside the resolved entry point.
const translatorVersion = JSON.parse(
  fs.readFileSync(path.join(path.dirname(require.resolve('@cqframework/cql/cql-to-elm')), 'package.json'), 'utf8'),
).version;

const NODE_DIR = path.dirname(fileURLToPath(import.meta.url));
const PROJECT_DIR = path.dirname(NODE_DIR);
const DEFAULT_SOURCE_DIR = path.join(PROJECT_DIR, 'cql');
const DEFAULT_OUT_DIR = path.join(PROJECT_DIR, 'build', 'elm');
const FHIR_MODEL_INFO = require.resolve('cql-exec-fhir/lib/modelInfos/fhir-modelinfo-4.0.1.xml');
const MANIFEST = '.manifest.json';

// Locators let engine errors point at CQL lines; result types let serve.mjs convert parameters
// by their declared type. List promotion/demotion stay off, as the translator's defaults have it.
const OPTIONS = ['EnableLocators', 'EnableResultTypes', 'DisableListDemotion', 'DisableListPromotion'];

class UsageError extends Error {}

function parseArgs(argv) {
  const args = { out: DEFAULT_OUT_DIR, force: false, sources: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--out') {
      if (i + 1 >= argv.length) throw new UsageError('--out needs a directory');
      args.out = path.resolve(argv[++i]);
    } else if (arg === '--force') {
      args.force = true;
    } else if (arg.startsWith('-')) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      args.sources.push(path.resolve(arg));
    }
  }
  if (args.sources.length === 0) args.sources.push(DEFAULT_SOURCE_DIR);
  return args;
}

/** A path as the user should see it: relative to the working directory when inside it. */
function shown(file) {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

/** The library declaration, read before translation so includes can be resolved by name. */
function libraryHeader(text) {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
  const match = code.match(
    /^\s*library\s+((?:[A-Za-z_][A-Za-z0-9_]*|"[^"]+")(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|"[^"]+"))*)(?:\s+version\s+'([^']*)')?/,
  );
  if (!match) return null;
  const parts = match[1].split('.').map((p) => p.replace(/^"|"$/g, ''));
  return { id: parts[parts.length - 1], version: match[2] ?? null };
}

function collectSources(dirs, problems) {
  const sources = [];
  const seen = new Map();
  for (const dir of dirs) {
    let names;
    try {
      names = fs.readdirSync(dir).filter((n) => n.endsWith('.cql')).sort();
    } catch (err) {
      throw new UsageError(`cannot read source directory ${dir}: ${err.message}`);
    }
    for (const name of names) {
      const file = path.join(dir, name);
      const text = fs.readFileSync(file, 'utf8');
      const header = libraryHeader(text);
      if (!header) {
        problems.push(`${shown(file)}:1:1: no library declaration (library Name version 'x.y.z')`);
        continue;
      }
      const key = `${header.id}|${header.version ?? ''}`;
      if (seen.has(key)) {
        problems.push(
          `${shown(file)}:1:1: library ${header.id} version '${header.version}' ` +
            `is also defined in ${shown(seen.get(key))}`,
        );
        continue;
      }
      seen.set(key, file);
      sources.push({ file, text, ...header });
    }
  }
  return sources;
}

function sourcesHash(sources) {
  const hash = createHash('sha256');
  hash.update(`${translatorVersion}\n${OPTIONS.join(',')}\n${fs.readFileSync(fileURLToPath(import.meta.url))}\n`);
  for (const s of sources) hash.update(`${s.file}\n${s.text.length}\n${s.text}\n`);
  return hash.digest('hex');
}

function readManifest(outDir) {
  try {
    return JSON.parse(fs.readFileSync(path.join(outDir, MANIFEST), 'utf8'));
  } catch {
    return null;
  }
}

function outputName(source) {
  return source.version ? `${source.id}-${source.version}.json` : `${source.id}.json`;
}

function ucumService() {
  const utils = ucum.UcumLhcUtils.getInstance();
  return createUcumService(
    (value, from, to) => {
      const result = utils.convertUnitTo(from, Number(value), to);
      if (result.status !== 'succeeded') throw new Error((result.msg ?? []).join('; '));
      return String(result.toVal);
    },
    (unit) => {
      const result = utils.validateUnitString(unit);
      return result.status === 'valid' ? null : (result.msg ?? []).join('; ') || `invalid unit ${unit}`;
    },
    // The translator folds no quantity arithmetic in our use; failing loudly beats a wrong value.
    () => {
      throw new Error('UCUM multiplication is not available to the translator');
    },
    () => {
      throw new Error('UCUM division is not available to the translator');
    },
  );
}

function libraryManager(sources) {
  const fhirModelInfo = fs.readFileSync(FHIR_MODEL_INFO, 'utf8');
  const models = new ModelManager();
  models.modelInfoLoader.registerModelInfoProvider(new SystemModelInfoProvider());
  models.modelInfoLoader.registerModelInfoProvider(
    createModelInfoProvider((id, _system, version) =>
      id === 'FHIR' && (version == null || version === '4.0.1') ? stringAsSource(fhirModelInfo) : null,
    ),
  );
  const options = new CqlCompilerOptions();
  options.setOptions(OPTIONS.map((name) => CqlCompilerOptions.Options.valueOf(name)));
  const libraries = new LibraryManager(models, options, undefined, ucumService());
  libraries.librarySourceLoader.registerProvider(
    createLibrarySourceProvider((id, _system, version) => {
      const source = findSource(sources, id, version);
      return source ? stringAsSource(source.text) : null;
    }),
  );
  return libraries;
}

/** By name and version; without a version, only an unambiguous name resolves. */
function findSource(sources, id, version) {
  const named = sources.filter((s) => s.id === id);
  if (version != null) return named.find((s) => s.version === version) ?? null;
  return named.length === 1 ? named[0] : null;
}

/** file:line:col of a translator message; the locator names the library it belongs to. */
function locate(exception, sources, current) {
  const locator = exception.locator;
  if (!locator) return { file: current.file, line: 1, col: 1 };
  let file = current.file;
  for (const key of Object.keys(locator)) {
    const value = locator[key];
    if (value && typeof value === 'object' && 'id' in value && 'version' in value) {
      file = findSource(sources, value.id, value.version)?.file ?? file;
    }
  }
  const text = String(locator);
  const line = Number(text.match(/startLine=(\d+)/)?.[1] ?? 1);
  // Syntax errors carry the parser's 0-based column; every other message a 1-based one.
  const base = exception.constructor?.name === 'CqlSyntaxException' ? 1 : 0;
  const col = Number(text.match(/startChar=(\d+)/)?.[1] ?? 1 - base) + base;
  return { file, line, col };
}

function translateAll(sources) {
  const libraries = libraryManager(sources);
  const outputs = new Map();
  const errors = new Map();
  for (const source of sources) {
    let translator;
    try {
      translator = CqlTranslator.fromText(source.text, libraries);
    } catch (err) {
      const msg = `${shown(source.file)}:1:1: translator failure: ${err?.message ?? err}`;
      errors.set(msg, msg);
      continue;
    }
    const found = translator.errors.asJsReadonlyArrayView();
    for (const exception of found) {
      const { file, line, col } = locate(exception, sources, source);
      const msg = `${shown(file)}:${line}:${col}: ${exception.message}`;
      errors.set(msg, msg);
    }
    if (found.length === 0) outputs.set(outputName(source), translator.toJson());
  }
  return { outputs, errors: [...errors.values()] };
}

function writeOutputs(outDir, outputs, previous, hash) {
  fs.mkdirSync(outDir, { recursive: true });
  for (const name of previous?.outputs ?? []) {
    if (!outputs.has(name)) fs.rmSync(path.join(outDir, name), { force: true });
  }
  for (const [name, json] of outputs) fs.writeFileSync(path.join(outDir, name), json);
  const manifest = { hash, translator: translatorVersion, outputs: [...outputs.keys()].sort() };
  fs.writeFileSync(path.join(outDir, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`translate.mjs: ${err.message}\n`);
    return 2;
  }
  const problems = [];
  let sources;
  try {
    sources = collectSources(args.sources, problems);
  } catch (err) {
    process.stderr.write(`translate.mjs: ${err.message}\n`);
    return 2;
  }
  if (problems.length > 0) {
    for (const p of problems) process.stderr.write(`${p}\n`);
    return 1;
  }
  const hash = sourcesHash(sources);
  const previous = readManifest(args.out);
  const upToDate =
    previous?.hash === hash && previous.outputs.every((n) => fs.existsSync(path.join(args.out, n)));
  if (upToDate && !args.force) {
    process.stdout.write(`ELM up to date: ${sources.length} libraries in ${shown(args.out)}\n`);
    return 0;
  }
  const { outputs, errors } = translateAll(sources);
  if (errors.length > 0) {
    for (const e of errors) process.stderr.write(`${e}\n`);
    process.stderr.write(`translation failed: ${errors.length} error(s)\n`);
    return 1;
  }
  writeOutputs(args.out, outputs, previous, hash);
  process.stdout.write(`translated ${outputs.size} libraries to ${shown(args.out)}\n`);
  return 0;
}

process.exitCode = main();
