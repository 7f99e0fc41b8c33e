"""``storeml models compare NAME --live``: the monitor's live windows in a real Redis, printed.

The windows are written with the monitor's own writer (``MonitorStore.write_performance``) under
the test's ``redis_prefix``; the command runs through the main command (``storeml.cli.main``),
which finds them through ``--redis-url`` and ``STOREML_REDIS_PREFIX``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from storeml.cli import main
from storeml.cli_models_live import iso_utc
from storeml.connectors.monitor_store import MonitorStore
from storeml.models.monitor_results import PerformanceWindow, StorePerformance
from storeml.settings import Settings
from tests.monitor_data import T0, WINDOW_MS, performance_window

STORES = ["s1", "s2", "s3"]
MODEL = "customers-model"  # the name tests/monitor_data.py writes
PRODUCT_MODEL = "products-model"


@pytest.fixture
def store(settings: Settings) -> Iterator[MonitorStore]:
    writer = MonitorStore.from_settings(settings)
    yield writer
    writer.close()


def compare(settings: Settings, *args: str) -> Result:
    env = {"STOREML_REDIS_PREFIX": settings.redis_prefix, "STOREML_CONFIG": None}
    return CliRunner().invoke(
        main,
        ["--home", str(settings.home), "--redis-url", settings.redis_url, "models", "compare"]
        + list(args),
        env=env,  # None unsets a variable
    )


def seed_customer_model(store: MonitorStore, windows: int = 15) -> list[PerformanceWindow]:
    """Champion version 3 and challenger version 4 in every window; the challenger skips the last."""
    written = []
    for index in range(windows):
        written.append(performance_window(index, STORES, "champion", "3"))
        if index < windows - 1:
            written.append(performance_window(index, STORES, "challenger", "4"))
    for window in written:
        store.write_performance(window)
    return written


def weighted(windows: list[PerformanceWindow], metric: str) -> float:
    pairs = [(getattr(w.overall, metric), w.overall.n) for w in windows]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


def test_the_table_pairs_the_roles_per_window_and_sums_the_shown_ones(
    store: MonitorStore, settings: Settings
) -> None:
    written = seed_customer_model(store)
    result = compare(settings, MODEL, "--live", "--windows", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "the newest 5 windows" in lines[0]
    header = lines[1].split()
    assert header[:4] == ["window", "start", "(UTC)", "champion"]
    for title in ("AUC", "Brier", "precision", "recall"):
        assert header.count(title) == 2, header
    assert "hit@5" not in lines[1]  # a customer model has no hit@k: not printed

    body = lines[2:7]
    starts = [T0 + index * WINDOW_MS for index in range(10, 15)]
    assert [row.split()[0] for row in body] == [iso_utc(s) for s in starts]
    assert iso_utc(T0) == "2026-01-01T00:00:00Z"
    first = body[0].split()
    champion = next(w for w in written if w.role == "champion" and w.window_start == starts[0])
    challenger = next(w for w in written if w.role == "challenger" and w.window_start == starts[0])
    assert first[1:7] == [
        "3",
        str(champion.overall.n),
        f"{champion.overall.auc:.3f}",
        f"{champion.overall.brier:.3f}",
        f"{champion.overall.precision:.3f}",
        f"{champion.overall.recall:.3f}",
    ]
    assert first[7:9] == ["4", str(challenger.overall.n)]
    assert body[-1].split()[7:] == ["-"] * 6  # the newest window has no challenger row

    shown = [w for w in written if w.window_start >= starts[0]]
    champions = [w for w in shown if w.role == "champion"]
    challengers = [w for w in shown if w.role == "challenger"]
    total = lines[7].split()
    assert total[:3] == ["total", "(n-weighted)", "3"]
    assert total[3] == str(sum(w.overall.n for w in champions))
    assert total[4] == f"{weighted(champions, 'auc'):.3f}"
    assert total[9] == str(sum(w.overall.n for w in challengers))
    assert total[10] == f"{weighted(challengers, 'auc'):.3f}"

    paired = [w for w in champions if w.window_start < starts[-1]]  # the windows both scored
    assert lines[8] == (
        f"champion better on AUC (higher is better): champion {weighted(paired, 'auc'):.3f},"
        f" challenger {weighted(challengers, 'auc'):.3f} (n-weighted over the 4 windows both"
        " scored)"
    )
    assert len(lines) == 9

    default = compare(settings, MODEL, "--live").output.splitlines()
    assert "the newest 12 windows" in default[0] and len(default) == 2 + 12 + 2


def test_json_output_one_store_and_a_lower_is_better_metric(
    store: MonitorStore, settings: Settings
) -> None:
    written = seed_customer_model(store, windows=4)
    result = compare(settings, MODEL, "--live", "--json", "--store", "s2", "--metric", "brier")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"] == MODEL and out["store"] == "s2"
    assert out["metric"] == "brier" and out["higher_is_better"] is False
    assert [w["window_start_ms"] for w in out["windows"]] == [T0 + i * WINDOW_MS for i in range(4)]
    row = next(s for s in written[0].stores if s.store_id == "s2")
    first = out["windows"][0]
    assert first["window_start"] == "2026-01-01T00:00:00Z"
    assert first["window_end_ms"] == T0 + WINDOW_MS
    assert first["champion"] == {
        "version": "3",
        "n": row.n,
        "positives": row.positives,
        "auc": pytest.approx(row.auc),
        "brier": pytest.approx(row.brier),
        "precision": pytest.approx(row.precision),
        "recall": pytest.approx(row.recall),
        "hit1": None,
        "hit5": None,
    }
    assert out["windows"][-1]["challenger"] is None
    totals = out["totals"]["champion"]
    assert totals["versions"] == ["3"] and totals["windows"] == 4
    assert totals["n"] == 4 * row.n
    # both roles have the same Brier in tests/monitor_data.py: a tie, said as one
    assert out["paired_windows"] == 3 and out["better"] == "equal"


def test_a_product_model_shows_hit_at_k_and_is_judged_on_hit5(
    store: MonitorStore, settings: Settings
) -> None:
    hits = {"champion": (0.30, 0.60), "challenger": (0.35, 0.70)}
    for index in range(3):
        start = T0 + index * WINDOW_MS
        for role, version in (("champion", "7"), ("challenger", "8")):
            hit1, hit5 = hits[role]
            overall = StorePerformance("*", 40 + index, 0, hit1=hit1, hit5=hit5)
            store.write_performance(
                PerformanceWindow(
                    PRODUCT_MODEL,
                    role,  # type: ignore[arg-type]
                    version,
                    start,
                    start + WINDOW_MS,
                    overall,
                    (StorePerformance("s1", 40 + index, 0, hit1=hit1, hit5=hit5),),
                )
            )
    result = compare(settings, PRODUCT_MODEL, "--live")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "hit@1" in lines[1] and "hit@5" in lines[1] and "AUC" not in lines[1]
    assert lines[2].split()[1:5] == ["7", "40", "0.300", "0.600"]
    assert lines[2].split()[5:] == ["8", "40", "0.350", "0.700"]
    assert lines[-1].startswith("challenger better on hit@5 (higher is better):")


def test_nothing_yet_says_what_to_run(store: MonitorStore, settings: Settings) -> None:
    result = compare(settings, "no-such-model", "--live")
    assert result.exit_code == 0, result.output
    assert "no live performance of no-such-model" in result.output
    assert "storeml monitor run" in result.output

    seed_customer_model(store, windows=1)
    result = compare(settings, "customers-modle", "--live")  # a typo: the known names follow
    assert f"The monitor has results for: {MODEL}" in result.output
    out = json.loads(compare(settings, "customers-modle", "--live", "--json").output)
    assert out["windows"] == [] and out["better"] is None
    assert "storeml monitor run" in out["message"]
    one_store = compare(settings, MODEL, "--live", "--store", "s9")
    assert "no live performance of customers-model for store s9" in one_store.output


def test_live_options_are_checked(settings: Settings) -> None:
    bad_metric = compare(settings, MODEL, "--live", "--metric", "top5_accuracy")
    assert bad_metric.exit_code == 2 and "not a live metric" in bad_metric.output
    versions = compare(settings, MODEL, "--live", "--champion", "3")
    assert versions.exit_code == 2 and "--live compares the roles" in versions.output
    without = compare(settings, MODEL, "--json")
    assert without.exit_code == 2 and "go with --live" in without.output
