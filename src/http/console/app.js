'use strict';
// The alert-relay console: plain JavaScript over the admin API. Every text that
// comes from the relay is set through textContent, never parsed as HTML.

const OPERATORS = [
  ['In', 'Includes values'],
  ['NotIn', 'Does not include values'],
  ['Exists', 'Exists'],
  ['DoesNotExist', 'Does not exist'],
  ['Matches', 'Regex match'],
  ['NotMatches', 'Regex does not match'],
];
const NO_VALUES = new Set(['Exists', 'DoesNotExist']);
const TOKEN_KEY = 'alert-relay-admin-token';

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

let token = sessionStorage.getItem(TOKEN_KEY);
let receivers = [];
let editing = null; // the receiver being edited, or null for a new one
let refreshTimer = null;

async function api(method, path, body, ifMatch) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  // The version this change was made against: a stale one answers 412.
  if (ifMatch) headers['If-Match'] = `"${ifMatch}"`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { status: 0, ok: false, data: { error: `The relay did not answer: ${e.message}` } };
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  return { status: response.status, ok: response.ok, data };
}

// ---------------------------------------------------------------------------
// Sign in.

async function signIn(candidate, quiet) {
  token = candidate;
  const r = await api('GET', '/api/v1/receivers');
  if (r.ok) {
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#sign-in-view').hidden = true;
    $('#app-view').hidden = false;
    $('#sign-out').hidden = false;
    $('#who').textContent = 'signed in';
    renderReceivers(r.data.receivers);
    clearInterval(refreshTimer);
    refreshTimer = setInterval(refresh, 5000);
    return;
  }
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  if (quiet) return;
  const message =
    r.status === 401 ? 'Wrong admin token.' :
    r.status === 403 ? `The admin API is off. ${r.data && r.data.error ? r.data.error : ''}` :
    (r.data && r.data.error) || `The relay answered ${r.status}.`;
  $('#sign-in-error').textContent = message;
  $('#token').focus();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  clearInterval(refreshTimer);
  $('#app-view').hidden = true;
  $('#sign-in-view').hidden = false;
  $('#sign-out').hidden = true;
  $('#who').textContent = '';
  $('#token').value = '';
  $('#token').focus();
}

// ---------------------------------------------------------------------------
// Receivers list.

async function refresh() {
  const r = await api('GET', '/api/v1/receivers');
  if (r.status === 401 || r.status === 403) return signOut();
  if (r.ok) renderReceivers(r.data.receivers);
  else $('#list-status').textContent = (r.data && r.data.error) || `Listing failed (${r.status}).`;
}

function ratio(r) {
  const total = r.delivered + r.failed;
  return total === 0 ? '—' : `${Math.round((1000 * r.delivered) / total) / 10}%`;
}

function renderReceivers(list) {
  receivers = list;
  const body = $('#receivers tbody');
  // A refresh rebuilds the rows: whatever had the focus gets it back.
  const focused = document.activeElement;
  const focusKey = focused && body.contains(focused) ? focused.getAttribute('aria-label') : null;
  body.replaceChildren();
  if (list.length === 0) {
    body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'No receivers yet. Create one with New receiver.' })));
  }
  for (const r of list) {
    const why = r.provisioned ? `Provisioned by ${r.source}: change it in that file and reload.` : null;
    // Off means dropped: alerts arriving meanwhile are not kept for later.
    const skipped = r.enabled ? null : el('span', {
      class: 'muted skipped',
      'data-col': 'skipped',
      text: `${r.skipped_while_disabled || 0} alerts dropped since turned off`,
    });
    const toggle = el('button', {
      type: 'button',
      role: 'switch',
      class: 'switch',
      'aria-checked': String(r.enabled),
      'aria-label': `Notifications for ${r.name}`,
      title: why || (r.enabled
        ? 'On: matching alerts are delivered. Turning it off drops alerts that arrive meanwhile.'
        : 'Off: alerts that arrive are dropped for this receiver, not kept for later.'),
      disabled: r.provisioned,
      'data-name': r.name,
      text: r.enabled ? 'On' : 'Off',
      onclick: () => setEnabled(r.name, !r.enabled, r.version),
    });
    const source = r.provisioned
      ? el('span', { class: 'badge', title: why, text: 'Provisioned (read-only)' })
      : el('span', { class: 'badge api', text: 'API' });
    const actions = el('td', { class: 'row-actions' },
      el('button', { type: 'button', onclick: () => openForm(r), text: r.provisioned ? 'View' : 'Edit', 'aria-label': `${r.provisioned ? 'View' : 'Edit'} ${r.name}` }),
      el('button', { type: 'button', onclick: () => openDead(r.name), text: 'Dead letters', 'aria-label': `Dead letters of ${r.name}` }),
      r.provisioned ? null : el('button', { type: 'button', class: 'danger', onclick: () => removeReceiver(r.name), text: 'Delete', 'aria-label': `Delete ${r.name}` }));
    body.append(el('tr', { 'data-receiver': r.name },
      el('th', { scope: 'row', text: r.name }),
      el('td', { class: 'url', text: r.url }),
      el('td', {}, toggle, skipped),
      el('td', {}, source),
      el('td', { class: 'num', 'data-col': 'pending', text: String(r.pending) }),
      el('td', { class: 'num', 'data-col': 'dead', text: String(r.dead_letters) }),
      el('td', { class: 'num', 'data-col': 'ratio', text: ratio(r) }),
      actions));
  }
  if (focusKey) {
    const again = $$('#receivers tbody [aria-label]').find((e) => e.getAttribute('aria-label') === focusKey);
    if (again) again.focus();
  }
}

