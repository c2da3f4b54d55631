// The built-in web client: lists the registered devices and connects to
// one with the browser's own RTCPeerConnection, speaking the protocol and
// payload layer of PROTOCOL.md (the same as client-cli). Over a websocket
// to /connect_client, or over the HTTP polling flow when websockets are
// not available (or with ?transport=poll); a websocket that drops is
// resumed (PROTOCOL.md, "Resuming a session"). ?deviceId=ID connects at once;
// ?token=T is carried to every request; ?relay=1 uses relayed (TURN)
// candidates only, through the TURN servers the config names.
'use strict';

const params = new URLSearchParams(location.search);
const token = params.get('token');
const relayOnly = params.get('relay') === '1';
const $ = (id) => document.getElementById(id);

function withToken(path) {
  if (!token) return path;
  return path + (path.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
}

function setStatus(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

// ---------------------------------------------------------------------------
// The device list, refreshed every two seconds.
// ---------------------------------------------------------------------------

let current = null;

async function refreshDevices() {
  let ids;
  try {
    const response = await fetch(withToken('/devices'));
    if (!response.ok) throw new Error('HTTP ' + response.status);
    // Ids (the reference server's list) or descriptors (the Go operator's).
    ids = (await response.json()).map((entry) => (typeof entry === 'string' ? entry : entry.device_id));
  } catch (e) {
    $('no-devices').hidden = false;
    $('no-devices').textContent = 'Cannot list devices: ' + e.message;
    return;
  }
  const list = $('devices');
  list.replaceChildren(...ids.map((id) => {
    const item = document.createElement('li');
    item.dataset.deviceId = id;
    const link = document.createElement('a');
    link.textContent = id;
    const query = new URLSearchParams(params);
    query.set('deviceId', id);
    link.href = '?' + query.toString();
    link.addEventListener('click', (event) => {
      event.preventDefault();
      history.replaceState(null, '', link.href);
      connect(id);
    });
    if (current && current.deviceId === id) link.setAttribute('aria-current', 'true');
    item.append(link);
    return item;
  }));
  $('no-devices').hidden = ids.length > 0;
  // The device that left is back: connect to it again.
  if (current && current.deviceLeft && ids.includes(current.deviceId)) connect(current.deviceId);
  $('no-devices').textContent = 'No device is registered.';
}

// ---------------------------------------------------------------------------
// Transports: the same three calls over a websocket or HTTP polling.
// ---------------------------------------------------------------------------

// Over /connect_client: config, device_info, then device_msg payloads.
// When the connection drops without a clean close (or the server closes
// it with 4000, the session held), it reconnects with backoff within the
// server's resume window and resumes: the same session, the peer
// connection untouched; what the server did not get is sent again.
class WebSocketTransport {
  constructor(deviceId, events) {
    this.deviceId = deviceId;
    this.events = events;
    this.received = 0; // frames of the session received, `resumed` aside
    this.sent = []; // the last frames sent; sent[0] is number sentFirst
    this.sentFirst = 1;
    this.sentCount = 0;
    this.token = null;
    this.windowMs = 0;
    this.closing = false;
    this.open(false);
  }
  open(resuming) {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const ws = new WebSocket(scheme + location.host + withToken('/connect_client'));
    this.ws = ws;
    this.resuming = resuming;
    ws.onopen = () => {
      if (resuming) {
        ws.send(JSON.stringify({ message_type: 'resume', token: this.token, received: this.received }));
        return;
      }
      this.events.mark('websocket open');
      this.transmit(JSON.stringify({ message_type: 'connect', device_id: this.deviceId }));
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (this.resuming) return this.takeBack(message);
      this.received += 1;
      if (message.resume && message.resume.token) {
        this.token = message.resume.token;
        this.windowMs = message.resume.window_ms;
      }
      if (message.error !== undefined) this.events.error(message.error);
      else if (message.message_type === 'config') this.events.config(message.ice_servers || []);
      else if (message.message_type === 'device_info') this.events.deviceInfo(message.device_info);
      else if (message.message_type === 'device_msg') this.events.payload(message.payload);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws || this.closing) return;
      // 1006: no close frame (the network); 4000: the server holds the
      // session. Anything else ended it.
      const held = this.token && (event.code === 1006 || event.code === 4000);
      if (!held) {
        this.events.closed(event.code + ' ' + event.reason);
        return;
      }
      if (!this.lostAt) {
        this.lostAt = performance.now();
        this.wait = 250;
        this.events.mark('signaling connection lost (' + event.code + '); resuming');
      }
      if (performance.now() - this.lostAt >= this.windowMs) {
        this.events.lost('the signaling connection did not come back within the resume window');
        return;
      }
      setTimeout(() => { if (!this.closing) this.open(true); }, this.wait);
      this.wait = Math.min(this.wait * 2, 2000);
    };
  }
  // The first frame of a resumed connection: `resumed`, or the refusal.
  takeBack(message) {
    this.resuming = false;
    if (message.message_type !== 'resumed') {
      this.closing = true;
      this.ws.close();
      this.events.lost(message.error || 'the server did not resume the session');
      return;
    }
    this.token = message.resume.token;
    this.windowMs = message.resume.window_ms;
    const again = this.sent.slice(Math.max(0, message.received + 1 - this.sentFirst));
    for (const text of again) this.ws.send(text);
    const away = performance.now() - this.lostAt;
    this.lostAt = null;
    this.events.mark(`resumed after ${away.toFixed(0)} ms`);
  }
  // Sends a frame, and keeps it until a resume says the server has it.
  transmit(text) {
    this.sent.push(text);
    this.sentCount += 1;
    if (this.sent.length > 1024) {
      this.sent.shift();
      this.sentFirst += 1;
    }
    if (this.ws.readyState === WebSocket.OPEN && !this.resuming) this.ws.send(text);
  }
  send(payload) {
    this.transmit(JSON.stringify({ message_type: 'forward', payload }));
  }
  close() {
    this.closing = true;
    this.ws.close();
  }
}

// The reference's polling flow: POST /connect, /forward, /poll_messages.
class PollingTransport {
  constructor(deviceId, events) {
    this.events = events;
    this.open = true;
    this.start(deviceId);
  }
  async post(path, body) {
    const response = await fetch(withToken(path), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const value = await response.json();
    if (!response.ok) throw new Error(value.error || 'HTTP ' + response.status);
    return value;
  }
  async start(deviceId) {
    try {
      this.events.mark('polling');
      const config = await (await fetch(withToken('/infra_config'))).json();
      this.events.config(config.ice_servers || []);
      const answer = await this.post('/connect', { device_id: deviceId });
      this.id = answer.connection_id;
      this.events.deviceInfo(answer.device_info);
      while (this.open) {
        this.deliver(await this.post('/poll_messages', { connection_id: this.id }));
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    } catch (e) {
      if (this.open) this.events.error(e.message);
      this.open = false;
      this.events.closed('polling ended');
    }
  }
  deliver(payloads) {
    for (const payload of payloads) this.events.payload(payload);
  }
  async send(payload) {
    if (!this.id || !this.open) return;
    try {
      this.deliver(await this.post('/forward', { connection_id: this.id, payload }));
    } catch (e) {
      this.events.error(e.message);
    }
  }
  close() { this.open = false; }
}

// ---------------------------------------------------------------------------
// One connection to a device.
// ---------------------------------------------------------------------------

// Back to one empty screen, as before any device.
function clearScreens() {
  const first = $('video');
  first.srcObject = null;
  delete first.dataset.stream;
  first.style.aspectRatio = '';
  for (const video of document.querySelectorAll('#screens video:not(#video)')) video.remove();
  $('audio').srcObject = null;
  for (const item of document.querySelectorAll('#stats dd')) item.textContent = '–';
}

// Whether the ICE servers of a config name a TURN server.
function namesTurnServer(servers) {
  return servers.some((server) => [].concat(server.urls || []).some((url) => /^turns?:/.test(url)));
}

class Session {
  constructor(deviceId) {
    this.deviceId = deviceId;
    this.started = performance.now();
    this.iceServers = [];
    this.pendingCandidates = [];
    $('timeline').replaceChildren();
    $('device-info').textContent = '–';
    $('console-log').replaceChildren();
    clearScreens();
    $('input-count').textContent = 'No input sent yet.';
    this.enableConsole(false);
    setStatus('Connecting to ' + deviceId + '…', 'connecting');
    const events = {
      mark: (what) => this.mark(what),
      config: (servers) => { this.iceServers = servers; this.mark('config'); },
      deviceInfo: (info) => this.onDeviceInfo(info),
      payload: (payload) => this.onPayload(payload).catch((e) => this.fail(e.message)),
      error: (text) => this.fail(text),
      closed: (why) => this.onClosed(why),
      // The session could not be resumed: start a new one, handshake and
      // all.
      lost: (why) => {
        this.mark('session lost: ' + why + '; connecting again');
        setTimeout(() => { if (current === this) connect(this.deviceId); }, 500);
      },
    };
    const polling = params.get('transport') === 'poll' || typeof WebSocket !== 'function';
    this.transport = polling
      ? new PollingTransport(deviceId, events)
      : new WebSocketTransport(deviceId, events);
  }

  mark(what) {
    const item = document.createElement('li');
    const time = document.createElement('span');
    time.textContent = (performance.now() - this.started).toFixed(1) + ' ms';
    item.append(time, ' ' + what);
    item.dataset.phase = what;
    $('timeline').append(item);
  }

  fail(text) {
    this.mark('error: ' + text);
    setStatus(this.deviceId + ': ' + text, 'error');
    // The device left: its screens go dark, and the page connects again
    // when the device list shows it back.
    if (text.startsWith('Device disconnected') && !this.deviceLeft) {
      this.deviceLeft = true;
      clearInterval(this.statsTimer);
      if (this.pc) this.pc.close();
      clearScreens();
      setStatus(this.deviceId + ': ' + text + '; reconnecting when it is back', 'error');
    }
  }

  onClosed(why) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.statsTimer);
    this.mark('signaling closed: ' + why);
    this.enableConsole(false);
  }

  onDeviceInfo(info) {
    this.mark('device_info');
    $('device-info').textContent = JSON.stringify(info, null, 2);
    // A screen per display the device describes, in its order; a
    // Cuttlefish device sends each display's video in a stream named by
    // the display's stream_id (display_N by default).
    const displays = info && Array.isArray(info.displays) ? info.displays : [];
    this.displays = displays.map((display, n) => ({
      streamId: typeof display.stream_id === 'string' ? display.stream_id : 'display_' + n,
      width: display.x_res,
      height: display.y_res,
    }));
    this.displays.forEach((display) => this.screen(display.streamId));
    if (relayOnly && !namesTurnServer(this.iceServers)) {
      this.fail('relay only (?relay=1), but the config names no TURN server: the server hands them out with --turn-url and a TURN secret');
      return;
    }
    this.pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: relayOnly ? 'relay' : 'all' });
    // A TURN server that refuses the credentials says so here (401 for a
    // wrong secret or a username whose expiry has passed), and nowhere else.
    this.turnErrors = [];
    this.relayed = 0;
    this.pc.onicecandidateerror = (event) => {
      if (!event.url || !event.url.startsWith('turn')) return;
      const what = `${event.url}: ${event.errorCode} ${event.errorText}`;
      if (this.turnErrors.includes(what)) return;
      this.turnErrors.push(what);
      this.mark('TURN error ' + what);
    };
    this.pc.onicegatheringstatechange = () => {
      if (this.pc.iceGatheringState !== 'complete' || !relayOnly || this.relayed > 0) return;
      const why = this.turnErrors.some((error) => / 401 /.test(error))
        ? 'TURN authentication failed at ' + this.turnErrors.join('; ')
          + ' (a wrong secret, or credentials past their expiry)'
        : 'no TURN server granted a relay' + (this.turnErrors.length ? ': ' + this.turnErrors.join('; ') : '');
      this.fail('relay only, and no relay candidate: ' + why);
    };
    // Touches and keys go to the device on Cuttlefish's input channel.
    this.input = this.pc.createDataChannel('input-channel');
    this.pc.onicecandidate = (event) => {
      if (event.candidate) {
        if (event.candidate.type === 'relay') this.relayed += 1;
        this.transport.send({ type: 'ice-candidate', candidate: event.candidate.toJSON() });
      }
    };
    this.pc.oniceconnectionstatechange = () => {
      if (this.pc.iceConnectionState === 'connected') this.mark('ICE connected');
    };
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === 'connected') {
        this.mark('DTLS connected');
        this.watchStats();
      }
      if (this.pc.connectionState === 'failed') this.fail('WebRTC connection failed');
    };
    this.pc.ondatachannel = (event) => this.onChannel(event.channel);
    this.pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (event.track.kind === 'audio') {
        $('audio').srcObject = stream;
        return;
      }
      if (event.track.kind !== 'video') return;
      const video = this.screen(stream.id);
      // Marked when its first frame shows, which is after DTLS: the
      // track event itself fires inside setRemoteDescription, before the
      // answer is even sent, and the timeline keeps the handshake's order.
      video.addEventListener('loadeddata', () => {
        if (this.videoMarked || this.closed) return;
        this.videoMarked = true;
        this.mark('video track');
      }, { once: true });
      video.srcObject = stream;
    };
    this.transport.send({ type: 'request-offer', ice_servers: this.iceServers });
  }

  async onPayload(payload) {
    if (!payload || typeof payload !== 'object') return;
    if (payload.type === 'offer') {
      this.mark('offer received');
      await this.pc.setRemoteDescription({ type: 'offer', sdp: payload.sdp });
      for (const candidate of this.pendingCandidates.splice(0)) await this.addCandidate(candidate);
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      this.transport.send({ type: 'answer', sdp: answer.sdp });
      this.mark('answer sent');
    } else if (payload.type === 'ice-candidate') {
      // The flat shape Cuttlefish devices send, or the browser's nested one.
      const candidate = typeof payload.candidate === 'object' && payload.candidate !== null
        ? payload.candidate
        : { candidate: payload.candidate, sdpMid: payload.mid, sdpMLineIndex: payload.mLineIndex };
      if (!candidate.candidate) return; // end of candidates
      if (this.pc.remoteDescription) await this.addCandidate(candidate);
      else this.pendingCandidates.push(candidate);
    } else if (payload.type === 'error') {
      this.fail('device: ' + payload.error);
    }
  }

  addCandidate(candidate) {
    return this.pc.addIceCandidate(candidate);
  }

  // The video element of the display whose stream is `streamId`: the
  // first display takes #video, the others get one of their own; each
  // sends its touches and keys to the device.
  screen(streamId) {
    const existing = [...document.querySelectorAll('#screens video')]
      .find((video) => video.dataset.stream === streamId);
    if (existing) return existing;
    let video = $('video');
    if (video.dataset.stream) {
      video = document.createElement('video');
      video.autoplay = true;
      video.muted = true;
      video.playsInline = true;
      $('screens').append(video);
    }
    video.dataset.stream = streamId;
    video.tabIndex = 0;
    video.title = streamId;
    const display = (this.displays || []).find((d) => d.streamId === streamId);
    if (display && display.width > 0 && display.height > 0) {
      video.style.aspectRatio = display.width + ' / ' + display.height;
    }
    this.sendInputFrom(video, streamId);
    return video;
  }

  // The connection as getStats() sees it, once a second: the selected
  // candidate pair and its types (host, srflx, prflx, relay), its round
  // trip, and the video received: bitrate and packets lost summed over the
  // displays, frames per second for each.
  watchStats() {
    if (this.statsTimer) return;
    let before = null;
    const show = (key, text) => {
      const item = document.querySelector(`#stats [data-stat="${key}"] dd`);
      if (item) item.textContent = text;
    };
    const read = async () => {
      if (!this.pc || this.closed) return;
      const stats = await this.pc.getStats();
      const byId = new Map();
      stats.forEach((report) => byId.set(report.id, report));
      let pair = null;
      let bytes = 0;
      const fps = [];
      let lost = 0;
      stats.forEach((report) => {
        if (report.type === 'transport' && report.selectedCandidatePairId) {
          pair = byId.get(report.selectedCandidatePairId) || pair;
        }
        if (report.type === 'candidate-pair' && !pair && report.nominated && report.state === 'succeeded') pair = report;
        if (report.type === 'inbound-rtp' && report.kind === 'video') {
          bytes += report.bytesReceived || 0;
          fps.push(report.framesPerSecond || 0);
          lost += report.packetsLost || 0;
        }
      });
      if (pair) {
        const local = byId.get(pair.localCandidateId) || {};
        const remote = byId.get(pair.remoteCandidateId) || {};
        const protocol = local.protocol || remote.protocol || '';
        show('pair', `${local.candidateType || '?'} ↔ ${remote.candidateType || '?'}${protocol ? ' (' + protocol + ')' : ''}`);
        if (typeof pair.currentRoundTripTime === 'number') {
          show('rtt', (pair.currentRoundTripTime * 1000).toFixed(1) + ' ms');
        }
      }
      const now = performance.now();
      if (before) {
        const bits = ((bytes - before.bytes) * 8) / ((now - before.at) / 1000);
        show('bitrate', (bits / 1e6).toFixed(2) + ' Mbit/s');
      }
      before = { bytes, at: now };
      show('fps', fps.length ? fps.map((each) => each.toFixed(0)).join(' · ') : '–');
      show('lost', String(lost));
    };
    this.statsTimer = setInterval(() => read().catch(() => {}), 1000);
    read().catch(() => {});
  }

  sendInput(message) {
    if (!this.input || this.input.readyState !== 'open') return;
    this.input.send(JSON.stringify(message));
  }

  // Pointer presses and drags on `video` as Cuttlefish's multi-touch
  // events, in the display's own coordinates; keys while it has focus as
  // its keyboard events.
  sendInputFrom(video, label) {
    const at = (event) => {
      const display = (this.displays || []).find((d) => d.streamId === label) || {};
      const width = display.width || video.videoWidth || 1;
      const height = display.height || video.videoHeight || 1;
      // The picture is letterboxed inside the element (object-fit: contain).
      const rect = video.getBoundingClientRect();
      const scale = Math.min(rect.width / width, rect.height / height);
      const left = rect.left + (rect.width - width * scale) / 2;
      const top = rect.top + (rect.height - height * scale) / 2;
      const clamp = (v, max) => Math.max(0, Math.min(max - 1, Math.round(v)));
      return { x: clamp((event.clientX - left) / scale, width), y: clamp((event.clientY - top) / scale, height) };
    };
    const touch = (event, down) => {
      const { x, y } = at(event);
      this.sendInput({ type: 'multi-touch', id: [0], x: [x], y: [y], down: down ? 1 : 0, device_label: label });
    };
    let pressed = false;
    video.addEventListener('pointerdown', (event) => {
      pressed = true;
      video.focus();
      // A browser may hold sound back until the page is touched.
      $('audio').play().catch(() => {});
      if (video.setPointerCapture) video.setPointerCapture(event.pointerId);
      touch(event, true);
    });
    video.addEventListener('pointermove', (event) => { if (pressed) touch(event, true); });
    const release = (event) => {
      if (!pressed) return;
      pressed = false;
      touch(event, false);
    };
    video.addEventListener('pointerup', release);
    video.addEventListener('pointercancel', release);
    for (const type of ['keydown', 'keyup']) {
      video.addEventListener(type, (event) => {
        this.sendInput({ type: 'keyboard', keycode: event.code, event_type: type });
        event.preventDefault();
      });
    }
  }

  onChannel(channel) {
    // The fake device reports each input it received.
    if (channel.label === 'fake-device-input') {
      channel.onmessage = (event) => {
        try {
          const report = JSON.parse(event.data);
          $('input-count').textContent = report.count + ' input(s) seen by the device';
          $('input-count').dataset.count = report.count;
          $('input-count').dataset.last = JSON.stringify(report.input);
        } catch (e) { /* not a report */ }
      };
      return;
    }
    // device-control and the rest are not this console's.
    if (channel.label !== 'echo') return;
    this.channel = channel;
    // The open event may have fired before this handler was set, or may
    // still come though the channel already reads as open: once either way.
    let opened = false;
    channel.onopen = () => {
      if (opened) return;
      opened = true;
      this.mark('data channel open');
      setStatus('Connected to ' + this.deviceId, 'connected');
      this.enableConsole(true);
    };
    channel.onmessage = (event) => this.log('echo: ' + event.data);
    channel.onclose = () => this.enableConsole(false);
    if (channel.readyState === 'open') channel.onopen();
  }

  enableConsole(on) {
    $('console-input').disabled = !on;
    $('console-send').disabled = !on;
  }

  log(line) {
    const row = document.createElement('div');
    row.textContent = line;
    $('console-log').append(row);
    $('console-log').scrollTop = $('console-log').scrollHeight;
  }

  sendText(text) {
    if (!this.channel || this.channel.readyState !== 'open') return;
    this.channel.send(text);
    this.log('sent: ' + text);
  }

  close() {
    this.closed = true;
    clearInterval(this.statsTimer);
    this.transport.close();
    if (this.pc) this.pc.close();
  }
}

// For tests and the curious: the current peer connection, if any.
window.currentPeer = () => (current ? current.pc : undefined);

function connect(deviceId) {
  if (current) current.close();
  current = new Session(deviceId);
  refreshDevices();
}

$('console-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('console-input').value;
  if (text && current) current.sendText(text);
  $('console-input').value = '';
});

// Every screen at once, full screen; Escape leaves.
$('fullscreen').addEventListener('click', () => {
  const screens = $('screens');
  if (screens.requestFullscreen) screens.requestFullscreen().catch(() => {});
});

refreshDevices();
setInterval(refreshDevices, 2000);
if (params.get('deviceId')) connect(params.get('deviceId'));
