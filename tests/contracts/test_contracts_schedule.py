"""The streaming protocol's constants against the paper's statement of it (docs/method.md,
Streaming protocol): 8 time splits; in round r the FM trains on days 1..4+r and infers on day
5+r, the VM trains on day 5+r and is tested on day 6+r; three rounds until day 8."""
from exfm_plugin import contracts as c


def test_days_and_rounds_follow_the_paper():
    assert c.DAYS == (1, 2, 3, 4, 5, 6, 7, 8)
    assert len(c.ROUNDS) == 3
    for r in c.ROUNDS:
        fm_days = list(range(1, 4 + r + 1))
        assert c.train_day(r) == fm_days[-1] + 1 == 5 + r   # the FM infers on the day after its data
        assert c.test_day(r) == c.train_day(r) + 1
    assert c.test_day(c.ROUNDS[-1]) == c.N_DAYS              # the last round tests on the last day
    assert c.test_day(c.ROUNDS[-1] + 1) not in c.DAYS        # a fourth round would leave the data


def test_day_file_names_are_the_prepared_files():
    assert [c.day_file_name(d) for d in (1, 8)] == ["day_1.h5", "day_8.h5"]
    assert c.SERVING_WEIGHTS.endswith(".pt")
    assert c.ROLES == ("fm", "vm")
