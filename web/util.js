// Small helpers shared by the other modules: building DOM nodes without HTML strings,
// formatting times and sizes for people, and the colour each user name gets.
//
// Everything that comes from the server (names, messages, file names) reaches the page through
// `h()`, which only ever creates text nodes for strings: nothing is ever parsed as HTML.

/**
 * Creates an element. `props` become attributes (`class` included); `false`, `null` and
 * `undefined` values are skipped, `true` sets an empty attribute. Children are nodes or
 * strings, strings becoming text nodes; null children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === false || value === null || value === undefined) continue;
    el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

/** Lower-cases ASCII only, as the server compares names (protocol section 4.6). */
export function fold(name) {
  return name.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** Orders user names as the server does: ASCII-lower-cased, in byte order. */
export function compareNames(a, b) {
  const x = fold(a);
  const y = fold(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * A stable hue (0-359) for a user name: FNV-1a over the lower-cased name, so that `Bob` and
 * `bob`, who cannot be online at the same time, look the same.
 */
export function hueOf(name) {
  let hash = 0x811c9dc5;
  for (const ch of fold(name)) {
    hash ^= ch.charCodeAt(0);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % 360;
}

/**
 * Gives `el` the colour of `name`. The hue goes into a custom property and the stylesheet's
 * `.painted` rule turns it into a colour of fixed perceived lightness for each colour scheme,
 * which is what keeps every name readable on both backgrounds. (CSSOM writes are allowed by
 * the page's CSP; style attributes written as HTML would not be.)
 */
export function paint(el, name) {
  el.style.setProperty('--hue', String(hueOf(name)));
  el.classList.add('painted');
  return el;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hour12: false });
const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const shortDate = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

/** A `<time>` showing HH:MM, with the full date in its title (ts in ms since the epoch). */
export function timeElement(ts, className) {
  const date = new Date(ts);
  return h('time', { class: className, datetime: date.toISOString(), title: fullDate.format(date) },
    clock.format(date));
}

/** HH:MM for today, the date for older days: short enough for the file list. */
export function timeOrDate(ts) {
  const date = new Date(ts);
  const today = new Date();
  return date.toDateString() === today.toDateString() ? clock.format(date) : shortDate.format(date);
}

export function fullDateOf(ts) {
  return fullDate.format(new Date(ts));
}

/** Human readable size, in powers of 1,024 written KB, MB... as people usually read them. */
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB', 'PB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** Length of `text` in UTF-8 bytes: the unit of the server's `max_text`. */
export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/** The download address of a shared file: each path segment percent-encoded on its own. */
export function fileHref(path) {
  return '/files/' + path.split('/').filter(Boolean).map(encodeURIComponent).join('/');
}

/** Joins a folder and a name the way the server writes paths ("" is the top folder). */
export function joinPath(folder, name) {
  return folder ? `${folder}/${name}` : name;
}
