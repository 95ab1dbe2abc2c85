// Guardian dashboard behaviour. Forms marked data-api send their fields as
// JSON to the API. When the API answers 401 reauth_required (creating or
// rotating a key needs a password confirmed in the last five minutes), the
// password prompt opens; once /auth/reauth accepts the password, the
// original request is sent again by itself.
"use strict";

async function send(method, url, body) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp = await fetch(url, init);
  if (resp.status === 401) {
    const problem = await resp.clone().json().catch(() => ({}));
    if (problem.code === "reauth_required" && (await reauthenticate())) {
      resp = await fetch(url, init); // the replay
    }
  }
  return resp;
}

// reauthenticate shows the password prompt and resolves to true once the
// password was accepted, false if the user gave up.
function reauthenticate() {
  const dialog = document.getElementById("reauth");
  const form = dialog.querySelector("form");
  const error = dialog.querySelector(".error");
  error.textContent = "";
  form.reset();
  return new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.querySelector("[data-cancel]").removeEventListener("click", onCancel);
      dialog.close();
      resolve(ok);
    };
    const onCancel = (e) => { e.preventDefault(); done(false); };
    const onSubmit = async (e) => {
      e.preventDefault();
      const r = await fetch("/auth/reauth", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ password: form.password.value }),
      });
      if (r.status === 204) {
        done(true);
      } else {
        const p = await r.json().catch(() => ({}));
        error.textContent = p.detail || "The password was not accepted.";
      }
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    dialog.querySelector("[data-cancel]").addEventListener("click", onCancel);
    dialog.showModal();
    form.password.focus();
  });
}

function fields(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name || el.type === "submit") continue;
    if (el.value !== "") out[el.name] = el.type === "number" ? Number(el.value) : el.value;
  }
  return out;
}

document.addEventListener("submit", async (e) => {
  const form = e.target;
  if (!form.matches("form[data-api]")) return;
  e.preventDefault();
  const status = document.getElementById("status");
  status.textContent = "";
  const method = form.dataset.method || "POST";
  const resp = await send(method, form.getAttribute("action"), method === "DELETE" ? undefined : fields(form));
  if (resp.status === 201) {
    const created = await resp.json();
    if (created.key) {
      const out = document.getElementById("new-key");
      out.textContent = created.key;
      out.hidden = false;
      document.getElementById("new-key-note").hidden = false;
      return; // shown once: the list refreshes on the next visit
    }
  }
  if (resp.ok) {
    location.reload();
    return;
  }
  const p = await resp.json().catch(() => ({}));
  status.textContent = p.detail || "The request failed (" + resp.status + ").";
});
