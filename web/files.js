// The file panel: browsing the shared folder with the `list` request (protocol section 5.10),
// downloading with plain links to /files/..., and uploading over HTTP, several files at once,
// each with its progress, a Cancel button and its outcome.
//
// Files move over HTTP rather than as data frames on the socket: the browser streams them from
// and to disk, shows its own download progress, and an upload is a single XMLHttpRequest whose
// progress events and abort() are exactly what the upload list needs. The session's token
// authorizes both: in a header for an upload, in the cookie the server sets for a download
// (session.js).

import { h, paint, formatSize, timeOrDate, fullDateOf, fileHref, joinPath } from './util.js';

/** Delay before re-listing after a `shared` event, so that a burst of shares lists once. */
const SHARED_SETTLE_MS = 300;
/**
 * Uploads sent at once; the others wait their turn. The server runs at most 8 transfers per
 * session (protocol section 15.2) and refuses the ninth, which over HTTP/2 (no six-connection
 * limit per host) a drop of many files would otherwise reach.
 */
const PARALLEL_UPLOADS = 4;

export class Files {
  /**
   * els: {panel, path, list, summary, error, input, uploads, refresh, announce}.
   * onUploaded({path, name, size}) after each upload of ours: the server tells everyone else.
   */
  constructor(session, els, onUploaded) {
    this.session = session;
    this.els = els;
    this.onUploaded = onUploaded;
    this.folder = '';
    // Each listing request gets a number; only the latest may show its answer.
    this.listing = 0;
    // Uploads not finished; `waiting` holds those not yet sent, in order.
    this.uploads = new Set();
    this.waiting = [];
    this.running = 0;
    this.settle = null;
    this.wire();
  }

