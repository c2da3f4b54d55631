// The built-in web client in a real browser: headless Chromium (Debian's
// package) driven by playwright-core, against the real signaling-server and
// fake-device binaries on loopback. Run by `cargo xtask browser`, which
// builds the binaries and installs what is missing; SIGNALING_BIN_DIR names
// the folder of the binaries.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { connect as tcpConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const binDir = process.env.SIGNALING_BIN_DIR ?? '../target/debug';
const artifacts = process.env.SIGNALING_ARTIFACTS ?? '../target/browser-tests';
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
mkdirSync(artifacts, { recursive: true });

const processes = new Set();

// Starts a binary; resolves with the first stdout line matching `pattern`.
function start(name, args, pattern, env = {}) {
  const child = spawn(join(binDir, name), args, {
    // The webrtc crate warns about every stray STUN packet; errors only.
    env: { ...process.env, RUST_LOG: 'error', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  processes.add(child);
  child.on('exit', () => processes.delete(child));
  if (!pattern) return Promise.resolve({ child });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const match = line.match(pattern);
      if (match) resolve({ child, match });
    });
    child.on('exit', (code) => reject(new Error(`${name} exited (${code}) before printing ${pattern}`)));
  });
}

function stop(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.on('exit', resolve);
    child.kill(signal);
  });
}

// A port free on loopback now (TCP; coturn also takes the UDP one).
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// Whether a STUN Binding request to 127.0.0.1:`port` is answered.
function answersStun(port) {
  return new Promise((resolve) => {
    const socket = createSocket('udp4');
    const request = Buffer.alloc(20);
    request.writeUInt16BE(1, 0);
    request.writeUInt32BE(0x2112a442, 4);
    const timer = setTimeout(() => { socket.close(); resolve(false); }, 200);
    socket.on('message', (answer) => {
      clearTimeout(timer);
      socket.close();
      resolve(answer.readUInt16BE(0) === 0x0101);
    });
    socket.send(request, port, '127.0.0.1');
  });
}

// Debian's coturn on a free loopback port, taking TURN REST credentials
// signed with `secret` (as support::coturn starts it for the Rust tests).
async function coturn(secret) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'coturn-'));
  const child = spawn('turnserver', ['-n', '--listening-ip', '127.0.0.1', '--relay-ip', '127.0.0.1',
    '--listening-port', String(port), '--realm', 'signaling-test', '--use-auth-secret',
    `--static-auth-secret=${secret}`, '--allow-loopback-peers', '--no-cli', '--no-tls', '--no-dtls',
    '--no-multicast-peers', '--simple-log', '--no-stdout-log', '--verbose',
    '--log-file', join(dir, 'turn.log'), '--pidfile', join(dir, 'turn.pid'), '--userdb', join(dir, 'turn.db')],
  { stdio: 'ignore' });
  processes.add(child);
  child.on('exit', () => processes.delete(child));
  await until('coturn answers', () => answersStun(port), 10000);
  return {
    url: `turn:127.0.0.1:${port}?transport=udp`,
    log: () => readFileSync(join(dir, 'turn.log'), 'utf8'),
    stop: async () => { await stop(child); rmSync(dir, { recursive: true, force: true }); },
  };
}

// A server of its own handing out credentials for `turnUrl` signed with
// `secret`: its http:// base.
async function turnServer(turnUrl, secret) {
  const { child, match: [, address] } = await start('signaling-server',
    ['--listen', '127.0.0.1:0', '--turn-url', turnUrl], /signaling server on ws:\/\/(\S+)/,
    { SIGNALING_TURN_SECRET: secret });
  return { child, base: 'http://' + address };
}

let server;
let base;
let browser;

async function devices() {
  return (await fetch(base + '/devices')).json();
}

async function until(what, check, limitMs = 15000) {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`timed out waiting until ${what}`);
}

// A fake device registered under `id`, listed by the server.
async function fakeDevice(id) {
  const { child } = await start('fake-device', ['--server', base.replace('http', 'ws'), '--device-id', id,
    '--device-info', JSON.stringify({ name: id, displays: [{ x_res: 640, y_res: 360 }] })]);
  await until(`${id} is listed`, async () => (await devices()).includes(id));
  return child;
}

