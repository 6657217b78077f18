"""Progress bars and the process-wide store of long computations that draw them.

Long computations that show a progress bar go through ``memo`` (a process-wide store under
``st.cache_resource``), because a progress bar must be drawn by the script thread while the work runs,
which Streamlit's caches would replay on every hit.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

import streamlit as st

T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def _memo_store() -> tuple[dict, threading.RLock]:
    return {}, threading.RLock()


def memo(key: tuple, compute: Callable[[], T]) -> T:
    """Process-wide cache for long computations that draw their own progress bar (computed once per key;
    one long computation at a time)."""
    store, lock = _memo_store()
    if key in store:
        return store[key]
    with lock:
        if key not in store:
            store[key] = compute()
        return store[key]


def forget(prefix: tuple) -> None:
    """Drop memo entries whose key starts with ``prefix`` (e.g. after saving into the bundle)."""
    store, lock = _memo_store()
    with lock:
        for k in [k for k in store if k[: len(prefix)] == prefix]:
            store.pop(k, None)


class Progress:
    """A progress bar drawn only while a computation runs; ``__call__(done, total, stage)``."""

    def __init__(self, label: str):
        self.label = label
        self._ph = st.empty()
        self._bar = None
        self._t0 = time.perf_counter()

    def __call__(self, done: float, total: float, stage: str | None = None) -> None:
        frac = 0.0 if not total else max(0.0, min(1.0, float(done) / float(total)))
        text = f"{self.label}{f' ({stage})' if stage else ''}: {int(done)}/{int(total)}"
        if self._bar is None:
            self._bar = self._ph.progress(frac, text=text)
        else:
            self._bar.progress(frac, text=text)

    def stage(self, stage: str) -> Callable[[int, int], None]:
        return lambda done, total: self(done, total, stage)

    def close(self) -> float:
        self._ph.empty()
        return time.perf_counter() - self._t0


def counter(progress: Progress, total: int, stage: str | None = None) -> Callable[[int], None]:
    seen = [0]

    def on_batch(n: int) -> None:
        seen[0] += int(n)
        progress(seen[0], total, stage)

    return on_batch


def wait_with_bar(work: Callable[[], T], measure: Callable[[], int], total: int, label: str) -> T:
    """Run ``work`` in a thread while the script thread draws a bar of ``measure()`` / ``total`` bytes."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # re-raised in the script thread
            out["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    bar = st.progress(0.0, text=label)
    while th.is_alive():
        th.join(0.25)
        got = measure()
        bar.progress(min(1.0, got / total) if total else 0.0, text=f"{label}: {got / 1e6:.1f} / {total / 1e6:.0f} MB")
    bar.empty()
    if "error" in out:
        raise out["error"]
    return out["value"]


def page_timer() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