  wire() {
    const { panel, input, refresh, list, path } = this.els;
    input.addEventListener('change', () => {
      this.upload([...input.files]);
      input.value = '';
    });
    refresh.addEventListener('click', () => this.open(this.folder));
    list.addEventListener('click', (e) => {
      const button = e.target.closest('button.open');
      if (button) this.open(joinPath(this.folder, button.closest('.entry').dataset.name), true);
    });
    path.addEventListener('click', (e) => {
      const button = e.target.closest('button[data-folder]');
      if (button) this.open(button.dataset.folder, true);
    });

    // The whole panel takes dropped files; `dragging` marks it while files are over it.
    let depth = 0;
    const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes('Files');
    panel.addEventListener('dragenter', (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      depth += 1;
      panel.classList.add('dragging');
    });
    panel.addEventListener('dragover', (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    panel.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) panel.classList.remove('dragging');
    });
    panel.addEventListener('drop', (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      depth = 0;
      panel.classList.remove('dragging');
      this.upload([...e.dataTransfer.files]);
    });
    // A file dropped anywhere else would make the browser leave the page to show it.
    for (const type of ['dragover', 'drop']) {
      window.addEventListener(type, (e) => {
        if (carriesFiles(e) && !panel.contains(e.target)) e.preventDefault();
      });
    }
  }

  /** Signed in (again): show the folder we were in. */
  start() {
    this.open(this.folder);
  }

  /** Signed out: stop every upload and forget the listing. */
  reset() {
    this.waiting = [];
    for (const upload of this.uploads) upload.xhr.abort();
    this.uploads.clear();
    this.running = 0;
    this.els.uploads.replaceChildren();
    this.folder = '';
    this.listing += 1;
    this.els.list.replaceChildren();
    this.els.path.replaceChildren();
    this.els.summary.textContent = '';
    this.els.error.textContent = '';
  }

  handle(event) {
    // Someone else's upload: re-list if it landed in the folder on screen.
    if (event.type !== 'shared') return;
    const slash = event.path.lastIndexOf('/');
    const folder = slash > 0 ? event.path.slice(0, slash) : '';
    if (folder !== this.folder) return;
    clearTimeout(this.settle);
    this.settle = setTimeout(() => this.open(this.folder), SHARED_SETTLE_MS);
  }

  /** Lists `folder` ("" is the top). `focus` moves the keyboard focus into the new listing. */
  async open(folder, focus = false) {
    const ticket = ++this.listing;
    this.els.panel.setAttribute('aria-busy', 'true');
    try {
      const result = await this.session.request('list', { path: folder });
      if (ticket !== this.listing) return;
      this.folder = result.path;
      this.els.error.textContent = '';
      this.render(result);
      if (focus) this.els.path.querySelector('[aria-current]')?.focus();
    } catch (err) {
      if (ticket !== this.listing) return;
      this.els.error.textContent = err.message;
      // A folder that went away: show where we were trying to go, so the breadcrumb leads back.
      this.folder = folder;
      this.renderPath();
    } finally {
      if (ticket === this.listing) this.els.panel.removeAttribute('aria-busy');
    }
  }

  render(result) {
    this.renderPath();
    const entries = result.entries ?? [];
    const items = entries.map((entry) => (entry.folder ? this.folderItem(entry) : this.fileItem(entry)));
    if (items.length === 0) items.push(h('li', { class: 'empty' }, 'This folder is empty.'));
    this.els.list.replaceChildren(...items);
    const files = `${result.files} ${result.files === 1 ? 'file' : 'files'}`;
    const folders = `${result.folders} ${result.folders === 1 ? 'folder' : 'folders'}`;
    this.els.summary.textContent = `${folders}, ${files}, ${formatSize(result.total_bytes ?? 0)}`;
  }

  renderPath() {
    const names = this.folder ? this.folder.split('/') : [];
    const crumbs = [h('li', {}, this.crumb('All files', '', names.length === 0))];
    names.forEach((name, i) => {
      crumbs.push(h('li', {}, this.crumb(name, names.slice(0, i + 1).join('/'), i === names.length - 1)));
    });
    this.els.path.replaceChildren(h('ol', {}, ...crumbs));
  }

  /** A breadcrumb: a button for the folders above, the current one only named (but focusable). */
  crumb(label, folder, current) {
    if (current) return h('span', { 'aria-current': 'location', tabindex: '-1' }, label);
    return h('button', { type: 'button', 'data-folder': folder }, label);
  }

  folderItem(entry) {
    return h('li', { class: 'entry folder', 'data-name': entry.name, 'data-folder': 'true' },
      h('button', { type: 'button', class: 'open', title: `Open the folder ${entry.name}` }, entry.name),
      h('span', { class: 'entry-meta' }, when(entry.modified)));
  }

  fileItem(entry) {
    const path = joinPath(this.folder, entry.name);
    const meta = h('span', { class: 'entry-meta' },
      h('span', { class: 'entry-size' }, formatSize(entry.size)),
      when(entry.modified));
    if (entry.uploader) {
      meta.append(paint(h('span', { class: 'entry-uploader', title: `Shared by ${entry.uploader}` }, entry.uploader), entry.uploader));
    }
    return h('li', { class: 'entry file', 'data-name': entry.name, 'data-folder': 'false' },
      h('a', { class: 'download', href: fileHref(path), download: entry.name, title: `Download ${entry.name}` }, entry.name),
      meta);
  }

  /** Starts one upload per file, into the folder on screen. */
  upload(files) {
    for (const file of files) this.uploadOne(file, this.folder);
  }

  uploadOne(file, folder) {
    const progress = h('progress', { max: String(Math.max(file.size, 1)), value: '0' });
    const status = h('span', { class: 'upload-status' }, 'Starting…');
    const cancel = h('button', { type: 'button', class: 'cancel', 'aria-label': `Cancel the upload of ${file.name}` }, 'Cancel');
    const dismiss = h('button', { type: 'button', class: 'dismiss', hidden: true, 'aria-label': `Remove ${file.name} from the list` }, '×');
    const node = h('li', { class: 'upload', 'data-name': file.name, 'data-state': 'uploading' },
      h('span', { class: 'upload-name', title: file.name }, file.name),
      progress, status, cancel, dismiss);
    this.els.uploads.append(node);

    const xhr = new XMLHttpRequest();
    const upload = { xhr, node, started: false, start: null };
    this.uploads.add(upload);

    const finish = (state, text) => {
      if (!this.uploads.delete(upload)) return;
      if (upload.started) this.running -= 1;
      this.pump();
      node.dataset.state = state;
      status.textContent = text;
      cancel.hidden = true;
      dismiss.hidden = false;
      // The Cancel button disappears under the keyboard user: hand the focus to its neighbour.
      if (document.activeElement === cancel) dismiss.focus();
      this.els.announce.textContent = `${file.name}: ${text}`;
    };

    cancel.addEventListener('click', () => {
      // A request not yet sent has nothing to abort, and abort() would then fire no event.
      if (upload.started) {
        xhr.abort();
      } else {
        this.waiting = this.waiting.filter((other) => other !== upload);
        finish('cancelled', 'Cancelled');
      }
    });
    dismiss.addEventListener('click', () => {
      const next = node.nextElementSibling?.querySelector('button:not([hidden])');
      node.remove();
      next?.focus();
    });

    xhr.upload.addEventListener('progress', (e) => {
      progress.max = Math.max(e.total, 1);
      progress.value = e.loaded;
      // Once every byte is sent the server still checks and publishes the file.
      status.textContent = e.loaded >= e.total ? 'Finishing…' : `${Math.floor((e.loaded / Math.max(e.total, 1)) * 100)}%`;
    });
    xhr.addEventListener('load', () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) {
        progress.value = progress.max;
        const name = body?.name ?? file.name;
        finish('done', name === file.name ? 'Uploaded' : `Uploaded as ${name}`);
        if (folder === this.folder) this.open(this.folder);
        this.onUploaded({ path: body?.path ?? joinPath(folder, name), name, size: body?.size ?? file.size });
      } else {
        finish('failed', body?.message || `Upload failed (HTTP ${xhr.status}).`);
      }
    });
    xhr.addEventListener('error', () => finish('failed', 'The connection was lost during the upload.'));
    xhr.addEventListener('abort', () => finish('cancelled', 'Cancelled'));

    upload.start = () => {
      const query = `folder=${encodeURIComponent(folder)}&name=${encodeURIComponent(file.name)}`;
      xhr.open('POST', `/upload?${query}`);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.setRequestHeader('X-Parley-Token', this.session.token ?? '');
      status.textContent = folder ? `Uploading to ${folder}…` : 'Uploading…';
      xhr.send(file);
    };
    status.textContent = 'Waiting…';
    this.waiting.push(upload);
    this.pump();
  }

  /** Starts waiting uploads while fewer than PARALLEL_UPLOADS run. */
  pump() {
    while (this.running < PARALLEL_UPLOADS && this.waiting.length > 0) {
      const upload = this.waiting.shift();
      upload.started = true;
      this.running += 1;
      upload.start();
    }
  }
}

function when(ms) {
  if (typeof ms !== 'number') return null;
  return h('time', { class: 'entry-time', datetime: new Date(ms).toISOString(), title: fullDateOf(ms) }, timeOrDate(ms));
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
