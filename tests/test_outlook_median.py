"""The BG/NBD family's predictive distribution of the purchase count in a horizon given a customer's history, and
its median (the point forecast that minimises the absolute error), checked against a simulation of the model."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from twins.evaluate.outlook import count_median_from_mean
from twins.models.btyd import BetaGeoModel, ModifiedBetaGeoModel, SeasonalBetaGeoModel
from twins.runtime.outlook_features import Calendar, calendar_summary
from twins.sim.seasonal import SeasonalLog, true_calendar

PARAMS = {"r": 0.8, "alpha": 4.0, "a": 0.6, "b": 2.5}


def _simulate(modified: bool, n: int, T: float, t: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """n customers of the model over (0, T + t]: (x, t_x) in (0, T] and the purchases in (T, T + t]."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(PARAMS["r"], 1 / PARAMS["alpha"], n)
    p = rng.beta(PARAMS["a"], PARAMS["b"], n)
    # purchases made before dropping out: geometric on {1, 2, ...} (BG/NBD) or {0, 1, ...} (MBG/NBD)
    lifetime = rng.geometric(p) - int(modified)
    n_events = rng.poisson(lam * (T + t))
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        times = np.sort(rng.uniform(0, T + t, n_events[i]))[: lifetime[i]]
        past = times[times <= T]
        x[i], t_x[i], future[i] = len(past), past[-1] if len(past) else 0.0, len(times) - len(past)
    return x, t_x, future


