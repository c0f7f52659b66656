"""The one exception a job can end in: `JobError`, whose `code` is part of the job contract.

Every way a payload, its source file or its processing can fail maps to a documented code
(docs/jobs.md); the pipeline turns a `JobError` into an error result, so no job is answered with
silence.
"""

from __future__ import annotations

# Codes whose jobs may succeed when retried: the transport nacks them (until the last attempt).
RETRYABLE_CODES = frozenset(
    {"llm_unavailable", "llm_timeout", "model_unavailable", "internal", "output_full"}
)


class JobError(Exception):
    """A job that cannot be answered with a result; `code` is part of the contract."""

    def __init__(
        self, code: str, message: str, job_id: str | None = None, job_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.job_type = job_type

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES
