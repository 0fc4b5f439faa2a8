"""The labelling app: a Gradio `Blocks` with Label, Review and Dashboard tabs.

It owns no business logic: leasing and recording labels are `active.labeling`, users are
`storage.users`, attribution maps, embeddings and retraining come through `labeler.services`.
Event handlers run in Gradio's thread pool; slow work (plots, the head refresh) runs in background
threads, and every item's attribution map in a child process (`labeler.mapchild`), so the next
item is shown first.
"""

from __future__ import annotations

import getpass
import html
import itertools
import logging
import re
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from active import attribution_methods, labeling
from active.errors import UserError
from active.labeling import Task
from active.project import Project
from labeler import dashboard
from labeler.grid import GRID_CSS, GRID_JS, GridTab
from labeler.mapchild import WARM_UP_S
from labeler.prefetch import Prefetcher, map_key
from labeler.security import is_loopback
from labeler.server import serve_blocks
from labeler.services import Services, default_services
from models.images import ImageError
from storage import db, users, versions
from storage.enums import Decision
from storage.fields import DEFAULT_FIELD

log = logging.getLogger(__name__)

N_PICKS = 9  # keys 1-9
TOP_BARS = 5
SIMILAR_K = 6
PREFETCH_AHEAD = 2  # items prepared after the current one (two, so a colleague taking one does not empty it)
STATUS_EVERY_S = 3.0
TRAINING_GIVE_UP_S = 3600  # stop saying "training…" when no new version came after this long
METHODS = [(m.display, m.name) for m in attribution_methods.REGISTRY.values()]  # (shown, value) for the list
SESSIONS_KEPT = 10_000  # browser sessions whose shown item is remembered (oldest forgotten first)

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>$])")


def esc(text: object) -> str:
    """A user-supplied string made inert for gr.Markdown: HTML-escaped, Markdown punctuation escaped."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=True))


SHORTCUTS = """**Keys** · `Enter` accept the top suggestion · `1`–`9` pick the n-th suggestion ·
`/` search all classes · `s` skip · `u` unsure · `Backspace` undo the last label ·
`a` attention map on/off · `c` next attribution method · `l` more like this (Grid tab) ·
`f` next label field (projects with several fields: each decision acts on the field shown) ·
Review tab: `g` keep the given label, `m` take the model's suggestion, `n` next, `/` another class,
`Backspace` undo the last review · keys wait while the next photo loads"""

# Keys click the buttons (so every path goes through the same events); keys typed into a text
# field or the class search are left alone. A button counts only when it is visible (its tab is open).
#
# The photo you see is the photo you label: from the moment a decision is sent until the page
# names a new item (the hidden `served` token changed) AND the photo of that item has loaded
# (the display copy is named item-<id>.jpg by labeler.prefetch) AND the why-line (Markdown, drawn
# asynchronously) names it, clicks and keys on the decision
# controls are swallowed and the item panel is hidden behind a "loading" line, so the photo,
# suggestions, why-line and map appear together. The server checks the item id of every decision
# as well; this only keeps the page from sending decisions it would refuse.
KEYS_JS = """
<script>
(() => {
  const GIVE_UP_MS = 30000;  // a response that never comes (network gone) unlocks the page again
  const PANES = [
    {name: "label", photo: "photo", text: "why", token: "served", item: "item-id", picker: "class-picker",
     targets: ["#btn-accept", "#btn-skip", "#btn-unsure", "#btn-undo", ".pick-btn", "#btn-next-field"]},
    {name: "review", photo: "rphoto", text: "rinfo", token: "rserved", item: "review-item-id",
     picker: "review-picker",
     targets: ["#btn-keep", "#btn-model", "#btn-next-dispute", "#btn-review-undo", "#review-table td",
               "#review-holdout td"]},
  ];
  const byKey = {"Enter": ["btn-accept"], "s": ["btn-skip"], "u": ["btn-unsure"],
                 "Backspace": ["btn-undo", "btn-review-undo"], "g": ["btn-keep"], "m": ["btn-model"],
                 "n": ["btn-next-dispute"], "c": ["btn-cycle-method"],
                 "l": ["btn-more", "btn-more-review"], "f": ["btn-next-field"]};
  const locks = {};
  function visible(el) { return el && el.offsetParent !== null && !el.disabled; }
  function target(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === "BUTTON" ? el : el.querySelector("button") || el;
  }
  function val(id) {
    const el = document.querySelector("#" + id + " input, #" + id + " textarea");
    return el ? el.value : "";
  }
  function photoReady(p) {
    const id = val(p.item);
    if (!id) return true;  // no item on the page (nothing left to label / no open dispute)
    // Markdown renders asynchronously: the text must name the item too, not the previous one.
    const text = document.getElementById(p.text);
    if (!text || !(text.textContent || "").includes("item #" + Number(id))) return false;
    const img = document.querySelector("#" + p.photo + " img");
    if (!img) return false;
    const src = decodeURIComponent(img.currentSrc || img.src || "");
    return src.includes("item-" + Number(id) + ".jpg") && img.complete && img.naturalWidth > 0;
  }
  function pending(p) {
    const l = locks[p.name];
    if (l && Date.now() - l.since > GIVE_UP_MS) { locks[p.name] = null; return false; }
    if (l && val(p.token) === l.token) return true;
    if (!photoReady(p)) return true;
    locks[p.name] = null;
    return false;
  }
  function lockNow(p) { locks[p.name] = {token: val(p.token), since: Date.now()}; }
  function paneOf(el, what) {
    for (const p of PANES) {
      if (what === "targets" && p.targets.some((sel) => el.closest(sel))) return p;
      if (what === "picker" && el.closest("#" + p.picker)) return p;
    }
    return null;
  }
  function sync() {
    for (const p of PANES) document.body.classList.toggle("al-loading-" + p.name, pending(p));
    const id = val("item-id");
    const map = document.querySelector("#attr img");
    if (map) {  // a map of another item never shows beside this photo
      const src = decodeURIComponent(map.currentSrc || map.src || "");
      document.getElementById("attr").classList.toggle("al-stale", !id || !src.includes("map-" + Number(id) + "-"));
    }
  }
  setInterval(sync, 50);
  document.addEventListener("load", sync, true);  // image load events do not bubble: capture them
  // Clicks: a decision control while the page is loading is swallowed; otherwise it locks its pane.
  for (const type of ["pointerdown", "mousedown", "click"]) {
    document.addEventListener(type, (e) => {
      const t = e.target instanceof Element ? e.target : null;
      if (!t) return;
      const p = paneOf(t, "targets") || (t.closest("li, [role=option]") ? paneOf(t, "picker") : null);
      if (!p) return;
      if (pending(p)) { e.preventDefault(); e.stopImmediatePropagation(); sync(); return; }
      const commits = type === "click" || (type === "mousedown" && paneOf(t, "picker"));
      if (commits) { lockNow(p); sync(); }
    }, true);
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    const tag = (t && t.tagName || "").toLowerCase();
    const inPicker = t instanceof Element ? paneOf(t, "picker") : null;
    if (inPicker && e.key === "Enter") {  // Enter in the class search picks a class: a decision
      if (pending(inPicker)) { e.preventDefault(); e.stopImmediatePropagation(); return; }
      lockNow(inPicker);
      return;
    }
    if (tag === "input" || tag === "textarea" || tag === "select" || (t && t.isContentEditable)) return;
    if (e.key === "/") {
      for (const p of PANES) {
        const box = document.querySelector("#" + p.picker + " input");
        if (box && visible(box)) { e.preventDefault(); box.focus(); return; }
      }
      return;
    }
    if (e.key === "a") {
      const box = document.querySelector("#show-attr input");
      if (box && visible(box)) { e.preventDefault(); box.click(); }
      return;
    }
    let ids = byKey[e.key];
    if (!ids && /^[1-9]$/.test(e.key)) ids = ["pick-" + e.key];
    if (!ids) return;
    const el = ids.map(target).find(visible);
    if (el) { e.preventDefault(); el.click(); }  // the click goes through the capture listener above
  });
})();
</script>
"""

# The nine pick buttons wrap in a 3x3 grid and break long class names instead of running them
# together ("shortslongsleeve"). While a pane is loading its item panel is hidden, not mixed.
# Gradio also adds a copy of each rule under its container's classes, which outranks a plain
# `body.x #id` rule: hence the !important where such a rule must win.
CSS = """
#photo img, .plot img { object-fit: contain !important; }
#picks { display: grid !important; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 6px; }
.pick-btn { min-width: 0 !important; white-space: normal !important; overflow-wrap: anywhere;
            line-height: 1.2; height: auto !important; }
