"""The Grid tab: confirm a page of thumbnails the model puts in one class, and "more like this".

The page is one `gr.HTML` of small inline JPEGs (no file round trips: 48 thumbnails arrive with the
page). Marking happens in the browser (`GRID_JS`: click, or arrows + space); confirming sends the ids
of the thumbnails on screen and of the marked ones, read from the page itself, so the server
records exactly what the annotator saw (and of that, only what is still leased to them: see
`active.grid.confirm`). Business rules live in `active.grid`; this module renders and wires.

With several label fields a field selector picks the field the pages label (a `gr.State` per
browser, so the scripting API sets it with `/grid_field`); the class picker, the thumbnails'
suggestions, the labels and the attention maps follow it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from active import grid, labeling, similarity
from active.errors import UserError
from models.images import ImageError, load_thumbnail
from storage import db, labels
from storage.fields import DEFAULT_FIELD

if TYPE_CHECKING:
    from labeler.app import LabelerApp

log = logging.getLogger(__name__)

THUMB_SIDE = 160  # px, longer side (shown at 128 px: sharp on high-density screens)
THUMB_QUALITY = 80
THUMB_CACHE = 4096  # inline JPEGs kept in memory (~6 kB each)
THUMB_THREADS = 2
NEXT = "(next class)"

GRID_KEYS = """**Keys** · arrows move · `Space` marks / unmarks (or click) · `Enter` confirms the page ·
`Backspace` undoes the last page · `a` attention map of the focused thumbnail (or hover) ·
`l` more like the focused thumbnail · `n` next class"""

# Marks live in the page (they are the annotator's, until confirmed). The payload sent with a
# confirm is read from the DOM: the ids of the thumbnails on screen and of the marked ones.
GRID_JS = """
<script>
(() => {
  const G = window.activeGrid = {focus: 0, page: null, hoverTimer: null};
  function page() { return document.querySelector("#grid-page .grid-page"); }
  function thumbs() { const p = page(); return p ? Array.from(p.querySelectorAll(".grid-thumb")) : []; }
  function tabVisible() { const el = document.getElementById("grid-page"); return el && el.offsetParent !== null; }
  function sync() {
    const p = page();
    const id = p ? p.dataset.page + ":" + p.dataset.cls : null;
    if (id !== G.page) { G.page = id; G.focus = 0; }
    thumbs().forEach((t, i) => t.classList.toggle("focused", i === G.focus));
  }
  function click(id) {
    const el = document.getElementById(id);
    const b = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (b) b.click();
  }
  G.payload = () => {
    const p = page();
    if (!p) return "{}";
    const ts = thumbs();
    return JSON.stringify({page: Number(p.dataset.page), cls: p.dataset.cls, field: p.dataset.field,
      shown: ts.map(t => Number(t.dataset.item)),
      marked: ts.filter(t => t.classList.contains("marked")).map(t => Number(t.dataset.item))});
  };
  G.focused = () => { const t = thumbs()[G.focus]; return t ? t.dataset.item : ""; };
  G.toggle = (i) => { const t = thumbs()[i]; if (t) t.classList.toggle("marked"); };
  function move(dx, dy) {
    const ts = thumbs();
    if (!ts.length) return;
    const top = ts[0].offsetTop;
    let cols = ts.findIndex(t => t.offsetTop !== top);
    if (cols <= 0) cols = ts.length;
    G.focus = Math.max(0, Math.min(ts.length - 1, G.focus + dx + dy * cols));
    sync();
    ts[G.focus].scrollIntoView({block: "nearest"});
  }
  new MutationObserver(sync).observe(document.documentElement, {childList: true, subtree: true});
  document.addEventListener("click", (e) => {
    const t = e.target.closest && e.target.closest(".grid-thumb");
    if (!t) return;
    const i = thumbs().indexOf(t);
    if (i < 0) return;
    G.focus = i; G.toggle(i); sync();
  });
  document.addEventListener("mouseover", (e) => {
    const t = e.target.closest && e.target.closest(".grid-thumb");
    if (!t) return;
    const i = thumbs().indexOf(t);
    if (i < 0 || i === G.focus) return;
    G.focus = i; sync();
    clearTimeout(G.hoverTimer);
    G.hoverTimer = setTimeout(() => click("grid-attn"), 600);  // a pause on a thumbnail shows its map
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || !tabVisible()) return;
    const tag = (e.target && e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || (e.target && e.target.isContentEditable)) return;
    const moves = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    if (moves[e.key]) { e.preventDefault(); move(...moves[e.key]); return; }
    if (e.repeat) return;
    const buttons = {"Enter": "grid-confirm", "Backspace": "grid-undo", "a": "grid-attn", "l": "grid-more",
                     "n": "grid-next"};
    if (e.key === " ") { e.preventDefault(); G.toggle(G.focus); sync(); return; }
    if (buttons[e.key]) { e.preventDefault(); click(buttons[e.key]); }
  });
})();
</script>
"""

GRID_CSS = """
.grid-page { display: grid; grid-template-columns: repeat(auto-fill, 132px); gap: 6px; }
.grid-thumb { position: relative; width: 128px; height: 128px; border: 2px solid transparent; cursor: pointer;
  display: flex; align-items: center; justify-content: center; background: #f4f4f4; }
.grid-thumb img { max-width: 124px; max-height: 124px; }
.grid-thumb .conf { position: absolute; left: 2px; bottom: 2px; font-size: 11px; background: rgba(0,0,0,.6);
  color: #fff; padding: 0 3px; }
.grid-thumb.focused { border-color: #2563eb; }
.grid-thumb.marked img { opacity: .35; }
.grid-thumb.marked::after { content: "✕"; position: absolute; top: 0; right: 4px; color: #dc2626;
  font-size: 28px; font-weight: bold; }
"""


class Thumbnails:
    """Inline JPEG thumbnails (data URIs), made on a small pool, kept in an LRU. A thumbnail asked
    for while it is being made (by a prefetch) waits for that work instead of repeating it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._inflight: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(THUMB_THREADS, thread_name_prefix="thumbs")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _make(self, item_id: int, path: str) -> str | ImageError:
        try:
            im = load_thumbnail(path, THUMB_SIDE)
        except ImageError as exc:
            return exc
        finally:
            with self._lock:
                self._inflight.pop(item_id, None)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=THUMB_QUALITY)
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        with self._lock:
            self._cache[item_id] = uri
            while len(self._cache) > THUMB_CACHE:
                self._cache.popitem(last=False)
        return uri

    def _future(self, item_id: int, path: str) -> Future:
        with self._lock:
            hit = self._cache.get(item_id)
            if hit is not None:
                self._cache.move_to_end(item_id)
                done: Future = Future()
                done.set_result(hit)
                return done
            fut = self._inflight.get(item_id)
            if fut is None:
                fut = self._inflight[item_id] = self._pool.submit(self._make, item_id, path)
            return fut

    def many(self, pairs: list[tuple[int, str]]) -> list[str | ImageError]:
        """Data URI (or the reason it cannot be made) per (item_id, path), in order."""
        return [f.result() for f in [self._future(i, p) for i, p in pairs]]

    def warm(self, pairs: list[tuple[int, str]]) -> None:
        """Start making these thumbnails in the background (the page the annotator gets next)."""
        for i, p in pairs:
            self._future(i, p)


def page_html(page: grid.Page, uris: list[str]) -> str:
    """The page's thumbnails; ``uris`` aligned with ``page.thumbs`` (unreadable ones already left out)."""
    tiles = []
    for t, uri in zip(page.thumbs, uris, strict=True):
        score = f"{t.score:.0%}" if page.score_name == "confidence" else f"cos {t.score:.2f}"
        title = f"#{t.item_id} · {page.score_name} {score} · model: {t.pred or '?'}"
        tiles.append(f'<div class="grid-thumb" data-item="{t.item_id}" title="{html.escape(title, quote=True)}">'
                     f'<img src="{uri}" alt="item {t.item_id}"><span class="conf">{html.escape(score)}</span></div>')
    return (f'<div class="grid-page" data-page="{page.page_id}" data-cls="{html.escape(page.cls, quote=True)}" '
            f'data-field="{html.escape(page.field, quote=True)}">' + "".join(tiles) + "</div>")


class GridTab:
    """Handlers of the Grid tab; one per server, state per browser in a `gr.State`."""

    def __init__(self, app: LabelerApp) -> None:
        self.app = app
        self.project = app.project
        self.thumbs = Thumbnails()
        self.index = similarity.IndexCache(app.project.artifacts,
                                           lambda v: app.services.load_embeddings(app.project, v))

    def close(self) -> None:
        self.thumbs.close()

    # -- showing a page --------------------------------------------------------------------------
    def _field(self, field: str | None) -> str:
        """The field asked for (the default when none); a field the project lacks is an error on the page."""
        try:
            return self.project.check_field(field or DEFAULT_FIELD)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None

    def _render(self, page: grid.Page | None, note: str, field: str = DEFAULT_FIELD) -> list[Any]:
        """Outputs of every event that changes the page: state, page HTML, header, note, class
        picker (the field's classes), field picker, field state."""
        field = page.field if page is not None else field
        picker = gr.Dropdown(choices=[NEXT, *self.project.classes_of(field)], value=page.cls if page else None)
        fields = [gr.Dropdown(value=field), field]
        if page is None:
            return [None, "", "**Nothing to confirm** in that class: pick another or press `n`.", note, picker, *fields]
        uris = self.thumbs.many([(t.item_id, t.path) for t in page.thumbs])
        keep, shown_uris = [], []
        for t, uri in zip(page.thumbs, uris, strict=True):
            if isinstance(uri, ImageError):  # set aside like the Label tab does; never labelled unseen
                labeling.set_aside(self.project, t.item_id, str(uri))
                note += f" · #{t.item_id} cannot be shown ({html.escape(str(uri))}): set aside"
            else:
                keep.append(t)
                shown_uris.append(uri)
        page = grid.Page(page.page_id, page.cls, page.version_id, tuple(keep), page.score_name, page.seed_item,
                         page.field)
        if page.score_name == "confidence" and page.version_id is not None:
            self._warm_next(page.version_id, page.cls, page.field)
        what = (f"nearest unlabelled items to #{page.seed_item}" if page.seed_item is not None
                else "most confident first" if page.score_name == "confidence" else "nearest to your photo")
        of = f" ({html.escape(page.field)})" if len(self.project.field_names) > 1 else ""
        head = (f"**Page {page.page_id}: {len(keep)} × {html.escape(page.cls)}**{of} ({what}, model "
                f"v{page.version_id}) · mark the ones that do not belong, then Enter")
        return [page.to_state() | {"score_name": page.score_name}, page_html(page, shown_uris), head, note, picker,
                *fields]

    def _class_page(self, annotator: str, cls: str | None, *, after: str | None = None,
                    field: str = DEFAULT_FIELD) -> grid.Page | None:
        try:
            return grid.open_class_page(self.project, annotator, cls, after=after, field=field,
                                        version_id=grid.serving_id(self.project, field) if cls else None)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None

    def _warm_next(self, version_id: int, cls: str, field: str) -> None:
        """Prepare the thumbnails of the class's next page while the annotator looks at this one."""
        def work() -> None:
            try:
                self.thumbs.warm(grid.upcoming_class_page(self.project, version_id, cls, field=field))
            except Exception:  # a failed prefetch only costs speed
                log.exception("prefetching the next page failed")

        threading.Thread(target=work, name="grid-prefetch", daemon=True).start()

    def open(self, choice: str | None, state: dict | None, field: str | None, request: gr.Request) -> list[Any]:
        annotator = self.app.user(request)
        field = self._field(field)
        cls = _class_of(choice)
        if cls is not None and state and state.get("seed_item") is not None and state.get("page_id") \
                and state.get("field", DEFAULT_FIELD) == field:
            # A "more like this" page: picking a class says what to record it as, keeping the items.
            return self._recast(state, cls)
        after = None if cls else (state or {}).get("cls")
        return self._render(self._class_page(annotator, cls, after=after, field=field), "", field)

    def next_class(self, state: dict | None, field: str | None, request: gr.Request) -> list[Any]:
        annotator = self.app.user(request)
        field = self._field(field)
        after = (state or {}).get("cls") if (state or {}).get("field", DEFAULT_FIELD) == field else None
        return self._render(self._class_page(annotator, None, after=after, field=field), "", field)

    def pick_field(self, field: str | None, request: gr.Request) -> list[Any]:
        """The field selector: pages of ``field`` from now on, starting with its first class that has items."""
        annotator = self.app.user(request)
        field = self._field(field)
        return self._render(self._class_page(annotator, None, field=field), "", field)

    def _recast(self, state: dict, cls: str) -> list[Any]:
        field = state.get("field") or DEFAULT_FIELD
        with db.session(self.project.engine) as s:
            from storage import pages

            thumbs = tuple(pages.thumbs(s, int(state["page_id"]), field=field))
        page = grid.Page(int(state["page_id"]), cls, state.get("version_id"), thumbs, state.get("score_name", "cosine"),
                         state.get("seed_item"), field)
        return self._render(page, f"this page will be recorded as **{html.escape(cls)}**")

    # -- deciding --------------------------------------------------------------------------------
    def confirm(self, state: dict | None, payload: str, field: str | None, request: gr.Request) -> list[Any]:
        annotator = self.app.user(request)
        try:
            data = json.loads(payload or "{}")
            page_id, shown, marked = int(data["page"]), list(map(int, data["shown"])), list(map(int, data["marked"]))
            cls = str(data["cls"])
            # The field of the page on screen (its labels are of that field), else the one selected.
            field = self._field(str(data.get("field") or (state or {}).get("field") or field or DEFAULT_FIELD))
        except (ValueError, KeyError, TypeError):
            return self._render(None, "no page on screen to confirm", self._field(field)) if not state \
                else self._same(state, "")
        try:
            done = grid.confirm(self.project, annotator, page_id, shown, marked, cls=cls, field=field)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        note = f"page {done.page_id}: {len(done.labelled)} labelled {html.escape(done.cls)}"
        if done.queued:
            note += f", {len(done.queued)} sent to the Label tab"
        if done.lost:
            note += f"; {len(done.lost)} not recorded (your lease on them ran out and they were taken)"
        self.app.after_grid(annotator)
        page = self._class_page(annotator, done.cls, field=field) if (state or {}).get("seed_item") is None else None
        if page is None:
            page = self._class_page(annotator, None, after=done.cls, field=field)
        return self._render(page, note, field)

    def _same(self, state: dict, note: str) -> list[Any]:
        """The page on screen again (what is still on it), with ``note``."""
        out = self._recast(state, state["cls"])
        out[3] = note
        return out

    def undo(self, state: dict | None, field: str | None, request: gr.Request) -> list[Any]:
        annotator = self.app.user(request)
        field = self._field(field)
        undone = grid.undo_page(self.project, annotator)
        if undone is None:
            return self._same(state, "no page to undo") if state else self._render(None, "no page to undo", field)
        page_id, items = undone
        with db.session(self.project.engine) as s:
            from storage import pages

            rows = labels.for_items(s, items[:1]).get(items[0], []) if items else []
            mine = [r for r in rows if r.round_id == page_id and r.label]
            field = mine[-1].field if mine else field  # the undone page's field
            cls = next((t.pred for t in pages.thumbs(s, page_id, field=field) if t.pred), None)
        cls = mine[-1].label if mine else cls
        page = self._class_page(annotator, cls, field=field) if cls else None
        return self._render(page, f"undid page {page_id}: {len(items)} labels taken back", field)

    # -- attention and neighbours ------------------------------------------------------------------
    def attention(self, state: dict | None, focus: str) -> tuple[Any, str]:
        if not state or not focus or state.get("version_id") is None:
            return None, ""
        try:
            path = self.app.prefetch.attribution(self.project, int(focus), int(state["version_id"]),
                                                 target=state["cls"], field=state.get("field") or DEFAULT_FIELD)
        except Exception as exc:  # the page stays usable without the map
            log.exception("grid attribution failed")
            return None, f"attention map failed: {html.escape(str(exc))}"
        return str(path), f"#{int(focus)}: where the model looked for **{html.escape(state['cls'])}**"

    def _top_class(self, version_id: int, item_id: int, field: str) -> str | None:
        with db.session(self.project.engine) as s:
            return grid.top_class(s, version_id, item_id, field)

    def more_like(self, item_id: int | None, request: gr.Request, field: str | None = None) -> list[Any]:
        """A page of the nearest neighbours of ``item_id`` unlabelled in ``field``, in the serving
        version's space, proposed as the item's class of that field."""
        annotator = self.app.user(request)
        field = self._field(field)
        if item_id is None:
            return self._render(None, "no item to start from", field)
        with db.session(self.project.engine) as s:
            version = grid.serving_version(s, field)
            cur = labels.current(s, [item_id], field=field).get(item_id)
        if version is None:
            raise gr.Error(html.escape(str(grid.no_head(field))))
        index = self.index.get(version.id)
        query = index.vector(item_id)
        if query is None:
            return self._render(None, f"#{item_id} has no embedding in model v{version.id} yet", field)
        cls = (cur.label if cur is not None else self._top_class(version.id, item_id, field)) \
            or self.project.classes_of(field)[0]
        return self._neighbours_page(annotator, index, query, cls, seed=item_id, field=field, version_id=version.id)

    def _neighbours_page(self, annotator: str, index: similarity.SimilarityIndex, query: np.ndarray, cls: str | None,
                         *, seed: int | None, field: str, version_id: int) -> list[Any]:
        """A page of the items nearest to ``query`` unlabelled in ``field``, proposed as ``cls``
        (None: the serving version's class of the field for the nearest of them)."""
        found = index.neighbours(query, 2 * grid.PAGE_SIZE, allow=grid.unlabelled_filter(self.project, field),
                                 exclude=[] if seed is None else [seed])
        if cls is None:
            cls = (self._top_class(version_id, found[0][0], field) if found else None) \
                or self.project.classes_of(field)[0]
        page = grid.open_items_page(self.project, annotator, found, cls=cls, seed_item=seed, field=field)
        return self._render(page, "", field)

    def search_photo(self, path: str | None, field: str | None, request: gr.Request) -> list[Any]:
        """A page of the unlabelled items nearest to an uploaded photo (embedded with the serving model)."""
        annotator = self.app.user(request)
        field = self._field(field)
        if not path:
            return self._render(None, "", field)
        with db.session(self.project.engine) as s:
            version = grid.serving_version(s, field)
        if version is None:
            raise gr.Error(html.escape(str(grid.no_head(field))))
        if self.app.services.embed_photo is None:
            raise gr.Error("search by photo is not available in this server")
        try:
            vec, cls = self.app.services.embed_photo(self.project, version.id, path)
        except UserError as exc:
            raise gr.Error(html.escape(str(exc))) from None
        query = similarity.normalise(np.asarray(vec, dtype=np.float32)[None, :])[0]
        # The photo's class is the default field's head's; another field is proposed by its neighbours.
        out = self._neighbours_page(annotator, self.index.get(version.id), query,
                                    cls if field == DEFAULT_FIELD else None, seed=None, field=field,
                                    version_id=version.id)
        out[3] = (f"items nearest to your photo; the model calls it **{html.escape(cls)}**" if field == DEFAULT_FIELD
                  else "items nearest to your photo")
        return out

    # -- layout -----------------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        """The tab's components (call inside the `gr.Tab`); returns those the app wires to other tabs."""
        gstate = gr.State(None)
        gfield = gr.State(DEFAULT_FIELD)
        with gr.Row():
            fieldpick = gr.Dropdown(self.project.field_names, value=DEFAULT_FIELD, label="Field", elem_id="grid-field",
                                    visible=len(self.project.field_names) > 1, scale=1)
            picker = gr.Dropdown([NEXT, *self.project.config.classes], value=None, label="Class to confirm",
                                 filterable=True, elem_id="grid-class", scale=3)
            nxt = gr.Button("Next class (n)", elem_id="grid-next", scale=1)
            confirm = gr.Button("Confirm page (Enter)", variant="primary", elem_id="grid-confirm", scale=1)
            undo = gr.Button("Undo page (⌫)", elem_id="grid-undo", scale=1)
            photo = gr.Image(label="Find by photo", type="filepath", sources=["upload"], height=90,
                             elem_id="grid-photo", scale=2)
        head = gr.Markdown(elem_id="grid-head")
        note = gr.Markdown(elem_id="grid-note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                board = gr.HTML(elem_id="grid-page")
            with gr.Column(scale=2):
                attn = gr.Image(label="attention (hover or a)", type="filepath", interactive=False, height=300)
                attn_note = gr.Markdown()
        gr.Markdown(GRID_KEYS)
        payload = gr.Textbox(visible=False)
        focus = gr.Textbox(visible=False)
        attn_btn = gr.Button("map", elem_id="grid-attn", visible="hidden")
        more = gr.Button("more like this", elem_id="grid-more", visible="hidden")

        outs = [gstate, board, head, note, picker, fieldpick, gfield]
        fast = {"show_progress": "hidden"}
        fieldpick.input(self.pick_field, [fieldpick], outs, api_name="grid_field", **fast)
        picker.input(self.open, [picker, gstate, gfield], outs, api_name="grid_open", **fast)
        nxt.click(self.next_class, [gstate, gfield], outs, api_name="grid_next", **fast)
        confirm.click(self.confirm, [gstate, payload, gfield], outs, api_name="grid_confirm",
                      js="(s, p, f) => [s, window.activeGrid ? window.activeGrid.payload() : '{}', f]", **fast)
        undo.click(self.undo, [gstate, gfield], outs, api_name="grid_undo", **fast)
        attn_btn.click(self.attention, [gstate, focus], [attn, attn_note], api_name=False, concurrency_limit=2,
                       concurrency_id="attribution", trigger_mode="always_last",
                       js="(s, f) => [s, window.activeGrid ? window.activeGrid.focused() : '']")
        more.click(self._more_from_focus, [focus, gfield], outs, api_name="grid_more",
                   js="(f, g) => [window.activeGrid ? window.activeGrid.focused() : '', g]", **fast)
        photo.upload(self.search_photo, [photo, gfield], outs, api_name="grid_photo", concurrency_limit=1,
                     concurrency_id="embed", **fast)
        return {"outputs": outs, "state": gstate}

    def _more_from_focus(self, focus: str, field: str | None, request: gr.Request) -> list[Any]:
        return self.more_like(int(focus) if focus and focus.isdigit() else None, request, field)


def _class_of(choice: str | None) -> str | None:
    """The class name of a picker choice; None for the next class."""
    return None if not choice or choice == NEXT else choice
