"""The confirmation stage: which configurations are re-trained, on which seeds, enqueued once."""

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from segsweep.sweep import confirm

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

SPACE = {"dataset_mix.synthetic_loss_weight": FloatDistribution(0.0, 1.0),
         "loss.ce_weight": FloatDistribution(0.2, 0.9),
         "weighting": CategoricalDistribution(["none", "inverse_freq", "sqrt_inv_freq"])}
BASELINES = {"plain_ce": ["loss=ce", "loss.ce_weight=1.0", "weighting=none"],
             "real_only": ["dataset_mix=real_only", "loss=ce", "loss.ce_weight=1.0", "weighting=none"]}


def cfg(top_k=2, n_confirm=3, baselines=BASELINES, **study):
    return OmegaConf.create({
        "trainer": {"seed": 0}, "loss": {"ce_weight": 0.6}, "dataset_mix": {"synthetic_loss_weight": 0.5},
        "study": {"repeats": 2, "seeds": None, "confirm": {"top_k": top_k, "seeds": n_confirm, "seed_base": 1000},
                  "baselines": baselines, **study},
        "hydra": {"runtime": {"choices": {"weighting": "sqrt_inv_freq", "loss": "combined"}},
                  "sweeper": {"params": {"dataset_mix.synthetic_loss_weight": "interval(0.0, 1.0)",
                                         "loss.ce_weight": "interval(0.2, 0.9)",
                                         "weighting": "choice(none, inverse_freq, sqrt_inv_freq)",
                                         "loss": "combined"}}}})


def searched(values_by_trial):
    """A finished search: trial i has params P[i] and per-seed values (seeds 0, 1)."""
    study = optuna.create_study(direction="maximize")
    for (w, a, m), values in values_by_trial:
        sv = {str(s): v for s, v in enumerate(values)}
        study.add_trial(create_trial(
            params={"dataset_mix.synthetic_loss_weight": w, "loss.ce_weight": a, "weighting": m},
            distributions=SPACE, value=sum(values) / len(values),
            user_attrs={"stage": "search", "seeds": [0, 1], "seed_values": sv}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"dataset_mix.synthetic_loss_weight": 0.9,
                                                                  "loss.ce_weight": 0.2, "weighting": "none"},
                                 distributions=SPACE))
    return study


TRIALS = [((0.2, 0.6, "sqrt_inv_freq"), [0.70, 0.50]),  # the single best draw, but mean 0.60
          ((0.3, 0.7, "inverse_freq"), [0.64, 0.63]),  # best mean 0.635
          ((0.1, 0.5, "none"), [0.55, 0.56]),
          ((0.3, 0.7, "inverse_freq"), [0.62]),  # same configuration again: pooled with the second
          ((0.8, 0.3, "sqrt_inv_freq"), [0.61, 0.62])]  # 0.615: second best mean


def test_plan_takes_best_means_and_every_baseline_with_fresh_seeds():
    plans = confirm.plan_confirmation(searched(TRIALS), cfg(), SPACE)
    assert [p.label for p in plans] == ["top1", "top2", "plain_ce", "real_only"]
    top1, top2, plain, real = plans
    assert top1.params == {"dataset_mix.synthetic_loss_weight": 0.3, "loss.ce_weight": 0.7,
                           "weighting": "inverse_freq"}
    assert top1.source_trials == [1, 3]  # (0.64 + 0.63 and seed 0 again: 0.62) -> mean over seeds 0.625
    assert top2.params["dataset_mix.synthetic_loss_weight"] == 0.8
    assert all(p.seeds == [1000, 1001, 1002] for p in plans)
    # baselines: named search parameters become params, others overrides, the rest the configured defaults
    assert plain.params == {"dataset_mix.synthetic_loss_weight": 0.5, "loss.ce_weight": 1.0, "weighting": "none"}
    assert plain.overrides == ["loss=ce"]
    assert real.overrides == ["dataset_mix=real_only", "loss=ce"] and real.kind == "baseline"
    assert len({p.id for p in plans}) == 4


def test_search_space_from_the_sweeper_params_and_search_space_derived():
    plans = confirm.plan_confirmation(searched(TRIALS), cfg(top_k=1))  # the space read from hydra.sweeper.params
    assert [p.label for p in plans] == ["top1", "plain_ce", "real_only"]


def test_fresh_seeds_must_not_be_search_seeds():
    with pytest.raises(ValueError, match="seed_base"):
        confirm.plan_confirmation(searched(TRIALS), cfg(n_confirm=2, seeds=[1001, 5]), SPACE)


def test_baseline_that_is_also_a_top_configuration_is_trained_once():
    b = {"same": ["dataset_mix.synthetic_loss_weight=0.3", "loss.ce_weight=0.7", "weighting=inverse_freq"]}
    plans = confirm.plan_confirmation(searched(TRIALS), cfg(top_k=1, baselines=b), SPACE)
    assert [(p.label, p.kind) for p in plans] == [("top1+same", "top+baseline")]


def test_enqueue_is_idempotent_and_trials_carry_their_stage_seed_and_overrides():
    study = searched(TRIALS)
    assert confirm.enqueue_confirmation(study, cfg(), SPACE) == 12  # 4 configurations x 3 fresh seeds
    assert confirm.enqueue_confirmation(study, cfg(), SPACE) == 0  # a resumed sweep enqueues nothing twice
    assert confirm.pending(study) == 12
    trial = study.ask()  # the sweeper's ask pops the first waiting trial
    assert confirm.is_confirm(trial)
    assert trial.user_attrs["seeds"] == [1000] and trial.user_attrs["confirm_config"] == "top1"
    for name, dist in SPACE.items():  # suggest returns the enqueued values
        trial._suggest(name, dist)
    assert trial.params == {"dataset_mix.synthetic_loss_weight": 0.3, "loss.ce_weight": 0.7,
                            "weighting": "inverse_freq"}
    study.tell(trial, 0.6)
    # an interrupted confirmation trial is enqueued again, once, with retry_of
    waiting = confirm.confirm_trials(study, states=(TrialState.WAITING,))
    plain = next(t for t in waiting if t.user_attrs["confirm_config"] == "plain_ce")
    t = study.ask()
    while t.number != plain.number:
        study.tell(t, 0.5)
        t = study.ask()
    t.set_user_attr("interrupted", True)
    study.tell(t, state=TrialState.FAIL)
    assert confirm.enqueue_confirmation(study, cfg(), SPACE) == 1
    again = confirm.confirm_trials(study, states=(TrialState.WAITING,))
    retry = [w for w in again if w.user_attrs.get("retry_of") == plain.number]
    assert len(retry) == 1 and retry[0].user_attrs["overrides"] == ["loss=ce"]
    assert confirm.enqueue_confirmation(study, cfg(), SPACE) == 0
    assert len(confirm.search_trials(study)) == 6


def test_merge_overrides_later_wins():
    base = ["dataset_mix.synthetic_loss_weight=0.5", "loss.ce_weight=1.0", "weighting=none", "loss=combined",
            "trainer.max_iters=400"]
    assert confirm.merge_overrides(base, ["loss=ce", "+study.x=1"]) == [
        "dataset_mix.synthetic_loss_weight=0.5", "loss.ce_weight=1.0", "weighting=none", "trainer.max_iters=400",
        "loss=ce", "+study.x=1"]
    assert confirm.merge_overrides(base, None) == base


def test_no_stage_without_top_k_or_baselines():
    assert confirm.plan_confirmation(searched(TRIALS), cfg(top_k=0, baselines=None), SPACE) == []
