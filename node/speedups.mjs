// Speed-ups for serve.mjs: cql-execution 3.3.2 and cql-exec-fhir 2.2.0 give the same results
// several times faster with these in place (KN5501, both measured on one loaded machine: ~12 ->
// ~1.3 ms of CPU per patient).
//
// Each one replaces an internal of a pinned library (cql-execution, cql-exec-fhir, luxon) with
// code that computes the same values, and says here why nothing can differ. They are only valid
// for the exact library code they were written against: loadSynchronousEngine() first checks the
// package versions, the SHA-256 of every source file whose code is ported below and a digest of
// every cql-execution source (rewritten by 0), and throws (the engine does not start) if
// anything changed. Re-check each speed-up against the new code before updating PINNED_VERSIONS
// / PINNED_FILES / PINNED_SOURCES (the files whose code is ported or whose behaviour is
// reproduced; the rest of each package is pinned by its version).
//
//  0. Every expression evaluated synchronously: cql-execution's sources loaded with async/await
//     taken out (loadSynchronousEngine(), before anything else loads the library).
//  1. FHIR objects (replaces cql-exec-fhir's FHIRObject construction, get and Patient.findRecords).
//     The library's FHIRObject defines ~40 accessor properties on every instance (~15 us each),
//     re-wraps a nested element at every access and re-parses its dates. Here the accessors live
//     on one prototype per FHIR type, get(field) is the library's code (ported) memoised per
//     object and field, getCode(field) (a retrieve's code filter) likewise, and each Bundle
//     resource is wrapped once per patient and class.
//  2. CQL function results memoised per patient, by function and argument identity.
//  3. toDistinctList (every query, union, distinct) with string keys instead of Immutable.js ones.
//  4. DateTime.parse / Date.parse: luxon's validity check skipped for strings that a strict
//     pattern with in-range fields already proves valid.
//  5. Date/Quantity arithmetic ("As Of" - 180 days, 28 * 1 'day') remembered by value.
//  6. Whole years between two fully specified Dates (AgeInYearsAt) without luxon.
//
// The evaluation of one patient must not interleave with another's (serve.mjs evaluates
// sequentially): beginPatient() starts a patient's memo.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Module, { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const requireFromCql = createRequire(require.resolve('cql-execution'));

// --- Pinned library code ----------------------------------------------------------------------

const PINNED_VERSIONS = {
  'cql-execution': '3.3.2',
  'cql-exec-fhir': '2.2.0',
  luxon: '3.7.2', // diff semantics (6), fromFormat validity (4)
  immutable: '5.2.1', // Immutable.is equality of normalized keys (3)
};
const PINNED_FILES = {
  'cql-exec-fhir/lib/fhir.js': '3c9b1f87850f266689e087cceece89b5d90e8926123e541ec8fe4b89c9921a5c',
  'cql-exec-fhir/lib/load.js': '508a9e777c2d5bbda2afc5723eb187ef125af128d76a7b531741974c953bc656',
  'cql-exec-fhir/lib/util.js': 'd1c3c0856c15fa5bf3a3bb78b16056c1f1b474153e3e022a03540a897ee623d1',
  'cql-execution/lib/elm/reusable.js': '8299f7912751ba972c98e78ceb59f30d502ae0cbc375f8905608c1a0245c540c',
  'cql-execution/lib/elm/list.js': '2745d5ed6a580dc25f7dc247f96459c13c330df7004475ee4b54aeba41a35227',
  'cql-execution/lib/elm/query.js': '1846c3e17b0bd7e8d3ce54d897c1895240432f4cee91312ec413cc20d3346b37',
  'cql-execution/lib/util/comparison.js': '3e680afb5d86ae334dc0502b5b1dfb8626033517fb11b208c15532a511f72da9',
  'cql-execution/lib/util/immutableUtil.js': '5126be18e858927a9bdb4e883f7e6b2fd551611b49b2918bc5e66dbd1753bad9',
  'cql-execution/lib/datatypes/datetime.js': '07dfb62c3eab171cbbf02062b2f0afc0ca3b0c5ad49de7831bf6dac06628a427',
  'cql-execution/lib/datatypes/quantity.js': '036ad9218c609ded8c74fde3229baa3f9a864f3d51f0dd41815aea07f1e97a1d',
};

function packageDir(name) {
  const resolve = name === 'luxon' || name === 'immutable' ? requireFromCql.resolve : require.resolve;
  let dir = path.dirname(resolve(name));
  while (!fs.existsSync(path.join(dir, 'package.json')) || path.basename(dir) === 'lib') dir = path.dirname(dir);
  return dir;
}

const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');

/** Every .js file under cql-execution/lib (the sources speed-up 0 rewrites), by path: its SHA-256. */
function cqlExecutionSources() {
  const lib = path.join(packageDir('cql-execution'), 'lib');
  const sources = new Map();
  for (const name of fs.readdirSync(lib, { recursive: true }).sort()) {
    if (name.endsWith('.js')) sources.set(path.join(lib, name), sha256(fs.readFileSync(path.join(lib, name))));
  }
  return sources;
}
// The digest of cqlExecutionSources() (paths relative to lib/).
const PINNED_SOURCES = 'a932102a5f66f5f8b1e856ba7c56f9fc27d9bd7fa98c9849d03fb270ccf8f09d';
function sourcesDigest(sources) {
  const lib = path.join(packageDir('cql-execution'), 'lib');
  return sha256([...sources].map(([file, sha]) => `${path.relative(lib, file)} ${sha}\n`).join(''));
}

function checkPinned() {
  const problems = [];
  if (sourcesDigest(cqlExecutionSources()) !== PINNED_SOURCES) problems.push('cql-execution/lib changed');
  for (const [name, version] of Object.entries(PINNED_VERSIONS)) {
    const found = JSON.parse(fs.readFileSync(path.join(packageDir(name), 'package.json'), 'utf8')).version;
    if (found !== version) problems.push(`${name} is ${found}, not ${version}`);
  }
  for (const [file, sha] of Object.entries(PINNED_FILES)) {
    const [pkg, ...rest] = file.split('/');
    if (sha256(fs.readFileSync(path.join(packageDir(pkg), ...rest))) !== sha) problems.push(`${file} changed`);
  }
  if (problems.length > 0) {
    throw new Error(`node/speedups.mjs was written for other library code (${problems.join('; ')}): re-check it`);
  }
}

function need(condition, what) {
  if (!condition) throw new Error(`node/speedups.mjs: library internal missing: ${what}`);
}

// Caches that outlive a patient hold values only (never patient objects) and are bounded.
const CACHE_LIMIT = 100000;
function remember(map, key, value) {
  if (map.size >= CACHE_LIMIT) map.clear();
  map.set(key, value);
}