// A fake device with its own, Cuttlefish-shaped, device_info and
// `displays` displays, listed by the server at `on` (the shared one unless
// given).
async function cuttlefishDevice(id, displays, on = base) {
  const { child } = await start('fake-device', ['--server', on.replace('http', 'ws'), '--device-id', id,
    '--displays', String(displays)]);
  await until(`${id} is listed`, async () => (await (await fetch(on + '/devices')).json()).includes(id));
  return child;
}

async function newPage() {
  const context = await browser.newContext();
  return context.newPage();
}

// Waits for the data channel, then checks that it echoes.
async function expectEcho(page, text) {
  await page.locator('#timeline [data-phase="data channel open"]').waitFor({ timeout: 15000 });
  await page.fill('#console-input', text);
  await page.click('#console-send');
  await page.locator('#console-log', { hasText: 'echo: ' + text }).waitFor({ timeout: 5000 });
}

before(async () => {
  ({ match: [, base] } = await start('signaling-server', ['--listen', '127.0.0.1:0'],
    /signaling server on ws:\/\/(\S+)/));
  base = 'http://' + base;
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
      // Make host candidates reachable on a loopback-only machine.
      '--disable-features=WebRtcHideLocalIpsWithMdns', '--allow-loopback-in-peer-connection',
    ],
    // Playwright gives every launch a fresh, empty profile of its own.
  });
});

after(async () => {
  await browser?.close();
  await Promise.all([...processes].map((child) => stop(child, 'SIGKILL')));
});

test('the page lists the fake device, connects, and the data channel echoes', async () => {
  const device = await fakeDevice('web-echo');
  const page = await newPage();
  await page.goto(base + '/');
  await page.locator('#devices [data-device-id="web-echo"] a').click();
  await expectEcho(page, 'hello from the browser');
  for (const phase of ['websocket open', 'config', 'device_info', 'offer received', 'answer sent', 'data channel open']) {
    assert.equal(await page.locator(`#timeline [data-phase="${phase}"]`).count(), 1, phase);
  }
  assert.match(await page.textContent('#device-info'), /"name": "web-echo"/);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'connected');
  await page.context().close();
  await stop(device);
});

test('the fake device\'s screen plays: frames keep decoding at the display\'s size', async (t) => {
  const device = await fakeDevice('web-video');
  const page = await newPage();
  const loaded = Date.now();
  await page.goto(base + '/?deviceId=web-video');
  await page.locator('#timeline [data-phase="video track"]').waitFor({ timeout: 15000 });
  // framesDecoded of the inbound video stream, from the page's own stats.
  const decoded = () => page.evaluate(async () => {
    const video = document.getElementById('video');
    const stats = await window.currentPeer().getStats();
    let frames = 0;
    stats.forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') frames = report.framesDecoded ?? 0;
    });
    return { frames, width: video.videoWidth, height: video.videoHeight };
  });
  await until('the first frame is decoded', async () => (await decoded()).frames >= 1, 15000);
  t.diagnostic(`first video frame decoded ${Date.now() - loaded} ms after the page was opened`);
  await until('ten frames are decoded', async () => (await decoded()).frames >= 10, 15000);
  const first = await decoded();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const later = await decoded();
  assert.ok(later.frames >= first.frames + 15, `framesDecoded ${first.frames} then ${later.frames} a second later`);
  assert.deepEqual([later.width, later.height], [640, 360]);
  t.diagnostic(`${later.frames - first.frames} frames decoded in one second`);
  await expectEcho(page, 'hello from the browser');
  await page.screenshot({ path: join(artifacts, 'connected.png'), fullPage: true });
  await page.context().close();
  await stop(device);
});

