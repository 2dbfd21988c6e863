// The collector's live page. Plain JavaScript, no dependencies. Everything received is shown
// through textContent (never innerHTML), so a request body cannot inject markup.
'use strict';

/** Events kept in memory for filtering; older ones are forgotten (they stay in the counters). */
const MAX_KEPT = 5000;
/** Rows in the table at most, newest first: the DOM stays fast with any number of events. */
const MAX_ROWS = 2000;
const FAULTS_URL = '/_trackway/api/faults';
const STATUS_TEXT = {
  0: 'connection closed', 200: 'OK', 201: 'Created', 202: 'Accepted', 204: 'No Content', 207: 'Multi-Status',
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 408: 'Request Timeout',
  413: 'Payload Too Large', 422: 'Unprocessable Entity', 429: 'Too Many Requests',
  500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

const $ = (id) => document.getElementById(id);

/** Builds an element; strings become text nodes, so nothing is parsed as HTML. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
  }
  return node;
}

const state = {
  /** One entry per event (or per request without events), oldest first. */
  entries: [],
  /** destination -> { requests, events, statuses: { code: count } } */
  counters: {},
  /** Keys (`seq:index`) of the expanded rows. */
  open: new Set(),
  /** Requests received but not rendered yet (rendering is batched). */
  queue: [],
  flushTimer: 0,
  faults: null,
  /** The collector's limits (from `hello`) and the requests it evicted from memory so far. */
  limits: null,
  evicted: 0,
};

// ---- incoming data --------------------------------------------------------------------------

function entriesOf(request) {
  if (request.events.length === 0) return [{ key: request.seq + ':0', request, event: null, index: 0 }];
  return request.events.map((event, index) => ({ key: request.seq + ':' + index, request, event, index }));
}

// The card (and filter choice) of a request: its destination, one per Bloomreach project.
function cardOf(request) {
  return request.card || request.destination;
}

function count(request) {
  const card = cardOf(request);
  const c = state.counters[card] ||
    (state.counters[card] = { requests: 0, events: 0, duplicates: 0, statuses: {} });
  c.requests += 1;
  c.events += request.events.length;
  c.duplicates = (c.duplicates || 0) + (request.duplicates || 0);
  c.statuses[request.status] = (c.statuses[request.status] || 0) + 1;
}

function onHello(hello) {
  state.entries = [];
  state.queue = [];
  state.open.clear();
  state.counters = hello.counters || {};
  $('sink-note').hidden = !hello.sink;
  showFaults(hello.faults);
  state.limits = hello.limits || null;
  showEvicted(state.limits ? state.limits.evicted_requests : 0);
  renderCounters();
  renderRows();
}

/** Says how many requests the collector no longer holds (they still count in the cards). */
function showEvicted(evicted) {
  state.evicted = evicted || 0;
  const note = $('evicted-note');
  note.hidden = state.evicted === 0;
  if (state.evicted === 0) return;
  const mib = state.limits ? Math.round(state.limits.max_kept_bytes / 1048576) + ' MiB' : 'its limit';
  note.textContent = state.evicted + ' older request(s) were evicted from the collector\'s memory (it keeps ' +
    mib + ' of bodies at most): they are counted above but cannot be shown.';
}

function onRequest(request) {
  if (request.evicted !== undefined && request.evicted !== state.evicted) showEvicted(request.evicted);
  state.queue.push(request);
  // Batched, so a replay of thousands of requests or a burst costs one render.
  if (!state.flushTimer) state.flushTimer = setTimeout(flush, 40);
}

function flush() {
  state.flushTimer = 0;
  const requests = state.queue;
  state.queue = [];
  const fresh = [];
  for (const request of requests) {
    count(request);
    for (const entry of entriesOf(request)) {
      state.entries.push(entry);
      fresh.push(entry);
    }
  }
  if (state.entries.length > MAX_KEPT) state.entries.splice(0, state.entries.length - MAX_KEPT);
  renderCounters();
  prependRows(fresh);
}

// ---- filters --------------------------------------------------------------------------------

function currentFilter() {
  return {
    destination: $('f-destination').value,
    user: $('f-user').value.trim().toLowerCase(),
    name: $('f-name').value.trim().toLowerCase(),
    failed: $('f-failed').checked,
  };
}

