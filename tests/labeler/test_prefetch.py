"""labeler/prefetch.py: which function makes which map."""

from __future__ import annotations

from pathlib import Path

from labeler.prefetch import Prefetcher


def test_every_items_map_goes_to_maps_in_and_other_methods_stay_here(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def maker(name: str):  # noqa: ANN202
        def explain(project, item_id, *, version_id, method, target):  # noqa: ANN001, ANN202
            out = tmp_path / f"{name}-{item_id}-{method}.jpg"
            out.write_bytes(b"jpeg")
            calls.append((name, method))
            return out
        return explain

    prefetch = Prefetcher(maker("here"), maps_in=maker("child"))
    try:
        ahead = prefetch.attribution(None, 1, 2, method="gradcam", target="shirt", wait=False).result()
        asked = prefetch.attribution(None, 3, 2, method="gradcam", target="shirt")
        other = prefetch.attribution(None, 1, 2, method="ig", target="shirt")
        assert calls == [("child", "gradcam"), ("child", "gradcam"), ("here", "ig")]
        # the page is served a copy in the prefetch folder
        assert all(p.parent == prefetch.folder and p.read_bytes() == b"jpeg" for p in (ahead, asked, other))
    finally:
        prefetch.close()
