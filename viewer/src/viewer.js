// StudyPublicator's touch viewer: one stack viewport (cornerstone3D), a series strip, swipe or drag through
// the images, pinch to zoom, a contrast mode with presets, cine for multi-frame instances. Everything it
// shows comes from the link's study.json (signed instance URLs, the anonymised instances only); its words
// come from the page (translated by the service). No network access beyond this origin.
import { init as coreInit, RenderingEngine, Enums, imageLoader, eventTarget } from '@cornerstonejs/core';
import { init as loaderInit } from '@cornerstonejs/dicom-image-loader';

const $ = (id) => document.getElementById(id);
const strings = JSON.parse($('v-strings').textContent || '{}');
const element = $('v-viewport');
const message = $('v-message');
const counter = $('v-counter');
const strip = $('v-strip');
const presets = { soft: [400, 40], lung: [1500, -600], bone: [1800, 400], brain: [80, 40] };

// What the tests and the benchmark read (no study data: positions and counts only).
const state = (window.__viewer = {
  ready: false, // the first image is on screen
  index: 0,
  count: 0,
  loaded: 0, // images of the current series decoded and cached
  failed: 0,
  series: 0,
  mode: 'scroll',
  voi: null,
  firstImageMs: null,
  allLoadedMs: null,
});

let viewport = null;
let imageIds = [];
let current = null; // the series shown
let playing = null;
let loadToken = 0;

function say(text) {
  message.textContent = text || '';
  message.hidden = !text;
}

function showCounter() {
  counter.textContent = state.count
    ? (strings.image_of || '{n} / {count}').replace('{n}', String(state.index + 1)).replace('{count}', String(state.count))
    : '';
}

function idsOf(series) {
  const ids = [];
  for (const instance of series.instances) {
    if (!instance.pixels) continue;
    if (instance.frames > 1) {
      for (let f = 1; f <= instance.frames; f += 1) ids.push(`wadouri:${instance.url}&frame=${f}`);
    } else {
      ids.push(`wadouri:${instance.url}`);
    }
  }
  return ids;
}

function readVoi() {
  const props = viewport.getProperties();
  state.voi = props.voiRange ? [props.voiRange.lower, props.voiRange.upper] : null;
}

