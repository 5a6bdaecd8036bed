"""shoal.kube_client: API failures become KubeErrors that say what to check; retried only as client-go does."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from shoal.errors import ShoalError
from shoal.kube_client import (
    Backoff, KubeConflict, KubeForbidden, KubeGone, KubeNotFound, KubeUnauthorized, KubeUnavailable, KubeUnreachable,
    api_error, call, translate,
)


def exception(status, retry_after=None, message="nope"):
    error = ApiException(status=status, reason="Reason")
    error.body = json.dumps({"kind": "Status", "message": message}).encode()
    error.headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return error


@pytest.mark.parametrize("status, cls, hint", [
    (401, KubeUnauthorized, "token"), (403, KubeForbidden, "rbac.yaml"), (404, KubeNotFound, ""),
    (409, KubeConflict, ""), (410, KubeGone, ""), (429, KubeUnavailable, "throttling"),
    (500, KubeUnavailable, "failed"), (503, KubeUnavailable, "failed")])
def test_each_status_is_its_own_error_with_the_servers_message_and_what_to_check(status, cls, hint):
    error = translate(exception(status, message="pods is forbidden"), "listing pods")
    assert type(error) is cls and isinstance(error, ShoalError) and error.status == status
    assert str(error).startswith(f"listing pods: HTTP {status} from the API server: pods is forbidden")
    assert hint in str(error)


def test_no_answer_is_unreachable():
    error = translate(ConnectionRefusedError("refused"), "listing pods")
    assert isinstance(error, KubeUnreachable) and error.status == 0 and "reachable" in str(error)


def test_a_body_that_is_not_a_status_is_quoted_cut_short():
    error = api_error(500, b"<html>" + b"x" * 1000, "doing")
    assert "<html>" in str(error) and len(str(error)) < 500


def test_call_retries_only_what_says_when_to_come_back():
    answers = [exception(429, retry_after=2), exception(503, retry_after=1), "done"]
    slept = []

    def fn():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert call(fn, "x", sleep=slept.append) == "done" and slept == [2.0, 1.0]

    for failure in (exception(500), exception(403), exception(429)):   # no Retry-After: at once
        attempts = []

        def failing(failure=failure):
            attempts.append(1)
            raise failure
        with pytest.raises(KubeUnavailable if failure.status != 403 else KubeForbidden):
            call(failing, "x", sleep=slept.append)
        assert len(attempts) == 1

    attempts = []

    def always_busy():
        attempts.append(1)
        raise exception(429, retry_after=100)
    with pytest.raises(KubeUnavailable):
        call(always_busy, "x", attempts=3, sleep=slept.append, max_wait=5)
    assert len(attempts) == 3 and slept[-2:] == [5, 5]


def test_backoff_doubles_to_a_ceiling_with_jitter_and_honours_retry_after():
    backoff = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(1, retry_after=3.0) == 3.0 and backoff.delay(1, retry_after=60.0) == 4.0
    jittered = Backoff(initial=1.0, jitter=0.2)
    assert jittered.delay(1, rand=lambda: 0.0) == pytest.approx(0.8) and jittered.delay(1, rand=lambda: 1.0) == pytest.approx(1.2)
