// The CQL evaluation server: one long-lived process that runs ELM over FHIR R4 patient Bundles
// with cql-execution and cql-exec-fhir, driven by fhir_match.evaluate.engine over stdin/stdout.
//
// PROTOCOL: newline-delimited JSON. Each request is one JSON object on one line of stdin; each
// gets exactly one response, one JSON object on one line of stdout, in request order. stdout
// carries nothing else (console output of any library is sent to stderr). A request may carry
// an "id" (any JSON value); the response echoes it, so the client can pair them.
//
//   Every response:  {"id": <echo>, "ok": true, ...}  or  {"id": <echo>, "ok": false, "error": "<message>"}
//   A line that is not a JSON object, an unknown "op" or a bad field gets ok:false; the process
//   stays up. It exits when stdin closes.
//
//   {"op": "load", "elmDir": "/abs/build/elm", "library": "Name", "version": "1.0.0" | null,
//    "valueSets": {"<value set url>": [{"system": "...", "code": "..."}, ...], ...},
//    "parameters": {"<CQL parameter name>": <JSON value>, ...},
//    "now": "2025-01-01T00:00:00Z" | null}
//     Reads every *.json ELM file in elmDir, resolves the library (and its includes) by name and
//     version, and makes it the one that "evaluate" runs. Every value set the library tree
//     declares must be in valueSets (an expansion may be empty): a missing one fails the load,
//     not the patients. Parameters are converted by the type the library declares for them:
//       Boolean/Integer/Decimal/String: the JSON value;  Date, DateTime: an ISO 8601 string
//       ("2025-01-01", "2025-01-01T08:00:00Z");  Quantity: {"value": 5, "unit": "mg"};
//       Code: {"system", "code", "version"?, "display"?};  Concept: {"codes": [Code...], "display"?};
//       Interval<T>: {"low": T, "high": T, "lowClosed": true, "highClosed": true} (closed by default);
//       List<T>: [T, ...].
//     A parameter the library does not declare fails the load. "now" fixes Now()/Today() (default:
//     the time of the load) so that a run is reproducible.
//     -> {"ok": true, "library": "Name", "version": "1.0.0", "expressions": [public names],
//         "valueSets": [urls declared]}
//
//   {"op": "add-codes", "valueSets": {"<value set url>": [{"system", "code"}, ...]}}
//     Adds codes to the loaded expansions (creating a value set that was not given), e.g. ICD-10
//     subcodes found in the data under a code of the value set. Kept until the next "load".
//     -> {"ok": true, "added": <number of codes that were new>}
//
//   {"op": "evaluate", "bundles": [<FHIR R4 Bundle with one Patient>, ...], "expressions": [names] | null}
//     Runs the loaded library for each Bundle (all public expressions of the Patient context, or
//     the named ones).
//     -> {"ok": true, "results": [one per bundle, in order:
//           {"patientId": "p1", "values": {"<expression>": <value>, ...}}
//         | {"patientId": "p1" | null, "error": "<engine message>"}]}
//     A failing patient gets an error entry; the others still get their values. Error messages
//     name the expression and the CQL location, never patient data. Values are plain JSON:
//       null, Boolean, Integer, Decimal, String: as JSON;  Date, DateTime, Time: ISO 8601 strings;
//       Quantity: {"value", "unit"};  Ratio: {"numerator", "denominator"};
//       Code: {"system", "code", "version", "display"};  Concept: {"codes", "display"};
//       Interval: {"low", "high", "lowClosed", "highClosed"};  List: array;  Tuple: object;
//       an uncertain Integer (e.g. an age from a partial birth date): {"low", "high"};
//       a FHIR resource: "ResourceType/id";  a FHIR primitive or code: its value as above;
//       another FHIR element (e.g. an unconverted FHIR Quantity): its FHIR JSON.
//
// SPEED: speedups.mjs makes the libraries several times faster without changing any value;
// FHIR_MATCH_CQL_SPEEDUPS=0 in the environment turns it off (to compare, or to rule it out).

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { installSpeedups, loadSynchronousEngine } from './speedups.mjs';

