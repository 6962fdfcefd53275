"""fedlib.romoa_settings: Romoa §5 settings as configs, defense/attack mappings, error rates,
and the notebooks' shared runs (Figs. 5/7 and 6/8 and Table 1's n = 10 cells must be cache hits)."""

from pathlib import Path

import nbformat
import pytest
import yaml

from fedlib import runs
from fedlib import romoa_settings as rs

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(rounds=4, eval_every=2, eval_size=50, width=0.125)


# ------------------------------------------------------------------ defenses and attacks
def test_defense_mapping():
    assert rs.defense_config("baseline") == {"aggregator": "mean", "aggregator_params": {}}
    assert rs.defense_config("rfa") == {"aggregator": "geometric_median",
                                           "aggregator_params": {}}
    assert rs.defense_config("romoa-literal") == {"aggregator": "romoa",
                                                     "aggregator_params": {"reading": "literal"}}
    calibrated = rs.defense_config("romoa-calibrated")["aggregator_params"]
    assert calibrated == {"reading": "calibrated"}
    assert rs.defense_config("krum", 10, 1) == {"aggregator": "krum",
                                                   "aggregator_params": {"f": 1}}
    # aliases give the very same config (same cache key)
    assert rs.defense_config("mean") == rs.defense_config("baseline")
    assert rs.defense_config("romoa") == rs.defense_config("romoa-literal")
    assert rs.defense_config("geometric_median") == rs.defense_config("rfa")
    with pytest.raises(ValueError, match="unknown defense"):
        rs.defense_config("bulyan")


@pytest.mark.parametrize("n, m, f", [(10, 1, 1), (10, 3, 3), (10, 4, 3), (20, 6, 6), (20, 9, 8),
                                     (100, 33, 33), (100, 49, 48), (200, 99, 98), (3, 1, 0),
                                     (10, 0, 0)])
def test_krum_f_is_adversaries_or_largest_valid(n, m, f):
    assert rs.krum_f(n, m) == f
    assert n > 2 * rs.krum_f(n, m) + 2
    from fedlib import aggregators
    aggregators.get("krum", f=rs.krum_f(n, m))       # a valid Krum


def test_krum_f_rejects_impossible():
    with pytest.raises(ValueError):
        rs.krum_f(2, 1)
    with pytest.raises(ValueError):
        rs.krum_f(10, -1)


def test_attack_mapping():
    assert rs.attack_config("none") == {"attack": "none", "attack_params": {},
                                           "num_attackers": 0}
    assert rs.attack_config("upa", "mnist", 3) == {"attack": "upa",
                                                      "attack_params": {"space": "update"},
                                                      "num_attackers": 3}
    assert rs.attack_config("upa", upa_space="model")["attack_params"] == {"space": "model"}
    assert rs.attack_config("adaptive", "mnist", 2) == {"attack": "rule_search",
                                                           "attack_params": {}, "num_attackers": 2}
    with pytest.raises(ValueError, match="upa_space"):
        rs.attack_config("upa", upa_space="weights")
    assert rs.attack_config("tpa", "mnist")["attack_params"] == {"source": 6, "poison": 3}
    assert rs.attack_config("tpa", "cifar10")["attack_params"] == {"source": 6, "poison": 2}
    assert rs.attack_config("tpa", "mnist", 1, {"stealth": 0.5})["attack_params"] == \
        {"source": 6, "poison": 3, "stealth": 0.5}
    with pytest.raises(ValueError, match="unknown attack"):
        rs.attack_config("ipm")
    with pytest.raises(ValueError, match="adversaries"):
        rs.attack_config("upa", "mnist", 0)
    with pytest.raises(ValueError, match="no parameters"):
        rs.attack_config("none", params={"stealth": 1.0})


