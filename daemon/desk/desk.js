// vdispatch desk: the requests that need a person, those being matched and the available
// volunteers, on a map drawn from the data itself (tiles only when the deployment configured
// a tile server). Data comes from /desk/state every two seconds; choosing a volunteer for a
// request posts /desk/assign, which the daemon turns into a vd.request.assign input event.
'use strict';

const POLL_MS = 2000;
const GEO_LAT = 85.05112878;
const $ = (id) => document.getElementById(id);

const desk = {
  state: null,        // the last /desk/state
  volunteers: [],     // [{id, lat, lon, pool}]
  selected: null,     // request id
  sent: null,         // {rid, vid, coordinator, at}: the assignment awaiting its outcome
  view: null,         // {cx, cy, z}: centre in world pixels at zoom z, set by fit() or the user
  fitted: false,
  tiles: new Map(),
};

// ---- geography -----------------------------------------------------------------------------

// Redis GEO scores are 52-bit geohashes: latitude bits in the even positions, longitude bits
// in the odd ones, 26 each, over [-85.05112878, 85.05112878] and [-180, 180].
function decodeScore(score) {
  let s = Number(score), lat = 0, lon = 0;
  for (let i = 0; i < 26; i++) {
    const pair = s % 4;
    s = Math.floor(s / 4);
    lat += (pair % 2) * 2 ** i;
    lon += Math.floor(pair / 2) * 2 ** i;
  }
  return [-GEO_LAT + (lat + 0.5) * (2 * GEO_LAT) / 2 ** 26, -180 + (lon + 0.5) * 360 / 2 ** 26];
}

// Web Mercator: world pixels at zoom z (256 px tiles).
function project(lat, lon, z) {
  const n = 256 * 2 ** z, r = Math.PI / 180;
  const y = Math.log(Math.tan(Math.PI / 4 + lat * r / 2));
  return [(lon + 180) / 360 * n, (1 - y / Math.PI) / 2 * n];
}

function list(x) { return Array.isArray(x) ? x : []; }

// ---- data ----------------------------------------------------------------------------------

async function poll() {
  try {
    const resp = await fetch('/desk/state', {cache: 'no-store'});
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    take(body);
    status('updated ' + new Date().toLocaleTimeString(), false);
  } catch (e) {
    status('no data: ' + e.message, true);
  }
  setTimeout(poll, POLL_MS);
}

function take(body) {
  desk.state = body;
  const vols = [];
  const pools = body.data.volunteers || {};
  for (const pool of Object.keys(pools)) {
    const flat = list(pools[pool]);
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const [lat, lon] = decodeScore(flat[i + 1]);
      vols.push({id: flat[i], lat, lon, pool});
    }
  }
  desk.volunteers = vols;
  $('mode').textContent = body.actions ? '' : 'read-only desk (no token configured)';
  $('token-label').hidden = !body.actions;
  const reqs = list(body.data.requests);
  const sizes = body.data.pools || {};
  $('counts').textContent = `${body.data.unstaffed} to staff · ` +
    Object.keys(sizes).sort().map((p) => `${p} ${sizes[p]} available`).join(' · ');
  renderLists(reqs);
  checkSent(reqs);
  if (!desk.fitted && (reqs.length || vols.length)) fit(reqs, vols);
  draw();
}

function requests() { return desk.state ? list(desk.state.data.requests) : []; }

function byId(rid) { return requests().find((r) => r.id === rid); }

// ---- the lists -----------------------------------------------------------------------------

function describe(r) {
  const missing = r.needed - r.held;
  const parts = [r.service || 'request', `${r.priority}`, `${missing} of ${r.needed} missing`];
  if (r.event) parts.push('event ' + r.event);
  if (r.offers) parts.push(`${r.offers} offer${r.offers > 1 ? 's' : ''} out`);
  return parts.join(' · ');
}