const require = createRequire(import.meta.url);
// Same results, several times faster: see speedups.mjs. FHIR_MATCH_CQL_SPEEDUPS=0 turns them
// off (the libraries alone), to compare. With them, cql-execution is loaded in its synchronous
// form, before cql-exec-fhir loads it.
const SPEEDUPS = process.env.FHIR_MATCH_CQL_SPEEDUPS !== '0';
const cql = SPEEDUPS ? loadSynchronousEngine() : require('cql-execution');
const cqlfhir = require('cql-exec-fhir');

// stdout is the protocol channel: any library that logs must not write to it.
for (const level of ['log', 'info', 'warn', 'debug', 'trace']) {
  console[level] = (...args) => console.error(...args);
}

const SYSTEM_TYPE = '{urn:hl7-org:elm-types:r1}';
const CODE_TYPE = { type: 'NamedTypeSpecifier', name: `${SYSTEM_TYPE}Code` };

// Distinct results (the default for CQL queries, and what union, except and intersect do) are
// found by keying each element with its whole normalized structure. For a FHIR resource that
// walks, re-wraps and re-parses the entire resource tree: about 40% of the evaluation time of a
// typical criteria library. Within one patient's Bundle an entry's resource is identified by its
// type and id, and two structurally equal resources have equal ids, so keying those resources
// by (model class, type/id) gives the same distinct lists. Contained resources keep structural
// keys (their local ids repeat across parents). cql-execution (pinned at 3.3.2) looks the key
// function up on its module at each call, so replacing the export is enough.
const immutableUtil = require('cql-execution/lib/util/immutableUtil');
const { Map: ImmutableMap } = createRequire(require.resolve('cql-execution'))('immutable');
const structuralKey = immutableUtil.toNormalizedKey;
if (typeof structuralKey !== 'function') throw new Error('cql-execution has no toNormalizedKey to extend');
let bundleResources = new WeakSet();
function resourceKey(value) {
  const json = value?._json;
  if (json?.id != null && bundleResources.has(json) && typeof value.getTypeInfo === 'function') {
    return `${value.getTypeInfo()?.name}|${json.resourceType}/${json.id}`;
  }
  return null;
}
immutableUtil.toNormalizedKey = (value) => {
  const key = resourceKey(value);
  if (key != null) return ImmutableMap({ fhirResource: key });
  // The FHIR objects of speedups.mjs keep their elements on a prototype: keyed there.
  const fhirKey = speedups?.fhirKey(value);
  return fhirKey !== undefined ? fhirKey : structuralKey(value);
};

class RequestError extends Error {}

// One patient source for the life of the process; it is reset and reloaded for each patient.
// Re-creating it parses the FHIR model info again, which costs far more than the evaluation.
const patientSource = cqlfhir.PatientSource.FHIRv401();

const speedups = SPEEDUPS ? installSpeedups(patientSource, { resourceKey }) : null;

let loaded = null;

// ---------------------------------------------------------------------------------------------
// Value sets

/**
 * A value set expansion indexed by system and code, so membership tests and additions are
 * constant time. It is a cql-execution ValueSet, so expand() and the engine's other uses work.
 */
class IndexedValueSet extends cql.ValueSet {
  constructor(url) {
    super(url, undefined, []);
    this.keys = new Set();
    this.codeStrings = new Set();
    this.systems = new Set();
  }

  add(system, code) {
    const key = `${system}|${code}`;
    if (this.keys.has(key)) return false;
    this.keys.add(key);
    this.codeStrings.add(code);
    this.systems.add(system);
    this.codes.push(new cql.Code(code, system));
    return true;
  }

  hasMatch(value) {
    for (const code of flattenCodes(value)) {
      if (typeof code === 'string') {
        // CQL "string in valueset" is only meaningful when the expansion has one code system.
        if (this.codeStrings.has(code)) {
          if (this.systems.size > 1) {
            throw new Error('String in value set is ambiguous: the value set has several code systems');
          }
          return true;
        }
      } else if (code != null && this.keys.has(`${code.system}|${code.code}`)) {
        return true;
      }
    }
    return false;
  }
}

