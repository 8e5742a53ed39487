"""The engine's worker thread: every synthesis runs there, one at a time, in arrival order (FIFO).

The event loop never computes: it submits a request and receives PCM chunks as the engine produces them, one
codec frame (80 ms) or a few at a time. The engine never waits for a consumer: a client that reads slowly or not
at all must not hold the one engine thread that every other client needs. Its audio is buffered instead, and
bounded by time: once a consumer has taken less audio than a real-time listener would have heard, by more than
``max_lag_s`` seconds, its synthesis is stopped and the consumer gets :class:`ConsumerTooSlow`. Cancelling the
consumer (a client that went away) stops the engine after the frame it is generating.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

import numpy as np

from .engine import Qwen3TTS, SynthesisStats
from .request import SynthesisRequest

_LOGGER = logging.getLogger(__name__)

_DONE = object()
DEFAULT_MAX_LAG_S = 10.0


class ConsumerTooSlow(Exception):
    """The consumer fell more than ``max_lag_s`` behind real time: its synthesis was stopped."""


class EngineWorker:
    def __init__(self, tts: Qwen3TTS, max_pending: int | None = None, max_lag_s: float = DEFAULT_MAX_LAG_S):
        """``max_lag_s``: how far (seconds of audio) a consumer may fall behind a real-time listener before its
        synthesis is stopped. ``max_pending`` is accepted for compatibility and ignored: the engine no longer
        waits for consumers."""
        self.tts = tts
        self.max_lag_s = max_lag_s
        # One thread: the engine's sessions share compute buffers and must not overlap; the executor's queue
        # gives FIFO order across clients.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3tts-engine")
        self.frames_generated = 0  # total, for tests and logs

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def stream(self, request: SynthesisRequest, stats: SynthesisStats | None = None,
                     frames_per_chunk: int | str = "auto") -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks of Qwen3TTS.stream(request) (by default in "auto" chunks: one frame first,
        bigger chunks once enough audio is ahead). Errors of the request (InvalidRequest for bad input,
        EngineError) are raised here, and ConsumerTooSlow (see the module). Closing the iterator cancels the
        synthesis."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        rate = self.tts.sample_rate
        taken = [0]  # samples the consumer has come back for (it handled them), written by the event loop only

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down)
                cancelled.set()

        def run() -> None:
            if cancelled.is_set():  # the client left while this request waited its turn
                return
            chunks = self.tts.stream(request, frames_per_chunk=frames_per_chunk, stats=stats, cancel=cancelled)
            t_first = None
            try:
                for pcm in chunks:
                    self.frames_generated += len(pcm) // self.tts.samples_per_frame
                    if cancelled.is_set():
                        return
                    deliver(pcm)
                    now = time.monotonic()
                    t_first = t_first or now
                    behind_s = (now - t_first) - taken[0] / rate
                    if behind_s > self.max_lag_s:
                        deliver(ConsumerTooSlow(f"{behind_s:.1f} s behind real time: synthesis stopped"))
                        return
                deliver(_DONE)
            except BaseException as e:  # handed to the consumer, which raises it in its own context
                deliver(e)
            finally:
                chunks.close()

        future = loop.run_in_executor(self._executor, run)
        pending_samples = 0
        try:
            while True:
                taken[0] += pending_samples
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                pending_samples = len(item)
                yield item
        finally:
            cancelled.set()
            if not future.done():
                _LOGGER.debug("synthesis cancelled")
            # Retrieve the worker's outcome later so that it is never reported as unhandled.
            future.add_done_callback(lambda f: f.exception())