test('two displays play at once, each in its own screen, and a click on either reaches the device', async (t) => {
  const device = await cuttlefishDevice('web-displays', 2);
  const page = await newPage();
  await page.goto(base + '/?deviceId=web-displays');
  await page.locator('#timeline [data-phase="data channel open"]').waitFor({ timeout: 15000 });
  const screens = () => page.evaluate(async () => {
    const stats = await window.currentPeer().getStats();
    const decoded = [];
    stats.forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') decoded.push(report.framesDecoded ?? 0);
    });
    const shown = [...document.querySelectorAll('#screens video')]
      .map((video) => (video.srcObject ? video.dataset.stream : null));
    return { decoded, shown };
  });
  await until('both displays decode frames', async () => {
    const { decoded } = await screens();
    return decoded.length === 2 && decoded.every((frames) => frames >= 10);
  });
  assert.deepEqual((await screens()).shown, ['display_0', 'display_1']);
  const reported = async () => {
    const count = await page.getAttribute('#input-count', 'data-count');
    return { count: Number(count ?? 0), last: JSON.parse((await page.getAttribute('#input-count', 'data-last')) ?? 'null') };
  };
  // The input channel opens beside the echo channel; click until it has.
  await until('a click on the first display reaches the device', async () => {
    await page.click('#video');
    return (await reported()).count >= 2;
  });
  const first = await reported();
  assert.equal(first.last.type, 'multi-touch');
  assert.equal(first.last.device_label, 'display_0');
  // The middle of a 720×1280 display, give or take the click's rounding.
  assert.ok(Math.abs(first.last.x[0] - 360) <= 2 && Math.abs(first.last.y[0] - 640) <= 2, JSON.stringify(first.last));
  // Reports of the first display's clicks may still be on their way.
  await page.click('video[data-stream="display_1"]');
  await until('the click on the second display is reported', async () =>
    (await reported()).last?.device_label === 'display_1');
  assert.ok((await reported()).count > first.count);
  // A key while the second display has focus (the click gave it) goes
  // to the device as Cuttlefish's keyboard event.
  await page.keyboard.press('KeyA');
  await until('the key is reported', async () => (await reported()).last?.type === 'keyboard');
  assert.equal((await reported()).last.keycode, 'KeyA');
  t.diagnostic(`the device counted ${(await reported()).count} inputs`);
  // The device's audio_0 track plays in the page's audio element.
  await until('the audio element has the device\'s audio track', () => page.evaluate(() => {
    const stream = document.getElementById('audio').srcObject;
    return Boolean(stream && stream.getAudioTracks().some((track) => track.readyState === 'live'));
  }));
  // Fullscreen holds every screen.
  await page.click('#fullscreen');
  await until('the screens are fullscreen', () => page.evaluate(() => document.fullscreenElement?.id === 'screens'));
  await page.evaluate(() => document.exitFullscreen());
  // The connection panel: the selected pair with its candidates' types
  // (on loopback host, or prflx for a candidate the checks found before
  // its signaling arrived), its round trip, both displays' frame rate.
  const stat = (key) => page.textContent(`#stats [data-stat="${key}"] dd`);
  const type = '(host|srflx|prflx|relay)';
  let pair = '';
  await until('the stats panel shows the selected pair', async () => {
    pair = await stat('pair');
    return new RegExp(`^${type} ↔ ${type} \\((udp|tcp)\\)$`).test(pair);
  }).catch((e) => assert.fail(`${e.message}; the panel says ${JSON.stringify(pair)}`));
  // Frames per second for each display: two numbers, both near 30.
  const rates = async () => (await stat('fps')).split('·').map((each) => Number(each.trim()));
  await until('the stats panel shows a round trip and each display\'s frame rate', async () => {
    const each = await rates();
    return /ms$/.test(await stat('rtt')) && each.length === 2 && each.every((fps) => fps >= 20);
  });
  t.diagnostic(`pair ${await stat('pair')}, round trip ${await stat('rtt')}, ${await stat('bitrate')}, ${await stat('fps')} fps`);
  // The timeline keeps the handshake's order.
  const phases = await page.$$eval('#timeline li', (items) => items.map((item) => item.dataset.phase));
  const order = ['websocket open', 'config', 'device_info', 'offer received', 'answer sent', 'DTLS connected', 'video track'];
  const seen = order.filter((phase) => phases.includes(phase));
  assert.deepEqual(seen, order, `timeline ${phases.join(', ')}`);
  assert.deepEqual(phases.filter((phase) => order.includes(phase)), order, `timeline ${phases.join(', ')}`);
  await page.screenshot({ path: join(artifacts, 'two-displays.png'), fullPage: true });
  await page.context().close();
  await stop(device);
});