function matches(entry, f) {
  const r = entry.request;
  if (f.destination && cardOf(r) !== f.destination) return false;
  if (f.failed && r.status >= 200 && r.status < 300) return false;
  if (f.user && !((entry.event && entry.event.user) || '').toLowerCase().includes(f.user)) return false;
  if (f.name && !((entry.event && entry.event.name) || '').toLowerCase().includes(f.name)) return false;
  return true;
}

// ---- rendering ------------------------------------------------------------------------------

function pad(n, width) { return String(n).padStart(width, '0'); }

function formatTime(ms) {
  const d = new Date(ms);
  return pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2) + '.' +
    pad(d.getMilliseconds(), 3);
}

function statusLabel(status) { return status === 0 ? 'closed' : String(status); }

function statusBadge(status) {
  return el('span', {
    class: 'status s' + Math.floor(status / 100),
    title: status + ' ' + (STATUS_TEXT[status] || ''),
    text: statusLabel(status),
  });
}

function rowFor(entry, fresh) {
  const r = entry.request;
  const e = entry.event;
  let name;
  if (e) {
    const label = e.name || e.url;
    name = label ? el('td', { class: 'name', text: label, title: label })
      : el('td', { class: 'name' }, el('span', { class: 'none', text: '(unnamed)' }));
  } else {
    name = el('td', { class: 'name' }, el('span', { class: 'none', text: r.body_json ? '(no events)' : '(not JSON)' }));
  }
  const target = r.method + ' ' + r.path + (r.query ? '?' + r.query : '');
  const row = el('tr', {
    class: 'row' + (fresh ? ' fresh' : '') + (state.open.has(entry.key) ? ' open' : ''),
    'data-key': entry.key,
    'data-name': (e && e.name) || '',
    'data-failed': r.status < 200 || r.status >= 300 ? '' : null,
  },
  el('td', { class: 'time', text: formatTime(r.at_ms), title: new Date(r.at_ms).toISOString() }),
  el('td', {}, el('span', { class: 'badge d-' + r.destination, text: r.destination })),
  el('td', { text: (e && e.type) || '' }),
  name,
  el('td', { class: 'user', text: (e && e.user) || '', title: (e && e.user) || '' }),
  el('td', {}, statusBadge(r.status)),
  el('td', { class: 'req', text: target, title: target }));
  row.entry = entry;
  return row;
}

function headerList(headers) {
  if (!headers.length) return el('div', { class: 'muted small', text: '(no headers)' });
  const list = el('dl', { class: 'headers' });
  for (const [name, value] of headers) list.append(el('dt', { text: name }), el('dd', { text: value }));
  return list;
}

function bodyBlock(text, emptyText) {
  return text ? el('pre', { text }) : el('div', { class: 'muted small', text: emptyText });
}

function detailFor(entry) {
  const r = entry.request;
  const e = entry.event;
  const eventPart = e
    ? el('section', {},
      el('h3', { text: 'Event ' + (entry.index + 1) + ' of ' + r.events.length }),
      e.id ? el('div', { class: 'line muted', text: 'id ' + e.id }) : null,
      el('pre', { text: e.json }))
    : el('section', {},
      el('h3', { text: 'Event' }),
      el('div', { class: 'muted small', text: r.body_json ? 'The body holds no event object.' : 'The body is not valid JSON.' }));
  const requestPart = el('section', {},
    el('h3', { text: 'Request' }),
    el('div', { class: 'line', text: r.method + ' ' + r.path + (r.query ? '?' + r.query : '') + '  ·  ' + r.body_bytes + ' bytes' }),
    headerList(r.headers),
    bodyBlock(r.body, '(empty body)'));
  const answerPart = el('section', {},
    el('h3', { text: 'Collector\'s answer' }),
    r.status === 0
      ? el('div', { class: 'line', text: 'Connection closed without an answer (injected fault).' })
      : el('div', { class: 'line' }, statusBadge(r.status), ' ', STATUS_TEXT[r.status] || ''),
    r.status === 0 ? null : headerList(r.answer.headers),
    r.status === 0 ? null : bodyBlock(r.answer.body, '(empty body)'));
  return el('tr', { class: 'detail' }, el('td', { colSpan: 7 }, el('div', { class: 'detail-grid' }, eventPart, requestPart, answerPart)));
}

function toggle(row) {
  const key = row.entry.key;
  const next = row.nextSibling;
  if (state.open.has(key)) {
    state.open.delete(key);
    row.classList.remove('open');
    if (next && next.classList.contains('detail')) next.remove();
  } else {
    state.open.add(key);
    row.classList.add('open');
    row.after(detailFor(row.entry));
  }
}

