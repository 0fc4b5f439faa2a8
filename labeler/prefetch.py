"""Work done ahead of the annotator: the display copy of a photo and its attribution map.

While someone looks at the current item, background threads prepare the next items' photos
and Grad-CAM maps, so that after a label the next item (photo + suggestions + map) is served from
memory. Each piece of work is a `Future` keyed by what it makes; asking for something already in
flight waits for it instead of computing it twice. The default method's maps may be made in
another process (``maps_in``: `labeler.mapchild.ChildMaps`); a thread of their own waits for
them, so photos are never queued behind a map.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from active.atomic import write_atomic
from active.attribution_methods import DEFAULT_METHOD
from models.images import load_rgb
from storage.fields import DEFAULT_FIELD

log = logging.getLogger(__name__)

DISPLAY_MAX_SIDE = 800  # px: larger photos are scaled down for the page (labels use the original)
DISPLAY_QUALITY = 90
KEEP = 512  # finished futures remembered (LRU); files stay on disk in the temp folder
# Intra-op threads for attribution in the server. One image through a small network gains little
# from more, and when the cores are shared (web server, other jobs) OpenMP's spinning threads make
# it far slower: a mobilenet_v2 forward measured 40 ms with 1 thread and 2,105 ms with 2 on this
# busy 2-core machine.
ATTRIBUTION_THREADS = 1


def map_key(item_id: int, version_id: int, method: str, target: str | None, field: str = DEFAULT_FIELD) -> tuple:
    """The cache key of an attribution map (what `Prefetcher.ready` is asked with)."""
    return ("map", item_id, version_id, method, target, field)


def limit_torch_threads() -> None:
    try:
        import torch
    except ImportError:  # no torch: the explain module reports that itself
        return
    torch.set_num_threads(ATTRIBUTION_THREADS)


class Prefetcher:
    """Three small thread pools: `ahead` for photos and other background work, `maps` for the
    default method's maps, `demand` for other methods' maps asked for on the page (Integrated
    Gradients or occlusion take seconds; they must not hold up the next item)."""

    def __init__(self, explain: Callable[..., Path], *, root: Path | None = None,
                 maps_in: Callable[..., Path] | None = None) -> None:
        self._explain = explain
        self._explain_default = maps_in or explain  # the default method's maps (every item's)
        self._tmp = tempfile.TemporaryDirectory(prefix="active-labeler-")
        # Gradio serves files returned by events only from the temp folder or the working dir;
        # display copies and maps are placed here (never the original image roots).
        self.folder = Path(self._tmp.name)
        # Only threads that run a network limit torch's threads (which imports torch, seconds):
        # photos and other background work never need it, nor maps made in another process.
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._demand = ThreadPoolExecutor(1, thread_name_prefix="attribution", initializer=limit_torch_threads)
        self._maps = ThreadPoolExecutor(1, thread_name_prefix="maps",
                                        initializer=None if maps_in else limit_torch_threads)
        self._lock = threading.Lock()
        self._futures: OrderedDict[Hashable, Future] = OrderedDict()
        self._root = root

    def close(self) -> None:
        # Queued jobs are dropped, but a running one is waited for: removing the folder under a
        # job that is writing into it fails ("Directory not empty").
        self._ahead.shutdown(wait=True, cancel_futures=True)
        self._demand.shutdown(wait=True, cancel_futures=True)
        self._maps.shutdown(wait=True, cancel_futures=True)
        self._tmp.cleanup()

    def _future(self, key: Hashable, fn: Callable[[], Any], *, pool: ThreadPoolExecutor) -> Future:
        with self._lock:
            fut = self._futures.get(key)
            if fut is not None and not (fut.done() and fut.exception() is not None):
                self._futures.move_to_end(key)
                return fut
            fut = pool.submit(fn)
            self._futures[key] = fut
            while len(self._futures) > KEEP:
                old_key, old = next(iter(self._futures.items()))
                if not old.done():
                    break
                self._futures.pop(old_key)
            return fut

    def ready(self, key: Hashable) -> Any | None:
        """The result of finished work under ``key`` (never waits); None when not done or failed."""
        with self._lock:
            fut = self._futures.get(key)
        if fut is None or not fut.done() or fut.exception() is not None:
            return None
        return fut.result()

    # -- photos ------------------------------------------------------------------------------
    def _make_display(self, item_id: int, path: str) -> Path:
        out = self.folder / f"item-{item_id}.jpg"
        if not out.exists():
            im = load_rgb(path)
            im.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.BILINEAR)
            # A display cache: no fsync (it is rebuilt after a restart), one temp file per writer.
            write_atomic(out, lambda fh: im.save(fh, format="JPEG", quality=DISPLAY_QUALITY), fsync=False)
        return out

    def photo(self, item_id: int, path: str, *, wait: bool = True) -> Path | Future:
        """The display copy of an item's photo. ``wait=False`` queues it in the background;
        ``wait=True`` returns a prefetched copy, or makes it right here rather than queue behind
        other annotators' background work."""
        if not wait:
            return self._future(("photo", item_id), lambda: self._make_display(item_id, path), pool=self._ahead)
        done = self.ready(("photo", item_id))
        return done if done is not None else self._make_display(item_id, path)

    # -- attribution maps --------------------------------------------------------------------
    def _make_map(self, project: Any, item_id: int, version_id: int, method: str, target: str | None,
                  field: str = DEFAULT_FIELD) -> Path:
        # Another label field's head is asked for by name; the default field's call is unchanged.
        extra = {} if field == DEFAULT_FIELD else {"field": field}
        explain = self._explain_default if method == DEFAULT_METHOD else self._explain
        src = Path(explain(project, item_id, version_id=version_id, method=method, target=target, **extra))
        # A copy in our temp folder, so Gradio can serve it wherever the project lies.
        out = self.folder / f"map-{item_id}-v{version_id}-{method}-{abs(hash((field, target))) % 10**8}{src.suffix}"
        if not out.exists():
            write_atomic(out, src.read_bytes(), fsync=False)
        return out

    def attribution(self, project: Any, item_id: int, version_id: int, *, method: str = DEFAULT_METHOD,
                    target: str | None = None, wait: bool = True,
                    field: str = DEFAULT_FIELD) -> Path | Future:
        key = map_key(item_id, version_id, method, target, field)
        # by method: a prefetched IG or occlusion map (seconds) must not hold up every item's map
        pool = self._maps if method == DEFAULT_METHOD else self._demand
        fut = self._future(key, lambda: self._make_map(project, item_id, version_id, method, target, field),
                           pool=pool)
        return fut.result() if wait else fut

    def warm(self, project: Any, tasks: list[Any]) -> None:
        """Queue the photo and the default map of each task (labelling.Task) in the background."""
        for t in tasks:
            self.photo(t.item_id, t.path, wait=False)
            if t.version_id is not None and t.top is not None:
                self.attribution(project, t.item_id, t.version_id, target=t.top[0], wait=False,
                                 field=t.field)

    def later(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the prefetch thread (after what is queued there already)."""
        def guarded() -> Any:
            try:
                return fn()
            except Exception:  # a failed prefetch only costs speed; the page computes on demand
                log.exception("background work failed")
                return None

        return self._ahead.submit(guarded)
