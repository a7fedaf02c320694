// The page's entry point: finds the elements of index.html, wires the session to the chat, the
// online list and the file panel, and runs what belongs to the page as a whole: the sign-in
// screen, the header (status, name, sign-out) and the side panels that fold away on narrow
// screens.

import { Session } from './session.js';
import { Chat, sharedParts } from './chat.js';
import { People } from './people.js';
import { Files } from './files.js';
import * as saved from './saved.js';
import { fold } from './util.js';

const $ = (id) => document.getElementById(id);

const screens = { signin: $('signin'), main: $('main'), account: $('account') };
const form = {
  form: $('signin-form'),
  name: $('signin-name'),
  password: $('signin-password'),
  submit: $('signin-submit'),
  error: $('signin-error'),
};
const status = { root: $('status'), text: $('status-text'), detail: $('status-detail') };

// True between a Welcome and sign-out (or a refusal that ends the session): while it is,
// the open tabs are saved for a reload.
let signedIn = false;
// Tabs to restore at the next sign-in under the same name: from sessionStorage after a reload,
// or from a session the server ended, should the user sign in again.
let plan = null;

const session = new Session({
  onStatus(state, text, detail) {
    status.root.dataset.state = state;
    status.text.textContent = text;
    status.detail.textContent = detail;
  },
  onWelcome(welcome, { reconnected }) {
    signedIn = true;
    const restore = !reconnected && plan && fold(plan.name) === fold(welcome.name) ? plan : null;
    plan = null;
    const arriving = showMain(welcome.name);
    chat.start(welcome, { reconnected, plan: restore });
    people.start(welcome);
    files.start();
    if (arriving) $('composer-input').focus();
  },
  onEvent(event) {
    chat.handle(event);
    people.handle(event);
    files.handle(event);
  },
  onLost() {
    chat.lost();
    people.stop();
  },
  onEnded({ message, code, name }) {
    if (signedIn) plan = { name, ...chat.snapshot() };
    signedIn = false;
    chat.reset();
    people.clear();
    files.reset();
    showSignin(name, message, code === 'auth_failed');
  },
});

const chat = new Chat(session, {
  tabs: $('tabs'),
  title: $('conversation-title'),
  timeline: $('timeline'),
  timelineSlot: $('timeline-slot'),
  timelineStart: $('timeline-start'),
  timelineEmpty: $('timeline-empty'),
  loadEarlier: $('load-earlier'),
  composerForm: $('composer'),
  composerInput: $('composer-input'),
  composerSend: $('composer-send'),
  composerNote: $('composer-note'),
  joinForm: $('join-form'),
  joinInput: $('join-room'),
  joinError: $('join-error'),
  partButton: $('part-room'),
}, {
  onChange(snapshot) {
    if (signedIn) saved.save(session.name, snapshot);
  },
  onMembers(names) {
    people.add(names);
  },
});

const people = new People(session, { list: $('online'), count: $('online-count') }, (name) => {
  panels.closeAll();
  chat.openPrivate(name);
});

const files = new Files(session, {
  panel: $('files'),
  path: $('files-path'),
  list: $('files-list'),
  summary: $('files-summary'),
  error: $('files-error'),
  input: $('upload-input'),
  uploads: $('uploads'),
  refresh: $('files-refresh'),
  announce: $('files-announce'),
}, ({ path, size }) => chat.noticeInView(sharedParts(session.name, path, size), 'shared'));

/**
 * The online list and the file panel: columns beside the chat on wide screens, panels over it on
 * narrow ones, opened by their toggle and closed by it, by their × button or by Escape. On wide
 * screens a toggle only moves the focus into its column, which is always shown.
 */
