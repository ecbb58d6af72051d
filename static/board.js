// The coordinator's Board: live (boardChanged), or replaying the day (boardHistory
// and board(asOf)). Every time is shown in the clinic's timezone; waits tick every
// second between changes; late and overdue patients are flagged.
"use strict";

(() => {
  const C = window.Careboard;
  const el = C.el;
  const boardId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const $ = (id) => document.getElementById(id);

  const FIELDS = `id name specialty region date status openedAt closedAt version position
    counts { waiting scheduled inProgress finished cancelled providersReady providersAssigned providersPaused providersCharting providersSignedOff }
    waitingSince
    currentWait { waitSeconds estimatedStart providersAvailable basis }
    providers { id status appointmentId joinedAt readySince chartingSeconds signedOffAt
      provider { id name specialties licensedRegions } }
    appointments { id patientName status reason specialty region providerId shiftId
      estimatedTime estimatedStart expectedFinish requestedAt scheduledAt startedAt finishedAt }`;
  const LIVE = `subscription($id: ID!, $since: Int) { boardChanged(boardId: $id, sinceVersion: $since) { ${FIELDS} } }`;
  const AS_OF = `query($id: ID!, $at: DateTime!) { board(id: $id, asOf: $at) { ${FIELDS} } }`;
  const HISTORY = `query($id: ID!, $from: DateTime!, $to: DateTime!) {
    boardHistory(boardId: $id, from: $from, to: $to, first: 10000) {
      version at waiting scheduled inProgress providersReady providersAssigned providersCharting providersPaused
      longestWaitSeconds event { type } } }`;

  // What the page shows: the live Board, or a moment of the day being replayed.
  const view = {
    mode: "live",        // "live" | "replay"
    live: null,          // the newest Board from the subscription
    shown: null,         // the Board on screen
    replayAt: null,      // replay: the asOf sent (exact string), and its time in ms
    replayMs: null,
    index: null,         // replay: the moment of the timeline shown
    conn: "connecting",
    zone: "UTC",
  };
  const timeline = { moments: [], loading: false, loaded: false, peaks: [] };

  function now() {
    return view.mode === "replay" ? view.replayMs : Date.now();
  }
  function ms(t) {
    return t ? Date.parse(t) : null;
  }
  function clock(t, seconds) {
    return C.clock(t, view.zone, seconds);
  }

  // ---------------------------------------------------------------- rendering

  /// Each shift's display name; providers who share a name are told apart by their
  /// specialties and licences, and if that is not enough by the start of their id.
  function providerLabels(shifts) {
    const label = new Map();
    const byName = new Map();
    for (const s of shifts) {
      const name = s.provider ? s.provider.name : "Unknown provider";
      if (!byName.has(name)) byName.set(name, []);
      byName.get(name).push(s);
    }
    for (const [name, group] of byName) {
      if (group.length === 1) {
        label.set(group[0].id, name);
        continue;
      }
      const detail = (s) => s.provider
        ? `${s.provider.specialties.join(", ")}; ${s.provider.licensedRegions.join(", ")}`
        : "";
      const details = group.map(detail);
      for (const s of group) {
        const d = detail(s);
        const same = details.filter((x) => x === d).length > 1;
        const id = s.provider ? s.provider.id : s.id;
        label.set(s.id, `${name} (${d}${same || !d ? `${d ? "; " : ""}#${id.slice(0, 8)}` : ""})`);
      }
    }
    return label;
  }

  function pill(status) {
    const text = status.replace("_", " ").toLowerCase();
    return el("span", { class: "pill " + status, text });
  }

  /// A badge that `tick` switches on once `at` (ms) has passed.
  function flag(li, kind, at, text) {
    li.dataset.flag = kind;
    li.dataset.flagAt = String(at);
    const badge = el("span", { class: "flag " + kind, text, hidden: true });
    li.querySelector(".name").append(badge);
  }

  /// A ticking duration since `from` (ms).
  function elapsed(from, prefix) {
    return el("span", { class: "elapsed", "data-from": from, "data-prefix": prefix || "" });
  }

  function item(a, parts) {
    const li = el("li", { "data-id": a.id, "data-status": a.status, "data-search": parts.search.toLowerCase() });
    li.append(el("div", { class: "name" }, el("span", { class: "who", text: parts.name })));
    for (const line of parts.lines) li.append(el("div", { class: "sub" }, ...line));
    return li;
  }

  function fill(id, items) {
    const list = $(id);
    list.replaceChildren(...items);
    if (!items.length) list.append(el("li", { class: "empty", text: "none" }));
  }

  function figure(label, value, extra) {
    const v = el("b", null, value);
    return el("div", { class: "figure", ...(extra || {}) }, v, el("span", { text: label }));
  }

  function render(b) {
    view.shown = b;
    view.zone = C.timeZone(b.region);
    fillZones(b.region);
    document.title = `Careboard · ${b.name}`;
    $("title").textContent = b.name;
    $("meta").textContent = `${b.specialty} · ${b.region} · ${b.date} · ${b.status.toLowerCase()} · version ${b.version} · times in ${view.zone} (${C.zoneName(view.zone, now())})`;

    const labels = providerLabels(b.providers);
    const apptById = new Map(b.appointments.map((a) => [a.id, a]));
    const providerOf = (a) => (a.shiftId && labels.get(a.shiftId)) || "";
    const open = b.status === "OPEN";
    const quote = open ? b.currentWait : null;

    const c = b.counts;
    const quoteText = !open ? "closed"
      : !quote || quote.waitSeconds === null ? "no provider"
      : C.duration(quote.waitSeconds * 1000);
    const longest = b.waitingSince
      ? elapsed(ms(b.waitingSince))
      : el("span", { text: "—" });
    $("figures").replaceChildren(
      figure("waiting", c.waiting),
      el("div", { class: "figure" }, el("b", null, longest), el("span", { text: "longest wait" })),
      figure("quoted wait for a new patient", quoteText),
      figure("scheduled", c.scheduled),
      figure("in progress", c.inProgress),
      figure("finished", c.finished),
      figure("cancelled", c.cancelled),
      figure("providers ready", c.providersReady),
      figure("with a patient", c.providersAssigned),
      figure("charting", c.providersCharting),
      figure("paused", c.providersPaused),
    );

    // Patient fields this viewer may not see arrive masked (null).
    for (const a of b.appointments) {
      if (a.patientName === null) a.patientName = "(patient hidden)";
      if (a.reason === null) a.reason = "";
    }
    const by = (s) => b.appointments.filter((a) => a.status === s);
    const waiting = by("REQUESTED").sort((x, y) => ms(x.requestedAt) - ms(y.requestedAt));
    fill("waiting", waiting.map((a) => {
      const lines = [[elapsed(ms(a.requestedAt), "waiting "), ` · since ${clock(a.requestedAt)}`]];
      lines.push([a.estimatedStart ? `expected start ${clock(a.estimatedStart)}` : (open ? "no provider on shift can take this patient" : "")]);
      const kind = a.specialty !== b.specialty || a.region !== b.region ? `${a.specialty} · ${a.region} · ` : "";
      lines.push([`${kind}${a.reason}`]);
      const li = item(a, { name: a.patientName, lines, search: a.patientName });
      if (open && !a.estimatedStart) flag(li, "late", ms(a.requestedAt), "late · no provider");
      else if (quote && quote.waitSeconds !== null) {
        flag(li, "late", ms(a.requestedAt) + quote.waitSeconds * 1000, "late");
      }
      return li;
    }));
    const scheduled = by("SCHEDULED").sort((x, y) => ms(x.estimatedTime) - ms(y.estimatedTime));
    fill("scheduled", scheduled.map((a) => {
      const who = providerOf(a);
      const lines = [
        [el("span", { class: "pair", text: `with ${who || "a provider"}` })],
        [`expected start ${clock(a.estimatedTime)} · scheduled ${clock(a.scheduledAt)}`],
        [a.reason],
      ];
      return item(a, { name: a.patientName, lines, search: `${a.patientName} ${who}` });
    }));
    const progress = by("STARTED").sort((x, y) => ms(x.startedAt) - ms(y.startedAt));
    fill("progress", progress.map((a) => {
      const who = providerOf(a);
      const lines = [
        [el("span", { class: "pair", text: `with ${who || "a provider"}` })],
        [elapsed(ms(a.startedAt), "in progress "), ` · since ${clock(a.startedAt)}`,
          a.expectedFinish ? ` · usually done by ${clock(a.expectedFinish)}` : ""],
        [a.reason],
      ];
      const li = item(a, { name: a.patientName, lines, search: `${a.patientName} ${who}` });
      if (a.expectedFinish) flag(li, "overdue", ms(a.expectedFinish), "overdue");
      return li;
    }));
    const order = { ASSIGNED: 0, CHARTING: 1, READY: 2, PAUSED: 3, SIGNED_OFF: 4 };
    const providers = [...b.providers].sort((x, y) =>
      order[x.status] - order[y.status] || labels.get(x.id).localeCompare(labels.get(y.id)));
    fill("providers", providers.map((s) => {
      const name = labels.get(s.id);
      const patient = s.appointmentId ? apptById.get(s.appointmentId) : null;
      const lines = [];
      let search = name;
      if (patient && s.status === "ASSIGNED") {
        const doing = patient.status === "STARTED" ? "in appointment with" : "assigned to";
        lines.push([el("span", { class: "pair", text: `${doing} ${patient.patientName}` })]);
        search += " " + patient.patientName;
      } else if (patient && s.status === "CHARTING") {
        lines.push([el("span", { class: "pair", text: `charting for ${patient.patientName}` })]);
        search += " " + patient.patientName;
      } else if (s.status === "READY" && s.readySince) {
        lines.push([elapsed(ms(s.readySince), "ready "), ` · since ${clock(s.readySince)}`]);
      } else if (s.status === "SIGNED_OFF") {
        lines.push([`signed off ${clock(s.signedOffAt)}`]);
      }
      lines.push([`joined ${clock(s.joinedAt)} · charted ${Math.round(s.chartingSeconds / 60)} min`]);
      const li = el("li", { "data-id": s.id, "data-status": s.status, "data-search": search.toLowerCase() });
      li.append(el("div", { class: "name" }, el("span", { class: "who", text: name }), pill(s.status)));
      for (const line of lines) li.append(el("div", { class: "sub" }, ...line));
      return li;
    }));
    tick();
  }

  /// Every second: ticking durations, flags that fall due, header counts, filters.
  function tick() {
    const t = now();
    if (t === null) return;
    for (const e of document.querySelectorAll(".elapsed[data-from]")) {
      const text = (e.dataset.prefix || "") + C.duration(t - Number(e.dataset.from));
      if (e.textContent !== text) e.textContent = text;
      e.setAttribute("aria-label", (e.dataset.prefix || "") + C.spokenDuration(t - Number(e.dataset.from)));
    }
    const counts = { late: 0, overdue: 0 };
    for (const li of document.querySelectorAll("li[data-flag-at]")) {
      const on = t >= Number(li.dataset.flagAt);
      li.classList.toggle("flagged", on);
      li.classList.toggle(li.dataset.flag, on);
      li.querySelector(".flag").hidden = !on;
      if (on) counts[li.dataset.flag] += 1;
    }
    for (const kind of ["late", "overdue"]) {
      const badge = $("n-" + kind);
      if (badge.dataset.count !== String(counts[kind])) {
        badge.dataset.count = String(counts[kind]);
        badge.textContent = `${counts[kind]} ${kind}`;
      }
    }
    applyFilters();
  }

  // ---------------------------------------------------------------- filters

  function applyFilters() {
    const q = $("search").value.trim().toLowerCase();
    const show = $("show").value;
    const providerStatus = $("provider-status").value;
    let visible = 0, total = 0;
    for (const section of document.querySelectorAll(".column")) {
      const column = section.dataset.column;
      const columnShown = show === "all" || show === column
        || (show === "flagged" && (column === "waiting" || column === "progress"));
      section.hidden = !columnShown;
      for (const li of section.querySelectorAll("li[data-id]")) {
        total += 1;
        let ok = columnShown && (!q || li.dataset.search.includes(q));
        if (show === "flagged") ok = ok && li.classList.contains("flagged");
        if (column === "providers" && providerStatus) ok = ok && li.dataset.status === providerStatus;
        li.hidden = !ok;
        if (ok) visible += 1;
      }
      const count = section.querySelector(".count");
      const all = section.querySelectorAll("li[data-id]").length;
      const here = section.querySelectorAll("li[data-id]:not([hidden])").length;
      const text = here === all ? String(all) : `${here} of ${all}`;
      if (count.textContent !== text) count.textContent = text;
    }
    const filtered = q || show !== "all" || providerStatus;
    const note = filtered ? `showing ${visible} of ${total}` : "";
    if ($("filter-note").textContent !== note) $("filter-note").textContent = note;
  }

  let zonesFor = null;
  function fillZones(region) {
    if (zonesFor === region) return;
    zonesFor = region;
    const clinic = C.REGION_ZONES[region] || "UTC";
    const device = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const options = [["clinic", `the clinic's (${clinic})`], [device, `this device's (${device})`], ["UTC", "UTC"]];
    const asked = new URLSearchParams(location.search).get("tz");
    if (asked && view.zone === asked && !options.some(([v]) => v === asked)) options.push([asked, asked]);
    const chosen = (asked && view.zone === asked) ? asked : localStorage.getItem("careboard.timeZone") || "clinic";
    $("zone").replaceChildren(...options.map(([v, t]) => el("option", { value: v, text: t, selected: v === chosen })));
  }

  // ---------------------------------------------------------------- connection

  function showConnection() {
    const conn = $("conn");
    const state = view.conn;
    conn.className = "conn " + state;
    setText(conn, state === "live" ? "live"
      : state === "connecting" ? "connecting…"
      : `disconnected since ${clock(connSince, true)}`);
    const stale = state !== "live" && view.live !== null;
    document.body.classList.toggle("stale", stale && view.mode === "live");
    showBanner();
  }

  /// Changes text only when it differs, so live regions speak only of changes.
  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }

  function showBanner() {
    const banner = $("banner");
    const text = $("banner-text");
    if (view.mode === "replay") {
      banner.hidden = false;
      banner.className = "banner replaying";
      const m = timeline.moments[view.index];
      setText(text, `Replaying ${clock(view.replayAt, true)} (${C.zoneName(view.zone, view.replayMs)})`
        + (view.shown ? ` · version ${view.shown.version}` : "")
        + (m ? ` · after ${m.event.type}` : "")
        + ". The live Board keeps updating in the background.");
      $("banner-live").hidden = false;
    } else if (view.conn !== "live" && view.live !== null) {
      banner.hidden = false;
      banner.className = "banner stale";
      setText(text, `Disconnected since ${clock(connSince, true)}: the Board below is as it was then and may be out of date. Reconnecting…`);
      $("banner-live").hidden = true;
    } else {
      banner.hidden = true;
    }
  }

  let connSince = new Date();
  const socket = C.live((state, since) => {
    view.conn = state;
    connSince = since;
    showConnection();
  });
  socket.subscribe("board", LIVE, () => ({ id: boardId, since: view.live ? view.live.version : null }),
    (data) => {
      const b = data.boardChanged;
      if (view.live && b.version <= view.live.version) return;
      view.live = b;
      if (view.mode === "live") render(b);
      showConnection();
      refreshTimelineSoon();
    },
    (message) => {
      $("conn").className = "conn down";
      $("conn").textContent = message;
      if (!view.live) $("title").textContent = message;
    });

  // ---------------------------------------------------------------- replay

  /// One point per distinct time: board(asOf) at that time shows the last version
  /// recorded then.
  function addMoments(entries) {
    const moments = timeline.moments;
    const lastVersion = moments.length ? moments[moments.length - 1].version : -1;
    for (const e of entries) {
      if (e.version <= lastVersion) continue;
      const m = { ...e, ms: ms(e.at) };
      const prev = moments[moments.length - 1];
      if (prev && prev.at === e.at) moments[moments.length - 1] = m;
      else moments.push(m);
    }
  }

  async function loadTimeline() {
    if (timeline.loading || !view.live) return;
    timeline.loading = true;
    try {
      const moments = timeline.moments;
      const last = moments[moments.length - 1];
      // (from, to]: from the opening (or a second before the newest moment, to catch
      // events recorded in the same instant), to any time after now.
      const fromMs = last ? last.ms - 1000 : ms(view.live.openedAt) - 1000;
      const data = await C.query(HISTORY, {
        id: boardId,
        from: new Date(fromMs).toISOString(),
        to: "9999-12-31T00:00:00Z",
      });
      addMoments(data.boardHistory);
      const first = !timeline.loaded;
      timeline.loaded = true;
      drawTimeline();
      if (first) openLinkedMoment();
    } catch (e) {
      $("replay-label").textContent = `The day's timeline could not be loaded: ${e.message}`;
    } finally {
      timeline.loading = false;
    }
  }

  let timelineTimer = null;
  function refreshTimelineSoon() {
    if (!timeline.loaded) {
      loadTimeline();
      return;
    }
    if (timelineTimer) return;
    timelineTimer = setTimeout(() => {
      timelineTimer = null;
      loadTimeline();
    }, 2000);
  }

  /// The longest wait at time `t` within moment `i` (it grows while someone waits).
  function longestAt(i, t) {
    const m = timeline.moments[i];
    if (m.longestWaitSeconds === null) return 0;
    return m.longestWaitSeconds + Math.max(0, (t - m.ms) / 1000);
  }

  /// Peaks of the longest wait: the highest values just before it fell, at least an
  /// eighth of the day apart, at most four.
  function findPeaks(end) {
    const moments = timeline.moments;
    const candidates = [];
    for (let i = 0; i < moments.length; i++) {
      const until = i + 1 < moments.length ? moments[i + 1].ms : end;
      const value = longestAt(i, until);
      const next = i + 1 < moments.length ? (moments[i + 1].longestWaitSeconds || 0) : -1;
      if (value > 0 && value > next) candidates.push({ i, t: until, value, waiting: moments[i].waiting });
    }
    candidates.sort((a, b) => b.value - a.value);
    const span = Math.max(1, end - moments[0].ms);
    const peaks = [];
    for (const c of candidates) {
      if (peaks.length >= 4) break;
      if (c.value < 60) break;
      if (peaks.every((p) => Math.abs(p.t - c.t) > span / 8)) peaks.push(c);
    }
    return peaks.sort((a, b) => a.t - b.t);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  }

  const W = 1000, H = 220, PAD_L = 34, PAD_R = 40, PAD_T = 10, PAD_B = 24;
  let scale = null;

  function drawTimeline() {
    const moments = timeline.moments;
    const chart = $("chart");
    const keep = [$("chart-title"), $("chart-desc")];
    chart.replaceChildren(...keep);
    const scrub = $("scrub");
    if (!moments.length) {
      $("replay-label").textContent = "Nothing has happened on this Board yet.";
      return;
    }
    const live = view.live;
    const t0 = moments[0].ms;
    const closed = live && live.closedAt ? ms(live.closedAt) : null;
    const t1 = Math.max(moments[moments.length - 1].ms, closed || Date.now(), t0 + 60000);
    const maxWaiting = Math.max(1, ...moments.map((m) => m.waiting));
    let maxLongest = 60;
    for (let i = 0; i < moments.length; i++) {
      const until = i + 1 < moments.length ? moments[i + 1].ms : t1;
      maxLongest = Math.max(maxLongest, longestAt(i, until));
    }
    const x = (t) => PAD_L + ((t - t0) / (t1 - t0)) * (W - PAD_L - PAD_R);
    const yW = (n) => H - PAD_B - (n / maxWaiting) * (H - PAD_B - PAD_T);
    const yL = (s) => H - PAD_B - (s / maxLongest) * (H - PAD_B - PAD_T);
    scale = { x, t0, t1 };

    // Axes and hour ticks (in the shown timezone).
    const axes = svg("g", { class: "axes" });
    axes.append(svg("line", { x1: PAD_L, x2: W - PAD_R, y1: H - PAD_B, y2: H - PAD_B }));
    const hour = 3600000;
    const step = (t1 - t0) > 10 * hour ? 2 * hour : hour;
    for (let t = Math.ceil(t0 / hour) * hour; t <= t1; t += step) {
      axes.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: PAD_T, y2: H - PAD_B }));
      const label = svg("text", { x: x(t), y: H - 6, "text-anchor": "middle" });
      label.textContent = clock(new Date(t).toISOString());
      axes.append(label);
    }
    const top = svg("text", { x: 4, y: PAD_T + 26 });
    top.textContent = String(maxWaiting);
    const topR = svg("text", { x: W - 4, y: PAD_T + 26, "text-anchor": "end" });
    topR.textContent = `${Math.round(maxLongest / 60)} min`;
    axes.append(top, topR);

    // Waiting: a step area. Longest wait: a line that climbs while someone waits.
    let area = `M ${x(t0)} ${yW(0)}`;
    let line = "";
    for (let i = 0; i < moments.length; i++) {
      const m = moments[i];
      const until = i + 1 < moments.length ? moments[i + 1].ms : t1;
      area += ` L ${x(m.ms)} ${yW(m.waiting)} L ${x(until)} ${yW(m.waiting)}`;
      line += `${line ? " L" : "M"} ${x(m.ms)} ${yL(longestAt(i, m.ms))} L ${x(until)} ${yL(longestAt(i, until))}`;
    }
    area += ` L ${x(t1)} ${yW(0)} Z`;
    chart.append(axes, svg("path", { class: "waiting-area", d: area }), svg("path", { class: "longest-line", d: line }));

    // The moment shown.
    chart.append(svg("line", { id: "cursor", class: "cursor", x1: 0, x2: 0, y1: PAD_T, y2: H - PAD_B }));

    // Peaks: marked and reachable by mouse, keyboard and screen reader.
    timeline.peaks = findPeaks(t1);
    const list = [];
    timeline.peaks.forEach((p, n) => {
      const text = `Peak ${n + 1}: ${clock(new Date(p.t).toISOString())}, longest wait ${Math.round(p.value / 60)} min, ${p.waiting} waiting`;
      const go = () => seekPeak(p);
      const dot = svg("circle", { class: "peak", cx: x(p.t), cy: yL(p.value), r: 7, tabindex: 0, role: "button", "aria-label": text, "data-peak": n });
      const title = svg("title");
      title.textContent = text;
      dot.append(title);
      dot.addEventListener("click", go);
      dot.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          go();
        }
      });
      chart.append(dot);
      list.push(el("li", null, el("button", { type: "button", class: "peak-button", "data-peak": n, onclick: go, text })));
    });
    $("peaks").replaceChildren(...(list.length ? list : [el("li", { class: "empty", text: "no wait over a minute yet" })]));

    scrub.disabled = false;
    scrub.max = String(moments.length - 1);
    if (view.mode === "live") scrub.value = String(moments.length - 1);
    showReplayState();
  }

  function showReplayState() {
    const moments = timeline.moments;
    const scrub = $("scrub");
    const cursor = $("cursor");
    let label;
    if (view.mode === "live") {
      label = moments.length ? `Live. ${moments.length} moments in the day so far; step back or drag to replay.` : "Live.";
      $("to-live").disabled = true;
      if (cursor && scale) {
        const t = Math.min(scale.t1, Date.now());
        cursor.setAttribute("x1", scale.x(t));
        cursor.setAttribute("x2", scale.x(t));
      }
    } else {
      const m = moments[view.index];
      label = `Replaying ${clock(view.replayAt, true)}: version ${view.shown ? view.shown.version : m.version}, after ${m.event.type}; ${m.waiting} waiting.`;
      $("to-live").disabled = false;
      if (cursor && scale) {
        cursor.setAttribute("x1", scale.x(view.replayMs));
        cursor.setAttribute("x2", scale.x(view.replayMs));
      }
    }
    setText($("replay-label"), label);
    if (moments.length) {
      const i = view.mode === "live" ? moments.length - 1 : view.index;
      const m = moments[i];
      scrub.setAttribute("aria-valuetext", view.mode === "live" ? "live"
        : `${clock(view.replayAt, true)}, ${m.waiting} waiting, after ${m.event.type}`);
    }
    $("step-forward").disabled = view.mode === "live";
    $("step-back").disabled = !moments.length || (view.mode === "replay" && view.index === 0);
    document.body.dataset.mode = view.mode;
    if (view.mode === "replay") document.body.dataset.replayAt = view.replayAt;
    else delete document.body.dataset.replayAt;
    showBanner();
  }

  let seekSeq = 0;
  let seekTimer = null;
  /// Shows the Board as it stood at `at` (the exact string sent as asOf), moment `i`.
  function seek(i, at) {
    const moments = timeline.moments;
    if (!moments.length) return;
    i = Math.max(0, Math.min(moments.length - 1, i));
    view.mode = "replay";
    view.index = i;
    view.replayAt = at || moments[i].at;
    view.replayMs = ms(view.replayAt);
    // The moment is in the address, to come back to or send to a colleague.
    history.replaceState(null, "", location.pathname + location.search + "#at=" + encodeURIComponent(view.replayAt));
    $("scrub").value = String(i);
    document.body.classList.remove("stale");
    document.body.dataset.loading = "true";
    showReplayState();
    clearTimeout(seekTimer);
    const seq = ++seekSeq;
    seekTimer = setTimeout(async () => {
      try {
        const data = await C.query(AS_OF, { id: boardId, at: view.replayAt });
        if (seq !== seekSeq || view.mode !== "replay") return;
        if (data.board) render(data.board);
        delete document.body.dataset.loading;
        document.body.dataset.shownAt = view.replayAt;
        showReplayState();
      } catch (e) {
        if (seq === seekSeq) $("replay-label").textContent = `Could not load that moment: ${e.message}`;
      }
    }, 120);
  }

  function seekPeak(p) {
    const m = timeline.moments[p.i];
    // Just before the wait fell: the moment's own version, its waits at their longest.
    const before = p.t - 1;
    const at = before > m.ms + 1 ? new Date(before).toISOString() : m.at;
    seek(p.i, at);
  }

  /// Opened with `#at=<time>`: replay that moment.
  function openLinkedMoment() {
    const at = new URLSearchParams(location.hash.slice(1)).get("at");
    const t = ms(at);
    const moments = timeline.moments;
    if (!at || Number.isNaN(t) || !moments.length) return;
    let i = moments.findIndex((m) => m.at === at);
    if (i < 0) {
      // The last moment recorded by then (a moment's millisecond time may round down).
      i = 0;
      while (i + 1 < moments.length && moments[i + 1].ms < t) i++;
    }
    seek(i, at);
  }

  function backToLive() {
    seekSeq += 1;
    view.mode = "live";
    view.index = null;
    delete document.body.dataset.loading;
    delete document.body.dataset.shownAt;
    if (view.live) render(view.live);
    history.replaceState(null, "", location.pathname + location.search);
    $("scrub").value = $("scrub").max;
    showConnection();
    showReplayState();
  }

  $("scrub").addEventListener("input", () => seek(Number($("scrub").value)));
  $("step-back").addEventListener("click", () =>
    seek(view.mode === "live" ? timeline.moments.length - 1 : view.index - 1));
  $("step-forward").addEventListener("click", () => {
    if (view.mode !== "replay") return;
    if (view.index >= timeline.moments.length - 1) backToLive();
    else seek(view.index + 1);
  });
  $("to-live").addEventListener("click", backToLive);
  $("banner-live").addEventListener("click", backToLive);
  $("chart").addEventListener("click", (e) => {
    if (!scale || e.target.classList.contains("peak")) return;
    const box = $("chart").getBoundingClientRect();
    const t = scale.t0 + ((e.clientX - box.left) / box.width * W - PAD_L) / (W - PAD_L - PAD_R) * (scale.t1 - scale.t0);
    const moments = timeline.moments;
    let i = 0;
    while (i + 1 < moments.length && moments[i + 1].ms <= t) i++;
    seek(i);
  });

  // ---------------------------------------------------------------- controls

  for (const id of ["search", "show", "provider-status"]) $(id).addEventListener("input", applyFilters);
  $("toolbar").addEventListener("submit", (e) => e.preventDefault());
  $("zone").addEventListener("change", () => {
    C.setTimeZone($("zone").value);
    // A choice made here replaces a `?tz=` the page was opened with.
    const params = new URLSearchParams(location.search);
    if (params.has("tz")) {
      params.delete("tz");
      history.replaceState(null, "", location.pathname + (params.size ? "?" + params : "") + location.hash);
    }
    zonesFor = null;
    if (view.shown) render(view.shown);
    if (timeline.moments.length) drawTimeline();
  });

  setInterval(() => {
    tick();
    if (view.mode === "live" && timeline.moments.length) showReplayState();
  }, 1000);
  showConnection();
})();