test('400 px wide, the page is one column and nothing runs off its side', async () => {
  const device = await fakeDevice('web-narrow');
  const context = await browser.newContext({ viewport: { width: 400, height: 800 } });
  const page = await context.newPage();
  await page.goto(base + '/?deviceId=web-narrow');
  await expectEcho(page, 'narrow');
  const widths = await page.evaluate(() => ({
    page: document.documentElement.scrollWidth,
    sections: [...document.querySelectorAll('section, nav')].map((el) => el.getBoundingClientRect().right),
  }));
  assert.ok(widths.page <= 400, `the page is ${widths.page} px wide`);
  assert.ok(widths.sections.every((right) => right <= 400), `sections end at ${widths.sections}`);
  await context.close();
  await stop(device);
});

test('a deep link connects at once; a second tab connects to the same device at the same time', async () => {
  const device = await fakeDevice('web-two');
  const first = await newPage();
  const second = await newPage();
  await Promise.all([first.goto(base + '/?deviceId=web-two'), second.goto(base + '/?deviceId=web-two')]);
  await Promise.all([expectEcho(first, 'one'), expectEcho(second, 'two')]);
  await first.context().close();
  await second.context().close();
  await stop(device);
});

test('the page says so when the device goes away', async () => {
  const device = await fakeDevice('web-restart');
  const page = await newPage();
  await page.goto(base + '/?deviceId=web-restart');
  await expectEcho(page, 'before');
  // Killed, its session is held for a resume that will not come; the
  // device that comes back under its id registers afresh and takes it,
  // and the page hears that the one it had left.
  await stop(device, 'SIGKILL');
  const again = await fakeDevice('web-restart');
  await page.locator('#status', { hasText: 'Device disconnected' }).waitFor({ timeout: 10000 });
  // Its screen is cleared, and the page connects again on its own.
  await expectEcho(page, 'after');
  await page.context().close();
  await stop(again);
});

// A TCP proxy on loopback in front of `target` (host:port) whose
// connections the test can cut at once, as a failing network would: the
// browser sees its websocket end without a close frame (1006).
async function cuttingProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const open = new Set();
  const proxy = createServer((client) => {
    const upstream = tcpConnect(port, host);
    const pair = [client, upstream];
    open.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => { open.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    base: `http://127.0.0.1:${proxy.address().port}`,
    cut() {
      const cut = open.size;
      for (const [client, upstream] of open) { client.resetAndDestroy(); upstream.resetAndDestroy(); }
      open.clear();
      return cut;
    },
    close: () => new Promise((resolve) => { for (const [a, b] of open) { a.destroy(); b.destroy(); } proxy.close(resolve); }),
  };
}

test('a cut signaling connection resumes: no new offer, the screen and the echo go on', async (t) => {
  const device = await fakeDevice('web-resume');
  const proxy = await cuttingProxy(base.replace('http://', ''));
  const page = await newPage();
  // The device list polls plain HTTP through the proxy too; only the
  // websocket matters here.
  await page.goto(proxy.base + '/?deviceId=web-resume');
  await expectEcho(page, 'before the cut');
  await page.locator('#timeline [data-phase="video track"]').waitFor({ timeout: 15000 });
  const frames = () => page.evaluate(async () => {
    let decoded = 0;
    (await window.currentPeer().getStats()).forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') decoded = report.framesDecoded ?? 0;
    });
    return decoded;
  });
  const peerBefore = await page.evaluate(() => { window.peerBefore = window.currentPeer(); return true; });
  assert.ok(peerBefore);
  const cut = proxy.cut();
  t.diagnostic(`cut ${cut} connection(s)`);
  await page.locator('#timeline li', { hasText: /^\S+ ms resumed after \d+ ms$/ }).waitFor({ timeout: 10000 });
  const atResume = await frames();
  await expectEcho(page, 'after the cut');
  await until('the screen goes on playing', async () => (await frames()) >= atResume + 15, 10000);
  // The same peer connection, one offer, no error.
  assert.ok(await page.evaluate(() => window.peerBefore === window.currentPeer()));
  assert.equal(await page.locator('#timeline [data-phase="offer received"]').count(), 1);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'connected');
  await page.context().close();
  await proxy.close();
  await stop(device);
});