async function setEnabled(name, enabled, version) {
  const r = await api('POST', `/api/v1/receivers/${encodeURIComponent(name)}/${enabled ? 'enable' : 'disable'}`, undefined, version);
  $('#list-status').textContent = r.ok
    ? `Notifications for ${name} turned ${enabled ? 'on' : 'off'}.`
    : r.status === 412
      ? `${name} was changed by someone else meanwhile; the list now shows it as it is. Try again if you still want to.`
      : (r.data && r.data.error) || `Failed (${r.status}).`;
  await refresh();
  const button = $(`#receivers button[role=switch][data-name="${CSS.escape(name)}"]`);
  if (button) button.focus();
}

async function removeReceiver(name) {
  if (!confirm(`Delete receiver ${name}? Its pending deliveries and dead letters are dropped.`)) return;
  const index = receivers.findIndex((r) => r.name === name);
  const r = await api('DELETE', `/api/v1/receivers/${encodeURIComponent(name)}`);
  $('#list-status').textContent = r.ok
    ? `Deleted ${name}: ${r.data.dropped_pending} pending deliveries and ${r.data.dropped_dead_letters} dead letters dropped.`
    : (r.data && r.data.error) || `Failed (${r.status}).`;
  await refresh();
  if (!r.ok) return;
  // The focus goes to the row that took its place (or the one before), else to New receiver.
  const rows = $$('#receivers tbody tr[data-receiver]');
  const next = rows[Math.min(index, rows.length - 1)];
  const target = next && $('.row-actions button', next);
  (target || $('#new-receiver')).focus();
}

// ---------------------------------------------------------------------------
// Receiver form.

function addCondition(condition = { label: '', operator: 'In', values: [] }) {
  const list = $('#conditions');
  const select = el('select', { class: 'c-operator' },
    ...OPERATORS.map(([value, text]) => el('option', { value, text, selected: value === condition.operator })));
  const values = el('textarea', { class: 'c-values', rows: 2 });
  values.value = (condition.values || []).join('\n');
  const valuesField = el('div', { class: 'c-values-field' }, el('label', { class: 'c-values-label' }), values);
  const row = el('li', { class: 'condition' },
    el('div', {}, el('label', { class: 'c-label-label' }), el('input', { class: 'c-label', list: 'label-presets', value: condition.label, autocomplete: 'off' })),
    el('div', {}, el('label', { class: 'c-operator-label' }), select),
    valuesField,
    el('button', { type: 'button', class: 'c-delete danger', onclick: () => { row.remove(); numberConditions(); } }),
    el('p', { class: 'error c-error' }));
  // Kept in the grid (so the row does not reflow), but neither seen nor read.
  const showValues = () => { valuesField.classList.toggle('invisible', NO_VALUES.has(select.value)); };
  select.addEventListener('change', showValues);
  showValues();
  list.append(row);
  numberConditions();
  return row;
}

/// Unticked: every alert is sent; the rows stay (greyed) until OK.
function showConditionsOn() {
  const on = $('#f-conditions-on').checked;
  $('#conditions').classList.toggle('off', !on);
  $$('#conditions input, #conditions select, #conditions textarea').forEach((i) => { i.disabled = !on; });
}

