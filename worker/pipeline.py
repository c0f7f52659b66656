"""One job, start to finish, independent of transport: bytes in, a result message out.

`Pipeline.handle` is what both `tabular-worker run` and the Pub/Sub worker call. It never
raises: every failure becomes an error result, and `Outcome.retryable` tells a transport
whether redelivery could help.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from base import logs
from engine.heads import Prediction, few_shot, zero_shot
from engine.pooling import normalize
from worker.batcher import Batcher, ModelError, Vectors
from worker.classify import LlmClassifier
from worker.cost import check_cost, job_cost
from worker.errors import JobError
from worker.jobs import Job, Limits, decode
from worker.metrics import WorkerMetrics, job_type_label
from worker.model import EmbeddingModel
from worker.results import Outcome, encode_vectors, error_outcome, timings
from worker.settings import WorkerSettings
from worker.shards import Inferred, TableContext, TableJob
from worker.sources import load_source
from worker.utilisation import BusyMeter

log = logs.get(__name__)


class Pipeline:
    def __init__(
        self,
        settings: WorkerSettings,
        model: EmbeddingModel,
        *,
        metrics: WorkerMetrics | None = None,
        llm: LlmClassifier | None = None,
        fan_out: bool = False,
    ) -> None:
        self.settings = settings
        self.fan_out = fan_out  # split large file jobs into shard jobs (a jobs topic to publish to)
        self.model = model
        self.metrics = metrics
        self.llm = llm
        self.limits = Limits(
            max_rows=settings.max_rows_per_job,
            max_cell_chars=settings.max_cell_chars,
            max_job_bytes=settings.max_job_bytes,
            max_row_text_chars=settings.max_row_text_chars,
            max_job_text_chars=settings.max_job_text_chars,
            max_scores=settings.max_job_scores,
            max_result_bytes=settings.max_result_bytes,
            shard_rows=settings.shard_rows,
            max_source_rows=settings.max_source_rows,
        )
        self.meter = BusyMeter(
            settings.utilisation_window_seconds,
            on_busy=metrics.model_busy_seconds.inc if metrics is not None else None,
            threads=model.streams,
        )
        if metrics is not None:
            metrics.model_busy_ratio.set_function(self.meter.share)
        self.batcher = Batcher(
            max_rows=settings.batch_max_rows,
            max_tokens=settings.batch_max_tokens,
            max_wait=settings.batch_max_wait_ms / 1000,
            max_tokens_per_row=model.max_seq_length,
            observe=self._observe_batch,
            meter=self.meter,
            streams=model.streams,
        )

    async def close(self) -> None:
        await self.batcher.close()

    async def handle(self, data: bytes) -> Outcome:
        started = time.perf_counter()
        job: Job | None = None
        try:
            job = decode(data, self.limits)
            decoded = time.perf_counter()
            if job.output_path is not None:
                outcome = await self._table_job(job)
                outcome.result["timings"] = timings(started, decoded)
                if self.metrics is not None:
                    self._count(outcome)
                return outcome
            if job.source_path is not None:
                await load_source(job, self.settings.data_root, self.limits)
            check_cost(job_cost(job, self.model.dims), self.limits)  # before any work
            body = await self._process(job)
            body["timings"] = timings(started, decoded)
            outcome = Outcome(body, job.job_id, job.type, rows=len(job.rows))
        except JobError as exc:
            job_id, job_type = (job.job_id, job.type) if job else (exc.job_id, exc.job_type)
            outcome = error_outcome(job_id, job_type, exc.code, exc.message, started)
        except ModelError as exc:
            job_id, job_type = (job.job_id, job.type) if job else (None, None)
            outcome = error_outcome(job_id, job_type, "model_unavailable", str(exc), started)
        except Exception as exc:  # a bug must cost one job an error result, never the worker
            log.exception("job failed unexpectedly", extra={"job_id": job and job.job_id})
            job_id, job_type = (job.job_id, job.type) if job else (None, None)
            outcome = error_outcome(
                job_id, job_type, "internal", f"internal error: {exc!r}", started
            )
        if self.metrics is not None:
            self._count(outcome)
        return outcome

    # -----------------------------------------------------------------------------------------

    async def _table_job(self, job: Job) -> Outcome:
        """A job with output.path: results as Parquet parts (worker.shards)."""
        model = self.model  # one model for every shard this worker runs of the job

        async def infer(shard: Job, texts: list[str]) -> Inferred:
            check_cost(job_cost(shard, model.dims), self._shard_limits)
            facts: dict[str, Any] = {}
            vectors = await self._vectors(shard, texts, model, facts)
            predictions = None
            if shard.type == "classify":
                predictions = await self._classify(shard, texts, vectors, model)
            return Inferred(vectors, predictions, facts["truncated_rows"])

        ctx = TableContext(self.settings.data_root, self.settings.output_root, self.limits,
                           fan_out=self.fan_out)  # fmt: skip
        return await TableJob(job, ctx, infer, _model_facts(model), model.dims).run()

    async def _vectors(
        self, job: Job, texts: list[str], model: EmbeddingModel, body: dict[str, Any]
    ) -> Vectors:
        raw, counts = await self.batcher.encode(texts, model.encode)
        normalized = self.settings.normalize_embeddings if job.normalize is None else job.normalize
        body["dims"] = model.dims
        body["normalized"] = normalized
        body["truncated_rows"] = [int(i) for i in np.flatnonzero(counts > model.max_seq_length)]
        if self.metrics is not None:
            cut = self.metrics.rows_truncated.labels(job_type_label(job.type))
            cut.inc(len(body["truncated_rows"]))
        body["max_tokens"] = model.max_seq_length
        return normalize(raw) if normalized else raw

    async def _process(self, job: Job) -> dict[str, Any]:
        model = self.model  # a hot reload mid-job must not mix two models in one result
        body: dict[str, Any] = {
            "job_id": job.job_id,
            "status": "ok",
            "type": job.type,
            "model": _model_facts(model),
            "rows": len(job.rows),
        }
        texts = job.texts()
        needs_vectors = (
            job.type == "embed" or job.method != "llm" or job.embeddings_format != "none"
        )
        vectors = np.zeros((0, model.dims), np.float32)
        if needs_vectors:
            vectors = await self._vectors(job, texts, model, body)
        if job.type == "classify":
            body["method"] = job.method
            floor = job.min_score
            body["predictions"] = [
                {"label": p.label if floor is None or p.score >= floor else None,
                 "score": p.score, "scores": p.scores}
                for p in await self._classify(job, texts, vectors, model)
            ]  # fmt: skip
        if job.embeddings_format != "none":
            body["embeddings"] = encode_vectors(vectors, job.embeddings_format)
        return body

    async def _classify(
        self, job: Job, texts: list[str], vectors: Vectors, model: EmbeddingModel
    ) -> list[Prediction]:
        names = [label.name for label in job.labels]
        if job.method == "zero_shot":
            label_vecs, _ = await self.batcher.encode(
                [label.text for label in job.labels], model.encode
            )
            return zero_shot(vectors, label_vecs, names, self.settings.zero_shot_temperature)
        if job.method == "few_shot":
            example_vecs, _ = await self.batcher.encode(job.example_texts(), model.encode)
            labels = [ex.label for ex in job.examples]
            return await self.batcher.run_in_model_thread(
                lambda: few_shot(example_vecs, labels, vectors, names)
            )
        if self.llm is None:
            raise JobError("llm_disabled", "llm classification is not enabled on this worker")
        return await self.llm.classify(texts, job.labels)

    @property
    def _shard_limits(self) -> Limits:
        """A shard's results go to a file, and its rows' text was checked row by row."""
        inf = 1 << 62
        return dataclasses.replace(self.limits, max_job_text_chars=inf, max_result_bytes=inf)

    def _observe_batch(self, rows: int, tokens: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_rows.observe(rows)
            self.metrics.batch_tokens.observe(tokens)

    def _count(self, outcome: Outcome) -> None:
        assert self.metrics is not None
        job_type = job_type_label(outcome.type)
        if outcome.status == "ok":
            self.metrics.rows.labels(job_type).inc(outcome.rows)
        seconds = outcome.result.get("timings", {}).get("total_ms", 0.0) / 1000
        self.metrics.inference_seconds.labels(job_type).observe(seconds)


def _model_facts(model: EmbeddingModel) -> dict[str, Any]:
    info = model.info
    return {"name": info.name, "source": info.source, "generation": info.generation,
            "revision": info.revision, "backend": info.backend,
            "precision": info.precision}  # fmt: skip