test('over wss:// with a self-signed certificate and tokens, ?token= reaches every request', async () => {
  const certs = join(artifacts, 'tls');
  const { child: secure, match: [, address] } = await start('signaling-server', [
    '--listen', '127.0.0.1:0', '--tls-self-signed', '--tls-self-signed-dir', certs,
    '--client-token', 'client-secret', '--device-token', 'device-secret',
  ], /signaling server on wss:\/\/(\S+)/);
  const port = address.split(':').pop();
  const device = (await start('fake-device', ['--server', `wss://localhost:${port}`,
    '--ca-cert', join(certs, 'cert.pem'), '--token', 'device-secret', '--device-id', 'web-secure'])).child;
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  // Without the token the device list is refused.
  await page.goto(`https://localhost:${port}/`);
  await page.locator('#no-devices', { hasText: 'HTTP 401' }).waitFor({ timeout: 10000 });
  await page.goto(`https://localhost:${port}/?token=client-secret&deviceId=web-secure`);
  await page.locator('#devices [data-device-id="web-secure"]').waitFor({ timeout: 10000 });
  await expectEcho(page, 'over wss');
  await context.close();
  await stop(device);
  await stop(secure);
});

test('the polling flow works when the page has no websockets', async () => {
  const device = await fakeDevice('web-poll');
  const page = await newPage();
  await page.addInitScript(() => { delete window.WebSocket; });
  await page.goto(base + '/?deviceId=web-poll');
  await expectEcho(page, 'over polling');
  assert.equal(await page.locator('#timeline [data-phase="polling"]').count(), 1);
  assert.equal(await page.locator('#timeline [data-phase="websocket open"]').count(), 0);
  await page.context().close();
  await stop(device);
});

// A page in the Go operator's layout (/devices/{id}/files/…) that uses this
// server's js/server_connector.js as Cuttlefish's client does: request the
// device, send request-offer, and wait for the device's offer.
const CONNECTOR_PAGE = `<!doctype html>
<script type="module">
import * as connectorModule from './js/server_connector.js';
window.result = (async () => {
  const id = connectorModule.deviceId();
  const connector = await connectorModule.createConnector();
  const messages = [];
  connector.onDeviceMsg((message) => messages.push(message));
  const { deviceInfo, infraConfig } = await connector.requestDevice(id);
  await connector.sendToDevice({ type: 'request-offer', ice_servers: [] });
  connector.expectMessagesSoon(10000);
  const deadline = Date.now() + 10000;
  while (!messages.some((m) => m.type === 'offer') && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { id, deviceInfo, infraConfig, offer: messages.some((m) => m.type === 'offer') };
})();
</script>`;

// Runs the connector page for `id` on a server serving it from an
// assets folder; `withoutWebSockets` takes WebSocket away first.
async function connectorRun(id, { withoutWebSockets = false, token } = {}) {
  const assets = join(artifacts, `connector-assets-${id}`);
  mkdirSync(assets, { recursive: true });
  writeFileSync(join(assets, 'connector.html'), CONNECTOR_PAGE);
  const tokenFlags = token ? ['--client-token', token] : [];
  const { child: own, match: [, address] } = await start('signaling-server',
    ['--listen', '127.0.0.1:0', '--assets-dir', assets, ...tokenFlags], /signaling server on ws:\/\/(\S+)/);
  const device = (await start('fake-device', ['--server', `ws://${address}`, '--device-id', id,
    '--device-info', JSON.stringify({ name: id })])).child;
  const list = token ? `?token=${encodeURIComponent(token)}` : '';
  await until(`${id} is listed`, async () =>
    (await (await fetch(`http://${address}/devices${list}`)).json()).includes(id));
  const context = await browser.newContext();
  const page = await context.newPage();
  const logs = [];
  page.on('console', (message) => logs.push(message.text()));
  if (withoutWebSockets) await page.addInitScript(() => { delete window.WebSocket; });
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  await page.goto(`http://${address}/devices/${id}/files/connector.html${query}`);
  const result = await page.evaluate(() => window.result);
  await context.close();
  await stop(device);
  await stop(own);
  return { result, logs };
}

