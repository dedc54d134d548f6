// Polewatch console, the "Fleet" page: the registry's health roll-ups and its devices.
//
// The fleet roll-up (devices ok/degraded/offline/never seen, cameras up/degraded/down and the blind
// spots: cameras not up), one roll-up per site, the registered devices a page at a time (keyset
// cursors: a stack of the cursors that led here makes "Previous"), and one device's detail: its
// health, its configuration (desired/applied version, drift, last refusal) and its delivery
// accounting (what arrived, what the box gave up, the gaps). Read when the page is shown or
// refreshed; nothing here polls.
"use strict";

(function () {
  const PAGE = 20;
  const { $, el, when, ago, api, url, showError } = PW;
  const cursors = [null]; // cursors[i]: the cursor of page i of the device list
  let pageIndex = 0;
  let nextCursor = null;
  let selected = null;

  function badge(kind, value, text) {
    return el("span", `badge ${kind}-${value}`, text || value.replace("_", " "));
  }

  function card(name, value, tone) {
    const node = el("div", `card ${value && tone ? tone : ""}`);
    node.dataset.name = name;
    node.append(el("div", "value", value), el("div", "name", name));
    return node;
  }

  function facts(id, pairs) {
    const list = $(id);
    list.replaceChildren();
    for (const [name, value] of pairs) {
      const dd = el("dd");
      dd.dataset.fact = name;
      if (value instanceof Node) dd.append(value);
      else dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
      list.append(el("dt", "", name), dd);
    }
  }

  // --- roll-ups ----------------------------------------------------------------------------------

  async function loadRollup() {
    const r = await api("GET", "/api/fleet/health");
    const d = r.devices;
    const c = r.cameras;
    $("fleet-rollup").replaceChildren(
      card("devices online", d.ok + d.degraded, "good"), card("devices offline", d.offline, "bad"),
      card("devices degraded", d.degraded, "warn"), card("never seen", d.never_seen, "warn"),
      card("cameras up", c.up, "good"), card("cameras degraded", c.degraded, "warn"),
      card("cameras down", c.down, "bad"));
    $("blind-total").textContent = `${r.blind_spots_total} camera${r.blind_spots_total === 1 ? "" : "s"} not up`;
    $("blind-spots").replaceChildren(...r.blind_spots.map((s) => el("li", "", `${s.device_id} / ${s.camera_id}`)));
  }

  async function loadSites() {
    const sites = (await api("GET", url("/api/sites", { limit: 500 }))).items;
    const rollups = await Promise.all(sites.map((s) => api("GET", `/api/sites/${encodeURIComponent(s.site_id)}/health`)));
    $("site-rows").replaceChildren(...sites.map((s, i) => {
      const r = rollups[i];
      const tr = el("tr");
      tr.dataset.siteId = s.site_id;
      const name = el("td", "", s.name);
      name.title = s.site_id;
      tr.append(name, el("td", "", s.district || ""));
      for (const n of [r.devices.ok, r.devices.degraded, r.devices.offline, r.devices.never_seen,
        r.cameras.up, r.cameras.degraded, r.cameras.down]) tr.append(el("td", "num", n));
      return tr;
    }));
    const filter = $("device-site");
    const keep = filter.value;
    filter.replaceChildren(new Option("all", ""), ...sites.map((s) => new Option(s.name, s.site_id)));
    filter.value = keep;
  }

  // --- devices -----------------------------------------------------------------------------------

  function deviceRow(d) {
    const tr = el("tr", d.device_id === selected ? "selected" : "");
    tr.dataset.deviceId = d.device_id;
    const cams = el("td");
    const box = el("div", "cams");
    for (const [camera, state] of Object.entries(d.health.cameras)) box.append(badge("cam", state, `${camera} ${state}`));
    cams.append(box);
    const state = el("td");
    state.append(badge("state", d.health.state));
    const seen = el("td", "", ago(d.health.last_seen));
    seen.title = when(d.health.last_seen);
    tr.append(el("td", "device-id", d.device_id), el("td", "", d.pole_id || "not on a pole"), state, cams,
      el("td", "", d.agent_version || "—"), seen);
    tr.addEventListener("click", () => showDevice(d.device_id));
    return tr;
  }

  async function loadDevices() {
    const page = await api("GET", url("/api/registry/devices", {
      limit: PAGE, cursor: cursors[pageIndex], site_id: $("device-site").value,
    }));
    $("registry-rows").replaceChildren(...page.items.map(deviceRow));
    $("no-registry").hidden = page.items.length > 0;
    nextCursor = page.next;
    $("devices-prev").disabled = pageIndex === 0;
    $("devices-next").disabled = !nextCursor;
    $("devices-page").textContent = `page ${pageIndex + 1}`;
  }

  async function showDevice(id) {
    selected = id;
    for (const tr of $("registry-rows").rows) tr.classList.toggle("selected", tr.dataset.deviceId === id);
    $("device-detail").hidden = false;
    $("device-title").textContent = id;
    showError("device-error", null);
    const quiet = (promise) => promise.catch((err) => (err.status === 404 ? null : Promise.reject(err)));
    try {
      const [device, config, delivery] = await Promise.all([
        api("GET", `/api/registry/devices/${encodeURIComponent(id)}`),
        quiet(api("GET", `/api/config/devices/${encodeURIComponent(id)}`)),
        quiet(api("GET", url(`/api/devices/${encodeURIComponent(id)}/delivery`, { limit: 20 }))),
      ]);
      if (id !== selected) return;
      const h = device.health;
      facts("device-health", [
        ["state", badge("state", h.state)], ["online", h.online ? "yes" : "no"], ["last seen", when(h.last_seen)],
        ["cameras", Object.entries(h.cameras).map(([c, s]) => `${c}: ${s}`).join(", ") || "none expected"],
        ["pole", device.pole_id], ["hardware", device.hardware], ["agent", device.agent_version],
        ["model", device.model_version], ["tags", device.tags.join(", ")],
      ]);
      facts("device-config", config ? [
        ["desired version", config.desired_version], ["applied version", config.applied_version],
        ["drift", badge("drift", config.drift)], ["group", config.group],
        ["last refusal", config.refusal_reason
          ? `version ${config.refusal_version}: ${config.refusal_field ? config.refusal_field + ": " : ""}` +
            `${config.refusal_reason} (${when(config.refusal_at)})`
          : null],
        ["publish error", config.publish_error],
      ] : [["desired version", "none: the box runs its own file"]]);
      if (delivery) {
        facts("device-delivery", [
          ["received", delivery.received], ["in flight", delivery.in_flight], ["given up", delivery.given_up],
          ["sequence", delivery.first_seq === null ? null : `${delivery.first_seq} … ${delivery.highest_seq}`],
          ["clock skew", delivery.clock ? `${delivery.clock.skew_s.toFixed(1)} s${delivery.clock.flagged ? " (flagged)" : ""}` : null],
        ]);
        $("device-gaps").replaceChildren(...delivery.gaps.map((g) => el("li", "",
          `${g.first}–${g.last}: ${g.status === "given_up" ? `given up (${g.priority || "?"}, ${g.reason})` : "in flight"}`)));
      } else {
        facts("device-delivery", [["received", "no message stored yet"]]);
        $("device-gaps").replaceChildren();
      }
    } catch (err) {
      showError("device-error", err);
    }
  }

  async function show() {
    showError("fleet-error", null);
    try {
      await Promise.all([loadRollup(), loadSites()]);
      await loadDevices();
      if (selected) await showDevice(selected);
    } catch (err) {
      showError("fleet-error", err);
    }
  }

  async function turn(step) {
    if (step > 0 && !nextCursor) return;
    if (step > 0) cursors[pageIndex + 1] = nextCursor;
    pageIndex = Math.max(0, pageIndex + step);
    try {
      await loadDevices();
    } catch (err) {
      showError("fleet-error", err);
    }
  }

  $("fleet-refresh").addEventListener("click", show);
  $("devices-next").addEventListener("click", () => turn(1));
  $("devices-prev").addEventListener("click", () => turn(-1));
  $("device-site").addEventListener("change", () => {
    cursors.length = 1;
    pageIndex = 0;
    turn(0);
  });

  PW.page("fleet", { show });
})();