function flattenCodes(value) {
  if (value == null) return [];
  if (Array.isArray(value)) return value.flatMap(flattenCodes);
  if (Array.isArray(value.codes)) return value.codes;
  return [value];
}

/** The engine's terminology provider: one expansion per URL, whatever version the CQL names. */
class CodeService {
  constructor() {
    this.valueSets = new Map();
  }

  addCodes(url, codes) {
    if (!this.valueSets.has(url)) this.valueSets.set(url, new IndexedValueSet(url));
    const valueSet = this.valueSets.get(url);
    let added = 0;
    for (const code of codes) if (valueSet.add(code.system, code.code)) added++;
    return added;
  }

  findValueSetsByOid(url) {
    return this.valueSets.has(url) ? [this.valueSets.get(url)] : [];
  }

  findValueSet(url) {
    return this.valueSets.get(url) ?? null;
  }
}

function checkCodeMap(valueSets, field) {
  if (valueSets == null || typeof valueSets !== 'object' || Array.isArray(valueSets)) {
    throw new RequestError(`"${field}" must be an object of value set URL -> [{system, code}]`);
  }
  for (const [url, codes] of Object.entries(valueSets)) {
    if (!Array.isArray(codes)) throw new RequestError(`${field}["${url}"] must be a list`);
    for (const c of codes) {
      if (c == null || typeof c.system !== 'string' || typeof c.code !== 'string') {
        throw new RequestError(`${field}["${url}"] entries must be {"system": string, "code": string}`);
      }
    }
  }
  return valueSets;
}

// ---------------------------------------------------------------------------------------------
// Loading a library

function readRepository(elmDir) {
  let names;
  try {
    names = fs.readdirSync(elmDir).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
  } catch (err) {
    throw new RequestError(`cannot read ELM directory ${elmDir}: ${err.message}`);
  }
  const data = {};
  for (const name of names) {
    try {
      data[name] = JSON.parse(fs.readFileSync(path.join(elmDir, name), 'utf8'));
    } catch (err) {
      throw new RequestError(`cannot read ELM file ${name}: ${err.message}`);
    }
  }
  return new cql.Repository(data);
}

/** The library and every library it includes, each once, checking that all includes resolved. */
function libraryTree(library, seen = new Set()) {
  const key = `${library.name}|${library.version ?? ''}`;
  if (seen.has(key)) return [];
  seen.add(key);
  const tree = [library];
  for (const def of library.source.library.includes?.def ?? []) {
    const included = library.includes[def.localIdentifier];
    if (included == null) {
      throw new RequestError(
        `library ${library.name} includes ${def.path} version '${def.version ?? ''}', ` +
          'which is not in the ELM directory',
      );
    }
    tree.push(...libraryTree(included, seen));
  }
  return tree;
}

function typeSpecifierOf(def) {
  if (def.parameterTypeSpecifier) return def.parameterTypeSpecifier;
  if (def.resultTypeSpecifier) return def.resultTypeSpecifier;
  if (def.resultTypeName) return { type: 'NamedTypeSpecifier', name: def.resultTypeName };
  return null;
}

function describe(spec) {
  if (spec == null) return 'unknown type';
  switch (spec.type) {
    case 'NamedTypeSpecifier':
      return spec.name.replace(SYSTEM_TYPE, '');
    case 'IntervalTypeSpecifier':
      return `Interval<${describe(spec.pointType)}>`;
    case 'ListTypeSpecifier':
      return `List<${describe(spec.elementType)}>`;
    default:
      return spec.type;
  }
}

