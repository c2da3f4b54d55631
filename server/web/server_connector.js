// This server's implementation of Cuttlefish's server connector interface,
// the contract between a signaling server and Cuttlefish's web client
// (client.html and its js/app.js import it as js/server_connector.js).
// PROTOCOL.md, "The device's page", describes what it does:
//
// - deviceId() reads the device id from the page's path
//   (/devices/{id}/files/…, the Go operator's layout) or from ?deviceId=
//   (the reference server's client.html?deviceId=ID);
// - createConnector() tries the websocket /devices/{id}/connect for 3 s and
//   falls back to HTTP polling (/polled_connections) when it cannot open;
// - a ?token= in the page's URL goes with every request (as ?token= on
//   the websocket, as a bearer header on HTTP), which Cuttlefish's own
//   connector cannot do;
// - createParentController() posts display information to an embedding
//   page, as Cuttlefish's operator pages expect.

const WEBSOCKET_OPEN_TIMEOUT_MS = 3000;
const SHORT_POLL_DELAY_MS = 1000;
const LONGEST_POLL_DELAY_MS = 60000;

const pageUrl = new URL(location.href);
const token = pageUrl.searchParams.get('token');

// The id of the device this page is for.
export function deviceId() {
  const parts = location.pathname.split('/');
  const devices = parts.indexOf('devices');
  if (devices >= 0 && parts[devices + 2] === 'files' && parts[devices + 1]) {
    return decodeURIComponent(parts[devices + 1]);
  }
  const fromQuery = pageUrl.searchParams.get('deviceId');
  if (fromQuery) return fromQuery;
  throw new Error('no device id: open this page as /devices/{id}/files/… or with ?deviceId=');
}

// A URL of this server, with the page's token if it has one.
function serverUrl(path, scheme) {
  const url = new URL(path, location.origin);
  if (scheme) url.protocol = scheme;
  return url;
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function getJson(path) {
  const response = await fetch(serverUrl(path), { headers: headers(), cache: 'no-cache' });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ?? `GET ${path}: HTTP ${response.status}`);
  return body;
}