# ------------------------------------------------------------------------------ settings
def test_paper_defaults():
    cfg = rs.romoa_setting()
    assert set(cfg) == {f for f in runs.RunConfig.__dataclass_fields__}
    assert (cfg["dataset"], cfg["model"], cfg["num_clients"], cfg["num_attackers"]) == \
        ("mnist", "romoa-mnist", 10, 1)
    assert (cfg["lr"], cfg["batch_size"], cfg["protocol"], cfg["tau"], cfg["moving_rate"]) == \
        (0.001, 64, "romoa", 4, 0.1)                          # γ = 1/n, the printed value
    assert cfg["attack_params"] == {"space": "update"}
    assert cfg["partition"] == "iid" and cfg["attack"] == "upa" and cfg["aggregator"] == "mean"
    assert rs.romoa_setting("cifar10", "rfa", "tpa")["model"] == "romoa-cifar"
    t1 = rs.romoa_setting("mnist", "krum", "upa", n=20, adversaries=9)
    assert t1["aggregator_params"] == {"f": 8} and t1["num_attackers"] == 9
    tpa = rs.romoa_setting(attack="tpa", profile_overrides={"tau": 5})
    assert tpa["attack_params"] == {"source": 6, "poison": 3, "moving_rate": 0.1}
    sync = rs.romoa_setting(attack="tpa", profile_overrides={"protocol": "sync"})
    assert "moving_rate" not in sync["attack_params"]
    none = rs.romoa_setting(defense="krum", attack="none", adversaries=2)
    assert none["num_attackers"] == 0 and none["aggregator_params"] == {"f": 2}


def test_moving_rate_upa_space_and_romoa_options_are_explicit():
    assert rs.moving_rate(10) == 0.1 and rs.moving_rate(20, "1/n") == 0.05
    assert rs.moving_rate(10, "1") == 1.0 and rs.moving_rate(10, 0.5) == 0.5
    for bad in ("1/2", 0.0, 1.5, True):
        with pytest.raises(ValueError, match="moving_rate"):
            rs.moving_rate(10, bad)
    assert rs.romoa_setting(n=20, adversaries=1)["moving_rate"] == 0.05
    assert rs.romoa_setting(moving_rate="1")["moving_rate"] == 1.0
    with pytest.raises(ValueError, match="set by romoa_setting"):
        rs.romoa_setting(profile_overrides={"moving_rate": 1.0})
    assert rs.romoa_setting(upa_space="model")["attack_params"] == {"space": "model"}
    cfg = rs.romoa_setting(defense="romoa-literal",
                              romoa_options={"generating": "cluster_penalty"})
    assert cfg["aggregator_params"] == {"reading": "literal", "generating": "cluster_penalty"}
    with pytest.raises(ValueError, match="generating"):
        rs.romoa_setting(defense="romoa-literal", romoa_options={"generating": "clustered"})
    with pytest.raises(ValueError, match="Romoa defenses only"):
        rs.romoa_setting(defense="krum", romoa_options={"generating": "cluster_penalty"})
    # the five changes between the presets, each a named option
    from fedlib.romoa import Romoa
    built = Romoa("literal", **{k: v for ch in rs.ROMOA_CHANGES.values() for k, v in ch.items()})
    cal = Romoa("calibrated")
    assert built.options == cal.options and built.bandwidth == cal.bandwidth


def test_every_defense_uses_the_same_fl_setting():
    cfgs = [rs.romoa_setting("mnist", d, "upa", profile_overrides=SMALL) for d in rs.DEFENSES]
    keep = {"aggregator", "aggregator_params"}
    strip = [{k: v for k, v in c.items() if k not in keep} for c in cfgs]
    assert all(s == strip[0] for s in strip) and strip[0]["protocol"] == "romoa"