/** A CQL value of the declared type from its JSON form (see the protocol above). */
function fromJson(value, spec, where) {
  if (value == null) return null;
  const fail = () => {
    throw new RequestError(`${where}: ${JSON.stringify(value)} is not a valid ${describe(spec)}`);
  };
  if (spec?.type === 'ListTypeSpecifier') {
    if (!Array.isArray(value)) fail();
    return value.map((v, i) => fromJson(v, spec.elementType, `${where}[${i}]`));
  }
  if (spec?.type === 'IntervalTypeSpecifier') {
    if (typeof value !== 'object' || Array.isArray(value)) fail();
    return new cql.Interval(
      fromJson(value.low, spec.pointType, `${where}.low`),
      fromJson(value.high, spec.pointType, `${where}.high`),
      value.lowClosed ?? true,
      value.highClosed ?? true,
    );
  }
  if (spec?.type !== 'NamedTypeSpecifier') {
    throw new RequestError(`${where}: parameters of type ${describe(spec)} are not supported`);
  }
  switch (spec.name.replace(SYSTEM_TYPE, '')) {
    case 'Boolean':
      return typeof value === 'boolean' ? value : fail();
    case 'Integer':
      return Number.isInteger(value) ? value : fail();
    case 'Decimal':
      return typeof value === 'number' ? value : fail();
    case 'String':
      return typeof value === 'string' ? value : fail();
    case 'Date': {
      const date = typeof value === 'string' ? cql.Date.parse(value) : null;
      return date ?? fail();
    }
    case 'DateTime': {
      const dateTime = typeof value === 'string' ? cql.DateTime.parse(value) : null;
      return dateTime ?? fail();
    }
    case 'Quantity':
      if (typeof value.value !== 'number') fail();
      try {
        return new cql.Quantity(value.value, value.unit ?? '1');
      } catch (err) {
        throw new RequestError(`${where}: ${err.message}`);
      }
    case 'Code':
      if (typeof value.code !== 'string') fail();
      return new cql.Code(value.code, value.system, value.version, value.display);
    case 'Concept':
      if (!Array.isArray(value.codes)) fail();
      return new cql.Concept(
        value.codes.map((c, i) => fromJson(c, CODE_TYPE, `${where}.codes[${i}]`)),
        value.display,
      );
    default:
      throw new RequestError(`${where}: parameters of type ${describe(spec)} are not supported`);
  }
}

function convertParameters(library, given) {
  if (given == null) return {};
  if (typeof given !== 'object' || Array.isArray(given)) {
    throw new RequestError('"parameters" must be an object of parameter name -> value');
  }
  const declared = library.source.library.parameters?.def ?? [];
  const parameters = {};
  for (const [name, value] of Object.entries(given)) {
    const def = declared.find((d) => d.name === name);
    if (!def) throw new RequestError(`library ${library.name} declares no parameter "${name}"`);
    parameters[name] = fromJson(value, typeSpecifierOf(def), `parameter "${name}"`);
  }
  return parameters;
}

function handleLoad(request) {
  const { elmDir, library: name, version } = request;
  if (typeof elmDir !== 'string' || !elmDir) throw new RequestError('"elmDir" must be a directory path');
  if (typeof name !== 'string' || !name) throw new RequestError('"library" must be a library name');
  if (version != null && typeof version !== 'string') throw new RequestError('"version" must be a string or null');
  const valueSets = checkCodeMap(request.valueSets ?? {}, 'valueSets');

  const repository = readRepository(elmDir);
  const library = repository.resolve(name, version ?? undefined);
  if (!library) {
    throw new RequestError(`library ${name}${version ? ` version '${version}'` : ''} is not in ${elmDir}`);
  }
  const tree = libraryTree(library);

  const declared = new Set();
  for (const lib of tree) for (const vs of Object.values(lib.valuesets)) declared.add(vs.id);
  const missing = [...declared].filter((url) => !(url in valueSets));
  if (missing.length > 0) {
    throw new RequestError(`no expansion given for value set(s): ${missing.sort().join(', ')}`);
  }
  const codeService = new CodeService();
  for (const [url, codes] of Object.entries(valueSets)) codeService.addCodes(url, codes);

  const parameters = convertParameters(library, request.parameters);
  let now;
  if (request.now == null) {
    now = cql.DateTime.fromJSDate(new Date());
  } else {
    now = typeof request.now === 'string' ? cql.DateTime.parse(request.now) : null;
    if (now == null) throw new RequestError('"now" must be an ISO 8601 date-time string');
  }

  const expressions = publicExpressions(library);
  loaded = { library, codeService, parameters, now, expressions };
  return {
    library: library.name,
    version: library.version ?? null,
    expressions,
    valueSets: [...declared].sort(),
  };
}

