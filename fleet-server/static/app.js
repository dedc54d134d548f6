// Polewatch console, the "Live" page: device list + live detection feed, pushed over one EventSource.
//
// The server sends, on every (re)connection, a `devices` snapshot, then `device` changes and
// `detection`s as they are stored. EventSource reconnects by itself and sends Last-Event-ID, so
// the server replays any detection missed while the link was down. If the browser gives up
// (the server answered with an error), we open a new stream ourselves with ?after=<last id>.
// Nothing here polls the server; the only timer re-renders "12 s ago" labels locally.
"use strict";

(function () {
  const MAX_ROWS = 200;
  const BACKLOG = 50;
  const RETRY_MS = 3000;

  const devices = new Map(); // device_id -> device JSON from the API
  const shown = new Set(); // detection ids already in the feed
  let lastId = null; // newest detection id received
  let source = null;

  const { $, el, clock, ago } = PW;
  const deviceRows = $("device-rows");
  const feedRows = $("feed-rows");

  function pct(value) {
    return typeof value === "number" ? `${value.toFixed(0)}%` : "—";
  }

  function setLink(state, text) {
    const link = $("link");
    link.className = `link ${state}`;
    link.textContent = text;
  }

  // --- devices ---------------------------------------------------------------------------------

  function deviceRow(d) {
    const tr = el("tr", d.online ? "online" : "offline");
    tr.dataset.deviceId = d.device_id;

    tr.append(el("td", "device-id", d.device_id));

    const state = el("td");
    state.append(el("span", `badge ${d.online ? "online" : "offline"}`, d.online ? "online" : "offline"));
    if (!d.online && d.presence_reason) state.append(el("span", "reason", d.presence_reason));
    tr.append(state);

    const seen = el("td", "last-seen", ago(d.last_seen));
    seen.dataset.time = d.last_seen;
    seen.title = d.last_seen ? new Date(d.last_seen).toLocaleString() : "";
    tr.append(seen);

    const h = d.last_health;
    const cpu = el("td", "cpu num", h ? pct(h.cpu_percent) : "—");
    if (h && h.cpu_percent >= 90) cpu.classList.add("high");
    const mem = el("td", "mem num", h ? pct(h.memory_percent) : "—");
    if (h && h.memory_percent >= 90) mem.classList.add("high");
    tr.append(cpu, mem);

    const camCell = el("td");
    const cams = el("div", "cams");
    if (h && h.cameras && h.cameras.length) {
      for (const c of h.cameras) {
        const text = c.connected ? `${c.camera_id} ${Number(c.fps).toFixed(1)} fps` : `${c.camera_id} down`;
        cams.append(el("span", c.connected ? "cam" : "cam down", text));
      }
    } else {
      cams.append(el("span", "muted", "—"));
    }
    camCell.append(cams);
    tr.append(camCell);
    return tr;
  }

  function renderDevices() {
    const list = [...devices.values()].sort((a, b) => a.device_id.localeCompare(b.device_id));
    deviceRows.replaceChildren(...list.map(deviceRow));
    const online = list.filter((d) => d.online).length;
    $("device-count").textContent = `${online} of ${list.length} online`;
    $("no-devices").hidden = list.length > 0;
  }

  // --- detections ------------------------------------------------------------------------------

  function addDetection(ev, fresh) {
    if (shown.has(ev.id)) return;
    shown.add(ev.id);
    if (lastId === null || ev.id > lastId) lastId = ev.id;

    const tr = el("tr", fresh ? "fresh" : "");
    tr.dataset.eventId = String(ev.id);
    const time = el("td", "time", clock(ev.frame_time));
    time.title = `frame ${ev.frame_time}\nreceived ${ev.received_at}`;
    tr.append(time, el("td", "device", ev.device_id), el("td", "camera", ev.camera_id));
    const label = el("td");
    label.append(el("span", "label", ev.label));
    if (ev.phase && ev.phase !== "start") label.append(el("span", "phase", ev.phase));
    tr.append(label, el("td", "score num", `${Math.round(ev.score * 100)}%`));
    feedRows.prepend(tr);

    while (feedRows.rows.length > MAX_ROWS) {
      const old = feedRows.rows[feedRows.rows.length - 1];
      shown.delete(Number(old.dataset.eventId));
      old.remove();
    }
    $("no-events").hidden = true;

    const d = devices.get(ev.device_id);
    if (d && (!d.last_seen || ev.received_at > d.last_seen)) {
      d.last_seen = ev.received_at;
      const cell = deviceRows.querySelector(`tr[data-device-id="${CSS.escape(ev.device_id)}"] .last-seen`);
      if (cell) {
        cell.dataset.time = d.last_seen;
        cell.textContent = ago(d.last_seen);
      }
    }
  }

  // --- the stream ------------------------------------------------------------------------------

  function connect() {
    const url = lastId === null ? `/api/stream?backlog=${BACKLOG}` : `/api/stream?after=${lastId}`;
    source = new EventSource(url);
    let initial = true;

    source.addEventListener("open", () => setLink("live", "live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setLink("down", "disconnected — retrying");
        // The stream is refused when the session has ended (401): then sign in again.
        PW.whoami().then((me) => { if (me) setTimeout(connect, RETRY_MS); });
      } else {
        setLink("connecting", "reconnecting…");
      }
    });
    source.addEventListener("devices", (e) => {
      devices.clear();
      for (const d of JSON.parse(e.data)) devices.set(d.device_id, d);
      renderDevices();
    });
    source.addEventListener("device", (e) => {
      const d = JSON.parse(e.data);
      devices.set(d.device_id, d);
      renderDevices();
    });
    source.addEventListener("detection", (e) => {
      // The first batch after connecting is backlog/replay: show it without the highlight.
      addDetection(JSON.parse(e.data), !initial);
    });
    // Anything after the first quiet moment is live.
    setTimeout(() => { initial = false; }, 1000);
  }

  setInterval(() => {
    for (const cell of deviceRows.querySelectorAll(".last-seen")) cell.textContent = ago(cell.dataset.time);
  }, 5000);

  connect();
})();
