"""The labelling app: a Gradio `Blocks` with Label, Review and Dashboard tabs.

It owns no business logic: leasing and recording labels are `active.labeling`, users are
`storage.users`, attribution maps, embeddings and retraining come through `labeler.services`.
Event handlers run in Gradio's thread pool; slow work (attribution maps, plots, the head refresh)
runs in background threads so the next item is shown first.
"""

from __future__ import annotations

import getpass
import html
import logging
import re
import threading
import time
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
from labeler.prefetch import Prefetcher
from labeler.security import is_loopback
from labeler.server import serve_blocks
from labeler.services import Services, default_services
from models.images import ImageError
from storage import db, users, versions
from storage.enums import Decision

log = logging.getLogger(__name__)

N_PICKS = 9  # keys 1-9
TOP_BARS = 5
SIMILAR_K = 6
PREFETCH_AHEAD = 2  # items prepared after the current one (two, so a colleague taking one does not empty it)
STATUS_EVERY_S = 3.0
TRAINING_GIVE_UP_S = 3600  # stop saying "training…" when no new version came after this long
METHODS = [(m.display, m.name) for m in attribution_methods.REGISTRY.values()]  # (shown, value) for the list

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>$])")


def esc(text: object) -> str:
    """A user-supplied string made inert for gr.Markdown: HTML-escaped, Markdown punctuation escaped."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=True))


SHORTCUTS = """**Keys** · `Enter` accept the top suggestion · `1`–`9` pick the n-th suggestion ·
`/` search all classes · `s` skip · `u` unsure · `Backspace` undo the last label ·
`a` attention map on/off · `l` more like this (Grid tab) · Review tab: `g` keep the given label, `m` take the model's suggestion, `n` next"""

# Keys click the buttons (so every path goes through the same events); keys typed into a text
# field or the class search are left alone. A button counts only when it is visible (its tab is open).
KEYS_JS = """
<script>
(() => {
  const byKey = {"Enter": "btn-accept", "s": "btn-skip", "u": "btn-unsure", "Backspace": "btn-undo", "l": "btn-more",
                 "g": "btn-keep", "m": "btn-model", "n": "btn-next-dispute"};
  function visible(el) { return el && el.offsetParent !== null && !el.disabled; }
  function target(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    return el.tagName === "BUTTON" ? el : el.querySelector("button") || el;
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    const tag = (t && t.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || (t && t.isContentEditable)) return;
    let id = byKey[e.key];
    if (!id && /^[1-9]$/.test(e.key)) id = "pick-" + e.key;
    if (e.key === "/") {
      const box = document.querySelector("#class-picker input");
      if (box && visible(box)) { e.preventDefault(); box.focus(); }
      return;
    }
    if (e.key === "a") {
      const box = document.querySelector("#show-attr input");
      if (box && visible(box)) { e.preventDefault(); box.click(); }
      return;
    }
    if (!id) return;
    const el = target(id);
    if (visible(el)) { e.preventDefault(); el.click(); }
  });
})();
</script>
"""

CSS = """
#photo img, .plot img { object-fit: contain !important; }
.pick-btn { min-width: 0 !important; }
#why, #progress { font-size: 0.95rem; }
"""


@dataclass
class Training:
    """What the page says about a background head refresh started from this server."""

    base_version: int | None
    n_labels: int
    started: float = field(default_factory=time.monotonic)


