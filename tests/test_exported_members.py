import types

import tierwise


def test_all_is_complete_and_sorted() -> None:
    public = {
        n
        for n in dir(tierwise)
        if not n.startswith("_") and not isinstance(getattr(tierwise, n), types.ModuleType)
    }
    assert set(tierwise.__all__) == public
    assert tierwise.__all__ == sorted(tierwise.__all__)