#why, #progress { font-size: 0.95rem; }
.hidden-id { display: none !important; }
#loading-label, #loading-review { display: none; font-weight: 600; }
body.al-loading-label #loading-label, body.al-loading-review #loading-review { display: block !important; }
body.al-loading-label #photo img, body.al-loading-label #why, body.al-loading-label #suggestions,
body.al-loading-label #picks, body.al-loading-label #attr img, body.al-loading-label #note,
body.al-loading-review #rphoto img, body.al-loading-review #rinfo, body.al-loading-review #rmaps,
#attr.al-stale img { visibility: hidden !important; }
"""


@dataclass
class Training:
    """What the page says about a background head refresh started from this server."""

    base_version: int | None
    n_labels: int
    started: float = field(default_factory=time.monotonic)


def _shown_item_fields(item_elem: str, token_elem: str) -> tuple[gr.State, gr.Number, gr.Textbox]:
    """A pane's record of what it shows: its server-side state (the task or dispute), the item id
    its decisions name (``item_id`` for scripts) and a token that changes with every item sent,
    which the page script waits on (both hidden)."""
    item = gr.Number(None, precision=0, label="item_id", elem_id=item_elem, elem_classes="hidden-id",
                     interactive=False)
    token = gr.Textbox("", label="served", elem_id=token_elem, elem_classes="hidden-id", interactive=False)
    return gr.State(None), item, token


def _photo(elem_id: str, loading: str, loading_id: str, *, height: int, **kwargs: Any) -> gr.Image:
    """A pane's photo, under the line the page shows instead while the next one loads."""
    gr.Markdown(loading, elem_id=loading_id)
    return gr.Image(label="photo", type="filepath", height=height, interactive=False, elem_id=elem_id, **kwargs)