@pytest.mark.parametrize("cls", [BetaGeoModel, ModifiedBetaGeoModel])
def test_count_distribution_given_history_matches_simulation(cls):
    """20,000 simulated customers (T = 30, t = 26 weeks): the predicted P(X = k | history), averaged over the
    customers, must match the share of customers with k future purchases within 4 binomial standard errors
    (+ 0.002) for k = 0..10, since the mean of the conditional distribution over the histories is the marginal one;
    each row's mean must equal ``expected_purchases`` (rtol 1e-9) and the rows sum to 1 (1e-9)."""
    T, t, n = 30.0, 26.0, 20_000
    x, t_x, future = _simulate(cls is ModifiedBetaGeoModel, n, T, t)
    model = cls.from_params(PARAMS, device="cpu")
    pmf = model.purchase_distribution(t, x, t_x, T, 400)
    np.testing.assert_allclose(pmf.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(pmf @ np.arange(401), model.expected_purchases(t, x, t_x, T), rtol=1e-9)
    predicted = pmf.mean(0)[:11]
    observed = np.bincount(future.astype(int), minlength=11)[:11] / n
    se = np.sqrt(observed * (1 - observed) / n)
    assert np.all(np.abs(predicted - observed) <= 4 * se + 0.002), (predicted, observed)


def test_median_is_the_half_quantile_of_the_distribution():
    """The median of a hand-checkable row: a BG/NBD customer with no repeat purchase over a zero-length horizon
    buys nothing; a heavy buyer's median is near its mean; P(X <= median) >= 1/2 > P(X <= median - 1)."""
    model = BetaGeoModel.from_params(PARAMS, device="cpu")
    x, t_x, T = np.array([0.0, 1.0, 5.0, 40.0]), np.array([0.0, 3.0, 20.0, 29.5]), np.array([10.0, 30.0, 30.0, 30.0])
    median = model.quantile_purchases(0.5, 26.0, x, t_x, T)
    cdf = np.cumsum(model.purchase_distribution(26.0, x, t_x, T, 500), 1)
    rows = np.arange(4)
    assert np.all(cdf[rows, median.astype(int)] >= 0.5)
    assert np.all(np.where(median > 0, cdf[rows, np.maximum(median.astype(int) - 1, 0)] < 0.5, True))
    assert model.quantile_purchases(0.5, 0.0, x, t_x, T).tolist() == [0, 0, 0, 0]
    mean = model.expected_purchases(26.0, x, t_x, T)
    assert abs(median[3] - mean[3]) < 2 and median[1] == 0 < mean[1]


def test_quantiles_in_blocks_of_rows_are_those_of_one_block(monkeypatch):
    """Rows go in blocks of similar means (memory bounded by the block, not customers x the largest count); a row's
    quantile does not depend on its block: tiny blocks give the answers of one block, bit for bit."""
    import twins.models.btyd as btyd

    rng = np.random.default_rng(3)
    x = rng.poisson(rng.gamma(0.5, 8, 400)).astype(float)
    T = rng.uniform(20, 80, 400)
    t_x = T * rng.uniform(0, 1, 400) * (x > 0)
    for model in (BetaGeoModel.from_params(PARAMS, device="cpu"), ModifiedBetaGeoModel.from_params(PARAMS, device="cpu")):
        for q in (0.1, 0.5, 0.9):
            whole = model.quantile_purchases(q, 39.0, x, t_x, T)
            monkeypatch.setattr(btyd, "BLOCK_ELEMENTS", 300)  # a few rows per block, one for the heaviest
            assert np.array_equal(model.quantile_purchases(q, 39.0, x, t_x, T), whole)
            monkeypatch.undo()


def test_seasonal_model_answers_the_median_in_calendar_time():
    """SeasonalBetaGeoModel with the generating calendar: its median is BG/NBD's median over the warped horizon
    (the calendar's integral of the rate over the 26 weeks after the cut-off), not over 26 plain weeks."""
    cfg = SeasonalLog()
    model = SeasonalBetaGeoModel()
    model.calendar_ = true_calendar(cfg)
    model.counts_ = BetaGeoModel.from_params({"r": cfg.r, "alpha": cfg.alpha, "a": cfg.a, "b": cfg.b}, device="cpu")
    model.spend_, model.day_spend_ = None, 50.0
    cutoff = float((date(2023, 7, 2) - date(1970, 1, 1)).days)
    rng = np.random.default_rng(0)
    row = np.repeat(np.arange(200), 12)
    day = (cutoff - 700 + np.sort([rng.choice(700, 12, replace=False) for _ in range(200)], 1)).reshape(-1)
    row, day = row[day < cutoff], day[day < cutoff]
    spend = np.full(len(day), 40.0)
    out = model.predict(row, day, spend, 200, cutoff, 182)
    s = calendar_summary(Calendar(model.calendar_), row, day, spend, 200, cutoff, 182)
    assert float(s["t"]) != pytest.approx(26.0, rel=0.05)  # the season changes the horizon's length in calendar time
    want = model.counts_.quantile_purchases(0.5, s["t"], s["x"], s["t_x"], s["T"])
    np.testing.assert_array_equal(out["median_purchases"], want)
    assert np.all(out["median_purchases"] == np.round(out["median_purchases"]))


def test_median_from_a_mean_and_p_any_for_a_model_without_a_distribution():
    """A model that gives only the mean m and P(>= 1) = p gets a hurdle count: 0 with 1 - p, else 1 + Poisson(m/p - 1);
    its median is 0 where p < 1/2, and 1 + the Poisson's where 1 - p + p·P(Poisson <= k - 1) first reaches 1/2."""
    median = count_median_from_mean(np.array([0.4, 1.0, 3.0, 10.0]), np.array([0.3, 0.5, 0.9, 1.0]))
    # row 1: P(0) = 1 - p = 1/2 already. row 2: Poisson(3/0.9 - 1 = 2.33): 0.1 + 0.9·P(<= 0) = 0.187, 0.1 + 0.9·P(<= 1) = 0.39, 0.1 + 0.9·P(<= 2) = 0.62
    # row 3: 1 + Poisson(9), median of Poisson(9) is 9
    assert median.tolist() == [0, 0, 3, 10]


def test_acceptance_scores_the_median_against_the_best_baseline_mean_or_median():
    """experiments.outlook's bar: a candidate's count MAE is its median's, against the best of BG/NBD's mean, its
    median and persistence; the Σ ratio stays the mean's."""
    from experiments.outlook import acceptance

    def row(model, mae, median, spend=10.0, sums=1.0, rho=0.7):
        return {"setting": "seasonal-26w", "model": model, "count/mae": mae, "count/mae_median": median,
                "count/spearman": rho, "count/sum_ratio": sums, "spend/mae": spend, "spend/sum_ratio": sums}

    rows = [row("persistence", 1.70, 1.70), row("bgnbd+gg", 1.54, 1.40, sums=0.75), row("neural", 1.56, 1.30, spend=9.0)]
    (line,) = acceptance(rows)
    assert "count MAE (median) 1.3000, +7.1% below bgnbd+gg (median) 1.4000" in line and line.endswith("met")
    rows[1] = row("bgnbd+gg", 1.54, 1.35, sums=0.75)  # the baseline's median improves too: the bar is missed
    assert acceptance(rows)[0].endswith("**NOT met**")
