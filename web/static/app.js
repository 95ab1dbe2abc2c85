// Guardian dashboard behaviour. Forms marked data-api send their fields as
// JSON to the API. When the API answers 401 reauth_required (creating or
// rotating a key, changing second factors or ending another session needs
// a password confirmed
// in the last five minutes, and the second factor of a user who has one),
// the prompt opens: the password, then, if /auth/reauth asks for it
// (mfa_required), a code or a security key for /auth/reauth/mfa. Once
// accepted, the original request is sent again by itself. An account
// without a password (made by Google sign-in) confirms with Google
// instead, which leaves the page: the request is kept in sessionStorage
// and sent again once, when the page loads after the confirmation.
//
// WebAuthn: the server sends options as JSON with binary members in
// base64url; they are decoded for navigator.credentials and the answer is
// encoded back the same way (shared/mfa verifies it with go-webauthn).
"use strict";

const b64url = {
  decode(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  },
  encode(buf) {
    let bin = "";
    for (const b of new Uint8Array(buf)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
};

// webauthnGet asks an authenticator for an assertion and returns it as the
// JSON the server takes.
async function webauthnGet(options) {
  const pk = options.publicKey;
  pk.challenge = b64url.decode(pk.challenge);
  for (const c of pk.allowCredentials || []) c.id = b64url.decode(c.id);
  const cred = await navigator.credentials.get({ publicKey: pk });
  const r = cred.response;
  return {
    id: cred.id,
    rawId: b64url.encode(cred.rawId),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment,
    clientExtensionResults: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: b64url.encode(r.clientDataJSON),
      authenticatorData: b64url.encode(r.authenticatorData),
      signature: b64url.encode(r.signature),
      userHandle: r.userHandle ? b64url.encode(r.userHandle) : null,
    },
  };
}

// webauthnCreate asks an authenticator for a new credential and returns it
// as the JSON the server takes.
async function webauthnCreate(options) {
  const pk = options.publicKey;
  pk.challenge = b64url.decode(pk.challenge);
  pk.user.id = b64url.decode(pk.user.id);
  for (const c of pk.excludeCredentials || []) c.id = b64url.decode(c.id);
  const cred = await navigator.credentials.create({ publicKey: pk });
  const r = cred.response;
  return {
    id: cred.id,
    rawId: b64url.encode(cred.rawId),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment,
    clientExtensionResults: cred.getClientExtensionResults(),
    response: {
      clientDataJSON: b64url.encode(r.clientDataJSON),
      attestationObject: b64url.encode(r.attestationObject),
      transports: r.getTransports ? r.getTransports() : [],
    },
  };
}

function postJSON(url, body) {
  return fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body || {}),
  });
}

async function problemOf(resp) {
  return resp.json().catch(() => ({}));
}

// useSecurityKey runs a WebAuthn assertion for a sign-in or re-auth
// (prefix /auth/login or /auth/reauth) and posts it; it resolves to the
// final response.
async function useSecurityKey(prefix, token) {
  const body = token ? { mfa_token: token } : {};
  const opts = await postJSON(prefix + "/webauthn", body);
  if (!opts.ok) return opts;
  const credential = await webauthnGet(await opts.json());
  return postJSON(prefix + "/mfa", Object.assign({ credential }, body));
}

// send makes an API call; an answer asking for re-authentication shows
// the prompt and, once it is answered, sends the same call again (replay
// false: the caller decides what to do instead).
async function send(method, url, body, replay = true) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp = await fetch(url, init);
  if (replay && resp.status === 401) {
    const problem = await resp.clone().json().catch(() => ({}));
    // A user with a second factor answers it on the sign-in page after
    // Google, and comes back elsewhere: nothing is kept for a replay.
    const call = problem.second_factor ? null : { method, url, body };
    if (problem.code === "reauth_required" && (await reauthenticate(call))) {
      resp = await fetch(url, init); // the replay
    }
  }
  return resp;
}

// replayKey names the call kept in sessionStorage while the user confirms
// with Google (this tab only, gone with it).
const replayKey = "guardian.replay";

// keepForReplay keeps call ({method, url, body}) for replayAfterGoogle,
// in place of any kept before; null keeps nothing. A body with a password
// in it is not kept (none of the calls that ask for re-auth has one).
function keepForReplay(call) {
  sessionStorage.removeItem(replayKey);
  if (!call || (call.body && Object.keys(call.body).some((k) => /password/i.test(k)))) return;
  sessionStorage.setItem(replayKey, JSON.stringify({ method: call.method, url: call.url, body: call.body, page: location.pathname, at: Date.now() }));
}

