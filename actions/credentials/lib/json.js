'use strict';
// Strict JSON for the broker's answers: JSON.parse keeps the last of two equal keys, so a proxy or a
// confused server could make two readers disagree about which value is the credential. This parser
// refuses duplicate keys, nesting deeper than 16 and anything after the document; otherwise it is
// RFC 8259 (strings, numbers, literals, arrays, objects).

const MAX_DEPTH = 16;

class JsonError extends Error {}

function parse(text) {
  let at = 0;

  function fail(what) {
    throw new JsonError(`${what} at offset ${at}`);
  }

  function space() {
    while (at < text.length && ' \t\n\r'.includes(text[at])) at += 1;
  }

  function string() {
    const match = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(at));
    if (!match) fail('bad string');
    at += match[0].length;
    return JSON.parse(match[0]);
  }

  function number() {
    const match = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?/.exec(text.slice(at, at + 64));
    if (!match) fail('unexpected character');
    at += match[0].length;
    return Number(match[0]);
  }

  function value(depth) {
    if (depth > MAX_DEPTH) fail('nested too deeply');
    space();
    const c = text[at];
    if (c === '{') return object(depth + 1);
    if (c === '[') return array(depth + 1);
    if (c === '"') return string();
    for (const [word, result] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return result;
      }
    }
    return number();
  }

  function object(depth) {
    const out = Object.create(null);
    at += 1;
    space();
    if (text[at] === '}') {
      at += 1;
      return out;
    }
    for (;;) {
      space();
      if (text[at] !== '"') fail('expected a key');
      const key = string();
      if (Object.prototype.hasOwnProperty.call(out, key)) fail('duplicate key');
      space();
      if (text[at] !== ':') fail('expected a colon');
      at += 1;
      out[key] = value(depth);
      space();
      const c = text[at];
      at += 1;
      if (c === '}') return out;
      if (c !== ',') fail('expected a comma or a closing brace');
    }
  }

  function array(depth) {
    const out = [];
    at += 1;
    space();
    if (text[at] === ']') {
      at += 1;
      return out;
    }
    for (;;) {
      out.push(value(depth));
      space();
      const c = text[at];
      at += 1;
      if (c === ']') return out;
      if (c !== ',') fail('expected a comma or a closing bracket');
    }
  }

  const result = value(0);
  space();
  if (at !== text.length) fail('trailing data');
  return result;
}

module.exports = { parse, JsonError };
