/*
 * <live-leaderboard>: a live timing screen for one race, fed by the chequered gateway.
 *
 * One script tag and one element:
 *   <script src="http://HOST:PORT/leaderboard.js"></script>
 *   <live-leaderboard race="alms-2013-monterey-race" class="GT"></live-leaderboard>
 * The element subscribes over the gateway's websocket (snapshot, then deltas with
 * seq/prev_seq), reconnects by itself, and resubscribes when it notices a gap.
 * docs/WIDGET.md lists its attributes, styling hooks and data attributes.
 */
(() => {
  "use strict";

  const SCRIPT = document.currentScript;
  const BASE = new URL(".", SCRIPT && SCRIPT.src ? SCRIPT.src : location.href);

  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  const PING_EVERY_MS = 15000;
  const SILENCE_LIMIT_MS = 45000; // no frame for this long: the connection is presumed dead
  const RESUBSCRIBE_UNKNOWN_MS = 5000; // the race may not have started yet
  const CLOCK_TICK_MS = 250;
  const RENDER_FALLBACK_MS = 250;
  const FLASH_MS = 1400; // as long as the flash animations in leaderboard.css

  // Compact mode's columns unless `columns` names others: what an overlay has room for.
  const COMPACT_COLUMNS = ["pos", "car", "driver", "gap", "pit"];

  const FLAGS = {
    green: "GREEN FLAG",
    fcy: "FULL COURSE YELLOW",
    red: "RED FLAG",
    chequered: "CHEQUERED FLAG",
  };

  // Columns: key, heading, and when they hide: narrow false under 600px, "mid" under 440px
  // (the class then still shows as the colour bar beside the car number).
  const COLUMNS = [
    { key: "pos", head: "Pos", title: "Overall position" },
    { key: "pic", head: "PIC", title: "Position in class", narrow: "mid" },
    { key: "car", head: "No.", title: "Car number" },
    { key: "cls", head: "Class", narrow: "mid" },
    { key: "team", head: "Team", narrow: false },
    { key: "driver", head: "Driver" },
    { key: "laps", head: "Laps", narrow: "mid" },
    { key: "gap", head: "Gap", title: "Gap to the leader" },
    { key: "int", head: "Int", title: "Interval to the car ahead", narrow: false },
    { key: "last", head: "Last" },
    { key: "best", head: "Best", narrow: false },
    { key: "sectors", head: "Sectors", narrow: false },
    { key: "pits", head: "Pits", title: "Pit stops", narrow: false },
    { key: "pit", head: "Pit", title: "In pit lane / out lap" },
    { key: "stint", head: "Stint", title: "Laps in this stint", narrow: false },
    { key: "gained", head: "+/-", title: "Places gained since the start", narrow: false },
    { key: "status", head: "Status", narrow: false },
  ];

  // -- formatting ---------------------------------------------------------

  function lapTime(ms) {
    if (ms === null || ms === undefined) return "";
    const minutes = Math.floor(ms / 60000);
    const seconds = ((ms % 60000) / 1000).toFixed(3).padStart(6, "0");
    return minutes ? `${minutes}:${seconds}` : (ms / 1000).toFixed(3);
  }

  function gapText(ms, laps) {
    if (laps) return `+${laps} ${laps === 1 ? "lap" : "laps"}`;
    if (ms === null || ms === undefined) return "";
    return `+${lapTime(ms)}`;
  }

  function clockText(ms) {
    if (ms === null || ms === undefined) return "--:--:--";
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = String(Math.floor((total % 3600) / 60)).padStart(2, "0");
    const s = String(total % 60).padStart(2, "0");
    return `${h}:${m}:${s}`;
  }

  // `held` with the fields of `patch` set; a field set to null is left out, as a snapshot
  // leaves it out. A new object: rows handed to listeners are never changed afterwards.
  function merged(held, patch) {
    const out = { ...held };
    for (const [key, value] of Object.entries(patch)) {
      if (value === null) delete out[key];
      else out[key] = value;
    }
    return out;
  }

  /** The board tells the result: the official classification, or the provisional one
   *  (the order at the flag, before post-race decisions). */
  function decided(session) {
    return Boolean(session.finished || session.provisional);
  }

  function classSlug(cls) {
    return String(cls).replace(/[^A-Za-z0-9_-]/g, "_");
  }

  function wsUrl(server, token) {
    let url;
    if (server) {
      url = new URL(server, location.href);
    } else {
      url = new URL("ws", BASE);
    }
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (url.pathname === "/" || url.pathname === "") url.pathname = "/ws";
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  function backoff(attempt) {
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** attempt);
    return ceiling * (0.5 + Math.random() * 0.5); // jitter: clients do not come back in step
  }

  const TEMPLATE = `
    <div class="board" part="board" data-flag="green">
      <header class="head" part="header">
        <div class="title">
          <span class="name" part="name">Live timing</span>
          <span class="conn" part="connection" title="Connection"></span>
          <span class="partial" part="partial" hidden>PARTIAL</span>
          <span class="provisional" part="provisional" hidden title="Provisional classification: post-race decisions are awaited">PROVISIONAL</span>
        </div>
        <div class="facts">
          <span class="fact"><small>Clock</small><b class="clock">--:--:--</b></span>
          <span class="fact"><small>Remaining</small><b class="remaining">--:--:--</b></span>
          <span class="fact"><small>Lap</small><b class="lap">-</b></span>
          <span class="fact"><small>Replay</small><b class="speed">-</b></span>
          <span class="fact" title="Share of the laps run so far under a yellow or a red flag"><small>Yellow</small><b class="yellow">-</b></span>
        </div>
      </header>
      <div class="flag" part="flag" role="status"></div>
      <nav class="tabs" part="tabs" role="tablist"></nav>
      <div class="message" part="message" hidden></div>
      <div class="cover" part="cover" hidden>
        <p class="cover-text"></p>
        <button type="button" class="reveal" part="reveal">Show the result</button>
      </div>
      <div class="scroll">
        <table class="grid" part="table">
          <thead><tr></tr></thead>
          <tbody></tbody>
        </table>
      </div>
      <section class="rc" part="race-control" aria-label="Race control" hidden>
        <h3 class="rc-head">Race control</h3>
        <ol class="rc-feed" part="race-control-feed" aria-live="polite"></ol>
      </section>
    </div>`;

  class LiveLeaderboard extends HTMLElement {
    static get observedAttributes() {
      return [
        "race", "class", "race-class", "server", "token", "hide-tabs", "spoilers", "top", "compact",
        "columns", "hide-feed",
      ];
    }

    constructor() {
      super();
      this._root = this.attachShadow({ mode: "open" });
      const link = document.createElement("link");
      link.rel = "stylesheet";
      link.href = new URL("leaderboard.css", BASE).toString();
      this._root.appendChild(link);
      const holder = document.createElement("div");
      holder.innerHTML = TEMPLATE;
      this._board = holder.firstElementChild;
      this._root.appendChild(this._board);
      this._el = {};
      for (const name of ["name", "conn", "partial", "provisional", "clock", "remaining", "lap", "speed", "flag", "tabs", "message"]) {
        this._el[name] = this._board.querySelector(`.${name}`);
      }
      this._cover = this._board.querySelector(".cover");
      this._coverText = this._board.querySelector(".cover-text");
      this._board.querySelector(".reveal").addEventListener("click", () => this.reveal());
      this._scroll = this._board.querySelector(".scroll");
      this._head = this._board.querySelector("thead tr");
      this._body = this._board.querySelector("tbody");
      for (const col of COLUMNS) {
        const th = document.createElement("th");
        th.textContent = col.head;
        th.dataset.col = col.key;
        if (col.title) th.title = col.title;
        if (col.narrow === false) th.classList.add("wide-only");
        if (col.narrow === "mid") th.classList.add("mid-only");
        this._head.appendChild(th);
      }

      this._ws = null;
      this._attempt = 0;
      this._timers = {};
      this._subscribedRace = null;
      this._resyncing = false;
      this._session = null;
      this._cars = new Map(); // car -> row data
      this._rows = new Map(); // car -> <tr>
      this._seq = null;
      this._status = null;
      this._clockAnchor = null; // { t_ms, at, speed } for interpolating the clock
      this._filter = null; // class chosen on a tab (null: from attributes)
      this._lastFrameAt = 0;
      this._gaps = 0;
      this._flash = 0;
      this._renderQueued = false;
      this._pendingFull = false;
      this._sawRunning = false; // saw this race before its finish: the result came while watched
      this._revealed = false;
      // No attributes in the constructor: the parser may be creating this element.
    }

    // -- public surface ---------------------------------------------------

    get race() {
      return this.getAttribute("race");
    }

    set race(value) {
      if (value) this.setAttribute("race", value);
      else this.removeAttribute("race");
    }

    /** The class shown: a tab choice, else `race-class`, else a token of `class` that names one. */
    get raceClass() {
      if (this._filter !== null) return this._filter || null;
      const explicit = this.getAttribute("race-class");
      if (explicit) return explicit === "All" ? null : explicit;
      const classes = this._classes();
      for (const token of this.classList) {
        if (classes.includes(token)) return token;
      }
      return null;
    }

    set raceClass(value) {
      this._filter = value || "";
      this._render(true);
    }

    /** Spoiler-safe (`spoilers="off"`): a result not watched arriving stays hidden. */
    get spoilerSafe() {
      return this.getAttribute("spoilers") === "off";
    }

    /** Whether the board is hidden because it would show a result not watched (see WIDGET.md). */
    get covered() {
      const session = this._session;
      return Boolean(
        this.spoilerSafe && session && decided(session) && !this._sawRunning && !this._revealed,
      );
    }

    /** Show the board the spoiler-safe cover hides. */
    reveal() {
      this._revealed = true;
      this._render(true);
      this._emitStandings("delta", []);
    }

    get snapshot() {
      if (!this._session) return null;
      return {
        race: this.race,
        seq: this._seq,
        session: this._session,
        cars: [...this._cars.values()].sort((a, b) => a.position - b.position),
      };
    }

    connectedCallback() {
      this.dataset.gaps = String(this._gaps);
      this._setState("idle");
      this._connect();
      this._timers.clock = setInterval(() => this._tickClock(), CLOCK_TICK_MS);
    }

    disconnectedCallback() {
      cancelAnimationFrame(this._timers.frame);
      this._renderQueued = false;
      for (const id of Object.values(this._timers)) {
        clearInterval(id);
        clearTimeout(id);
      }
      this._timers = {};
      if (this._ws) {
        this._ws.onclose = null;
        this._ws.close(1000, "element removed");
        this._ws = null;
      }
      this._setState("idle");
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (oldValue === newValue || !this.isConnected) return;
      if (name === "server" || name === "token") {
        this._reconnectNow();
      } else if (name === "race") {
        this._filter = null;
        this._reset();
        this._subscribe();
      } else if (["spoilers", "top", "compact", "columns", "hide-feed"].includes(name)) {
        this._render(true);
        this._emitStandings("delta", []);
      } else {
        if (name !== "hide-tabs") this._filter = null;
        this._render(true);
      }
    }

    // -- connection -------------------------------------------------------

    _connect() {
      if (this._ws || !this.isConnected) return;
      this._setState("connecting");
      let ws;
      try {
        ws = new WebSocket(wsUrl(this.getAttribute("server"), this.getAttribute("token")));
      } catch (err) {
        this._showMessage(`Cannot connect: ${err.message}`);
        this._scheduleReconnect();
        return;
      }
      this._ws = ws;
      ws.onopen = () => {
        this._lastFrameAt = Date.now();
        this._subscribedRace = null;
        this._setState(this.race ? "waiting" : "connected");
        this._subscribe();
        this._timers.ping = setInterval(() => this._keepAlive(), PING_EVERY_MS);
      };
      ws.onmessage = (event) => {
        this._lastFrameAt = Date.now();
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          return; // the gateway only sends JSON; anything else is not ours to show
        }
        this._onMessage(message);
      };
      ws.onclose = () => {
        clearInterval(this._timers.ping);
        this._ws = null;
        this._subscribedRace = null;
        this._setState("offline");
        this._scheduleReconnect();
      };
      ws.onerror = () => {
        // onclose follows and reconnects
      };
    }

    _scheduleReconnect() {
      clearTimeout(this._timers.reconnect);
      const delay = backoff(this._attempt++);
      this._timers.reconnect = setTimeout(() => this._connect(), delay);
    }

    _reconnectNow() {
      if (this._ws) {
        this._ws.onclose = null;
        this._ws.close(1000, "server changed");
        this._ws = null;
      }
      this._attempt = 0;
      this._connect();
    }

    _keepAlive() {
      if (!this._ws || this._ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this._lastFrameAt > SILENCE_LIMIT_MS) {
        this._ws.close(4000, "silent connection");
        return;
      }
      this._send({ op: "ping" });
    }

    _send(message) {
      if (this._ws && this._ws.readyState === WebSocket.OPEN) {
        this._ws.send(JSON.stringify(message));
        return true;
      }
      return false;
    }

    _subscribe() {
      const race = this.race;
      clearTimeout(this._timers.resubscribe);
      if (this._subscribedRace && this._subscribedRace !== race) {
        this._send({ op: "unsubscribe", race: this._subscribedRace });
        this._subscribedRace = null;
      }
      if (!race) {
        this._showMessage("No race chosen.");
        return;
      }
      // The whole race: tabs then filter here, without a round trip.
      if (this._send({ op: "subscribe", race })) {
        this._subscribedRace = race;
        this._setState("waiting");
      }
    }

    _resync() {
      this._gaps += 1;
      this.dataset.gaps = String(this._gaps);
      this._resyncing = true;
      this._setState("resync");
      this._subscribe();
    }

    // -- messages ---------------------------------------------------------

    _onMessage(message) {
      if (message.race && message.race !== this.race) return;
      switch (message.type) {
        case "snapshot":
          this._attempt = 0;
          this._resyncing = false;
          this._applySnapshot(message);
          break;
        case "delta":
          if (this._resyncing) return; // a fresh snapshot is on its way
          if (this._seq === null || message.prev_seq !== this._seq) {
            this._resync();
            return;
          }
          this._applyDelta(message);
          break;
        case "status":
          this._status = message;
          this.dataset.raceState = message.state || "";
          if (message.t_ms !== undefined) this._anchorClock(message.t_ms);
          this._renderHeader();
          break;
        case "subscribed":
          this._setState("waiting");
          this._showMessage("Waiting for the standings…");
          break;
        case "error":
          this._onError(message);
          break;
        default:
          break; // pong, races, unsubscribed: nothing to show
      }
    }

    _onError(message) {
      if (message.error === "unknown_race") {
        this._subscribedRace = null;
        this._setState("unknown");
        this._showMessage(`Race “${this.race}” is not on air (yet).`);
        clearTimeout(this._timers.resubscribe);
        this._timers.resubscribe = setTimeout(() => this._subscribe(), RESUBSCRIBE_UNKNOWN_MS);
      } else {
        this._showMessage(`${message.error}: ${message.detail}`);
      }
    }

    _reset() {
      this._session = null;
      this._cars.clear();
      for (const tr of this._rows.values()) tr.remove();
      this._rows.clear();
      this._seq = null;
      this._status = null;
      this._clockAnchor = null;
      this._sawRunning = false;
      this._revealed = false;
      delete this.dataset.seq;
      delete this.dataset.raceState;
      this._raceControlSnapshot([]);
      this._emitStandings("reset", []);
    }

    _applySnapshot(snap) {
      const fresh = this._session === null;
      this._session = snap.session;
      if (!decided(snap.session)) this._sawRunning = true;
      this._cars = new Map(snap.cars.map((row) => [row.car, row]));
      for (const [car, tr] of this._rows) {
        if (!this._cars.has(car)) {
          tr.remove();
          this._rows.delete(car);
        }
      }
      this._seq = snap.seq;
      this._anchorClock(snap.session.t_ms);
      this._showMessage(null);
      this._setState("live");
      this._raceControlSnapshot(snap.messages || []);
      this._scheduleRender(fresh);
      this._emitStandings("snapshot", snap.cars);
    }

    // A delta carries, per car that changed and for the session, only the fields that
    // changed: each is merged into what is held. Listeners get the whole rows it changed.
    _applyDelta(delta) {
      const patches = delta.cars || [];
      if (patches.some((patch) => !this._cars.has(patch.car))) {
        this._resync(); // a car the board lacks: only a snapshot can bring its whole row
        return;
      }
      if (delta.session) {
        this._session = merged(this._session, delta.session);
        if (!decided(this._session)) this._sawRunning = true;
        if (delta.session.t_ms !== undefined) this._anchorClock(this._session.t_ms);
      }
      const rows = patches.map((patch) => {
        const row = merged(this._cars.get(patch.car), patch);
        this._cars.set(row.car, row);
        return row;
      });
      this._seq = delta.seq;
      this._raceControlAdd(delta.messages || []);
      this._scheduleRender(false);
      this._emitStandings("delta", rows);
    }

    // Every frame applied, not every frame drawn: listeners (<live-charts>) keep a history
    // that a coalesced render would leave holes in. `cars` holds only the rows that changed.
    _emitStandings(kind, cars) {
      const detail = { kind, race: this.race, seq: this._seq, session: this._session, cars };
      this.dispatchEvent(new CustomEvent("lb-standings", { detail }));
    }

    // Frames may come far faster than a screen can show them (a fast replay): the model
    // takes every one at once, the table is drawn at most once per animation frame.
    _scheduleRender(full) {
      this._pendingFull = Boolean(this._pendingFull || full);
      if (this._renderQueued) return;
      this._renderQueued = true;
      const run = () => {
        if (!this._renderQueued) return;
        this._renderQueued = false;
        cancelAnimationFrame(this._timers.frame);
        clearTimeout(this._timers.frameFallback);
        const fullRender = this._pendingFull;
        this._pendingFull = false;
        this._render(fullRender);
      };
      this._timers.frame = requestAnimationFrame(run);
      // rAF pauses in hidden tabs; the table still catches up, a few times a second.
      this._timers.frameFallback = setTimeout(run, RENDER_FALLBACK_MS);
    }

    _setState(state) {
      this.dataset.state = state;
      const conn = this._el.conn;
      if (conn) {
        conn.dataset.state = state;
        conn.textContent = state === "live" ? "LIVE" : state.toUpperCase();
      }
    }

    _showMessage(text) {
      const box = this._el.message;
      box.hidden = !text;
      box.textContent = text || "";
    }

    // -- clock ------------------------------------------------------------

    _anchorClock(t_ms) {
      this._clockAnchor = { t_ms, at: performance.now() };
      this._tickClock();
    }

    _speed() {
      if (this._status && "speed" in this._status) return this._status.speed;
      return this._session ? this._session.speed : undefined;
    }

    _running() {
      const session = this._session;
      if (!session || session.finished || session.paused) return false;
      return !this._status || this._status.state === "running";
    }

    _tickClock() {
      const session = this._session;
      if (!session || !this._clockAnchor) return;
      if (this.covered) {
        // The clock at the end says how long the race ran (a race stopped early, say).
        this._el.clock.textContent = "--:--:--";
        this._el.remaining.textContent = "--:--:--";
        return;
      }
      let t = this._clockAnchor.t_ms;
      const speed = this._speed();
      // Between frames the race clock runs on at the replay speed (never past the next frame's).
      if (this._running() && typeof speed === "number") {
        t += Math.min((performance.now() - this._clockAnchor.at) * speed, 60000 * speed);
      }
      this._el.clock.textContent = clockText(t);
      if (session.remaining_ms !== null && session.remaining_ms !== undefined) {
        const left = session.remaining_ms - (t - this._clockAnchor.t_ms);
        this._el.remaining.textContent = clockText(Math.max(0, left));
      } else if (session.laps_total) {
        this._el.remaining.textContent = `${Math.max(0, session.laps_total - session.leader_laps)} laps`;
      } else {
        this._el.remaining.textContent = "--:--:--";
      }
    }

    // -- rendering --------------------------------------------------------

    _classes() {
      const session = this._session;
      const classes = session && session.classes ? [...session.classes] : [];
      for (const row of this._cars.values()) {
        if (!classes.includes(row.cls)) classes.push(row.cls);
      }
      return classes;
    }

    _renderHeader() {
      const session = this._session;
      if (!session) return;
      this._el.name.textContent = session.name || this.race;
      const flag = session.finished ? "chequered" : session.flag || "green";
      this._board.dataset.flag = flag;
      this.dataset.flag = flag;
      this.dataset.finished = session.finished ? "true" : "false";
      this._el.flag.textContent = this._flagText(flag, session);
      // Between the flag and the stewards' decisions the order is the road's, not yet official.
      this._el.provisional.hidden = !session.provisional;
      this.dataset.provisional = session.provisional ? "true" : "false";
      if (session.provisional) this._el.flag.textContent += " · PROVISIONAL CLASSIFICATION";
      this._renderYellowShare(session);
      // Events the standings never saw (joined mid-race, or lost on the way): say the board
      // may be short of laps, best laps and pit stops until the race is folded again.
      const gaps = session.gaps || 0;
      this._el.partial.hidden = gaps <= 0;
      this.dataset.partial = gaps > 0 ? "true" : "false";
      this._el.partial.title =
        gaps > 0
          ? `Partial board: ${gaps} timing event${gaps === 1 ? "" : "s"} of this race were not ` +
            "seen (timing joined mid-race), so laps, best laps and pit stops may be incomplete " +
            "until the replay is sought back to its start."
          : "";
      this._el.lap.textContent = session.laps_total
        ? `${session.leader_laps}/${session.laps_total}`
        : String(session.leader_laps || 0);
      const speed = this._speed();
      const state = this._status ? this._status.state : null;
      let speedText = speed === null ? "max" : typeof speed === "number" ? `×${speed}` : "-";
      if (session.paused || state === "paused") speedText = `paused (${speedText})`;
      else if (state === "finished" || session.finished) speedText = "finished";
      else if (state === "offline") speedText = "offline";
      this._el.speed.textContent = speedText;
      if (this.covered) {
        // The laps run and the flag would tell how the race ended: neither shows.
        this._el.lap.textContent = "-";
        this._el.flag.textContent = "SPOILER-SAFE";
      }
      this._tickClock();
    }

    _renderTabs(current) {
      const tabs = this._el.tabs;
      tabs.hidden = this.hasAttribute("hide-tabs");
      const names = ["All", ...this._classes()];
      const have = [...tabs.children].map((b) => b.dataset.tab).join("|");
      if (have !== names.join("|")) {
        tabs.textContent = "";
        for (const name of names) {
          const button = document.createElement("button");
          button.type = "button";
          button.textContent = name;
          button.dataset.tab = name;
          button.setAttribute("role", "tab");
          button.setAttribute("part", "tab");
          if (name !== "All") button.classList.add("cls", `cls-${classSlug(name)}`);
          button.addEventListener("click", () => {
            this.raceClass = name === "All" ? "" : name;
          });
          tabs.appendChild(button);
        }
      }
      for (const button of tabs.children) {
        const selected = (button.dataset.tab === "All" && !current) || button.dataset.tab === current;
        button.setAttribute("aria-selected", selected ? "true" : "false");
      }
    }

    _render(full) {
      if (!this._session) return;
      if (this._seq !== null) this.dataset.seq = String(this._seq);
      this._renderHeader();
      const cls = this.raceClass;
      this.dataset.filter = cls || "All";
      this._renderTabs(cls);
      const covered = this.covered;
      this.dataset.covered = covered ? "true" : "false";
      this._cover.hidden = !covered;
      this._scroll.hidden = covered;
      if (covered) {
        this._el.tabs.hidden = true;
        this._coverText.textContent =
          "Spoiler-safe: the replay of this race has already finished, so the board would show " +
          "the result. Seek the replay back to watch it, or show the result now.";
      }
      const rows = [...this._cars.values()].sort((a, b) => a.position - b.position);
      let shown = cls ? rows.filter((row) => row.cls === cls) : rows;
      // top="N": the first N of the view (an overlay's top ten, say).
      const top = Number.parseInt(this.getAttribute("top") || "", 10);
      if (top > 0) shown = shown.slice(0, top);
      const columns = this._columns();
      if (full || columns.join(" ") !== this._columnsShown) {
        this._columnsShown = columns.join(" ");
        for (const th of this._head.children) th.hidden = !columns.includes(th.dataset.col);
        for (const tr of this._rows.values()) {
          for (const td of tr.children) td.hidden = !columns.includes(td.dataset.col);
        }
      }
      const overallBest = this._overallBest();
      let order = 0;
      let moved = false;
      const want = new Set(shown.map((row) => row.car));
      for (const [car, tr] of this._rows) {
        if (!want.has(car)) {
          tr.remove();
          this._rows.delete(car);
        }
      }
      for (const row of shown) {
        let tr = this._rows.get(row.car);
        const isNew = !tr;
        if (isNew) {
          tr = this._newRow(row);
          this._rows.set(row.car, tr);
        }
        this._fillRow(tr, row, { cls, overallBest, animate: !full && !isNew });
        if (this._body.children[order] !== tr) moved = true;
        order += 1;
      }
      if (moved) {
        // Appending in order moves the existing rows; untouched rows keep their state.
        for (const row of shown) this._body.appendChild(this._rows.get(row.car));
      }
      this._renderRaceControl();
    }

    /** The columns shown: `columns` (keys, space-separated), else compact's few, else all. */
    _columns() {
      const keys = COLUMNS.map((col) => col.key);
      const asked = (this.getAttribute("columns") || "").split(/[\s,]+/).filter((k) => keys.includes(k));
      if (asked.length) return asked.filter((k, i) => asked.indexOf(k) === i).sort(
        (a, b) => keys.indexOf(a) - keys.indexOf(b),
      );
      if (!this.hasAttribute("compact")) return keys;
      // On one class the position that matters is the one in class.
      return this.raceClass ? COMPACT_COLUMNS.map((k) => (k === "pos" ? "pic" : k)) : COMPACT_COLUMNS;
    }

    _overallBest() {
      const fastest = this._session.fastest || {};
      let best = null;
      for (const entry of Object.values(fastest)) {
        if (best === null || entry.lap_ms < best.lap_ms) best = entry;
      }
      return best;
    }

    _newRow(row) {
      const tr = document.createElement("tr");
      tr.setAttribute("part", "row");
      tr.dataset.car = row.car;
      tr.classList.add(`cls-${classSlug(row.cls)}`);
      for (const col of COLUMNS) {
        const td = document.createElement("td");
        td.dataset.col = col.key;
        if (col.narrow === false) td.classList.add("wide-only");
        if (col.narrow === "mid") td.classList.add("mid-only");
        if (col.key === "cls") td.classList.add("cls-chip");
        td.hidden = this._columnsShown !== undefined && !this._columnsShown.split(" ").includes(col.key);
        tr.appendChild(td);
      }
      return tr;
    }

    _fillRow(tr, row, { cls, overallBest, animate }) {
      const previous = tr.dataset.position ? Number(tr.dataset.position) : null;
      const position = cls ? row.class_position : row.position;
      tr.dataset.position = String(row.position);
      tr.dataset.classPosition = String(row.class_position);
      tr.dataset.class = row.cls;
      tr.dataset.status = row.status || "running";
      tr.classList.toggle("retired", row.status === "retired" || row.status === "dns");
      tr.classList.toggle("in-pit", Boolean(row.in_pit));

      const classFastest = (this._session.fastest || {})[row.cls];
      const cells = {
        pos: String(row.position),
        pic: String(row.class_position),
        car: row.car,
        cls: row.cls,
        team: row.team || "",
        driver: row.driver || "",
        laps: String(row.laps || 0),
        gap: cls
          ? row.class_position === 1
            ? "Leader"
            : gapText(row.class_gap_ms, row.class_gap_laps)
          : row.position === 1
            ? "Leader"
            : gapText(row.gap_ms, row.gap_laps),
        int: cls
          ? row.class_position === 1
            ? ""
            : gapText(row.class_interval_ms, row.class_interval_laps)
          : row.position === 1
            ? ""
            : gapText(row.interval_ms, row.interval_laps),
        last: lapTime(row.last_lap_ms),
        best: lapTime(row.best_lap_ms),
        sectors: (row.sectors_ms || []).map((s) => (s === null ? "-" : (s / 1000).toFixed(1))).join(" "),
        pits: String(row.pit_stops || 0),
        pit: row.in_pit ? "IN PIT" : row.out_lap ? "OUT" : "",
        stint: String(row.stint_laps || 0),
        gained: row.gained > 0 ? `▲${row.gained}` : row.gained < 0 ? `▼${-row.gained}` : "–",
        // In the pit is the pit column's to say; status names what ends a race.
        status: ["retired", "finished", "dns"].includes(row.status) ? row.status.toUpperCase() : "",
      };
      const now = performance.now();
      for (const td of tr.children) {
        const key = td.dataset.col;
        const text = cells[key];
        if (td.textContent !== text) {
          td.textContent = text;
          if (animate) this._flashCell(td, now);
        }
      }
      const at = (key) => tr.querySelector(`td[data-col="${key}"]`);
      const last = at("last");
      last.classList.toggle("overall-best", Boolean(row.last_is_overall_best));
      last.classList.toggle("class-best", Boolean(row.last_is_class_best && !row.last_is_overall_best));
      last.classList.toggle(
        "personal-best",
        Boolean(row.last_is_personal_best && !row.last_is_class_best && !row.last_is_overall_best),
      );
      const best = at("best");
      const holdsOverall = overallBest && overallBest.car === row.car;
      const holdsClass = classFastest && classFastest.car === row.car;
      best.classList.toggle("overall-best", Boolean(holdsOverall));
      best.classList.toggle("class-best", Boolean(holdsClass && !holdsOverall));
      const pit = at("pit");
      pit.classList.toggle("badge", Boolean(row.in_pit || row.out_lap));
      pit.dataset.pit = row.in_pit ? "in" : row.out_lap ? "out" : "";
      const gained = at("gained");
      gained.dataset.dir = row.gained > 0 ? "up" : row.gained < 0 ? "down" : "";
      // A penalty shows beside the car number (a CSS badge, so the cell's text stays the
      // number) in every layout, and in full in the row's tooltip.
      const car = at("car");
      if (row.penalty) {
        car.dataset.penalty = row.penalty;
        tr.dataset.penalty = row.penalty;
        tr.title = `#${row.car} penalty: ${row.penalty}`;
      } else if (car.dataset.penalty !== undefined) {
        delete car.dataset.penalty;
        delete tr.dataset.penalty;
        tr.removeAttribute("title");
      }

      if (animate && previous !== null && previous !== row.position) {
        const dir = row.position < previous ? "up" : "down";
        tr.dataset.moved = dir;
        this._flashRow(tr, dir);
      }
    }

    // Two identical animations under different names: switching between them restarts the
    // animation without forcing a layout.
    _flashCell(td, now) {
      // A cell already lit stays lit rather than restarting: at high replay speeds values
      // change every frame, and restarting hundreds of animations would swamp the page.
      if (now - (td._flashedAt || -Infinity) < FLASH_MS) return;
      td._flashedAt = now;
      this._flash ^= 1;
      td.classList.remove("flash-a", "flash-b");
      td.classList.add(this._flash ? "flash-a" : "flash-b");
    }

    _flashRow(tr, dir) {
      this._flash ^= 1;
      tr.classList.remove("moved-up-a", "moved-up-b", "moved-down-a", "moved-down-b");
      tr.classList.add(`moved-${dir}-${this._flash ? "a" : "b"}`);
    }
  }

  // -- race control: the message feed, the flag's cause, the share of laps under yellow ------
  //
  // The board's snapshot holds the latest race-control messages, each delta the new ones
  // (docs/PROTOCOL.md); the feed shows them newest first, coloured by category, and the
  // cars of the newest one (or of the one under the pointer) are highlighted in the table.

  const MESSAGES_KEPT = 30; // as chequered.contract.board.MESSAGES_KEPT
  const CATEGORIES = {
    flag: "FLAG",
    incident: "INCIDENT",
    penalty: "PENALTY",
    pit: "PIT",
    retirement: "RETIRED",
    information: "INFO",
  };
  // Facts no source states: the feed says so beside the message.
  const HEDGED = { inferred: "inferred", model: "simulated" };

  const RaceControlSection = {
    _raceControlSnapshot(messages) {
      this._rcMessages = messages.slice(-MESSAGES_KEPT);
      this._rcDirty = true;
    },

    _raceControlAdd(messages) {
      const kept = this._rcMessages || [];
      const last = kept.length ? kept[kept.length - 1].seq : 0;
      const fresh = messages.filter((m) => m.seq > last);
      if (!fresh.length) return;
      this._rcMessages = kept.concat(fresh).slice(-MESSAGES_KEPT);
      this._rcDirty = true;
    },

    /** The race-control messages held, oldest first. */
    get messages() {
      return (this._rcMessages || []).slice();
    },

    _flagText(flag, session) {
      const text = FLAGS[flag] || flag.toUpperCase();
      const reason = session.flag_reason;
      // Why the race is neutralised; a green or chequered flag needs no cause.
      return (flag === "fcy" || flag === "red") && reason ? `${text} · ${reason}` : text;
    },

    _renderYellowShare(session) {
      if (!this._el.yellow) this._el.yellow = this._board.querySelector(".yellow");
      const run = session.laps_run || 0;
      const share = run ? (100 * (session.laps_neutralised || 0)) / run : null;
      this._el.yellow.textContent = share === null || this.covered ? "-" : `${Math.round(share)}%`;
      this.dataset.yellowShare = share === null ? "" : share.toFixed(1);
      // A synthesised race runs as much yellow as its result needs: say so where it shows.
      this.dataset.synthesised = session.synthesised ? "true" : "false";
      this._el.yellow.parentElement.title = session.synthesised
        ? "Share of the laps run so far under a yellow or a red flag. This race is synthesised " +
          "from its result, which needs this much running behind the safety car."
        : "Share of the laps run so far under a yellow or a red flag";
      this._el.yellow.previousElementSibling.textContent = session.synthesised
        ? "Yellow (sim)"
        : "Yellow";
    },

    _renderRaceControl() {
      const section = this._board.querySelector(".rc");
      const messages = this._rcMessages || [];
      // Spoiler-safe cover: the feed would tell the result as well as the board.
      section.hidden = this.hasAttribute("hide-feed") || this.covered || !messages.length;
      this.dataset.messages = String(messages.length);
      if (this._rcDirty) {
        this._rcDirty = false;
        const feed = section.querySelector(".rc-feed");
        feed.textContent = "";
        for (const message of [...messages].reverse()) feed.appendChild(this._rcItem(message));
        // Newest first: a new message shows at the top, unless the viewer is reading one.
        if (!this._rcPointed) feed.scrollTop = 0;
      }
      const newest = messages.length ? messages[messages.length - 1] : null;
      const shown = this._rcPointed || newest;
      const cars = new Set(shown ? shown.cars || [] : []);
      this.dataset.highlight = [...cars].join(" ");
      for (const [car, tr] of this._rows) {
        const on = cars.has(car);
        tr.classList.toggle("rc-involved", on);
        if (on) tr.dataset.rc = shown.category;
        else delete tr.dataset.rc;
      }
    },

    _rcItem(message) {
      const li = document.createElement("li");
      li.className = "rc-item";
      li.setAttribute("part", "race-control-item");
      li.tabIndex = 0;
      li.dataset.seq = String(message.seq);
      li.dataset.category = message.category;
      li.dataset.cars = (message.cars || []).join(" ");
      li.dataset.provenance = message.provenance || "timing";
      const when = document.createElement("span");
      when.className = "rc-when";
      when.textContent = `L${message.lap} · ${clockText(message.t_ms)}`;
      const cat = document.createElement("span");
      cat.className = "rc-cat";
      cat.textContent = CATEGORIES[message.category] || message.category.toUpperCase();
      const text = document.createElement("span");
      text.className = "rc-text";
      text.textContent = message.text;
      li.append(when, cat, text);
      const hedge = HEDGED[message.provenance];
      if (hedge) {
        const source = document.createElement("span");
        source.className = "rc-source";
        source.textContent = hedge;
        source.title =
          hedge === "inferred"
            ? "A reading of the sources, which do not state it"
            : "Made up by the simulation: no source records it";
        li.appendChild(source);
      }
      const point = (on) => {
        this._rcPointed = on ? message : null;
        this._renderRaceControl();
      };
      li.addEventListener("mouseenter", () => point(true));
      li.addEventListener("mouseleave", () => point(false));
      li.addEventListener("focus", () => point(true));
      li.addEventListener("blur", () => point(false));
      return li;
    },
  };
  Object.defineProperties(
    LiveLeaderboard.prototype,
    Object.getOwnPropertyDescriptors(RaceControlSection),
  );

  if (!customElements.get("live-leaderboard")) {
    customElements.define("live-leaderboard", LiveLeaderboard);
  }
  window.LiveLeaderboard = LiveLeaderboard;
  window.LiveLeaderboard.serverUrl = wsUrl;
})();

