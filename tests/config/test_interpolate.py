import pytest

from xds_server.config.interpolate import InterpolationError, interpolate


@pytest.mark.parametrize(
    "text, env, expected",
    [
        ("a: ${X}", {"X": "1"}, "a: 1"),
        ("a: ${X:-d}", {}, "a: d"),
        ("a: ${X:-d}", {"X": ""}, "a: d"),
        ("a: ${X-d}", {"X": ""}, "a: "),
        ("a: ${X-d}", {}, "a: d"),
        ("a: $$HOME", {}, "a: $HOME"),
        ("a: $$${X}", {"X": "v"}, "a: $v"),
        ("a: cost $5", {}, "a: cost $5"),
        ("{kind: branch, sha: ${V}}", {"V": "abc"}, "{kind: branch, sha: abc}"),
    ],
)
def test_interpolation(text, env, expected):
    assert interpolate(text, env) == expected


def test_unset_variable_names_it_and_its_line():
    with pytest.raises(InterpolationError) as e:
        interpolate("a: 1\nb: ${MISSING}\n", {})
    assert e.value.line == 2
    assert "MISSING is not set" in str(e.value)


def test_required_variable_message():
    with pytest.raises(InterpolationError, match="X is required: give me X"):
        interpolate("${X:?give me X}", {})
