// stockq's dashboard: polls /admin/api/state (and /admin/api/webhooks), keeps the last
// minutes in memory, draws them.
// Plain script, no library: every text from the server goes in through textContent.
'use strict';

(() => {
  const POLL_MS = 1500;
  const BOOKS_MS = 10000;
  const HISTORY_MS = 5 * 60 * 1000;
  const LATENCY_SPAN_MS = 5000; // reservation latency: over the polls of the last 5 s
  const BOOKS_PAGE = 25;
  const DEAD_PAGE = 20;

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
  const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? '–' : number.format(v));

  async function errorOf(response) {
    try {
      return (await response.json()).error || response.statusText;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  if ($('login')) {
    $('login').addEventListener('submit', async (event) => {
      event.preventDefault();
      const shown = $('login-error');
      shown.hidden = true;
      const response = await fetch('/admin/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token: $('token').value }),
      }).catch(() => null);
      if (response && response.ok) {
        location.reload();
        return;
      }
      shown.textContent = response ? await errorOf(response) : 'the server did not answer';
      shown.hidden = false;
    });
    return;
  }
  if (!$('dashboard')) return;

  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const samples = []; // one per poll: {t, depths, counters, reserved counts, end-to-end}
  let books = null;
  let booksOffset = 0;
  let deadOffset = 0;
  let webhooksTotal = 0;
  let timer = null;
  let polling = false;

  // ---- polling ----

  async function poll() {
    clearTimeout(timer);
    if (polling) return;
    polling = true;
    try {
      const [response, webhooks] = await Promise.all([
        fetch(`/admin/api/state?dead_offset=${deadOffset}`),
        fetch('/admin/api/webhooks').catch(() => null),
      ]);
      if (response.status === 401) {
        location.reload(); // the session ended: back to the login form
        return;
      }
      if (!response.ok) throw new Error(await errorOf(response));
      const state = await response.json();
      remember(state);
      render(state);
      if (webhooks && webhooks.ok) renderWebhooks(await webhooks.json());
      else $('webhooks-summary').textContent = `unavailable: ${webhooks ? await errorOf(webhooks) : 'no answer'}`;
      status(`live · ${time(state.at)}`, 'ok');
    } catch (e) {
      status(`no data: ${e.message || e}`, 'bad');
    } finally {
      polling = false;
      timer = setTimeout(poll, POLL_MS);
    }
  }

  async function pollBooks() {
    try {
      const response = await fetch(`/admin/api/books?offset=${booksOffset}&limit=${BOOKS_PAGE}`);
      if (!response.ok) throw new Error(await errorOf(response));
      books = await response.json();
      renderBooks();
    } catch (e) {
      $('books-summary').textContent = `unavailable: ${e.message || e}`;
    }
  }

  function status(text, kind) {
    const s = $('status');
    s.textContent = text;
    s.className = `status ${kind}`;
  }

  function remember(state) {
    const q = state.queue;
    samples.push({
      t: state.at,
      pending: q.pending,
      processing: q.processing,
      held: q.held,
      dead: q.dead,
      applied: q.counters.applied || 0,
      rejected: q.counters.rejected || 0,
      reserveCounts: state.reserve_latency.counts,
      e2e: state.end_to_end,
    });
    while (samples.length && samples[0].t < state.at - HISTORY_MS - LATENCY_SPAN_MS) samples.shift();
  }

  // ---- derived series ----

  // per second between consecutive polls; a counter that went back (a reset) counts 0
  function rate(field) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const [a, b] = [samples[i - 1], samples[i]];
      const dt = (b.t - a.t) / 1000;
      out.push([b.t, dt > 0 ? Math.max(0, b[field] - a[field]) / dt : null]);
    }
    return out;
  }

  function reservedRate() {
    const total = (s) => s.reserveCounts.reduce((x, y) => x + y, 0);
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].t - samples[i - 1].t) / 1000;
      out.push([samples[i].t, dt > 0 ? Math.max(0, total(samples[i]) - total(samples[i - 1])) / dt : null]);
    }
    return out;
  }

  // quantile q of the reservations answered in the LATENCY_SPAN_MS before each poll,
  // interpolated within its bucket as Prometheus' histogram_quantile does
  function reserveQuantile(bounds, q) {
    const out = [];
    let j = 0;
    for (let i = 1; i < samples.length; i++) {
      while (j < i - 1 && samples[j + 1].t <= samples[i].t - LATENCY_SPAN_MS) j++;
      const counts = samples[i].reserveCounts.map((n, k) => Math.max(0, n - (samples[j].reserveCounts[k] || 0)));
      out.push([samples[i].t, quantile(bounds, counts, q)]);
    }
    return out;
  }

  function quantile(bounds, counts, q) {
    const n = counts.reduce((x, y) => x + y, 0);
    if (n === 0) return null;
    const rank = q * n;
    let below = 0;
    for (let k = 0; k < counts.length; k++) {
      if (below + counts[k] >= rank && counts[k] > 0) {
        const lower = k === 0 ? 0 : bounds[k - 1];
        const upper = k < bounds.length ? bounds[k] : bounds[bounds.length - 1];
        return lower + (upper - lower) * ((rank - below) / counts[k]);
      }
      below += counts[k];
    }
    return bounds[bounds.length - 1];
  }

  const field = (name) => samples.map((s) => [s.t, s[name]]);
  const e2e = (name) => samples.map((s) => [s.t, s.e2e[name]]);

  // ---- charts ----

  const SVG = 'http://www.w3.org/2000/svg';
  const W = 600;
  const H = 200;
  const PAD = { left: 52, right: 8, top: 10, bottom: 22 };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // the smallest 1, 2 or 5 × 10^k at or above v
  function niceCeil(v) {
    if (!(v > 0)) return 0.25;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
  }

  const short = (v) => {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return `${+v.toFixed(v < 10 ? 2 : 0)}`;
  };

  function chart(id, series) {
    const root = $(`chart-${id}`);
    const now = samples.length ? samples[samples.length - 1].t : Date.now();
    // the minutes seen so far, from one up to HISTORY_MS
    const span = Math.min(HISTORY_MS, Math.max(60000, now - (samples.length ? samples[0].t : now)));
    const from = now - span;
    const values = series.flatMap((s) => s.points.filter(([t, v]) => t >= from && v !== null).map(([, v]) => v));
    const top = 4 * niceCeil((Math.max(0, ...values) * 1.05) / 4); // four round steps
    const x = (t) => PAD.left + ((t - from) / span) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
    root.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      root.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: 'grid' }));
      root.append(svg('text', { x: PAD.left - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, short(v)));
    }
    const step = span <= 120000 ? 15000 : 60000;
    for (let back = 0; back <= span; back += step) {
      const label = back === 0 ? 'now' : step < 60000 ? `−${back / 1000}s` : `−${back / 60000}m`;
      const anchor = back === 0 ? 'end' : back + step > span ? 'start' : 'middle';
      root.append(svg('text', { x: x(now - back), y: H - 6, class: 'axis', 'text-anchor': anchor }, label));
    }
    series.forEach((s, i) => {
      let d = '';
      let pen = 'M';
      for (const [t, v] of s.points) {
        if (t < from || v === null || v === undefined) {
          pen = 'M'; // a gap: no data then
          continue;
        }
        d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = 'L';
      }
      if (d) root.append(svg('path', { d, class: `line s${i}` }));
    });
    const legend = $(`legend-${id}`);
    legend.replaceChildren(
      ...series.map((s, i) => {
        const item = document.createElement('span');
        const swatch = document.createElement('i');
        swatch.className = `swatch s${i}`;
        const last = s.points.length ? s.points[s.points.length - 1][1] : null;
        item.append(swatch, `${s.name} ${fmt(last)}`);
        return item;
      }),
    );
  }

  // ---- tables ----

  function cell(value, className) {
    const td = document.createElement('td');
    if (value instanceof Node) td.append(value);
    else td.textContent = value === null || value === undefined ? '–' : String(value);
    if (className) td.className = className;
    if (className === 'id') td.title = td.textContent; // shown cut short
    return td;
  }

  // rebuilds a table's body only when its rows changed, so a button is never replaced
  // under the pointer
  function fill(tableId, rows, toCells, rowKey) {
    const body = $(tableId).tBodies[0];
    const key = JSON.stringify(rows);
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement('tr');
        if (rowKey) Object.assign(tr.dataset, rowKey(row));
        tr.append(...toCells(row));
        return tr;
      }),
    );
    if (!rows.length) {
      const tr = document.createElement('tr');
      const td = cell('none', 'empty');
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      tr.append(td);
      body.append(tr);
    }
  }

  const time = (ms) => (ms ? new Date(ms).toLocaleTimeString('en-GB') : '–');
  // the time, and the date too when it is not today's; the whole date and time on hover
  function stamp(ms) {
    if (!ms) return cell('–');
    const d = new Date(ms);
    const today = d.toDateString() === new Date().toDateString();
    const td = cell(today ? time(ms) : `${d.toLocaleDateString('en-GB')} ${time(ms)}`);
    td.title = d.toISOString();
    return td;
  }
  function ago(ms, now) {
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${Math.round(s / 3600)} h`;
  }

  function badge(text, className) {
    const span = document.createElement('span');
    span.className = `badge ${className}`;
    span.textContent = text;
    return span;
  }

  function button(label, action, id) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.dataset.action = action;
    b.dataset.id = id;
    b.className = action === 'drop' ? 'danger' : '';
    return b;
  }

  // ---- rendering ----

  function render(state) {
    const q = state.queue;
    const last = (points) => (points.length ? points[points.length - 1][1] : null);
    $('queue-name').textContent = q.queue;
    $('pending').textContent = fmt(q.pending);
    $('processing').textContent = fmt(q.processing);
    $('held').textContent = fmt(q.held);
    $('dead-count').textContent = fmt(q.dead);
    $('dead-count').parentElement.classList.toggle('alarm', q.dead > 0);
    $('applied').textContent = fmt(q.counters.applied || 0);
    $('applied-rate').textContent = fmt(last(rate('applied')));
    $('worker-count').textContent = fmt(q.live_workers.length);

    chart('depth', [
      { name: 'pending', points: field('pending') },
      { name: 'processing', points: field('processing') },
      { name: 'held', points: field('held') },
      { name: 'dead', points: field('dead') },
    ]);
    chart('rate', [
      { name: 'applied', points: rate('applied') },
      { name: 'reserved here', points: reservedRate() },
      { name: 'rejected', points: rate('rejected') },
    ]);
    const bounds = state.reserve_latency.bounds_ms;
    chart('reserve', [
      { name: 'p50', points: reserveQuantile(bounds, 0.5) },
      { name: 'p99', points: reserveQuantile(bounds, 0.99) },
    ]);
    chart('e2e', [
      { name: 'p50', points: e2e('p50_ms') },
      { name: 'p99', points: e2e('p99_ms') },
    ]);

    const fastest = Math.max(1, ...q.live_workers.map((w) => w.rate));
    $('workers-summary').textContent = `${q.live_workers.length} live · ${fmt(q.throughput)} events/s`;
    // the uptime in the rows, so that a row is redrawn when it changes
    const workers = q.live_workers.map((w) => ({ ...w, up: ago(w.started_at, state.at) }));
    fill('workers', workers, (w) => {
      const meter = document.createElement('meter');
      meter.max = fastest;
      meter.value = w.rate;
      return [
        cell(w.id, 'id'), cell(w.pid), cell(w.up), cell(fmt(w.applied), 'n'),
        cell(fmt(w.rejected), 'n'), cell(fmt(w.dead), 'n'), cell(fmt(w.rate), 'n'), cell(meter),
      ];
    });

    renderDead(state.dead);
    fill('outcomes', state.outcomes, (o) => [
      cell(time(o.at)), cell(o.event_id, 'id'), cell(badge(o.state || '?', o.state || '')), cell(o.product_id),
      cell(o.qty, 'n'), cell(o.buyer), cell(o.at && o.reserved_at ? `${fmt(o.at - o.reserved_at)} ms` : '–', 'n'),
      cell(o.reason, 'reason'),
    ]);
    fill('alerts', state.alerts, (a) => [
      cell(time(a.at)), cell(a.product_id), cell(fmt(a.redis), 'n'), cell(fmt(a.mysql), 'n'),
      cell(fmt(a.in_flight), 'n'), cell(fmt(a.delta), 'n drift'),
    ]);
  }

  function renderDead(dead) {
    $('dead-summary').textContent = `${fmt(dead.total)} in all`;
    fill(
      'dead',
      dead.letters,
      (d) => {
        const actions = document.createElement('span');
        if (d.event_id) actions.append(button('Requeue', 'requeue', d.event_id), button('Drop', 'drop', d.event_id));
        return [
          cell(d.event_id || d.entry, 'id'), cell(d.product_id), cell(d.qty, 'n'), cell(d.attempts, 'n'),
          cell(time(d.failed_at)), cell(d.reason, 'reason'), cell(actions, 'actions'),
        ];
      },
      (d) => (d.event_id ? { id: d.event_id } : {}),
    );
    const end = Math.min(dead.total, dead.offset + dead.letters.length);
    $('dead-range').textContent = dead.total ? `${fmt(dead.offset + 1)}–${fmt(end)} of ${fmt(dead.total)}` : '';
    $('dead-prev').disabled = dead.offset === 0;
    $('dead-next').disabled = end >= dead.total;
  }

  // the dead letters of webhooks: a delivery's id is <event_id>@<version>; an unreadable one
  // has none, and is replayed by its event id
  function renderWebhooks(w) {
    webhooksTotal = w.total;
    const shown = w.dead.length < w.total ? ` · the newest ${fmt(w.dead.length)} shown` : '';
    $('webhooks-summary').textContent = `${w.total ? fmt(w.total) : 'none'} given up on${shown}`;
    const idOf = (d) => d.id || d.event_id;
    fill(
      'webhooks',
      w.dead,
      (d) => {
        const state = d.body && typeof d.body === 'object' ? d.body.state : null;
        return [
          cell(idOf(d), 'id'), cell(badge(state || '?', state || '')), cell(fmt(d.attempts), 'n'),
          stamp(d.died_at), cell(d.error, 'reason'), cell(button('Replay', 'replay', idOf(d)), 'actions'),
        ];
      },
      (d) => ({ id: idOf(d) }),
    );
    $('webhooks-replay-all').disabled = !w.total;
  }

  // a spread product's Redis stock is its buckets' sum: say how many, and each on hover
  function redisCell(p) {
    const stock = p.redis === null ? 'missing' : fmt(p.redis);
    if (!p.buckets) return cell(stock, 'n');
    const td = cell(`${stock} · ${p.buckets.length} buckets`, 'n');
    const transit = p.in_transit ? ` (+${fmt(p.in_transit)} on their way)` : '';
    td.title = p.buckets.map((k) => `shard ${k.shard}: ${fmt(k.stock)}`).join(', ') + transit;
    return td;
  }

  function renderBooks() {
    const b = books;
    const checked = `checked ${time(b.checked_at)} in ${fmt(b.took_ms)} ms`;
    $('books-summary').textContent = b.consistent
      ? `consistent · ${fmt(b.products_total)} products · ${checked}`
      : `${fmt(b.drifting_total)} of ${fmt(b.products_total)} products drifting · ${checked}`;
    $('books-state').textContent = b.consistent ? 'consistent' : `${fmt(b.drifting_total)} drifting`;
    $('books-state').parentElement.classList.toggle('alarm', !b.consistent);
    fill('books', b.products, (p) => [
      cell(p.product_id), redisCell(p), cell(fmt(p.mysql), 'n'),
      cell(fmt(p.in_flight), 'n'), cell(fmt(p.expected_redis), 'n'), cell(fmt(p.delta), p.delta ? 'n drift' : 'n'),
    ]);
    const end = b.offset + b.products.length;
    $('books-range').textContent = b.products_total ? `${fmt(b.offset + 1)}–${fmt(end)} of ${fmt(b.products_total)}` : '';
    $('books-prev').disabled = b.offset === 0;
    $('books-next').disabled = end >= b.products_total;
  }

  // ---- actions ----

  let toastTimer = null;
  function toast(text, kind) {
    const t = $('toast');
    t.textContent = text;
    t.className = kind;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), 4000);
  }

  async function post(path) {
    return fetch(path, { method: 'POST', headers: { 'X-CSRF-Token': csrf } }).catch(() => null);
  }

  async function act(action, id, b) {
    if (action === 'drop' && !confirm(`Drop ${id}? Its stock goes back on sale and the order is cancelled.`)) return;
    b.disabled = true;
    const response = await post(`/admin/api/dead/${encodeURIComponent(id)}/${action}`);
    if (response && response.ok) {
      const done = await response.json();
      toast(action === 'drop' ? `dropped ${id}, ${done.given_back} units back on sale` : `requeued ${id}`, 'ok');
    } else {
      toast(`${action} ${id}: ${response ? await errorOf(response) : 'the server did not answer'}`, 'bad');
      b.disabled = false;
    }
    poll();
  }

  // one dead delivery of webhooks (or an event's), or every one when `id` is null
  async function replay(id, b) {
    b.disabled = true;
    const path =
      id === null ? '/admin/api/webhooks/replay-all' : `/admin/api/webhooks/${encodeURIComponent(id)}/replay`;
    const response = await post(path);
    if (response && response.ok) {
      const done = await response.json();
      toast(id === null ? `replayed ${fmt(done.replayed)} webhooks` : `replayed ${id}`, 'ok');
    } else {
      toast(`replay ${id ?? 'all'}: ${response ? await errorOf(response) : 'the server did not answer'}`, 'bad');
      b.disabled = false;
    }
    poll();
  }

  $('webhooks').addEventListener('click', (event) => {
    const b = event.target.closest('button[data-action="replay"]');
    if (b) replay(b.dataset.id, b);
  });
  $('webhooks-replay-all').addEventListener('click', (event) => {
    const n = webhooksTotal === 1 ? 'the dead webhook' : `all ${fmt(webhooksTotal)} dead webhooks`;
    if (!confirm(`Replay ${n}? Each is sent to the order service again at once.`)) return;
    replay(null, event.currentTarget);
  });
  $('dead').addEventListener('click', (event) => {
    const b = event.target.closest('button[data-action]');
    if (b) act(b.dataset.action, b.dataset.id, b);
  });
  $('logout').addEventListener('click', async () => {
    await post('/admin/logout');
    location.reload();
  });
  const pageBy = (by) => () => {
    booksOffset = Math.max(0, booksOffset + by);
    pollBooks();
  };
  $('books-prev').addEventListener('click', pageBy(-BOOKS_PAGE));
  $('books-next').addEventListener('click', pageBy(BOOKS_PAGE));
  $('dead-prev').addEventListener('click', () => {
    deadOffset = Math.max(0, deadOffset - DEAD_PAGE);
    poll();
  });
  $('dead-next').addEventListener('click', () => {
    deadOffset += DEAD_PAGE;
    poll();
  });

  poll();
  pollBooks();
  setInterval(pollBooks, BOOKS_MS);
})();
