"""What ``edgetl optimize`` prints (edgetl/optimize/table.py), on the shared search's record."""

from __future__ import annotations

from edgetl.optimize.record import OptimizeRecord
from edgetl.optimize.table import summary


def test_the_summary_says_where_the_fallback_started_what_it_kept_and_every_count_it_tried(searched):
    run, _ = searched
    record = run.entries(OptimizeRecord)["host-cpu"]
    source = next(r for r in record.points if r.precision == "int8")
    missed = {"from": source.artifact, "ranked": [["conv_a", "Conv", 0.6], ["conv_b", "Conv", 0.2]],
              "kept": ["conv_a"], "drop_pp": 1.5625, "met": False, "tried": [[1, 1.5625], [2, 2.3438]]}
    text = summary(record.model_copy(update={"fallback": missed}))
    assert (f"The keep-float fallback from {source.runtime} {source.variant} [{source.artifact}] did not meet the "
            "budget: its best was 1 layer float (conv_a), drop +1.56 pp. Tried: 1 float +1.56 pp, 2 float +2.34 pp.") in text
    met = {**missed, "kept": ["conv_a", "conv_b"], "drop_pp": 0.0, "met": True, "tried": [[1, 1.5625], [2, 0.0]]}
    text = summary(record.model_copy(update={"fallback": met}))
    assert "met the budget with 2 layers float (conv_a, conv_b), drop +0.00 pp. Tried: 1 float +1.56 pp" in text