/// Labels, ids and error slots follow the rows' order.
function numberConditions() {
  $$('#conditions li').forEach((row, i) => {
    const n = i + 1;
    const pairs = [['c-label', 'Label'], ['c-operator', 'Operator'], ['c-values', 'Values, one per line']];
    for (const [cls, text] of pairs) {
      const input = $(`.${cls}`, row);
      input.id = `condition-${i}-${cls.slice(2)}`;
      const label = $(`.${cls}-label`, row);
      label.setAttribute('for', input.id);
      label.textContent = `${text} (condition ${n})`;
      input.setAttribute('aria-describedby', `condition-${i}-error`);
    }
    $('.c-delete', row).textContent = `Delete condition ${n}`;
    const error = $('.c-error', row);
    error.id = `condition-${i}-error`;
    error.dataset.field = `conditions[${i}]`;
  });
}

function setAuthType(type) {
  $(`input[name=auth][value=${type}]`).checked = true;
  $('#auth-bearer').hidden = type !== 'bearer';
  $('#auth-basic').hidden = type !== 'basic';
  $('#auth-oauth2').hidden = type !== 'oauth2';
}

function clearErrors() {
  $$('#receiver-form [data-field]').forEach((p) => { p.textContent = ''; });
  $$('#receiver-form [aria-invalid]').forEach((i) => i.removeAttribute('aria-invalid'));
  $('#form-error').textContent = '';
}

/// Puts each `field: message` detail beside the field it names.
function showErrors(details) {
  const slots = $$('#receiver-form [data-field]');
  const unplaced = [];
  for (const detail of details || []) {
    const cut = detail.indexOf(': ');
    const field = cut < 0 ? '' : detail.slice(0, cut);
    const message = cut < 0 ? detail : detail.slice(cut + 2);
    let best = null;
    for (const slot of slots) {
      const name = slot.dataset.field;
      if ((field === name || field.startsWith(`${name}.`) || field.startsWith(`${name}[`)) && (!best || name.length > best.dataset.field.length)) best = slot;
    }
    if (!best) {
      unplaced.push(detail);
      continue;
    }
    best.textContent = best.textContent ? `${best.textContent} ${message}` : message;
    const row = best.closest('li.condition');
    // A condition's error names its part: values (a bad regex, values missing or not allowed) or the label.
    const input = row
      ? (/(^|: )values/.test(message) ? $('.c-values', row) : /(^|: )operator/.test(message) ? $('.c-operator', row) : $('.c-label', row))
      : best.id && document.querySelector(`[aria-describedby~="${best.id}"]`);
    if (input) input.setAttribute('aria-invalid', 'true');
  }
  if (unplaced.length) $('#form-error').textContent = unplaced.join(' ');
}