/*
 * <live-charts>: gap, lap and lap-time charts of a race, drawn from a <live-leaderboard>'s
 * own standings stream (no second connection, no second data source). In this file, so
 * that the one script tag of an embed brings both elements:
 *
 *   <live-leaderboard id="board" race="alms-2013-monterey-race"></live-leaderboard>
 *   <live-charts for="board"></live-charts>
 *
 * The leaderboard fires `lb-standings` for every snapshot and delta it applies; this element
 * keeps, per car and per lap, the car's standing while it had completed that many laps (as
 * last seen), and redraws at most every CHART_FRAME_MS: at 1000x frames arrive far faster
 * than charts need drawing, so drawing is coalesced while no frame's data is skipped.
 * docs/WIDGET.md describes what each chart shows.
 */
(() => {
  "use strict";

  const SCRIPT = document.currentScript;
  const BASE = new URL(".", SCRIPT && SCRIPT.src ? SCRIPT.src : location.href);
  const CHART_FRAME_MS = 250; // most redraws a second: 4
  const GAP_CAP_MS = 180000; // gaps beyond 3 minutes are drawn on the edge of the gap chart
  const SCATTER_SPAN = 1.25; // lap times above best x 1.25 (pit stops, yellows) sit on the edge
  const PALETTE = [
    "#e3262b", "#2f7cf6", "#f08a00", "#22a447", "#c8a200", "#b04fff", "#00b8c4", "#ff6fae",
    "#8ac926", "#ff924c", "#6a8dff", "#ffd23f", "#3ddc97", "#c77dff", "#ef476f", "#4cc9f0",
    "#f4a261", "#90be6d", "#e76f51", "#a0c4ff",
  ];

  const KINDS = {
    gap: { title: "Gap to the leader", unit: "s" },
    lap: { title: "Position by lap", unit: "" },
    times: { title: "Lap times", unit: "s" },
  };

  const TEMPLATE = `
    <div class="charts" part="charts">
      <div class="ch-bar"><h2>Charts</h2><nav class="ch-tabs" part="chart-tabs" role="tablist"></nav><span class="ch-state" part="chart-state" role="status"></span></div>
      <div class="ch-empty" part="chart-empty">No laps yet: the charts fill in as cars cross the line.</div>
      <div class="ch-grid" hidden>
        <figure data-chart="gap"><figcaption></figcaption><canvas></canvas></figure>
        <figure data-chart="lap"><figcaption></figcaption><canvas></canvas></figure>
        <figure data-chart="times"><figcaption></figcaption><canvas></canvas></figure>
      </div>
      <div class="ch-legend" part="chart-legend"></div>
    </div>`;

  class LiveCharts extends HTMLElement {
    static get observedAttributes() {
      return ["for", "race-class"];
    }

    constructor() {
      super();
      this._root = this.attachShadow({ mode: "open" });
      // The styles come from the widget's stylesheet: a page under a strict
      // Content-Security-Policy runs no inline <style>.
      const link = document.createElement("link");
      link.rel = "stylesheet";
      link.href = new URL("leaderboard.css", BASE).toString();
      const holder = document.createElement("div");
      holder.innerHTML = TEMPLATE;
      this._root.append(link, holder.firstElementChild);
      this._grid = this._root.querySelector(".ch-grid");
      this._empty = this._root.querySelector(".ch-empty");
      this._tabs = this._root.querySelector(".ch-tabs");
      this._legend = this._root.querySelector(".ch-legend");
      this._canvases = {};
      for (const figure of this._root.querySelectorAll("figure")) {
        figure.querySelector("figcaption").textContent = KINDS[figure.dataset.chart].title;
        this._canvases[figure.dataset.chart] = figure.querySelector("canvas");
      }
      this._history = new Map(); // car -> { cls, laps: Map(lap -> point) }
      this._classes = [];
      this._seq = null;
      this._board = null;
      this._filter = null;
      this._dirty = false;
      this._timer = null;
      this._draws = 0;
      this._onStandings = (event) => this._take(event.detail);
    }

    connectedCallback() {
      this._attach();
    }

    disconnectedCallback() {
      this._detach();
      clearTimeout(this._timer);
      this._timer = null;
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (oldValue === newValue || !this.isConnected) return;
      if (name === "for") {
        this._detach();
        this._attach();
      } else {
        this._filter = null;
        this._schedule();
      }
    }

    // -- public surface: what the charts hold, for host pages and tests --------

    /** The class shown: a tab choice, else `race-class`, else all cars (null). */
    get raceClass() {
      if (this._filter !== null) return this._filter || null;
      const explicit = this.getAttribute("race-class");
      return explicit && explicit !== "All" ? explicit : null;
    }

    set raceClass(value) {
      this._filter = value || "";
      this._schedule();
    }

    /** Every point of the chosen class: {car: [{lap, position, gap_ms, lap_ms}, ...]}. */
    series(cls = this.raceClass) {
      const out = {};
      for (const [car, entry] of this._history) {
        if (cls && entry.cls !== cls) continue;
        out[car] = [...entry.laps.entries()]
          .sort((a, b) => a[0] - b[0])
          .map(([lap, p]) => ({ lap, ...this._values(p, cls) }));
      }
      return out;
    }

    /** Each car's latest point: what the board shows for it now. */
    latest(cls = this.raceClass) {
      const out = {};
      for (const [car, points] of Object.entries(this.series(cls))) {
        if (points.length) out[car] = points[points.length - 1];
      }
      return out;
    }

    // -- following the leaderboard ---------------------------------------------

    _attach() {
      const id = this.getAttribute("for");
      const board = id ? document.getElementById(id) : document.querySelector("live-leaderboard");
      if (!board) {
        // The board may come later in the page: look again once it has loaded.
        document.addEventListener("DOMContentLoaded", () => this.isConnected && this._attach(), {
          once: true,
        });
        return;
      }
      this._board = board;
      board.addEventListener("lb-standings", this._onStandings);
      // The board's connection state: charts of a board that lost its gateway say so.
      this._stateWatch = new MutationObserver(() => this._showState());
      this._stateWatch.observe(board, { attributes: true, attributeFilter: ["data-state"] });
      this._showState();
      const snap = board.snapshot;
      if (snap) this._take({ kind: "snapshot", seq: snap.seq, session: snap.session, cars: snap.cars });
    }

    _detach() {
      if (this._board) this._board.removeEventListener("lb-standings", this._onStandings);
      if (this._stateWatch) this._stateWatch.disconnect();
      this._stateWatch = null;
      this._board = null;
    }

    _showState() {
      const state = this._board ? this._board.dataset.state : "";
      const label = this._root.querySelector(".ch-state");
      const down = ["offline", "connecting"].includes(state) && this._history.size > 0;
      label.textContent = down ? "Reconnecting… (showing the last laps received)" : "";
      this.dataset.state = down ? "reconnecting" : state || "";
    }

    _take({ kind, seq, session, cars }) {
      if (kind === "reset") {
        this._history.clear();
        this._seq = null;
        this._schedule();
        return;
      }
      if (session && session.classes) this._classes = session.classes;
      for (const row of cars) {
        let entry = this._history.get(row.car);
        if (!entry) {
          entry = { cls: row.cls, laps: new Map(), top: 0 };
          this._history.set(row.car, entry);
        }
        entry.cls = row.cls;
        if (row.laps < entry.top) {
          // Fewer laps than before: a seek back. The laps not run again go.
          for (const lap of entry.laps.keys()) if (lap > row.laps) entry.laps.delete(lap);
        }
        entry.top = row.laps;
        if (row.laps > 0) entry.laps.set(row.laps, pointOf(row));
      }
      this._seq = seq;
      this._schedule();
    }

    _values(point, cls) {
      return cls
        ? { position: point.class_position, gap_ms: point.class_gap_ms, gap_laps: point.class_gap_laps, lap_ms: point.lap_ms }
        : { position: point.position, gap_ms: point.gap_ms, gap_laps: point.gap_laps, lap_ms: point.lap_ms };
    }

    // -- drawing ------------------------------------------------------------------

    _schedule() {
      this._dirty = true;
      if (this._timer !== null) return;
      this._timer = setTimeout(() => {
        this._timer = null;
        if (!this._dirty) return;
        this._dirty = false;
        requestAnimationFrame(() => this._draw());
      }, this._draws ? CHART_FRAME_MS : 0);
    }

    _draw() {
      this._draws += 1;
      this.dataset.draws = String(this._draws);
      const cls = this.raceClass;
      this.dataset.filter = cls || "All";
      this._drawTabs(cls);
      const series = this.series(cls);
      const cars = Object.keys(series).filter((car) => series[car].length);
      cars.sort((a, b) => {
        const pa = series[a][series[a].length - 1].position;
        const pb = series[b][series[b].length - 1].position;
        return pa - pb;
      });
      // Spoiler-safe and the board covered: the charts would tell the result just as well.
      const covered = Boolean(this._board && this._board.covered);
      if (covered) cars.length = 0;
      this.dataset.covered = covered ? "true" : "false";
      this._empty.textContent = covered
        ? "Hidden with the board (spoiler-safe): the replay has already finished."
        : "No laps yet: the charts fill in as cars cross the line.";
      const colours = new Map(cars.map((car, i) => [car, PALETTE[i % PALETTE.length]]));
      this._empty.hidden = cars.length > 0;
      this._grid.hidden = cars.length === 0;
      if (cars.length) {
        const maxLap = Math.max(...cars.map((car) => series[car][series[car].length - 1].lap));
        this._drawGap(series, cars, colours, maxLap);
        this._drawLapChart(series, cars, colours, maxLap);
        this._drawTimes(series, cars, colours, maxLap);
      }
      this._drawLegend(cars, colours);
      if (this._seq !== null) this.dataset.seq = String(this._seq);
    }

    _drawTabs(current) {
      const names = ["All", ...this._classes];
      if ([...this._tabs.children].map((b) => b.dataset.tab).join("|") !== names.join("|")) {
        this._tabs.textContent = "";
        for (const name of names) {
          const button = document.createElement("button");
          button.type = "button";
          button.textContent = name;
          button.dataset.tab = name;
          button.setAttribute("role", "tab");
          button.addEventListener("click", () => {
            this.raceClass = name === "All" ? "" : name;
          });
          this._tabs.appendChild(button);
        }
      }
      for (const button of this._tabs.children) {
        const on = (button.dataset.tab === "All" && !current) || button.dataset.tab === current;
        button.setAttribute("aria-selected", on ? "true" : "false");
      }
    }

    _drawLegend(cars, colours) {
      const want = cars.join("|");
      if (this._legend.dataset.cars === want) return;
      this._legend.dataset.cars = want;
      this._legend.textContent = "";
      for (const car of cars) {
        const span = document.createElement("span");
        span.textContent = `#${car}`;
        span.style.setProperty("--swatch", colours.get(car));
        this._legend.appendChild(span);
      }
    }

    _plot(kind, { maxLap, yMin, yMax, invert, yLabel }) {
      const canvas = this._canvases[kind];
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth || 320;
      const height = canvas.clientHeight || 240;
      if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
      if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      const pad = { left: 44, right: 8, top: 8, bottom: 22 };
      const w = width - pad.left - pad.right;
      const h = height - pad.top - pad.bottom;
      const span = yMax - yMin || 1;
      const x = (lap) => pad.left + (maxLap <= 1 ? w : ((lap - 1) / (maxLap - 1)) * w);
      const y = (v) => {
        const f = Math.min(1, Math.max(0, (v - yMin) / span));
        return pad.top + (invert ? f : 1 - f) * h;
      };
      const style = getComputedStyle(this);
      ctx.strokeStyle = style.getPropertyValue("--lb-line").trim() || "#26303a";
      ctx.fillStyle = style.getPropertyValue("--lb-muted").trim() || "#8a96a3";
      ctx.font = "11px ui-monospace, monospace";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 0; i <= 4; i += 1) {
        const v = yMin + (span * i) / 4;
        const py = y(v);
        ctx.moveTo(pad.left, py);
        ctx.lineTo(pad.left + w, py);
        ctx.fillText(yLabel(v), 2, py + 4);
      }
      const step = Math.max(1, Math.ceil(maxLap / 8));
      for (let lap = 1; lap <= maxLap; lap += step) ctx.fillText(String(lap), x(lap) - 4, height - 6);
      ctx.stroke();
      return { ctx, x, y };
    }

    _lines(ctx, x, y, series, cars, colours, pick) {
      ctx.lineWidth = 1.5;
      for (const car of cars) {
        ctx.strokeStyle = colours.get(car);
        ctx.beginPath();
        let open = false;
        for (const point of series[car]) {
          const v = pick(point);
          if (v === null || v === undefined) {
            open = false; // no value on this lap (a lapped car): a break in the line
            continue;
          }
          if (open) ctx.lineTo(x(point.lap), y(v));
          else ctx.moveTo(x(point.lap), y(v));
          open = true;
        }
        ctx.stroke();
      }
    }

    _drawGap(series, cars, colours, maxLap) {
      const gap = (p) => (p.gap_laps ? null : p.gap_ms || 0);
      let top = 1000;
      for (const car of cars) for (const p of series[car]) top = Math.max(top, Math.min(GAP_CAP_MS, gap(p) || 0));
      const { ctx, x, y } = this._plot("gap", {
        maxLap, yMin: 0, yMax: top, invert: true, yLabel: (v) => `${Math.round(v / 1000)}s`,
      });
      this._lines(ctx, x, y, series, cars, colours, gap);
    }

    _drawLapChart(series, cars, colours, maxLap) {
      let last = 1;
      for (const car of cars) for (const p of series[car]) last = Math.max(last, p.position);
      const { ctx, x, y } = this._plot("lap", {
        maxLap, yMin: 1, yMax: last, invert: true, yLabel: (v) => `P${Math.round(v)}`,
      });
      this._lines(ctx, x, y, series, cars, colours, (p) => p.position);
    }

    _drawTimes(series, cars, colours, maxLap) {
      let best = Infinity;
      for (const car of cars) for (const p of series[car]) if (p.lap_ms) best = Math.min(best, p.lap_ms);
      if (!Number.isFinite(best)) best = 60000;
      const { ctx, x, y } = this._plot("times", {
        maxLap, yMin: best * 0.99, yMax: best * SCATTER_SPAN, invert: false,
        yLabel: (v) => lapText(v),
      });
      for (const car of cars) {
        ctx.fillStyle = colours.get(car);
        for (const p of series[car]) {
          if (!p.lap_ms) continue;
          ctx.fillRect(x(p.lap) - 1.5, y(p.lap_ms) - 1.5, 3, 3);
        }
      }
    }
  }

  function pointOf(row) {
    return {
      position: row.position,
      class_position: row.class_position,
      gap_ms: row.gap_ms ?? null,
      gap_laps: row.gap_laps || 0,
      class_gap_ms: row.class_gap_ms ?? null,
      class_gap_laps: row.class_gap_laps || 0,
      lap_ms: row.last_lap_ms ?? null,
    };
  }

  function lapText(ms) {
    const minutes = Math.floor(ms / 60000);
    const seconds = ((ms % 60000) / 1000).toFixed(1).padStart(4, "0");
    return minutes ? `${minutes}:${seconds}` : (ms / 1000).toFixed(1);
  }

  if (!customElements.get("live-charts")) customElements.define("live-charts", LiveCharts);
  window.LiveCharts = LiveCharts;
})();
