import pytest

from common.errors import UnknownSettingError, ValidationError
from common.settings import (
    CERT_VALIDITY,
    CHECK_INTERVAL,
    MOVE_RATE,
    SETTINGS,
    EffectiveSettings,
    Source,
    resolve,
    spec_for,
)


def test_the_table_holds_the_settings_of_the_design():
    assert set(SETTINGS) == {
        "host",
        "indirect.agent.lb.algorithm",
        "indirect.agent.lb.check.interval",
        "ping.interval",
        "ping.timeout",
        "ca.framework.cert.validity.period",
        "indirect.agent.lb.move.rate",
    }
    defaults = [SETTINGS[n].default for n in SETTINGS]
    assert defaults == [None, "static", "0", "5", "3", "365", "200"]


@pytest.mark.parametrize(
    ("name", "raw", "fragment"),
    [
        ("host", "", "the list is empty"),
        ("indirect.agent.lb.algorithm", "fastest", "unknown algorithm 'fastest'"),
        (CHECK_INTERVAL, "-1", "below the minimum of 0"),
        (CHECK_INTERVAL, "1.5", "'1.5' is not a whole number"),
        (CHECK_INTERVAL, "abc", "'abc' is not a whole number"),
        (CHECK_INTERVAL, "²", "is not a whole number"),
        ("ping.interval", "0", "below the minimum of 1"),
        ("ping.timeout", "0", "below the minimum of 1"),
        (CERT_VALIDITY, "0", "0 is not a positive number of days"),
        (CERT_VALIDITY, "0.0", "0.0 is not a positive number of days"),
        (CERT_VALIDITY, "-1", "-1 is not a positive number of days"),
        (CERT_VALIDITY, "3650.5", "above the maximum of 3650 days"),
        (CERT_VALIDITY, "1" + "0" * 400, "above the maximum of 3650 days"),
        (CERT_VALIDITY, "abc", "'abc' is not a number of days"),
        (CERT_VALIDITY, "nan", "'nan' is not a number of days"),
        (CERT_VALIDITY, "inf", "'inf' is not a number of days"),
        (CERT_VALIDITY, "1e2", "'1e2' is not a number of days"),
        (CERT_VALIDITY, "1,5", "'1,5' is not a number of days"),
        (CERT_VALIDITY, "²", "is not a number of days"),
        (CERT_VALIDITY, "", "is not a number of days"),
        (MOVE_RATE, "0", "0 is not a positive number of agents per second"),
        (MOVE_RATE, "-5", "-5 is not a positive number of agents per second"),
        (MOVE_RATE, "fast", "'fast' is not a number of agents per second"),
        (MOVE_RATE, "1e3", "'1e3' is not a number of agents per second"),
        (MOVE_RATE, "1" + "0" * 400, "above the maximum of 1000000 agents per second"),
    ],
)
def test_bad_values_name_the_setting_and_the_fault(name, raw, fragment):
    with pytest.raises(ValidationError) as info:
        spec_for(name).normalise(raw)
    setting, _, fault = str(info.value).partition(": ")
    assert setting == name
    assert fragment in fault


def test_values_are_normalised():
    assert spec_for(CHECK_INTERVAL).normalise(" 07 ") == "7"
    assert spec_for("indirect.agent.lb.algorithm").normalise(" shuffle") == "shuffle"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("365", "365"),
        (" 0365 ", "365"),
        ("1.50", "1.5"),
        ("0.5", "0.5"),
        (".25", "0.25"),
        ("2.", "2"),
        ("0.001", "0.001"),
        ("3650", "3650"),
        ("3650.000", "3650"),
    ],
)
def test_the_certificate_validity_takes_days_with_decimals(raw, stored):
    assert spec_for(CERT_VALIDITY).normalise(raw) == stored


@pytest.mark.parametrize(("raw", "stored"), [("200", "200"), (" 0100 ", "100"), ("0.5", "0.5")])
def test_the_move_rate_takes_agents_per_second_with_decimals(raw, stored):
    assert spec_for(MOVE_RATE).normalise(raw) == stored


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownSettingError, match="did you mean 'host'"):
        spec_for("hots")
    with pytest.raises(UnknownSettingError, match="known: host"):
        spec_for("zzzzzzzz")


def test_resolve_prefers_cluster_then_global_then_default():
    assert resolve(CHECK_INTERVAL, {}, None) == ("0", Source.DEFAULT)
    assert resolve(CHECK_INTERVAL, {CHECK_INTERVAL: "5"}, {}) == ("5", Source.GLOBAL)
    assert resolve(CHECK_INTERVAL, {CHECK_INTERVAL: "5"}, {CHECK_INTERVAL: "9"}) == (
        "9",
        Source.CLUSTER,
    )
    # a cluster map cannot override a global-only setting
    assert resolve("ping.interval", {}, {"ping.interval": "9"}) == ("5", Source.DEFAULT)


def test_effective_settings_are_typed():
    eff = EffectiveSettings.from_maps({"host": "a,b:1", CHECK_INTERVAL: "4"}, {CHECK_INTERVAL: "2"})
    assert eff == EffectiveSettings(("a", "b:1"), "static", 2, 5, 3, 365.0)
    assert EffectiveSettings.from_maps({}).host is None
    assert EffectiveSettings.from_maps({CERT_VALIDITY: "0.5"}).cert_validity_days == 0.5
    assert EffectiveSettings.from_maps({}).move_rate == 200.0
    assert EffectiveSettings.from_maps({MOVE_RATE: "12.5"}).move_rate == 12.5
