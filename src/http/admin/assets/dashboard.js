// stockq's dashboard: polls /admin/api/state (and /admin/api/webhooks), keeps the last
// minutes in memory (starting from the server's own, /admin/api/history), draws them; every
// few seconds reads the holds, the audit and the dead letters' reasons; pauses, searches and
// acts on request.
// Plain script, no library: every text from the server goes in through textContent.
'use strict';

(() => {
  const POLL_MS = 1500;
  const BOOKS_MS = 10000;
  const SLOW_MS = 5000; // the holds, the audit and the dead letters' reasons
  const HISTORY_MS = 10 * 60 * 1000;
  const LATENCY_SPAN_MS = 5000; // reservation latency: over the polls of the last 5 s
  const BOOKS_PAGE = 25;
  const DEAD_PAGE = 20;
  const HOLDS_SHOWN = 10;
  const AUDIT_SHOWN = 20;
  const REFUSALS = [['sold_out', 'sold out'], ['limit', 'limit'], ['paused', 'paused'], ['unknown_product', 'unknown']];

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
  let queue = null; // the latest state's queue: pauses and refusals
  let deadReason = ''; // the dead letters' filter: '' every reason
  let deadSelected = 0; // how many dead letters the filter selects
  let holds = null;

  // ---- polling ----

  async function poll() {
    clearTimeout(timer);
    if (polling) return;
    polling = true;
    try {
      const reason = deadReason;
      const [response, webhooks, filtered] = await Promise.all([
        fetch(`/admin/api/state?dead_offset=${reason ? 0 : deadOffset}`),
        fetch('/admin/api/webhooks').catch(() => null),
        reason ? fetch(`/admin/api/dead?reason=${encodeURIComponent(reason)}&limit=${DEAD_PAGE}`).catch(() => null) : null,
      ]);
      if (response.status === 401) {
        location.reload(); // the session ended: back to the login form
        return;
      }
      if (!response.ok) throw new Error(await errorOf(response));
      const state = await response.json();
      if (reason && reason === deadReason && filtered && filtered.ok) {
        const f = await filtered.json();
        state.dead = { total: f.total, offset: 0, letters: f.letters, reason: f.reason };
      }
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
    keep({
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
  }

  function keep(sample) {
    if (samples.length && sample.t <= samples[samples.length - 1].t) return;
    samples.push(sample);
    while (samples.length && samples[0].t < sample.t - HISTORY_MS - LATENCY_SPAN_MS) samples.shift();
  }

  // the charts' last minutes as the server kept them, so that a reload loses none
  async function loadHistory() {
    try {
      const response = await fetch('/admin/api/history');
      if (!response.ok) return;
      for (const s of (await response.json()).samples) {
        keep({
          t: s.at,
          pending: s.pending,
          processing: s.processing,
          held: s.held,
          dead: s.dead,
          applied: s.applied,
          rejected: s.rejected,
          reserveCounts: s.reserve_counts,
          e2e: s.end_to_end,
        });
      }
    } catch {
      // the charts start from now
    }
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
  // the date and the time, always (a dead letter, an audit entry, a deadline)
  function dated(ms) {
    if (!ms) return cell('–');
    const d = new Date(ms);
    const td = cell(`${d.toLocaleDateString('en-GB')} ${time(ms)}`);
    td.title = d.toISOString();
    return td;
  }
  // the time until `ms`, from `now`: "4 min 12 s", or how long ago it passed
  function left(ms, now) {
    const s = Math.round((ms - now) / 1000);
    if (s < 0) return `overdue ${ago(ms, now)}`;
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.round(s / 3600)} h`;
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
    b.className = action === 'drop' ? 'danger' : action === 'pause' ? 'ghost' : '';
    return b;
  }

  // ---- rendering ----

  function render(state) {
    const q = state.queue;
    queue = q;
    const last = (points) => (points.length ? points[points.length - 1][1] : null);
    $('queue-name').textContent = q.queue;
    renderPause(q);
    if (books) renderBooks();
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

  // deductions paused: a banner across the page, and its Resume
  function renderPause(q) {
    const paused = q.deductions_paused;
    $('paused-banner').hidden = !paused;
    $('deductions-pause').hidden = !!paused;
    if (paused) {
      const since = new Date(paused.since);
      const when = since.toDateString() === new Date().toDateString() ? time(paused.since) : since.toLocaleString('en-GB');
      $('paused-text').textContent =
        `Deductions paused since ${when} by ${paused.by}: workers claim nothing; ${fmt(q.pending)} pending wait`;
    }
  }

  function renderDead(dead) {
    deadSelected = dead.total;
    $('dead-summary').textContent = dead.reason
      ? `${fmt(dead.total)} whose reason holds “${dead.reason}”${dead.total > dead.letters.length ? ` · the newest ${fmt(dead.letters.length)} shown` : ''}`
      : `${fmt(dead.total)} in all`;
    $('dead-requeue-all').disabled = !dead.total;
    $('dead-drop-all').disabled = !dead.total;
    fill(
      'dead',
      dead.letters,
      (d) => {
        const actions = document.createElement('span');
        if (d.event_id) actions.append(button('Requeue', 'requeue', d.event_id), button('Drop', 'drop', d.event_id));
        return [
          cell(d.event_id || d.entry, 'id'), cell(d.product_id), cell(d.qty, 'n'), cell(d.attempts, 'n'),
          dated(d.failed_at), cell(d.reason, 'reason'), cell(actions, 'actions'),
        ];
      },
      (d) => (d.event_id ? { id: d.event_id } : {}),
    );
    const end = Math.min(dead.total, dead.offset + dead.letters.length);
    $('dead-range').textContent = dead.total ? `${fmt(dead.offset + 1)}–${fmt(end)} of ${fmt(dead.total)}` : '';
    $('dead-prev').disabled = dead.offset === 0;
    $('dead-next').disabled = end >= dead.total || !!dead.reason;
  }

  // the reasons of the dead letters, with their counts, as the filter's choices
  function renderReasons(r) {
    const select = $('dead-reason');
    const all = r.reasons.reduce((n, x) => n + x.count, 0);
    const choices = [['', `every reason (${fmt(all)}${r.complete ? '' : '+'})`]];
    for (const x of r.reasons) choices.push([x.reason, `${x.reason} (${fmt(x.count)})`]);
    // the filter chosen stays a choice while its letters are gone, until another is chosen
    if (deadReason && !r.reasons.some((x) => x.reason === deadReason)) choices.push([deadReason, `${deadReason} (0)`]);
    const key = JSON.stringify(choices);
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    select.replaceChildren(
      ...choices.map(([value, label]) => {
        const option = document.createElement('option');
        option.value = value;
        option.textContent = label;
        return option;
      }),
    );
    select.value = deadReason;
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

  // a product's refusals, by kind, the kinds that ever refused it
  function refusalsOf(counts) {
    const span = document.createElement('span');
    const parts = REFUSALS.filter(([kind]) => counts && counts[kind] > 0);
    if (!parts.length) span.textContent = '–';
    parts.forEach(([kind, label], i) => {
      if (i) span.append(' · ');
      const part = document.createElement('span');
      part.textContent = `${label} ${fmt(counts[kind])}`;
      if (kind === 'sold_out') part.className = 'soldout';
      span.append(part);
    });
    return span;
  }

  function renderBooks() {
    const b = books;
    const checked = `checked ${time(b.checked_at)} in ${fmt(b.took_ms)} ms`;
    $('books-summary').textContent = b.consistent
      ? `consistent · ${fmt(b.products_total)} products · ${checked}`
      : `${fmt(b.drifting_total)} of ${fmt(b.products_total)} products drifting · ${checked}`;
    $('books-state').textContent = b.consistent ? 'consistent' : `${fmt(b.drifting_total)} drifting`;
    $('books-state').parentElement.classList.toggle('alarm', !b.consistent);
    const paused = new Map(((queue && queue.paused_products) || []).map((p) => [p.product_id, p.since]));
    const refusals = (queue && queue.refusals) || {};
    // the rows are rebuilt when the books or the pauses change; the refusals, which move with
    // every shopper turned away, are written into them in place
    const rows = b.products.map((p) => ({ ...p, paused: paused.get(p.product_id) || null }));
    fill(
      'books',
      rows,
      (p) => {
        const sale = document.createElement('span');
        if (p.paused) {
          const badged = badge('paused', 'paused');
          badged.title = `since ${new Date(p.paused).toLocaleString('en-GB')}`;
          sale.append(badged, ' ');
        } else if (p.redis === 0) {
          sale.append(badge('sold out', 'soldout'), ' ');
        }
        sale.append(p.paused ? button('Resume', 'resume', p.product_id) : button('Pause', 'pause', p.product_id));
        const refused = cell('', 'refused');
        refused.dataset.refused = p.product_id;
        return [
          cell(p.product_id), redisCell(p), cell(fmt(p.mysql), 'n'), cell(fmt(p.in_flight), 'n'),
          cell(fmt(p.expected_redis), 'n'), cell(fmt(p.delta), p.delta ? 'n drift' : 'n'), refused,
          cell(sale, 'actions'),
        ];
      },
      (p) => ({ product: p.product_id }),
    );
    for (const td of $('books').querySelectorAll('td[data-refused]')) {
      const counts = refusals[td.dataset.refused];
      const key = JSON.stringify(counts || null);
      if (td.dataset.key !== key) {
        td.dataset.key = key;
        td.replaceChildren(refusalsOf(counts));
      }
    }
    // refusals of products never stocked have no row: said below the table
    const shown = new Set(b.products.map((p) => String(p.product_id)));
    const unknown = Object.entries(refusals)
      .filter(([id, c]) => !shown.has(id) && c.unknown_product > 0)
      .sort((x, y) => y[1].unknown_product - x[1].unknown_product);
    $('books-unknown').hidden = !unknown.length;
    $('books-unknown').textContent = unknown.length
      ? `refused as unknown products: ${unknown.slice(0, 10).map(([id, c]) => `product ${id} ×${fmt(c.unknown_product)}`).join(', ')}${unknown.length > 10 ? ', …' : ''}`
      : '';
    const end = b.offset + b.products.length;
    $('books-range').textContent = b.products_total ? `${fmt(b.offset + 1)}–${fmt(end)} of ${fmt(b.products_total)}` : '';
    $('books-prev').disabled = b.offset === 0;
    $('books-next').disabled = end >= b.products_total;
  }

  // ---- the holds, the audit, the dead letters' reasons: every few seconds ----

  async function pollSlow() {
    const read = (path) => fetch(path).then((r) => (r.ok ? r.json() : null)).catch(() => null);
    const [h, audit, reasons] = await Promise.all([
      read(`/admin/api/holds?limit=${HOLDS_SHOWN}`),
      read(`/admin/api/audit?count=${AUDIT_SHOWN}`),
      read('/admin/api/dead/reasons'),
    ]);
    if (h) {
      holds = h;
      renderHolds();
    }
    if (audit) {
      fill('audit', audit.audit, (a) => [
        dated(a.at), cell(a.who, 'who'), cell(a.action), cell(a.detail, 'reason'),
      ]);
      for (const td of $('audit').querySelectorAll('td.who')) td.title = td.textContent;
    }
    if (reasons) renderReasons(reasons);
  }

  function renderHolds() {
    const h = holds;
    $('holds-summary').textContent = h.total
      ? `${fmt(h.total)} held unpaid${h.total > h.holds.length ? ` · the ${fmt(h.holds.length)} due first` : ''}`
      : 'none held';
    fill(
      'holds',
      h.holds.map((x) => ({ ...x, left: left(x.deadline, h.at) })),
      (x) => [
        cell(x.event_id, 'id'), cell(x.product_id), cell(x.qty, 'n'), cell(x.buyer), dated(x.deadline),
        cell(x.left, x.deadline < h.at ? 'n overdue' : 'n'),
      ],
      (x) => ({ id: x.event_id }),
    );
  }

  // ---- search ----

  function table(headings, rows, toCells) {
    const t = document.createElement('table');
    const head = t.createTHead().insertRow();
    for (const h of headings) {
      const th = document.createElement('th');
      th.textContent = h;
      head.append(th);
    }
    const body = t.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      tr.append(...toCells(row));
    }
    return t;
  }

  function paragraph(...parts) {
    const p = document.createElement('p');
    p.append(...parts);
    return p;
  }

  // an event id that searches itself when clicked
  function eventLink(id) {
    if (!id) return cell('–');
    const a = document.createElement('a');
    a.href = '#';
    a.className = 'search-link';
    a.dataset.searchEvent = id;
    a.textContent = id;
    return cell(a, 'id');
  }

  const fieldOf = (o, name) => (o.fields && o.fields[name] !== undefined ? o.fields[name] : null);
  const outcomeAt = (o) => Number(fieldOf(o, 'at')) || Number(String(o.id).split('-')[0]) || null;

  function renderFound(kind, text, found) {
    const out = $('search-result');
    out.replaceChildren();
    if (kind === 'event_id') {
      const s = found.status;
      if (!s) {
        out.append(paragraph(`${text}: unknown to Redis and MySQL.`));
      } else {
        const buyer = s.buyer ? ` · buyer ${s.buyer}` : '';
        const version = s.version ? ` · version ${s.version}` : '';
        out.append(
          paragraph(badge(s.state, s.state), ` ${s.event_id} · product ${s.product_id} × ${fmt(s.qty)}${buyer}${version}`),
          paragraph(`where: ${found.place}`),
        );
      }
      out.append(
        paragraph(`${fmt(found.outcomes.length)} outcome(s) among the newest ${fmt(found.scanned)} read`),
        table(['at', 'state', 'version', 'reason'], found.outcomes, (o) => [
          dated(outcomeAt(o)), cell(badge(fieldOf(o, 'state') || '?', fieldOf(o, 'state') || '')),
          cell(fieldOf(o, 'version'), 'n'), cell(fieldOf(o, 'reason'), 'reason'),
        ]),
      );
      out.dataset.found = s ? s.state : 'unknown';
      return;
    }
    const complete = found.complete ? '' : ` (searched the newest ${fmt(found.scanned)} outcomes)`;
    out.append(paragraph(`buyer ${text}: ${fmt(found.outcomes.length)} outcome(s), ${fmt(found.held.length)} held${complete}`));
    const now = Date.now();
    if (found.held.length) {
      out.append(
        table(['held', 'deadline', 'left'], found.held, (x) => [
          eventLink(x.event_id), dated(x.deadline), cell(left(x.deadline, now), 'n'),
        ]),
      );
    }
    out.append(
      table(['at', 'event', 'state', 'product', 'qty', 'reason'], found.outcomes, (o) => [
        dated(outcomeAt(o)), eventLink(fieldOf(o, 'event_id')),
        cell(badge(fieldOf(o, 'state') || '?', fieldOf(o, 'state') || '')), cell(fieldOf(o, 'product_id')),
        cell(fieldOf(o, 'qty'), 'n'), cell(fieldOf(o, 'reason'), 'reason'),
      ]),
    );
    out.dataset.found = 'buyer';
  }

  async function search(kind, text) {
    const out = $('search-result');
    out.dataset.found = '';
    out.replaceChildren(paragraph('searching…'));
    const response = await fetch(`/admin/api/search?${kind}=${encodeURIComponent(text)}`).catch(() => null);
    if (response && response.ok) {
      renderFound(kind, text, await response.json());
    } else {
      const why = response ? await errorOf(response) : 'the server did not answer';
      out.replaceChildren(paragraph(`no answer: ${why}`));
      out.dataset.found = 'error';
    }
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

  // an action: the session's CSRF token with it, and a JSON body when there is one
  async function post(path, body) {
    const headers = { 'X-CSRF-Token': csrf };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const init = { method: 'POST', headers, body: body === undefined ? undefined : JSON.stringify(body) };
    return fetch(path, init).catch(() => null);
  }

  // after an action: everything it may have changed, at once
  function refresh() {
    poll();
    pollSlow();
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
    refresh();
  }

  // every dead letter of the filter (or all of them): requeued, or dropped
  async function actOnAll(action, b) {
    const n = deadSelected;
    const which = deadReason ? `whose reason holds “${deadReason}”` : 'of every reason';
    const letters = n === 1 ? 'the dead letter' : `all ${fmt(n)} dead letters`;
    const asked =
      action === 'drop'
        ? `Drop ${letters} ${which}? Their stock goes back on sale and their orders are cancelled.`
        : `Requeue ${letters} ${which}? They go back to pending, to be deducted again.`;
    if (!confirm(asked)) return;
    b.disabled = true;
    const response = await post(`/admin/api/dead/${action}-all`, deadReason ? { reason: deadReason } : {});
    if (response && response.ok) {
      const done = await response.json();
      toast(
        action === 'drop'
          ? `dropped ${fmt(done.dropped)}, ${fmt(done.given_back)} units back on sale`
          : `requeued ${fmt(done.requeued)}${done.left ? `, ${fmt(done.left)} left (not events)` : ''}`,
        'ok',
      );
    } else {
      toast(`${action} all: ${response ? await errorOf(response) : 'the server did not answer'}`, 'bad');
    }
    b.disabled = false;
    refresh();
  }

  // a product's sale paused (asked first) or resumed
  async function lever(action, product, b) {
    if (action === 'pause' && !confirm(`Pause the sale of product ${product}? Its reservations are refused until it is resumed; its holds, confirms and deductions go on.`)) return;
    b.disabled = true;
    const response = await post(`/admin/api/products/${encodeURIComponent(product)}/${action}`);
    if (response && response.ok) {
      const done = await response.json();
      const now = action === 'pause' ? 'paused' : 'selling again';
      toast(done.changed ? `product ${product}: ${now}` : `product ${product}: ${action === 'pause' ? 'paused already' : 'was not paused'}`, 'ok');
    } else {
      toast(`${action} product ${product}: ${response ? await errorOf(response) : 'the server did not answer'}`, 'bad');
      b.disabled = false;
    }
    await poll();
    pollBooks();
    pollSlow();
  }

  // every worker's claims paused (asked first) or resumed
  async function deductions(action, b) {
    if (action === 'pause' && !confirm('Pause deductions? Every worker stops claiming within a second; reservations go on and wait in pending until they are resumed.')) return;
    b.disabled = true;
    const response = await post(`/admin/api/deductions/${action}`);
    if (response && response.ok) {
      toast(action === 'pause' ? 'deductions paused' : 'deductions resumed', 'ok');
    } else {
      toast(`${action} deductions: ${response ? await errorOf(response) : 'the server did not answer'}`, 'bad');
    }
    b.disabled = false;
    refresh();
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
  $('dead-reason').addEventListener('change', (event) => {
    deadReason = event.target.value;
    deadOffset = 0;
    poll();
  });
  $('dead-requeue-all').addEventListener('click', (event) => actOnAll('requeue', event.currentTarget));
  $('dead-drop-all').addEventListener('click', (event) => actOnAll('drop', event.currentTarget));
  $('books').addEventListener('click', (event) => {
    const b = event.target.closest('button[data-action]');
    if (b) lever(b.dataset.action, b.dataset.id, b);
  });
  $('deductions-pause').addEventListener('click', (event) => deductions('pause', event.currentTarget));
  $('deductions-resume').addEventListener('click', (event) => deductions('resume', event.currentTarget));
  $('search').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('search-text').value.trim();
    if (text) search($('search-kind').value, text);
  });
  $('search-kind').addEventListener('change', (event) => {
    $('search-text').placeholder = event.target.value === 'buyer' ? 'b-7' : 'order-1001';
  });
  $('search-result').addEventListener('click', (event) => {
    const a = event.target.closest('a[data-search-event]');
    if (!a) return;
    event.preventDefault();
    $('search-kind').value = 'event_id';
    $('search-text').value = a.dataset.searchEvent;
    search('event_id', a.dataset.searchEvent);
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

  loadHistory().then(poll);
  pollBooks();
  pollSlow();
  setInterval(pollBooks, BOOKS_MS);
  setInterval(pollSlow, SLOW_MS);
})();
