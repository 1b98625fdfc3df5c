"""The bounded map of recently used values."""

from medlab.recent import Recent


def test_the_least_recently_used_value_is_dropped_first() -> None:
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    recent: Recent[str] = Recent(2)
    assert recent.get("a", lambda: make("a")) == "A"
    recent.get("b", lambda: make("b"))
    assert recent.get("a", lambda: make("a")) == "A"  # kept, and now the most recent
    recent.get("c", lambda: make("c"))  # drops b, the least recently used
    recent.get("a", lambda: make("a"))
    recent.get("b", lambda: make("b"))
    assert made == ["a", "b", "c", "b"]
