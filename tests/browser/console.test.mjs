// The web console in headless Chromium against the real relay binary and a
// loopback webhook target: sign in, create a receiver with two conditions,
// send a test message and see it arrive, toggle it off and on, see a bad
// regex's error beside its field, retry a dead letter, explain.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.ALERT_RELAY_BIN || path.join(ROOT, 'target/debug/alert-relay');
const SHOTS = process.env.SCREENSHOT_DIR || path.join(ROOT, 'target/console-screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOKEN = 'console-test-admin-token';

async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/// A webhook target on loopback that records requests; its answer can be changed.
function startTarget() {
  const target = { received: [], status: 200 };
  target.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      target.received.push({ path: req.url, headers: req.headers, body: JSON.parse(body || 'null') });
      res.writeHead(target.status);
      res.end();
    });
  });
  return new Promise((resolve) => target.server.listen(0, '127.0.0.1', () => {
    target.url = `http://127.0.0.1:${target.server.address().port}`;
    resolve(target);
  }));
}

async function startRelay(dir, adminLines) {
  const port = await freePort();
  const config = path.join(dir, 'relay.yaml');
  fs.writeFileSync(config, `server: { listen: '127.0.0.1:${port}' }
spool: { dir: '${path.join(dir, 'spool')}' }
${adminLines}
receivers:
  - name: from-file
    url: http://127.0.0.1:9/never
    enabled: false
    conditions: [{ label: team, operator: Exists }]
`);
  const log = fs.openSync(path.join(dir, 'relay.log'), 'a');
  const child = spawn(BIN, ['--config', config], { stdio: ['ignore', log, log] });
  const base = `http://127.0.0.1:${port}`;
  await waitFor('the relay to be ready', async () => {
    try { return (await fetch(`${base}/-/ready`)).ok; } catch { return false; }
  });
  return { child, base };
}

function alertPayload(group, labels) {
  return JSON.stringify({
    receiver: 'relay', status: 'firing', version: '4', groupKey: group, truncatedAlerts: 0,
    groupLabels: {}, commonLabels: {}, commonAnnotations: {}, externalURL: 'http://am',
    alerts: [{ status: 'firing', labels, annotations: {}, startsAt: new Date().toISOString(), endsAt: '0001-01-01T00:00:00Z', generatorURL: '', fingerprint: '0' }],
  });
}

async function postAlert(base, group, labels) {
  const r = await fetch(`${base}/webhook`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: alertPayload(group, labels) });
  assert.equal(r.status, 200);
  return (await r.json()).deliveries;
}