function appendRow(parent, entry, fresh) {
  parent.append(rowFor(entry, fresh));
  if (state.open.has(entry.key)) parent.append(detailFor(entry));
}

/** Rebuilds the table from the kept entries (after a filter change or a reconnect). */
function renderRows() {
  const f = currentFilter();
  const body = $('rows');
  const fragment = document.createDocumentFragment();
  let shown = 0;
  for (let i = state.entries.length - 1; i >= 0 && shown < MAX_ROWS; i--) {
    const entry = state.entries[i];
    if (!matches(entry, f)) continue;
    appendRow(fragment, entry, false);
    shown++;
  }
  body.replaceChildren(fragment);
  updateShown();
}

/** Puts new entries on top, then trims the oldest rows beyond MAX_ROWS. */
function prependRows(fresh) {
  const f = currentFilter();
  const fragment = document.createDocumentFragment();
  let added = 0;
  for (let i = fresh.length - 1; i >= 0 && added < MAX_ROWS; i--) {
    if (!matches(fresh[i], f)) continue;
    appendRow(fragment, fresh[i], true);
    added++;
  }
  const body = $('rows');
  body.prepend(fragment);
  let rows = body.querySelectorAll('tr.row').length;
  while (rows > MAX_ROWS && body.lastChild) {
    const last = body.lastChild;
    last.remove();
    if (last.classList.contains('row')) rows--;
  }
  updateShown();
}

function updateShown() {
  const rows = $('rows').querySelectorAll('tr.row').length;
  const total = state.entries.length;
  $('shown').textContent = total === 0 ? '' : rows === total ? rows + ' rows' : 'showing ' + rows + ' of ' + total + ' rows';
  $('empty').hidden = total !== 0;
}

function renderCounters() {
  const names = Object.keys(state.counters).sort();
  const cards = $('destinations');
  if (names.length === 0) {
    cards.replaceChildren(el('p', { class: 'muted small', text: 'No requests yet.' }));
  } else {
    cards.replaceChildren(...names.map((name) => {
      const c = state.counters[name];
      const failures = Object.entries(c.statuses).filter(([s]) => +s < 200 || +s >= 300);
      const chips = failures.length
        ? failures.map(([s, n]) => el('span', { class: 'chip ' + (+s >= 400 && +s < 500 && +s !== 429 ? 'warn' : 'bad'), text: statusLabel(+s) + ' × ' + n }))
        : [el('span', { class: 'chip ok', text: 'no failures' })];
      return el('div', { class: 'dest', 'data-destination': name },
        el('div', { class: 'dest-head' }, el('span', { class: 'badge d-' + name.split(':')[0], text: name })),
        el('div', { class: 'dest-nums' },
          el('div', { class: 'num' }, el('b', { text: c.requests }), el('span', { text: 'requests' })),
          el('div', { class: 'num' }, el('b', { text: c.events }), el('span', { text: 'events' })),
          el('div', { class: 'num' }, el('b', { text: failures.reduce((sum, [, n]) => sum + n, 0) }), el('span', { text: 'failed' }))),
        el('div', { class: 'chips' }, ...chips,
          // Customer.io drops events whose id it has seen; the collector counts them. Its card
          // always shows the count (0 included), so a replay that was deduplicated is visible.
          ...(c.duplicates || name === 'customerio'
            ? [el('span', { class: 'chip ' + (c.duplicates ? 'warn' : 'ok'), text: (c.duplicates || 0) + ' duplicate' + (c.duplicates === 1 ? '' : 's') })]
            : [])));
    }));
  }
  // Keep the destination filter's choices in step with what was seen.
  const select = $('f-destination');
  const have = new Set(Array.from(select.options).map((o) => o.value));
  for (const name of names) if (!have.has(name)) select.append(el('option', { value: name, text: name }));
  let requests = 0;
  let events = 0;
  for (const name of names) {
    requests += state.counters[name].requests;
    events += state.counters[name].events;
  }
  $('totals').replaceChildren(el('b', { text: requests }), ' requests · ', el('b', { text: events }), ' events');
}

// ---- faults ---------------------------------------------------------------------------------

const FAULT_FIELDS = ['fail_every', 'fail_for_ms', 'fail_status', 'retry_after', 'close_every', 'rate_limit', 'latency_ms'];

function ordinal(n) {
  const s = ['th', 'st', 'nd', 'rd'];
  const v = n % 100;
  return n + (s[(v - 20) % 10] || s[v] || s[0]);
}