// --- 0. synchronous evaluation ------------------------------------------------------------------
//
// cql-execution 3.x makes every expression node's exec (and execute, execArgs, the query
// clauses, the merge sort's comparisons, value set and record look-ups) an async function: each
// node of each evaluation allocates promises and resumes through the microtask queue, about a
// third of the engine's time. Nothing here ever waits for I/O: the patient's records, the value
// sets and the parameters are in memory, and every data source call answers at once. So the
// library's sources are compiled with `async` and `await` removed and Promise.all(list) read as
// Array.from(list): each function computes the same value and returns it instead of a promise
// of it. The one change of order: the elements of a list selector, the sources of a query and
// the components of a date selector, which Promise.all started together (interleaving at each
// await), are evaluated one after the other. Evaluation has no effects that one element could
// see of another (definitions are cached by name with the same value either way), so values
// are the same; only when several of them fail could a different one of their errors be the
// one reported.

let synchronous = false;

/** A cql-execution source with the same functions, synchronous (checked: nothing async left). */
function synchronousSource(text, file) {
  const out = text.replace(/\bawait\s+/g, '').replace(/\basync\s+(?=[\w(])/g, '').replace(/\bPromise\.all\(/g, 'Array.from(');
  need(!/\b(async|await|Promise)\b/.test(out), `a synchronous form of ${file}`);
  return out;
}

/**
 * Loads cql-execution with every expression evaluated synchronously (speed-up 0) and returns it.
 * Call it before anything loads the library (serve.mjs, before cql-exec-fhir): installSpeedups()
 * needs it. Each source is checked against its pinned hash as it is compiled.
 */
export function loadSynchronousEngine() {
  checkPinned();
  const sources = cqlExecutionSources();
  need(!Object.keys(require.cache).some((f) => sources.has(f)), 'cql-execution not loaded yet');
  const compile = Module.prototype._compile;
  need(typeof compile === 'function', 'Module.prototype._compile');
  const rewritten = new Set();
  Module.prototype._compile = function _compile(content, filename) {
    if (!sources.has(filename)) return compile.call(this, content, filename);
    need(sha256(content) === sources.get(filename), `the pinned text of ${filename}`);
    const text = synchronousSource(content, filename);
    if (text !== content) rewritten.add(filename);
    return compile.call(this, text, filename);
  };
  let cql;
  try {
    cql = require('cql-execution');
  } finally {
    Module.prototype._compile = compile;
  }
  // Every source with async code was loaded (and so rewritten) just now.
  for (const file of sources.keys()) {
    if (/\b(async|await|Promise)\b/.test(fs.readFileSync(file, 'utf8'))) need(rewritten.has(file), `synchronous ${file}`);
  }
  synchronous = true;
  return cql;
}

export function installSpeedups(patientSource, { resourceKey }) {
  need(synchronous, 'cql-execution loaded by loadSynchronousEngine()');
  const cql = require('cql-execution');
  const fhir = installFastFhir(patientSource, cql);
  const memo = installFunctionMemo(fhir, unchangingTest(fhir));
  installFastDistinct(fhir, resourceKey, unchangingTest(fhir, { dateTimesAwayFromEnds: true }));
  installFastDateParse();
  installArithmeticCache();
  installFastAge();
  return {
    /** Start a patient: function results are remembered for one patient only. */
    beginPatient: memo.reset,
    /** The patient cql-execution retrieves from (what PatientSource.currentPatient() gives). */
    patientFor: fhir.patientFor,
    /** The normalized key of a FHIR object made here, or undefined for any other value. */
    fhirKey: fhir.structuralKey,
  };
}

// --- 1. FHIR objects ----------------------------------------------------------------------------
//
// What the library's FHIRObject is to cql-execution, these are too:
//  * prototype chain through FHIRObject.prototype, `constructor` FHIRObject (instanceof, class
//    tests in comparisons), _json/_typeInfo/_modelInfo, getTypeInfo, getCode, _is, ...;
//  * the element accessors (obj.code === obj.get('code')), now inherited instead of own;
//  * get(field): the library's code path for path, choice and primitive handling (ported),
//    returning equal values. Memoised per object: the JSON never changes during an evaluation;
//    lists are handed out as copies and Date/DateTime values as copies (as the library made new
//    ones at each access), so a caller that changes one cannot change what the next one sees.
// Object.keys() of the library's objects lists their elements; two places in cql-execution
// depend on it, and both are served here from the type's element list instead: equals /
// equivalent (comparison.js calls a value's own equals/equivalent method first: the ones below
// are compareObjects/deepCompareKeysAndValues, ported) and the normalized key used for distinct
// (structuralKey, called from serve.mjs's toNormalizedKey).

function installFastFhir(patientSource, cql) {
  const comparison = require('cql-execution/lib/util/comparison');
  const fhirUtil = require('cql-exec-fhir/lib/util');
  need(patientSource._patientSourceOptions?.requireProfileTagging !== true, 'requireProfileTagging is not supported');
  patientSource.reset();
  patientSource.loadBundles([{ resourceType: 'Bundle', entry: [{ resource: { resourceType: 'Patient', id: 'probe' } }] }]);
  const probe = patientSource.currentPatient();
  patientSource.reset();
  const Patient = probe?.constructor;
  const FHIRObject = Patient && Object.getPrototypeOf(Patient.prototype)?.constructor;
  const modelInfo = probe?._modelInfo;
  for (const m of ['get', 'getCode', '_is', '_typeHierarchy', 'getTypeInfo']) need(typeof FHIRObject?.prototype?.[m] === 'function', `FHIRObject.${m}`);
  need(typeof Patient.prototype.findRecords === 'function', 'Patient.findRecords');
  const libraryGetCode = FHIRObject.prototype.getCode;
  need(typeof modelInfo?.findClass === 'function', 'ModelInfo.findClass');
  need(typeof fhirUtil.normalizeChoiceName === 'function', 'normalizeChoiceName');

  // The model info never changes once loaded: its lookups are memoised.
  const libraryFindClass = modelInfo.findClass;
  const classes = new Map();
  modelInfo.findClass = function findClass(klass) {
    let c = classes.get(klass);
    if (c === undefined && !classes.has(klass)) {
      c = libraryFindClass.call(this, klass);
      classes.set(klass, c);
    }
    return c;
  };

  class FastFHIRObject {
    #json;
    #typeInfo;
    #modelInfo;
    #memo = undefined;
    #codes = undefined;
    constructor(json, typeInfo, model) {
      this.#json = json;
      this.#typeInfo = typeInfo;
      this.#modelInfo = model;
    }
    get _json() {
      return this.#json;
    }
    get _typeInfo() {
      return this.#typeInfo;
    }
    get _modelInfo() {
      return this.#modelInfo;
    }
    get(field) {
      const json = this.#json;
      if (json == null) return json;
      if (this.#memo === undefined) this.#memo = new Map();
      let value = this.#memo.get(field);
      if (value === undefined && !this.#memo.has(field)) {
        value = kept(getField(this.#typeInfo, json, field, this.#modelInfo));
        this.#memo.set(field, value);
      }
      return value instanceof Kept ? handOut(value.value) : value;
    }
    // The library's getCode (get(field) as CQL Codes): a retrieve by code or value set calls it
    // on every record, and it made new Codes each time. Remembered per object and field, like
    // get(field); its one caller (Retrieve's filter, elm/external.js) only reads what it gets.
    getCode(field) {
      if (this.#codes === undefined) this.#codes = new Map();
      let code = this.#codes.get(field);
      if (code === undefined && !this.#codes.has(field)) {
        code = kept(libraryGetCode.call(this, field));
        this.#codes.set(field, code);
      }
      return code instanceof Kept ? handOut(code.value) : code;
    }
    getTypeInfo() {
      return this.#typeInfo;
    }
    _typeHierarchy() {
      return hierarchyOf(this.#typeInfo).map((t) => ({ name: t.name, type: t.type }));
    }
    _is(typeSpecifier) {
      return hierarchyOf(this.#typeInfo).some((t) => t.type === typeSpecifier.type && t.name == typeSpecifier.name);
    }
    // comparison.equals(a, b) with a FHIR object a and b not null reaches here; the library
    // would go on to: different [object X] tags -> false, else compareObjects(a, b, equals).
    equals(other) {
      return ({}).toString.call(other) === '[object Object]' && compareObjects(this, other, comparison.equals);
    }
    // comparison.equivalent(a, b): the library would go on to compareObjects(a, b, equivalent).
    equivalent(other) {
      return compareObjects(this, other, comparison.equivalent);
    }
  }
  Object.setPrototypeOf(FastFHIRObject.prototype, FHIRObject.prototype);
  Object.defineProperty(FastFHIRObject.prototype, 'constructor', { value: FHIRObject, writable: true, configurable: true });

  /** Per class: its element names (its own, then each base class's, as the library lists them). */
  const plans = new Map();
  function planOf(typeInfo) {
    let plan = plans.get(typeInfo);
    if (plan !== undefined) return plan;
    const names = new Set();
    for (let info = typeInfo; info != null; ) {
      info.elements.forEach((e) => names.add(e.name));
      info = info.baseTypeSpecifier != null ? modelInfo.findClass(info.baseTypeSpecifier.fqn) : null;
    }
    class Typed extends FastFHIRObject {}
    for (const name of names) {
      Object.defineProperty(Typed.prototype, name, {
        get() {
          return this.get(name);
        },
        enumerable: true,
      });
    }
    Object.defineProperty(Typed.prototype, 'constructor', { value: FHIRObject, writable: true, configurable: true });
    plan = { names: [...names], Typed, fields: new Map(), hierarchy: null };
    plans.set(typeInfo, plan);
    return plan;
  }

  // new FHIRObject(json, typeInfo, modelInfo)
  function wrap(json, typeInfo, model) {
    if (typeInfo == null) {
      console.error(`Failed to locate typeInfo for ${json}`);
      return new FastFHIRObject(json, typeInfo, model);
    }
    return new (planOf(typeInfo).Typed)(json, typeInfo, model);
  }

  function hierarchyOf(typeInfo) {
    if (typeInfo == null) return FHIRObject.prototype._typeHierarchy.call({ getTypeInfo: () => typeInfo });
    const plan = planOf(typeInfo);
    // What FHIRObject.prototype._typeHierarchy computes (from the fixed model info).
    plan.hierarchy ??= FHIRObject.prototype._typeHierarchy.call({ getTypeInfo: () => typeInfo });
    return plan.hierarchy;
  }

  // cql-execution util/comparison.js compareObjects + deepCompareKeysAndValues; keysOf is
  // getKeysFromObject (Object.keys without function values).
  function keysOf(object) {
    const keys = object instanceof FastFHIRObject ? (object._typeInfo == null ? [] : planOf(object._typeInfo).names) : Object.keys(object);
    return keys.filter((k) => !isFunction(object[k]));
  }
  function isFunction(input) {
    return input instanceof Function || {}.toString.call(input) === '[object Function]';
  }
  function compareObjects(a, b, comparisonFunction) {
    if (!(b instanceof a.constructor && a instanceof b.constructor)) return false;
    let finalComparisonResult;
    const aKeys = keysOf(a).sort();
    const bKeys = keysOf(b).sort();
    let shouldReturnNull = false;
    if (aKeys.length === bKeys.length && aKeys.every((value, index) => value === bKeys[index])) {
      finalComparisonResult = aKeys.every((key) => {
        if (a[key] == null && b[key] == null) return true;
        const comparisonResult = comparisonFunction(a[key], b[key]);
        if (comparisonResult === null) {
          shouldReturnNull = true;
          return true;
        }
        return comparisonResult;
      });
    } else {
      finalComparisonResult = false;
    }
    if (finalComparisonResult && shouldReturnNull) return null;
    return finalComparisonResult;
  }

  // immutableUtil.toNormalizedKey's default case for such an object:
  // Seq(obj).map(toNormalizedKey).toMap().set('__instance', toNormalizedKey(obj._typeHierarchy())).
  const { Map: ImmutableMap } = requireFromCql('immutable');
  const immutableUtil = require('cql-execution/lib/util/immutableUtil');
  function structuralKey(value) {
    if (!(value instanceof FastFHIRObject)) return undefined;
    const names = value._typeInfo == null ? [] : planOf(value._typeInfo).names;
    return ImmutableMap(names.map((n) => [n, immutableUtil.toNormalizedKey(value[n])])).set(
      '__instance',
      immutableUtil.toNormalizedKey(value._typeHierarchy()),
    );
  }

  // --- FHIRObject.prototype.get and its helpers, ported from cql-exec-fhir lib/fhir.js --------

  function choicePropertyName(element, choice) {
    const choiceName = fhirUtil.normalizeChoiceName(choice.name);
    return `${element.name}${choiceName[0].toUpperCase()}${choiceName.slice(1)}`;
  }

  // The part of get(field) that depends only on the class and the field.
  function fieldPlan(typeInfo, field) {
    const plan = planOf(typeInfo);
    let fp = plan.fields.get(field);
    if (fp !== undefined) return fp;
    const parts = field.split('.');
    const root = parts[0];
    const suffix = parts.length > 1 ? parts.splice(1).join('.') : undefined;
    const element = typeInfo.findElement(root, true); // true: support explicit choices
    fp = { root, suffix, element, property: undefined, typeSpecifier: undefined, choices: undefined };
    if (typeof element !== 'undefined') {
      if (root !== element.name && element.typeSpecifier.isChoice) {
        // An explicit choice (e.g., medicationCodeableConcept): that choice only.
        fp.property = root;
        fp.typeSpecifier = element.typeSpecifier.choices.find((c) => root === choicePropertyName(element, c));
      } else {
        fp.property = element.name;
        fp.typeSpecifier = element.typeSpecifier;
        if (fp.typeSpecifier.isChoice) {
          fp.choices = fp.typeSpecifier.choices
            .filter((choice) => choice.isNamed)
            .map((choice) => {
              const property = choicePropertyName(element, choice);
              return { property, extra: `_${property}`, choice };
            });
        }
      }
    }
    plan.fields.set(field, fp);
    return fp;
  }

  function getField(typeInfo, json, field, model) {
    if (typeInfo == null) return typeInfo.findElement(field, true); // throws, as the library does
    const fp = fieldPlan(typeInfo, field);
    if (typeof fp.element === 'undefined') {
      console.error(`Failed to locate element for ${typeInfo.name}.${fp.root}`);
      return;
    }
    let property = fp.property;
    let typeSpecifier = fp.typeSpecifier;
    if (fp.choices !== undefined) {
      // The choice present in the data (e.g., 'value' spelled 'valueDateTime' in JSON).
      for (const c of fp.choices) {
        if (json[c.property] != null || json[c.extra] != null) {
          property = c.property;
          typeSpecifier = c.choice;
          break;
        }
      }
    }
    if (typeSpecifier.namespace === 'System') {
      if (fp.suffix != null) {
        console.error(`Traversing into CQL system types isn't supported: ${typeInfo.name}.${fp.root}.${fp.suffix}.`);
        return;
      }
      return toSystemObject(json[property], typeSpecifier.name);
    }
    const data = getPropertyFromJSON(json, property, typeSpecifier, model);
    if (data == null) return data;
    return toFHIRObject(data, typeSpecifier, model, fp.suffix);
  }

  function getPropertyFromJSON(json, property, typeSpecifier, model) {
    const value = json[property];
    const extra = json[`_${property}`];
    if (value == null && extra == null) return json[property];
    // FHIR primitives may have their id and extensions in `_${property}`.
    if (isFHIRPrimitiveOrListOfFHIRPrimitives(typeSpecifier, model)) {
      const valueArr = typeSpecifier.isList && Array.isArray(value) ? [...value] : [value];
      const extraArr = typeSpecifier.isList && Array.isArray(extra) ? [...extra] : [extra];
      while (valueArr.length > extraArr.length) extraArr.push(undefined);
      while (extraArr.length > valueArr.length) valueArr.push(undefined);
      const data = [];
      for (let i = 0; i < valueArr.length; i++) {
        let item = {};
        if (typeof valueArr[i] !== 'undefined') item.value = valueArr[i];
        if (extraArr[i] != null) Object.assign(item, extraArr[i]);
        if (valueArr[i] == null && extraArr[i] == null) item = valueArr[i];
        data.push(item);
      }
      return typeSpecifier.isList ? data : data[0];
    }
    return json[property];
  }

  const primitiveSpecs = new Map(); // a type specifier's answer never changes
  function isFHIRPrimitiveOrListOfFHIRPrimitives(typeSpecifier, model) {
    if (!primitiveSpecs.has(typeSpecifier)) primitiveSpecs.set(typeSpecifier, isPrimitiveSpec(typeSpecifier, model));
    return primitiveSpecs.get(typeSpecifier);
  }
  function isPrimitiveSpec(typeSpecifier, model) {
    if (typeSpecifier.isNamed) {
      if (typeSpecifier.namespace === 'FHIR' && typeSpecifier.name[0].toLowerCase() === typeSpecifier.name[0]) return true;
      // Code elements are classes with a single string 'value' (e.g. Goal's GoalStatus).
      const typeInfo = model.findClass(typeSpecifier.fqn);
      if (typeInfo && typeInfo.baseTypeSpecifier && typeInfo.baseTypeSpecifier.fqn === 'FHIR.Element' && typeInfo.elements.length === 1) {
        const property = typeInfo.findElement('value');
        return property && property.typeSpecifier.fqn === 'System.String';
      }
      return false;
    } else if (typeSpecifier.isList) {
      return isPrimitiveSpec(typeSpecifier.elementType, model);
    }
    return false;
  }

  function toSystemObject(data, name) {
    if (data == null) return data;
    switch (name) {
      case 'Boolean':
      case 'Integer':
      case 'String':
        return data;
      case 'Decimal':
        return cql.Decimal != null && typeof cql.Decimal.from === 'function' ? cql.Decimal.from(data) : data;
      case 'Code':
      case 'Concept':
      case 'Quantity':
        return;
      case 'DateTime':
        return cql.DateTime.parse(data.replace('Z', '+00:00'));
      case 'Date':
        return cql.DateTime.parse(data) != null ? cql.DateTime.parse(data).getDate() : undefined;
      case 'Time': {
        const time = cql.DateTime.parse(`0000-01-01T${data.replace('Z', '+00:00')}`);
        time.timezoneOffset = null;
        return time;
      }
    }
  }

  function toFHIRObject(data, typeSpecifier, model, suffix) {
    if (data == null) return data;
    if (typeSpecifier.isNamed) {
      const rootObject = wrap(data, model.findClass(typeSpecifier.fqn), model);
      if (suffix != null) return rootObject.get(suffix);
      return rootObject;
    } else if (typeSpecifier.isList) {
      if (suffix != null) {
        console.error('List type found in the middle of a path.');
        return;
      }
      return data.map((item) => toFHIRObject(item, typeSpecifier.elementType, model));
    } else if (typeSpecifier.isInterval) {
      return new cql.Interval(
        toFHIRObject(data.low, typeSpecifier.pointType, model),
        toFHIRObject(data.high, typeSpecifier.pointType, model),
        data.lowClosed,
        data.highClosed,
      );
    }
    return;
  }

  // --- the patient --------------------------------------------------------------------------
  // cql-execution uses its patient for findRecords only. Patient.findRecords (ported, without
  // the requireProfileTagging branch, refused above) wraps each resource once per patient and class.
  class FastPatient {
    #records = new Map();
    constructor(bundle, model) {
      const resourceType = model.patientClassName.replace(/^FHIR\./, '');
      // As the library's Patient constructor: the same failure for a Bundle it cannot read.
      const ptEntry = bundle.entry.find((e) => e.resource && e.resource.resourceType == resourceType);
      void ptEntry.resource;
      this._bundle = bundle;
      this._modelInfo = model;
    }
    findRecord(profile, retrieveDetails) {
      const records = this.findRecords(profile, retrieveDetails);
      return records.length > 0 ? records[0] : undefined;
    }
    findRecords(profile, retrieveDetails) {
      const classInfo = this._modelInfo.findClass(retrieveDetails ? retrieveDetails.datatype : profile);
      if (classInfo == null) {
        console.error(`Failed to find type info for ${profile}`);
        return [];
      }
      let records = this.#records.get(classInfo);
      if (records === undefined) {
        const resourceType = classInfo.name.replace(/^FHIR\./, '');
        records = this._bundle.entry
          .filter((e) => e.resource && e.resource.resourceType == resourceType)
          .map((e) => wrap(e.resource, classInfo, this._modelInfo));
        this.#records.set(classInfo, records);
      }
      return records.slice();
    }
  }

  return {
    isFast: (value) => value instanceof FastFHIRObject,
    elementNames: (value) => (value._typeInfo == null ? [] : planOf(value._typeInfo).names),
    structuralKey,
    patientFor: (bundle) => new FastPatient(bundle, modelInfo),
    wrap,
  };
}

/** A remembered list or Date/DateTime, which handOut copies: told apart once, when remembered. */
class Kept {
  constructor(value) {
    this.value = value;
  }
}
function kept(value) {
  if (value == null || typeof value !== 'object') return value;
  return Array.isArray(value) || value.isDateTime || value.isDate ? new Kept(value) : value;
}

/** A value handed out again: lists and dates are copied, as the library made them anew each time. */
function handOut(value) {
  if (value == null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.slice();
  if (value.isDateTime || value.isDate) return value.copy();
  return value;
}

// --- 2. CQL function results, per patient -------------------------------------------------------
//
// A CQL function's result depends only on its arguments (its body sees its operands, its own
// library's definitions and parameters, the patient and the evaluation time, all fixed for the
// patient; see shadowed() for the one way the caller's context can show through), so a call with
// the same function and identical arguments may return the first result. Sharing must not let a later change show: cql-execution changes a value in place only
// in Start/End (a DateTime equal to the minimum/maximum) and Expand (its intervals and its
// `per` quantity). So results and arguments are remembered only when they are made of values
// nothing changes (null, Boolean, Integer, Decimal, String, Date, Code, Concept, FHIR objects,
// and lists and tuples of those); a DateTime result is kept as a private copy and handed out as
// a copy; lists are handed out as copies. FunctionRef.prototype.exec is ported from
// cql-execution elm/reusable.js (synchronous, as speed-up 0 makes it); the only change is the
// memo (and the child context is made only when the body runs). A function that rarely hits
// stops being remembered (no effect on values).

/**
 * Whether a value is made of values nothing changes in place (see above): null, Boolean, Integer,
 * Decimal, String, Date, Code, Concept, FHIR objects, and lists and tuples of those; with
 * dateTimesAwayFromEnds, also DateTimes of the years 3-9997, which Start/End never change (they
 * change one equal to the minimum or maximum DateTime, in the years 1 and 9999).
 */
function unchangingTest(fhir, { dateTimesAwayFromEnds = false } = {}) {
  const { Code, Concept } = require('cql-execution/lib/datatypes/datatypes');
  const { Date: CqlDate, DateTime } = require('cql-execution/lib/datatypes/datetime');
  return function shareable(v, depth = 0) {
    if (v == null || (typeof v !== 'object' && typeof v !== 'function')) return true;
    if (typeof v === 'function' || depth > 8) return false;
    if (fhir.isFast(v)) return true;
    const ctor = v.constructor;
    if (ctor === CqlDate || ctor === Code) return true;
    if (ctor === DateTime) return dateTimesAwayFromEnds && v.year > 2 && v.year < 9998;
    if (ctor === Concept) return Array.isArray(v.codes) && v.codes.every((c) => shareable(c, depth + 1));
    if (ctor === Array) return v.every((x) => shareable(x, depth + 1));
    if (ctor === Object) {
      for (const k in v) if (!shareable(v[k], depth + 1)) return false;
      return true;
    }
    return false;
  };
}

function installFunctionMemo(fhir, shareable) {
  const reusable = require('cql-execution/lib/elm/reusable');
  const { DateTime } = require('cql-execution/lib/datatypes/datetime');
  need(typeof reusable.FunctionRef?.prototype?.exec === 'function', 'FunctionRef.exec');

  // A library's function runs in a child of that library's root context; a function of the
  // caller's own library runs in a child of the caller's context, and cql-execution resolves the
  // names of definitions (and of included libraries, for calls) through the context chain first:
  // a caller's query alias, let or operand of the same name would be found instead. Such a call is
  // not remembered. names(): every name the body, and the definitions and local functions it
  // reaches, may look up that way.
  const { PatientContext } = require('cql-execution/lib/runtime/context');
  need(typeof PatientContext === 'function', 'PatientContext');
  const lookedUp = new WeakMap(); // functionDef -> Set of names
  function names(library, functionDef) {
    let found = lookedUp.get(functionDef);
    if (found !== undefined) return found;
    found = new Set();
    const seen = new Set();
    const visit = (node) => {
      if (node == null || typeof node !== 'object' || seen.has(node)) return;
      seen.add(node);
      if (Array.isArray(node)) return node.forEach(visit);
      if (node instanceof reusable.ExpressionRef && !node.library) {
        found.add(node.name);
        visit(library.expressions?.[node.name]?.expression);
      } else if (node instanceof reusable.FunctionRef) {
        if (node.library) found.add(node.library);
        else (library.getFunction?.(node.name) ?? []).forEach((f) => visit(f.expression));
      } else if (node instanceof reusable.IdentifierRef) {
        found.add(node.name).add(node.name.split('.')[0]);
        if (node.library) found.add(node.library);
      }
      for (const key of Object.keys(node)) visit(node[key]);
    };
    visit(functionDef.expression);
    lookedUp.set(functionDef, found);
    return found;
  }
  function shadowed(ctx, functionDef) {
    let root = ctx;
    while (root != null && !(root instanceof PatientContext)) root = root.parent;
    if (root == null) return true;
    const wanted = names(root.library, functionDef);
    for (let c = ctx; c !== root; c = c.parent) {
      for (const key in c.context_values) if (wanted.has(key)) return true;
    }
    return false;
  }

  const RESULT = Symbol('result');
  const NEGATIVE_ZERO = Symbol('-0');
  let calls = new Map(); // functionDef -> nested Maps keyed by each argument -> RESULT
  const stats = new WeakMap(); // functionDef -> { calls, hits, off }

  reusable.FunctionRef.prototype.exec = function exec(ctx) {
    let functionDefs, libCtx;
    if (this.library) {
      const lib = ctx.get(this.library);
      functionDefs = lib ? lib.getFunction(this.name) : undefined;
      libCtx = ctx.getLibraryContext(this.library);
    } else {
      functionDefs = ctx.getFunction(this.name);
      libCtx = ctx;
    }
    const args = this.execArgs(ctx);
    // Filter out functions w/ wrong number of arguments.
    functionDefs = functionDefs.filter((f) => f.parameters.length === args.length);
    // If there is still > 1 matching function, filter by argument types
    if (functionDefs.length > 1) {
      functionDefs = functionDefs.filter((f) => {
        let match = true;
        for (let i = 0; i < args.length && match; i++) {
          if (args[i] !== null) {
            let operandTypeSpecifier = f.parameters[i].operandTypeSpecifier;
            if (operandTypeSpecifier == null && f.parameters[i].operandType != null) {
              operandTypeSpecifier = { name: f.parameters[i].operandType, type: 'NamedTypeSpecifier' };
            }
            match = ctx.matchesTypeSpecifier(args[i], operandTypeSpecifier);
          }
        }
        return match;
      });
    }
    if (functionDefs.length === 0) throw new Error('no function with matching signature could be found');
    const functionDef = functionDefs[functionDefs.length - 1];

    let st = stats.get(functionDef);
    if (st === undefined) stats.set(functionDef, (st = { calls: 0, hits: 0, off: false }));
    let slot = null;
    if (!st.off && args.every((a) => shareable(a)) && (this.library || !shadowed(ctx, functionDef))) {
      st.calls++;
      slot = calls.get(functionDef);
      if (slot === undefined) calls.set(functionDef, (slot = new Map()));
      for (const a of args) {
        const key = Object.is(a, -0) ? NEGATIVE_ZERO : a; // Map keys do not tell -0 from 0
        let next = slot.get(key);
        if (next === undefined) slot.set(key, (next = new Map()));
        slot = next;
      }
      if (slot.has(RESULT)) {
        st.hits++;
        return handOut(slot.get(RESULT));
      }
      if (st.calls >= 500 && st.hits < st.calls / 20) st.off = true;
    }
    const child_ctx = libCtx ? libCtx.childContext() : undefined;
    for (let i = 0; i < functionDef.parameters.length; i++) child_ctx.set(functionDef.parameters[i].name, args[i]);
    const value = functionDef.expression.execute(child_ctx);
    if (slot !== null) {
      if (value != null && value.constructor === DateTime) slot.set(RESULT, value.copy());
      else if (shareable(value)) slot.set(RESULT, value);
    }
    return Array.isArray(value) && slot !== null && slot.has(RESULT) ? value.slice() : value;
  };
  return {
    reset() {
      calls = new Map();
    },
  };
}

// --- 3. distinct with string keys ------------------------------------------------------------
//
// toDistinctList (elm/list.js) keeps the first of the items whose normalized keys
// (immutableUtil.toNormalizedKey, as serve.mjs extends it) are equal under Immutable.is. Here
// encode(v) is a string with encode(a) === encode(b) exactly when those keys are equal, for the
// values it covers: null, strings, numbers, Booleans, lists, tuples, Codes, Dates, DateTimes,
// point uncertainties, Bundle resources and FHIR objects. A list with any other value is left to
// the library. (Keys by kind: null -> null; primitives -> themselves (is(0, -0), String(-0) is
// '0'); lists -> ordered Lists; tuples -> Map of the own keys + __instance: Object; Code -> Map of
// code/system/version/display; Date/DateTime -> Map of the own fields (a DateTime with another
// offset first converted to UTC); a point uncertainty -> its point's key; a Bundle resource ->
// Map{fhirResource}; a FHIR object -> Map of its elements + __instance: its type hierarchy. The
// tags below keep kinds whose keys can never be equal apart.) A tuple made of values nothing
// changes (the function memo's test, DateTimes away from the minimum and maximum included) keeps
// its encoding: queries over a list of tuples (every drug use, every platelet count) would
// otherwise encode each again at each query.

function installFastDistinct(fhir, resourceKey, unchanging) {
  const list = require('cql-execution/lib/elm/list');
  const { Code, Uncertainty } = require('cql-execution/lib/datatypes/datatypes');
  const { Date: CqlDate, DateTime } = require('cql-execution/lib/datatypes/datetime');
  const libraryDistinct = list.toDistinctList;
  need(typeof libraryDistinct === 'function', 'toDistinctList');

  // A tuple-like object's own keys (sorted) with their encodings; undefined if one fails.
  function encodeFields(tag, object, keys) {
    keys.sort();
    let out = tag;
    for (const k of keys) {
      const e = encode(object[k]);
      if (e === undefined) return undefined;
      out += `${JSON.stringify(k)}:${e},`;
    }
    return `${out}}`;
  }

  // A FHIR object's encoding, per object (its data does not change) and, for what depends only on
  // its class, per class.
  const fhirCodes = new WeakMap();
  const tupleCodes = new WeakMap();
  const classParts = new Map();
  function encodeFhir(v) {
    const typeInfo = v._typeInfo;
    let parts = classParts.get(typeInfo);
    if (parts === undefined) {
      const names = fhir.elementNames(v).slice().sort();
      const hierarchy = encode(v._typeHierarchy());
      parts = names.includes('__instance') || hierarchy === undefined ? null : { names, quoted: names.map((n) => JSON.stringify(n)), hierarchy };
      classParts.set(typeInfo, parts);
    }
    if (parts === null) return undefined;
    let out = 'F{';
    for (let i = 0; i < parts.names.length; i++) {
      const e = encode(v[parts.names[i]]);
      if (e === undefined) return undefined;
      out += `${parts.quoted[i]}:${e},`;
    }
    return `${out}}${parts.hierarchy}`;
  }

  const utcCodes = new Map(); // a DateTime's fields -> the encoding of its UTC conversion
  function encodeDateTime(v) {
    if (Object.getOwnPropertySymbols(v).length > 0) return undefined;
    if (typeof v.timezoneOffset !== 'number' || v.timezoneOffset === 0) return encodeFields('T{', v, Object.keys(v));
    if (Object.keys(v).length !== 8) return undefined;
    const fields = `${v.year}|${v.month}|${v.day}|${v.hour}|${v.minute}|${v.second}|${v.millisecond}|${v.timezoneOffset}`;
    let e = utcCodes.get(fields);
    if (e === undefined) {
      const n = v.convertToTimezoneOffset(0);
      e = Object.getOwnPropertySymbols(n).length > 0 ? null : (encodeFields('T{', n, Object.keys(n)) ?? null);
      remember(utcCodes, fields, e);
    }
    return e ?? undefined;
  }

  function encode(v) {
    if (v == null) return 'z';
    switch (typeof v) {
      case 'string':
        return JSON.stringify(v);
      case 'number':
        return `n${v}`;
      case 'boolean':
        return v ? 't' : 'f';
      case 'object':
        break;
      default:
        return undefined;
    }
    const rk = resourceKey(v);
    if (rk != null) return `R${JSON.stringify(rk)}`;
    if (fhir.isFast(v)) {
      let e = fhirCodes.get(v);
      if (e === undefined) fhirCodes.set(v, (e = encodeFhir(v) ?? null));
      return e ?? undefined;
    }
    const ctor = v.constructor;
    if (ctor === Array) {
      let out = 'L[';
      for (const item of v) {
        const e = encode(item);
        if (e === undefined) return undefined;
        out += `${e},`;
      }
      return `${out}]`;
    }
    if (ctor === Object) {
      let e = tupleCodes.get(v);
      if (e !== undefined) return e;
      const keys = Object.keys(v);
      // '__instance' would be overwritten in the key, '_typeHierarchy' would be called.
      if (keys.includes('__instance') || keys.includes('_typeHierarchy') || Object.getOwnPropertySymbols(v).length > 0) return undefined;
      e = encodeFields('U{', v, keys);
      if (e !== undefined && unchanging(v)) tupleCodes.set(v, e);
      return e;
    }
    if (ctor === Code) {
      const parts = [v.code, v.system, v.version, v.display].map(encode);
      return parts.includes(undefined) ? undefined : `C(${parts.join(',')})`;
    }
    if (ctor === CqlDate) {
      return Object.getOwnPropertySymbols(v).length > 0 ? undefined : encodeFields('D{', v, Object.keys(v));
    }
    if (ctor === DateTime) return encodeDateTime(v);
    if (ctor === Uncertainty && v.isPoint()) return encode(v.low);
    return undefined;
  }

  list.toDistinctList = function toDistinctList(items) {
    if (items.length === 0) return [];
    if (items.length === 1) return encode(items[0]) === undefined ? libraryDistinct(items) : [items[0]];
    const keys = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      if ((keys[i] = encode(items[i])) === undefined) return libraryDistinct(items);
    }
    const seen = new Set();
    const distinct = [];
    for (let i = 0; i < items.length; i++) {
      if (!seen.has(keys[i])) {
        seen.add(keys[i]);
        distinct.push(items[i]);
      }
    }
    return distinct;
  };
}

// --- 4. date parsing ---------------------------------------------------------------------------
//
// DateTime.parse and Date.parse (datatypes/datetime.js), ported. They check a string with
// luxon's DateTime.fromFormat(...).isValid (~20-60 us); that check is skipped when checkedValid()
// proves the string valid (tested against luxon over ~350k strings and several time zones).
// Everything else, including every string that may be invalid, still goes to luxon.

function installFastDateParse() {
  const util = require('cql-execution/lib/util/util');
  const luxon = requireFromCql('luxon');
  const { DateTime, Date: CqlDate } = require('cql-execution/lib/datatypes/datetime');
  const { normalizeMillisecondsField, normalizeMillisecondsFieldInString } = util;
  need(typeof normalizeMillisecondsField === 'function' && typeof normalizeMillisecondsFieldInString === 'function', 'normalizeMilliseconds*');
  need(typeof luxon.DateTime?.fromFormat === 'function', 'luxon DateTime.fromFormat');

  const DATE_FORMATS = new Map([[4, 'yyyy'], [7, 'yyyy-MM'], [10, 'yyyy-MM-dd']]);
  const DATETIME_FORMATS = new Map();
  for (const [format, example] of Object.entries({
    yyyy: '2012',
    'yyyy-MM': '2012-01',
    'yyyy-MM-dd': '2012-01-31',
    "yyyy-MM-dd'T''Z'": '2012-01-31TZ',
    "yyyy-MM-dd'T'ZZ": '2012-01-31T-04:00',
    "yyyy-MM-dd'T'HH": '2012-01-31T12',
    "yyyy-MM-dd'T'HH'Z'": '2012-01-31T12Z',
    "yyyy-MM-dd'T'HHZZ": '2012-01-31T12-04:00',
    "yyyy-MM-dd'T'HH:mm": '2012-01-31T12:30',
    "yyyy-MM-dd'T'HH:mm'Z'": '2012-01-31T12:30Z',
    "yyyy-MM-dd'T'HH:mmZZ": '2012-01-31T12:30-04:00',
    "yyyy-MM-dd'T'HH:mm:ss": '2012-01-31T12:30:59',
    "yyyy-MM-dd'T'HH:mm:ss'Z'": '2012-01-31T12:30:59Z',
    "yyyy-MM-dd'T'HH:mm:ssZZ": '2012-01-31T12:30:59-04:00',
    "yyyy-MM-dd'T'HH:mm:ss.SSS": '2012-01-31T12:30:59.000',
    "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'": '2012-01-31T12:30:59.000Z',
    "yyyy-MM-dd'T'HH:mm:ss.SSSZZ": '2012-01-31T12:30:59.000-04:00',
  })) {
    if (!DATETIME_FORMATS.has(example.length)) DATETIME_FORMATS.set(example.length, []);
    DATETIME_FORMATS.get(example.length).push(format);
  }
  function isValidDateStringFormat(string) {
    if (typeof string !== 'string') return false;
    if (checkedValid(string, false)) return true;
    const format = DATE_FORMATS.get(string.length);
    if (format == null) return false;
    return luxon.DateTime.fromFormat(string, format).isValid;
  }
  function isValidDateTimeStringFormat(string) {
    if (typeof string !== 'string') return false;
    // Luxon doesn't support +hh offset, so change it to +hh:00
    if (/T[\d:.]*[+-]\d{2}$/.test(string)) string += ':00';
    if (checkedValid(string, true)) return true;
    const formats = DATETIME_FORMATS.get(string.length);
    if (formats == null) return false;
    return formats.some((fmt) => luxon.DateTime.fromFormat(string, fmt).isValid);
  }

  DateTime.parse = function parse(string) {
    if (string === null) return null;
    const matches = /(\d{4})(-(\d{2}))?(-(\d{2}))?(T((\d{2})(:(\d{2})(:(\d{2})(\.(\d+))?)?)?)?(Z|(([+-])(\d{2})(:?(\d{2}))?))?)?/.exec(string);
    if (matches == null) return null;
    const years = matches[1];
    const months = matches[3];
    const days = matches[5];
    const hours = matches[8];
    const minutes = matches[10];
    const seconds = matches[12];
    let milliseconds = matches[14];
    if (milliseconds != null) milliseconds = normalizeMillisecondsField(milliseconds);
    if (milliseconds != null) string = normalizeMillisecondsFieldInString(string, matches[14]);
    if (!isValidDateTimeStringFormat(string)) return null;
    const args = [years, months, days, hours, minutes, seconds, milliseconds].map((arg) => (arg != null ? parseInt(arg) : arg));
    if (matches[18] != null) {
      const num = parseInt(matches[18]) + (matches[20] != null ? parseInt(matches[20]) / 60 : 0);
      args.push(matches[17] === '+' ? num : num * -1);
    } else if (matches[15] === 'Z') {
      args.push(0);
    }
    return new DateTime(...args);
  };
  CqlDate.parse = function parse(string) {
    if (string === null) return null;
    const matches = /(\d{4})(-(\d{2}))?(-(\d{2}))?/.exec(string);
    if (matches == null) return null;
    const years = matches[1];
    const months = matches[3];
    const days = matches[5];
    if (!isValidDateStringFormat(string)) return null;
    const args = [years, months, days].map((arg) => (arg != null ? parseInt(arg) : arg));
    return new CqlDate(...args);
  };
}

// Whether luxon certainly accepts the string in the cql-execution format of its shape: the whole
// string is YYYY[-MM[-DD]] or YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm], year 1-9999, month 1-12,
// day within the month (Gregorian), hour 0-23, minute and second 0-59, offset up to ±14:59.
const STRICT_DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
const STRICT_DATETIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{3})?)?(?:Z|[+-](\d{2}):(\d{2}))?$/;
function daysIn(y, m) {
  if (m === 2) return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28;
  return [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1];
}
function checkedValid(string, allowTime) {
  let m = STRICT_DATE.exec(string);
  if (m !== null) {
    const y = +m[1];
    if (y < 1) return false;
    if (m[2] === undefined) return true;
    const mo = +m[2];
    if (mo < 1 || mo > 12) return false;
    return m[3] === undefined || (+m[3] >= 1 && +m[3] <= daysIn(y, mo));
  }
  if (!allowTime) return false;
  m = STRICT_DATETIME.exec(string);
  if (m === null) return false;
  const [y, mo, d] = [+m[1], +m[2], +m[3]];
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > daysIn(y, mo)) return false;
  if (+m[4] > 23 || +m[5] > 59 || (m[6] !== undefined && +m[6] > 59)) return false;
  return m[7] === undefined || (+m[7] <= 14 && +m[8] <= 59);
}

// --- 5. arithmetic on dates and quantities -----------------------------------------------------
//
// doMultiplication, doSubtraction and doAddition (datatypes/quantity.js; elm/arithmetic.js calls
// them through the module's exports) are pure functions of their operands' values (UCUM
// conversions, luxon date math on fixed offsets). For Integer/Decimal, Quantity, Date and
// DateTime-with-offset operands they are remembered by value and each caller gets a new copy of
// the result. (A DateTime without an offset is shifted by the process's current offset: not
// remembered.)

function installArithmeticCache() {
  const quantity = require('cql-execution/lib/datatypes/quantity');
  const { DateTime, Date: CqlDate } = require('cql-execution/lib/datatypes/datetime');
  const { Quantity } = quantity;
  const num = (n) => (Object.is(n, -0) ? '-0' : String(n));
  function keyOf(v) {
    if (typeof v === 'number') return `n${num(v)}`;
    if (v == null || typeof v !== 'object') return undefined;
    if (v.constructor === Quantity && typeof v.value === 'number' && typeof v.unit === 'string') return `q${num(v.value)}|${v.unit}`;
    if (v.constructor === CqlDate) return `d${v.year}|${v.month}|${v.day}`;
    if (v.constructor === DateTime && typeof v.timezoneOffset === 'number') {
      return `t${v.year}|${v.month}|${v.day}|${v.hour}|${v.minute}|${v.second}|${v.millisecond}|${v.timezoneOffset}`;
    }
    return undefined;
  }
  function copyOf(r) {
    if (r == null) return r;
    if (r.constructor === Quantity) return new Quantity(r.value, r.unit);
    if (r.constructor === CqlDate || r.constructor === DateTime) return r.copy();
    return undefined;
  }
  const results = new Map();
  for (const name of ['doMultiplication', 'doSubtraction', 'doAddition']) {
    const original = quantity[name];
    need(typeof original === 'function', name);
    quantity[name] = function (a, b) {
      const ka = keyOf(a);
      const kb = ka === undefined ? undefined : keyOf(b);
      if (kb === undefined) return original(a, b);
      const key = `${name}|${ka}|${kb}`;
      let result = results.get(key);
      if (result === undefined) {
        result = original(a, b);
        if (copyOf(result) === undefined) return result; // another kind of result: not remembered
        remember(results, key, result);
      }
      return copyOf(result);
    };
  }
}

// --- 6. age in years ---------------------------------------------------------------------------
//
// Date.durationBetween(other, 'year') (datatypes/datetime.js) is luxon's diff in years of the two
// dates' UTC midnights, truncated: for two fully specified dates that is the number of whole
// years from the earlier to the later, adding years with the day clamped to the month's length
// (29 Feb + 1 year = 28 Feb), negated (as ceil, so -0 under one year) when `other` is earlier.
// Tested equal (Object.is) to the library over ~450k pairs, month ends and 29 Feb included.
// Other units, partial dates and DateTimes still go to the library.

function installFastAge() {
  const { Date: CqlDate } = require('cql-execution/lib/datatypes/datetime');
  const { Uncertainty } = require('cql-execution/lib/datatypes/uncertainty');
  const libraryDurationBetween = CqlDate.prototype.durationBetween;
  need(typeof libraryDurationBetween === 'function', 'Date.durationBetween');
  const fullDate = (d) =>
    d != null && d.constructor === CqlDate && Number.isInteger(d.year) && d.year >= 1000 && d.year <= 9999 &&
    Number.isInteger(d.month) && d.month >= 1 && d.month <= 12 && Number.isInteger(d.day) && d.day >= 1 && d.day <= daysIn(d.year, d.month);
  const cmp = (a, b) => a.year - b.year || a.month - b.month || a.day - b.day;
  CqlDate.prototype.durationBetween = function durationBetween(other, unitField) {
    if (unitField !== 'year' || !fullDate(this) || !fullDate(other)) return libraryDurationBetween.call(this, other, unitField);
    // other.diff(this, 'years'): luxon measures from the earlier to the later.
    const otherIsLater = cmp(this, other) > 0;
    const earlier = otherIsLater ? other : this;
    const later = otherIsLater ? this : other;
    const year = later.year;
    const reached = { year, month: earlier.month, day: Math.min(earlier.day, daysIn(year, earlier.month)) };
    const whole = later.year - earlier.year - (cmp(reached, later) > 0 ? 1 : 0);
    const years = otherIsLater ? -whole : whole;
    return new Uncertainty(years, years);
  };
}

// For tests (tests/unit/test_cql_engine.py): the pure helpers, to compare with the libraries.
export const _internals = { checkedValid };