function openForm(receiver) {
  editing = receiver;
  const form = $('#receiver-form');
  form.reset();
  clearErrors();
  $('#conditions').replaceChildren();
  $('#test-result').hidden = true;
  const r = receiver || { name: '', url: '', send_resolved: true, max_alerts: 0, auth: { type: 'none' }, tls: {}, conditions: [] };
  $('#form-title').textContent = receiver ? `Webhook settings: ${receiver.name}` : 'New webhook receiver';
  $('#f-name').value = r.name;
  $('#f-name').readOnly = Boolean(receiver);
  $('#f-url').value = r.url;
  const auth = r.auth || { type: 'none' };
  setAuthType(auth.type || 'none');
  $('#f-token').value = auth.token || '';
  $('#f-username').value = auth.username || '';
  $('#f-password').value = auth.password || '';
  $('#f-client-id').value = auth.client_id || '';
  $('#f-client-secret').value = auth.client_secret || '';
  $('#f-token-url').value = auth.token_url || '';
  $('#f-scopes').value = (auth.scopes || []).join(' ');
  $('#f-endpoint-params').value = Object.entries(auth.endpoint_params || {}).map(([k, v]) => `${k}=${v}`).join('\n');
  const signing = r.signing || {};
  $('#f-signing-secret').value = signing.secret || '';
  $('#f-signing-previous').value = signing.previous_secret || '';
  const payload = r.payload || {};
  $('#f-format').value = payload.format || 'alertmanager';
  $('#f-template').value = payload.template || '';
  $('#f-content-type').value = payload.content_type || '';
  $('#preview').textContent = '';
  showFormat();
  const tls = r.tls || {};
  $('#f-insecure').checked = Boolean(tls.insecure_skip_verify);
  $('#f-ca').value = tls.ca_file || '';
  $('#f-cert').value = tls.cert_file || '';
  $('#f-key').value = tls.key_file || '';
  for (const c of r.conditions || []) addCondition(c);
  $('#f-send-resolved').checked = r.send_resolved !== false;
  $('#f-enabled').checked = r.enabled !== false;
  $('#f-conditions-on').checked = (r.conditions || []).length > 0;
  $('#form-conflict').hidden = true;
  $('#form-conflict').replaceChildren();
  $('#f-max-alerts').value = r.max_alerts || 0;
  $('#f-timeout').value = r.timeout || '';
  const retry = r.retry || {};
  $('#f-initial').value = retry.initial_interval || '';
  $('#f-max-interval').value = retry.max_interval || '';
  $('#f-max-elapsed').value = retry.max_elapsed || '';
  $('#f-max-attempts').value = retry.max_attempts === undefined ? '' : retry.max_attempts;
  const readOnly = Boolean(receiver && receiver.provisioned);
  $('#form-readonly').hidden = !readOnly;
  $('#form-readonly').textContent = readOnly ? `Provisioned by ${receiver.source}: read-only here. Change it in that file and reload.` : '';
  $$('#receiver-form input, #receiver-form select, #receiver-form textarea').forEach((i) => { i.disabled = readOnly && i.id !== 'test-labels'; });
  $$('#add-condition, #ok, .c-delete').forEach((b) => { b.hidden = readOnly; });
  if (readOnly) $('#conditions').classList.remove('off');
  else showConditionsOn();
  $('#form-view').hidden = false;
  $('#dead-view').hidden = true;
  (readOnly ? $('#send-test') : receiver ? $('#f-url') : $('#f-name')).focus();
}

function closeForm() {
  $('#form-view').hidden = true;
  editing = null;
  $('#new-receiver').focus();
}

function optional(value) {
  const v = value.trim();
  return v === '' ? undefined : v;
}

function collectSpec() {
  const spec = {
    name: $('#f-name').value.trim(),
    url: $('#f-url').value.trim(),
    enabled: $('#f-enabled').checked,
    send_resolved: $('#f-send-resolved').checked,
    max_alerts: Number($('#f-max-alerts').value || 0),
    timeout: optional($('#f-timeout').value),
    conditions: !$('#f-conditions-on').checked ? [] : $$('#conditions li').map((row) => {
      const operator = $('.c-operator', row).value;
      const condition = { label: $('.c-label', row).value.trim(), operator };
      if (!NO_VALUES.has(operator)) {
        condition.values = $('.c-values', row).value.split('\n').map((v) => v.trim()).filter((v) => v !== '');
      }
      return condition;
    }),
  };
  const type = $('input[name=auth]:checked').value;
  spec.auth = { type };
  if (type === 'bearer') spec.auth.token = $('#f-token').value;
  if (type === 'basic') {
    spec.auth.username = $('#f-username').value;
    spec.auth.password = $('#f-password').value;
  }
  if (type === 'oauth2') {
    spec.auth.client_id = $('#f-client-id').value.trim();
    spec.auth.token_url = $('#f-token-url').value.trim();
    spec.auth.scopes = $('#f-scopes').value.split(/\s+/).filter((v) => v !== '');
    const params = {};
    for (const line of $('#f-endpoint-params').value.split('\n')) {
      const at = line.indexOf('=');
      if (line.trim() !== '') params[(at < 0 ? line : line.slice(0, at)).trim()] = at < 0 ? '' : line.slice(at + 1).trim();
    }
    spec.auth.endpoint_params = params;
    // A secret read from a file (set in the API) stays a file.
    const stored = (editing && editing.auth) || {};
    if ($('#f-client-secret').value === '' && stored.client_secret_file) spec.auth.client_secret_file = stored.client_secret_file;
    else spec.auth.client_secret = $('#f-client-secret').value;
  }
  const storedSigning = (editing && editing.signing) || {};
  spec.signing = {
    secret: optional($('#f-signing-secret').value),
    secret_file: $('#f-signing-secret').value === '' ? storedSigning.secret_file : undefined,
    previous_secret: optional($('#f-signing-previous').value),
    previous_secret_file: $('#f-signing-previous').value === '' ? storedSigning.previous_secret_file : undefined,
  };
  spec.payload = collectPayload();
  const tls = {
    insecure_skip_verify: $('#f-insecure').checked,
    ca_file: optional($('#f-ca').value),
    cert_file: optional($('#f-cert').value),
    key_file: optional($('#f-key').value),
  };
  spec.tls = tls;
  const retry = {
    initial_interval: optional($('#f-initial').value),
    max_interval: optional($('#f-max-interval').value),
    max_elapsed: optional($('#f-max-elapsed').value),
    max_attempts: $('#f-max-attempts').value === '' ? undefined : Number($('#f-max-attempts').value),
  };
  if (Object.values(retry).some((v) => v !== undefined)) spec.retry = retry;
  if (editing && editing.headers) spec.headers = editing.headers;
  if (editing && editing.proxy_url) spec.proxy_url = editing.proxy_url;
  if (editing && editing.concurrency) spec.concurrency = editing.concurrency;
  return spec;
}