// replayAfterGoogle sends again, once, the call kept before the user left
// to confirm with Google. The kept call lasts until the next page loads:
// it is sent only if that page is the one it was made on, less than five
// minutes ago, reached by a confirmation that succeeded (functions/oidc
// sends the browser back with #confirmed, only after Google answered for
// the user who asked). Any other page load (a refused confirmation's
// page, a sign-in) drops it. The answer is shown as the call's own would
// have been.
async function replayAfterGoogle() {
  const kept = sessionStorage.getItem(replayKey);
  const confirmed = location.hash === "#confirmed";
  if (confirmed) history.replaceState(null, "", location.pathname + location.search);
  if (kept === null) return;
  sessionStorage.removeItem(replayKey);
  let call;
  try {
    call = JSON.parse(kept);
  } catch {
    return;
  }
  if (!confirmed || !call || call.page !== location.pathname || !(Date.now() - call.at < 5 * 60 * 1000)) return;
  await finish(await send(call.method, call.url, call.body, false));
}

// reauthenticate shows the prompt and resolves to true once the password
// (and, for a user who has one, the second factor) was accepted, false if
// the user gave up. call ({method, url, body}) is what asked for it, kept
// for a replay if the user leaves to confirm with Google; null for one
// that cannot be sent again after leaving the page.
function reauthenticate(call = null) {
  const dialog = document.getElementById("reauth");
  const form = dialog.querySelector("form");
  const error = dialog.querySelector(".error");
  const passwordStep = dialog.querySelector('[data-step="password"]');
  const secondStep = dialog.querySelector('[data-step="second"]');
  const keyButton = dialog.querySelector("[data-use-key]");
  let token = null; // the re-auth's mfa_token once the password is right
  error.textContent = "";
  form.reset();
  passwordStep.hidden = false;
  secondStep.hidden = true;
  dialog.querySelector("[data-google]").hidden = true;
  return new Promise((resolve) => {
    const done = (ok) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.querySelector("[data-cancel]").removeEventListener("click", onCancel);
      keyButton.removeEventListener("click", onKey);
      dialog.close();
      resolve(ok);
    };
    const onCancel = (e) => { e.preventDefault(); done(false); };
    const secondFactor = (p) => {
      token = p.mfa_token;
      const methods = p.methods || [];
      passwordStep.hidden = true;
      secondStep.hidden = false;
      secondStep.querySelector('[data-method="webauthn"]').hidden = !methods.includes("webauthn");
      secondStep.querySelector('[data-method="code"]').hidden = !(methods.includes("totp") || methods.includes("recovery_code"));
      form.code.focus();
    };
    const settle = async (r) => {
      if (r.status === 204) {
        done(true);
        return;
      }
      const p = await problemOf(r);
      if (p.code === "mfa_expired") { // start again from the password
        token = null;
        form.reset();
        passwordStep.hidden = false;
        secondStep.hidden = true;
      }
      error.textContent = p.detail || "That was not accepted.";
    };
    const onKey = async () => {
      error.textContent = "";
      try {
        await settle(await useSecurityKey("/auth/reauth", token));
      } catch (err) {
        error.textContent = "The security key did not answer: " + err.message;
      }
    };
    const onSubmit = async (e) => {
      e.preventDefault();
      error.textContent = "";
      if (token === null) {
        const r = await postJSON("/auth/reauth", { password: form.password.value });
        if (r.status === 401) {
          const p = await problemOf(r.clone());
          if (p.code === "mfa_required") {
            secondFactor(p);
            return;
          }
        }
        if (r.status === 409) {
          const p = await problemOf(r.clone());
          if (p.code === "password_not_set" && p.reauth_url) {
            // A Google account: confirm with Google, back on this page.
            const google = dialog.querySelector("[data-google]");
            const link = google.querySelector("a");
            link.href = p.reauth_url + "&next=" + encodeURIComponent(location.pathname);
            link.onclick = () => keepForReplay(call);
            google.querySelector("[data-google-replay]").hidden = !call;
            google.querySelector("[data-google-again]").hidden = !!call;
            google.hidden = false;
          }
        }
        await settle(r);
        return;
      }
      const code = form.code.value.trim();
      if (code === "") {
        error.textContent = "Enter a code, or use your security key.";
        return;
      }
      await settle(await postJSON("/auth/reauth/mfa", { mfa_token: token, code }));
    };
    form.addEventListener("submit", onSubmit);
    keyButton.addEventListener("click", onKey);
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

function showStatus(text) {
  document.getElementById("status").textContent = text;
}

// show handles what an API answer may carry to show once: a new key, an
// authenticator app's key being set up, recovery codes. It reports
// whether there was any.
function show(answer) {
  if (answer.key) {
    const out = document.getElementById("new-key");
    out.textContent = answer.key;
    out.hidden = false;
    document.getElementById("new-key-note").hidden = false;
    return true; // shown once: the list refreshes on the next visit
  }
  if (answer.otpauth_url) {
    document.getElementById("totp-secret").textContent = answer.secret;
    document.getElementById("totp-qr").src = answer.qr_url + "?t=" + Date.now();
    document.getElementById("totp-setup").hidden = false;
    document.getElementById("setup-totp").hidden = true;
    return true;
  }
  if (answer.recovery_codes) {
    forgetTOTPSetup();
    const list = document.getElementById("recovery-codes");
    list.replaceChildren(...answer.recovery_codes.map((c) => {
      const li = document.createElement("li");
      li.textContent = c;
      return li;
    }));
    document.getElementById("recovery").hidden = false;
    return true;
  }
  return false;
}

// forgetTOTPSetup takes an authenticator app's key off the page once the
// app is on: the key, shown only during setup, must not stay on screen (or
// in the DOM) beside the recovery codes.
function forgetTOTPSetup() {
  const setup = document.getElementById("totp-setup");
  if (!setup) return;
  setup.hidden = true;
  document.getElementById("totp-secret").textContent = "";
  document.getElementById("totp-qr").removeAttribute("src");
}

document.addEventListener("submit", async (e) => {
  const form = e.target;
  if (form.matches("form[data-webauthn-register]")) {
    e.preventDefault();
    showStatus("");
    try {
      // The ceremony belongs to the session that began it, and a re-auth
      // makes a new session: when the last step asks for re-auth, replaying
      // it would be refused, so the whole ceremony starts again (once).
      for (let attempt = 0; attempt < 2; attempt++) {
        // Not replayed by send: a confirmation with Google leaves the
        // page, and a ceremony cannot be taken up again after that.
        const begun = await send("POST", form.getAttribute("action"), {}, false);
        if (!begun.ok) {
          const p = await problemOf(begun);
          if (attempt === 0 && begun.status === 401 && p.code === "reauth_required" && (await reauthenticate())) continue;
          showStatus(p.detail || "The security key could not be added (" + begun.status + ").");
          return;
        }
        const reg = await begun.json();
        const credential = await webauthnCreate(reg.options);
        const resp = await send("POST", form.dataset.webauthnRegister, { ceremony: reg.ceremony, name: form.elements.namedItem("name").value, credential }, false);
        if (resp.status === 201 && show(await resp.json())) return;
        if (resp.ok) {
          location.reload();
          return;
        }
        const p = await problemOf(resp);
        if (attempt === 0 && resp.status === 401 && p.code === "reauth_required" && (await reauthenticate())) continue;
        showStatus(p.detail || "The security key could not be added (" + resp.status + ").");
        return;
      }
    } catch (err) {
      showStatus("The security key did not answer: " + err.message);
    }
    return;
  }
  if (!form.matches("form[data-api]")) return;
  e.preventDefault();
  showStatus("");
  const method = form.dataset.method || "POST";
  await finish(await send(method, form.getAttribute("action"), method === "DELETE" ? undefined : fields(form)));
});

// finish shows the answer of a form's API call: what it carries to show
// once, else the page anew, or the problem's detail.
async function finish(resp) {
  if (resp.ok && resp.status !== 204) {
    const answer = await resp.json().catch(() => ({}));
    if (show(answer)) return;
  }
  if (resp.ok) {
    location.reload();
    return;
  }
  const p = await problemOf(resp);
  showStatus(p.detail || "The request failed (" + resp.status + ").");
}

replayAfterGoogle();

// The sign-in page's second step: a security key instead of a code (the
// challenge token is in the guardian_mfa cookie).
document.addEventListener("click", async (e) => {
  const button = e.target.closest("[data-webauthn-login]");
  if (!button) return;
  e.preventDefault();
  showStatus("");
  try {
    const resp = await useSecurityKey(button.dataset.webauthnLogin, null);
    if (resp.status === 204) {
      location.assign("/settings/keys");
      return;
    }
    const p = await problemOf(resp);
    if (p.code === "mfa_expired") {
      location.assign("/login?error=expired");
      return;
    }
    showStatus(p.detail || "The security key was not accepted.");
  } catch (err) {
    showStatus("The security key did not answer: " + err.message);
  }
});
