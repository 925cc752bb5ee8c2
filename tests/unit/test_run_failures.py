"""Why a run failed, as `pbi run` and `pbi backfill` print it (pbi_assets/failures.py), read from a
real instance's event log: a failed step's own exception, or Dagster's reason for a run that failed
outside any step (never just "the run failed")."""

from __future__ import annotations

import sys

import dagster as dg
import pytest
from dagster._core.events import EngineEventData  # no public constructor for an engine event with an error
from dagster._utils.error import serializable_error_info_from_exc_info

from pbi_assets.failures import run_failure


@dg.asset
def fails():
    raise ValueError("the annotation file has no 'images' key\nsecond line")


@dg.asset
def fine():
    return 1


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_a_failed_step_gives_the_step_and_the_user_codes_exception(instance):
    result = dg.materialize([fails, fine], instance=instance, raise_on_error=False)
    failure = run_failure(instance, result.run_id)
    assert failure.step == "fails"
    assert failure.reason == "ValueError: the annotation file has no 'images' key"
    assert failure.line() == "at step fails: ValueError: the annotation file has no 'images' key"


def _failed_outside_steps(instance, error: BaseException | None) -> str:
    result = dg.materialize([fine], instance=instance)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    if error is not None:
        try:
            raise error
        except type(error):
            info = serializable_error_info_from_exc_info(sys.exc_info())
        instance.report_engine_event("Failed to claim a pool slot", run, EngineEventData(error=info))
    instance.report_run_failed(run)
    return result.run_id


def test_a_run_that_failed_outside_any_step_gives_dagsters_own_reason(instance):
    run_id = _failed_outside_steps(instance, RuntimeError("current transaction is aborted\nmore detail"))
    failure = run_failure(instance, run_id)
    assert failure.step is None
    assert failure.reason == "RuntimeError: current transaction is aborted"
    assert failure.line() == "the run failed outside any step: RuntimeError: current transaction is aborted"


def test_without_any_error_the_run_failure_message_is_the_reason(instance):
    failure = run_failure(instance, _failed_outside_steps(instance, None))
    assert failure.step is None and failure.reason.startswith("This run has been marked as failed")
