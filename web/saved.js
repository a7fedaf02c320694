// What a page reload keeps: the name signed in with, the open tabs and the one in view, in
// sessionStorage (one browser tab's lifetime). Never the password: a registered name signs in
// again only when the user types it.

const KEY = 'parley.session';

/** The saved {name, tabs, current}, or null. */
export function load() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY));
    if (!saved || typeof saved.name !== 'string' || !saved.name) return null;
    return {
      name: saved.name,
      tabs: Array.isArray(saved.tabs) ? saved.tabs.filter((tab) => typeof tab === 'string') : [],
      current: typeof saved.current === 'string' ? saved.current : null,
    };
  } catch {
    return null;
  }
}

export function save(name, { tabs, current }) {
  try {
    sessionStorage.setItem(KEY, JSON.stringify({ name, tabs, current }));
  } catch {
    // Storage full or disabled: a reload will then ask for the name again.
  }
}

export function forget() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Nothing to forget.
  }
}
