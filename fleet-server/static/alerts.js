// Polewatch console, the "Alerts" page: the command centre's alerts, live, with their lifecycle.
//
// One EventSource on /api/alerts/stream, open from sign-in to sign-out whatever page is shown
// (the nav badge counts new alerts). Every event is a step (a new alert, an acknowledgement, ...)
// with the alert as it is now; the SSE id is the step id. After each (re)connection the server
// replays the steps after Last-Event-ID and then sends `ready` ({after, replayed}): only then is
// the list loaded the first time (so nothing falls between list and stream), and after a
// reconnection the page says how many it caught up on and marks those rows. While the link is down
// the page says so: an operator's screen never silently misses an alert.
"use strict";

(function () {
  const RETRY_MS = 3000;
  const PAGE = 100;
  const OPEN = ["new", "acknowledged", "assigned"];
  const STATUS_TEXT = { new: "new", acknowledged: "acknowledged", assigned: "assigned", resolved: "resolved", false_alarm: "false alarm" };
  const STEP_TEXT = { created: "raised", acknowledge: "acknowledged", assign: "assigned", resolve: "resolved", false_alarm: "false alarm" };

  // The lifecycle steps, each call written out so that every request of the page can be checked
  // against the server's OpenAPI schema (tests/server/test_console_pages.py).
  const STEP = {
    acknowledge: (id, body) => PW.api("POST", `/api/alerts/${id}/acknowledge`, body),
    assign: (id, body) => PW.api("POST", `/api/alerts/${id}/assign`, body),
    resolve: (id, body) => PW.api("POST", `/api/alerts/${id}/resolve`, body),
    "false-alarm": (id, body) => PW.api("POST", `/api/alerts/${id}/false-alarm`, body),
  };

  const { $, el, clock, when, api, url, showError } = PW;
  const alerts = new Map(); // id -> alert JSON
  const agencies = new Map(); // id -> agency JSON
  const missed = new Set(); // alert ids that changed while the console was disconnected
  let lastStepId = null; // the resume cursor: the newest step id seen (or `ready`'s)
  let loaded = false; // the list was loaded (after the first `ready`)
  let olderCursor = null;
  let selected = null;
  let shown = null; // the alert whose detail is on screen (its agency choice survives a refresh)
  let lostAt = null; // when the stream dropped, while it is down

  function setLink(state, text) {
    const link = $("alert-link");
    link.className = `link ${state}`;
    link.textContent = text;
  }

  function notice(text) {
    $("alert-notice").textContent = text || "";
    $("alert-notice").hidden = !text;
  }

  function agencyName(id) {
    if (id === null || id === undefined) return "";
    const a = agencies.get(id);
    return a ? a.name : `agency ${id}`;
  }

  function who(actor) {
    return actor.startsWith("user:") ? actor.slice(5) : actor;
  }

  // Keep the newer of two copies of an alert (a stream event and a list page may cross).
  function put(alert) {
    const old = alerts.get(alert.id);
    if (!old || old.updated_at <= alert.updated_at) alerts.set(alert.id, alert);
  }

  // --- the list --------------------------------------------------------------------------------

  function matches(a) {
    const status = $("alert-status").value;
    if (status === "open" && !OPEN.includes(a.status)) return false;
    if (status && status !== "open" && a.status !== status) return false;
    const agency = $("alert-agency").value;
    if (agency === "none" && a.agency_id !== null) return false;
    if (agency && agency !== "none" && a.agency_id !== Number(agency)) return false;
    return true;
  }

  function row(a) {
    const tr = el("tr", `alert ${a.status}`);
    tr.dataset.alertId = String(a.id);
    if (a.id === selected) tr.classList.add("selected");
    const time = el("td", "time", clock(a.occurred_at));
    time.title = `occurred ${when(a.occurred_at)}\nreceived ${when(a.received_at)}`;
    const event = el("td", "event");
    event.append(el("span", "label", a.event_type));
    if (missed.has(a.id)) event.append(el("span", "missed-tag", "missed while disconnected"));
    const status = el("td");
    status.append(el("span", `badge status-${a.status}`, STATUS_TEXT[a.status] || a.status));
    tr.append(el("td", "num", a.id), time, el("td", "device", a.device_id), el("td", "camera", a.camera_id),
      event, status, el("td", "agency", agencyName(a.agency_id)));
    tr.addEventListener("click", () => select(a.id));
    return tr;
  }

  function render() {
    const list = [...alerts.values()].sort((x, y) => y.id - x.id);
    const shown = list.filter(matches);
    $("alert-rows").replaceChildren(...shown.map(row));
    $("no-alerts").hidden = shown.length > 0 || !loaded;
    $("alert-count").textContent = `${shown.length} shown of ${list.length} loaded`;
    const fresh = list.filter((a) => a.status === "new").length;
    $("alerts-new").textContent = fresh ? `${fresh} new` : "";
    $("alerts-new").hidden = fresh === 0;
    $("alerts-older").hidden = olderCursor === null;
  }

  async function loadPage(cursor) {
    try {
      const page = await api("GET", url("/api/alerts", { limit: PAGE, cursor }));
      for (const a of page.items) put(a);
      olderCursor = page.next;
      loaded = true;
      showError("alerts-error", null);
    } catch (err) {
      showError("alerts-error", err);
    }
    render();
  }

  async function loadAgencies() {
    try {
      let cursor = null;
      do {
        const page = await api("GET", url("/api/agencies", { limit: 500, cursor }));
        for (const a of page.items) agencies.set(a.id, a);
        cursor = page.next;
      } while (cursor);
    } catch (err) {
      showError("alerts-error", err);
    }
    const filter = $("alert-agency");
    const keep = filter.value;
    filter.replaceChildren(new Option("any", ""), new Option("not assigned", "none"));
    for (const a of agencies.values()) filter.append(new Option(a.name, String(a.id)));
    filter.value = keep;
  }

  // --- one alert ---------------------------------------------------------------------------------

  async function select(id) {
    selected = id;
    render();
    $("alert-detail").hidden = false;
    showError("alert-action-error", null);
    await showDetail();
  }

  async function showDetail() {
    if (selected === null) return;
    const id = selected;
    let detail;
    try {
      detail = await api("GET", `/api/alerts/${id}`);
    } catch (err) {
      showError("alert-action-error", err);
      return;
    }
    if (id !== selected) return;
    put(detail);
    $("alert-title").textContent = `Alert #${detail.id}: ${detail.event_type}`;
    $("alert-summary").textContent =
      `${detail.device_id} / ${detail.camera_id}, ${when(detail.occurred_at)}; ${STATUS_TEXT[detail.status]}` +
      (detail.routed_agency_id ? `; routed to ${agencyName(detail.routed_agency_id)}` : "; no routing rule matched");
    for (const button of $("alert-actions").querySelectorAll("button[data-step]")) {
      button.hidden = !button.dataset.from.split(" ").includes(detail.status);
    }
    const assign = $("assign-agency");
    assign.hidden = !OPEN.includes(detail.status);
    // A refresh of the same alert (after a refused step, or a step from the live stream) keeps the
    // agency the operator has chosen, or the next "assign" would silently go without it.
    const chosen = shown === id ? assign.value : "";
    shown = id;
    const routed = detail.routed_agency_id ? `routed: ${agencyName(detail.routed_agency_id)}` : "choose an agency";
    assign.replaceChildren(new Option(routed, ""));
    for (const a of agencies.values()) assign.append(new Option(a.name, String(a.id)));
    if ([...assign.options].some((o) => o.value === chosen)) assign.value = chosen;

    $("alert-timeline").replaceChildren(...detail.steps.map((s) => {
      const li = el("li", `step ${s.step}`);
      li.append(el("span", "when", when(s.at)), el("span", "what", STEP_TEXT[s.step] || s.step),
        el("span", "who", who(s.actor)));
      if (s.agency_id) li.append(el("span", "agency", `→ ${agencyName(s.agency_id)}`));
      if (s.note) li.append(el("span", "note", `“${s.note}”`));
      return li;
    }));
    $("alert-evidence").href = `/api/alerts/${id}/evidence`;
    try {
      const pictures = await api("GET", `/api/alerts/${id}/snapshots`);
      $("alert-snapshots").textContent = `${pictures.length} picture${pictures.length === 1 ? "" : "s"}`;
    } catch (err) {
      $("alert-snapshots").textContent = "";
    }
    render();
  }

  async function step(name) {
    const id = selected;
    const body = {};
    const note = $("alert-note").value.trim();
    if (note) body.note = note;
    if (name === "assign" && $("assign-agency").value) body.agency_id = Number($("assign-agency").value);
    showError("alert-action-error", null);
    try {
      const change = await STEP[name](id, body);
      put(change.alert);
      $("alert-note").value = "";
    } catch (err) {
      showError("alert-action-error", err);
    }
    await showDetail();
  }

  // --- the live stream ---------------------------------------------------------------------------

  function connect() {
    const source = new EventSource(url("/api/alerts/stream", { after: lastStepId }));
    let replaying = []; // steps received since this connection opened, before its `ready`

    source.addEventListener("open", () => {
      if (lostAt) setLink("connecting", "catching up…");
    });
    source.addEventListener("alert", (e) => {
      const change = JSON.parse(e.data);
      lastStepId = Math.max(lastStepId || 0, change.step.id);
      put(change.alert);
      if (replaying) {
        replaying.push(change);
        if (lostAt) missed.add(change.alert.id);
      }
      render();
      if (change.alert.id === selected) showDetail();
    });
    source.addEventListener("ready", (e) => {
      const info = JSON.parse(e.data);
      lastStepId = Math.max(lastStepId || 0, info.after);
      setLink("live", "live");
      if (!loaded) {
        loadPage(null);
      } else if (lostAt) {
        const created = replaying.filter((c) => c.step.step === "created").length;
        const updates = replaying.length - created;
        notice(`Reconnected at ${clock(new Date().toISOString())} after a break since ${clock(lostAt)}: ` +
          `caught up ${created} missed alert${created === 1 ? "" : "s"}` +
          (updates ? ` and ${updates} update${updates === 1 ? "" : "s"}` : "") + ".");
      }
      lostAt = null;
      replaying = null;
    });
    source.addEventListener("error", () => {
      if (!lostAt) lostAt = new Date().toISOString();
      replaying = [];
      setLink("down", "reconnecting…");
      notice(`Connection to the server lost at ${clock(lostAt)}: reconnecting… ` +
        "Alerts raised meanwhile will be shown when it is back.");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error answer, e.g. 401 or 503): check the session, try again.
        PW.whoami().then((me) => { if (me) setTimeout(connect, RETRY_MS); });
      }
    });
  }

  // --- dead letters ------------------------------------------------------------------------------

  async function loadDead() {
    try {
      const page = await api("GET", url("/api/alert-deliveries", { state: "dead", limit: 100 }));
      $("dead-rows").replaceChildren(...page.items.map(deadRow));
      $("no-dead").hidden = page.items.length > 0;
      showError("dead-error", null);
    } catch (err) {
      showError("dead-error", err);
    }
  }

  function deadRow(d) {
    const tr = el("tr");
    tr.dataset.deliveryId = String(d.id);
    const alertCell = el("td");
    const link = el("a", "", `#${d.alert_id}`);
    link.href = "#alerts";
    link.addEventListener("click", () => select(d.alert_id));
    alertCell.append(link);
    const retry = el("button", "button", "Retry");
    retry.type = "button";
    retry.dataset.needs = "alerts:handle";
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      try {
        await api("POST", `/api/alert-deliveries/${d.id}/retry`);
        showError("dead-error", null);
        notice(`Delivery #${d.id} of alert #${d.alert_id} to ${agencyName(d.agency_id)} is being sent again.`);
        await loadDead();
      } catch (err) {
        showError("dead-error", err);
        retry.disabled = false;
      }
    });
    const action = el("td");
    action.append(retry);
    tr.append(el("td", "num", d.id), alertCell, el("td", "", agencyName(d.agency_id)), el("td", "num", d.attempts),
      el("td", "error-text", d.last_error || (d.last_status ? `HTTP ${d.last_status}` : "")),
      el("td", "", when(d.updated_at)), action);
    PW.applyPermissions(tr);
    return tr;
  }

  // --- wiring ------------------------------------------------------------------------------------

  $("alert-status").addEventListener("change", render);
  $("alert-agency").addEventListener("change", render);
  $("alerts-older").addEventListener("click", () => loadPage(olderCursor));
  $("dead-refresh").addEventListener("click", loadDead);
  for (const button of $("alert-actions").querySelectorAll("button[data-step]")) {
    button.addEventListener("click", () => step(button.dataset.step));
  }

  // Agencies first: every list names them.
  const started = PW.ready.then(async () => {
    if (!PW.can("alerts:read")) return;
    await loadAgencies();
    connect();
  });
  PW.page("alerts", { show: () => started.then(loadDead) });
})();
