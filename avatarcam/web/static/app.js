// FaceMimic page: sends the camera over WebRTC, shows the avatar that comes back, and changes this session's
// settings through the server's JSON API. Plain JavaScript, no build step. State for the curious (and the
// tests) is in window.facemimic.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const state = window.facemimic = {
  phase: "starting", session: null, message: "", meta: null, settings: {}, info: null,
  stats: { fps: null, framesDecoded: 0, rttMs: null, jitterMs: null, latencyMs: null },
};
let pc = null, channel = null, cameraStream = null, recorder = null, statsTimer = null;

function say(text, problem = false) {
  state.message = text;
  $("message").textContent = text;
  $("message").classList.toggle("problem", problem);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["X-FaceMimic-Token"] = token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${path}: HTTP ${response.status}`);
    error.status = response.status;
    error.full = Boolean(body && body.full);
    throw error;
  }
  return body;
}

function post(path, data) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
}

// -- gallery, generator and settings controls

function withToken(url) { return token ? `${url}?token=${encodeURIComponent(token)}` : url; }

function showGallery(names, chosen) {
  const gallery = $("gallery");
  gallery.textContent = "";
  for (const name of names) {
    const img = document.createElement("img");
    img.src = withToken(`api/avatars/${encodeURIComponent(name)}.jpg`);
    img.alt = img.title = name;
    img.dataset.avatar = name;
    img.classList.toggle("chosen", name === chosen);
    img.addEventListener("click", () => chooseAvatar(name));
    gallery.appendChild(img);
  }
}

function markAvatar(name) {
  for (const img of $("gallery").querySelectorAll("img")) img.classList.toggle("chosen", img.dataset.avatar === name);
}

async function chooseAvatar(name) {
  if (!state.session) return;
  try {
    await post(`api/session/${state.session}`, { avatar: name });
    markAvatar(name);
  } catch (e) { say(e.message, true); }
}

function showSettings(settings) {
  state.settings = settings;
  for (const input of document.querySelectorAll("[data-setting]")) {
    const value = settings[input.dataset.setting];
    if (input.type === "checkbox") input.checked = Boolean(value); else input.value = value;
  }
  $("camera").classList.toggle("mirrored", Boolean(settings.mirror));
  if (!settings.overlay) clearOverlay();
}

async function changeSetting(input) {
  const key = input.dataset.setting;
  const value = input.type === "checkbox" ? input.checked : Number(input.value);
  if (!state.session) return;
  try {
    const reply = await post(`api/session/${state.session}`, { settings: { [key]: value } });
    showSettings(reply.settings);
  } catch (e) { say(e.message, true); }
}

// -- the connection

function waitForIce(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (connection.iceGatheringState === "complete") {
        connection.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    connection.addEventListener("icegatheringstatechange", check);
  });
}

async function connect() {
  $("reconnect").hidden = true;
  state.phase = "connecting";
  const info = state.info;
  pc = new RTCPeerConnection({ iceServers: info.ice_servers.map((url) => ({ urls: url })) });
  channel = pc.createDataChannel("meta");
  channel.onmessage = (event) => onMeta(JSON.parse(event.data));
  for (const track of cameraStream.getVideoTracks()) pc.addTrack(track, cameraStream);
  pc.ontrack = (event) => {
    const stream = event.streams[0] || new MediaStream([event.track]);
    $("avatar").srcObject = stream;
  };
  pc.onconnectionstatechange = () => {
    state.phase = pc.connectionState;
    if (pc.connectionState === "connected") say("Connected. Keep a relaxed face for a moment to calibrate.");
    if (pc.connectionState === "failed" || pc.connectionState === "closed") disconnected("The connection dropped.");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  let answer;
  try {
    answer = await post("api/offer", { sdp: pc.localDescription.sdp, type: pc.localDescription.type,
                                       avatar: $("gallery").querySelector(".chosen")?.dataset.avatar });
  } catch (e) {
    pc.close();
    pc = null;
    state.phase = e.full ? "full" : "refused";
    say(e.message, true);
    $("reconnect").hidden = false;
    return;
  }
  state.session = answer.session;
  state.calibrated = state.recalibrating = false;
  showSettings(answer.settings);
  markAvatar(answer.avatar);
  $("generator").value = answer.generator;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  statsTimer = setInterval(readStats, 1000);
}

function disconnected(text) {
  clearInterval(statsTimer);
  state.session = null;
  say(`${text} Press "Connect again".`, true);
  $("reconnect").hidden = false;
}

function closeSession() {
  if (state.session) navigator.sendBeacon(withToken(`api/session/${state.session}/close`));
  state.session = null;
  if (pc) pc.close();
}

// -- what comes back: status, landmarks, statistics

function onMeta(meta) {
  state.meta = meta;
  $("avatar-name").textContent = meta.avatar;
  $("calibration").textContent = meta.calibration === "calibrated" ? "" : `(${meta.calibration})`;
  if (meta.calibration !== "calibrated") {
    state.recalibrating = false;  // frames rendered before the request no longer arrive
    state.calibrated = false;
  } else if (!state.calibrated && !state.recalibrating && state.phase === "connected") {
    state.calibrated = true;
    say("Calibrated: your avatar follows you. Recalibrate after moving your camera or yourself.");
  }
  if (meta.points) drawOverlay(meta.points, meta.image_size);
}

function clearOverlay() {
  const canvas = $("overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function drawOverlay(faces, size) {
  const canvas = $("overlay");
  const [w, h] = size;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  g.fillStyle = "rgba(80, 255, 80, 0.85)";
  const dot = Math.max(2, w / 250);
  for (const points of faces) {
    for (let i = 0; i < points.length; i += 2) g.fillRect(points[i] - dot / 2, points[i + 1] - dot / 2, dot, dot);
  }
}

async function readStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const s = state.stats;
  report.forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "video") {
      s.fps = entry.framesPerSecond ?? null;
      s.framesDecoded = entry.framesDecoded ?? 0;
      s.jitterMs = entry.jitterBufferEmittedCount ? 1000 * entry.jitterBufferDelay / entry.jitterBufferEmittedCount
        : null;
    }
    if (entry.type === "candidate-pair" && entry.nominated && entry.currentRoundTripTime !== undefined) {
      s.rttMs = 1000 * entry.currentRoundTripTime;
    }
  });
  const server = state.meta ? state.meta.latency_ms : null;
  // Camera to avatar on screen, less capture and display: one-way network both ways (one round trip), the
  // server's work, and the browser's jitter buffer.
  s.latencyMs = server === null || s.rttMs === null ? null : server + s.rttMs + (s.jitterMs || 0);
  $("server-ms").textContent = server === null ? "-" : server.toFixed(0);
  $("fps").textContent = s.fps === null ? "-" : s.fps.toFixed(0);
  $("rtt").textContent = s.rttMs === null ? "-" : s.rttMs.toFixed(0);
  $("jitter").textContent = s.jitterMs === null ? "-" : s.jitterMs.toFixed(0);
  $("latency").textContent = s.latencyMs === null ? "-" : s.latencyMs.toFixed(0);
}

// -- saving in the browser

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function stamp() { return new Date().toISOString().replace(/[:.]/g, "-"); }

function snapshotCanvas() {
  const video = $("avatar");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth || 1;
  canvas.height = video.videoHeight || 1;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas;
}
state.snapshotCanvas = snapshotCanvas;

function snapshot() {
  snapshotCanvas().toBlob((blob) => download(blob, `facemimic-${stamp()}.png`), "image/png");
}

function toggleRecording() {
  const button = $("record");
  if (recorder) {
    recorder.stop();
    return;
  }
  const stream = $("avatar").srcObject;
  if (!stream) { say("Nothing to record yet: wait for the avatar.", true); return; }
  const type = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"].find(
    (t) => MediaRecorder.isTypeSupported(t)) || "";
  const chunks = [];
  recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = () => {
    download(new Blob(chunks, { type: recorder.mimeType || "video/webm" }), `facemimic-${stamp()}.webm`);
    recorder = null;
    button.textContent = "Record";
    button.classList.remove("on");
  };
  recorder.start(1000);
  button.textContent = "Stop recording";
  button.classList.add("on");
}

async function upload(file) {
  if (!state.session || !file) return;
  const limit = state.info.max_upload_mb * 1024 * 1024;
  if (file.size > limit) { say(`${file.name} is larger than ${state.info.max_upload_mb} MB.`, true); return; }
  say(`Preparing ${file.name}...`);
  try {
    await api(`api/session/${state.session}/avatar`, { method: "POST", body: file,
                                                        headers: { "Content-Type": file.type || "image/*" } });
    markAvatar(null);
    say(`Now using your picture ${file.name} (only in this session).`);
  } catch (e) { say(e.message, true); }
}

// -- start

async function start() {
  try {
    state.info = await api("api/info");
  } catch (e) {
    state.phase = "refused";
    say(e.message, true);
    return;
  }
  const info = state.info;
  showGallery(info.avatars, info.avatar);
  showSettings(info.settings);
  const select = $("generator");
  for (const name of info.generators) select.add(new Option(name, name));
  $("generator-row").hidden = info.generators.length < 2;
  select.addEventListener("change", () => post(`api/session/${state.session}`, { generator: select.value })
    .catch((e) => say(e.message, true)));
  for (const input of document.querySelectorAll("[data-setting]")) {
    input.addEventListener("change", () => changeSetting(input));
  }
  $("recalibrate").addEventListener("click", () => {
    state.recalibrating = true;
    say("Recalibrating: keep a relaxed face and look at the camera.");
    post(`api/session/${state.session}`, { recalibrate: true }).catch((e) => say(e.message, true));
  });
  $("snapshot").addEventListener("click", snapshot);
  $("record").addEventListener("click", toggleRecording);
  $("upload").addEventListener("change", (event) => upload(event.target.files[0]));
  $("reconnect").addEventListener("click", connect);
  window.addEventListener("pagehide", closeSession);
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    state.phase = "no-camera";
    say(`No camera: ${e.message}. Allow the camera for this page and reload.`, true);
    return;
  }
  $("camera").srcObject = cameraStream;
  await connect();
}

start();
