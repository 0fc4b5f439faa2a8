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


def test_photos_and_background_work_do_not_import_torch(tmp_path: Path) -> None:
    """The prefetch thread (photos, next items, policy checks) and a maps thread whose maps are
    made in another process never import torch: seconds on the first item of a project with no
    model yet. In a fresh interpreter, as this one may have torch loaded already."""
    import os
    import subprocess
    import sys

    made = tmp_path / "map.jpg"  # what the other process would have written
    made.write_bytes(b"jpeg")
    code = ("import sys\n"
            "from labeler.prefetch import Prefetcher\n"
            f"p = Prefetcher(lambda *a, **k: None, maps_in=lambda *a, **k: {str(made)!r})\n"
            "p.later(lambda: None).result()\n"
            "p.attribution(None, 1, 2, target='x')\n"
            "p.close()\n"
            "print('torch' in sys.modules)\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
