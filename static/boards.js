// The index of Boards: opens on the newest date with Boards and keeps every row live
// (one boardChanged subscription per Board shown).
"use strict";

(() => {
  const C = window.Careboard;
  const el = C.el;
  const $ = (id) => document.getElementById(id);
  const FIELDS = `id name specialty region status version
    counts { waiting scheduled inProgress providersReady } waitingSince currentWait { waitSeconds }`;
  const LIST = `query($date: Date) { boards(date: $date, first: 500) { edges { node { ${FIELDS} } } } }`;
  const LIVE = `subscription($id: ID!, $since: Int) { boardChanged(boardId: $id, sinceVersion: $since) { ${FIELDS} } }`;
  // The server allows this many subscriptions on one websocket.
  const PER_SOCKET = 100;

  const boards = new Map();   // id -> the newest Board
  let sockets = [];
  let states = [];
  let loaded = null;          // the date shown

  function row(b) {
    const link = el("a", { href: "/boards/" + encodeURIComponent(b.id), text: b.name });
    const quote = b.status !== "OPEN" ? "closed"
      : !b.currentWait || b.currentWait.waitSeconds === null ? "no provider"
      : C.duration(b.currentWait.waitSeconds * 1000);
    const longest = b.waitingSince
      ? el("span", { class: "elapsed", "data-from": Date.parse(b.waitingSince) })
      : "—";
    const cells = [link, b.specialty, b.region, b.status.toLowerCase(), b.counts.waiting, longest, quote,
      b.counts.scheduled, b.counts.inProgress, b.counts.providersReady];
    const tr = el("tr", { "data-id": b.id, "data-version": b.version });
    cells.forEach((c, i) => tr.append(el("td", { class: i >= 4 ? "num" : null }, c)));
    return tr;
  }

  function tick() {
    const t = Date.now();
    for (const e of document.querySelectorAll(".elapsed[data-from]")) {
      const text = C.duration(t - Number(e.dataset.from));
      if (e.textContent !== text) e.textContent = text;
      e.setAttribute("aria-label", C.spokenDuration(t - Number(e.dataset.from)));
    }
  }

  function showConnection() {
    const conn = $("conn");
    if (!sockets.length) {
      conn.className = "conn live";
      conn.textContent = "live";
      return;
    }
    const down = states.find((s) => s && s.state !== "live");
    if (!down) {
      conn.className = "conn live";
      conn.textContent = "live";
    } else if (down.state === "down") {
      conn.className = "conn down";
      conn.textContent = `disconnected since ${C.clock(down.since, Intl.DateTimeFormat().resolvedOptions().timeZone, true)}`;
    } else {
      conn.className = "conn connecting";
      conn.textContent = "connecting…";
    }
    document.body.classList.toggle("stale", !!down && down.state === "down");
  }

  function follow(list) {
    for (const s of sockets) s.close();
    sockets = [];
    states = [];
    for (let i = 0; i < list.length; i += PER_SOCKET) {
      const n = sockets.length;
      const socket = C.live((state, since) => {
        states[n] = { state, since };
        showConnection();
      });
      sockets.push(socket);
      for (const b of list.slice(i, i + PER_SOCKET)) {
        socket.subscribe(b.id, LIVE, () => ({ id: b.id, since: boards.get(b.id).version }), (data) => {
          const next = data.boardChanged;
          const current = boards.get(next.id);
          if (current && next.version <= current.version) return;
          boards.set(next.id, next);
          const old = document.querySelector(`tr[data-id="${CSS.escape(next.id)}"]`);
          const fresh = row(next);
          fresh.classList.add("changed");
          if (old) old.replaceWith(fresh);
          tick();
        });
      }
    }
    showConnection();
  }

  async function load(date) {
    loaded = date;
    const note = $("note");
    try {
      const data = await C.query(LIST, { date });
      if (loaded !== date) return;
      const list = data.boards.edges.map((e) => e.node);
      boards.clear();
      for (const b of list) boards.set(b.id, b);
      $("rows").replaceChildren(...list.map(row));
      $("caption").textContent = `Boards on ${date}`;
      note.textContent = list.length ? "" : "No Boards on this date.";
      tick();
      follow(list);
    } catch (e) {
      note.textContent = `Could not load the Boards: ${e.message}`;
    }
  }

  /// Boards opened on the shown date after the page loaded: looked for now and then
  /// (the rows themselves are live).
  async function lookForNewBoards() {
    if (!loaded) return;
    try {
      const data = await C.query(LIST, { date: loaded });
      const list = data.boards.edges.map((e) => e.node);
      if (list.some((b) => !boards.has(b.id))) load(loaded);
    } catch (_) { /* the next look will tell */ }
  }

  async function start() {
    const input = $("date");
    const asked = new URLSearchParams(location.search).get("date");
    let dates = [];
    try {
      dates = (await C.query(`query { boardDates(first: 60) }`)).boardDates;
    } catch (e) {
      $("note").textContent = `Could not list the dates: ${e.message}`;
    }
    const today = new Date().toISOString().slice(0, 10);
    const date = asked || dates[0] || today;
    input.value = date;
    $("dates").replaceChildren(...(dates.length ? dates : [date]).map((d) =>
      el("option", { value: d, text: d, selected: d === date })));
    load(date);
    const choose = (d) => {
      if (!d) return;
      input.value = d;
      $("dates").value = d;
      history.replaceState(null, "", "?date=" + d);
      load(d);
    };
    input.addEventListener("change", () => choose(input.value));
    $("dates").addEventListener("change", () => choose($("dates").value));
  }

  start();
  setInterval(tick, 1000);
  setInterval(lookForNewBoards, 30000);
})();
