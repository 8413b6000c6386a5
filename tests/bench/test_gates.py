"""Budgets as gates, and budgets that make no sense."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgetl.bench.gates import FAIL, NA, PASS, evaluate_gates, validate_budgets
from edgetl.config import Budgets
from edgetl.errors import ConfigError

RESULT = {
    "latency": [{"batch": 1, "p90_ms": 12.0}, {"batch": 8, "p90_ms": 60.0}],
    "accuracy": {"drop_pp": 0.8},
    "memory": {"session_peak_mb": 150.0},
}


def test_no_budgets_is_not_applicable():
    assert evaluate_gates(None, RESULT)["status"] == NA
    assert evaluate_gates(Budgets(), RESULT)["status"] == NA


def test_all_budgets_met_pass():
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1, p90_latency_ms=15, max_memory_mb=200), RESULT)
    assert gates["status"] == PASS and gates["failed"] == []
    assert [c["status"] for c in gates["checks"]] == [PASS, PASS, PASS]
    assert gates["budgets"] == {"max_accuracy_drop_pp": 1, "p90_latency_ms": 15, "max_memory_mb": 200}


def test_each_failing_budget_is_named_with_value_and_budget():
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=0.5, p90_latency_ms=10, max_memory_mb=100), RESULT)
    assert gates["status"] == FAIL
    assert len(gates["failed"]) == 3
    assert "p90_latency 12 ms > budget 10 ms" in gates["failed"][1]
    assert "accuracy_drop 0.8 pp > budget 0.5 pp" in gates["failed"][0]


def test_latency_budget_is_on_batch_one_and_fails_when_it_was_not_measured():
    result = {**RESULT, "latency": [{"batch": 8, "p90_ms": 1.0}]}
    gates = evaluate_gates(Budgets(p90_latency_ms=100), result)
    assert gates["status"] == FAIL
    assert "not measured" in gates["failed"][0] and "--batch" in gates["failed"][0]


@pytest.mark.parametrize("budgets, message", [
    (Budgets(max_accuracy_drop_pp=100), "lets any accuracy pass"),
    (Budgets(p90_latency_ms=0.005), "did you mean 5"),
    (Budgets(max_memory_mb=0.5), "megabytes"),
])
def test_budgets_that_make_no_sense_are_config_errors(budgets, message):
    with pytest.raises(ConfigError, match=message) as exc:
        validate_budgets(budgets, "target profile 'pi'")
    assert str(exc.value).startswith("target profile 'pi'")


def test_sensible_budgets_validate():
    validate_budgets(Budgets(max_accuracy_drop_pp=1.0, p90_latency_ms=20, max_memory_mb=256), "x")


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_negative_and_infinite_budgets_are_rejected_by_the_profile_model(value):
    with pytest.raises(ValidationError):
        Budgets(p90_latency_ms=value)
