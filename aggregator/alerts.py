"""Alert rules on live tracks: "a track's smoothed `angry` >= 0.7 for >= 3 s".

A rule fires once per episode: when a track's smoothed probability of the emotion has stayed
at or above `min_prob` for `min_duration_s`; it re-arms when the probability falls below.
Each firing becomes an event in the store and, if the rule has a webhook, a JSON POST sent
from a background thread with retries (a slow receiver never holds up the pipeline). The rules
themselves are typed and checked with every other setting (core.config: AlertRule, parse_rules).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from core.config import AlertRule
from core.emotions import EMOTIONS
from core.errors import redact_url

logger = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 5.0


@dataclass
class Firing:
    rule: AlertRule
    source_id: int
    camera: str
    track_id: int
    started_s: float
    at: float  # Unix time the condition was met long enough
    value: float

    def payload(self) -> dict[str, Any]:
        return {"alert": self.rule.name, "camera": self.camera, "source_id": self.source_id,
                "track_id": self.track_id, "emotion": self.rule.emotion, "value": round(self.value, 4),
                "min_prob": self.rule.min_prob, "min_duration_s": self.rule.min_duration_s,
                "since_s": round(self.started_s, 3), "at": self.at}


class AlertEvaluator:
    """Per (rule, source, track): when the condition started, and whether it has fired."""

    def __init__(self, rules: list[AlertRule]) -> None:
        self.rules = rules
        self.since: dict[tuple[int, int, int], float] = {}
        self.fired: set[tuple[int, int, int]] = set()

    def update(self, source_id: int, camera: str, track_id: int, time_s: float, smoothed: Any,
               captured_at: float) -> list[Firing]:
        firings = []
        for index, rule in enumerate(self.rules):
            if not rule.applies_to(camera):
                continue
            key = (index, source_id, track_id)
            value = float(smoothed[EMOTIONS.index(rule.emotion)])
            if value < rule.min_prob:
                self.since.pop(key, None)
                self.fired.discard(key)
                continue
            started = self.since.setdefault(key, time_s)
            if key not in self.fired and time_s - started >= rule.min_duration_s:
                self.fired.add(key)
                firings.append(Firing(rule, source_id, camera, track_id, started, captured_at, value))
        return firings


WEBHOOK_SCHEMES = ("http", "https")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is the end: a redirect could send the alert (and any token in its URL) to
    another host, or to another scheme."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None  # urllib then raises HTTPError with the 3xx code


def webhook_opener() -> urllib.request.OpenerDirector:
    """An opener that speaks only http:// and https:// (no file://, ftp://, data:) and follows
    no redirect. Proxies from the environment (HTTP(S)_PROXY) still apply."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    _NoRedirects(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class WebhookSender:
    """POSTs alert JSON from a daemon thread, retrying with backoff; counts what was delivered.

    Only http:// and https:// URLs are used, and redirects are not followed (a 3xx is a
    failure, not retried). URLs are logged redacted (core.errors.redact_url)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=1000)
        self.delivered = 0
        self.failed = 0
        self.opener = webhook_opener()
        self.thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self.thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        if urllib.parse.urlsplit(url).scheme.lower() not in WEBHOOK_SCHEMES:
            self.failed += 1
            logger.error("webhook %s: not an http:// or https:// URL; alert %s not sent", redact_url(url),
                         payload.get("alert"))
            return
        try:
            self.queue.put_nowait((url, payload))
        except queue.Full:
            self.failed += 1
            logger.error("webhook queue full; dropped alert %s", payload.get("alert"))

    def _loop(self) -> None:
        while True:
            url, payload = self.queue.get()
            try:
                self._deliver(url, payload)
            finally:
                self.queue.task_done()

    def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "emojimation-alerts"})
            try:
                with self.opener.open(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                    response.read()
                self.delivered += 1
                return
            except urllib.error.HTTPError as error:
                error.close()
                if 300 <= error.code < 400:
                    self.failed += 1
                    logger.error("webhook %s: answered %d %s; redirects are not followed", redact_url(url), error.code,
                                 error.reason)
                    return
                problem: Exception = error
            except (urllib.error.URLError, OSError, ValueError) as error:
                problem = error
            if attempt == WEBHOOK_ATTEMPTS:
                self.failed += 1
                logger.error("webhook %s: giving up after %d attempts (%s)", redact_url(url), attempt,
                             redact_url(str(problem)))
            else:
                time.sleep(0.5 * 2 ** (attempt - 1))

    def drain(self, timeout_s: float) -> None:
        """Give queued deliveries up to `timeout_s` at shutdown."""
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
