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
// - a websocket that drops is resumed with its token (PROTOCOL.md,
//   "Resuming a session"), so a network blip does not end the session;
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

// The websocket: when it drops without a clean close (or the server
// closes it with 4000, the session held), it reconnects with backoff
// within the server's resume window with ?resume= and the count of frames
// received, and the session goes on (PROTOCOL.md, "Resuming a session"):
// the page's peer connection never hears of it.
class WebSocketConnector {
  #socket = null;
  #url = null;
  #onDeviceMsg = () => {};
  #received = 0; // frames of the session received, `resumed` aside
  #sent = []; // the last frames sent; #sent[0] is number #sentFirst
  #sentFirst = 1;
  #token = null;
  #windowMs = 0;
  #lostAt = null;
  #wait = 250;

  onDeviceMsg(callback) {
    this.#onDeviceMsg = callback;
  }

  async requestDevice(id) {
    const infraConfig = await getJson('/infra_config');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = serverUrl(`/devices/${encodeURIComponent(id)}/connect`, scheme);
    if (token) url.searchParams.set('token', token);
    this.#url = url;
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
        // The first frame: {"device_info": …} (with a resume offer beside
        // it), or an error.
        clearTimeout(timer);
        if (message.error !== undefined) return fail(new Error(message.error));
        settled = true;
        this.#take(message);
        this.#adopt(socket);
        resolve(message.device_info);
      };
    });
    return { deviceInfo, infraConfig };
  }

  // A frame of the session: counted; its resume offer kept.
  #take(message) {
    this.#received += 1;
    if (message.resume?.token) {
      this.#token = message.resume.token;
      this.#windowMs = message.resume.window_ms;
    }
  }

  #adopt(socket) {
    this.#socket = socket;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.message_type === 'resumed') return this.#resumed(message);
      this.#take(message);
      if (message.message_type === 'device_msg') this.#onDeviceMsg(message.payload);
      else if (message.error !== undefined) console.error('the server says:', message.error);
    };
    socket.onclose = (closed) => {
      if (socket !== this.#socket) return;
      const held = this.#token && (closed.code === 1006 || closed.code === 4000);
      if (!held) {
        console.warn(`signaling closed (${closed.code}) ${closed.reason}`);
        return;
      }
      this.#lostAt ??= Date.now();
      if (Date.now() - this.#lostAt >= this.#windowMs) {
        console.error('the signaling connection did not come back within the resume window');
        return;
      }
      setTimeout(() => this.#reconnect(), this.#wait);
      this.#wait = Math.min(this.#wait * 2, 2000);
    };
  }

  #reconnect() {
    const url = new URL(this.#url);
    url.searchParams.set('resume', this.#token);
    url.searchParams.set('received', String(this.#received));
    this.#adopt(new WebSocket(url));
  }

  #resumed(message) {
    this.#token = message.resume.token;
    this.#windowMs = message.resume.window_ms;
    for (const text of this.#sent.slice(Math.max(0, message.received + 1 - this.#sentFirst))) {
      this.#socket.send(text);
    }
    console.info(`signaling resumed after ${Date.now() - this.#lostAt} ms`);
    this.#lostAt = null;
    this.#wait = 250;
  }

  async sendToDevice(msg) {
    const text = JSON.stringify(msg);
    // Kept until a resume says the server has it: a frame sent while the
    // connection is down goes once it is back.
    this.#sent.push(text);
    if (this.#sent.length > 1024) {
      this.#sent.shift();
      this.#sentFirst += 1;
    }
    if (this.#socket?.readyState === WebSocket.OPEN && this.#lostAt === null) this.#socket.send(text);
    else if (!this.#token) throw new Error('the signaling websocket is not open');
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
