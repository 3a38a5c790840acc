import subprocess
import sys
import types

import tierwise


def test_all_is_complete_and_sorted() -> None:
    public = {
        n
        for n in dir(tierwise)
        if not n.startswith("_")
        and not isinstance(getattr(tierwise, n), types.ModuleType)
        and n not in {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    }
    assert set(tierwise.__all__) == public
    assert tierwise.__all__ == sorted(tierwise.__all__)
    for name in tierwise.__all__:
        assert getattr(tierwise, name) is not None


def test_import_does_not_load_numpy() -> None:
    code = "import sys, tierwise; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