async function prefetch(token, ids) {
  // Decode the rest of the series in the background, a few at a time, from the current image outwards.
  const order = ids.map((id, i) => [Math.abs(i - state.index), id]).sort((a, b) => a[0] - b[0]).map((x) => x[1]);
  let next = 0;
  const worker = async () => {
    while (next < order.length && token === loadToken) {
      const id = order[next];
      next += 1;
      try {
        await imageLoader.loadAndCacheImage(id);
        state.loaded += 1;
      } catch (e) {
        state.failed += 1;
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker(), worker(), worker()]);
  if (token === loadToken && state.allLoadedMs === null) state.allLoadedMs = performance.now();
}

async function show(series, position) {
  stopCine();
  loadToken += 1;
  const token = loadToken;
  current = series;
  imageIds = idsOf(series);
  state.series = position;
  state.count = imageIds.length;
  state.index = 0;
  state.loaded = 0;
  state.failed = 0;
  state.ready = false;
  for (const item of strip.children) item.firstChild.setAttribute('aria-current', String(item.dataset.position === String(position)));
  $('v-play').hidden = !series.instances.some((i) => i.frames > 1);
  if (!imageIds.length) {
    say(strings.cannot_show);
    showCounter();
    return;
  }
  say(strings.loading);
  try {
    await viewport.setStack(imageIds, 0);
    if (token !== loadToken) return;
    viewport.render();
    readVoi();
    state.ready = true;
    if (state.firstImageMs === null) state.firstImageMs = performance.now();
    say('');
  } catch (e) {
    if (token !== loadToken) return;
    state.failed += 1;
    say(strings.cannot_show);
  }
  showCounter();
  prefetch(token, imageIds);
}

async function go(index) {
  if (!viewport || !state.count) return;
  const target = Math.max(0, Math.min(state.count - 1, index));
  if (target === state.index && state.ready) return;
  state.index = target;
  showCounter();
  try {
    await viewport.setImageIdIndex(target);
    if (message.textContent === strings.cannot_show) say('');
  } catch (e) {
    state.failed += 1;
    say(strings.cannot_show);
  }
}

function setVoi(lower, upper) {
  viewport.setProperties({ voiRange: { lower, upper } });
  viewport.render();
  readVoi();
}

function stopCine() {
  if (playing) clearInterval(playing);
  playing = null;
  $('v-play').textContent = strings.play;
}

function toggleCine() {
  if (playing) {
    stopCine();
    return;
  }
  const frameTime = Number((current.instances.find((i) => i.frames > 1) || {}).frameTime) || 40;
  playing = setInterval(() => go((state.index + 1) % state.count), Math.max(20, frameTime));
  $('v-play').textContent = strings.pause;
}

function setMode(mode) {
  state.mode = mode;
  $('v-mode-scroll').setAttribute('aria-pressed', String(mode === 'scroll'));
  $('v-mode-window').setAttribute('aria-pressed', String(mode === 'window'));
  $('v-presets').hidden = mode !== 'window';
}

// Gestures: one finger (or the mouse) scrolls or changes contrast, two fingers pinch to zoom.
const pointers = new Map();
let drag = null;
let pinch = null;

function distance() {
  const [a, b] = [...pointers.values()];
  return Math.hypot(a.x - b.x, a.y - b.y);
}

element.addEventListener('pointerdown', (event) => {
  element.setPointerCapture(event.pointerId);
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  if (pointers.size === 1) {
    drag = { x: event.clientX, y: event.clientY, index: state.index, voi: state.voi };
  } else if (pointers.size === 2 && viewport) {
    drag = null;
    pinch = { d: distance(), scale: viewport.getCamera().parallelScale };
  }
});

element.addEventListener('pointermove', (event) => {
  if (!pointers.has(event.pointerId)) return;
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  if (pinch && pointers.size === 2) {
    const ratio = distance() / Math.max(1, pinch.d);
    viewport.setCamera({ parallelScale: pinch.scale / Math.max(0.1, ratio) });
    viewport.render();
    return;
  }
  if (!drag || !viewport) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (state.mode === 'scroll') {
    const moved = Math.abs(dy) >= Math.abs(dx) ? dy : dx;
    const step = Math.max(4, Math.min(30, element.clientHeight / Math.max(1, state.count)));
    go(drag.index - Math.round(moved / step)); // a swipe up (or left) goes forward, as pages do
  } else if (drag.voi) {
    const [lower, upper] = drag.voi;
    const width = Math.max(1, upper - lower + dx * 4);
    const center = (lower + upper) / 2 + dy * 2;
    setVoi(center - width / 2, center + width / 2);
  }
});

function release(event) {
  pointers.delete(event.pointerId);
  if (pointers.size < 2) pinch = null;
  if (pointers.size === 0) drag = null;
}
element.addEventListener('pointerup', release);
element.addEventListener('pointercancel', release);
element.addEventListener('wheel', (event) => {
  event.preventDefault();
  go(state.index + Math.sign(event.deltaY));
}, { passive: false });
element.addEventListener('keydown', (event) => {
  if (event.key === 'ArrowDown' || event.key === 'ArrowRight') go(state.index + 1);
  if (event.key === 'ArrowUp' || event.key === 'ArrowLeft') go(state.index - 1);
});

$('v-mode-scroll').addEventListener('click', () => setMode('scroll'));
$('v-mode-window').addEventListener('click', () => setMode('window'));
$('v-play').addEventListener('click', toggleCine);
$('v-reset').addEventListener('click', () => {
  if (!viewport) return;
  viewport.resetCamera();
  viewport.resetProperties();
  viewport.render();
  readVoi();
});
for (const button of document.querySelectorAll('[data-preset]')) {
  button.addEventListener('click', () => {
    const [width, center] = presets[button.dataset.preset];
    setVoi(center - width / 2, center + width / 2);
  });
}

function buildStrip(series) {
  series.forEach((s, position) => {
    const item = document.createElement('li');
    item.dataset.position = String(position);
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'v-series';
    const frames = s.instances.reduce((n, i) => n + (i.pixels ? i.frames : 0), 0);
    const head = document.createElement('strong');
    head.textContent = [s.modality, s.number].filter((x) => x !== null && x !== undefined && x !== '').join(' ');
    const text = document.createElement('span');
    text.textContent = s.description || strings.series;
    const count = document.createElement('small');
    count.textContent = String(frames);
    button.append(head, text, count);
    button.addEventListener('click', () => show(s, position));
    item.append(button);
    strip.append(item);
  });
}

window.addEventListener('resize', () => {
  if (!viewport) return;
  viewport.getRenderingEngine().resize(true, true);
});

async function main() {
  const response = await fetch(element.dataset.study, { credentials: 'same-origin', cache: 'no-store' });
  if (response.status === 410 || response.status === 404) {
    window.location.reload(); // the server shows the link's own page for that
    return;
  }
  if (!response.ok) {
    say(strings.cannot_show);
    return;
  }
  const study = await response.json();
  await coreInit();
  loaderInit({ maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1), wasmBasePath: element.dataset.wasm });
  const engine = new RenderingEngine('studypub');
  engine.enableElement({
    viewportId: 'main',
    type: Enums.ViewportType.STACK,
    element,
    defaultOptions: { background: [0, 0, 0] },
  });
  viewport = engine.getViewport('main');
  eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, () => {
    state.failed += 1;
  });
  element.addEventListener(Enums.Events.STACK_NEW_IMAGE, (event) => {
    state.index = event.detail.imageIdIndex;
    showCounter();
  });
  buildStrip(study.series);
  const first = study.series.findIndex((s) => s.instances.some((i) => i.pixels));
  if (first < 0) {
    say(strings.cannot_show);
    return;
  }
  await show(study.series[first], first);
}

main().catch(() => say(strings.cannot_show));