test('the server\'s connector: websocket first, the device\'s offer arrives', async () => {
  const { result, logs } = await connectorRun('web-connector');
  assert.equal(result.id, 'web-connector');
  assert.deepEqual(result.deviceInfo, { name: 'web-connector' });
  assert.equal(result.infraConfig.message_type, 'config');
  assert.ok(result.offer, 'the device\'s offer came');
  assert.ok(logs.includes('signaling over the websocket'), logs.join('\n'));
});

test('the server\'s connector falls back to polling, with the page\'s token on every request', async () => {
  const { result, logs } = await connectorRun('web-connector-poll', { withoutWebSockets: true, token: 'page-secret' });
  assert.deepEqual(result.deviceInfo, { name: 'web-connector-poll' });
  assert.ok(result.offer, 'the device\'s offer came by polling');
  assert.ok(logs.includes('signaling by polling'), logs.join('\n'));
});

// The Cuttlefish contract page (cuttlefish-contract/index.html: written
// from the contract Cuttlefish's web client holds a device to, with
// nothing of this repository's client in it), served from a server's
// --assets-dir, connected to a fake device registered there.
async function contractPage(id, deviceArgs) {
  const assets = new URL('./cuttlefish-contract', import.meta.url).pathname;
  const { child: own, match: [, address] } = await start('signaling-server',
    ['--listen', '127.0.0.1:0', '--assets-dir', assets], /signaling server on ws:\/\/(\S+)/);
  const device = (await start('fake-device', ['--server', `ws://${address}`, '--device-id', id, ...deviceArgs])).child;
  await until(`${id} is listed`, async () =>
    (await (await fetch(`http://${address}/devices`)).json()).includes(id));
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://${address}/?deviceId=${id}`);
  const close = async () => {
    await context.close();
    await stop(device);
    await stop(own);
  };
  return { page, close };
}

test('a page written only from Cuttlefish\'s client contract shows both displays, and a click shows on the screen', async (t) => {
  const { page, close } = await contractPage('cvd-contract', ['--displays', '2']);
  const contract = () => page.evaluate(() => window.contract);
  await until('the contract page is connected', async () => (await contract()).status === 'connected')
    .catch(async (e) => assert.fail(`${e.message}: ${JSON.stringify(await contract())}`));
  const size = (id) => page.evaluate((id) => {
    const video = document.getElementById(id);
    return [video.videoWidth, video.videoHeight];
  }, id);
  await until('both displays show a picture', async () =>
    (await size('display_0'))[0] === 720 && (await size('display_1'))[0] === 720);
  assert.deepEqual(await size('display_1'), [720, 1280]);
  const seen = await contract();
  assert.equal(seen.streams.display_0, 'video');
  assert.equal(seen.streams.display_1, 'video');
  assert.equal(seen.streams.audio_0, 'audio');
  assert.ok(seen.deviceChannels.includes('device-control'), JSON.stringify(seen.deviceChannels));
  assert.equal(await page.locator('#audio audio').count(), 1);

  // The two screens differ: the first is blue, the second green, low on
  // each screen where no text is.
  const pixel = (id, x, y) => page.evaluate(([id, x, y]) => window.pixel(id, x, y), [id, x, y]);
  const [r0, g0, b0] = await pixel('display_0', 360, 1200);
  const [r1, g1, b1] = await pixel('display_1', 360, 1200);
  assert.ok(b0 > r0 + 50 && b0 > g0 + 50, `display_0 is ${[r0, g0, b0]}`);
  assert.ok(g1 > r1 + 50 && g1 > b1 + 50, `display_1 is ${[r1, g1, b1]}`);

  // What a real device would not echo is not echoed: an adb CONNECT and
  // a sensors message, sent before the click below comes round.
  await page.evaluate(() => {
    window.sendOn('adb-channel', 'CNXN\u0000\u0000\u0000\u0001');
    window.sendOn('sensors-channel', '0 0 0');
  });
  // A click a quarter across and three quarters down the second display
  // lands there in the display's coordinates (180, 960), and the device
  // draws its marker (yellow) there on the next frames.
  const box = await page.locator('#display_1').boundingBox();
  await until('the click shows on the second display', async () => {
    await page.mouse.click(box.x + box.width / 4, box.y + (box.height * 3) / 4);
    const [r, g, b] = await pixel('display_1', 180, 960);
    return r > 150 && g > 150 && b < 100;
  });
  const received = (await contract()).received;
  assert.equal(received['adb-channel'], 0, JSON.stringify(received));
  assert.equal(received['sensors-channel'], 0, JSON.stringify(received));
  t.diagnostic(`device channels ${seen.deviceChannels.join(', ')}; streams ${Object.keys(seen.streams).join(', ')}`);
  await page.screenshot({ path: join(artifacts, 'contract.png'), fullPage: true });
  await close();
});