async function save(event) {
  event.preventDefault();
  clearErrors();
  const spec = collectSpec();
  if (!spec.name) {
    showErrors(['name: a name is needed']);
    $('#f-name').focus();
    return;
  }
  const version = overwrite ? '*' : editing && editing.version;
  overwrite = false;
  const r = await api('PUT', `/api/v1/receivers/${encodeURIComponent(spec.name)}`, spec, version);
  if (r.ok) {
    $('#list-status').textContent = `Saved ${spec.name}.`;
    closeForm();
    await refresh();
    return;
  }
  if (r.status === 412) {
    showConflict(spec.name, r.data && r.data.current);
    return;
  }
  const details = (r.data && r.data.details) || [];
  $('#form-error').textContent = r.status === 400 && details.length
    ? 'Not saved: see the errors beside the fields.'
    : (r.data && r.data.error) || `Saving failed (${r.status}).`;
  showErrors(details);
  const first = $('#receiver-form [aria-invalid=true]');
  if (first) first.focus();
}

// Set by "Overwrite": the next OK replaces whatever version is stored.
let overwrite = false;

/// Someone else changed the receiver since the form was opened: say what
/// changed, and offer to load their version or to overwrite it with this one.
function showConflict(name, current) {
  const box = $('#form-conflict');
  const changed = [];
  if (current && editing) {
    for (const key of ['enabled', 'url', 'send_resolved', 'max_alerts', 'timeout']) {
      if (JSON.stringify(current[key]) !== JSON.stringify(editing[key])) changed.push(key);
    }
    if (JSON.stringify(current.conditions) !== JSON.stringify(editing.conditions)) changed.push('conditions');
  }
  const what = current
    ? (changed.length ? `Changed meanwhile: ${changed.join(', ')}.` : 'Its settings changed meanwhile.')
    : 'It was deleted meanwhile.';
  box.replaceChildren(
    el('p', { text: `Not saved: ${name} was changed by someone else since you opened this form. ${what}` }),
    current ? el('button', { type: 'button', id: 'conflict-reload', text: 'Reload their version', onclick: () => openForm(current) }) : null,
    el('button', { type: 'button', id: 'conflict-overwrite', class: 'danger', text: 'Overwrite with mine', onclick: () => { overwrite = true; $('#receiver-form').requestSubmit(); } }));
  box.hidden = false;
  $('#conflict-reload, #conflict-overwrite').focus();
}

function parseLabels(text) {
  const labels = {};
  for (const line of text.split(/[\n,]/)) {
    const cut = line.indexOf('=');
    if (cut > 0) labels[line.slice(0, cut).trim()] = line.slice(cut + 1).trim().replace(/^"(.*)"$/, '$1');
  }
  return labels;
}

// ---------------------------------------------------------------------------
// Body format: the template editor and its live preview.

function collectPayload() {
  const format = $('#f-format').value;
  if (format !== 'template') return { format };
  const stored = (editing && editing.payload) || {};
  const payload = { format, content_type: optional($('#f-content-type').value) };
  // A template read from a file (set in the config or the API) stays a file
  // until one is written here.
  if ($('#f-template').value === '' && stored.template_file) payload.template_file = stored.template_file;
  else payload.template = $('#f-template').value;
  return payload;
}