class LabelerApp:
    """State shared by every browser session of one server: project, caches, background threads."""

    def __init__(self, project: Project, *, services: Services | None = None, auth: bool = True) -> None:
        self.project = project
        self.services = services or default_services()
        self.auth = auth
        self.prefetch = Prefetcher(self.services.explain_item)
        self.dashboards = dashboard.DashboardCache(project, self.services)
        self._lock = threading.Lock()
        self.training: Training | None = None
        self._announced: int | None = None
        self.grid = GridTab(self)

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
    def show(self, task: Task | None, note: str = "",
             view: tuple[bool, str] = (True, attribution_methods.DEFAULT_METHOD)) -> list[Any]:
        """Outputs of every event that changes the item: state, photo, bars, why, 9 picks, note,
        picker, map, map note. The map comes along when it is already made (prefetched); otherwise
        it is left empty here and the chained attribution event fills it."""
        if task is None:
            picks = [gr.Button(value=f"{i + 1}", visible="hidden") for i in range(N_PICKS)]
            done = "**Nothing left to label** in the open rounds. Open a new round with `active select`."
            return [None, None, None, done, *picks, note, gr.Dropdown(value=None), None, ""]
        try:
            photo = self.prefetch.photo(task.item_id, task.path)
        except ImageError as exc:  # a file that vanished or broke since import: set it aside, go on
            labeling.set_aside(self.project, task.item_id, str(exc))
            return self.show(None, f"#{task.item_id} cannot be shown ({esc(exc)}): set aside; press Enter for the next",
                             view)
        bars = {c: p for c, p in task.ranked[:TOP_BARS]} if task.ranked else None
        picks = []
        for i in range(N_PICKS):
            if i < len(task.ranked):
                c, p = task.ranked[i]
                picks.append(gr.Button(value=f"{i + 1} · {c} {p:.0%}", visible=True))
            else:
                picks.append(gr.Button(value=f"{i + 1}", visible="hidden"))
        model = f"model v{task.version_id}" if task.version_id else "no model suggestions yet"
        why = f"**Why this item:** {esc(task.why())} · {esc(model)} · item #{task.item_id}"
        attr_img, attr_text = None, ""
        show_attr, method = view
        if show_attr and task.version_id is not None and task.top is not None:
            ready = self.prefetch.ready(("map", task.item_id, task.version_id, method, task.top[0]))
            if ready is not None:
                attr_img, attr_text = str(ready), self._map_note(method, task.top[0])
        return [task.to_state(), str(photo), bars, why, *picks, note, gr.Dropdown(value=None), attr_img, attr_text]

    @staticmethod
    def _map_note(method: str, target: str) -> str:
        name = attribution_methods.REGISTRY[method].display if method in attribution_methods.REGISTRY else "unknown method"
        return f"{name} for **{esc(target)}**"

    def _after_label(self, annotator: str, task: Task | None) -> None:
        """Background: prefetch what comes next, then let the policy decide on a head refresh."""
        def work() -> None:
            nxt = labeling.upcoming(self.project, annotator, n=PREFETCH_AHEAD)
            self.prefetch.warm(self.project, nxt)
            self._maybe_refresh()

        if task is not None:
            self.prefetch.warm(self.project, [task])
        self.prefetch.later(work)

    def after_grid(self, annotator: str) -> None:
        """Background: a confirmed page added labels; let the policy decide on a head refresh."""
        del annotator
        self.prefetch.later(self._maybe_refresh)

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
        annotator = self.user(request)
        task = labeling.next_task(self.project, annotator)
        self._after_label(annotator, task)
        return self.show(task, view=(show_attr, method))

    def _label(self, state: dict | None, view: tuple[bool, str], request: gr.Request, *, decision: str,
               label: str | None = None, choose: int | None = None) -> list[Any]:
        annotator = self.user(request)
        if state is None:
            return self.start(*view, request)
        task = Task.from_state(state)
        if choose is not None:
            if choose >= len(task.ranked):
                return self.show(task, f"there is no suggestion {choose + 1} for this item", view)
            label = task.ranked[choose][0]
        if decision == "pick":
            if not label:
                return self.show(task, "no suggestion to accept: pick a class (press /)", view)
            decision = labeling.decide(task, label)
        try:
            row, nxt = labeling.record(self.project, annotator, task, decision=decision, label=label)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        self._after_label(annotator, nxt)
        if row is None:
            return self.show(nxt, f"#{task.item_id} was already labelled by you; not recorded twice", view)
        what = f"{row.decision} {esc(row.label)}" if row.label else row.decision
        return self.show(nxt, f"#{task.item_id}: {what}", view)

    def accept(self, state: dict | None, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
        task = Task.from_state(state) if state else None
        top = task.top[0] if task and task.top else None
        return self._label(state, (show_attr, method), request, decision="pick", label=top)

    def pick(self, n: int):  # noqa: ANN201
        def fn(state: dict | None, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
            return self._label(state, (show_attr, method), request, decision="pick", choose=n)

        fn.__name__ = f"pick_{n + 1}"
        return fn

    def correct(self, state: dict | None, cls: str | None, show_attr: bool, method: str,
                request: gr.Request) -> list[Any]:
        if not cls:
            return self.show(Task.from_state(state) if state else None, view=(show_attr, method))
        return self._label(state, (show_attr, method), request, decision="pick", label=cls)

    def skip(self, state: dict | None, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
        return self._label(state, (show_attr, method), request, decision=Decision.SKIPPED)

    def unsure(self, state: dict | None, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
        return self._label(state, (show_attr, method), request, decision=Decision.UNSURE)

    def undo(self, state: dict | None, show_attr: bool, method: str, request: gr.Request) -> list[Any]:
        annotator = self.user(request)
        undone, task = labeling.undo_last(self.project, annotator)
        self._after_label(annotator, task)
        note = f"undid your label on #{undone.item_id}" if undone else "nothing to undo"
        return self.show(task, note, (show_attr, method))

    def attribution(self, state: dict | None, show: bool, method: str) -> tuple[Any, str]:
        """The attribution overlay of the shown item for its top suggestion (own event)."""
        if not state or not show:
            return None, ""
        task = Task.from_state(state)
        if task.version_id is None or task.top is None:
            return None, "no attention map: this model version has no classifier head yet"
        try:
            path = self.prefetch.attribution(self.project, task.item_id, task.version_id, method=method,
                                             target=task.top[0])
        except Exception as exc:  # show the reason on the page; labelling goes on
            log.exception("attribution failed")
            return None, f"attention map failed: {esc(exc)}"
        return str(path), self._map_note(method, task.top[0])

    def side(self, state: dict | None, request: gr.Request) -> tuple[str, list]:
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
        return ", ".join(parts), gallery

    def status(self) -> str:
        """Model line: the serving version, a running refresh, or a newly serving version."""
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

    def review_next(self, request: gr.Request, skip: dict | None = None) -> list[Any]:  # noqa: B006
        self._require_reviewer(request)
        skipped = list((skip or {}).get("skipped", []))
        d = dashboard.next_dispute(self.project, self.services, skip=skipped)
        if d is None:
            return [None, None, "**No open disputes.**", None, None, dashboard.dispute_table(self.project, self.services),
                    gr.Dropdown(value=None)]
        d["skipped"] = skipped
        given_map = suggested_map = None
        if d["version_id"] is not None:
            for target, slot in ((d["given"], "given"), (d["suggestion"], "suggested")):
                if not target:
                    continue
                try:
                    p = self.prefetch.attribution(self.project, d["item_id"], d["version_id"], target=target)
                except Exception as exc:  # noqa: BLE001
                    log.info("review attribution failed: %s", exc)
                    p = None
                if slot == "given":
                    given_map = (str(p), f"given: {target}") if p else None
                else:
                    suggested_map = (str(p), f"model: {target}") if p else None
        photo = str(self.prefetch.photo(d["item_id"], d["path"]))
        return [d, photo, dashboard.dispute_markdown(d, esc), given_map and given_map[0],
                suggested_map and suggested_map[0], dashboard.dispute_table(self.project, self.services),
                gr.Dropdown(value=None)]

    def resolve(self, state: dict | None, how: str, cls: str | None, request: gr.Request) -> list[Any]:
        reviewer = self._require_reviewer(request)
        if not state:
            return self.review_next(request)
        label = {"given": state.get("given"), "model": state.get("suggestion")}.get(how, cls)
        if not label:
            raise gr.Error("pick a class to resolve with")
        try:
            self.project.check_class(label)
            dashboard.resolve(self.project, self.services, state, label, reviewer)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        return self.review_next(request, {"skipped": state.get("skipped", [])})

    def resolve_given(self, state: dict | None, request: gr.Request) -> list[Any]:
        return self.resolve(state, "given", None, request)

    def resolve_model(self, state: dict | None, request: gr.Request) -> list[Any]:
        return self.resolve(state, "model", None, request)

    def resolve_class(self, state: dict | None, cls: str | None, request: gr.Request) -> list[Any]:
        return self.resolve(state, "class", cls, request)

    def review_skip(self, state: dict | None, request: gr.Request) -> list[Any]:
        skipped = list((state or {}).get("skipped", []))
        if state:
            skipped.append(state["dispute_id"])
        return self.review_next(request, {"skipped": skipped})

    # -- page --------------------------------------------------------------------------------
    def on_load(self, request: gr.Request) -> tuple[Any, str]:
        name = self.user(request)
        role = self.role(name)
        who = f"Signed in as **{esc(name)}** ({esc(role)})"
        return gr.Tab(visible=role == "reviewer"), who

    def build(self) -> gr.Blocks:
        classes = list(self.project.config.classes)
        with gr.Blocks(title="active-labeler") as demo:
            with gr.Row():
                who = gr.Markdown()
                status = gr.Markdown(elem_id="status")
            with gr.Tabs() as tabs:
                with gr.Tab("Label", id="label"):
                    state = gr.State(None)
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=5):
                            photo = gr.Image(label="photo", type="filepath", height=560, interactive=False,
                                             elem_id="photo", buttons=["fullscreen"])
                        with gr.Column(scale=4):
                            why = gr.Markdown(elem_id="why")
                            bars = gr.Label(num_top_classes=TOP_BARS, label="Suggestions (calibrated confidence)",
                                            elem_id="suggestions")
                            with gr.Row():
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
                            note = gr.Markdown(elem_id="note")
                            progress = gr.Markdown(elem_id="progress")
                        with gr.Column(scale=4):
                            with gr.Row():
                                show_attr = gr.Checkbox(True, label="Attention map (a)", elem_id="show-attr")
                                method = gr.Dropdown(METHODS, value=attribution_methods.DEFAULT_METHOD, label="Method", filterable=False,
                                                     elem_id="attr-method")
                            attr = gr.Image(label="where the model looked", type="filepath", height=400,
                                            interactive=False, elem_id="attr")
                            attr_note = gr.Markdown()
                    similar = gr.Gallery(label="Similar labelled items (cosine on this model's embeddings)",
                                         columns=SIMILAR_K, height=220, elem_id="similar")
                    gr.Markdown(SHORTCUTS)

                with gr.Tab("Review", id="review", visible=False) as review_tab:
                    rstate = gr.State(None)
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=4):
                            rphoto = gr.Image(label="photo", type="filepath", height=440, interactive=False)
                        with gr.Column(scale=4):
                            rinfo = gr.Markdown()
                            with gr.Row():
                                keep = gr.Button("Keep given (g)", variant="primary", elem_id="btn-keep")
                                take = gr.Button("Take model's (m)", elem_id="btn-model")
                                rnext = gr.Button("Next (n)", elem_id="btn-next-dispute")
                                rmore = gr.Button("More like this", elem_id="btn-more-review")
                            rpicker = gr.Dropdown(classes, value=None, filterable=True, label="Resolve as another class")
                    with gr.Row():
                        rgiven = gr.Image(label="attention for the given label", type="filepath", height=300,
                                          interactive=False)
                        rsugg = gr.Image(label="attention for the model's suggestion", type="filepath", height=300,
                                         interactive=False)
                    rtable = gr.Dataframe(headers=["dispute", "item", "reason", "score"], label="Open disputes, by score",
                                          interactive=False)

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

            item_out = [state, photo, bars, why, *picks, note, picker, attr, attr_note]
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
            chain(accept.click(self.accept, [state, *view], item_out, api_name="accept", **fast))
            for i, b in enumerate(picks):
                chain(b.click(self.pick(i), [state, *view], item_out, api_name=f"pick_{i + 1}", **fast))
            chain(picker.input(self.correct, [state, picker, *view], item_out, api_name="correct", **fast))
            chain(skip.click(self.skip, [state, *view], item_out, api_name="skip", **fast))
            chain(unsure.click(self.unsure, [state, *view], item_out, api_name="unsure", **fast))
            chain(undo.click(self.undo, [state, *view], item_out, api_name="undo", **fast))
            for ctl in (show_attr, method):
                ctl.input(self.attribution, [state, show_attr, method], [attr, attr_note], api_name=False,
                          concurrency_limit=2, concurrency_id="attribution", trigger_mode="always_last")
            gr.Timer(STATUS_EVERY_S).tick(self.status, None, status, api_name=False, show_progress="hidden")

            rout = [rstate, rphoto, rinfo, rgiven, rsugg, rtable, rpicker]
            review_tab.select(self.review_next, None, rout, api_name="review_next")
            keep.click(self.resolve_given, [rstate], rout, api_name="resolve_given")
            take.click(self.resolve_model, [rstate], rout, api_name="resolve_model")
            rpicker.input(self.resolve_class, [rstate, rpicker], rout, api_name="resolve_class")
            rnext.click(self.review_skip, [rstate], rout, api_name="review_skip")

            # "More like this": the item on screen -> a page of its nearest unlabelled neighbours.
            gout = [*grid_parts["outputs"], tabs]
            more.click(self.more_like, [state], gout, api_name="more_like", show_progress="hidden")
            rmore.click(self.more_like, [rstate], gout, api_name="more_like_review", show_progress="hidden")

            dout = [by_class, by_annot, agree, curve, confusion, dist, averages, dash_note]
            dash_tab.select(self.dashboard, None, dout, api_name="dashboard")
            refresh.click(self.dashboard, None, dout, api_name=False)
        return demo

    def more_like(self, state: dict | None, request: gr.Request) -> list[Any]:
        """The Grid tab, opened on the nearest unlabelled neighbours of the item shown here."""
        item_id = (state or {}).get("item_id")
        return [*self.grid.more_like(int(item_id) if item_id is not None else None, request),
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
    demo.queue(default_concurrency_limit=4)
    serve_blocks(demo, None if no_auth else project.engine, host=host, port=port, allowed_origins=allowed_origins,
                 auth_message="active-labeler: sign in with the name and password from `active users add`",
                 head=KEYS_JS + GRID_JS, css=CSS + GRID_CSS, block=block, quiet=quiet)
    return demo, app


def serve(project: Project, *, host: str = "127.0.0.1", port: int = 7860, no_auth: bool = False,
          allowed_origins: Sequence[str] = ()) -> None:
    """`active serve`: run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch(project, host=host, port=port, block=True, no_auth=no_auth, allowed_origins=allowed_origins)