function since(ms) {
  if (!ms || !desk.state) return '';
  const s = Math.max(0, Math.round((desk.state.data.now - ms) / 1000));
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function row(r) {
  const li = document.createElement('li');
  li.className = 'req' + (r.id === desk.selected ? ' selected' : '');
  li.dataset.id = r.id;
  li.dataset.state = r.state;
  const id = document.createElement('span');
  id.className = 'id';
  id.textContent = r.id + ' ';
  const st = document.createElement('span');
  st.className = 'prio-' + r.priority;
  st.textContent = r.state + (r.since ? ', waiting ' + since(r.since) : '');
  const why = document.createElement('div');
  why.className = 'why';
  why.textContent = r.reason ? 'why: ' + r.reason : '';
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = describe(r);
  li.append(id, st, why, meta);
  li.addEventListener('click', () => select(r.id));
  return li;
}

function renderLists(reqs) {
  const open = reqs.filter((r) => r.state === 'unmatched' || r.state === 'expired');
  const active = reqs.filter((r) => r.state === 'searching' || r.state === 'offered');
  $('open').replaceChildren(...open.map(row));
  $('active').replaceChildren(...active.map(row));
  if (desk.selected) showDetail(byId(desk.selected));
}

// ---- one request: the nearest free volunteers, and sending one -----------------------------

async function select(rid) {
  desk.selected = rid;
  document.querySelectorAll('li.req').forEach((li) => li.classList.toggle('selected', li.dataset.id === rid));
  showDetail(byId(rid));
  $('near').tBodies[0].replaceChildren();
  try {
    const resp = await fetch('/desk/near?request=' + encodeURIComponent(rid), {cache: 'no-store'});
    const body = await resp.json();
    if (!resp.ok || body.error) throw new Error(body.error || resp.statusText);
    if (desk.selected === rid) renderNear(rid, list(body.volunteers));
  } catch (e) {
    result('cannot list volunteers: ' + e.message, false);
  }
  draw();
}

function showDetail(r) {
  $('detail').hidden = !desk.selected;
  $('detail-title').textContent = desk.selected || '';
  $('detail-info').textContent = r ? `${r.state} · ${describe(r)}` + (r.reason ? ` · why: ${r.reason}` : '')
                                   : 'no longer listed (staffed, cancelled or ended)';
}

function renderNear(rid, vols) {
  const body = $('near').tBodies[0];
  const can = desk.state && desk.state.actions;
  body.replaceChildren(...vols.map((v) => {
    const tr = document.createElement('tr');
    const dist = v.distance_m >= 1000 ? `${(v.distance_m / 1000).toFixed(1)} km` : `${Math.round(v.distance_m)} m`;
    const cells = [v.id, dist,
                   (v.skills || '-') + (v.skills_ok ? '' : ' (lacks a skill)') + (v.languages_ok ? '' : ' (no shared language)'),
                   `${v.tasks_24h} of ${v.cap}`];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 2 && !(v.skills_ok && v.languages_ok)) td.className = 'miss';
      tr.append(td);
    });
    const td = document.createElement('td');
    if (can) {
      const b = document.createElement('button');
      b.className = 'send';
      b.dataset.vid = v.id;
      b.textContent = 'send';
      b.disabled = v.tasks_24h >= v.cap;
      b.addEventListener('click', () => send(rid, v.id));
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  if (!vols.length) result('no free volunteer in this request\'s pool within 128 km', false);
}

async function send(rid, vid) {
  const coordinator = $('coordinator').value.trim();
  const token = $('token').value;
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(coordinator)) {
    result('enter your coordinator ID (letters, digits, . _ : -) first', false);
    return;
  }
  localStorage.setItem('vd-coordinator', coordinator);
  sessionStorage.setItem('vd-token', token);
  result(`sending ${vid} to ${rid}…`, true);
  try {
    const resp = await fetch('/desk/assign', {
      method: 'POST',
      headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token},
      body: JSON.stringify({request_id: rid, volunteer_id: vid, coordinator_id: coordinator}),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    desk.sent = {rid, vid, coordinator, at: Date.now()};
    result(`sent ${vid} to ${rid}; waiting for the daemon…`, true);
  } catch (e) {
    result('not sent: ' + e.message, false);
  }
}

// What came of the last assignment sent: the request's last fact names it (from the list,
// or, once the request has left the list, from the request itself).
async function checkSent(reqs) {
  const s = desk.sent;
  if (!s) return;
  const r = reqs.find((x) => x.id === s.rid);
  let last = r && r.last ? r.last : null;
  if (!r) {
    try {
      const resp = await fetch('/desk/near?request=' + encodeURIComponent(s.rid), {cache: 'no-store'});
      last = (await resp.json()).last || null;
    } catch (e) {
      return;
    }
  }
  const f = last ? last.split('|') : [];
  if (desk.sent !== s) return;
  if (f[0] === 'refused' && f[1] === s.vid && f[2] === s.coordinator) {
    result(`refused: ${f.slice(3).join('|')}`, false);
    desk.sent = null;
  } else if (f[0] === 'confirmed' && f[1] === s.vid) {
    result(`confirmed: ${s.vid} is on the way to ${s.rid}`, true);
    desk.sent = null;
  } else if (!r && Date.now() - s.at > 10000) {
    result(`${s.rid} has left the list; its last news: ${last || 'none'}`, false);
    desk.sent = null;
  }
}

function result(text, ok) {
  const el = $('result');
  el.textContent = text;
  el.className = ok ? 'ok' : 'bad';
}

function status(text, bad) {
  $('status').textContent = text;
  $('status').className = bad ? 'bad' : '';
}

// ---- the map -------------------------------------------------------------------------------

const COLORS = {unmatched: '#d7301f', expired: '#7f0000', searching: '#f28e2b', offered: '#e6c229'};

function fit(reqs, vols) {
  const pts = reqs.filter((r) => r.lat !== undefined).map((r) => [r.lat, r.lon])
    .concat(vols.map((v) => [v.lat, v.lon]));
  if (!pts.length) return;
  const canvas = $('map');
  const w = canvas.clientWidth || 800, h = canvas.clientHeight || 600;
  let z = 17;
  for (; z > 2; z--) {
    const xy = pts.map((p) => project(p[0], p[1], z));
    const xs = xy.map((p) => p[0]), ys = xy.map((p) => p[1]);
    if (Math.max(...xs) - Math.min(...xs) < w * 0.9 && Math.max(...ys) - Math.min(...ys) < h * 0.9) {
      desk.view = {cx: (Math.max(...xs) + Math.min(...xs)) / 2, cy: (Math.max(...ys) + Math.min(...ys)) / 2, z};
      break;
    }
  }
  if (!desk.view) {
    const c = project(pts[0][0], pts[0][1], 3);
    desk.view = {cx: c[0], cy: c[1], z: 3};
  }
  desk.fitted = true;
}

function screen(lat, lon, w, h) {
  const v = desk.view, p = project(lat, lon, v.z);
  return [p[0] - v.cx + w / 2, p[1] - v.cy + h / 2];
}

function drawTiles(ctx, w, h) {
  const url = desk.state && desk.state.tiles;
  if (!url) return;
  const v = desk.view, z = Math.round(v.z), n = 2 ** z;
  const x0 = Math.floor((v.cx - w / 2) / 256), x1 = Math.floor((v.cx + w / 2) / 256);
  const y0 = Math.max(0, Math.floor((v.cy - h / 2) / 256)), y1 = Math.min(n - 1, Math.floor((v.cy + h / 2) / 256));
  for (let x = x0; x <= x1; x++) {
    for (let y = y0; y <= y1; y++) {
      const tx = ((x % n) + n) % n, key = `${z}/${tx}/${y}`;
      let img = desk.tiles.get(key);
      if (!img) {
        img = new Image();
        img.onload = draw;
        img.src = url.replace('{z}', z).replace('{x}', tx).replace('{y}', y);
        desk.tiles.set(key, img);
      }
      if (img.complete && img.naturalWidth) ctx.drawImage(img, x * 256 - v.cx + w / 2, y * 256 - v.cy + h / 2, 256, 256);
    }
  }
}

function draw() {
  const canvas = $('map');
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, w, h);
  if (!desk.view) return;
  drawTiles(ctx, w, h);
  ctx.fillStyle = '#2a9d55';
  for (const v of desk.volunteers) {
    const [x, y] = screen(v.lat, v.lon, w, h);
    if (x >= -2 && y >= -2 && x <= w + 2 && y <= h + 2) ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  }
  for (const r of requests()) {
    if (r.lat === undefined) continue;
    const [x, y] = screen(r.lat, r.lon, w, h);
    ctx.beginPath();
    ctx.arc(x, y, r.id === desk.selected ? 8 : 5, 0, 2 * Math.PI);
    ctx.fillStyle = COLORS[r.state] || '#555';
    ctx.fill();
    ctx.lineWidth = r.id === desk.selected ? 3 : 1;
    ctx.strokeStyle = '#1c2430';
    ctx.stroke();
  }
  // A scale bar: how far 100 px is here.
  const c = desk.view, mid = [c.cx, c.cy];
  const lat = Math.atan(Math.sinh(Math.PI * (1 - 2 * mid[1] / (256 * 2 ** c.z)))) * 180 / Math.PI;
  const mpp = 156543.03 * Math.cos(lat * Math.PI / 180) / 2 ** c.z;
  ctx.fillStyle = '#1c2430';
  ctx.fillRect(w - 120, h - 20, 100, 2);
  ctx.fillText(`${Math.round(mpp * 100)} m`, w - 120, h - 25);
}

function pick(ev) {
  const canvas = $('map'), rect = canvas.getBoundingClientRect();
  const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
  let best = null, bestD = 12;
  for (const r of requests()) {
    if (r.lat === undefined) continue;
    const [x, y] = screen(r.lat, r.lon, canvas.clientWidth, canvas.clientHeight);
    const d = Math.hypot(x - mx, y - my);
    if (d < bestD) { best = r; bestD = d; }
  }
  if (best) select(best.id);
}

function setupMap() {
  const canvas = $('map');
  let drag = null, moved = false;
  canvas.addEventListener('mousedown', (e) => { drag = [e.clientX, e.clientY]; moved = false; });
  window.addEventListener('mouseup', (e) => {
    if (drag && !moved) pick(e);
    drag = null;
  });
  window.addEventListener('mousemove', (e) => {
    if (!drag || !desk.view) return;
    const dx = e.clientX - drag[0], dy = e.clientY - drag[1];
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    desk.view.cx -= dx; desk.view.cy -= dy;
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener('wheel', (e) => {
    if (!desk.view) return;
    e.preventDefault();
    const f = e.deltaY < 0 ? 2 : 0.5, v = desk.view;
    if (v.z + Math.log2(f) < 2 || v.z + Math.log2(f) > 19) return;
    v.cx *= f; v.cy *= f; v.z += Math.log2(f);
    draw();
  }, {passive: false});
  window.addEventListener('resize', draw);
}

$('coordinator').value = localStorage.getItem('vd-coordinator') || '';
$('token').value = sessionStorage.getItem('vd-token') || '';
setupMap();
poll();