class LabelerApp:
    """State shared by every browser session of one server: project, caches, background threads."""

    def __init__(self, project: Project, *, services: Services | None = None, auth: bool = True) -> None:
        self.project = project
        self.services = services or default_services()
        self.auth = auth
        child = self.services.maps_child
        self.prefetch = Prefetcher(self.services.explain_item, maps_in=child.explain_item if child else None)
        # Gradio serves the display copies and maps from the prefetch folder as they are (still
        # behind sign-in) instead of hashing and copying each into its own cache on every reply
        # (in a py-spy profile of /accept on a busy machine, 277 samples against 419 for our own
        # handler).
        gr.set_static_paths([self.prefetch.folder])
        self.dashboards = dashboard.DashboardCache(project, self.services)
        self._lock = threading.Lock()
        self.training: Training | None = None
        self._announced: int | None = None
        self._policy_pending = False  # a policy check is queued on the background thread
        # session -> (item it was last sent, pick buttons shown, class picker's field)
        self._shown: OrderedDict[str, tuple[int | None, int, str | None]] = OrderedDict()
        self._served = itertools.count(1)  # a new token per item output, so the page sees every reply
        self.grid = GridTab(self)

    def close(self) -> None:
        """Stop the background work: the map child (first: a prefetch thread waiting on it then
        ends at once), prefetch and thumbnail threads."""
        if self.services.maps_child is not None:
            self.services.maps_child.close()
        self.prefetch.close()
        self.grid.close()

    def warm_up(self) -> None:
        """Before listening: load what the first attribution map needs (the services say what),
        so the first annotators' labels do not wait behind imports. Never stops the server. The
        labeller loads the network too, though every item's map is made in the map child: other
        methods' maps and the Grid's photo search run here, and importing torch at their first use
        would hold up every request of the process for seconds."""
        if self.services.warm_up is None:
            return
        started = time.perf_counter()
        child = self.services.maps_child.warm_up(self.project) if self.services.maps_child else None
        try:
            loaded = self.services.warm_up(self.project)
            if child is not None:  # the same in the map child, meanwhile: ready when this listens
                child.result(timeout=WARM_UP_S)
        except Exception:  # a map that cannot be made is reported where it is asked for
            log.exception("warm-up failed: attention maps will load on first use")
            return
        log.info("warm-up: %s in %.1f s", "serving network loaded" if loaded else "no model version yet",
                 time.perf_counter() - started)

    # -- who is asking ------------------------------------------------------------------------
    def user(self, request: gr.Request | None) -> str:
        name = getattr(request, "username", None) if request is not None else None
        if name:
            return name
        if self.auth:
            raise gr.Error("please sign in")
        return getpass.getuser() or "local"

    def role(self, name: str) -> str:
        if not self.auth:
            return "reviewer"  # a local, single-person setup without users may do everything
        with db.session(self.project.engine) as s:
            u = users.get(s, name)
        if u is None or u.disabled:  # removed or disabled since sign-in: no role, no access
            raise gr.Error("no access: this account is not active in the project")
        return u.role

    # -- the label tab ------------------------------------------------------------------------
    def _shown_by(self, request: gr.Request | None, item_id: int | None, picks: int = 0,
                  field: str | None = None) -> tuple[int, str | None] | None:
        """Remember which item this browser session was last sent (see `_still_shown`), with how
        many pick buttons it showed and the field of its class picker; returns those of the reply
        before (None: not known, e.g. a new page)."""
        sid = getattr(request, "session_hash", None)
        if not sid:
            return None
        with self._lock:
            before = self._shown.get(sid)
            self._shown[sid] = (item_id, picks, field)
            self._shown.move_to_end(sid)
            while len(self._shown) > SESSIONS_KEPT:
                self._shown.popitem(last=False)
        return None if before is None else before[1:]

    def _still_shown(self, request: gr.Request | None, item_id: int) -> bool:
        """False when the session has moved on to another item since a slow event (a map, the side
        panel) started: its result must not land beside the next item's photo."""
        sid = getattr(request, "session_hash", None)
        with self._lock:
            return not sid or sid not in self._shown or self._shown[sid][0] == item_id

    def show(self, task: Task | None, note: str = "", view: tuple[bool, str] = (True, attribution_methods.DEFAULT_METHOD),
             request: gr.Request | None = None) -> list[Any]:
        """Outputs of every event that changes the item, all of one item together: state, item id,
        served token, photo, bars, why, 9 picks, note, picker, map, map note. The map comes along
        when it is already made (prefetched); otherwise it is left empty here and the chained
        attribution event fills it."""
        served = f"{task.item_id if task else ''}:{next(self._served)}"
        if task is None:
            self._shown_by(request, None)
            picks = [gr.update(value=f"{i + 1}", visible="hidden") for i in range(N_PICKS)]
            done = "**Nothing left to label** in the open rounds. Open a new round with `active select`."
            return [None, None, served, None, None, done, *picks, note, gr.update(value=None), None, ""]
        try:
            photo = self.prefetch.photo(task.item_id, task.path)
        except ImageError as exc:  # a file that vanished or broke since import: set it aside, go on
            labeling.set_aside(self.project, task.item_id, str(exc))
            return self.show(None, f"#{task.item_id} cannot be shown ({esc(exc)}): set aside; press Enter for the next",
                             view, request)
        n_picks = min(len(task.ranked), N_PICKS)
        several = len(self.project.field_names) > 1
        before = self._shown_by(request, task.item_id, n_picks, task.field if several else None)
        bars = {c: p for c, p in task.ranked[:TOP_BARS]} if task.ranked else None
        texts = [f"{i + 1} · {c} {p:.0%}" for i, (c, p) in enumerate(task.ranked[:N_PICKS])]
        # Plain values where the page's buttons and picker stay as they are: Gradio turns every
        # gr.update into a new component (a constructor that inspects its own signature), which
        # was a quarter of the event loop's time per label under load. Updates only when the
        # number of suggestions or the field changes (or for a page not seen yet).
        if before is not None and before[0] == n_picks:
            picks: list[Any] = texts + [f"{i + 1}" for i in range(n_picks, N_PICKS)]
        else:
            picks = [gr.update(value=t, visible=True) for t in texts] + [
                gr.update(value=f"{i + 1}", visible="hidden") for i in range(n_picks, N_PICKS)]
        model = f"model v{task.version_id}" if task.version_id else "no model suggestions yet"
        why = f"**Why this item:** {esc(task.why())} · {esc(model)} · item #{task.item_id}"
        picker: Any = None
        if several:  # the decision is about this field (f: the next one)
            why = f"Field **{esc(task.field)}** · " + why
            if before is None or before[1] != task.field:
                picker = gr.update(choices=self.project.classes_of(task.field), value=None)
        attr_img, attr_text = None, ""
        show_attr, method = view
        if show_attr and task.version_id is not None and task.top is not None:
            ready = self.prefetch.ready(map_key(task.item_id, task.version_id, method, task.top[0], task.field))
            if ready is not None:
                attr_img, attr_text = str(ready), self._map_note(method, task.top[0])
        return [task.to_state(), task.item_id, served, str(photo), bars, why, *picks, note, picker,
                attr_img, attr_text]

    @staticmethod
    def _map_note(method: str, target: str) -> str:
        name = attribution_methods.REGISTRY[method].display if method in attribution_methods.REGISTRY else "unknown method"
        return f"{name} for **{esc(target)}**"

    def _after_label(self, annotator: str, task: Task | None) -> None:
        """Background: prefetch what comes next, then let the policy decide on a head refresh."""
        def work() -> None:
            nxt = labeling.upcoming(self.project, annotator, n=PREFETCH_AHEAD)
            self.prefetch.warm(self.project, nxt)

        if task is not None:
            self.prefetch.warm(self.project, [task])
        self.prefetch.later(work)
        self._check_policy()

    def after_grid(self, annotator: str) -> None:
        """Background: a confirmed page added labels; let the policy decide on a head refresh."""
        del annotator
        self._check_policy()

    def _check_policy(self) -> None:
        """Queue one policy check on the background thread unless one is queued already: with many
        annotators on one server, labels arrive faster than checks are worth making (each reads
        the versions, the jobs and counts the labels), and one check after them sees them all."""
        with self._lock:
            if self._policy_pending:
                return
            self._policy_pending = True

        def run() -> None:
            with self._lock:  # labels from now on ask for a check of their own
                self._policy_pending = False
            self._maybe_refresh()

        self.prefetch.later(run)

    def _maybe_refresh(self) -> None:
        try:
            started = self.services.maybe_refresh(self.project)
        except Exception:  # the labeller keeps working when retraining cannot start
            log.exception("maybe_refresh failed")
            return
        if started:
            with db.session(self.project.engine) as s:
                latest = versions.serving(s)
                n = labeling.human_label_count(s)
            with self._lock:
                self.training = Training(latest.id if latest else None, n)

    def start(self, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
        return self._current(self.user(request), "", (show_attr, method), request)

    def _current(self, annotator: str, note: str, view: tuple[bool, str], request: gr.Request) -> list[Any]:
        task = labeling.next_task(self.project, annotator)
        self._after_label(annotator, task)
        return self.show(task, note, view, request)

    @staticmethod
    def _named(item_id: Any) -> int | None:
        return None if item_id in (None, "") else int(item_id)

    def _label(self, state: dict | None, item_id: Any, view: tuple[bool, str], request: gr.Request, *,
               decision: str, label: str | None = None, choose: int | None = None) -> list[Any]:
        annotator = self.user(request)
        named = self._named(item_id)
        shown = Task.from_state(state) if state else None
        if shown is None or named != shown.item_id:
            # The decision names another item than this page was sent (a stale page or script), or
            # this session was sent no item yet: record nothing, show the annotator's current item.
            note = "" if shown is None and named is None else (
                f"not recorded: #{named} is not the item on this page; this is your current item")
            return self._current(annotator, note, view, request)
        task = shown
        if choose is not None:
            if choose >= len(task.ranked):
                return self.show(task, f"there is no suggestion {choose + 1} for this item", view, request)
            label = task.ranked[choose][0]
        if decision == "pick":
            if not label:
                return self.show(task, "no suggestion to accept: pick a class (press /)", view, request)
            decision = labeling.decide(task, label)
        try:
            row, nxt = labeling.record(self.project, annotator, task, decision=decision, label=label)
        except UserError as exc:  # the same item again with the reason (the page stays usable)
            return self.show(task, f"not recorded: {esc(exc)}", view, request)
        self._after_label(annotator, nxt)
        if row is None:
            return self.show(nxt, f"not recorded: #{task.item_id} is no longer your current item "
                                  "(labelled already, or its lease went to someone else)", view, request)
        # "#12: skipped", "#12: unsure", "#12: accepted shirt" (bench/load.py reads these acks)
        what = f"{row.decision} {esc(row.label)}" if row.label else row.decision
        return self.show(nxt, f"#{task.item_id}: {what}", view, request)

    def accept(self, state: dict | None, item_id: int | None, show_attr: bool, method: str,
               request: gr.Request) -> list[Any]:
        task = Task.from_state(state) if state else None
        top = task.top[0] if task and task.top else None
        return self._label(state, item_id, (show_attr, method), request, decision="pick", label=top)

    def pick(self, n: int):  # noqa: ANN201
        def fn(state: dict | None, item_id: int | None, show_attr: bool, method: str,
               request: gr.Request) -> list[Any]:
            return self._label(state, item_id, (show_attr, method), request, decision="pick", choose=n)

        fn.__name__ = f"pick_{n + 1}"
        return fn

    def correct(self, state: dict | None, item_id: int | None, cls: str | None, show_attr: bool, method: str,
                request: gr.Request) -> list[Any]:
        if not cls:
            return self.show(Task.from_state(state) if state else None, view=(show_attr, method), request=request)
        return self._label(state, item_id, (show_attr, method), request, decision="pick", label=cls)

    def skip(self, state: dict | None, item_id: int | None, show_attr: bool, method: str,
             request: gr.Request) -> list[Any]:
        return self._label(state, item_id, (show_attr, method), request, decision=Decision.SKIPPED)

    def unsure(self, state: dict | None, item_id: int | None, show_attr: bool, method: str,
               request: gr.Request) -> list[Any]:
        return self._label(state, item_id, (show_attr, method), request, decision=Decision.UNSURE)

    def next_field(self, state: dict | None, item_id: int | None, show_attr: bool, method: str,
                   request: gr.Request) -> list[Any]:
        """Key `f`: the same item, its next label field not decided yet (nothing is recorded)."""
        annotator = self.user(request)
        shown = Task.from_state(state) if state else None
        if shown is None or self._named(item_id) != shown.item_id:
            return self._current(annotator, "", (show_attr, method), request)
        return self.show(labeling.switch_field(self.project, annotator, shown), "", (show_attr, method), request)

    def undo(self, state: dict | None, item_id: int | None, show_attr: bool, method: str,
             request: gr.Request) -> list[Any]:
        annotator = self.user(request)
        named = self._named(item_id)
        view = (show_attr, method)
        if state and named != state.get("item_id"):
            return self._current(annotator, f"not undone: #{named} is not the item on this page", view, request)
        try:
            undone, task = labeling.undo_last(self.project, annotator, shown=named)
        except labeling.NotCurrent as exc:
            return self.show(exc.task, f"not undone: {esc(exc)}", view, request)
        self._after_label(annotator, task)
        note = f"undid your label on #{undone.item_id}" if undone else "nothing to undo"
        return self.show(task, note, view, request)

    def attribution(self, state: dict | None, show: bool, method: str, request: gr.Request) -> tuple[Any, str]:
        """The attribution overlay of the shown item for its top suggestion (own event)."""
        if not state or not show:
            return None, ""
        task = Task.from_state(state)
        if task.version_id is None or task.top is None:
            return None, "no attention map: this model version has no classifier head yet"
        try:
            path = self.prefetch.attribution(self.project, task.item_id, task.version_id, method=method,
                                             target=task.top[0], field=task.field)
        except Exception as exc:  # show the reason on the page; labelling goes on
            log.exception("attribution failed")
            return None, f"attention map failed: {esc(exc)}"
        if not self._still_shown(request, task.item_id):
            return gr.skip(), gr.skip()
        return str(path), self._map_note(method, task.top[0])

    def cycle_method(self, state: dict | None, show: bool, method: str, request: gr.Request) -> tuple[Any, Any, str]:
        """Key `c`: the next attribution method, and its map."""
        names = [v for _, v in METHODS]
        nxt = names[(names.index(method) + 1) % len(names)] if method in names else names[0]
        img, note = self.attribution(state, True, nxt, request) if show else (None, "")
        return nxt, img, note

    def noop(self, request: gr.Request) -> str:
        """A round trip through the server with sign-in and nothing else (the bench's baseline)."""
        return self.user(request)

    def side(self, state: dict | None, request: gr.Request) -> tuple[Any, Any]:
        """Progress line and similar items (own event, after the item is on screen)."""
        annotator = self.user(request)
        task = Task.from_state(state) if state else None
        p = labeling.progress(self.project, annotator, task.round_id if task else None)
        parts = []
        if task and task.round_id:
            parts.append(f"{p['round_labelled']:,} / {p['round_total']:,} labelled in this round "
                         f"({p['round_skipped']:,} skipped, {p['round_unsure']:,} unsure)")
        parts.append(f"{p['labelled']:,} labelled of {p['items']:,}")
        parts.append(f"{p['mine']:,} by you ({esc(annotator)})")
        gallery: list = []
        if task is not None and task.version_id is not None:
            try:
                index = self.grid.index.get(task.version_id)
                for item_id, path, label, sim in labeling.similar_labelled(self.project, task.item_id, index,
                                                                           k=SIMILAR_K):
                    gallery.append((str(self.prefetch.photo(item_id, path)), f"{label} · {sim:.2f}"))
            except Exception:
                log.exception("similar items failed")
        if task is not None and not self._still_shown(request, task.item_id):
            return ", ".join(parts), gr.skip()
        return ", ".join(parts), gallery

    def status(self) -> str:
        """Model line, and the background jobs queued or running with where they stand (a
        fine-tune's epoch and ETA), read from the store: the labeller never waits for them."""
        from active import jobs

        line = self._model_line()
        busy = jobs.status_line(self.project)
        return f"{line} · {esc(busy)}" if busy else line

    def _model_line(self) -> str:
        """The serving version, a running refresh, or a newly serving version."""
        with db.session(self.project.engine) as s:
            latest = versions.serving(s)
        if latest is None:
            return "no model yet: run `active score` to get suggestions"
        with self._lock:
            tr = self.training
            if tr is not None and (tr.base_version is None or latest.id > tr.base_version):
                self.training = tr = None
                self._announced = latest.id
            elif tr is not None and time.monotonic() - tr.started > TRAINING_GIVE_UP_S:
                self.training = tr = None
        acc = (latest.metrics or {}).get("holdout", {}).get("accuracy")
        line = f"model v{latest.id} ({esc(latest.mode)}, {latest.n_labels:,} labels"
        line += f", holdout accuracy {acc:.1%})" if isinstance(acc, int | float) else ")"
        if tr is not None:
            nxt = (tr.base_version or 0) + 1
            return f"{line} · **model v{nxt} training… ({tr.n_labels:,} labels)**"
        if self._announced == latest.id:
            return f"{line} · new version published: suggestions use it from the next item"
        return line

    # -- review tab ----------------------------------------------------------------------------
    def _require_reviewer(self, request: gr.Request) -> str:
        name = self.user(request)
        if self.role(name) != "reviewer":
            raise gr.Error("the Review tab is for reviewers")
        return name

    def review_next(self, request: gr.Request, skip: dict | None = None, note: str = "",
                    dispute_id: int | None = None) -> list[Any]:
        """Outputs of every Review event: state, item id, served token, photo, info, the two maps,
        the pool and holdout tables, the counts, the picker, the note."""
        self._require_reviewer(request)
        skipped = list((skip or {}).get("skipped", []))
        d = dashboard.next_dispute(self.project, self.services, skip=skipped, dispute_id=dispute_id)
        if d is None and dispute_id is not None:  # resolved or refreshed away meanwhile: the next one
            d = dashboard.next_dispute(self.project, self.services, skip=skipped)
        pool, holdout = dashboard.dispute_tables(self.project)
        counts = dashboard.dispute_counts(self.project)
        served = f"{d['item_id'] if d else ''}:{next(self._served)}"
        if d is None:
            return [None, None, served, None, "**No open disputes.**", None, None, pool, holdout, counts,
                    gr.Dropdown(value=None), note]
        d["skipped"] = skipped
        given_map = suggested_map = None
        # Attribution maps explain the default field's outputs (the network's head); another
        # field's dispute shows the photo and the labels without them.
        if d["version_id"] is not None and d["field"] == DEFAULT_FIELD:
            for target, slot in ((d["given"], "given"), (d["suggestion"], "suggested")):
                if not target:
                    continue
                try:
                    p = self.prefetch.attribution(self.project, d["item_id"], d["version_id"], target=target)
                except Exception as exc:  # noqa: BLE001
                    log.info("review attribution failed: %s", exc)
                    p = None
                if slot == "given":
                    given_map = str(p) if p else None
                else:
                    suggested_map = str(p) if p else None
        photo = str(self.prefetch.photo(d["item_id"], d["path"]))
        d["labels"] = [list(r) for r in d["labels"]]
        return [d, d["item_id"], served, photo, dashboard.dispute_markdown(d, esc), given_map, suggested_map,
                pool, holdout, counts, gr.update(choices=self.project.classes_of(d["field"]), value=None), note]

    def _review_mismatch(self, state: dict | None, item_id: Any, request: gr.Request) -> list[Any] | None:
        """The page named another item than the dispute this session was sent: refuse, re-show."""
        named = self._named(item_id)
        if named == (state or {}).get("item_id"):
            return None
        note = f"not recorded: #{named} is not the dispute on this page"
        if state:
            return self.review_next(request, state, note, dispute_id=state.get("dispute_id"))
        return self.review_next(request, None, note)

    def review_open(self, state: dict | None, evt: gr.SelectData, request: gr.Request) -> list[Any]:
        """A click on a row of either disputes table opens that dispute."""
        row = evt.row_value or []
        skip = {"skipped": (state or {}).get("skipped", [])}
        if not row or row[0] in (None, ""):
            return self.review_next(request, skip)
        dispute_id = int(row[0])
        out = self.review_next(request, skip, dispute_id=dispute_id)
        if out[0] is None or out[0]["dispute_id"] != dispute_id:  # resolved since the table was drawn
            out[-1] = f"dispute #{dispute_id} is no longer open"
        return out

    def resolve(self, state: dict | None, item_id: Any, how: str, cls: str | None, request: gr.Request) -> list[Any]:
        reviewer = self._require_reviewer(request)
        refused = self._review_mismatch(state, item_id, request)
        if refused is not None:
            return refused
        if not state:
            return self.review_next(request)
        label = {"given": state.get("given"), "model": state.get("suggestion")}.get(how, cls)
        if not label:
            return self.review_next(request, state, "not recorded: pick a class to resolve with",
                                    dispute_id=state["dispute_id"])
        try:
            self.project.check_class(label, state.get("field", DEFAULT_FIELD))
            dashboard.resolve(self.project, self.services, state, label, reviewer)
        except UserError as exc:
            return self.review_next(request, state, f"not recorded: {esc(exc)}")
        note = (f"dispute #{state['dispute_id']} resolved: item #{state['item_id']} is **{esc(label)}** "
                "· Backspace undoes")
        return self.review_next(request, {"skipped": state.get("skipped", [])}, note)

    def resolve_given(self, state: dict | None, item_id: int | None, request: gr.Request) -> list[Any]:
        return self.resolve(state, item_id, "given", None, request)

    def resolve_model(self, state: dict | None, item_id: int | None, request: gr.Request) -> list[Any]:
        return self.resolve(state, item_id, "model", None, request)

    def resolve_class(self, state: dict | None, item_id: int | None, cls: str | None,
                      request: gr.Request) -> list[Any]:
        return self.resolve(state, item_id, "class", cls, request)

    def review_skip(self, state: dict | None, item_id: int | None, request: gr.Request) -> list[Any]:
        refused = self._review_mismatch(state, item_id, request)
        if refused is not None:
            return refused
        skipped = list((state or {}).get("skipped", []))
        if state:
            skipped.append(state["dispute_id"])
        return self.review_next(request, {"skipped": skipped})

    def review_undo(self, state: dict | None, item_id: int | None, request: gr.Request) -> list[Any]:
        """Backspace on the Review tab: undo this reviewer's last resolution (an `undo` row; the
        disputes it settled are open again) and show that dispute."""
        reviewer = self._require_reviewer(request)
        refused = self._review_mismatch(state, item_id, request)
        if refused is not None:
            return refused
        undone, dispute_id = dashboard.undo_review(self.project, reviewer)
        skip = {"skipped": (state or {}).get("skipped", [])}
        if undone is None:
            return self.review_next(request, skip, "nothing to undo",
                                    dispute_id=state["dispute_id"] if state else None)
        note = f"undid your review of item #{undone.item_id} ({esc(undone.label)})"
        if dispute_id is None:
            return self.review_next(request, skip, note + "; its dispute is gone (refreshed meanwhile)")
        return self.review_next(request, skip, note + f"; dispute #{dispute_id} is open again", dispute_id=dispute_id)

    # -- page --------------------------------------------------------------------------------
    def on_load(self, request: gr.Request) -> tuple[Any, str]:
        name = self.user(request)
        role = self.role(name)
        who = f"Signed in as **{esc(name)}** ({esc(role)})"
        return gr.Tab(visible=role == "reviewer"), who

    def build(self) -> gr.Blocks:
        # Every field's classes: the server checks a pick against these, and each item's update
        # narrows the list to its field's (the class is then checked against that field).
        classes = list(dict.fromkeys(c for f in self.project.field_names for c in self.project.classes_of(f)))
        with gr.Blocks(title="active-labeler") as demo:
            with gr.Row():
                who = gr.Markdown()
                status = gr.Markdown(elem_id="status")
            with gr.Tabs() as tabs:
                with gr.Tab("Label", id="label"):
                    # What the page shows, for the decisions to name (and for scripts: `item_id`).
                    state, item_id, served = _shown_item_fields("item-id", "served")
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=5):
                            photo = _photo("photo", "Loading the next photo…", "loading-label", height=560,
                                           buttons=["fullscreen"])
                        with gr.Column(scale=4):
                            why = gr.Markdown(elem_id="why")
                            bars = gr.Label(num_top_classes=TOP_BARS, label="Suggestions (calibrated confidence)",
                                            elem_id="suggestions")
                            with gr.Row(elem_id="picks"):
                                picks = [gr.Button(f"{i + 1}", size="sm", elem_id=f"pick-{i + 1}",
                                                   elem_classes="pick-btn", visible="hidden")
                                         for i in range(N_PICKS)]
                            picker = gr.Dropdown(classes, value=None, filterable=True, label="Another class (/ to search)",
                                                 elem_id="class-picker")
                            with gr.Row():
                                accept = gr.Button("Accept top (Enter)", variant="primary", elem_id="btn-accept")
                                skip = gr.Button("Skip (s)", elem_id="btn-skip")
                                unsure = gr.Button("Unsure (u)", elem_id="btn-unsure")
                                undo = gr.Button("Undo (⌫)", elem_id="btn-undo")
                                more = gr.Button("More like this (l)", elem_id="btn-more")
                                next_field = gr.Button("Next field (f)", elem_id="btn-next-field",
                                                       visible=len(self.project.field_names) > 1)
                            note = gr.Markdown(elem_id="note")
                            progress = gr.Markdown(elem_id="progress")
                        with gr.Column(scale=4):
                            with gr.Row():
                                show_attr = gr.Checkbox(True, label="Attention map (a)", elem_id="show-attr")
                                method = gr.Dropdown(METHODS, value=attribution_methods.DEFAULT_METHOD, label="Method",
                                                     filterable=False, elem_id="attr-method")
                                cycle = gr.Button("Next method (c)", size="sm", elem_id="btn-cycle-method")
                            attr = gr.Image(label="where the model looked", type="filepath", height=400,
                                            interactive=False, elem_id="attr")
                            attr_note = gr.Markdown()
                    similar = gr.Gallery(label="Similar labelled items (cosine on this model's embeddings)",
                                         columns=SIMILAR_K, height=220, elem_id="similar")
                    gr.Markdown(SHORTCUTS)

                with gr.Tab("Review", id="review", visible=False) as review_tab:
                    rstate, ritem, rserved = _shown_item_fields("review-item-id", "rserved")
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=4):
                            rphoto = _photo("rphoto", "Loading the next dispute…", "loading-review", height=440)
                        with gr.Column(scale=4):
                            rinfo = gr.Markdown(elem_id="rinfo")
                            with gr.Row():
                                keep = gr.Button("Keep given (g)", variant="primary", elem_id="btn-keep")
                                take = gr.Button("Take model's (m)", elem_id="btn-model")
                                rnext = gr.Button("Next (n)", elem_id="btn-next-dispute")
                                rundo = gr.Button("Undo (⌫)", elem_id="btn-review-undo")
                                rmore = gr.Button("More like this (l)", elem_id="btn-more-review")
                            rpicker = gr.Dropdown(classes, value=None, filterable=True,
                                                  label="Resolve as another class (/ to search)", elem_id="review-picker")
                            rnote = gr.Markdown(elem_id="review-note")
                    with gr.Row(elem_id="rmaps"):
                        rgiven = gr.Image(label="attention for the given label", type="filepath", height=300,
                                          interactive=False)
                        rsugg = gr.Image(label="attention for the model's suggestion", type="filepath", height=300,
                                         interactive=False)
                    rcounts = gr.Dataframe(headers=["reason", "open", "resolved"], label="Disputes by reason",
                                           interactive=False, elem_id="review-counts")
                    with gr.Row():
                        rtable = gr.Dataframe(headers=["dispute", "item", "reason", "score"], interactive=False,
                                              label="Open disputes on pool items, by score (click a row to open it)",
                                              elem_id="review-table")
                        rholdout = gr.Dataframe(headers=["dispute", "item", "reason", "score"], interactive=False,
                                                label="Holdout items whose label looks wrong (the evaluation set)",
                                                elem_id="review-holdout")

                with gr.Tab("Grid", id="grid"):
                    grid_parts = self.grid.build()

                with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                    refresh = gr.Button("Refresh", size="sm")
                    with gr.Row():
                        by_class = gr.Dataframe(label="Labelled per class", interactive=False)
                        by_annot = gr.Dataframe(label="Decisions per annotator (undone ones not counted)", interactive=False)
                    agree = gr.Markdown()
                    with gr.Row():
                        curve = gr.Image(label="learning curve", type="filepath", interactive=False, height=380,
                                         elem_classes="plot")
                        confusion = gr.Image(label="confusion matrix (current version, holdout)", type="filepath",
                                             interactive=False, height=380, elem_classes="plot")
                    with gr.Row():
                        dist = gr.Image(label="labels vs predictions over the pool", type="filepath", interactive=False,
                                        height=380, elem_classes="plot")
                        averages = gr.Gallery(label="class-average attention (current version)", columns=5,
                                              height=300)
                    dash_note = gr.Markdown()

            item_out = [state, item_id, served, photo, bars, why, *picks, note, picker, attr, attr_note]
            view = [show_attr, method]
            fast = {"concurrency_limit": None, "show_progress": "hidden"}

            def chain(ev: Any, *, api: bool = False) -> None:
                # The map and the side panel are their own events, so the item shows first. The
                # first chain also names them as API endpoints (for gradio_client and the bench).
                ev.then(self.attribution, [state, show_attr, method], [attr, attr_note], **fast,
                        api_name="attribution" if api else False).then(
                    self.side, [state], [progress, similar], **fast, api_name="side" if api else False)

            chain(demo.load(self.start, view, item_out, api_name="start", **fast), api=True)
            demo.load(self.on_load, None, [review_tab, who], api_name=False)
            demo.load(self.status, None, status, api_name="status")
            named = [state, item_id, *view]
            chain(accept.click(self.accept, named, item_out, api_name="accept", **fast))
            for i, b in enumerate(picks):
                chain(b.click(self.pick(i), named, item_out, api_name=f"pick_{i + 1}", **fast))
            chain(picker.input(self.correct, [state, item_id, picker, *view], item_out, api_name="correct", **fast))
            chain(skip.click(self.skip, named, item_out, api_name="skip", **fast))
            chain(unsure.click(self.unsure, named, item_out, api_name="unsure", **fast))
            chain(undo.click(self.undo, named, item_out, api_name="undo", **fast))
            chain(next_field.click(self.next_field, named, item_out, api_name="next_field", **fast))
            for ctl in (show_attr, method):
                ctl.input(self.attribution, [state, show_attr, method], [attr, attr_note], api_name=False,
                          concurrency_limit=2, concurrency_id="attribution", trigger_mode="always_last")
            cycle.click(self.cycle_method, [state, show_attr, method], [method, attr, attr_note], api_name="cycle_method",
                        concurrency_limit=2, concurrency_id="attribution", trigger_mode="always_last")
            gr.Timer(STATUS_EVERY_S).tick(self.status, None, status, api_name=False, show_progress="hidden")
            gr.api(self.noop, api_name="noop", concurrency_limit=None)

            rout = [rstate, ritem, rserved, rphoto, rinfo, rgiven, rsugg, rtable, rholdout, rcounts, rpicker, rnote]
            rnamed = [rstate, ritem]
            review_tab.select(self.review_next, None, rout, api_name="review_next")
            keep.click(self.resolve_given, rnamed, rout, api_name="resolve_given")
            take.click(self.resolve_model, rnamed, rout, api_name="resolve_model")
            rpicker.input(self.resolve_class, [rstate, ritem, rpicker], rout, api_name="resolve_class")
            rnext.click(self.review_skip, rnamed, rout, api_name="review_skip")
            rundo.click(self.review_undo, rnamed, rout, api_name="review_undo")
            for table in (rtable, rholdout):
                table.select(self.review_open, [rstate], rout, api_name=False)

            # "More like this": the item on screen -> a page of its nearest unlabelled neighbours.
            gout = [*grid_parts["outputs"], tabs]
            more.click(self.more_like, [state], gout, api_name="more_like", show_progress="hidden")
            rmore.click(self.more_like, [rstate], gout, api_name="more_like_review", show_progress="hidden")

            dout = [by_class, by_annot, agree, curve, confusion, dist, averages, dash_note]
            dash_tab.select(self.dashboard, None, dout, api_name="dashboard")
            refresh.click(self.dashboard, None, dout, api_name=False)
        return demo

    def more_like(self, state: dict | None, request: gr.Request) -> list[Any]:
        """The Grid tab, opened on the nearest neighbours of the item shown here that are
        unlabelled in the field shown here."""
        item_id = (state or {}).get("item_id")
        return [*self.grid.more_like(int(item_id) if item_id is not None else None, request, (state or {}).get("field")),
                gr.Tabs(selected="grid")]

    def dashboard(self, request: gr.Request) -> list[Any]:
        self.user(request)
        return self.dashboards.render()