const panels = (() => {
  const narrow = matchMedia('(max-width: 899px)');
  const all = [
    { panel: $('people'), toggle: $('online-toggle') },
    { panel: $('files'), toggle: $('files-toggle') },
  ];
  const sync = () => {
    for (const { panel, toggle } of all) {
      toggle.setAttribute('aria-expanded', String(!narrow.matches || panel.classList.contains('open')));
    }
  };
  const close = (entry, refocus) => {
    entry.panel.classList.remove('open');
    sync();
    if (refocus) entry.toggle.focus();
  };
  for (const entry of all) {
    entry.toggle.addEventListener('click', () => {
      const opening = !narrow.matches || !entry.panel.classList.contains('open');
      for (const other of all) if (other !== entry) other.panel.classList.remove('open');
      entry.panel.classList.toggle('open', opening);
      sync();
      if (opening) entry.panel.querySelector('h2').focus();
    });
    entry.panel.querySelector('.panel-close').addEventListener('click', () => close(entry, true));
  }
  // On narrow screens a click outside the open panel (on the dimmed chat) closes it.
  document.addEventListener('click', (e) => {
    if (!narrow.matches) return;
    for (const entry of all) {
      // The path as dispatched: a button that removed itself is no longer in the panel.
      const path = e.composedPath();
      const inside = path.includes(entry.panel) || path.includes(entry.toggle);
      if (entry.panel.classList.contains('open') && !inside) close(entry, false);
    }
  });
  narrow.addEventListener('change', sync);
  sync();
  return {
    /** Closes the open panel, if any; returns whether there was one. */
    closeOpen() {
      const open = narrow.matches ? all.find((entry) => entry.panel.classList.contains('open')) : null;
      if (open) close(open, true);
      return Boolean(open);
    },
    closeAll() {
      for (const entry of all) entry.panel.classList.remove('open');
      sync();
    },
  };
})();

form.form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = form.name.value.trim();
  if (!name) {
    showError('Enter a name to sign in.');
    form.name.focus();
    return;
  }
  showError('');
  form.submit.disabled = true;
  try {
    await session.signIn(name, form.password.value);
  } finally {
    form.submit.disabled = false;
  }
});

$('signout').addEventListener('click', () => {
  const name = session.name;
  signedIn = false;
  plan = null;
  saved.forget();
  chat.reset();
  people.clear();
  files.reset();
  panels.closeAll();
  session.signOut();
  showSignin(name, '', false);
});

// Every download link (file list, shared notices) has the server renew the download cookie
// before the browser follows it (see Session.authorize); the link is then clicked again.
document.addEventListener('click', async (e) => {
  const link = e.target.closest?.('a[href^="/files/"]');
  if (!link || link.dataset.authorized) return;
  e.preventDefault();
  await session.authorize();
  link.dataset.authorized = 'yes';
  link.click();
  delete link.dataset.authorized;
}, true);
// A middle click opens the link at once: the renewal can only race it.
document.addEventListener('auxclick', (e) => {
  if (e.target.closest?.('a[href^="/files/"]')) session.authorize();
}, true);

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && panels.closeOpen()) e.preventDefault();
});

// Back online after the browser lost the network: try now rather than at the end of the wait.
window.addEventListener('online', () => session.retryNow());

/** Shows the chat screen; returns whether it was hidden until now. */
function showMain(name) {
  $('me').textContent = name;
  form.password.value = '';
  showError('');
  const arriving = screens.main.hidden;
  screens.signin.hidden = true;
  screens.main.hidden = false;
  screens.account.hidden = false;
  return arriving;
}

function showSignin(name, error, askPassword) {
  screens.main.hidden = true;
  screens.account.hidden = true;
  screens.signin.hidden = false;
  form.name.value = name ?? '';
  form.password.value = '';
  showError(error);
  (askPassword ? form.password : form.name).focus();
}

function showError(text) {
  form.error.textContent = text;
  form.error.hidden = !text;
}

// A reload signs in again under the saved name, and brings back its tabs.
const kept = saved.load();
if (kept) {
  plan = kept;
  form.name.value = kept.name;
  session.signIn(kept.name, null, true);
} else {
  form.name.focus();
}
