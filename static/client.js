// Careboard's browser client: the one place where the pages talk to the server.
// Queries go through `Careboard.query`, subscriptions through `Careboard.live`; both
// carry the same credentials (`Careboard.credentials`): a bearer token.
//
// Where the token comes from: a server running its development issuer puts a
// short-lived one in the page (`<meta name="careboard-token">`, only when served to
// this machine) and a fresh one in the page each time it is asked for again, which is
// how an expired one is renewed. With an identity provider, the person pastes a token
// into the sign-in field; it is kept in this tab's sessionStorage only.
"use strict";

window.Careboard = (() => {
  const TOKEN_KEY = "careboard.token";
  const tokenMeta = document.querySelector('meta[name="careboard-token"]');
  let pageToken = tokenMeta ? tokenMeta.content : null;

  function token() {
    if (pageToken) return pageToken;
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  /// What every request and every websocket's connection_init carries.
  function credentials() {
    const t = token();
    return t ? { authorization: "Bearer " + t } : {};
  }

  /// A fresh development token: the page, asked for again, carries one.
  async function renewPageToken() {
    if (!pageToken) return false;
    try {
      const res = await fetch(location.pathname, { cache: "no-store", credentials: "same-origin" });
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const meta = doc.querySelector('meta[name="careboard-token"]');
      if (meta && meta.content) {
        pageToken = meta.content;
        return true;
      }
    } catch (_) {
      // Offline: the caller retries later.
    }
    return false;
  }

  /// The sign-in field: paste a token from the identity provider (kept in this tab).
  function showSignIn(problem) {
    let form = document.getElementById("careboard-signin");
    if (!form) {
      const input = el("input", {
        id: "careboard-signin-token", type: "password", autocomplete: "off",
        spellcheck: "false", required: true, placeholder: "eyJ…",
      });
      form = el("form", { id: "careboard-signin", class: "signin", "aria-label": "Sign in" },
        el("label", { for: "careboard-signin-token", text: "Sign in: paste a bearer token from your identity provider" }),
        input,
        el("button", { type: "submit", text: "Sign in" }),
        el("p", { class: "signin-problem", role: "status" }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = input.value.trim().replace(/^bearer\s+/i, "");
        if (!value) return;
        try {
          sessionStorage.setItem(TOKEN_KEY, value);
        } catch (_) {
          return;
        }
        location.reload();
      });
      document.body.prepend(form);
    }
    form.querySelector(".signin-problem").textContent = problem || "";
  }

  /// Not signed in, or the token was refused: renew the page's token, or ask for one.
  /// True when there is a new token to retry with.
  async function unauthenticated(problem) {
    if (await renewPageToken()) return true;
    showSignIn(problem);
    return false;
  }

  /// One GraphQL query or mutation; resolves to `data`, rejects with the first error.
  async function query(text, variables, renewed) {
    const res = await fetch("/graphql", {
      method: "POST",
      headers: { "content-type": "application/json", ...credentials() },
      body: JSON.stringify({ query: text, variables: variables || {} }),
    });
    let body;
    try {
      body = await res.json();
    } catch (_) {
      throw new Error(`the server answered ${res.status} without GraphQL`);
    }
    if (body.errors && body.errors.length) {
      const first = body.errors[0];
      const code = first.extensions && first.extensions.code;
      if (code === "UNAUTHENTICATED" && !renewed && (await unauthenticated(first.message))) {
        return query(text, variables, true);
      }
      const e = new Error(first.message);
      e.code = code;
      throw e;
    }
    return body.data;
  }

  /// A websocket (graphql-transport-ws) that keeps its subscriptions across
  /// reconnects. `onState(state, since)` hears "connecting", "live" and "down" with
  /// the moment the state began. Each subscription's `variables()` is asked again on
  /// every (re)subscribe, so it can resume (e.g. with `sinceVersion`).
  function live(onState) {
    const subs = new Map();
    let ws = null;
    let acked = false;
    let retry = 0;
    let state = null;
    let since = new Date();
    let stopped = false;

    function setState(next, detail) {
      if (next !== state) {
        state = next;
        since = new Date();
      }
      if (onState) onState(state, since, detail, retry);
    }
    function send(message) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
    }
    function start(id) {
      const s = subs.get(id);
      if (!s || !acked) return;
      send({ id, type: "subscribe", payload: { query: s.query, variables: s.variables() } });
    }
    function connect() {
      if (stopped) return;
      acked = false;
      setState("connecting");
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + location.host + "/graphql/ws", "graphql-transport-ws");
      ws = socket;
      socket.onopen = () =>
        socket.send(JSON.stringify({
          type: "connection_init",
          payload: credentials(),
        }));
      socket.onmessage = (msg) => {
        let m;
        try {
          m = JSON.parse(msg.data);
        } catch (_) {
          return;
        }
        if (m.type === "connection_ack") {
          acked = true;
          retry = 0;
          setState("live");
          for (const id of subs.keys()) start(id);
        } else if (m.type === "ping") {
          send({ type: "pong" });
        } else if (m.type === "next") {
          const s = subs.get(m.id);
          if (!s) return;
          if (m.payload.errors && m.payload.errors.length) {
            if (s.onError) s.onError(m.payload.errors[0].message);
          } else {
            s.onData(m.payload.data);
          }
        } else if (m.type === "error") {
          const s = subs.get(m.id);
          const message = Array.isArray(m.payload) && m.payload[0] ? m.payload[0].message : "error";
          if (s && s.onError) s.onError(message);
        }
      };
      socket.onclose = (event) => {
        if (ws !== socket) return;
        ws = null;
        acked = false;
        if (stopped) return;
        // 4403: no valid token (or it expired). Renew it (development issuer) or ask
        // for one; reconnect either way, resuming every subscription where it was.
        if (event.code === 4403) {
          setState("down", event.reason);
          unauthenticated(event.reason).then((renewed) => {
            setTimeout(connect, renewed ? 0 : Math.min(10000, 500 * 2 ** Math.min(++retry, 5)));
          });
          return;
        }
        retry += 1;
        setState("down");
        setTimeout(connect, Math.min(10000, 500 * 2 ** Math.min(retry, 5)));
      };
    }

    connect();
    return {
      subscribe(id, text, variables, onData, onError) {
        subs.set(id, { query: text, variables, onData, onError });
        start(id);
      },
      unsubscribe(id) {
        if (subs.delete(id)) send({ id, type: "complete" });
      },
      state: () => state,
      since: () => since,
      close() {
        stopped = true;
        if (ws) ws.close();
      },
    };
  }

  // Each US state's (and DC's) clinic timezone: the zone most of the state keeps.
  const REGION_ZONES = {
    AL: "America/Chicago", AK: "America/Anchorage", AZ: "America/Phoenix", AR: "America/Chicago",
    CA: "America/Los_Angeles", CO: "America/Denver", CT: "America/New_York", DE: "America/New_York",
    DC: "America/New_York", FL: "America/New_York", GA: "America/New_York", HI: "Pacific/Honolulu",
    ID: "America/Boise", IL: "America/Chicago", IN: "America/Indiana/Indianapolis", IA: "America/Chicago",
    KS: "America/Chicago", KY: "America/New_York", LA: "America/Chicago", ME: "America/New_York",
    MD: "America/New_York", MA: "America/New_York", MI: "America/Detroit", MN: "America/Chicago",
    MS: "America/Chicago", MO: "America/Chicago", MT: "America/Denver", NE: "America/Chicago",
    NV: "America/Los_Angeles", NH: "America/New_York", NJ: "America/New_York", NM: "America/Denver",
    NY: "America/New_York", NC: "America/New_York", ND: "America/Chicago", OH: "America/New_York",
    OK: "America/Chicago", OR: "America/Los_Angeles", PA: "America/New_York", RI: "America/New_York",
    SC: "America/New_York", SD: "America/Chicago", TN: "America/Chicago", TX: "America/Chicago",
    UT: "America/Denver", VT: "America/New_York", VA: "America/New_York", WA: "America/Los_Angeles",
    WV: "America/New_York", WI: "America/Chicago", WY: "America/Denver", PR: "America/Puerto_Rico",
  };
  const ZONE_KEY = "careboard.timeZone";

  function validZone(zone) {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: zone });
      return true;
    } catch (_) {
      return false;
    }
  }
  /// The timezone times are shown in: the setting if one was chosen (`?tz=` or the
  /// page's selector), else the clinic's (the Board's region), else the device's.
  function timeZone(region) {
    const asked = new URLSearchParams(location.search).get("tz") || localStorage.getItem(ZONE_KEY);
    if (asked && asked !== "clinic" && validZone(asked)) return asked;
    return REGION_ZONES[region] || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  }
  function setTimeZone(zone) {
    if (zone === "clinic") localStorage.removeItem(ZONE_KEY);
    else localStorage.setItem(ZONE_KEY, zone);
  }
  function clock(t, zone, seconds) {
    if (!t) return "—";
    return new Date(t).toLocaleTimeString("en-US", {
      timeZone: zone, hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined,
      hour12: false,
    });
  }
  function zoneName(zone, at) {
    const parts = new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "short" })
      .formatToParts(at ? new Date(at) : new Date());
    const part = parts.find((p) => p.type === "timeZoneName");
    return part ? part.value : zone;
  }
  /// A duration as the page shows it: "4:05" (m:ss) under an hour, "1 h 12 min" past.
  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }
  /// The same for screen readers.
  function spokenDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    if (h) return `${h} hours ${m} minutes`;
    return `${m} minutes ${s % 60} seconds`;
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!token()) showSignIn("");
  });

  return { query, live, credentials, timeZone, setTimeZone, clock, zoneName, duration, spokenDuration, el, REGION_ZONES };
})();
