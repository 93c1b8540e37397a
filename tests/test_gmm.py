import json

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from cleaner.methods.gmm import component_index, fit_gmm_1d, gmm_posterior


def _bimodal(n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Roughly SDD's logit scale: matched pairs around 31, mismatched around 12.
    return np.concatenate([rng.normal(31.0, 3.0, int(0.7 * n)), rng.normal(12.0, 4.0, n // 3)])


@pytest.mark.parametrize("scale", [1.0, 0.02])  # logit scale and a [0, 1]-like scale
def test_numpy_posterior_matches_sklearn_predict_proba(scale):
    x = _bimodal() * scale
    params = fit_gmm_1d(x)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    gmm.fit(x.reshape(-1, 1))
    proba = gmm.predict_proba(x.reshape(-1, 1))
    hi, lo = int(np.argmax(gmm.means_.ravel())), int(np.argmin(gmm.means_.ravel()))
    np.testing.assert_allclose(gmm_posterior(x, params, "high"), proba[:, hi], atol=1e-4)
    np.testing.assert_allclose(gmm_posterior(x, params, "low"), proba[:, lo], atol=1e-4)
    # Points far outside the fitted range must not produce NaN (0/0).
    far = np.array([-1e4, 1e4]) * scale
    assert np.all(np.isfinite(gmm_posterior(far, params, "high")))


def test_params_are_json_and_describe_the_fit():
    params = fit_gmm_1d(_bimodal())
    again = json.loads(json.dumps(params))
    assert again == params
    assert sorted(params["means"]) == pytest.approx([12.0, 31.0], abs=1.0)
    assert sum(params["weights"]) == pytest.approx(1.0)
    assert params["settings"] == {
        "max_iter": 10,
        "tol": 0.01,
        "reg_covar": 0.0005,
        "random_state": 0,
    }
    assert params["n_fit"] == len(_bimodal())
    assert component_index(params, "high") != component_index(params, "low")


def test_fit_is_deterministic():
    x = _bimodal(seed=3)
    a, b = fit_gmm_1d(x, random_state=7), fit_gmm_1d(x, random_state=7)
    assert a == b
    np.testing.assert_array_equal(gmm_posterior(x, a), gmm_posterior(x, b))
    assert gmm_posterior(x, a).dtype == np.float32


def test_rejects_unusable_input():
    with pytest.raises(ValueError):
        fit_gmm_1d(np.array([1.0]))
    with pytest.raises(ValueError):
        fit_gmm_1d(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError):
        gmm_posterior(np.zeros(3), fit_gmm_1d(_bimodal()), "middle")
