// Polewatch console, the "Configuration" page: one layer's document (fleet, a group or a device),
// previewed before it is applied, its versions, and rollback.
//
// Nothing is applied unseen: Apply is enabled only by a preview of exactly the text in the editor
// (which devices change and the diff of each, from POST /api/config/preview); editing the text
// again disables it. A rollback loads the old version's document and previews it the same way,
// then applies it with POST /api/config/rollback (a new version, nothing is edited). Below: every
// device's desired and applied version, drift and last refusal.
"use strict";

(function () {
  const { $, el, when, api, url, showError } = PW;
  let previewed = null; // {text, scope, target, rollback}: what the last preview was of
  let rollbackTo = null; // the version being rolled back to, while the editor shows it
  let devicesCursor = null;
  let opened = false; // the editor got the layer's current document once

  function layer() {
    const scope = $("config-scope").value;
    const target = scope === "fleet" ? null : $("config-target").value.trim();
    if (scope !== "fleet" && !target) throw new Error(`name the ${scope} whose layer this is`);
    return { scope, target };
  }

  function layerName({ scope, target }) {
    return scope === "fleet" ? "the fleet layer" : `the ${scope} layer ${target}`;
  }

  function show(value) {
    return value === null || value === undefined ? "not set" : JSON.stringify(value);
  }

  function setMode(text) {
    $("config-mode").textContent = text || "";
  }

  function invalidate() {
    previewed = null;
    $("config-apply").disabled = true;
  }

  // --- versions ----------------------------------------------------------------------------------

  async function loadVersions(intoEditor) {
    const which = layer();
    const page = await api("GET", url("/api/config/layers", { scope: which.scope, target: which.target, limit: 50 }));
    const newest = page.items[0] || null;
    $("version-rows").replaceChildren(...page.items.map((v) => versionRow(v, v === newest)));
    $("no-versions").hidden = page.items.length > 0;
    PW.applyPermissions($("version-rows"));
    if (intoEditor) {
      $("config-document").value = JSON.stringify(newest ? newest.document : {}, null, 2);
      rollbackTo = null;
      setMode(newest ? `editing ${layerName(which)}, now at version ${newest.version}` : `${layerName(which)} is empty`);
      invalidate();
    }
  }

  function versionRow(v, current) {
    const tr = el("tr");
    tr.dataset.version = String(v.version);
    const comment = v.comment || "";
    const origin = v.rolled_back_from ? ` (rollback to version ${v.rolled_back_from})` : "";
    const doc = el("td");
    doc.append(el("code", "", JSON.stringify(v.document)));
    const action = el("td");
    if (current) {
      action.append(el("span", "hint", "current"));
    } else {
      const back = el("button", "button", "Roll back to this");
      back.type = "button";
      back.dataset.needs = "config:write";
      back.addEventListener("click", () => startRollback(v));
      action.append(back);
    }
    tr.append(el("td", "num", v.version), el("td", "", when(v.created_at)), el("td", "", v.created_by.replace(/^user:/, "")),
      el("td", "", comment + origin), doc, action);
    return tr;
  }

  async function startRollback(v) {
    $("config-document").value = JSON.stringify(v.document, null, 2);
    rollbackTo = v.version;
    setMode(`rolling back to version ${v.version}: check the preview, then apply`);
    await preview();
  }

  // --- preview and apply -------------------------------------------------------------------------

  async function preview() {
    invalidate();
    showError("config-error", null);
    $("config-result").hidden = true;
    let which;
    let document;
    try {
      which = layer();
      document = JSON.parse($("config-document").value);
      if (document === null || typeof document !== "object" || Array.isArray(document)) {
        throw new Error("the document must be a JSON object ({...})");
      }
    } catch (err) {
      showError("config-error", err instanceof SyntaxError ? new Error(`the document is not JSON: ${err.message}`) : err);
      return;
    }
    try {
      const result = await api("POST", "/api/config/preview", { ...which, document });
      const rows = [];
      for (const d of result.devices) {
        for (const c of d.changes) {
          const tr = el("tr", "diff");
          tr.dataset.deviceId = d.device_id;
          const change = el("td");
          change.append(el("code", "path", c.path), " ", el("code", "before", show(c.before)), " → ",
            el("code", "after", show(c.after)));
          tr.append(el("td", "device-id", d.device_id), el("td", "", `${d.desired_version} → ${d.desired_version + 1}`),
            change);
          rows.push(tr);
        }
      }
      $("preview-rows").replaceChildren(...rows);
      const n = result.devices.length;
      $("preview-summary").textContent =
        `${n} device${n === 1 ? "" : "s"} would change, ${result.unchanged} unchanged`;
      $("config-preview-result").hidden = false;
      previewed = { text: $("config-document").value, ...which, document, rollback: rollbackTo };
      $("config-apply").disabled = false;
    } catch (err) {
      showError("config-error", err);
    }
  }

  async function apply() {
    if (!previewed || previewed.text !== $("config-document").value) return invalidate();
    const { scope, target, document, rollback } = previewed;
    const comment = $("config-comment").value.trim() || undefined;
    $("config-apply").disabled = true;
    showError("config-error", null);
    try {
      const result = rollback
        ? await api("POST", "/api/config/rollback", { scope, target, version: rollback, comment })
        : await api("POST", "/api/config/layers", { scope, target, document, comment });
      const devices = result.devices.map((d) => `${d.device_id} → version ${d.desired_version} (${d.drift})`);
      $("config-result").textContent =
        `Version ${result.layer.version} of ${layerName({ scope, target })} stored` +
        (rollback ? ` (rollback to version ${rollback})` : "") + ". " +
        (devices.length ? `New desired configuration: ${devices.join(", ")}.` : "No device's configuration changed.");
      $("config-result").hidden = false;
      $("config-comment").value = "";
      $("config-preview-result").hidden = true;
      invalidate();
      await Promise.all([loadVersions(true), loadDevices(true)]);
    } catch (err) {
      showError("config-error", err);
      $("config-apply").disabled = false;
    }
  }

  // --- devices: desired and applied ----------------------------------------------------------------

  async function loadDevices(fresh) {
    if (fresh) devicesCursor = null;
    const page = await api("GET", url("/api/config/devices", { limit: 50, cursor: devicesCursor }));
    const rows = page.items.map((d) => {
      const tr = el("tr");
      tr.dataset.deviceId = d.device_id;
      const drift = el("td");
      drift.append(el("span", `badge drift-${d.drift}`, d.drift.replace("_", " ")));
      const refusal = d.refusal_reason
        ? `version ${d.refusal_version}: ${d.refusal_field ? d.refusal_field + ": " : ""}${d.refusal_reason}`
        : "";
      tr.append(el("td", "device-id", d.device_id), el("td", "", d.group || ""), el("td", "num desired", d.desired_version),
        el("td", "num applied", d.applied_version === null ? "—" : d.applied_version), drift, el("td", "error-text", refusal));
      return tr;
    });
    if (fresh) $("config-device-rows").replaceChildren(...rows);
    else $("config-device-rows").append(...rows);
    devicesCursor = page.next;
    $("config-devices-more").hidden = !devicesCursor;
  }

  async function guarded(work) {
    showError("config-error", null);
    try {
      await work();
    } catch (err) {
      showError("config-error", err);
    }
  }

  $("config-scope").addEventListener("change", () => {
    $("config-target").disabled = $("config-scope").value === "fleet";
    if ($("config-scope").value === "fleet") guarded(() => loadVersions(true));
    else invalidate();
  });
  $("config-target").addEventListener("change", () => guarded(() => loadVersions(true)));
  $("config-load").addEventListener("click", () => guarded(() => loadVersions(true)));
  $("config-document").addEventListener("input", () => {
    invalidate();
    if (rollbackTo !== null) {
      rollbackTo = null;
      setMode("edited: this will be a new version, not a rollback");
    }
  });
  $("config-preview").addEventListener("click", preview);
  $("config-apply").addEventListener("click", apply);
  $("config-devices-more").addEventListener("click", () => guarded(() => loadDevices(false)));

  PW.page("config", {
    show: () => guarded(async () => {
      await Promise.all([loadVersions(!opened), loadDevices(true)]);
      opened = true;
    }),
  });
})();
