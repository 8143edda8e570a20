"""Property: whatever a user puts on msam-train's command line, it is either refused with one
ConfigError line before any training, or accepted and then a smoke run of it succeeds (or stops
in one line on non-finite values: a huge learning rate is a user's right, and the guard's job).

The lines are drawn from tests/cli_domain.py: every key of the composed config, hostile values
and valid ones from the key's own domain, plus group choices. Hypothesis shrinks a failure to
the smallest command line that shows it.

`make test` runs the `ci` profile (a fixed seed, 100 lines). A long run for a nightly job:
    .venv/bin/python -m pytest tests/test_cli_property.py --hypothesis-profile=long
and scripts/fuzz_cli.py tallies what N lines end in without stopping at the first failure.
"""

from cli_domain import GROUP_CHOICES, HOSTILE, KEYS, VALID, run_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msam.domains import domains, unchecked_keys

settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@st.composite
def override(draw):
    key = draw(st.sampled_from(KEYS))
    value = draw(st.sampled_from(VALID[key]) if VALID[key] and draw(st.booleans()) else st.one_of(
        st.sampled_from(HOSTILE), st.integers(-(2**66), 2**66).map(str), st.floats().map(repr)))
    return f"{key}={value}"


LINES = st.tuples(st.lists(st.sampled_from(GROUP_CHOICES), max_size=3), st.lists(override(), min_size=1, max_size=3))


@given(LINES)
def test_a_command_line_is_refused_in_one_line_or_runs(line):
    groups, values = line
    run_line(["smoke=on", *groups, *values])


def test_every_key_has_a_domain():
    """A new config key without a domain in msam.domains fails here (and would go unchecked)."""
    from cli_domain import COMPOSITIONS

    from msam.cli import compose_or_fail
    from msam.paths import CONF_DIR

    missing = set()
    for choices in COMPOSITIONS:
        missing |= set(unchecked_keys(compose_or_fail("train", [*choices, "smoke=on"])))
    assert not {k for k in missing if not k.startswith(("paths.", "logger."))}, sorted(missing)
    assert {"method.m", "batch_size", "precision", "switch.fraction", "method.lambda", "optim.betas",
            "dataset.image_shape", "model.width", "schedule.warmup_fraction", "device"} <= set(KEYS)
    assert "switch.then" in domains() and all(VALID[k] for k in KEYS if k != "device"), \
        [k for k in KEYS if not VALID[k]]