test('to the contract page, a device_info without hardware is no connection', async () => {
  const { page, close } = await contractPage('cvd-bare', ['--device-info', '{"displays":[{"x_res":720,"y_res":1280}]}']);
  await page.locator('#status', { hasText: 'No connection to the guest device' }).waitFor({ timeout: 15000 });
  assert.equal(await page.evaluate(() => window.contract.error), 'Error: no hardware');
  await close();
});

test('?relay=1 through a real coturn: the data channel echoes, the screen plays, the panel says relay', async (t) => {
  const turn = await coturn('browser-turn-secret');
  const own = await turnServer(turn.url, 'browser-turn-secret');
  const device = await cuttlefishDevice('web-relay', 1, own.base);
  const page = await newPage();
  await page.goto(own.base + '/?deviceId=web-relay&relay=1');
  await expectEcho(page, 'through the relay');
  const stat = (key) => page.textContent(`#stats [data-stat="${key}"] dd`);
  // The browser's end is coturn's relayed address: it sent nothing else.
  await until('the panel shows a relayed pair', async () => /^relay ↔ (relay|prflx|host|srflx) \(udp\)$/.test(await stat('pair')));
  await until('the screen plays through the relay', async () => {
    const frames = await page.evaluate(async () => {
      let decoded = 0;
      (await window.currentPeer().getStats()).forEach((report) => {
        if (report.type === 'inbound-rtp' && report.kind === 'video') decoded += report.framesDecoded ?? 0;
      });
      return decoded;
    });
    return frames >= 10;
  });
  // coturn allocated for this page's client, named by its device.
  assert.match(turn.log(), /user <\d+:web-relay\/client-\d+>: incoming packet ALLOCATE processed, success/);
  t.diagnostic(`pair ${await stat('pair')}, round trip ${await stat('rtt')}`);
  await page.context().close();
  await stop(device);
  await stop(own.child);
  await turn.stop();
});

test('?relay=1 with a server whose TURN secret coturn does not share: the page says TURN authentication failed', async () => {
  const turn = await coturn('the-turn-servers-secret');
  const own = await turnServer(turn.url, 'another-secret');
  const device = await cuttlefishDevice('web-no-relay', 1, own.base);
  const page = await newPage();
  await page.goto(own.base + '/?deviceId=web-no-relay&relay=1');
  await page.locator('#status', { hasText: 'TURN authentication failed' }).waitFor({ timeout: 15000 });
  assert.match(await page.textContent('#status'), /401/);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'error');
  await page.context().close();
  await stop(device);
  await stop(own.child);
  await turn.stop();
});
