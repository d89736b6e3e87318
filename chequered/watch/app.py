"""The terminal timing screen: a Textual app drawing the pure view model.

It holds a ``Board`` fed by the websocket shell (``client.follow``) and, when
given a broker, a ``Controller`` for the replay keys. The table is redrawn at
most ``redraw_hz`` times a second from whatever the board holds then, so a
1000x replay coalesces into a steady screen instead of a backlog.
"""

from __future__ import annotations

import asyncio
import re

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Static, Tab, Tabs

from broker.bus import BrokerAddress
from chequered.contract import control
from chequered.watch import view
from chequered.watch.client import WatchSettings, follow
from chequered.watch.control import Controller, step_speed
from chequered.watch.view import COLUMNS, Board

ALL = "All"

MARK_STYLE = {
    "overall": "bold #b04fff",
    "class": "bold #d9a3ff",
    "personal": "bold #2fd05a",
}
"""Lap-time colours, as the widget's: race's fastest, class's fastest, personal best."""

FEED_MIN_WIDTH = 200
"""Terminal columns under which the race-control feed starts hidden (``m`` shows it)."""

CATEGORY_STYLE = {
    "FLAG": "bold #e0b400",
    "PENALTY": "bold #ff5a5a",
    "INCIDENT": "bold #ff9a3c",
    "RETIREMENT": "bold #8a96a3",
}