// A body as shown: JSON indented, anything else as it is.
function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch (_) { return body; }
}

function showFormat() {
  const format = $('#f-format').value;
  $('#template-editor').hidden = format !== 'template';
  $('#preview-box').hidden = format === 'alertmanager';
  schedulePreview();
}

let previewTimer = null;
let previewSeq = 0;

function schedulePreview() {
  clearTimeout(previewTimer);
  if ($('#f-format').value === 'alertmanager' || $('#form-view').hidden) return;
  previewTimer = setTimeout(renderPreview, 300);
}

async function renderPreview() {
  const seq = ++previewSeq;
  const request = { payload: collectPayload() };
  const name = $('#f-name').value.trim();
  if (name) request.receiver = name;
  const sample = $('#f-preview-sample').value;
  if (sample) request.sample = sample;
  $('#preview-status').textContent = 'Rendering…';
  const r = await api('POST', '/api/v1/preview', request);
  if (seq !== previewSeq) return; // a newer edit is being rendered
  const error = $('#f-template-error');
  if (r.ok) {
    const d = r.data;
    $('#preview-status').textContent = `${d.content_type}, ${d.body_bytes} bytes, rendered from ${d.sample === 'last' ? 'the last real notification' : `the ${d.sample} sample`}`;
    $('#preview').textContent = pretty(d.body);
    error.textContent = '';
    $('#f-template').removeAttribute('aria-invalid');
  } else {
    const details = (r.data && r.data.details) || [];
    const message = details.join('\n') || (r.data && r.data.error) || `The preview failed (${r.status}).`;
    $('#preview-status').textContent = 'The template does not render:';
    error.textContent = message.replace(/^payload\.template: /, '');
    $('#f-template').setAttribute('aria-invalid', 'true');
  }
}

async function startFromPreset() {
  const name = $('#f-preset-source').value;
  const r = await api('GET', `/api/v1/formats/${encodeURIComponent(name)}`);
  if (!r.ok) return;
  $('#f-template').value = r.data.template;
  $('#f-content-type').value = r.data.content_type || '';
  $('#f-format').value = 'template';
  showFormat();
  $('#f-template').focus();
}

async function sendTest() {
  clearErrors();
  const out = $('#test-result');
  out.hidden = false;
  out.className = 'result';
  out.replaceChildren(el('p', { text: 'Sending…' }));
  const labels = parseLabels($('#test-labels').value);
  const r = await api('POST', '/api/v1/test', { receiver: collectSpec(), labels });
  if (!r.ok) {
    out.className = 'result bad';
    out.replaceChildren(el('p', { text: (r.data && r.data.error) || `The test could not run (${r.status}).` }));
    showErrors(r.data && r.data.details);
    return;
  }
  const t = r.data;
  const answer = t.delivered
    ? `Delivered: the target answered HTTP ${t.status} in ${t.latency_ms} ms.`
    : `Not delivered: ${t.error || `HTTP ${t.status}`}`;
  const verdict = t.would_deliver
    ? 'Real alerts with these labels would be delivered.'
    : `Real alerts with these labels would NOT be delivered: ${t.stopped_by.detail}.`;
  out.className = `result ${t.delivered && t.would_deliver ? 'good' : 'bad'}`;
  out.replaceChildren(el('p', { class: 'test-answer', text: answer }), el('p', { class: 'test-verdict', text: verdict }));
  if (t.format && t.format !== 'alertmanager' && t.body) {
    out.append(el('details', {}, el('summary', { text: `The body sent (${t.format}, ${t.body_bytes} bytes)` }), el('pre', { class: 'preview test-body', text: pretty(t.body) })));
  }
  if (!t.enabled) out.append(el('p', { text: 'This receiver is disabled: turn its notifications on to receive alerts.' }));
}

// ---------------------------------------------------------------------------
// Dead letters.

let deadFor = null;

async function openDead(name) {
  deadFor = name;
  $('#dead-title').textContent = `Dead letters: ${name}`;
  $('#dead-view').hidden = false;
  $('#form-view').hidden = true;
  await loadDead();
  $('#dead-close').focus();
}