function faultChips(f) {
  const chips = [];
  const status = f.fail_status || 503;
  if (f.fail_every != null) chips.push('every ' + (f.fail_every === 1 ? '' : ordinal(f.fail_every) + ' ') + 'request → ' + status);
  if (f.fail_for_ms != null) chips.push('outage ' + f.fail_for_ms + ' ms from when set → ' + status);
  if (f.close_every != null) chips.push('close every ' + (f.close_every === 1 ? '' : ordinal(f.close_every) + ' ') + 'connection');
  if (f.rate_limit != null) chips.push('rate limit ' + f.rate_limit + ' / s → 429');
  if (f.latency_ms != null) chips.push('+' + f.latency_ms + ' ms latency');
  if (f.echo_request && (f.fail_every != null || f.fail_for_ms != null)) chips.push('failures echo the request');
  if (f.retry_after != null && chips.length) chips.push('Retry-After: ' + f.retry_after);
  return chips;
}

function showFaults(faults) {
  if (!faults) return;
  const changed = JSON.stringify(faults) !== JSON.stringify(state.faults);
  state.faults = faults;
  const chips = faultChips(faults);
  const badge = $('faults-state');
  badge.className = 'pill ' + (chips.length ? 'on' : 'off');
  badge.textContent = chips.length ? 'injecting' : 'none';
  $('faults-list').replaceChildren(...(chips.length
    ? chips.map((text) => el('span', { class: 'chip bad', text }))
    : [el('span', { class: 'muted small', text: 'Every request gets its normal answer.' })]));
  // Refill the form only when the faults changed, so a value being typed is not overwritten.
  if (changed) fillForm(faults);
}

function fillForm(faults) {
  const form = $('faults-form');
  for (const name of FAULT_FIELDS) {
    const value = faults[name];
    form.elements[name].value = value == null || (name === 'fail_status' && value === 503) ? '' : value;
  }
  form.elements.echo_request.checked = !!faults.echo_request;
}

async function sendFaults(method, body) {
  const error = $('faults-error');
  error.textContent = '';
  try {
    const response = await fetch(FAULTS_URL, { method, body, headers: body ? { 'content-type': 'application/json' } : {} });
    const answer = await response.json();
    if (!response.ok) {
      error.textContent = answer.error || ('HTTP ' + response.status);
      return;
    }
    state.faults = null;
    showFaults(answer);
  } catch (e) {
    error.textContent = 'Could not reach the collector: ' + e.message;
  }
}

$('faults-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.target;
  const faults = {};
  for (const name of FAULT_FIELDS) {
    const raw = form.elements[name].value.trim();
    if (raw === '') continue;
    faults[name] = name === 'retry_after' ? raw : Number(raw);
  }
  if (form.elements.echo_request.checked) faults.echo_request = true;
  sendFaults('PUT', JSON.stringify(faults));
});
$('faults-clear').addEventListener('click', () => sendFaults('DELETE'));

/** Faults can also change from outside (curl, a test): look again every few seconds. */
async function pollFaults() {
  try {
    const response = await fetch(FAULTS_URL);
    if (response.ok) showFaults(await response.json());
  } catch (e) {
    // The stream's state already says the collector is unreachable.
  }
}
setInterval(pollFaults, 3000);

// ---- wiring ---------------------------------------------------------------------------------

$('rows').addEventListener('click', (event) => {
  const row = event.target.closest('tr.row');
  if (row) toggle(row);
});
for (const id of ['f-destination', 'f-user', 'f-name', 'f-failed']) $(id).addEventListener('input', renderRows);

$('origin').textContent = location.host;
$('empty-example').textContent = "curl -X POST " + location.origin + "/events \\\n  -H 'content-type: application/json' \\\n" +
  "  -d '[{\"type\":\"track\",\"name\":\"hello\",\"identity\":{\"user_id\":\"u1\"}}]'";

function connect() {
  const source = new EventSource('/_trackway/live/stream');
  const setState = (name, text) => {
    document.body.dataset.state = name;
    $('conn-text').textContent = text;
  };
  source.addEventListener('open', () => setState('live', 'live'));
  source.addEventListener('error', () => setState('down', source.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting…'));
  source.addEventListener('hello', (message) => onHello(JSON.parse(message.data)));
  source.addEventListener('request', (message) => onRequest(JSON.parse(message.data)));
}
connect();
