"""Which failures of a run's workers `restart.isolate_crashes` sets aside as error rows, and which fail the run."""

from __future__ import annotations

import pytest
import ray.exceptions

from pipeline import restart

CREATION_TEXT = ("ActorDiedError: The actor died because of an error raised in its creation task, "
                 "ray::MapWorker(MapBatches(Infer)).__init__() (pid=1)\n"
                 "ValueError: device='cuda' but CUDA is not available")


class ConstructorRaised(ray.exceptions.RayActorError):   # Ray's error where the constructor's reaches the driver
    def __init__(self):
        super().__init__(actor_init_failed=True, error_msg="SafetensorError: incomplete metadata")


def wrapped(error: BaseException) -> RuntimeError:
    outer = RuntimeError("execution failed")
    outer.__cause__ = error
    return outer


@pytest.mark.parametrize("error", [ConstructorRaised(), ray.exceptions.RayError(CREATION_TEXT)],
                         ids=["ray-flag", "ray-text"])
def test_an_actor_whose_constructor_raised_fails_the_run(error):
    """A model that does not load fails in every actor's constructor: the run fails with that error, its rows
    left to do, rather than going through crash isolation."""
    with pytest.raises(restart.RunFailed):
        restart.raise_unless_crash(wrapped(error))


def test_the_failure_names_the_stage_and_the_constructors_error():
    assert str(restart.start_failure(ray.exceptions.RayError(CREATION_TEXT))) == (
        "an actor of the Infer stage could not start: ValueError: device='cuda' but CUDA is not available; "
        "no row was marked done: run again once it is fixed")


def test_a_dead_actor_goes_to_crash_isolation_and_anything_else_is_raised():
    died = wrapped(ray.exceptions.ActorDiedError())
    assert restart.raise_unless_crash(died) is None and restart.start_failure(died) is None
    with pytest.raises(ValueError, match="a bug"):
        restart.raise_unless_crash(ValueError("a bug"))
