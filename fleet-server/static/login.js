// Sign-in form: POST /api/auth/login as JSON; the server sets the HttpOnly session cookie and we
// go to the console. Errors (wrong password, too many attempts) are the server's own words.
"use strict";

(function () {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const button = document.getElementById("sign-in");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      const response = await fetch("/api/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({
          username: document.getElementById("username").value,
          password: document.getElementById("password").value,
        }),
      });
      if (response.ok) {
        window.location.assign("/");
        return;
      }
      let detail = `sign-in failed (${response.status})`;
      try {
        detail = (await response.json()).detail || detail;
      } catch (err) {
        // not JSON: keep the status line
      }
      error.textContent = detail;
    } catch (err) {
      error.textContent = "the server cannot be reached";
    } finally {
      button.disabled = false;
    }
  });
})();