def test_overrides_and_their_validation():
    cfg = rs.romoa_setting(profile_overrides=dict(SMALL, lr=0.1, partition="one-class"))
    assert cfg["lr"] == 0.1 and cfg["rounds"] == 4 and cfg["partition"] == "one-class"
    # the same setting built twice (any key order) is the same dict, hence the same cache key
    again = rs.romoa_setting(profile_overrides=dict(reversed(list(dict(SMALL, lr=0.1,
                                                                         partition="one-class").items()))))
    assert again == cfg
    key = runs.config_key(runs.RunConfig.from_dict(cfg))
    assert key == runs.config_key(runs.RunConfig.from_dict(again))
    with pytest.raises(ValueError, match="unknown profile keys"):
        rs.romoa_setting(profile_overrides={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="set by romoa_setting"):
        rs.romoa_setting(profile_overrides={"num_clients": 20})
    with pytest.raises(ValueError, match="set by romoa_setting"):
        rs.romoa_setting(profile_overrides={"aggregator": "median"})
    with pytest.raises(ValueError, match="unknown dataset"):
        rs.romoa_setting("fashion-mnist")
    with pytest.raises(ValueError, match="num_attackers"):       # RunConfig's own validation
        rs.romoa_setting(n=10, adversaries=10)
    with pytest.raises(ValueError, match="lr"):
        rs.romoa_setting(profile_overrides={"lr": -1.0})


def test_table1_cells():
    assert rs.table1_cells([10, 20]) == [(10, 1), (10, 3), (10, 4), (20, 1), (20, 6), (20, 9)]
    assert rs.table1_cells([10, 20], {10: 1, 20: 6}) == [(10, 1), (20, 1), (20, 6)]
    for n, ms in rs.TABLE1_GRID.items():
        assert all(m < -(-n // 2) for m in ms)               # fewer than ⌈n/2⌉ (Theorem 1)
    with pytest.raises(ValueError):
        rs.table1_cells([50])


# ---------------------------------------------------------------------------- error rate
def test_error_rate_definitions():
    h = {"round": [0, 5, 10], "test_accuracy": [0.1, 0.6, 0.9],
         "target_poison_confidence": [0.1, 0.5, 0.7]}
    assert rs.error_curve(h, "upa") == pytest.approx([0.9, 0.4, 0.1])
    assert rs.error_curve(h, "none") == pytest.approx([0.9, 0.4, 0.1])
    assert rs.error_curve(h, "adaptive") == pytest.approx([0.9, 0.4, 0.1])
    assert rs.error_curve(h, "tpa") == pytest.approx([0.1, 0.5, 0.7])
    assert rs.error_rate(h, "upa") == pytest.approx(0.1)
    assert rs.error_rate(h, "tpa", last=2) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="target"):
        rs.error_rate({"round": [0], "test_accuracy": [0.5]}, "tpa")
    with pytest.raises(ValueError):
        rs.error_rate(h, "upa", last=0)
    with pytest.raises(ValueError):
        rs.error_rate({"x": 1}, "upa")


def test_defense_style_distinguishes_the_two_romoa_readings():
    lit, cal = rs.defense_style("romoa-literal"), rs.defense_style("romoa-calibrated")
    assert lit["color"] == cal["color"] and lit["ls"] != cal["ls"] and lit["label"] != cal["label"]
    assert len({rs.defense_style(d)["label"] for d in rs.DEFENSES}) == len(rs.DEFENSES)


# ----------------------------------------------------------------- the settings actually run
def test_settings_run_end_to_end(tmp_path, monkeypatch):
    """Tiny runs of every defense (and both attacks) through fedlib.runs, on sklearn digits."""
    monkeypatch.setenv("FEDLIB_CACHE", str(tmp_path / "cache"))
    prof = dict(rounds=4, eval_every=4, eval_size=100, lr=0.1, batch_size=16, model="digits-cnn",
                device="cpu")
    for defense in rs.DEFENSES:
        for attack in ("upa", "tpa", "adaptive"):
            cfg = rs.romoa_setting("mnist", defense, attack, profile_overrides=prof)
            cfg["dataset"] = "digits"            # same setting on the offline-free test data
            res = runs.run(cfg, progress=False)
            err = rs.error_rate(res, attack)
            assert 0.0 <= err <= 1.0
            if attack == "tpa":
                assert len(res.history["target_poison_confidence"]) == 2
    # a second run of the same setting is a cache hit
    again = runs.run(cfg, progress=False)
    assert again.meta["cached"]


# ---------------------------------------------------------- notebooks share their run configs
def _parameters(stem: str, profile: str) -> dict:
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{stem}: exactly one parameters cell"
    ns: dict = {}
    exec(cells[0].source, ns)
    params = {k: v for k, v in ns.items() if not k.startswith("__")}
    if profile == "paper":
        extra = yaml.safe_load((ROOT / "params" / f"{stem}.yaml").read_text())
        assert set(extra) <= set(params), f"{stem}.yaml has keys the notebook lacks"
        params.update(extra)
    return params


RUN_KEYS = ("datasets", "width", "rounds", "lr", "batch_size", "tau", "eval_every", "eval_size",
            "train_size", "train_eval_size", "strategy", "seeds", "moving_rate")
EXTRA_KEYS = {"romoa_fig5_upa_error": ("upa_space", "attacks"),
              "romoa_fig6_tpa_confidence": ("tpa_boost",)}


@pytest.mark.parametrize("profile", ["smoke", "paper"])
@pytest.mark.parametrize("first, second", [
    ("romoa_fig5_upa_error", "romoa_fig7_upa_accuracy"),
    ("romoa_fig6_tpa_confidence", "romoa_fig8_tpa_accuracy")])
def test_paired_figures_share_their_runs(first, second, profile):
    a, b = _parameters(first, profile), _parameters(second, profile)
    for k in RUN_KEYS + EXTRA_KEYS[first]:
        assert a[k] == b[k], \
            f"{first} and {second} differ in {k!r} ({profile}): {a[k]!r} vs {b[k]!r}"


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_table1_runs_the_figure_settings(profile):
    """Paper profile: Table 1's (10, 1) runs are Figs. 5–6's. Smoke: the same settings, but every
    n = 10 and 20 column for both attacks, in short runs (rounds_at_n, a finer eval cadence)."""
    t1 = _parameters("romoa_table1_scale", profile)
    short = profile == "smoke"
    for fig in ("romoa_fig5_upa_error", "romoa_fig6_tpa_confidence"):
        f = _parameters(fig, profile)
        for k in RUN_KEYS + EXTRA_KEYS[fig][:1]:
            if k == "datasets":
                assert set(f[k]) <= set(t1[k]) or set(t1[k]) <= set(f[k])
            elif not (short and k == "eval_every"):
                assert t1[k] == f[k], f"table1 and {fig} differ in {k!r} ({profile})"
    columns = [[10, 1], [10, 3], [10, 4], [20, 1], [20, 6], [20, 9]]
    for attack in ("upa", "tpa"):
        assert [list(c) for c in t1["cells"][attack]][:6] == columns
    if short:
        assert set(t1["rounds_at_n"]) == {10, 20}
        assert all(r < t1["rounds"] for r in t1["rounds_at_n"].values())
        every = t1["eval_every"]
        assert t1["rounds_at_n"][20] % every == 0 == t1["rounds_at_n"][10] % every
    else:
        assert t1["rounds_at_n"] == {} and t1["workers"] == 1


def test_fedavg_setting_is_the_config_of_figs_1_and_2():
    profile = dict(model="l2a-mnist", width=0.25, num_clients=10, rounds=4, num_attackers=1, seed=0)
    tpa, upa = dict(num_targets=10, steps=10, boost=1.0), dict(variant="auto", space="update")
    none = rs.fedavg_setting("mnist", "no attack", profile, tpa=tpa, upa=upa)
    assert none["attack"] == "tpa" and none["attack_params"]["stealth"] == 0.0   # honest upload
    assert (none["attack_params"]["source"], none["attack_params"]["poison"]) == (6, 3)
    assert (none["protocol"], none["aggregator"], none["partition"]) == ("sync", "mean", "iid")
    t = rs.fedavg_setting("cifar10", "TPA", profile, tpa=tpa, upa=upa)
    assert t["attack_params"] == dict(source=6, poison=2, num_targets=10, steps=10, boost=1.0,
                                      stealth=1.0)
    u = rs.fedavg_setting("mnist", "UPA", profile, tpa=tpa, upa=upa)
    assert u["attack"] == "upa" and u["attack_params"] == upa and u["rounds"] == 4
    runs.RunConfig.from_dict(u)                                   # a valid run config
    with pytest.raises(ValueError, match="scenario"):
        rs.fedavg_setting("mnist", "EB", profile, tpa=tpa, upa=upa)
    with pytest.raises(ValueError, match="set by fedavg_setting"):
        rs.fedavg_setting("mnist", "UPA", dict(profile, aggregator="krum"), tpa=tpa, upa=upa)
    with pytest.raises(ValueError, match="TPA labels"):
        rs.fedavg_setting("emnist", "TPA", profile, tpa=tpa, upa=upa)


def test_tpa_on_a_dataset_without_default_labels_takes_them_from_params():
    from fedlib import romoa_settings
    cfg = romoa_settings.attack_config("tpa", dataset="synthetic", adversaries=2,
                                       params=dict(source=0, poison=1))
    assert cfg["attack_params"]["source"] == 0 and cfg["attack_params"]["poison"] == 1
    with pytest.raises(ValueError, match="no TPA labels"):
        romoa_settings.attack_config("tpa", dataset="synthetic", adversaries=2)
