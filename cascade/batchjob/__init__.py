"""Batch generation jobs: many prompts, many ranks, resumable, every output exactly once."""

from cascade.batchjob.job import JobRequest, JobSummary, run_job

__all__ = ["JobRequest", "JobSummary", "run_job"]