HELP = """\
[b]chequered watch[/b]: keys

  [b]space[/b]      pause / resume the replay
  [b]+[/b] / [b]-[/b]      faster / slower (0.1x to 1000x)
  [b]][/b] / [b]\\[[/b]      seek one lap forward / back
  [b]}[/b] / [b]{[/b]      seek ten laps forward / back
  [b]home[/b]       back to the start of the race
  [b]c[/b] / [b]C[/b]      next / previous class tab
  [b]0[/b]..[b]9[/b]       All, or the n-th class
  [b]m[/b]          show / hide the race-control messages
  [b]r[/b]          show a result hidden by --no-spoilers
  [b]?[/b]          this help
  [b]q[/b]          quit

Replay keys send the documented control commands over MQTT
and need [b]--broker[/b]; without it the screen only watches.

Lap times: [#b04fff]purple[/] fastest of the race, [#d9a3ff]lilac[/] fastest
of the class, [#2fd05a]green[/] a personal best.

[dim]Esc, ? or q closes this help.[/dim]"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static {
        width: 66; height: auto; padding: 1 2;
        border: round $accent; background: $surface;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class WatchApp(App[int]):
    """``chequered watch``: one race's timing screen in the terminal."""

    TITLE = "chequered watch"
    CSS = """
    Screen { layout: vertical; }
    #top { height: 1; padding: 0 1; background: $panel; }
    #name { width: 1fr; text-style: bold; }
    #conn { width: auto; margin-left: 2; }
    #conn.-live { color: $success; }
    #conn.-down { color: $error; text-style: bold; }
    #facts { height: 1; padding: 0 1; color: $text-muted; }
    #flag { height: 1; content-align: center middle; text-style: bold; }
    #flag.-green { background: #1f7a3a; color: white; }
    #flag.-fcy { background: #e0b400; color: black; }
    #flag.-red { background: #c62828; color: white; }
    #flag.-chequered { background: white; color: black; }
    #tabs { height: 2; }
    #message { height: auto; padding: 0 1; color: $warning; }
    #message.-empty { display: none; }
    #middle { height: 1fr; }
    #board { width: 1fr; height: 1fr; }
    #feed { width: 42; height: 1fr; border-left: solid $panel-lighten-2; padding: 0 1; }
    #feed.-hidden { display: none; }
    #feed-title { text-style: bold; color: $text-muted; }
    #controls { height: 1; padding: 0 1; color: $text-muted; background: $panel; }
    """
    BINDINGS = [
        Binding("space", "pause_resume", "Pause/resume"),
        Binding("plus,equals_sign", "faster", "Faster"),
        Binding("minus", "slower", "Slower"),
        Binding("right_square_bracket", "seek_laps(1)", "+1 lap"),
        Binding("left_square_bracket", "seek_laps(-1)", "-1 lap"),
        Binding("right_curly_bracket", "seek_laps(10)", "+10 laps", show=False),
        Binding("left_curly_bracket", "seek_laps(-10)", "-10 laps", show=False),
        Binding("home", "restart", "Start", show=False),
        Binding("c", "next_class(1)", "Class"),
        Binding("C", "next_class(-1)", "Prev class", show=False),
        *(Binding(str(n), f"class_at({n})", show=False) for n in range(10)),
        Binding("m", "toggle_feed", "Messages"),
        Binding("r", "reveal", "Show result", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        gateway: str,
        race: str | None = None,
        *,
        broker: BrokerAddress | str | None = None,
        cls: str | None = None,
        settings: WatchSettings | None = None,
        spoilers: bool = True,
    ) -> None:
        super().__init__()
        self.gateway = gateway
        self.broker = broker
        self.settings = settings or WatchSettings()
        self.board = Board(race=race, spoiler_safe=not spoilers)
        self.cls: str | None = cls
        self.controller: Controller | None = None
        self.control_line = ""
        self._stop = asyncio.Event()
        self._dirty = True
        self._tab_classes: dict[str, str | None] = {}
        self._tabs_ready = False
        """Whether the class tabs exist: until then, the first tab's activation (All) must
        not undo the class asked for with --class."""
        self._shown: list[str] = []
        self._cells: dict[str, list[Text]] = {}
        self.redraws = 0
        """How many times the table was drawn (for tests: the screen keeps up)."""
        self.drawn_notice = ""
        """The line last drawn above the table."""

    # -- layout -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical():
            with Horizontal(id="top"):
                yield Static(self.board.race or "chequered", id="name")
                yield Static("", id="conn")
            yield Static("", id="facts")
            yield Static("", id="flag")
            yield Tabs(Tab(ALL, id="cls-all"), id="tabs")
            yield Static("", id="message", classes="-empty")
            with Horizontal(id="middle"):
                table: DataTable[Text] = DataTable(
                    id="board", cursor_type="row", zebra_stripes=True
                )
                yield table
                with VerticalScroll(id="feed"):
                    yield Static("Race control", id="feed-title")
                    yield Static("", id="feed-body")
            yield Static("", id="controls")
        yield Footer()

    def on_mount(self) -> None:
        table = self._main.query_one("#board", DataTable)
        for key, heading in COLUMNS:
            table.add_column(heading, key=key)
        self._tab_classes = {"cls-all": None}
        if self.broker is not None and self.board.race is not None:
            self._start_controller(self.board.race)
        elif self.broker is None:
            self.control_line = "watching only: give --broker to pause, change speed and seek"
        self.run_worker(self._follow(), name="gateway", exit_on_error=False)
        self.set_interval(1 / self.settings.redraw_hz, self._redraw)
        if self.size.width < FEED_MIN_WIDTH:
            # The table needs the room; m shows the feed.
            self._main.query_one("#feed").add_class("-hidden")
        table.focus()

    @property
    def _main(self) -> Screen[object]:
        """The timing screen, under the help when that shows: the app's own query_one
        looks at the screen on top."""
        return self.screen_stack[0]

    def _start_controller(self, race: str) -> None:
        assert self.broker is not None
        self.controller = Controller(self.broker, race, self._say)
        self.run_worker(self.controller.run(self._stop), name="control", exit_on_error=False)

    async def _follow(self) -> None:
        await follow(self.gateway, self.board, self._changed, self._stop, self.settings)

    async def action_quit(self) -> None:
        self._stop.set()
        self.exit(0)

    def _changed(self) -> None:
        self._dirty = True
        if self.broker is not None and self.controller is None and self.board.race:
            # No race named: the screen took the first on air, and now knows whom to control.
            self._start_controller(self.board.race)

    def _say(self, line: str) -> None:
        self.control_line = line
        self._dirty = True

    # -- drawing ------------------------------------------------------------------

    def _redraw(self) -> None:
        if not self._dirty or not self.screen_stack:
            return
        self._dirty = False
        self.redraws += 1
        board = self.board
        head = view.header(board)
        self._main.query_one("#name", Static).update(
            Text.assemble(head.name, ("  PARTIAL", "bold yellow") if head.partial else "")
        )
        conn = self._main.query_one("#conn", Static)
        conn.update(head.connection)
        conn.set_class(board.connection == "live", "-live")
        conn.set_class(board.connection in ("reconnecting", "unknown"), "-down")
        self._main.query_one("#facts", Static).update(
            f"Clock {head.clock}   Remaining {head.remaining}   Lap {head.lap}"
            f"   Replay {head.replay}"
        )
        flag = self._main.query_one("#flag", Static)
        flag.update(head.flag_text)
        for name in view.FLAG_TEXT:
            flag.set_class(head.flag == name, f"-{name}")
        message = self._main.query_one("#message", Static)
        text = self.drawn_notice = self.notice()
        message.update(text)
        message.set_class(not text, "-empty")
        self._main.query_one("#controls", Static).update(self.control_line)
        self._draw_tabs()
        self._draw_table()
        self._draw_feed()

    def _draw_feed(self) -> None:
        shown = view.messages(self.board)
        body = Text()
        for message in shown:
            if body:
                body.append("\n")
            body.append(message.when, style="dim")
            body.append(f" {message.category}", style=CATEGORY_STYLE.get(message.category, "bold"))
            body.append(f"\n{message.text}")
        if not shown:
            body.append("No messages yet." if self.board.snapshot else "", style="dim")
        self._main.query_one("#feed-body", Static).update(body)

    def _empty_text(self) -> str:
        if self.board.covered:
            return (
                "Spoiler-safe: the replay of this race has already finished, so the board would"
                " show the result. Seek back to watch it (Home), or press r to show it now."
            )
        snap = self.board.snapshot
        if (
            snap is not None
            and self.cls is not None
            and not any(row.cls == self.cls for row in snap.cars)
        ):
            return f"No car of class {self.cls} in this race."
        if snap is None and self.board.connection == "connecting":
            return f"Connecting to {self.gateway}…"
        return ""

    def _draw_tabs(self) -> None:
        classes = self.board.classes()
        want = {f"cls-{_slug(c)}": c for c in classes}
        if set(want) | {"cls-all"} == set(self._tab_classes):
            return
        tabs = self._main.query_one("#tabs", Tabs)
        for tab_id, cls in want.items():
            if tab_id not in self._tab_classes:
                tabs.add_tab(Tab(cls, id=tab_id))
                self._tab_classes[tab_id] = cls
        active = f"cls-{_slug(self.cls)}" if self.cls in classes else "cls-all"
        tabs.active = active
        self._tabs_ready = True

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if not self._tabs_ready:
            return
        tab_id = event.tab.id or "cls-all"
        cls = self._tab_classes.get(tab_id)
        if cls != self.cls:
            self.cls = cls
            self._dirty = True
            self._redraw()

    def _draw_table(self) -> None:
        table: DataTable[Text] = self._main.query_one("#board", DataTable)
        rows = view.rows(self.board, self.cls)
        order = [row.car for row in rows]
        cells = {row.car: _styled(row) for row in rows}
        if order != self._shown:
            # A change of places or of tab: rebuild in order, keeping the cursor's car.
            cursor_car = (
                self._shown[table.cursor_row] if 0 <= table.cursor_row < len(self._shown) else None
            )
            table.clear()
            for car in order:
                table.add_row(*cells[car], key=car)
            if cursor_car in order:
                table.move_cursor(row=order.index(cursor_car), animate=False)
        else:
            for car in order:
                before = self._cells.get(car)
                for index, (key, _) in enumerate(COLUMNS):
                    if before is None or before[index] != cells[car][index]:
                        table.update_cell(car, key, cells[car][index])
        self._shown = order
        self._cells = cells

    # -- what tests and the footer read -------------------------------------------

    def shown_cars(self) -> list[str]:
        """The cars in the table, top to bottom, as drawn."""
        return list(self._shown)

    def notice(self) -> str:
        """The line above the table: why there is no board, or what went wrong."""
        return self.board.message or self._empty_text()

    def cell(self, car: str, key: str) -> str:
        """The text of one drawn cell."""
        table: DataTable[Text] = self._main.query_one("#board", DataTable)
        return str(table.get_cell(car, key))

    # -- keys ---------------------------------------------------------------------

    def _control(self, command: control.Command) -> None:
        if self.controller is None:
            self._say(
                "read-only: start with --broker URL to control the replay"
                if self.broker is None
                else "no race yet to control"
            )
            return
        self.controller.send(command)

    def action_pause_resume(self) -> None:
        status = self.board.status
        snap = self.board.snapshot
        paused = (status is not None and status.state == "paused") or (
            status is None and snap is not None and snap.session.paused
        )
        self._control(control.Resume() if paused else control.Pause())

    def _speed(self) -> float | None:
        if self.board.status is not None:
            return self.board.status.speed
        snap = self.board.snapshot
        return snap.session.speed if snap is not None else 1.0

    def action_faster(self) -> None:
        self._control(control.SetSpeed(speed=step_speed(self._speed(), up=True)))

    def action_slower(self) -> None:
        self._control(control.SetSpeed(speed=step_speed(self._speed(), up=False)))

    def action_seek_laps(self, laps: int) -> None:
        snap = self.board.snapshot
        # The leader is on lap leader_laps + 1; "one lap back" starts the lap before it.
        current = (snap.session.leader_laps if snap is not None else 0) + 1
        self._control(control.Seek(lap=max(1, current + laps)))

    def action_restart(self) -> None:
        self._control(control.Seek(t_ms=0))

    def _tab_ids(self) -> list[str]:
        return ["cls-all", *(f"cls-{_slug(c)}" for c in self.board.classes())]

    def action_next_class(self, step: int) -> None:
        ids = self._tab_ids()
        current = "cls-all" if self.cls is None else f"cls-{_slug(self.cls)}"
        index = ids.index(current) if current in ids else 0
        self._main.query_one("#tabs", Tabs).active = ids[(index + step) % len(ids)]

    def action_class_at(self, n: int) -> None:
        ids = self._tab_ids()
        if n < len(ids):
            self._main.query_one("#tabs", Tabs).active = ids[n]

    def action_reveal(self) -> None:
        self.board.revealed = True
        self._dirty = True

    def action_toggle_feed(self) -> None:
        self._main.query_one("#feed").toggle_class("-hidden")

    def feed_lines(self) -> list[str]:
        """The race-control feed as drawn (for tests), newest first."""
        return [f"{m.category} {m.text}" for m in view.messages(self.board)]

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def _slug(cls: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", cls or "")


def _styled(row: view.Row) -> list[Text]:
    style = "dim" if row.retired else ""
    out: list[Text] = []
    for key, _ in COLUMNS:
        text = row.cells[key]
        cell_style = style
        if key == "last" and row.last_mark:
            cell_style = MARK_STYLE[row.last_mark]
        elif key == "best" and row.best_mark in ("overall", "class"):
            cell_style = MARK_STYLE[row.best_mark]
        elif key == "pit" and row.pit == "in":
            cell_style = "bold black on #e0b400"
        elif key == "pit" and row.pit == "out":
            cell_style = "bold #e0b400"
        out.append(Text(text, style=cell_style))
    return out
