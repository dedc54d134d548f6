// Polewatch console, shared by every page: the API helper, who is signed in, navigation.
//
// Pages are sections of index.html (#live, #alerts, #fleet, #config), switched by the URL's hash;
// each page's script registers itself with PW.page(name, {show}). What the signed-in role may do
// comes from GET /api/auth/me (`permissions`): elements marked data-needs="<permission>" are
// hidden from roles without it. The server checks every request anyway; this only keeps buttons
// that would be refused off the screen.
"use strict";

const PW = (function () {
  const pages = new Map(); // name -> {show}
  let me = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleTimeString([], { hour12: false });
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleString([], { hour12: false });
  }

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }

  // A request to our API. Resolves to the JSON answer; rejects with an Error whose message is the
  // server's own `detail` ("alert 3 is resolved: acknowledge needs it to be new"), so pages can
  // show it as it is. A 401 means the session ended: back to the sign-in page.
  async function api(method, url, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new Error("the server cannot be reached");
    }
    if (response.status === 401) {
      window.location.assign("/login");
      const error = new Error("your session has ended: sign in again");
      error.status = 401;
      throw error;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      // not JSON: keep the status line below
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : `${method} ${url}: HTTP ${response.status}`;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // `path` with its query parameters, leaving out empty ones.
  function url(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  function showError(id, err) {
    const node = $(id);
    node.textContent = err ? String(err.message || err) : "";
  }

  function can(permission) {
    return Boolean(me && me.permissions && me.permissions.includes(permission));
  }

  function applyPermissions(root) {
    for (const node of (root || document).querySelectorAll("[data-needs]")) node.hidden = !can(node.dataset.needs);
  }

  // Who is signed in (null after a redirect to /login; {} when the server cannot be reached).
  async function whoami() {
    try {
      me = await api("GET", "/api/auth/me");
    } catch (err) {
      return err.status === 401 ? null : {};
    }
    $("whoami").textContent = `${me.name} (${me.role})`;
    applyPermissions();
    return me;
  }

  function page(name, handlers) {
    pages.set(name, handlers);
  }

  function route() {
    let name = window.location.hash.replace(/^#/, "") || "live";
    const link = document.querySelector(`.nav a[data-page="${name}"]`);
    if (!pages.has(name) && name !== "live") name = "live";
    if (link && link.hidden) name = "live"; // a page this role cannot use
    for (const section of document.querySelectorAll("main.page")) section.hidden = section.id !== `page-${name}`;
    for (const a of document.querySelectorAll(".nav a")) a.classList.toggle("active", a.dataset.page === name);
    const handlers = pages.get(name);
    if (handlers && handlers.show) handlers.show();
  }

  const ready = whoami();

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-out").addEventListener("click", async () => {
      try {
        await api("POST", "/api/auth/logout");
      } catch (err) {
        // signed out or not, the sign-in page is next
      } finally {
        window.location.assign("/login");
      }
    });
    ready.then(() => {
      window.addEventListener("hashchange", route);
      route();
    });
  });

  return { $, el, clock, when, ago, api, url, showError, can, applyPermissions, whoami, page, ready, me: () => me };
})();