def build_app(project: Project, *, services: Services | None = None, auth: bool = True) -> tuple[gr.Blocks, LabelerApp]:
    app = LabelerApp(project, services=services, auth=auth)
    return app.build(), app


def launch(project: Project, *, host: str = "127.0.0.1", port: int = 7860, services: Services | None = None,
           block: bool = True, quiet: bool = False, no_auth: bool = False,
           allowed_origins: Sequence[str] = ()) -> tuple[gr.Blocks, LabelerApp]:
    """Start the server. Sign-in is always on; ``no_auth`` (a local demo) is refused off loopback."""
    check_port(host, port)
    if no_auth:
        if not is_loopback(host):
            raise UserError(f"refusing to serve on {host} without sign-in: --no-auth is for loopback only")
        log.warning("serving WITHOUT sign-in: every client is a reviewer. A reverse proxy or tunnel to this "
                    "port makes that public; use it for a local demo only")
    else:
        with db.session(project.engine) as s:
            if not users.all_users(s):
                raise UserError("no users yet: add one first (`active users add NAME --role reviewer`), "
                                "or pass --no-auth for a local demo without sign-in")
    demo, app = build_app(project, services=services, auth=not no_auth)
    try:
        app.warm_up()
        demo.queue(default_concurrency_limit=4)
        serve_blocks(demo, None if no_auth else project.engine, host=host, port=port, allowed_origins=allowed_origins,
                     auth_message="active-labeler: sign in with the name and password from `active users add`",
                     head=KEYS_JS + GRID_JS, css=CSS + GRID_CSS, block=block, quiet=quiet)
    except BaseException:  # Ctrl-C or SIGTERM while blocking, or a failed start: stop what was started
        app.close()
        raise
    if block:  # stopped: so is its background work (otherwise the caller closes it)
        app.close()
    return demo, app


def check_port(host: str, port: int) -> None:
    """A clear one-line error (exit 2) instead of a server traceback when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: only a listener blocks
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"port {port} on {host} is busy ({exc.strerror or exc}): pass a free --port") from None


def serve(project: Project, *, host: str = "127.0.0.1", port: int = 7860, no_auth: bool = False,
          allowed_origins: Sequence[str] = ()) -> None:
    """`active serve`: run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it found;
    # with Python's default one the process would die there, before the map child and the local
    # worker are stopped (`launch`, `active serve`). This one ends it through those cleanups.
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        launch(project, host=host, port=port, block=True, no_auth=no_auth, allowed_origins=allowed_origins)
    finally:
        signal.signal(signal.SIGTERM, before)


def _exit_on_sigterm(signum: int, frame: Any) -> None:  # noqa: ANN401
    raise SystemExit(0)

