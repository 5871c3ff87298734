// scry web UI: plain JavaScript, no build step, no external resources. Everything it shows comes
// from this daemon's REST API and its server-sent events (one EventSource for the whole page).
'use strict';

(function () {
  const EDITOR_KEY = 'scry.editorTemplate';
  const DEFAULT_EDITOR = 'vscode://file/{path}:{line}';
  const MAX_EVENT_ROWS = 300;
  const CHART_POINTS = 120;
  const MAX_FLOW_NODES = 400;
  const MAX_QUEUE = 200000;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---- Access: `scry ui` signed this browser in with a one-time link; the session is an
  // HttpOnly cookie that the browser sends with every same-origin request (page, API, streams).
  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401) notice('This browser is signed out of the daemon (it restarted?): run `scry ui` again.');
    if (!r.ok) {
      const e = data && data.error;
      const err = new Error(e ? e.message + (e.hint ? ' (hint: ' + e.hint + ')' : '') : 'HTTP ' + r.status);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  // ---- Typed values (docs/protocol.md "Typed values") ----
  // Captured values as Python's repr would print them, bounded: the same rules as the CLI's
  // renderer (crates/scry-cli/src/render.rs), so a value reads the same everywhere.
  const MAX_VALUE = 200;
  function pyStr(text) {
    const q = text.includes("'") && !text.includes('"') ? '"' : "'";
    let out = q;
    for (const ch of text) {
      const c = ch.codePointAt(0);
      if (ch === '\\') out += '\\\\';
      else if (ch === q) out += '\\' + q;
      else if (ch === '\n') out += '\\n';
      else if (ch === '\r') out += '\\r';
      else if (ch === '\t') out += '\\t';
      else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
      else if (c >= 0x80 && c < 0xa0) out += '\\x' + c.toString(16).padStart(2, '0');
      else out += ch;
    }
    return out + q;
  }
  function pyBytes(hex) {
    if (!/^([0-9a-fA-F]{2})*$/.test(hex)) return 'bytes.fromhex(' + pyStr(hex) + ')';
    const bytes = [];
    for (let i = 0; i < hex.length; i += 2) bytes.push(parseInt(hex.slice(i, i + 2), 16));
    const q = bytes.includes(39) && !bytes.includes(34) ? '"' : "'";
    let out = 'b' + q;
    for (const b of bytes) {
      if (b === 92) out += '\\\\';
      else if (b === q.charCodeAt(0)) out += '\\' + q;
      else if (b === 10) out += '\\n';
      else if (b === 13) out += '\\r';
      else if (b === 9) out += '\\t';
      else if (b < 0x20 || b >= 0x7f) out += '\\x' + b.toString(16).padStart(2, '0');
      else out += String.fromCharCode(b);
    }
    return out + q;
  }
  const shortType = (t) => String(t || '').split('.').pop();
  const items = (n) => '…' + n + (n === 1 ? ' item' : ' items');
  function fmt(v, depth) {
    const text = repr(v, depth || 0);
    return text.length > MAX_VALUE ? text.slice(0, MAX_VALUE - 1) + '…' : text;
  }
  function repr(v, depth) {
    if (v === null || v === undefined) return '';
    if (typeof v !== 'object') return String(v);
    const cut = (s) => (v.len !== undefined ? s + '…(' + v.len + ')' : s);
    const more = (shown) => (v.len !== undefined && v.len > shown ? ', …' + (v.len - shown) + ' more' : '');
    switch (v.t) {
      case 'int': case 'float': return String(v.v);
      case 'bool': return v.v ? 'True' : 'False';
      case 'none': return 'None';
      case 'str': return cut(pyStr(String(v.v || '')));
      case 'bytes': {
        const b = cut(pyBytes(String(v.v || '')));
        return v.type === 'bytearray' ? 'bytearray(' + b + ')' : b;
      }
      case 'list': case 'tuple': case 'set': {
        const [o, c] = v.t === 'list' ? ['[', ']'] : v.t === 'tuple' ? ['(', ')'] : ['{', '}'];
        if (!v.v) return v.len ? o + items(v.len) + c : (v.t === 'set' ? 'set()' : o + c);
        if (v.t === 'set' && !v.v.length && !v.len) return 'set()';
        const one = v.t === 'tuple' && v.v.length === 1 && !(v.len > 1) ? ',' : '';
        return o + v.v.map((x) => repr(x, depth + 1)).join(', ') + one + more(v.v.length) + c;
      }
      case 'dict':
        if (!v.v) return v.len ? '{' + items(v.len) + '}' : '{}';
        return '{' + v.v.map((kv) => repr(kv[0], depth + 1) + ': ' + repr(kv[1], depth + 1)).join(', ') + more(v.v.length) + '}';
      case 'obj': return v.repr || ('<' + shortType(v.type) + '>');
      case 'error': return '!' + v.type + ': ' + v.message;
      case 'redacted': return '<redacted>';
      case 'ndarray': case 'tensor': return v.t + '[' + (v.shape || []).join('×') + '] ' + (v.dtype || '');
      case 'dataframe': return 'DataFrame[' + (v.shape || []).join('×') + ']';
      case 'series': return 'Series(len ' + v.len + ')';
      case 'enum': {
        const head = '<' + shortType(v.type) + '.' + v.name;
        if (v.v === undefined || v.v === null) return head + '>';
        return head + ': ' + (typeof v.v === 'object' ? repr(v.v, depth + 1) : String(v.v)) + '>';
      }
      case 'cycle': return '[...]';
      default: return JSON.stringify(v);
    }
  }
  function numeric(v) {
    if (!v || (v.t !== 'int' && v.t !== 'float')) return null;
    return typeof v.v === 'number' && isFinite(v.v) ? v.v : null;
  }
  const clock = (t) => {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  };

  // ---- Pages ----
  const pages = ['processes', 'probes', 'events', 'flow', 'settings'];
  let page = 'processes';
  function route() {
    const m = location.hash.match(/^#\/(\w+)/);
    page = m && pages.includes(m[1]) ? m[1] : 'processes';
    for (const p of pages) $('page-' + p).hidden = p !== page;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
    const work = [];
    if (page === 'processes') work.push(loadProcesses(), detectAttach());
    if (page === 'probes') work.push(loadProbes());
    if (page === 'events') work.push(loadRecentEvents());
    if (page === 'flow') work.push(flow.show());
    // For scripts (a headless screenshot): the page's first data is on screen.
    delete document.documentElement.dataset.settled;
    Promise.allSettled(work).then(() => { document.documentElement.dataset.settled = page; });
  }
  window.addEventListener('hashchange', route);

  // ---- Processes ----
  let processes = [];
  // Gone processes are hidden behind a toggle; shown, every gone one is listed (`?gone=true`),
  // hidden, the count is of the recently gone the default listing has.
  let showGone = false;
  async function loadProcesses() {
    try {
      processes = (await api('GET', '/api/v1/processes' + (showGone ? '?gone=true' : ''))).processes || [];
      notice('');
    } catch (e) { notice('Cannot list processes: ' + e.message); return; }
    renderProcesses();
    fillTargets();
  }

  function processTree(list) {
    // Children under their parent (by ppid) when the parent is listed too; live ones first.
    const live = list.filter((p) => p.state !== 'gone');
    const byPid = new Map(live.map((p) => [p.pid, p]));
    const kids = new Map();
    const roots = [];
    for (const p of list) {
      if (p.state !== 'gone' && p.ppid && byPid.has(p.ppid) && p.ppid !== p.pid) {
        if (!kids.has(p.ppid)) kids.set(p.ppid, []);
        kids.get(p.ppid).push(p);
      } else roots.push(p);
    }
    const rank = { awake: 0, sleeping: 1, gone: 2 };
    const order = (a, b) => (rank[a.state] - rank[b.state]) || (a.pid - b.pid);
    const out = [];
    const walk = (p, depth) => {
      out.push([p, depth]);
      for (const k of (kids.get(p.pid) || []).sort(order)) walk(k, depth + 1);
    };
    for (const r of roots.sort(order)) walk(r, 0);
    return out;
  }

  function renderProcesses() {
    const body = $('proc-body');
    body.textContent = '';
    $('proc-empty').hidden = processes.length > 0;
    const gone = processes.filter((p) => p.state === 'gone').length;
    const toggle = $('proc-gone');
    toggle.hidden = !showGone && gone === 0;
    toggle.textContent = showGone ? 'hide gone' : gone + ' gone (show)';
    const shown = showGone ? processes : processes.filter((p) => p.state !== 'gone');
    for (const [p, depth] of processTree(shown)) {
      const tr = el('tr');
      tr.id = 'proc-' + p.pid + (p.state === 'gone' ? '-gone-' + (p.id || '') : '');
      tr.dataset.pid = p.pid;
      tr.dataset.state = p.state;
      const pidCell = el('td', 'mono');
      pidCell.append(el('span', 'tree', depth ? '  '.repeat(depth - 1) + '└ ' : ''), document.createTextNode(String(p.pid)));
      tr.append(pidCell, el('td', '', p.name || ''));
      const st = el('td');
      st.append(el('span', 'state ' + p.state, p.state));
      tr.append(st, el('td', '', p.python_version || ''), el('td', 'muted', p.origin || p.source || ''));
      const cmd = (p.argv || []).join(' ') || p.executable || '';
      const c = el('td', 'cmd mono', cmd);
      c.title = cmd;
      tr.append(c);
      const actions = el('td');
      if (p.state === 'sleeping') actions.append(button('Wake', () => act('wake', p.pid), 'wake-' + p.pid));
      if (p.state === 'awake') actions.append(button('Sleep', () => act('sleep', p.pid), 'sleep-' + p.pid));
      tr.append(actions);
      body.append(tr);
    }
  }

  $('proc-gone').addEventListener('click', () => { showGone = !showGone; loadProcesses(); });

  function button(label, onclick, id) {
    const b = el('button', '', label);
    b.type = 'button';
    if (id) b.id = id;
    b.addEventListener('click', async () => {
      b.disabled = true;
      try { await onclick(); } finally { b.disabled = false; }
    });
    return b;
  }

  async function act(what, pid) {
    try {
      await api('POST', '/api/v1/' + what, { target: pid });
      notice('');
    } catch (e) { notice(what + ' ' + pid + ': ' + e.message); }
    loadProcesses();
  }

  // Attaching to a process that never loaded scry, when the daemon offers it
  // (`POST /api/v1/attach`; a GET there answers 405, where a daemon without it answers 404).
  let attachKnown = null;
  async function detectAttach() {
    if (attachKnown !== null) return;
    try { await api('GET', '/api/v1/attach'); attachKnown = true; } catch (e) { attachKnown = e.status === 405; }
    $('attach-form').hidden = !attachKnown;
  }
  $('attach-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const pid = Number($('attach-pid').value.trim());
    const out = $('attach-result');
    if (!Number.isInteger(pid) || pid <= 0) { out.textContent = 'give a process id'; return; }
    out.textContent = 'attaching…';
    $('attach-go').disabled = true;
    try {
      const r = await api('POST', '/api/v1/attach', { pid });
      out.textContent = 'attached to ' + pid + (r && r.injector ? ' (' + r.injector + ')' : '');
    } catch (e) { out.textContent = e.message; }
    finally { $('attach-go').disabled = false; }
    loadProcesses();
  });

  function fillTargets() {
    for (const id of ['probe-target', 'trace-target']) {
      const sel = $(id);
      const keep = sel.value;
      const first = id === 'probe-target' ? '<all>' : null;
      sel.textContent = '';
      if (first) sel.append(new Option('all processes', ''));
      for (const p of processes.filter((x) => x.state === 'awake')) {
        sel.append(new Option(p.pid + (p.name ? ' ' + p.name : ''), String(p.pid)));
      }
      sel.value = keep;
      if (sel.selectedIndex < 0 && sel.options.length) sel.selectedIndex = 0;
    }
  }

  // ---- Probes ----
  let probes = [];
  async function loadProbes() {
    if (!processes.length) loadProcesses();
    try {
      probes = (await api('GET', '/api/v1/probes')).probes || [];
    } catch (e) { notice('Cannot list probes: ' + e.message); return; }
    renderProbes();
    const sel = $('events-probe');
    const keep = sel.value;
    sel.textContent = '';
    sel.append(new Option('all', ''));
    for (const p of probes) sel.append(new Option(p.name || p.id, p.id));
    sel.value = keep;
  }

  function renderProbes() {
    const body = $('probe-body');
    body.textContent = '';
    $('probe-empty').hidden = probes.length > 0;
    for (const p of probes) {
      const tr = el('tr');
      tr.id = 'probe-' + p.id;
      const name = el('td', 'mono', p.name || p.id);
      if (!p.enabled) name.append(el('span', 'state disabled', p.expired ? 'expired' : 'disabled'));
      // The owner's explicit choice (docs/security.md): its expressions may call anything.
      if (p.unsafe) name.append(el('span', 'state error', 'unsafe'));
      const per = el('td');
      for (const s of p.processes || []) {
        const line = el('span', 'pstat');
        line.append(document.createTextNode(s.pid + ' '), el('span', 'state ' + s.state, s.state),
          document.createTextNode(' ' + (s.line ? ':' + s.line : '') + ' ' + s.hits + ' hits'));
        if (s.reason) line.title = s.reason;
        per.append(line);
      }
      // Exited processes are only counted; their hits stay in the totals.
      if (p.gone) {
        const line = el('span', 'pstat muted', 'gone: ' + p.gone);
        line.id = 'probe-gone-' + p.id;
        line.title = p.gone + ' exited processes had it; their hits are in the totals';
        per.append(line);
      }
      const t = p.totals || {};
      tr.append(name, el('td', 'mono', p.location), el('td', 'mono', (p.expressions || []).join('\n')), per,
        el('td', '', String(t.hits || 0)), el('td', '', String(t.recorded || 0)),
        el('td', '', String((t.dropped || 0) + (t.dropped_by_daemon || 0))), el('td', '', String(t.errors || 0)));
      const actions = el('td');
      actions.append(button(p.enabled ? 'Disable' : 'Enable', async () => {
        try { await api('POST', '/api/v1/probes/' + encodeURIComponent(p.id) + (p.enabled ? '/disable' : '/enable')); } catch (e) { notice(e.message); }
        loadProbes();
      }), document.createTextNode(' '), button('Remove', async () => {
        try { await api('DELETE', '/api/v1/probes/' + encodeURIComponent(p.id)); } catch (e) { notice(e.message); }
        loadProbes();
      }, 'remove-' + p.id));
      tr.append(actions);
      body.append(tr);
    }
  }

  $('probe-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {
      location: $('probe-location').value.trim(),
      expressions: $('probe-expressions').value.split('\n').map((s) => s.trim()).filter(Boolean),
    };
    const name = $('probe-name').value.trim();
    if (name) body.name = name;
    const cond = $('probe-condition').value.trim();
    if (cond) body.condition = cond;
    const target = $('probe-target').value;
    if (target) body.pid = Number(target); else body.all = true;
    $('probe-error').textContent = '';
    $('probe-add').disabled = true;
    try {
      await api('POST', '/api/v1/probes', body);
      $('probe-form').reset();
    } catch (e) {
      $('probe-error').textContent = e.message;
    } finally {
      $('probe-add').disabled = false;
    }
    loadProbes();
  });

  // ---- Live events: a table and one small chart per numeric expression ----
  const eventQueue = [];
  let eventsSeen = 0;
  const charts = new Map();

  async function loadRecentEvents() {
    if (!probes.length) loadProbes();
    if ($('events-body').rows.length) return;
    try {
      const d = await api('GET', '/api/v1/events?limit=50&order=newest');
      for (const e of (d.events || []).reverse()) {
        if (e.kind === 'trace') continue; // call records belong to the call-flow view
        eventQueue.push({ pid: e.pid, kind: e.kind, source: e.source, t_hit: e.t_hit, data: e.data });
      }
      schedule();
    } catch (e) { notice('Cannot read events: ' + e.message); }
  }

  function onLiveEvent(ev) {
    eventsSeen += 1;
    if (flow.accepts(ev)) flow.push(ev);
    if (ev.kind === 'trace') return;
    eventQueue.push(ev);
    if (eventQueue.length > MAX_QUEUE) eventQueue.splice(0, eventQueue.length - MAX_QUEUE);
    schedule();
  }

  function probeLabel(id) {
    const p = probes.find((x) => x.id === id);
    return p ? (p.name || p.id) : (id || '');
  }

  function drainEvents() {
    if (!eventQueue.length) return;
    const batch = eventQueue.splice(0, eventQueue.length);
    const only = $('events-probe').value;
    const paused = $('events-paused').checked;
    const rows = [];
    for (const ev of batch) {
      if (only && ev.source !== only) continue;
      const d = ev.data || {};
      if ((ev.kind === 'probe' || ev.kind === 'pulse') && d.values) {
        const label = ev.kind === 'probe' ? probeLabel(ev.source) : 'pulse ' + (d.name || ev.source);
        for (const [expr, v] of Object.entries(d.values)) {
          const n = numeric(v);
          if (n !== null) chartPoint(label + ' · ' + expr, n);
        }
      }
      if (!paused) rows.push(ev);
    }
    const body = $('events-body');
    const frag = document.createDocumentFragment();
    for (const ev of rows.slice(-MAX_EVENT_ROWS).reverse()) frag.append(eventRow(ev));
    body.insertBefore(frag, body.firstChild);
    while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(-1);
    $('events-count').textContent = eventsSeen + ' live events';
  }

  function eventRow(ev) {
    const d = ev.data || {};
    const tr = el('tr', 'fresh');
    tr.dataset.source = ev.source || '';
    tr.dataset.kind = ev.kind || '';
    let where = d.file ? d.file.split('/').pop() + ':' + d.line + (d.function ? ' ' + d.function : '') : (d.logger || '');
    let values;
    if (d.values) values = Object.entries(d.values).map(([k, v]) => k + '=' + fmt(v)).join('  ');
    else if (d.message !== undefined) values = (d.level ? d.level + ' ' : '') + d.message;
    else values = JSON.stringify(d).slice(0, 300);
    tr.append(el('td', '', ev.t_hit ? clock(ev.t_hit) : ''), el('td', '', String(ev.pid || '')), el('td', '', ev.kind || ''),
      el('td', '', ev.kind === 'probe' ? probeLabel(ev.source) : (ev.source || '')), el('td', '', where), el('td', 'vals', values));
    return tr;
  }

  function chartPoint(key, n) {
    let c = charts.get(key);
    if (!c) {
      const box = el('div', 'chart');
      const title = el('div', 'title', key);
      const last = el('span', 'last');
      title.append(last);
      const canvas = el('canvas');
      const dpr = window.devicePixelRatio || 1;
      canvas.width = 240 * dpr; canvas.height = 54 * dpr;
      canvas.style.width = '240px'; canvas.style.height = '54px';
      box.dataset.key = key;
      box.append(title, canvas);
      $('charts').append(box);
      c = { points: [], canvas, last, dirty: true };
      charts.set(key, c);
    }
    c.points.push(n);
    if (c.points.length > CHART_POINTS) c.points.shift();
    c.dirty = true;
  }

  function drawCharts() {
    for (const c of charts.values()) {
      if (!c.dirty) continue;
      c.dirty = false;
      const ctx = c.canvas.getContext('2d');
      const w = c.canvas.width, h = c.canvas.height, pad = 4;
      ctx.clearRect(0, 0, w, h);
      const pts = c.points;
      let lo = Math.min(...pts), hi = Math.max(...pts);
      if (hi === lo) { hi += 1; lo -= 1; }
      ctx.strokeStyle = '#5fb3f9';
      ctx.lineWidth = 1.5 * (window.devicePixelRatio || 1);
      ctx.beginPath();
      pts.forEach((v, i) => {
        const x = pad + (w - 2 * pad) * (pts.length === 1 ? 1 : i / (CHART_POINTS - 1));
        const y = h - pad - (h - 2 * pad) * (v - lo) / (hi - lo);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      c.last.textContent = String(pts[pts.length - 1]);
    }
  }

  // ---- One animation frame applies everything that arrived since the last one. ----
  let frameRequested = false;
  function schedule() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(frame);
  }
  function frame() {
    frameRequested = false;
    drainEvents();
    drawCharts();
    flow.frame();
  }

  // ---- The live call-flow view ----
  // One node per traced function along a vertical spine, indented by its call depth. A call
  // pulses the node and marks it running while on the stack; a return settles it green; an
  // exception flashes it red and keeps the text. Events are queued as they arrive and applied
  // once per animation frame; at most MAX_FLOW_NODES nodes are kept (least recently active go).
  const flow = (function () {
    const queue = [];
    const nodes = new Map();
    const stacks = new Map();
    const dirty = new Set();
    let active = null;
    let total = 0;
    let skipped = 0;
    let dropped = 0;

    function accepts(ev) { return ev.kind === 'trace'; }

    function push(ev) {
      queue.push(ev);
      if (queue.length > MAX_QUEUE) { skipped += queue.length - MAX_QUEUE; queue.splice(0, queue.length - MAX_QUEUE); }
      schedule();
    }

    // One trace event is a batch of records (docs/protocol.md "Trace events"): its own
    // function table, thread names, and records `{e, f, tid, ts, depth, dur, args, value, exc}`.
    function applyBatch(ev) {
      const d = ev.data || {};
      if (typeof d.dropped === 'number') dropped += d.dropped;
      if (d.ended) { settle(ev.pid); return; }
      const fns = d.functions || [];
      for (const r of d.records || []) {
        const f = fns[r.f];
        if (!f) continue;
        apply(ev.pid, f, r);
      }
    }

    function node(pid, f) {
      const key = pid + '|' + (f.module || '') + '|' + f.function;
      let n = nodes.get(key);
      if (!n) {
        n = { key, fn: f.function, module: f.module || '', file: f.file || '', line: f.line || 0, pid, depth: 0,
          running: 0, state: 'new', calls: 0, raised: 0, args: null, value: null, duration: null, exc: null,
          excNote: '', raisedInCall: false, el: null, touched: 0, flip: false };
        nodes.set(key, n);
        if (nodes.size > MAX_FLOW_NODES) evict();
      }
      n.touched = ++total;
      return n;
    }

    function evict() {
      let oldest = null;
      for (const n of nodes.values()) if (!n.running && (!oldest || n.touched < oldest.touched)) oldest = n;
      if (!oldest) return;
      nodes.delete(oldest.key);
      if (oldest.el) oldest.el.remove();
      dirty.delete(oldest);
    }

    // Pops `stack` down to `len` entries: frames whose return was dropped stop running.
    function unwindTo(stack, len) {
      while (stack.length > len) {
        const gone = stack.pop();
        gone.running = Math.max(0, gone.running - 1);
        if (!gone.running && gone.state === 'running') gone.state = 'returned';
        dirty.add(gone);
      }
    }

    function leave(stack, n) {
      const i = stack.lastIndexOf(n);
      if (i >= 0) { unwindTo(stack, i + 1); stack.pop(); n.running = Math.max(0, n.running - 1); }
      active = stack.length ? stack[stack.length - 1] : n;
    }

    function apply(pid, f, r) {
      const tkey = pid + ':' + r.tid;
      let stack = stacks.get(tkey);
      if (!stack) { stack = []; stacks.set(tkey, stack); }
      const n = node(pid, f);
      const depth = typeof r.depth === 'number' ? r.depth : stack.length;
      switch (r.e) {
        case 'call': case 'resume':
          unwindTo(stack, Math.min(depth, stack.length));
          stack.push(n);
          n.running += 1;
          n.depth = Math.min(depth, 16);
          if (r.e === 'call') { n.calls += 1; n.args = r.args || null; n.pulse = true; n.raisedInCall = false; }
          n.state = 'running';
          active = n;
          break;
        case 'return': case 'yield':
          leave(stack, n);
          if (r.value !== undefined) n.value = r.value;
          if (typeof r.dur === 'number') n.duration = r.dur / 1e9;
          // An exception of this very call that did not escape was caught here; one of an
          // earlier call stays shown as that.
          if (n.exc) n.excNote = n.raisedInCall ? 'caught' : 'earlier call';
          n.state = n.running ? 'running' : (r.e === 'yield' ? 'suspended' : 'returned');
          break;
        case 'raise':
          // Raised here or passing through: it may still be caught here.
          n.exc = r.exc || n.exc;
          n.excNote = '';
          n.raisedInCall = true;
          n.flash = true;
          break;
        case 'exception':
          leave(stack, n);
          n.exc = r.exc || n.exc || { type: null, message: '' };
          n.excNote = '';
          n.raised += 1;
          if (typeof r.dur === 'number') n.duration = r.dur / 1e9;
          n.state = n.running ? 'running' : 'raised';
          n.flash = true;
          break;
        default:
          return;
      }
      dirty.add(n);
    }

    // The trace ended in that process: nothing of it runs any more.
    function settle(pid) {
      for (const [k, stack] of stacks) if (k.startsWith(pid + ':')) { unwindTo(stack, 0); stacks.delete(k); }
      for (const n of nodes.values()) if (n.pid === pid && n.running) { n.running = 0; n.state = 'returned'; dirty.add(n); }
    }

    function render(n) {
      if (!n.el) {
        const d = el('div', 'node');
        d.dataset.key = n.key;
        d.dataset.fn = n.fn;
        d.append(el('span', 'dot'), el('span', 'fn', n.fn), el('span', 'dur'), el('span', 'exc'));
        n.el = d;
        $('flow').append(d);
      }
      const d = n.el;
      d.style.marginLeft = (n.depth * 22) + 'px';
      d.dataset.state = n.state;
      d.dataset.calls = n.calls;
      d.classList.toggle('running', n.state === 'running');
      d.classList.toggle('returned', n.state === 'returned');
      d.classList.toggle('suspended', n.state === 'suspended');
      d.classList.toggle('raised', n.state === 'raised');
      if (n.pulse) {
        // Two class names for one animation: switching restarts it without a forced layout.
        n.flip = !n.flip;
        d.classList.remove('called', 'called2', 'flash', 'flash2');
        d.classList.add(n.flip ? 'called' : 'called2');
        n.pulse = false;
      }
      if (n.flash) {
        n.flip = !n.flip;
        d.classList.remove('flash', 'flash2', 'called', 'called2');
        d.classList.add(n.flip ? 'flash' : 'flash2');
        n.flash = false;
      }
      d.children[2].textContent = n.duration !== null ? ms(n.duration) : '';
      d.children[3].textContent = n.exc ? excText(n.exc) + (n.excNote ? ' (' + n.excNote + ')' : '') : '';
      d.children[3].classList.toggle('caught', !!n.excNote);
      d.dataset.href = editorUrl(n.file, n.line);
    }

    function ms(s) { return s < 0.001 ? (s * 1e6).toFixed(0) + ' µs' : s < 1 ? (s * 1e3).toFixed(2) + ' ms' : s.toFixed(2) + ' s'; }
    function excText(x) { return typeof x === 'string' ? x : (x.type || 'exception') + (x.message ? ': ' + x.message : ''); }

    function frame() {
      if (queue.length) {
        const batch = queue.splice(0, queue.length);
        for (const ev of batch) applyBatch(ev);
      }
      if (!dirty.size) return;
      if (!$('page-flow').hidden) {
        let last = null;
        for (const n of dirty) { render(n); last = n; }
        dirty.clear();
        document.querySelectorAll('.node.active').forEach((x) => x.classList.remove('active'));
        const focus = active && active.el ? active : last;
        if (focus && focus.el) {
          focus.el.classList.add('active');
          if ($('flow-follow').checked) focus.el.scrollIntoView({ block: 'nearest' });
        }
      }
      $('flow-stats').textContent = nodes.size + ' functions · ' + total + ' records' +
        (dropped ? ' · ' + dropped + ' dropped by the trace budget' : '') +
        (skipped ? ' · ' + skipped + ' batches skipped (tab in background)' : '');
    }

    function show() {
      for (const n of nodes.values()) dirty.add(n);
      schedule();
      traces.detect();
    }

    function clear() {
      nodes.clear(); stacks.clear(); dirty.clear(); active = null;
      for (const d of document.querySelectorAll('#flow .node')) d.remove();
      $('flow-stats').textContent = '';
    }

    function tipFor(target) {
      const key = target && target.closest && target.closest('.node') && target.closest('.node').dataset.key;
      return key ? nodes.get(key) : null;
    }
    $('flow').addEventListener('mousemove', (ev) => {
      const n = tipFor(ev.target);
      const tip = $('flow-tip');
      if (!n) { tip.hidden = true; return; }
      const lines = [n.fn + '  (pid ' + n.pid + ', ' + n.state + ')', 'module   ' + n.module, 'at       ' + n.file + ':' + n.line, 'calls    ' + n.calls + (n.raised ? '  (raised ' + n.raised + ')' : '')];
      if (n.args) lines.push('args     ' + (typeof n.args === 'object' && !n.args.t ? Object.entries(n.args).map(([k, v]) => k + '=' + fmt(v)).join(', ') : fmt(n.args)));
      if (n.value !== null && n.value !== undefined) lines.push('returned ' + fmt(n.value));
      if (n.duration !== null) lines.push('took     ' + ms(n.duration));
      if (n.exc) lines.push('raised   ' + excText(n.exc) + (n.excNote ? ' (' + n.excNote + ')' : ''));
      tip.textContent = lines.join('\n');
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 420) + 'px';
      tip.style.top = (ev.clientY + 14) + 'px';
      tip.hidden = false;
    });
    $('flow').addEventListener('mouseleave', () => { $('flow-tip').hidden = true; });
    $('flow').addEventListener('click', (ev) => {
      const n = tipFor(ev.target);
      if (n && n.file) window.location.href = editorUrl(n.file, n.line);
    });
    $('flow-clear').addEventListener('click', clear);

    return { accepts, push, frame, show, clear, nodes };
  }());

  // ---- Starting and stopping traces from the UI (when the daemon offers /api/v1/traces) ----
  const traces = (function () {
    let known = null;
    async function detect() {
      if (known !== null) return;
      try { await api('GET', '/api/v1/traces'); known = true; } catch (e) { known = !(e.status === 404); }
      $('trace-form').hidden = !known;
      if (!processes.length) loadProcesses();
    }
    let current = null;
    $('trace-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      $('trace-error').textContent = '';
      const include = $('trace-include').value.split(/[\s,]+/).filter(Boolean);
      const body = { target: $('trace-target').value, include, args: $('trace-args').checked, returns: $('trace-returns').checked };
      try {
        const t = await api('POST', '/api/v1/traces', body);
        current = t.id || null;
        $('trace-error').textContent = '';
        $('trace-start').textContent = 'Restart trace';
      } catch (e) { $('trace-error').textContent = e.message; }
    });
    $('trace-stop').addEventListener('click', async () => {
      if (!current) return;
      try { await api('POST', '/api/v1/traces/' + encodeURIComponent(current) + '/stop'); current = null; $('trace-start').textContent = 'Start trace'; } catch (e) { $('trace-error').textContent = e.message; }
    });
    // Starts and stops (from here, the CLI or a duration) arrive on the live stream.
    function changed(d) {
      if (!d || !d.trace) return;
      if (d.state === 'running') current = d.trace;
      else if (d.trace === current) current = null;
      $('trace-start').textContent = current ? 'Restart trace' : 'Start trace';
      $('trace-state').textContent = current ? 'tracing ' + current : '';
    }
    return { detect, changed };
  }());

  // ---- Settings: the editor link template, kept in this browser ----
  function editorTemplate() { return localStorage.getItem(EDITOR_KEY) || DEFAULT_EDITOR; }
  function editorUrl(path, line) {
    return editorTemplate().split('{path}').join(encodeURI(path || '')).split('{line}').join(String(line || 1));
  }
  $('editor-default').textContent = DEFAULT_EDITOR;
  $('editor-template').value = editorTemplate();
  $('settings-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = $('editor-template').value.trim();
    if (v && v !== DEFAULT_EDITOR) localStorage.setItem(EDITOR_KEY, v); else localStorage.removeItem(EDITOR_KEY);
    $('settings-saved').textContent = 'saved';
  });
  $('editor-reset').addEventListener('click', () => {
    localStorage.removeItem(EDITOR_KEY);
    $('editor-template').value = DEFAULT_EDITOR;
    $('settings-saved').textContent = 'reset to the default';
  });

  // ---- The live stream: process changes, probe statuses, events ----
  let reloadTimer = null;
  function reloadSoon(fn) {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => { reloadTimer = null; fn(); }, 250);
  }
  function connect() {
    const es = new EventSource('/api/v1/stream');
    const conn = $('conn');
    es.onopen = () => { conn.textContent = 'live'; conn.className = 'conn live'; };
    es.onerror = () => { conn.textContent = 'reconnecting…'; conn.className = 'conn down'; };
    const parse = (m) => { try { return JSON.parse(m.data); } catch (_) { return null; } };
    es.addEventListener('event', (m) => { const d = parse(m); if (d) onLiveEvent(d); });
    es.addEventListener('process', () => reloadSoon(() => { loadProcesses(); if (page === 'probes') loadProbes(); }));
    es.addEventListener('probe_status', () => { if (page === 'probes') reloadSoon(loadProbes); });
    es.addEventListener('trace', (m) => traces.changed(parse(m)));
    es.addEventListener('lagged', (m) => { const d = parse(m); if (d) $('events-count').textContent = 'missed ' + d.missed + ' (slow reader)'; });
  }

  // `?live=0`: a still page (no event stream, no refresh), for a headless screenshot or any
  // tool that waits for the network to go quiet, which an open stream never does.
  const LIVE = new URLSearchParams(location.search).get('live') !== '0';
  if (LIVE) {
    // Counters change without a status message for every hit: refresh the visible lists.
    setInterval(() => {
      if (document.hidden) return;
      if (page === 'probes') loadProbes();
      if (page === 'processes') loadProcesses();
    }, 2000);
    connect();
  } else {
    $('conn').textContent = 'still (live=0)';
    $('conn').className = 'conn down';
  }
  route();
}());
