"""The engine's worker thread: every synthesis runs there, one at a time, in arrival order (FIFO).

The event loop never computes: it submits a request and receives PCM chunks as the engine produces them, one
codec frame (80 ms) at a time. At most ``max_pending`` chunks wait for a slow consumer; after that the engine
pauses (back-pressure) instead of buffering without bound. Cancelling the consumer (a client that went away)
stops the engine before its next frame.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

import numpy as np

from .engine import Qwen3TTS, SynthesisStats

_LOGGER = logging.getLogger(__name__)

_DONE = object()


class EngineWorker:
    def __init__(self, tts: Qwen3TTS, max_pending: int = 32):
        self.tts = tts
        self.max_pending = max_pending
        # One thread: the engine's sessions share compute buffers and must not overlap; the executor's queue
        # gives FIFO order across clients.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3tts-engine")
        self.frames_generated = 0  # total, for tests and logs

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def stream(self, request: dict[str, Any], stats: SynthesisStats | None = None) -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks of Qwen3TTS.stream(**request) (frames_per_chunk "auto" unless the request
        says otherwise: one frame first, bigger chunks once enough audio is ahead). Errors of the request
        (ValueError for bad input) are raised here. Closing the iterator cancels the synthesis."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        slots = threading.Semaphore(self.max_pending)
        cancelled = threading.Event()

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down)
                cancelled.set()

        def run() -> None:
            if cancelled.is_set():  # the client left while this request waited its turn
                return
            chunks = self.tts.stream(stats=stats, **{"frames_per_chunk": "auto", **request})
            try:
                for pcm in chunks:
                    self.frames_generated += len(pcm) // self.tts.samples_per_frame
                    while not slots.acquire(timeout=0.05):
                        if cancelled.is_set():
                            return
                    if cancelled.is_set():
                        return
                    deliver(pcm)
                deliver(_DONE)
            except BaseException as e:  # handed to the consumer, which raises it in its own context
                deliver(e)
            finally:
                chunks.close()

        future = loop.run_in_executor(self._executor, run)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                slots.release()
                yield item
        finally:
            cancelled.set()
            if not future.done():
                _LOGGER.debug("synthesis cancelled")
            # Retrieve the worker's outcome later so that it is never reported as unhandled.
            future.add_done_callback(lambda f: f.exception())