async function postJson(path, data) {
  const response = await fetch(serverUrl(path), {
    method: 'POST',
    cache: 'no-cache',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(data),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ?? `POST ${path}: HTTP ${response.status}`);
  return body;
}

// The connector: websocket first, polling if the websocket cannot open.
export async function createConnector() {
  return new FallbackConnector();
}

class FallbackConnector {
  #delegate = null;
  #onDeviceMsg = (msg) => console.error('device message without a listener', msg);

  onDeviceMsg(callback) {
    this.#onDeviceMsg = callback;
    this.#delegate?.onDeviceMsg(callback);
  }

  // Resolves with { deviceInfo, infraConfig }.
  async requestDevice(id) {
    if (typeof WebSocket !== 'undefined') {
      const websocket = new WebSocketConnector();
      websocket.onDeviceMsg(this.#onDeviceMsg);
      try {
        const result = await websocket.requestDevice(id);
        this.#delegate = websocket;
        console.info('signaling over the websocket');
        return result;
      } catch (e) {
        console.warn('the signaling websocket did not open; polling instead:', e);
      }
    }
    const polling = new PollingConnector();
    polling.onDeviceMsg(this.#onDeviceMsg);
    this.#delegate = polling;
    const result = await polling.requestDevice(id);
    console.info('signaling by polling');
    return result;
  }

  async sendToDevice(msg) {
    if (!this.#delegate) throw new Error('sendToDevice before requestDevice');
    return this.#delegate.sendToDevice(msg);
  }

  expectMessagesSoon(durationMs) {
    this.#delegate?.expectMessagesSoon(durationMs);
  }
}

class WebSocketConnector {
  #socket = null;
  #onDeviceMsg = () => {};

  onDeviceMsg(callback) {
    this.#onDeviceMsg = callback;
  }

  async requestDevice(id) {
    const infraConfig = await getJson('/infra_config');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = serverUrl(`/devices/${encodeURIComponent(id)}/connect`, scheme);
    if (token) url.searchParams.set('token', token);
    const deviceInfo = await new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      let settled = false;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        socket.close();
        reject(error);
      };
      const timer = setTimeout(() => fail(new Error('the websocket did not open in time')),
        WEBSOCKET_OPEN_TIMEOUT_MS);
      socket.onerror = () => fail(new Error('the websocket failed'));
      socket.onclose = (event) => {
        clearTimeout(timer);
        fail(new Error(`the websocket closed (${event.code}) ${event.reason}`));
      };
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (!settled) {
          // The first frame: {"device_info": …}, or an error.
          clearTimeout(timer);
          if (message.error !== undefined) return fail(new Error(message.error));
          settled = true;
          this.#socket = socket;
          socket.onclose = (closed) => console.warn(`signaling closed (${closed.code}) ${closed.reason}`);
          return resolve(message.device_info);
        }
        if (message.message_type === 'device_msg') this.#onDeviceMsg(message.payload);
        else if (message.error !== undefined) console.error('the server says:', message.error);
      };
    });
    return { deviceInfo, infraConfig };
  }

  async sendToDevice(msg) {
    if (this.#socket?.readyState !== WebSocket.OPEN) throw new Error('the signaling websocket is not open');
    this.#socket.send(JSON.stringify(msg));
  }

  // Messages arrive as they come: nothing to hurry.
  expectMessagesSoon() {}
}

class PollingConnector {
  #connection = null;
  #received = 0;
  #timer = undefined;
  #delay = SHORT_POLL_DELAY_MS;
  #quickUntil = 0;
  #onDeviceMsg = () => {};

  onDeviceMsg(callback) {
    this.#onDeviceMsg = callback;
  }

  async requestDevice(id) {
    const infraConfig = await getJson('/infra_config');
    const reply = await postJson('/polled_connections', { device_id: id });
    this.#connection = encodeURIComponent(reply.connection_id);
    this.#schedule(SHORT_POLL_DELAY_MS);
    return { deviceInfo: reply.device_info, infraConfig };
  }

  async sendToDevice(msg) {
    if (!this.#connection) throw new Error('sendToDevice before requestDevice');
    await postJson(`/polled_connections/${this.#connection}/:forward`, { payload: msg });
  }

  // Poll every second for a while: the device is about to answer.
  expectMessagesSoon(durationMs) {
    this.#quickUntil = Date.now() + durationMs;
    this.#schedule(0);
  }

  #schedule(delay) {
    clearTimeout(this.#timer);
    this.#delay = delay;
    this.#timer = setTimeout(() => this.#poll(), delay);
  }

  async #poll() {
    let messages = [];
    try {
      messages = await getJson(`/polled_connections/${this.#connection}/messages?start=${this.#received}`);
    } catch (e) {
      console.error('polling failed:', e);
    }
    this.#received += messages.length;
    for (const message of messages) this.#onDeviceMsg(message.payload);
    // Back off while nothing comes, as Cuttlefish's client does; the
    // server keeps a client that polls at least every 3 minutes.
    const quick = messages.length > 0 || Date.now() < this.#quickUntil;
    const next = quick ? SHORT_POLL_DELAY_MS : Math.min(LONGEST_POLL_DELAY_MS, 2 * Math.max(this.#delay, SHORT_POLL_DELAY_MS / 2));
    this.#schedule(next);
  }
}

// Display information for an embedding page (Cuttlefish's operator UI).
export function createParentController() {
  return new ParentController();
}

class ParentController {
  createDeviceDisplaysMessage(rotation) {
    return new DeviceDisplaysMessage(this, rotation);
  }

  postMessageToParent(type, payload) {
    if (window.parent === window) return;
    // Only to a parent of this origin.
    window.parent.postMessage(new DeviceFrameMessage(type, payload), '/');
  }
}

export class DeviceDisplaysMessage {
  constructor(parentController, rotation) {
    this.parentController = parentController;
    this.device_id = deviceId();
    this.rotation = rotation;
    this.displays = [];
  }

  addDisplay(display_id, width, height) {
    this.displays.push({ display_id, width, height });
  }

  send() {
    this.parentController.postMessageToParent(DeviceFrameMessage.TYPE_DISPLAYS_INFO, {
      device_id: this.device_id,
      rotation: this.rotation,
      displays: this.displays,
    });
  }
}

export class DeviceFrameMessage {
  static TYPE_DISPLAYS_INFO = 'displays_info';

  constructor(type, payload) {
    this.type = type;
    this.payload = payload;
  }
}