function publicExpressions(library) {
  return Object.values(library.expressions)
    .filter((def) => def.context === 'Patient')
    .filter((def) => {
      const source = library.source.library.statements.def.find((d) => d.name === def.name);
      return (source?.accessLevel ?? 'Public') === 'Public';
    })
    .map((def) => def.name);
}

function handleAddCodes(request) {
  if (!loaded) throw new RequestError('no library loaded: send "load" first');
  const valueSets = checkCodeMap(request.valueSets, 'valueSets');
  let added = 0;
  for (const [url, codes] of Object.entries(valueSets)) added += loaded.codeService.addCodes(url, codes);
  return { added };
}

// ---------------------------------------------------------------------------------------------
// Evaluating

function patientIdOf(bundle) {
  if (bundle == null || bundle.resourceType !== 'Bundle' || !Array.isArray(bundle.entry)) return undefined;
  const patient = bundle.entry.find((e) => e?.resource?.resourceType === 'Patient')?.resource;
  return patient ? (patient.id ?? null) : undefined;
}

/** One line naming the failing definition and CQL location; never a data value. */
function errorMessage(err, expression) {
  if (err instanceof cql.AnnotatedError) {
    const cause = err.cause?.message ?? String(err.cause);
    const at = err.locator ? ` at ${err.libraryName} line ${err.locator}` : ` in ${err.libraryName}`;
    return `"${expression}" failed${at} (${err.expressionName}): ${cause}`;
  }
  return `"${expression}" failed: ${err?.message ?? String(err)}`;
}

async function evaluateBundle(bundle, names) {
  const patientId = patientIdOf(bundle);
  if (patientId === undefined) return { patientId: null, error: 'not a Bundle with a Patient resource' };
  if (patientId === null) return { patientId: null, error: 'the Patient resource has no id' };
  const { library, codeService, parameters, now } = loaded;
  if (!speedups) {
    patientSource.reset();
    patientSource.loadBundles([bundle]);
  }
  bundleResources = new WeakSet(bundle.entry.map((e) => e?.resource).filter((r) => r && typeof r === 'object'));
  let expression = null;
  try {
    speedups?.beginPatient();
    const patient = speedups ? speedups.patientFor(bundle) : patientSource.currentPatient();
    const context = new cql.PatientContext(library, patient, codeService, parameters, now);
    const values = {};
    for (const name of names) {
      expression = name;
      // A definition already computed as a dependency of an earlier one is cached on the context.
      const cached = context.context_values[name];
      const value = cached !== undefined ? cached : await library.expressions[name].execute(context);
      values[name] = toJson(value);
    }
    return { patientId, values };
  } catch (err) {
    return { patientId, error: errorMessage(err, expression ?? 'Patient') };
  } finally {
    patientSource.reset();
  }
}

async function handleEvaluate(request) {
  if (!loaded) throw new RequestError('no library loaded: send "load" first');
  if (!Array.isArray(request.bundles)) throw new RequestError('"bundles" must be a list of FHIR Bundles');
  let names = loaded.expressions;
  if (request.expressions != null) {
    if (!Array.isArray(request.expressions)) throw new RequestError('"expressions" must be a list of names');
    const unknown = request.expressions.filter(
      (n) => loaded.library.expressions[n]?.context !== 'Patient',
    );
    if (unknown.length > 0) {
      throw new RequestError(`library ${loaded.library.name} has no Patient expression(s): ${unknown.join(', ')}`);
    }
    names = request.expressions;
  }
  const results = [];
  for (const bundle of request.bundles) results.push(await evaluateBundle(bundle, names));
  return { results };
}

// ---------------------------------------------------------------------------------------------
// Results to JSON