let dir, target, relay, offRelay, browser;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'alert-relay-console-'));
  fs.mkdirSync(SHOTS, { recursive: true });
  fs.mkdirSync(path.join(dir, 'off'));
  target = await startTarget();
  relay = await startRelay(dir, `admin: { token: ${TOKEN} }`);
  offRelay = await startRelay(path.join(dir, 'off'), '');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const r of [relay, offRelay]) {
    if (!r || r.child.exitCode !== null || r.child.signalCode !== null) continue;
    const exited = new Promise((resolve) => r.child.once('exit', resolve));
    r.child.kill('SIGTERM');
    // Its shutdown is bounded (25 s at most); past 30 s it is killed.
    const killer = setTimeout(() => r.child.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(killer);
  }
  if (target) target.server.close();
  if (!dir) return;
  // The relays' logs go beside the screenshots, the rest (spools, configs) away.
  for (const [from, name] of [['relay.log', 'relay.log'], ['off/relay.log', 'relay-off.log']]) {
    if (fs.existsSync(path.join(dir, from))) fs.copyFileSync(path.join(dir, from), path.join(SHOTS, name));
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('sign-in explains a wrong token and an admin API that is off', async () => {
  const page = await browser.newPage();
  await page.goto(`${offRelay.base}/`);
  await page.getByLabel('Admin token').fill('anything');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#sign-in-error').filter({ hasText: 'The admin API is off' }).waitFor();
  assert.match(await page.locator('#sign-in-error').textContent(), /admin\.token/);

  await page.goto(`${relay.base}/`);
  await page.getByLabel('Admin token').fill('wrong');
  await page.keyboard.press('Enter');
  await page.locator('#sign-in-error').filter({ hasText: 'Wrong admin token.' }).waitFor();
  await page.close();
});

test('the settings page, from sign-in to a retried dead letter', async () => {
  // Tall enough for the whole form: no full-page screenshots, which resize the
  // viewport under the next click.
  const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
  page.on('dialog', (d) => d.accept());
  await page.goto(`${relay.base}/`);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();

  // The provisioned receiver is read-only, and says why.
  const fileRow = page.locator('tr[data-receiver="from-file"]');
  await fileRow.waitFor();
  assert.equal(await fileRow.getByRole('switch').isDisabled(), true);
  assert.match(await fileRow.getByRole('switch').getAttribute('title'), /Provisioned by .*relay\.yaml/);

  // Create a receiver with two conditions.
  await page.getByRole('button', { name: 'New receiver' }).click();
  await page.getByLabel('Name', { exact: true }).fill('ops');
  await page.getByLabel('Webhook URL', { exact: true }).fill(`${target.url}/ops`);
  await page.getByLabel('Bearer token').check();
  await page.getByLabel('Token', { exact: true }).fill('ops-token');
  await page.getByRole('button', { name: 'Add condition' }).click();
  await page.getByLabel('Label (condition 1)').fill('severity');
  await page.getByLabel('Operator (condition 1)').selectOption({ label: 'Includes values' });
  await page.getByLabel('Values, one per line (condition 1)').fill('critical\nwarning');
  await page.getByRole('button', { name: 'Add condition' }).click();
  await page.getByLabel('Label (condition 2)').fill('namespace');
  await page.getByLabel('Operator (condition 2)').selectOption({ label: 'Exists' });
  assert.equal(await page.getByLabel('Values, one per line (condition 2)').isVisible(), false, 'Exists takes no values');

  // Send Test Message: it arrives, and the answer says real info alerts would not.
  await page.getByRole('button', { name: 'Send Test Message' }).click();
  await page.locator('#test-result .test-answer').filter({ hasText: 'Delivered: the target answered HTTP 200' }).waitFor();
  assert.match(await page.locator('#test-result .test-verdict').textContent(), /would NOT be delivered: condition 1 \(severity Includes values/);
  await waitFor('the test message at the target', () => target.received.length === 1);
  const test = target.received[0];
  assert.equal(test.path, '/ops');
  assert.equal(test.headers.authorization, 'Bearer ops-token');
  assert.equal(test.body.alerts[0].labels.alertname, 'AlertRelayTestMessage');
  await page.getByLabel(/Labels for the test alert/).fill('severity=critical, namespace=prod');
  await page.getByRole('button', { name: 'Send Test Message' }).click();
  await page.locator('#test-result .test-verdict').filter({ hasText: 'would be delivered' }).waitFor();
  await page.screenshot({ path: path.join(SHOTS, 'console-form.png') });

  // A bad regex: the API's error appears beside its condition.
  await page.getByRole('button', { name: 'Add condition' }).click();
  await page.getByLabel('Label (condition 3)').fill('pod');
  await page.getByLabel('Operator (condition 3)').selectOption({ label: 'Regex match' });
  await page.getByLabel('Values, one per line (condition 3)').fill('api-(unclosed');
  await page.getByRole('button', { name: 'OK' }).click();
  const regexError = page.locator('#condition-2-error');
  await regexError.filter({ hasText: 'invalid regex' }).waitFor();
  assert.equal(await page.getByLabel('Values, one per line (condition 3)').getAttribute('aria-invalid'), 'true', 'a bad regex marks Values');
  assert.equal(await page.getByLabel('Label (condition 3)').getAttribute('aria-invalid'), null);
  assert.equal(await page.locator('#condition-0-error').textContent(), '', 'only the bad row has an error');
  await page.screenshot({ path: path.join(SHOTS, 'console-regex-error.png') });
  await page.getByRole('button', { name: 'Delete condition 3' }).click();
  await page.getByRole('button', { name: 'OK' }).click();
  const row = page.locator('tr[data-receiver="ops"]');
  await row.waitFor();
  assert.equal(await page.locator('#form-view').isVisible(), false);

  // Real alerts flow; the toggle stops and restarts them.
  assert.equal(await postAlert(relay.base, 'g1', { alertname: 'Disk', severity: 'critical', namespace: 'prod' }), 1);
  await waitFor('a real alert at the target', () => target.received.length === 3);
  const toggle = row.getByRole('switch');
  assert.equal(await toggle.getAttribute('aria-checked'), 'true');
  await toggle.click();
  await waitFor('the toggle off', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'false');
  assert.equal(await postAlert(relay.base, 'g2', { alertname: 'Disk', severity: 'critical', namespace: 'prod' }), 0, 'disabled: no delivery');
  await row.getByRole('switch').click();
  await waitFor('the toggle on', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'true');
  await page.screenshot({ path: path.join(SHOTS, 'console-receivers.png') });

  // Safe edits: the form is open, someone turns the receiver off in the list;
  // OK does not silently turn it back on but reports the conflict.
  await row.getByRole('button', { name: 'Edit ops' }).click();
  assert.equal(await page.locator('#f-enabled').isChecked(), true);
  await row.getByRole('switch').click();
  await waitFor('the toggle off', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'false');
  await page.getByRole('button', { name: 'OK' }).click();
  const conflict = page.locator('#form-conflict');
  await conflict.filter({ hasText: 'changed by someone else' }).waitFor();
  assert.match(await conflict.textContent(), /Changed meanwhile: enabled/);
  assert.equal(await page.locator('#form-view').isVisible(), true, 'not saved, the form stays');
  await page.getByRole('button', { name: 'Reload their version' }).click();
  assert.equal(await page.locator('#f-enabled').isChecked(), false, 'their version: off');
  await page.keyboard.press('Escape');
  assert.equal(await row.getByRole('switch').getAttribute('aria-checked'), 'false', 'still off');
  assert.match(await row.textContent(), /alerts dropped since turned off/);
  await row.getByRole('switch').click();
  await waitFor('the toggle on again', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'true');

  // A dead letter, retried from the console.
  target.status = 400;
  assert.equal(await postAlert(relay.base, 'g3', { alertname: 'Dead', severity: 'warning', namespace: 'prod' }), 1);
  await waitFor('the dead letter in the list', async () => (await row.locator('[data-col=dead]').textContent()) === '1');
  await row.getByRole('button', { name: 'Dead letters of ops' }).click();
  const dead = page.locator('#dead-letters tbody tr');
  await dead.first().waitFor();
  assert.equal(await dead.count(), 1);
  assert.match(await dead.first().textContent(), /clientError/);
  await page.screenshot({ path: path.join(SHOTS, 'console-dead-letters.png') });
  target.status = 200;
  const before = target.received.length;
  await dead.first().getByRole('button', { name: /^Retry delivery/ }).click();
  await waitFor('the retried dead letter at the target', () => target.received.slice(before).some((r) => r.body.alerts[0].labels.alertname === 'Dead'));
  await page.locator('#dead-status').filter({ hasText: 'requeued' }).waitFor();

  // Explain: which receivers would get an alert, and why not the others.
  await page.getByLabel(/Alert labels, one/).fill('alertname=Cpu\nseverity=info\nnamespace=prod');
  await page.getByRole('button', { name: 'Explain' }).click();
  const ops = page.locator('#explain-result > li[data-receiver="ops"]');
  await ops.waitFor();
  assert.match(await ops.textContent(), /would not receive it.*condition 1 \(severity Includes values/);
  await page.getByLabel(/Alert labels, one/).fill('severity=warning\nnamespace=prod');
  await page.getByRole('button', { name: 'Explain' }).click();
  await page.locator('#explain-result > li[data-receiver="ops"]').filter({ hasText: 'would receive it' }).waitFor();
  assert.match(await page.locator('#explain-result > li[data-receiver="from-file"]').textContent(), /disabled/);
  await page.screenshot({ path: path.join(SHOTS, 'console-explain.png') });

  // Every form control has a label a screen reader can read.
  await page.getByRole('button', { name: 'Edit ops' }).click();
  const unlabelled = await page.evaluate(() => Array.from(document.querySelectorAll('input, select, textarea'))
    .filter((e) => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
    .map((e) => e.id || e.outerHTML));
  assert.deepEqual(unlabelled, []);
  // The form is reachable and closable by keyboard.
  assert.equal(await page.evaluate(() => document.activeElement.id), 'f-url');
  await page.keyboard.press('Escape');
  assert.equal(await page.locator('#form-view').isVisible(), false);
  await page.close();
});

test('keyboard only on a 390 px phone: create, toggle, edit, delete; focus survives refreshes', async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  page.on('dialog', (d) => d.accept());
  const active = () => page.evaluate(() => {
    const e = document.activeElement;
    return e ? (e.getAttribute('aria-label') || e.id || e.tagName) : null;
  });
  const press = async (locator, key = 'Enter') => { await locator.focus(); await page.keyboard.press(key); };
  await page.goto(`${relay.base}/`);
  await page.getByLabel('Admin token').focus();
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.locator('tr[data-receiver="from-file"]').waitFor();

  // Create, with a condition whose regex is bad: the error marks Values, not Label.
  await press(page.getByRole('button', { name: 'New receiver' }));
  assert.equal(await active(), 'f-name');
  await page.keyboard.type('kb');
  await page.getByLabel('Webhook URL', { exact: true }).focus();
  await page.keyboard.type(`${target.url}/kb`);
  await press(page.getByRole('button', { name: 'Add condition' }));
  assert.equal(await active(), 'condition-0-label', 'a new condition row takes the focus');
  assert.equal(await page.locator('#f-conditions-on').isChecked(), true, 'adding a condition ticks the box');
  await page.keyboard.type('pod');
  await page.getByLabel('Operator (condition 1)').selectOption({ label: 'Regex match' });
  await page.getByLabel('Values, one per line (condition 1)').focus();
  await page.keyboard.type('(bad');
  // A phone's width: nothing overflows, the operator is not clipped.
  const overflow = await page.evaluate(() => {
    const select = document.querySelector('#condition-0-operator').getBoundingClientRect();
    return { page: document.documentElement.scrollWidth, right: select.right };
  });
  assert.ok(overflow.page <= 390 && overflow.right <= 390, JSON.stringify(overflow));
  await page.screenshot({ path: path.join(SHOTS, 'console-390px-form.png') });
  await press(page.getByRole('button', { name: 'OK' }));
  await page.locator('#condition-0-error').filter({ hasText: 'invalid regex' }).waitFor();
  assert.equal(await page.locator('#condition-0-values').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.locator('#condition-0-label').getAttribute('aria-invalid'), null);
  assert.equal(await active(), 'condition-0-values', 'the focus goes to the field in error');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('web-.*');
  // Unticked, the rows stay but do not apply; ticked again, nothing was lost.
  await press(page.locator('#f-conditions-on'), 'Space');
  assert.equal(await page.locator('#f-conditions-on').isChecked(), false);
  assert.equal(await page.locator('#condition-0-label').inputValue(), 'pod');
  await press(page.locator('#f-conditions-on'), 'Space');
  await press(page.getByRole('button', { name: 'OK' }));
  const row = page.locator('tr[data-receiver="kb"]');
  await row.waitFor();
  assert.equal(await active(), 'new-receiver');

  // Toggle by keyboard; the list's refresh keeps the focus where it was.
  const toggle = row.getByRole('switch');
  await press(toggle, 'Space');
  await waitFor('kb off', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'false');
  assert.equal(await active(), 'Notifications for kb');
  await page.evaluate(() => refresh());
  assert.equal(await active(), 'Notifications for kb', 'a refresh does not drop the focus to <body>');
  await press(row.getByRole('switch'), 'Space');
  await waitFor('kb on', async () => (await row.getByRole('switch').getAttribute('aria-checked')) === 'true');

  // Edit: the form opens on the URL; Escape closes it.
  await press(row.getByRole('button', { name: 'Edit kb' }));
  assert.equal(await active(), 'f-url');
  assert.equal(await page.locator('#f-conditions-on').isChecked(), true);
  await page.keyboard.press('Escape');
  assert.equal(await page.locator('#form-view').isVisible(), false);
  await page.evaluate(() => refresh());
  assert.equal(await active(), 'new-receiver');

  // Delete: the focus goes to the row that took its place.
  const before = await page.locator('#receivers tbody tr[data-receiver]').evaluateAll((rows) => rows.map((r) => r.dataset.receiver));
  const at = before.indexOf('kb');
  await press(row.getByRole('button', { name: 'Delete kb' }));
  await waitFor('kb gone', async () => (await page.locator('tr[data-receiver="kb"]').count()) === 0);
  const after = before.filter((n) => n !== 'kb');
  const expected = after.length ? `${after[Math.min(at, after.length - 1)] === 'from-file' ? 'View' : 'Edit'} ${after[Math.min(at, after.length - 1)]}` : 'new-receiver';
  assert.equal(await active(), expected);
  await page.screenshot({ path: path.join(SHOTS, 'console-390px-list.png') });
  await page.close();
});

test('OAuth 2.0 and request signing from the form: the test message carries both, secrets come back redacted and are kept', async () => {
  // A loopback token endpoint for the OAuth 2.0 client credentials grant.
  const tokenRequests = [];
  const idp = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      tokenRequests.push({ headers: req.headers, body });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: 'console-issued-token', token_type: 'Bearer', expires_in: 3600 }));
    });
  });
  await new Promise((resolve) => idp.listen(0, '127.0.0.1', resolve));
  const tokenUrl = `http://127.0.0.1:${idp.address().port}/token`;
  const secret = `whsec_${Buffer.alloc(32, 9).toString('base64')}`;
  const page = await browser.newPage({ viewport: { width: 1280, height: 2400 } });
  await page.goto(`${relay.base}/`);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'New receiver' }).click();
  await page.getByLabel('Name', { exact: true }).fill('secured');
  await page.getByLabel('Webhook URL', { exact: true }).fill(`${target.url}/secured`);
  await page.getByLabel('OAuth 2.0 client credentials').check();
  await page.getByLabel('Client ID').fill('relay-client');
  await page.getByLabel('Client secret').fill('client-secret-value');
  await page.getByLabel('Token URL').fill(tokenUrl);
  await page.getByLabel('Scopes (space-separated)').fill('alerts.write alerts.read');
  await page.getByLabel(/Endpoint parameters/).fill('audience=alerts');
  await page.getByLabel('Signing secret (whsec_…)').fill(secret);
  const before = target.received.length;
  await page.getByRole('button', { name: 'Send Test Message' }).click();
  await page.locator('#test-result .test-answer').filter({ hasText: 'Delivered' }).waitFor();
  await waitFor('the signed test message', () => target.received.length === before + 1);
  const got = target.received[before];
  assert.equal(got.headers.authorization, 'Bearer console-issued-token');
  assert.match(got.headers['webhook-signature'], /^v1,[A-Za-z0-9+/]+=*$/);
  assert.equal(got.headers['webhook-id'], got.headers['idempotency-key']);
  assert.equal(tokenRequests.length, 1);
  assert.match(tokenRequests[0].body, /grant_type=client_credentials&scope=alerts.write\+alerts.read&audience=alerts/);
  await page.screenshot({ path: path.join(SHOTS, 'console-oauth-signing.png') });
  await page.getByRole('button', { name: 'OK' }).click();
  await page.locator('tr[data-receiver="secured"]').waitFor();

  // The API shows the secrets redacted; the form shows them so, and OK keeps them.
  const shown = await (await fetch(`${relay.base}/api/v1/receivers/secured`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(shown.auth.client_secret, '<redacted>');
  assert.equal(shown.signing.secret, '<redacted>');
  assert.deepEqual(shown.auth.scopes, ['alerts.write', 'alerts.read']);
  assert.deepEqual(shown.auth.endpoint_params, { audience: 'alerts' });
  assert.ok(!JSON.stringify(shown).includes('client-secret-value') && !JSON.stringify(shown).includes(secret));
  await page.locator('tr[data-receiver="secured"]').getByRole('button', { name: 'Edit secured' }).click();
  assert.equal(await page.getByLabel('Client secret').inputValue(), '<redacted>');
  await page.getByLabel('Client ID').fill('relay-client-2');
  await page.getByRole('button', { name: 'OK' }).click();
  await waitFor('the edit saved', async () => {
    const r = await (await fetch(`${relay.base}/api/v1/receivers/secured`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
    return r.auth.client_id === 'relay-client-2' && r.auth.client_secret === '<redacted>' && r.signing.secret === '<redacted>';
  });
  const r = await fetch(`${relay.base}/api/v1/receivers/secured/test`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(r.status, 200, 'the kept secrets still work');
  await page.close();
  idp.close();
});

test('body format: choose a preset, start a template from it, edit with a live preview, send a test message that arrives rendered', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 2600 } });
  await page.goto(`${relay.base}/`);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'New receiver' }).click();
  await page.getByLabel('Name', { exact: true }).fill('chat');
  await page.getByLabel('Webhook URL', { exact: true }).fill(`${target.url}/chat`);

  // A preset: its preview shows a Slack body without any template to write.
  await page.getByLabel('Format', { exact: true }).selectOption('slack');
  assert.equal(await page.locator('#template-editor').isVisible(), false, 'a preset needs no editor');
  await page.locator('#preview').filter({ hasText: '"attachments"' }).waitFor();
  assert.match(await page.locator('#preview-status').textContent(), /application\/json, \d+ bytes, rendered from the firing sample/);

  // Start a template from the Discord preset, then edit it: the preview follows.
  await page.getByLabel('Format', { exact: true }).selectOption('template');
  await page.getByLabel('Start from preset').selectOption('discord');
  await page.getByRole('button', { name: 'Copy into the template' }).click();
  await waitFor('the preset copied into the editor', async () => /"embeds"/.test(await page.getByLabel(/^Template \(MiniJinja/).inputValue()));
  await page.locator('#preview').filter({ hasText: '"embeds"' }).waitFor();
  const editor = page.getByLabel(/^Template \(MiniJinja/);
  await editor.fill('{"text": {{ ("Edited: " ~ status ~ " " ~ (alerts | length)) | tojson }}}');
  await page.locator('#preview').filter({ hasText: '"Edited: firing 2"' }).waitFor();
  await page.getByLabel('Preview with').selectOption('large');
  await page.locator('#preview').filter({ hasText: '"Edited: firing 300"' }).waitFor();

  // A broken edit: the error, with its line, beside the editor.
  await editor.fill('{"text": {{ status | shout }}}');
  await page.locator('#f-template-error').filter({ hasText: 'shout' }).waitFor();
  assert.match(await page.locator('#f-template-error').textContent(), /line 1/);
  assert.equal(await editor.getAttribute('aria-invalid'), 'true');
  await editor.fill('{"text": {{ ("Edited: " ~ status ~ " " ~ (alerts | length)) | tojson }}}');
  await waitFor('the error to clear', async () => (await page.locator('#f-template-error').textContent()) === '');
  assert.match(await page.locator('#preview').textContent(), /"Edited: firing 300"/);
  assert.equal(await editor.getAttribute('aria-invalid'), null);
  await page.screenshot({ path: path.join(SHOTS, 'console-template-preview.png') });

  // Send Test Message uses the template: the target gets the rendered body, and the answer shows it.
  const before = target.received.length;
  await page.getByRole('button', { name: 'Send Test Message' }).click();
  await page.locator('#test-result .test-answer').filter({ hasText: 'Delivered' }).waitFor();
  await waitFor('the rendered test message', () => target.received.length === before + 1);
  const got = target.received[before];
  assert.equal(got.path, '/chat');
  assert.deepEqual(got.body, { text: 'Edited: firing 1' });
  assert.match(await page.locator('#test-result .test-body').textContent(), /Edited: firing 1/);

  // Saved: the API has the template; a real alert arrives rendered.
  await page.getByRole('button', { name: 'OK' }).click();
  await page.locator('tr[data-receiver="chat"]').waitFor();
  const saved = await (await fetch(`${relay.base}/api/v1/receivers/chat`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(saved.payload.format, 'template');
  assert.match(saved.payload.template, /Edited: /);
  await postAlert(relay.base, 'fmt', { alertname: 'Formatted' });
  await waitFor('the real alert, rendered', () => target.received.some((r) => r.path === '/chat' && r.body && r.body.text === 'Edited: firing 1' && r !== got));
  await page.close();
});
