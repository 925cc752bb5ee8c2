"""Why a run failed, read from its event log in one place (`pbi run` and `pbi backfill` print it):
a failed step's exception, unwrapped from Dagster's; for a run that failed outside any step,
Dagster's reason (the RUN_FAILURE error, else the last engine event error, else its message).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunFailure:
    step: str | None  # the first failed step; None when the run failed outside every step
    reason: str  # one line
    more_failed_steps: int = 0

    def line(self) -> str:
        if self.step is None:
            return f"the run failed outside any step: {self.reason}"
        more = f" (and {self.more_failed_steps} more failed steps)" if self.more_failed_steps else ""
        return f"at step {self.step}{more}: {self.reason}"


def error_reason(error) -> str:
    """The first line of a SerializableErrorInfo's message, with the user code's exception unwrapped
    from the Dagster exceptions around it ("AnnotationFileError: ..." rather than the module path)."""
    if error is None:
        return "no error recorded"
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    first = _first_line(error.message)
    qualified, sep, rest = first.partition(": ")
    if error.cls_name and sep and qualified.rsplit(".", 1)[-1] == error.cls_name:
        first = f"{error.cls_name}: {rest}"  # "pbi_ml.errors.AnnotationFileError: x" -> "AnnotationFileError: x"
    return first or error.cls_name or "unknown error"


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def run_failure(instance, run_id: str) -> RunFailure:
    """The reason a run failed, from its event log."""
    import dagster as dg

    steps = [record.dagster_event for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    steps = [event for event in steps if event is not None]
    if steps:
        data = steps[0].event_specific_data
        return RunFailure(steps[0].step_key or "?", error_reason(getattr(data, "error", None)), len(steps) - 1)
    failure = None
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        failure = record
    error = (
        getattr(failure.dagster_event.event_specific_data, "error", None) if failure and failure.dagster_event else None
    )
    if error is not None:
        return RunFailure(None, error_reason(error))
    engine_errors = [
        record.dagster_event.event_specific_data.error
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if record.dagster_event is not None and getattr(record.dagster_event.event_specific_data, "error", None)
    ]
    if engine_errors:
        return RunFailure(None, error_reason(engine_errors[-1]))
    if failure is not None:
        return RunFailure(None, _first_line(failure.message) or "no reason recorded")
    return RunFailure(None, "no failure event recorded (the run's process may have been killed)")