function toJson(value) {
  if (value == null) return null;
  switch (typeof value) {
    case 'boolean':
    case 'string':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'object':
      break;
    default:
      return String(value);
  }
  if (Array.isArray(value)) return value.map(toJson);
  if (value.isDate || value.isDateTime) return value.toString();
  if (value.isQuantity) return { value: value.value, unit: value.unit };
  if (value.isRatio) return { numerator: toJson(value.numerator), denominator: toJson(value.denominator) };
  if (value.isCode) {
    return {
      system: value.system ?? null,
      code: value.code ?? null,
      version: value.version ?? null,
      display: value.display ?? null,
    };
  }
  if (value.isConcept) return { codes: toJson(value.codes ?? []), display: value.display ?? null };
  if (value.isInterval) {
    return {
      low: toJson(value.low),
      high: toJson(value.high),
      lowClosed: value.lowClosed,
      highClosed: value.highClosed,
    };
  }
  if (value.isValueSet) return { valueSet: value.id, version: value.version ?? null };
  if (value instanceof cql.ValueSet) return { valueSet: value.oid, version: value.version ?? null };
  if (value.isUncertainty) {
    return value.isPoint() ? toJson(value.low) : { low: toJson(value.low), high: toJson(value.high) };
  }
  if (typeof value.getTypeInfo === 'function' && '_json' in value) return fhirToJson(value);
  const tuple = {};
  for (const [key, item] of Object.entries(value)) tuple[key] = toJson(item);
  return tuple;
}

function fhirToJson(value) {
  const json = value._json;
  if (json != null && typeof json === 'object' && typeof json.resourceType === 'string') {
    return json.id != null ? `${json.resourceType}/${json.id}` : json.resourceType;
  }
  // A primitive or a required-binding code: its CQL value, as FHIRHelpers would convert it
  // (a FHIR date gives "2020-01-01", a code its string).
  if (isPrimitive(value)) return toJson(value.value);
  return json ?? null;
}

/** Primitive types have one element, "value", declared on the type or on a base (id < string). */
function isPrimitive(fhirObject) {
  let info = fhirObject.getTypeInfo();
  while (info) {
    const names = info.elements.map((e) => e.name);
    if (names.length > 0) return names.length === 1 && names[0] === 'value';
    info = info.baseTypeSpecifier ? fhirObject._modelInfo.findClass(info.baseTypeSpecifier.fqn) : null;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// The request loop

const handlers = { load: handleLoad, 'add-codes': handleAddCodes, evaluate: handleEvaluate };

async function handle(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    return { id: null, ok: false, error: `request is not JSON: ${err.message}` };
  }
  if (request == null || typeof request !== 'object' || Array.isArray(request)) {
    return { id: null, ok: false, error: 'request must be a JSON object' };
  }
  const id = request.id ?? null;
  const handler = Object.hasOwn(handlers, request.op) ? handlers[request.op] : null;
  if (!handler) {
    const expected = Object.keys(handlers).join(', ');
    return { id, ok: false, error: `unknown op ${JSON.stringify(request.op)}; expected one of ${expected}` };
  }
  try {
    return { id, ok: true, ...(await handler(request)) };
  } catch (err) {
    const message = err instanceof RequestError ? err.message : `${request.op} failed: ${err?.message ?? err}`;
    return { id, ok: false, error: message };
  }
}

function respond(response) {
  return new Promise((resolve) => {
    if (!process.stdout.write(`${JSON.stringify(response)}\n`)) process.stdout.once('drain', resolve);
    else resolve();
  });
}

/**
 * The lines of stdin, ended by \n, \r\n or \r (as readline splits them), each decoded once: a
 * request line is a batch of Bundles of a megabyte or more, which readline would decode chunk by
 * chunk, search with a regular expression and join as strings.
 */
async function* inputLines() {
  let pending = [];
  for await (const chunk of process.stdin) {
    let start = 0;
    let lf = chunk.indexOf(10);
    let cr = chunk.indexOf(13);
    while (lf >= 0 || cr >= 0) {
      const end = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
      pending.push(chunk.subarray(start, end));
      yield Buffer.concat(pending).toString('utf8');
      pending = [];
      start = end + 1;
      if (lf >= 0 && lf < start) lf = chunk.indexOf(10, start);
      if (cr >= 0 && cr < start) cr = chunk.indexOf(13, start);
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
  if (pending.length > 0) yield Buffer.concat(pending).toString('utf8');
}

async function main() {
  for await (const line of inputLines()) {
    if (line.trim() === '') continue;
    await respond(await handle(line));
  }
}

await main();