async function loadDead() {
  const r = await api('GET', `/api/v1/deliveries?receiver=${encodeURIComponent(deadFor)}&state=dead&limit=100`);
  const body = $('#dead-letters tbody');
  body.replaceChildren();
  if (!r.ok) {
    $('#dead-status').textContent = (r.data && r.data.error) || `Failed (${r.status}).`;
    return;
  }
  const list = r.data.deliveries;
  $('#dead-status').textContent = list.length ? `${list.length} dead letters.` : 'No dead letters.';
  for (const d of list) {
    body.append(el('tr', { 'data-id': String(d.id) },
      el('td', { text: String(d.id) }),
      el('td', { text: d.created }),
      el('td', { class: 'num', text: String(d.alerts) }),
      el('td', { class: 'num', text: String(d.attempts) }),
      el('td', { text: d.dead_reason }),
      el('td', { class: 'url', text: d.last_error || '' }),
      el('td', { class: 'row-actions' },
        el('button', { type: 'button', text: 'Retry', 'aria-label': `Retry delivery ${d.id}`, onclick: () => deadAction('POST', d.id, 'retry') }),
        el('button', { type: 'button', class: 'danger', text: 'Delete', 'aria-label': `Delete delivery ${d.id}`, onclick: () => deadAction('DELETE', d.id) }))));
  }
}

async function deadAction(method, id, verb) {
  const r = await api(method, `/api/v1/deliveries/${id}${verb ? `/${verb}` : ''}`);
  await loadDead();
  $('#dead-status').textContent = r.ok
    ? `Delivery ${id} ${verb ? 'requeued' : 'deleted'}.`
    : (r.data && r.data.error) || `Failed (${r.status}).`;
  await refresh();
}

// ---------------------------------------------------------------------------
// Explain.

async function explain(event) {
  event.preventDefault();
  const text = $('#explain-labels').value.trim();
  let body;
  if (text.startsWith('{')) {
    try {
      body = JSON.parse(text);
    } catch (e) {
      $('#explain-error').textContent = `Not JSON: ${e.message}`;
      return;
    }
  } else {
    body = { labels: parseLabels(text), status: $('#explain-status').value };
  }
  const r = await api('POST', '/api/v1/explain', body);
  const out = $('#explain-result');
  out.replaceChildren();
  $('#explain-error').textContent = r.ok ? '' : (r.data && r.data.error) || `Failed (${r.status}).`;
  if (!r.ok) return;
  for (const rec of r.data.receivers) {
    const item = el('li', { class: rec.delivered ? 'yes' : 'no', 'data-receiver': rec.receiver });
    item.append(el('strong', { text: rec.receiver }), document.createTextNode(rec.delivered ? ': would receive it' : ': would not receive it'));
    const reasons = rec.alerts.filter((a) => !a.delivered).map((a) => (rec.alerts.length > 1 ? `alert ${a.index}: ` : '') + a.stopped_by.detail);
    if (reasons.length) item.append(el('ul', {}, ...reasons.map((text) => el('li', { text }))));
    out.append(item);
  }
}

// ---------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('#sign-in-form').addEventListener('submit', (e) => {
    e.preventDefault();
    $('#sign-in-error').textContent = '';
    signIn($('#token').value, false);
  });
  $('#sign-out').addEventListener('click', signOut);
  $('#new-receiver').addEventListener('click', () => openForm(null));
  $('#add-condition').addEventListener('click', () => {
    // Adding a condition means conditions apply.
    $('#f-conditions-on').checked = true;
    const row = addCondition();
    showConditionsOn();
    $('.c-label', row).focus();
  });
  $('#f-conditions-on').addEventListener('change', showConditionsOn);
  $$('input[name=auth]').forEach((radio) => radio.addEventListener('change', () => setAuthType(radio.value)));
  $('#f-format').addEventListener('change', showFormat);
  $('#f-template').addEventListener('input', schedulePreview);
  $('#f-content-type').addEventListener('input', schedulePreview);
  $('#f-preview-sample').addEventListener('change', schedulePreview);
  $('#start-from-preset').addEventListener('click', startFromPreset);
  $('#receiver-form').addEventListener('submit', save);
  $('#cancel').addEventListener('click', closeForm);
  $('#send-test').addEventListener('click', sendTest);
  $('#dead-close').addEventListener('click', () => { $('#dead-view').hidden = true; });
  $('#explain-form').addEventListener('submit', explain);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('#form-view').hidden) closeForm();
  });
  if (token) signIn(token, true);
  else $('#token').focus();
});
