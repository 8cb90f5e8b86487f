"""The OpenAI stand-in, with training progress: metrics events as OpenAI sends them (``type: "metrics"``,
``data.step``/``train_loss``/``valid_loss``, newest first), more of them as the job advances."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standins.openai_like import StandIn

TOTAL_STEPS = 10
VALID_EVERY = 2


def train_loss(step: int) -> float:
    return round(2.0 / (1 + 0.35 * step), 4)


def valid_loss(step: int) -> float:
    return round(train_loss(step) + 0.08, 4)


class MetricsStandIn(StandIn):
    def steps_done(self, job: dict[str, Any]) -> int:
        return {"running": TOTAL_STEPS // 2, "succeeded": TOTAL_STEPS}.get(job["status"], 0)

    async def events(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self.error(404, "No such job", "fine_tune_not_found")
        tag = job["id"][-6:]
        events: list[dict[str, Any]] = [
            {"object": "fine_tuning.job.event", "id": f"ftevent-{tag}-m0", "created_at": job["created_at"],
             "level": "info", "message": "Validating training file", "type": "message"}]
        if job["status"] in ("queued", "running", "succeeded", "failed"):
            events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{tag}-m1",
                           "created_at": job["created_at"] + 1, "level": "info",
                           "message": "Fine-tuning job started", "type": "message"})
        for step in range(1, self.steps_done(job) + 1):
            data: dict[str, Any] = {"step": step, "total_steps": TOTAL_STEPS, "train_loss": train_loss(step),
                                    "train_mean_token_accuracy": 0.5 + step / 40}
            if step % VALID_EVERY == 0:
                data["valid_loss"] = valid_loss(step)
            events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{tag}-s{step:04d}",
                           "created_at": job["created_at"] + 1 + step, "level": "info",
                           "message": f"Step {step}/{TOTAL_STEPS}: training loss={data['train_loss']}",
                           "data": data, "type": "metrics"})
        if job["status"] == "succeeded":
            events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{tag}-done",
                           "created_at": job["created_at"] + 2 + TOTAL_STEPS, "level": "info",
                           "message": "The job has successfully completed", "type": "message"})
        events.reverse()  # newest first, as OpenAI lists them
        page, more = self._page(events, request, 20)
        return web.json_response({"object": "list", "data": page, "has_more": more})
